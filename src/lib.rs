//! The `conveyor` command: every role and tool as a subcommand.
//!
//! - [`cli`], the command line and what each command does.
//! - [`config`], typed settings from flags and environment variables.
//! - [`supervisor`] runs roles together until a signal or the first failure.
//! - [`client`] is the small HTTP client behind `conveyor jobs …`; [`output`] prints its answers
//!   as tables for people or JSON for scripts.
//! - [`log_tools`] exports, imports and tails the event log.
//! - [`progress`] shows the progress of long commands.
//! - [`telemetry`] sets up logs and trace export; [`metrics`] the Prometheus recorder; [`ops`]
//!   serves metrics and health for roles without an HTTP API.

pub mod cli;
pub mod client;
pub mod config;
pub mod log_tools;
pub mod metrics;
pub mod ops;
pub mod output;
pub mod progress;
pub mod supervisor;
pub mod telemetry;

//! End-to-end tests: the real `conveyor` binary against real NATS JetStream and Postgres.
//! Each test has its own namespace and database, so they run in parallel. The harness is the
//! `testkit` crate.

mod auth;
mod bad_input;
mod batch;
mod cleanup;
mod cli_output;
mod crash;
mod first_hour;
mod fuzz;
mod jobs;
mod limits;
mod live;
mod log_tools;
mod operations;
mod ordered;
mod outages;
mod push_kinds;
mod readme;
mod rebuild_reads;
mod replay;
mod scheduling;
mod secrets;
mod shutdown;
mod slots;
mod tracing;
mod webhook_targets;
mod webhooks;
mod workers;
mod workflows;

/// This build's `conveyor` binary and scratch folder, for the harness.
pub(crate) const BUILD: testkit::Build = testkit::build!();

//! conveyor's consumers: the roles that read JetStream and act.
//!
//! - [`worker`] is the worker runtime. Pulls `run` commands of the kinds it serves, runs their
//!   [`Handler`]s with bounded concurrency, heartbeats, timeouts, retries with backoff, dead
//!   letters and cooperative cancellation, and publishes the job's domain events. Embed it in
//!   your own binary with your own handlers through [`Registry`].
//! - [`handlers`] holds the built-in job kinds (`noop`, `sleep`, `flaky`, `fail`, `batch`, `fan_out`, `report.job_stats`).
//! - [`projector`] folds the EVENTS stream into the Postgres read models (`jobs`, `job_events`,
//!   `job_stats`, described by the `readmodel` crate), one transaction per batch together with
//!   the checkpoints.
//! - [`scheduler`] decides which waiting job of each kind starts next (priorities, fair share
//!   between tenants, concurrency keys, pauses) and releases it to the workers; one process is
//!   active, the others stand by ([`leadership`]).
//! - [`notifiers`] has webhook delivery (signed, retried, dead-lettered), never run by replays.
//!
//! Each role is a struct with `async fn run(self, shutdown: CancellationToken)`; [`supervisor`]
//! runs a role's loops (and the `conveyor` binary's roles) together.

pub mod handlers;
pub mod leadership;
pub mod notifiers;
mod outbound;
pub mod projector;
pub mod scheduler;
pub mod supervisor;
pub mod worker;

pub use worker::handler::{Handler, JobContext, JobError, Registry};

/// Errors that stop a consumer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// JetStream I/O.
    #[error(transparent)]
    Bus(#[from] bus::Error),
    /// Postgres.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The EVENTS stream lost events before the projector applied them.
    #[error("the EVENTS stream starts at {first} but the checkpoint needs {wanted}: events were removed before they were projected")]
    Gap {
        /// The stream's first sequence.
        first: u64,
        /// The sequence the checkpoint needs next.
        wanted: u64,
    },
    /// The read-model version being rebuilt was replaced while it was built.
    #[error("read-model version {0} is no longer the one this rebuild writes")]
    VersionChanged(i32),
    /// A loop of the role panicked.
    #[error(transparent)]
    Panicked(#[from] supervisor::Panicked),
    /// A setting cannot work.
    #[error("{0}")]
    Config(String),
}

/// Result with the consumers' error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

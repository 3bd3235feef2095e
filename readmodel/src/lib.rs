//! conveyor's read model in Postgres: the one description of it that the projector (which
//! writes it), the API (which reads it) and the CLI (which rebuilds it) share.
//!
//! - [`projection`]: the projections (`jobs`, `job_events`, `job_stats`), rebuilt together.
//! - [`jobs`]: the row of a job ([`JobRow`]), with its status as [`events::JobStatus`] (an
//!   unknown status in the database is a decoding error, never a guess), and the reads of it.
//! - [`timeline`] and [`stats`]: the API's reads of `job_events` and `job_stats`.
//! - [`versions`]: each version of the projections lives in its own schema ([`schema`]); the
//!   names the API reads are views onto the live one, `read_model_versions` says which is live
//!   and which is being built.
//! - [`workflows`]: a batch's members and progress, and how the jobs others wait for ended.
//! - [`checkpoints`]: per projection and version, the last EVENTS sequence applied.
//! - [`MIGRATOR`]: the migrations (`migrations/` at the repository root).
//!
//! Nothing here talks to anything but Postgres; the fold from events to rows and its batch
//! writes are the projector's (`consumers::projector`), the one writer.

pub mod checkpoints;
pub mod jobs;
pub mod projection;
pub mod stats;
pub mod timeline;
pub mod versions;
pub mod workflows;

pub use jobs::JobRow;
pub use projection::Projection;

/// The read-model migrations (`migrations/` at the repository root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The Postgres channel the projector notifies after each commit of the live version, with the
/// new checkpoint as payload (the API's read-your-writes waits on it).
pub const CHECKPOINT_CHANNEL: &str = "conveyor_checkpoint";

/// The Postgres schema holding a version of the read models.
pub fn schema(version: i32) -> String {
    format!("rm_{version}")
}

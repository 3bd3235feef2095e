//! The built-in job kinds. Each is a [`Handler`](crate::Handler) in its own file; adding a kind
//! is a new file and one line in [`register_builtin`].

mod batch;
mod fail;
mod fan_out;
mod flaky;
mod job_stats;
mod noop;
mod sleep;

pub use batch::Batch;
pub use fail::Fail;
pub use fan_out::FanOut;
pub use flaky::Flaky;
pub use job_stats::JobStats;
pub use noop::Noop;
pub use sleep::Sleep;

use crate::Registry;

/// Registers every built-in kind.
pub fn register_builtin(registry: Registry) -> Registry {
    registry
        .register("noop", Noop)
        .register("sleep", Sleep)
        .register("flaky", Flaky)
        .register("fail", Fail)
        .register("batch", Batch)
        .register("fan_out", FanOut)
        .register("report.job_stats", JobStats)
}

/// Parses a built-in payload; an invalid one is a fatal error (it can never succeed).
fn payload<T>(
    parse: impl FnOnce(&serde_json::Value) -> Result<T, String>,
    value: &serde_json::Value,
) -> Result<T, crate::JobError> {
    parse(value).map_err(|e| crate::JobError::fatal(format!("invalid payload: {e}")))
}

use serde_json::{json, Value};

use crate::{Handler, JobContext, JobError};

/// `flaky`: fails the first `fail_times` attempts with a retryable error, then succeeds.
#[derive(Debug, Clone, Copy)]
pub struct Flaky;

#[async_trait::async_trait]
impl Handler for Flaky {
    async fn run(&self, job: JobContext) -> Result<Value, JobError> {
        let p = super::payload(events::kinds::Flaky::from_payload, &job.payload)?;
        if job.attempt <= p.fail_times {
            return Err(JobError::retryable(format!(
                "flaky: attempt {} of {} planned failures",
                job.attempt, p.fail_times
            )));
        }
        Ok(json!({ "succeeded_on_attempt": job.attempt }))
    }

    fn schema(&self) -> Option<Value> {
        events::kinds::builtin_schema("flaky")
    }
}

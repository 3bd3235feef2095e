use std::time::Duration;

use serde_json::{json, Value};

use crate::{Handler, JobContext, JobError};

/// `sleep`: waits `ms` in `steps` ticks, reporting progress after each; stops early when
/// cancelled.
#[derive(Debug, Clone, Copy)]
pub struct Sleep;

#[async_trait::async_trait]
impl Handler for Sleep {
    async fn run(&self, job: JobContext) -> Result<Value, JobError> {
        let p = super::payload(events::kinds::Sleep::from_payload, &job.payload)?;
        let tick = Duration::from_millis(p.ms) / p.steps;
        for step in 1..=u64::from(p.steps) {
            tokio::select! {
                _ = job.cancel.cancelled() => return Err(JobError::Cancelled),
                _ = tokio::time::sleep(tick) => {}
            }
            if let Err(e) = job
                .progress
                .report(
                    step,
                    Some(p.steps.into()),
                    Some(format!("step {step} of {}", p.steps)),
                )
                .await
            {
                // Progress is advisory; losing one report must not fail the job.
                tracing::warn!(job_id = %job.id, error = %e, "progress report not published");
            }
        }
        Ok(json!({ "slept_ms": p.ms }))
    }

    fn schema(&self) -> Option<Value> {
        events::kinds::builtin_schema("sleep")
    }
}

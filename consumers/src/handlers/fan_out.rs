use serde_json::{json, Value};

use crate::{Handler, JobContext, JobError};

/// `fan_out`: submits `count` children of `kind`, waits for them without holding a slot, and
/// once they have all ended (its next attempt) ends with their counts. Children and a wait from a
/// Rust handler, end to end.
#[derive(Debug, Clone, Copy)]
pub struct FanOut;

#[async_trait::async_trait]
impl Handler for FanOut {
    async fn run(&self, job: JobContext) -> Result<Value, JobError> {
        if let Some(children) = job.upstream.as_ref().and_then(|u| u.children.as_ref()) {
            return Ok(json!({
                "total": children.total,
                "succeeded": children.succeeded,
                "failed": children.failed,
                "cancelled": children.cancelled,
            }));
        }
        let p = super::payload(events::kinds::FanOut::from_payload, &job.payload)?;
        let kind = p
            .kind
            .parse()
            .map_err(|e: events::IdError| JobError::fatal(e.to_string()))?;
        for _ in 0..p.count {
            job.submit_child(&kind, p.payload.clone())
                .await
                .map_err(|e| JobError::retryable(format!("submitting a child: {e}")))?;
        }
        Err(JobError::WaitForChildren)
    }

    fn schema(&self) -> Option<Value> {
        events::kinds::builtin_schema("fan_out")
    }
}

use serde_json::{json, Value};

use crate::{Handler, JobContext, JobError};

/// `batch`: the callback of a batch submitted without one. It runs once every member has ended;
/// its result (the batch's) is the members' counts.
#[derive(Debug, Clone, Copy)]
pub struct Batch;

#[async_trait::async_trait]
impl Handler for Batch {
    async fn run(&self, job: JobContext) -> Result<Value, JobError> {
        let members = job.upstream.and_then(|u| u.members).unwrap_or_default();
        Ok(json!({
            "total": members.total,
            "succeeded": members.succeeded,
            "failed": members.failed,
            "cancelled": members.cancelled,
        }))
    }

    fn schema(&self) -> Option<Value> {
        events::kinds::builtin_schema("batch")
    }
}

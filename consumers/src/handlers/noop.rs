use serde_json::Value;

use crate::{Handler, JobContext, JobError};

/// `noop`: succeeds at once. Its result is the payload's `echo` member if there is one (handy to
/// try large results), else `null`. The unit of throughput benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct Noop;

#[async_trait::async_trait]
impl Handler for Noop {
    async fn run(&self, job: JobContext) -> Result<Value, JobError> {
        Ok(job.payload.get("echo").cloned().unwrap_or(Value::Null))
    }

    fn schema(&self) -> Option<Value> {
        events::kinds::builtin_schema("noop")
    }
}

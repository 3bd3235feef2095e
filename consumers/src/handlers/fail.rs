use serde_json::Value;

use crate::{Handler, JobContext, JobError};

/// `fail`: always fails; retryably (so it uses every attempt, then is dead-lettered) unless the
/// payload asks for a fatal error, or for a panic.
#[derive(Debug, Clone, Copy)]
pub struct Fail;

#[async_trait::async_trait]
impl Handler for Fail {
    async fn run(&self, job: JobContext) -> Result<Value, JobError> {
        let p = super::payload(events::kinds::Fail::from_payload, &job.payload)?;
        let message = p
            .message
            .unwrap_or_else(|| "fail: this kind always fails".into());
        if p.panic {
            panic!("{message}");
        }
        Err(if p.fatal {
            JobError::fatal(message)
        } else {
            JobError::retryable(message)
        })
    }

    fn schema(&self) -> Option<Value> {
        events::kinds::builtin_schema("fail")
    }
}

//! Commands: imperative requests on the COMMANDS work queue. Each is also a CloudEvent
//! (`dev.conveyor.command.run`, `dev.conveyor.command.cancel`), so tools read both streams alike.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::{DecodeError, Payload};

/// Run one attempt of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunJob {
    /// 1-based attempt number.
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// Per-attempt time limit.
    pub timeout_ms: u64,
    /// Not before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// The job's input.
    #[serde(default)]
    pub payload: Value,
    /// Re-drives of the job so far (0 until an operator re-drives it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u32,
    /// Whether the job was submitted with a webhook (`None`: not said, as in commands of older
    /// versions). The worker passes it on with the terminal event (header
    /// [`crate::streams::WEBHOOK_HEADER`]), so the webhook fan-in need not look the job up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<bool>,
    /// Its priority and concurrency key, for the scheduler.
    #[serde(flatten)]
    pub scheduling: crate::job::Scheduling,
    /// What it waits for before it may start, for the scheduler.
    #[serde(flatten)]
    pub workflow: crate::job::Workflow,
    /// How many times the job waited for its children before this attempt (each wait a round:
    /// a Rust handler's children are numbered within it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round: u32,
    /// How what it waited for ended: set by the scheduler when it lets the job start, and kept
    /// by its later attempts (which wait for nothing more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Box<crate::job::Upstream>>,
}

impl RunJob {
    /// The first attempt of a submitted job.
    pub fn first(job: &crate::job::Submitted) -> Self {
        Self {
            attempt: 1,
            max_attempts: job.max_attempts,
            timeout_ms: job.timeout_ms,
            run_at: job.run_at,
            payload: job.payload.clone(),
            generation: 0,
            webhook: Some(job.webhook.is_some()),
            scheduling: job.scheduling.clone(),
            workflow: job.workflow.clone(),
            round: 0,
            upstream: None,
        }
    }

    /// Whether the scheduler must hold it until what it waits for has ended: it waits for
    /// something, and no earlier attempt was let go already.
    pub fn waits(&self) -> bool {
        self.workflow.waits() && self.upstream.is_none()
    }

    /// The next attempt of a re-driven job: `redrive` says which, `job` (its submission) what.
    pub fn redrive(job: &crate::job::Submitted, redrive: &crate::job::Redriven) -> Self {
        Self {
            attempt: redrive.next_attempt,
            max_attempts: redrive.max_attempts,
            timeout_ms: job.timeout_ms,
            run_at: None,
            payload: job.payload.clone(),
            generation: redrive.generation,
            webhook: Some(job.webhook.is_some()),
            scheduling: job.scheduling.clone(),
            workflow: job.workflow.clone(),
            round: 0,
            upstream: None,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Cancel a job: queued ones never start, a running one sees its cancellation token fire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelJob {}

/// Deliver a job's terminal event to its webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverWebhook {
    /// EVENTS stream sequence of the terminal event (the body of the POST).
    pub event_seq: u64,
    /// Where to POST it.
    pub url: String,
    /// 1-based attempt number.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Not before this time (retry backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
}

fn first_attempt() -> u32 {
    1
}

/// Every command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// See [`RunJob`].
    Run(RunJob),
    /// See [`CancelJob`].
    Cancel(CancelJob),
    /// See [`DeliverWebhook`].
    Webhook(DeliverWebhook),
}

impl Command {
    /// The action token in the command's subject.
    pub fn action(&self) -> &'static str {
        match self {
            Self::Run(_) => "run",
            Self::Cancel(_) => "cancel",
            Self::Webhook(_) => "webhook",
        }
    }
}

impl Payload for Command {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Run(_) => "dev.conveyor.command.run",
            Self::Cancel(_) => "dev.conveyor.command.cancel",
            Self::Webhook(_) => "dev.conveyor.command.webhook",
        }
    }

    fn to_data(&self) -> Value {
        match self {
            Self::Run(c) => serde_json::to_value(c),
            Self::Cancel(c) => serde_json::to_value(c),
            Self::Webhook(c) => serde_json::to_value(c),
        }
        .expect("command data always serialises")
    }

    fn from_data(event_type: &str, data: Value) -> Result<Self, DecodeError> {
        match event_type {
            "dev.conveyor.command.run" => Ok(Self::Run(serde_json::from_value(data)?)),
            "dev.conveyor.command.cancel" => Ok(Self::Cancel(serde_json::from_value(data)?)),
            "dev.conveyor.command.webhook" => Ok(Self::Webhook(serde_json::from_value(data)?)),
            other => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }
}

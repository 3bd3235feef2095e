//! Domain events: the facts of a job's life, in the past tense. The EVENTS stream of these is the
//! source of truth; read models, notifications and replays are all folds over it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::{DecodeError, Payload, TYPE_PREFIX};
use crate::ids::{JobId, JobKind};

/// Where a job stands, as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, waiting for a worker (or for its `run_at`).
    Queued,
    /// A worker is running an attempt.
    Running,
    /// An attempt failed; another is scheduled.
    RetryScheduled,
    /// Finished with a result. Terminal.
    Succeeded,
    /// Attempts exhausted or a fatal error: dead-lettered. Terminal.
    Failed,
    /// Cancelled on request. Terminal.
    Cancelled,
}

impl JobStatus {
    /// All statuses, in lifecycle order.
    pub const ALL: [JobStatus; 6] = [
        Self::Queued,
        Self::Running,
        Self::RetryScheduled,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::RetryScheduled => "retry_scheduled",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the job has ended; a terminal status never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Where a webhook is delivered when the job ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// An `http` or `https` URL.
    pub url: String,
}

/// `job.submitted`: the API accepted the job. Carries everything needed to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    /// The job's input.
    #[serde(default)]
    pub payload: Value,
    /// Attempts before dead-lettering (at least 1).
    pub max_attempts: u32,
    /// Per-attempt time limit.
    pub timeout_ms: u64,
    /// Do not start before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// Completion webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    /// What decides when it starts among the other waiting jobs of its kind.
    #[serde(flatten)]
    pub scheduling: Scheduling,
    /// The schedule tick that submitted it, if a schedule did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<FromSchedule>,
    /// What it waits for before it may start, and the batch it belongs to.
    #[serde(flatten)]
    pub workflow: Workflow,
}

/// A job's place in a workflow: the jobs whose ends it waits for before it may start, and the
/// batch it is a member of. Carried by `job.submitted` and every `run` command, so the scheduler
/// holds the job until its conditions hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workflow {
    /// Jobs of the same tenant that must all have ended first. If one ends other than
    /// `succeeded`, this job is cancelled instead of run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<JobId>,
    /// The batch it is a member of (the id of the batch's own job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<JobId>,
    /// It is a batch: it starts (as the batch's callback) once the batch is sealed and every
    /// member has ended, whatever their outcomes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_batch: bool,
    /// The job whose handler submitted it (its parent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<JobId>,
    /// Its attempt resumes a handler that waits for its children: it starts once every child
    /// submitted so far has ended. (Set on the `run` command that follows `job.suspended` only.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaits_children: bool,
}

impl Workflow {
    /// The most jobs one job may depend on.
    pub const MAX_DEPENDENCIES: usize = 32;

    /// Whether the job waits for other jobs' ends before it may start.
    pub fn waits(&self) -> bool {
        !self.depends_on.is_empty() || self.is_batch || self.awaits_children
    }
}

/// How a job a workflow waited for ended, as the scheduler found it when it let the waiting job
/// start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ended {
    /// The job.
    pub id: JobId,
    /// `succeeded`, `failed` or `cancelled`.
    pub status: JobStatus,
    /// Its result, if it succeeded with one small enough to pass on ([`Upstream::RESULT_LIMIT`]
    /// each, and all of them within a budget); else `result_url` says where to read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Where to read a result not passed on (`GET /v1/jobs/{id}/result`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_url: Option<String>,
}

/// A batch's members at its end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Members {
    /// Members in all.
    pub total: u64,
    /// Members that succeeded.
    pub succeeded: u64,
    /// Members that failed (dead-lettered).
    pub failed: u64,
    /// Members that were cancelled.
    pub cancelled: u64,
    /// Each member and its status, in submission order, for a batch of at most
    /// [`Upstream::MEMBERS_LIMIT`] members (a larger one lists them at
    /// `GET /v1/batches/{id}/jobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<Vec<Ended>>,
}

/// What a job waited for, as it ended: the released `run` command of a job with dependencies, or
/// of a batch's callback, carries it to the handler.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Upstream {
    /// Its dependencies, in the order of `depends_on`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Ended>,
    /// Its batch's members (a batch's callback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Members>,
    /// Its children (an attempt resuming a handler that waited for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Members>,
}

impl Upstream {
    /// The largest result (JSON bytes) passed on inline.
    pub const RESULT_LIMIT: usize = 16 * 1024;
    /// The largest batch whose members are listed inline.
    pub const MEMBERS_LIMIT: usize = 1000;
}

/// The schedule and tick a job was submitted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FromSchedule {
    /// The schedule's id.
    pub id: String,
    /// The tick.
    pub tick: DateTime<Utc>,
}

/// What the scheduler weighs, besides the order of arrival and the tenants' fair share, to decide
/// which waiting job of a kind starts next. Carried by `job.submitted` and every `run` command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduling {
    /// Higher starts first ([`Scheduling::PRIORITIES`]; 0 by default).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// At most `limit` jobs of the tenant holding `key` run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyKey>,
    /// At most `limit` jobs of the tenant holding `key` start per `period_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

impl Scheduling {
    /// The priorities a job may have.
    pub const PRIORITIES: std::ops::RangeInclusive<i32> = -100..=100;
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// A concurrency key: a tenant's jobs sharing `key` (of any kind) never run more than `limit` at
/// once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyKey {
    /// Any name, 1 to 255 bytes (`account-42`).
    pub key: String,
    /// How many may run at once (1 to 10000).
    pub limit: u32,
}

impl ConcurrencyKey {
    /// The limits a key may have.
    pub const LIMITS: std::ops::RangeInclusive<u32> = 1..=10_000;
}

/// A rate limit: a tenant's jobs sharing `key` (of any kind) start at most `limit` times in any
/// `period_ms`; the others wait.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Any name, 1 to 255 bytes (`stripe:account-42`).
    pub key: String,
    /// Starts allowed per period (1 to 1000).
    pub limit: u32,
    /// The period, in ms (1 to 86400000).
    pub period_ms: u64,
}

impl RateLimit {
    /// The limits a rate may have.
    pub const LIMITS: std::ops::RangeInclusive<u32> = 1..=1000;
    /// The periods a rate may have.
    pub const PERIODS: std::ops::RangeInclusive<u64> = 1..=86_400_000;
}

/// `job.started`: a worker began an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// 1-based attempt number.
    pub attempt: u32,
    /// Which worker process runs it.
    pub worker: String,
}

/// `job.progressed`: the handler reported progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progressed {
    /// Attempt that reported it.
    pub attempt: u32,
    /// Units done.
    pub current: u64,
    /// Units in all, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `job.waiting`: the scheduler holds a due attempt back, and says why. Announced once per attempt
/// and reason, for a job that waits behind a gate (its concurrency key, its rate limit, a pause,
/// its tenant's cap) or has waited a while behind a higher priority or other tenants' turns; a
/// job that only waits for a free worker gets none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// The attempt held back.
    pub attempt: u32,
    /// What holds it.
    pub reason: WaitReason,
    /// The concurrency key or rate limit key, for those reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Why the scheduler holds a job back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// Its concurrency key has `limit` jobs running.
    ConcurrencyKey,
    /// Its rate limit's key started `limit` jobs within the period.
    RateLimit,
    /// Its kind is paused, for its tenant or for all.
    Paused,
    /// Its tenant has as many jobs of the kind running as its share allows.
    TenantCap,
    /// Jobs of a higher priority go first.
    Priority,
    /// Other tenants' jobs take their turns first.
    TenantShare,
    /// Jobs it depends on have not all ended.
    Dependencies,
    /// It is a batch's callback: the batch is not sealed, or members have not all ended.
    Batch,
    /// Its handler waits for its children, which have not all ended.
    Children,
}

impl WaitReason {
    /// Gates first, then the order of the line.
    pub const ALL: [WaitReason; 9] = [
        Self::Dependencies,
        Self::Batch,
        Self::Children,
        Self::ConcurrencyKey,
        Self::RateLimit,
        Self::Paused,
        Self::TenantCap,
        Self::Priority,
        Self::TenantShare,
    ];

    /// Whether it is a gate (the job may not start, whatever else waits) rather than its place
    /// in the line.
    pub fn is_gate(self) -> bool {
        !matches!(self, Self::Priority | Self::TenantShare)
    }

    /// The name used in events, the read model and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConcurrencyKey => "concurrency_key",
            Self::RateLimit => "rate_limit",
            Self::Paused => "paused",
            Self::TenantCap => "tenant_cap",
            Self::Priority => "priority",
            Self::TenantShare => "tenant_share",
            Self::Dependencies => "dependencies",
            Self::Batch => "batch",
            Self::Children => "children",
        }
    }
}

/// A result too large to inline, kept in the JetStream object store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRef {
    /// Object store bucket.
    pub bucket: String,
    /// Object name.
    pub object: String,
    /// Size in bytes of the JSON result.
    pub size: u64,
}

/// `job.succeeded`: the job ended with a result. Terminal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Succeeded {
    /// The attempt that succeeded.
    pub attempt: u32,
    /// The result, when small enough to inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Where the result is, when it was too large to inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ref: Option<ResultRef>,
    /// How long the attempt ran.
    pub duration_ms: u64,
}

/// What kind of failure ended an attempt; only a fatal one rules out another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The handler said another attempt may succeed (a panicking handler's attempts are
    /// reported so too).
    Retryable,
    /// The handler said no attempt will ever succeed.
    Fatal,
    /// The attempt outran its `timeout_ms`.
    Timeout,
    /// The handler panicked (a class of the contract that workers may report).
    Panic,
}

impl ErrorClass {
    /// Whether another attempt is worth making, attempts permitting.
    pub fn is_retryable(self) -> bool {
        self != Self::Fatal
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The kind of failure.
    pub class: ErrorClass,
    /// Human-readable message.
    pub message: String,
}

/// `job.failed`: an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    /// The attempt that failed.
    pub attempt: u32,
    /// Why.
    pub error: ErrorInfo,
    /// Whether another attempt follows (`job.retry_scheduled`) or the job is dead-lettered.
    pub will_retry: bool,
    /// How long the attempt ran.
    pub duration_ms: u64,
}

/// `job.retry_scheduled`: the next attempt will start at `run_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryScheduled {
    /// The attempt that will run.
    pub next_attempt: u32,
    /// Backoff chosen.
    pub delay_ms: u64,
    /// When it becomes due.
    pub run_at: DateTime<Utc>,
}

/// `job.dead_lettered`: no attempt is left (or the error was fatal). Terminal; status `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLettered {
    /// The last attempt.
    pub attempt: u32,
    /// Why the job was given up.
    pub reason: String,
    /// The last error.
    pub error: ErrorInfo,
}

/// `job.cancel_requested`: a client asked to cancel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequested {
    /// Optional reason given by the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `job.cancelled`: the job stopped on request, or because a job it depended on did not
/// succeed. Terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    /// The attempt that was running, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Why, when not on request (`dependency <id> failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `job.suspended`: the handler submitted children and waits for them without holding a worker:
/// its attempt ended, and the next one starts once every child has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspended {
    /// The attempt that ended waiting.
    pub attempt: u32,
    /// The attempt that resumes it.
    pub next_attempt: u32,
    /// The new limit of attempts (one more: a wait is no failure).
    pub max_attempts: u32,
}

/// `job.sealed`: a batch's members are all submitted; once every one has ended, the batch's
/// callback starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {}

/// `job.redriven`: an operator re-drove a dead-lettered job; it is queued again with a fresh
/// budget of attempts, numbered on from the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redriven {
    /// The re-drive's number (1 for the first), which keeps its terminal event apart from the
    /// earlier ones.
    pub generation: u32,
    /// The attempt that will run next.
    pub next_attempt: u32,
    /// The new limit of attempts (`next_attempt - 1` + the job's `max_attempts`).
    pub max_attempts: u32,
}

/// Every domain event of a job.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum JobEvent {
    Submitted(Submitted),
    Started(Started),
    Progressed(Progressed),
    Succeeded(Succeeded),
    Failed(Failed),
    RetryScheduled(RetryScheduled),
    DeadLettered(DeadLettered),
    CancelRequested(CancelRequested),
    Cancelled(Cancelled),
    Redriven(Redriven),
    Waiting(Waiting),
    Sealed(Sealed),
    Suspended(Suspended),
}

impl JobEvent {
    /// All short names, as used in subjects and in `type` filters after `job.`.
    pub const NAMES: [&'static str; 13] = [
        "submitted",
        "started",
        "progressed",
        "succeeded",
        "failed",
        "retry_scheduled",
        "dead_lettered",
        "cancel_requested",
        "cancelled",
        "redriven",
        "waiting",
        "sealed",
        "suspended",
    ];

    /// The short name: the last subject token (`succeeded`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Submitted(_) => "submitted",
            Self::Started(_) => "started",
            Self::Progressed(_) => "progressed",
            Self::Succeeded(_) => "succeeded",
            Self::Failed(_) => "failed",
            Self::RetryScheduled(_) => "retry_scheduled",
            Self::DeadLettered(_) => "dead_lettered",
            Self::CancelRequested(_) => "cancel_requested",
            Self::Cancelled(_) => "cancelled",
            Self::Redriven(_) => "redriven",
            Self::Waiting(_) => "waiting",
            Self::Sealed(_) => "sealed",
            Self::Suspended(_) => "suspended",
        }
    }

    /// Whether this event ends the job.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Succeeded(_) | Self::DeadLettered(_) | Self::Cancelled(_)
        )
    }

    /// The status the job has after this event, if the event sets one.
    pub fn status(&self) -> Option<JobStatus> {
        Some(match self {
            Self::Submitted(_) => JobStatus::Queued,
            Self::Started(_) => JobStatus::Running,
            Self::RetryScheduled(_) => JobStatus::RetryScheduled,
            Self::Succeeded(_) => JobStatus::Succeeded,
            Self::DeadLettered(_) => JobStatus::Failed,
            Self::Cancelled(_) => JobStatus::Cancelled,
            Self::Redriven(_) | Self::Suspended(_) => JobStatus::Queued,
            Self::Failed(f) if !f.will_retry => JobStatus::Failed,
            Self::Progressed(_)
            | Self::Failed(_)
            | Self::CancelRequested(_)
            | Self::Waiting(_)
            | Self::Sealed(_) => return None,
        })
    }
}

/// The full CloudEvents type for a short event name (`succeeded` → `dev.conveyor.job.succeeded`).
pub fn full_type(name: &str) -> String {
    format!("{TYPE_PREFIX}job.{name}")
}

impl Payload for JobEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Submitted(_) => "dev.conveyor.job.submitted",
            Self::Started(_) => "dev.conveyor.job.started",
            Self::Progressed(_) => "dev.conveyor.job.progressed",
            Self::Succeeded(_) => "dev.conveyor.job.succeeded",
            Self::Failed(_) => "dev.conveyor.job.failed",
            Self::RetryScheduled(_) => "dev.conveyor.job.retry_scheduled",
            Self::DeadLettered(_) => "dev.conveyor.job.dead_lettered",
            Self::CancelRequested(_) => "dev.conveyor.job.cancel_requested",
            Self::Cancelled(_) => "dev.conveyor.job.cancelled",
            Self::Redriven(_) => "dev.conveyor.job.redriven",
            Self::Waiting(_) => "dev.conveyor.job.waiting",
            Self::Sealed(_) => "dev.conveyor.job.sealed",
            Self::Suspended(_) => "dev.conveyor.job.suspended",
        }
    }

    fn to_data(&self) -> Value {
        let v = match self {
            Self::Submitted(d) => serde_json::to_value(d),
            Self::Started(d) => serde_json::to_value(d),
            Self::Progressed(d) => serde_json::to_value(d),
            Self::Succeeded(d) => serde_json::to_value(d),
            Self::Failed(d) => serde_json::to_value(d),
            Self::RetryScheduled(d) => serde_json::to_value(d),
            Self::DeadLettered(d) => serde_json::to_value(d),
            Self::CancelRequested(d) => serde_json::to_value(d),
            Self::Cancelled(d) => serde_json::to_value(d),
            Self::Redriven(d) => serde_json::to_value(d),
            Self::Waiting(d) => serde_json::to_value(d),
            Self::Sealed(d) => serde_json::to_value(d),
            Self::Suspended(d) => serde_json::to_value(d),
        };
        v.expect("event data always serialises")
    }

    fn from_data(event_type: &str, data: Value) -> Result<Self, DecodeError> {
        let name = event_type
            .strip_prefix("dev.conveyor.job.")
            .ok_or_else(|| DecodeError::UnknownType(event_type.to_owned()))?;
        Ok(match name {
            "submitted" => Self::Submitted(serde_json::from_value(data)?),
            "started" => Self::Started(serde_json::from_value(data)?),
            "progressed" => Self::Progressed(serde_json::from_value(data)?),
            "succeeded" => Self::Succeeded(serde_json::from_value(data)?),
            "failed" => Self::Failed(serde_json::from_value(data)?),
            "retry_scheduled" => Self::RetryScheduled(serde_json::from_value(data)?),
            "dead_lettered" => Self::DeadLettered(serde_json::from_value(data)?),
            "cancel_requested" => Self::CancelRequested(serde_json::from_value(data)?),
            "cancelled" => Self::Cancelled(serde_json::from_value(data)?),
            "redriven" => Self::Redriven(serde_json::from_value(data)?),
            "waiting" => Self::Waiting(serde_json::from_value(data)?),
            "sealed" => Self::Sealed(serde_json::from_value(data)?),
            "suspended" => Self::Suspended(serde_json::from_value(data)?),
            _ => return Err(DecodeError::UnknownType(event_type.to_owned())),
        })
    }
}

/// The kinds every conveyor worker serves out of the box.
pub fn builtin_kinds() -> Vec<JobKind> {
    [
        "noop",
        "sleep",
        "flaky",
        "fail",
        "batch",
        "fan_out",
        "report.job_stats",
    ]
    .into_iter()
    .map(|k| JobKind::parse(k).expect("built-in kinds are valid"))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips_through_its_type() {
        let now = Utc::now();
        let err = ErrorInfo {
            class: ErrorClass::Retryable,
            message: "boom".into(),
        };
        let all = vec![
            JobEvent::Submitted(Submitted {
                payload: serde_json::json!({"ms": 5}),
                max_attempts: 3,
                timeout_ms: 1000,
                run_at: Some(now),
                webhook: Some(Webhook {
                    url: "https://example.com/h".into(),
                }),
                scheduling: Scheduling {
                    priority: 5,
                    concurrency: Some(ConcurrencyKey {
                        key: "account-42".into(),
                        limit: 2,
                    }),
                    rate_limit: Some(RateLimit {
                        key: "stripe".into(),
                        limit: 10,
                        period_ms: 1000,
                    }),
                },
                schedule: Some(FromSchedule {
                    id: "nightly".into(),
                    tick: now,
                }),
                workflow: Workflow {
                    depends_on: vec![JobId::new()],
                    batch: Some(JobId::new()),
                    is_batch: false,
                    parent: Some(JobId::new()),
                    awaits_children: false,
                },
            }),
            JobEvent::Started(Started {
                attempt: 1,
                worker: "w".into(),
            }),
            JobEvent::Progressed(Progressed {
                attempt: 1,
                current: 1,
                total: None,
                message: None,
            }),
            JobEvent::Succeeded(Succeeded {
                attempt: 1,
                result: Some(serde_json::json!({"ok": true})),
                result_ref: None,
                duration_ms: 3,
            }),
            JobEvent::Failed(Failed {
                attempt: 1,
                error: err.clone(),
                will_retry: true,
                duration_ms: 1,
            }),
            JobEvent::RetryScheduled(RetryScheduled {
                next_attempt: 2,
                delay_ms: 10,
                run_at: now,
            }),
            JobEvent::DeadLettered(DeadLettered {
                attempt: 3,
                reason: "attempts exhausted".into(),
                error: err,
            }),
            JobEvent::CancelRequested(CancelRequested { reason: None }),
            JobEvent::Cancelled(Cancelled {
                attempt: Some(1),
                reason: Some("dependency failed".into()),
            }),
            JobEvent::Redriven(Redriven {
                generation: 1,
                next_attempt: 4,
                max_attempts: 6,
            }),
            JobEvent::Waiting(Waiting {
                attempt: 2,
                reason: WaitReason::ConcurrencyKey,
                key: Some("account-42".into()),
            }),
            JobEvent::Sealed(Sealed {}),
            JobEvent::Suspended(Suspended {
                attempt: 1,
                next_attempt: 2,
                max_attempts: 4,
            }),
        ];
        assert_eq!(all.len(), JobEvent::NAMES.len());
        for (ev, name) in all.into_iter().zip(JobEvent::NAMES) {
            assert_eq!(ev.name(), name);
            assert_eq!(ev.event_type(), full_type(name));
            let back = JobEvent::from_data(ev.event_type(), ev.to_data()).unwrap();
            assert_eq!(back, ev);
        }
    }

    #[test]
    fn wait_reasons_are_named_as_serialised() {
        for reason in WaitReason::ALL {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }

    #[test]
    fn terminal_events_set_terminal_statuses() {
        let ev = JobEvent::Cancelled(Cancelled {
            attempt: None,
            reason: None,
        });
        assert!(ev.is_terminal());
        assert!(ev.status().unwrap().is_terminal());
        assert_eq!(
            JobStatus::parse("retry_scheduled"),
            Some(JobStatus::RetryScheduled)
        );
        assert_eq!(JobStatus::parse("nope"), None);
    }
}

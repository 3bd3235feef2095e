//! What a job handler is, what it gets and what it may return.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bus::transition::JobEnvelope;
use bus::Bus;
use events::job::{ErrorClass, ErrorInfo, Progressed};
use events::lifecycle::AttemptOutcome;
use events::subjects::msg_id;
use events::{JobEvent, JobId, JobKind, Tenant};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How an attempt failed. The runtime alone maps it to JetStream: a retryable error schedules
/// another attempt with backoff while attempts remain; a fatal one dead-letters at once.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    /// Worth another attempt (a dependency was down, a flaky call).
    #[error("{0}")]
    Retryable(String),
    /// Will never succeed (invalid input): dead-letter now.
    #[error("{0}")]
    Fatal(String),
    /// The handler saw its cancellation token and stopped.
    #[error("cancelled")]
    Cancelled,
    /// Not a failure: the handler submitted children ([`JobContext::submit_child`]) and waits
    /// for them, holding no slot. The job runs again (its next attempt, with
    /// [`JobContext::upstream`]'s `children` saying how each ended) once every child has ended.
    #[error("waiting for its children")]
    WaitForChildren,
}

impl JobError {
    /// A retryable error.
    pub fn retryable(msg: impl Into<String>) -> Self {
        Self::Retryable(msg.into())
    }

    /// A fatal error.
    pub fn fatal(msg: impl Into<String>) -> Self {
        Self::Fatal(msg.into())
    }
}

/// The attempt's outcome a handler's error makes.
impl From<JobError> for AttemptOutcome {
    fn from(error: JobError) -> Self {
        let (class, message) = match error {
            JobError::Cancelled => return Self::Cancelled,
            JobError::WaitForChildren => return Self::WaitsForChildren,
            JobError::Retryable(message) => (ErrorClass::Retryable, message),
            JobError::Fatal(message) => (ErrorClass::Fatal, message),
        };
        Self::Failed(ErrorInfo { class, message })
    }
}

/// Reports progress by publishing `job.progressed`. Each report has a deterministic message id
/// (attempt and step), so a redelivered attempt that reports the same steps adds nothing.
#[derive(Debug, Clone)]
pub struct Progress {
    pub(crate) bus: Bus,
    /// The job, in the attempt's trace.
    pub(crate) to: JobEnvelope,
    pub(crate) attempt: u32,
    pub(crate) step: Arc<AtomicU64>,
}

impl Progress {
    /// Publishes `current` of `total` units done, with an optional message. Fails only when
    /// JetStream does not acknowledge; handlers usually log and go on.
    pub async fn report(
        &self,
        current: u64,
        total: Option<u64>,
        message: Option<String>,
    ) -> Result<(), bus::Error> {
        let step = self.step.fetch_add(1, Ordering::Relaxed) + 1;
        let ev = self.to.wrap(JobEvent::Progressed(Progressed {
            attempt: self.attempt,
            current,
            total,
            message,
        }));
        self.bus
            .publish_event(&ev, &msg_id::progress(self.to.job, self.attempt, step))
            .await
            .map(|_| ())
    }
}

/// Everything a handler knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job.
    pub id: JobId,
    /// Its tenant.
    pub tenant: Tenant,
    /// Its kind.
    pub kind: JobKind,
    /// Its input.
    pub payload: Value,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Fires when the job is cancelled, times out or the worker shuts down: stop soon after.
    pub cancel: CancellationToken,
    /// Publishes progress.
    pub progress: Progress,
    /// The read-model database, when the worker was given one.
    pub db: Option<PgPool>,
    /// How the jobs it waited for ended: its dependencies (with their results), a batch's
    /// members (for the batch's callback), or its children (for an attempt that resumes a wait
    /// for them). `None` for a job that waited for none.
    pub upstream: Option<events::job::Upstream>,
    /// How many times the job waited for its children before this attempt.
    pub round: u32,
    /// Children submitted by this attempt so far (numbers their ids).
    pub children: Arc<AtomicU64>,
}

impl JobContext {
    /// Submits a child of this job: a job of `kind` with `payload` and default options, tied to
    /// this one (its `parent`) and run like any job. Its id is derived from the job's round (how
    /// many times it waited for its children before) and the child's place in it, so an attempt
    /// run again (after a crash, or a retry) submits the same children, stored once, and they
    /// list in the order submitted. Published straight to the log, as a schedule's jobs are:
    /// it is not validated against the kind's schema and does not count against the tenant's
    /// submission rate. Return [`JobError::WaitForChildren`] to resume once they have all ended.
    pub async fn submit_child(&self, kind: &JobKind, payload: Value) -> Result<JobId, bus::Error> {
        let n = self.children.fetch_add(1, Ordering::Relaxed);
        let id = JobId::derived_nth(
            self.id.timestamp_ms(),
            &format!("{}/round/{}", self.id, self.round),
            u16::try_from(n).unwrap_or(u16::MAX),
        );
        // Already submitted by an earlier run of this round (past the duplicate window, a
        // second publish would be stored again).
        let events = self.progress.bus.events_stream().await?;
        let subject = self
            .progress
            .bus
            .ns()
            .job_event(&self.tenant, id, "submitted");
        if bus::last_message(&events, subject).await?.is_some() {
            return Ok(id);
        }
        let submitted = events::job::Submitted {
            payload,
            max_attempts: 3,
            timeout_ms: 300_000,
            run_at: None,
            webhook: None,
            scheduling: Default::default(),
            schedule: None,
            workflow: events::job::Workflow {
                parent: Some(self.id),
                ..Default::default()
            },
        };
        let to = JobEnvelope {
            job: id,
            kind: kind.clone(),
            ..self.progress.to.clone()
        };
        self.progress
            .bus
            .publish_transition(
                &to,
                events::lifecycle::submit(id, submitted, chrono::Utc::now()),
            )
            .await?;
        Ok(id)
    }
}

/// A job handler: one per kind.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt. The returned value is the job's result.
    async fn run(&self, job: JobContext) -> Result<Value, JobError>;

    /// The JSON Schema of this kind's payload, if it declares one. Workers publish it in the
    /// kind registry; the API then validates submissions of the kind against it (`422` with the
    /// violations) and lists it at `GET /v1/kinds`.
    fn schema(&self) -> Option<Value> {
        None
    }
}

/// Which handler runs which kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<JobKind, Arc<dyn Handler>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.handlers.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in kinds: `noop`, `sleep`, `flaky`, `fail`, `batch`, `fan_out`, `report.job_stats`.
    pub fn builtin() -> Self {
        crate::handlers::register_builtin(Self::new())
    }

    /// Adds (or replaces) the handler of `kind`.
    pub fn register(mut self, kind: &str, handler: impl Handler) -> Self {
        let kind = JobKind::parse(kind).expect("handler kinds must be valid job kinds");
        self.handlers.insert(kind, Arc::new(handler));
        self
    }

    /// The handler of `kind`.
    pub fn get(&self, kind: &JobKind) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }

    /// The kinds served, sorted.
    pub fn kinds(&self) -> Vec<JobKind> {
        let mut kinds: Vec<_> = self.handlers.keys().cloned().collect();
        kinds.sort();
        kinds
    }
}

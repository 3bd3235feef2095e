//! The job lifecycle as a pure decider: given where a job stands and what just happened, which
//! events to append and which command to queue next, each with its deterministic message id.
//!
//! Nothing here reads a clock, draws a random number or does I/O: `now` and the retry `jitter`
//! come in as arguments, so every decision is a plain function that tests drive exhaustively.
//! The API (submission, cancellation, re-drive) and the worker (start, conclude) decide here and
//! publish the [`Transition`] with `bus::transition`, which keeps the one ordering rule: the
//! events are stored first, in order, and only then the command, so no step of a job ever runs
//! before the fact that queued it is in the log.
//!
//! ```
//! use chrono::Utc;
//! use events::job::Submitted;
//! use events::lifecycle::{self, AttemptOutcome, Attempt};
//! use events::{Command, JobId, RetryPolicy};
//! use std::time::Duration;
//!
//! let job = JobId::new();
//! let submitted = Submitted { payload: serde_json::json!({}), max_attempts: 2, timeout_ms: 1000,
//!     run_at: None, webhook: None, scheduling: Default::default(), schedule: None,
//!     workflow: Default::default() };
//! let queued = lifecycle::submit(job, submitted, Utc::now());
//! let Some(Command::Run(run)) = queued.command.map(|c| c.payload) else { unreachable!() };
//! let policy = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(60));
//! let failed = Attempt::new(job, run).conclude(AttemptOutcome::TimedOut, 1000, &policy, Utc::now(), 0.5);
//! let names: Vec<_> = failed.events.iter().map(|e| e.payload.name()).collect();
//! assert_eq!(names, ["failed", "retry_scheduled"]);
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::command::{CancelJob, Command, RunJob};
use crate::ids::JobId;
use crate::job::{
    CancelRequested, Cancelled, DeadLettered, ErrorClass, ErrorInfo, Failed, JobEvent, Redriven,
    ResultRef, RetryScheduled, Started, Submitted, Succeeded,
};
use crate::retry::RetryPolicy;
use crate::subjects::msg_id;

/// The most times a job may wait for its children: a handler that waits for ever (with no
/// child, say) ends dead-lettered rather than taking a slot every round for ever.
pub const MAX_WAITS: u32 = 100;

/// A message to publish under its `Nats-Msg-Id`: a republish of the same step carries the same
/// id, so the stream stores it once.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing<P> {
    /// The deterministic message id.
    pub msg_id: String,
    /// The event or command.
    pub payload: P,
}

impl<P> Outgoing<P> {
    fn new(msg_id: String, payload: P) -> Self {
        Self { msg_id, payload }
    }
}

/// What one step of a job publishes: `events` in order, then `command`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// When the step happened: the `time` of its events.
    pub at: DateTime<Utc>,
    /// The events to append, in order.
    pub events: Vec<Outgoing<JobEvent>>,
    /// The command to queue once every event is stored.
    pub command: Option<Outgoing<Command>>,
    /// Whether the job has a webhook, told with a terminal event so the webhook fan-in need not
    /// look the job up (`None`: not known, as in commands of older versions).
    pub webhook: Option<bool>,
}

impl Transition {
    fn new(at: DateTime<Utc>) -> Self {
        Self {
            at,
            events: Vec::new(),
            command: None,
            webhook: None,
        }
    }

    fn event(mut self, msg_id: String, event: JobEvent) -> Self {
        self.events.push(Outgoing::new(msg_id, event));
        self
    }

    fn then(mut self, msg_id: String, command: Command) -> Self {
        self.command = Some(Outgoing::new(msg_id, command));
        self
    }
}

/// A new job: `job.submitted`, then its first `run` command.
pub fn submit(job: JobId, submitted: Submitted, now: DateTime<Utc>) -> Transition {
    let command = first_run(job, &submitted, now).command;
    Transition {
        command,
        ..Transition::new(now).event(msg_id::submitted(job), JobEvent::Submitted(submitted))
    }
}

/// The first `run` command of a submitted job alone: what a repeat of the submission publishes
/// again, since the command may be what the first try lost after storing the event.
pub fn first_run(job: JobId, submitted: &Submitted, now: DateTime<Utc>) -> Transition {
    Transition::new(now).then(msg_id::run(job, 1), Command::Run(RunJob::first(submitted)))
}

/// A client's request to cancel: `job.cancel_requested`, then the `cancel` command that marks
/// the job for every worker. (Whether the job may still be cancelled is the caller's to check.)
pub fn cancel(job: JobId, now: DateTime<Utc>) -> Transition {
    Transition::new(now)
        .event(
            msg_id::cancel(job, "cancel_requested"),
            JobEvent::CancelRequested(CancelRequested { reason: None }),
        )
        .then(msg_id::cancel(job, "cancel"), Command::Cancel(CancelJob {}))
}

/// An operator's re-drive of a dead-lettered job: a fresh budget of `submitted.max_attempts`
/// attempts, numbered on from `last_attempt`, in generation `earlier_redrives + 1` (so its
/// terminal event is apart from the earlier ones). Returns the re-drive and its transition,
/// `job.redriven` then the next `run` command.
pub fn redrive(
    job: JobId,
    submitted: &Submitted,
    last_attempt: u32,
    earlier_redrives: u32,
    now: DateTime<Utc>,
) -> (Redriven, Transition) {
    let redriven = Redriven {
        generation: earlier_redrives.saturating_add(1),
        next_attempt: last_attempt.saturating_add(1),
        max_attempts: last_attempt.saturating_add(submitted.max_attempts),
    };
    let transition = Transition::new(now)
        .event(
            msg_id::redriven(job, redriven.generation),
            JobEvent::Redriven(redriven.clone()),
        )
        .then(
            msg_id::run(job, redriven.next_attempt),
            Command::Run(RunJob::redrive(submitted, &redriven)),
        );
    (redriven, transition)
}

/// A batch's members are all submitted: `job.sealed` on the batch's own job, whose callback then
/// starts once every member has ended. (Whether it is a batch still open is the caller's to
/// check.)
pub fn seal(batch: JobId, now: DateTime<Utc>) -> Transition {
    Transition::new(now).event(
        msg_id::sealed(batch),
        JobEvent::Sealed(crate::job::Sealed {}),
    )
}

/// How an attempt ended, as the worker saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// The handler returned a result: inline, or stored aside when large.
    Succeeded {
        /// The result, when small enough to inline.
        result: Option<Value>,
        /// Where the result is, when it was not.
        result_ref: Option<ResultRef>,
    },
    /// The handler saw its cancellation token and stopped.
    Cancelled,
    /// The attempt outran its `timeout_ms`.
    TimedOut,
    /// The handler failed (or panicked).
    Failed(ErrorInfo),
    /// The handler submitted children and waits for them, holding no worker meanwhile.
    WaitsForChildren,
}

/// What to do with a `run` command that just arrived (see [`Attempt::start`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// Not due yet: hand the command back for this long.
    NotDue(Duration),
    /// The job was cancelled before this attempt started: `job.cancelled`.
    Cancelled(Transition),
    /// Run the attempt: `job.started`.
    Started(Transition),
}

/// One attempt of a job, as its `run` command describes it: the state the worker's decisions
/// start from.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    job: JobId,
    run: RunJob,
}

impl Attempt {
    /// The attempt `run` of `job`.
    pub fn new(job: JobId, run: RunJob) -> Self {
        Self { job, run }
    }

    /// The run command.
    pub fn run(&self) -> &RunJob {
        &self.run
    }

    /// A step of this attempt; a terminal event says whether the job has a webhook.
    fn transition(&self, at: DateTime<Utc>) -> Transition {
        Transition {
            webhook: self.run.webhook,
            ..Transition::new(at)
        }
    }

    fn terminal(&self, at: DateTime<Utc>, event: JobEvent) -> Transition {
        self.transition(at)
            .event(msg_id::terminal(self.job, self.run.generation), event)
    }

    /// The attempt ends waiting for the job's children: `job.suspended`, then the next attempt's
    /// `run` command, which the scheduler holds until every child has ended. A wait is no
    /// failure: the limit of attempts grows by one.
    fn suspend(&self, now: DateTime<Utc>) -> Transition {
        let (attempt, next_attempt) = (self.run.attempt, self.run.attempt + 1);
        let max_attempts = self.run.max_attempts.saturating_add(1);
        let mut workflow = self.run.workflow.clone();
        workflow.awaits_children = true;
        self.transition(now)
            .event(
                msg_id::attempt_event(self.job, attempt, "suspended"),
                JobEvent::Suspended(crate::job::Suspended {
                    attempt,
                    next_attempt,
                    max_attempts,
                }),
            )
            .then(
                msg_id::run(self.job, next_attempt),
                Command::Run(RunJob {
                    attempt: next_attempt,
                    max_attempts,
                    run_at: None,
                    workflow,
                    round: self.run.round + 1,
                    upstream: None,
                    ..self.run.clone()
                }),
            )
    }

    /// Ends the job unrun because a job it depended on ended other than `succeeded` (`why`
    /// says which): `job.cancelled`, under the job's one terminal id.
    pub fn abandon(&self, now: DateTime<Utc>, why: String) -> Transition {
        self.terminal(
            now,
            JobEvent::Cancelled(Cancelled {
                attempt: None,
                reason: Some(why),
            }),
        )
    }

    /// Decides what a worker does with the command: hand it back until its `run_at`, end the job
    /// if a cancel marker is `cancel_requested`, else start the attempt as `worker`.
    pub fn start(&self, now: DateTime<Utc>, cancel_requested: bool, worker: &str) -> Start {
        if cancel_requested {
            return Start::Cancelled(self.terminal(
                now,
                JobEvent::Cancelled(Cancelled {
                    attempt: None,
                    reason: None,
                }),
            ));
        }
        let wait = self.run.run_at.and_then(|at| (at - now).to_std().ok());
        if let Some(wait) = wait.filter(|wait| !wait.is_zero()) {
            return Start::NotDue(wait);
        }
        Start::Started(self.transition(now).event(
            msg_id::attempt_event(self.job, self.run.attempt, "started"),
            JobEvent::Started(Started {
                attempt: self.run.attempt,
                worker: worker.to_owned(),
            }),
        ))
    }

    /// Decides what follows the attempt's `outcome`: `job.succeeded`; `job.cancelled`;
    /// `job.failed` + `job.retry_scheduled` + the next attempt's `run` command after
    /// `policy`'s delay (with `jitter` in `[0, 1)`); or `job.failed` + `job.dead_lettered` when
    /// the error was fatal or no attempt is left.
    pub fn conclude(
        &self,
        outcome: AttemptOutcome,
        duration_ms: u64,
        policy: &RetryPolicy,
        now: DateTime<Utc>,
        jitter: f64,
    ) -> Transition {
        let attempt = self.run.attempt;
        let error = match outcome {
            AttemptOutcome::Succeeded { result, result_ref } => {
                return self.terminal(
                    now,
                    JobEvent::Succeeded(Succeeded {
                        attempt,
                        result,
                        result_ref,
                        duration_ms,
                    }),
                );
            }
            AttemptOutcome::Cancelled => {
                return self.terminal(
                    now,
                    JobEvent::Cancelled(Cancelled {
                        attempt: Some(attempt),
                        reason: None,
                    }),
                );
            }
            AttemptOutcome::WaitsForChildren if self.run.round < MAX_WAITS => {
                return self.suspend(now)
            }
            AttemptOutcome::WaitsForChildren => ErrorInfo {
                class: ErrorClass::Fatal,
                message: format!("waited for its children {MAX_WAITS} times"),
            },
            AttemptOutcome::TimedOut => ErrorInfo {
                class: ErrorClass::Timeout,
                message: format!("attempt exceeded its timeout of {} ms", self.run.timeout_ms),
            },
            AttemptOutcome::Failed(error) => error,
        };
        let will_retry = error.class.is_retryable() && attempt < self.run.max_attempts;
        let failed = self.transition(now).event(
            msg_id::attempt_event(self.job, attempt, "failed"),
            JobEvent::Failed(Failed {
                attempt,
                error: error.clone(),
                will_retry,
                duration_ms,
            }),
        );
        if !will_retry {
            let reason = if error.class.is_retryable() {
                format!(
                    "attempts exhausted ({attempt} of {})",
                    self.run.max_attempts
                )
            } else {
                "fatal error".to_owned()
            };
            return failed.event(
                msg_id::terminal(self.job, self.run.generation),
                JobEvent::DeadLettered(DeadLettered {
                    attempt,
                    reason,
                    error,
                }),
            );
        }
        let delay = policy.jittered(attempt, jitter);
        let run_at = now + delay;
        let next_attempt = attempt + 1;
        failed
            .event(
                msg_id::attempt_event(self.job, attempt, "retry_scheduled"),
                JobEvent::RetryScheduled(RetryScheduled {
                    next_attempt,
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    run_at,
                }),
            )
            .then(
                msg_id::run(self.job, next_attempt),
                Command::Run(RunJob {
                    attempt: next_attempt,
                    run_at: Some(run_at),
                    ..self.run.clone()
                }),
            )
    }
}

#[cfg(test)]
mod tests;

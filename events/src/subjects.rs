//! Subject, stream, bucket and message-id builders. All names hang off a [`Namespace`], so each
//! environment or test owns a disjoint set of them on a shared server.
//!
//! | what | name |
//! |---|---|
//! | domain event | `<ns>.events.<tenant>.job.<job_id>.<event>` |
//! | run command, waiting for the scheduler | `<ns>.cmd.wait.<kind>.<job_id>` |
//! | run command, released to the workers | `<ns>.cmd.run.<kind>.<job_id>` |
//! | other commands | `<ns>.cmd.<action>.<kind>` (`cancel`, `webhook`) |
//! | cancel broadcast (core NATS) | `<ns>.ctl.cancel` |
//! | streams | `<NS>_EVENTS` (Limits), `<NS>_COMMANDS` (WorkQueue) |
//! | buckets | `<NS>_IDEMPOTENCY`, `<NS>_CANCELS`, `<NS>_KINDS`, `<NS>_OUTCOMES`, `<NS>_PAUSES`, `<NS>_SHARES`, `<NS>_SCHEDULES`, `<NS>_RATES` (KV), `<NS>_RESULTS` (object store) |
//!
//! Kinds may contain dots (`report.job_stats`): a cancel or webhook command ends with its kind,
//! where a `>` filter takes it whole, and a run command has exactly one token (the job) after it.

use crate::command::Command;
use crate::envelope::Envelope;
use crate::ids::{JobId, JobKind, Namespace, Tenant};
use crate::job::JobEvent;

impl Namespace {
    fn upper(&self) -> String {
        self.as_str().to_ascii_uppercase()
    }

    /// The EVENTS stream: the log, source of truth.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.upper())
    }

    /// The COMMANDS stream: the work queue.
    pub fn commands_stream(&self) -> String {
        format!("{}_COMMANDS", self.upper())
    }

    /// Idempotency-key bucket (KV).
    pub fn idempotency_bucket(&self) -> String {
        format!("{}_IDEMPOTENCY", self.upper())
    }

    /// Cancellation-marker bucket (KV).
    pub fn cancels_bucket(&self) -> String {
        format!("{}_CANCELS", self.upper())
    }

    /// Kind registry (KV): each worker records the kinds it serves and their payload schemas,
    /// so the API accepts them and can validate payloads without the handler's code.
    pub fn kinds_bucket(&self) -> String {
        format!("{}_KINDS", self.upper())
    }

    /// Claims on the end of attempts run by workers of the worker protocol (KV, one key per
    /// attempt): whichever report claims an attempt first ends it, so two reports on one
    /// attempt (a released lease and its next holder, two concurrent reports) cannot both.
    pub fn outcomes_bucket(&self) -> String {
        format!("{}_OUTCOMES", self.upper())
    }

    /// Paused kinds (KV): `all.<kind>` for every tenant, `tenant.<tenant>.<kind>` for one.
    pub fn pauses_bucket(&self) -> String {
        format!("{}_PAUSES", self.upper())
    }

    /// Tenants' shares of the workers (KV): `<tenant>`.
    pub fn shares_bucket(&self) -> String {
        format!("{}_SHARES", self.upper())
    }

    /// Rate limits' recent starts (KV): `<tenant>.<key digest>`.
    pub fn rates_bucket(&self) -> String {
        format!("{}_RATES", self.upper())
    }

    /// Schedules (KV): `<tenant>.<id>`, each with the last tick it acted on.
    pub fn schedules_bucket(&self) -> String {
        format!("{}_SCHEDULES", self.upper())
    }

    /// Large-result bucket (object store).
    pub fn results_bucket(&self) -> String {
        format!("{}_RESULTS", self.upper())
    }

    /// Every domain event.
    pub fn all_events(&self) -> String {
        format!("{self}.events.>")
    }

    /// Every event of one tenant.
    pub fn tenant_events(&self, tenant: &Tenant) -> String {
        format!("{self}.events.{tenant}.>")
    }

    /// Every event of one job.
    pub fn job_events(&self, tenant: &Tenant, job: JobId) -> String {
        format!("{self}.events.{tenant}.job.{job}.*")
    }

    /// The subject of one event type of one job (for direct gets of the last such event).
    pub fn job_event(&self, tenant: &Tenant, job: JobId, name: &str) -> String {
        format!("{self}.events.{tenant}.job.{job}.{name}")
    }

    /// Where a domain event is published.
    pub fn event_subject(&self, ev: &Envelope<JobEvent>) -> String {
        self.job_event(&ev.tenant, ev.job, ev.payload.name())
    }

    /// Every command.
    pub fn all_commands(&self) -> String {
        format!("{self}.cmd.>")
    }

    /// Where a command is published. A run command goes to the scheduler first
    /// ([`Namespace::wait_command_of`]), which releases it to the workers
    /// ([`Namespace::run_command_of`]). Both subjects end with the job, so whether a job has a
    /// run command waiting or running is a direct lookup.
    pub fn command_subject(&self, cmd: &Envelope<Command>) -> String {
        match cmd.payload {
            Command::Run(_) => self.wait_command_of(&cmd.kind, cmd.job),
            _ => format!("{self}.cmd.{}.{}", cmd.payload.action(), cmd.kind),
        }
    }

    /// Every run command waiting for the scheduler: its consumer's filter.
    pub fn wait_commands(&self) -> String {
        format!("{self}.cmd.wait.>")
    }

    /// The subject of one job's run command while it waits for the scheduler.
    pub fn wait_command_of(&self, kind: &JobKind, job: JobId) -> String {
        format!("{self}.cmd.wait.{kind}.{job}")
    }

    /// Every run command released to the workers, of every kind.
    pub fn released_commands(&self) -> String {
        format!("{self}.cmd.run.>")
    }

    /// The events that end an attempt (or a job without one): what frees a scheduler's slot.
    pub fn attempt_end_events(&self) -> Vec<String> {
        [
            "succeeded",
            "failed",
            "dead_lettered",
            "cancelled",
            "suspended",
        ]
        .iter()
        .map(|name| format!("{self}.events.*.job.*.{name}"))
        .collect()
    }

    /// The run commands of one kind: one worker consumer's filter. (Every run subject has
    /// exactly one token after the kind, so kinds with dots do not overlap.)
    pub fn run_commands(&self, kind: &JobKind) -> String {
        format!("{self}.cmd.run.{kind}.*")
    }

    /// The subject of one job's run commands.
    pub fn run_command_of(&self, kind: &JobKind, job: JobId) -> String {
        format!("{self}.cmd.run.{kind}.{job}")
    }

    /// Every `job.submitted`: what the submissions audit reads.
    pub fn submitted_events(&self) -> String {
        format!("{self}.events.*.job.*.submitted")
    }

    /// Every `job.redriven`.
    pub fn redriven_events(&self) -> String {
        format!("{self}.events.*.job.*.redriven")
    }

    /// All cancel commands: the canceller consumer's filter.
    pub fn cancel_commands(&self) -> String {
        format!("{self}.cmd.cancel.>")
    }

    /// All webhook delivery commands: the webhook delivery consumer's filter.
    pub fn webhook_commands(&self) -> String {
        format!("{self}.cmd.webhook.>")
    }

    /// The terminal events of every job: what the webhook fan-in reads.
    pub fn terminal_events(&self) -> Vec<String> {
        ["succeeded", "dead_lettered", "cancelled"]
            .iter()
            .map(|name| format!("{self}.events.*.job.*.{name}"))
            .collect()
    }

    /// Failed webhook deliveries (KV), for operators to list and re-drive.
    pub fn webhook_failures_bucket(&self) -> String {
        format!("{}_WEBHOOK_FAILURES", self.upper())
    }

    /// Core-NATS broadcast that tells every worker process to cancel a job it may be running.
    pub fn cancel_broadcast(&self) -> String {
        format!("{self}.ctl.cancel")
    }
}

/// Parses the tenant, job id and event name out of an event subject; `None` if it is not one.
pub fn parse_event_subject<'a>(
    ns: &Namespace,
    subject: &'a str,
) -> Option<(&'a str, &'a str, &'a str)> {
    let rest = subject
        .strip_prefix(ns.as_str())?
        .strip_prefix(".events.")?;
    let mut parts = rest.split('.');
    let tenant = parts.next()?;
    (parts.next()? == "job").then_some(())?;
    let job = parts.next()?;
    let name = parts.next()?;
    parts.next().is_none().then_some((tenant, job, name))
}

/// JetStream `Nats-Msg-Id`s. A republish after an ambiguous failure, or the same step run twice by
/// a redelivered command, carries the same id, so the stream stores it once (within the
/// duplicate window).
pub mod msg_id {
    use crate::ids::JobId;

    /// The one `job.submitted` of a job.
    pub fn submitted(job: JobId) -> String {
        format!("{job}.submitted")
    }

    /// The run command of an attempt.
    pub fn run(job: JobId, attempt: u32) -> String {
        format!("{job}.{attempt}.run")
    }

    /// The scheduler's release of an attempt's run command to the workers.
    pub fn released(job: JobId, attempt: u32, generation: u32) -> String {
        format!("{job}.{attempt}.{generation}.released")
    }

    /// The one `job.sealed` of a batch.
    pub fn sealed(batch: JobId) -> String {
        format!("{batch}.sealed")
    }

    /// The scheduler's `job.waiting` of an attempt, one per reason.
    pub fn waiting(job: JobId, attempt: u32, reason: &str) -> String {
        format!("{job}.{attempt}.waiting.{reason}")
    }

    /// An event of an attempt (`started`, `failed`, `retry_scheduled`).
    pub fn attempt_event(job: JobId, attempt: u32, name: &str) -> String {
        format!("{job}.{attempt}.{name}")
    }

    /// A progress report of an attempt.
    pub fn progress(job: JobId, attempt: u32, step: u64) -> String {
        format!("{job}.{attempt}.progressed.{step}")
    }

    /// The terminal event. Shared by `succeeded`, `dead_lettered` and `cancelled`, so at most one
    /// of them is ever stored, whichever comes first (a zombie worker's late result is dropped).
    /// Each re-drive (`generation`) has its own.
    pub fn terminal(job: JobId, generation: u32) -> String {
        if generation == 0 {
            format!("{job}.terminal")
        } else {
            format!("{job}.terminal.{generation}")
        }
    }

    /// The `job.redriven` of a re-drive.
    pub fn redriven(job: JobId, generation: u32) -> String {
        format!("{job}.redriven.{generation}")
    }

    /// The webhook delivery command of a job (`redrive` > 0 for an operator's re-drive).
    pub fn webhook(job: JobId, redrive: u64) -> String {
        if redrive == 0 {
            format!("{job}.webhook")
        } else {
            format!("{job}.webhook.redrive.{redrive}")
        }
    }

    /// The cancellation request and command.
    pub fn cancel(job: JobId, what: &str) -> String {
        format!("{job}.{what}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let ns = Namespace::parse("conveyor").unwrap();
        assert_eq!(ns.events_stream(), "CONVEYOR_EVENTS");
        assert_eq!(ns.commands_stream(), "CONVEYOR_COMMANDS");
        let kind = JobKind::parse("report.job_stats").unwrap();
        assert_eq!(
            ns.run_commands(&kind),
            "conveyor.cmd.run.report.job_stats.*"
        );
        let job = JobId::new();
        let subject = ns.job_event(&Tenant::parse("acme").unwrap(), job, "succeeded");
        let job_str = job.to_string();
        assert_eq!(
            parse_event_subject(&ns, &subject),
            Some(("acme", job_str.as_str(), "succeeded"))
        );
        assert_eq!(parse_event_subject(&ns, "conveyor.cmd.run.noop"), None);
    }
}

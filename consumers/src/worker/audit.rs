//! The submissions audit: every `job.submitted` in the log gets its first run command, and every
//! `job.redriven` the run command of its next attempt.
//!
//! The API stores the event, then the run command. A crash or an outage between the two leaves
//! the event without its command, and the job would stay queued forever. One durable consumer,
//! shared by the workers, reads each of these events [`AUDIT_DELAY`] after it was made and
//! checks that its job has what it needs, in this order:
//!
//! 1. the read model says the attempt started, or the job was cancelled (a cheap batch query;
//!    skipped if Postgres is down);
//! 2. else COMMANDS holds a run command for it (run subjects end with the job, so this is a
//!    direct get);
//! 3. else EVENTS holds a `job.started` or `job.cancelled` stored after the audited event: a
//!    worker publishes those *before* it acknowledges (and so removes) the command, so checking
//!    the command first and the events second leaves no gap.
//!
//! A job that has none of these lost its command: the audit publishes it again, under the
//! original's message id.

use std::sync::Arc;
use std::time::Duration;

use bus::consume::{Delivery, Disposition, Pull};
use chrono::Utc;
use events::command::RunJob;
use events::subjects::msg_id;
use events::{streams, Command, Envelope, JobEvent};
use tokio_util::sync::CancellationToken;

use super::{Shared, SOURCE};

/// How old a submission is before it is audited: the API publishes the command right after the
/// event, so by then it is there unless it was lost.
const AUDIT_DELAY: Duration = Duration::from_secs(5);
/// Submissions taken per pull.
const BATCH: usize = 256;
/// Submissions audited at once (each waits for its age, then asks the read model).
const CONCURRENCY: usize = 16;

pub(super) async fn audit_loop(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> crate::Result<()> {
    let spec = streams::submissions_audit_consumer(shared.bus.ns());
    let pull = Pull::new(spec, BATCH).concurrency(CONCURRENCY);
    let bus = shared.bus.clone();
    let stop = shutdown.clone();
    bus.consume(pull, &shutdown, move |delivery| {
        let (shared, stop) = (shared.clone(), stop.clone());
        async move { audit(&shared, delivery, &stop).await }
    })
    .await?;
    Ok(())
}

/// Checks that one submission (or redrive) has what it needs, and repairs it if not.
async fn audit(shared: &Shared, delivery: Delivery, shutdown: &CancellationToken) -> Disposition {
    let Ok(
        ev @ Envelope {
            payload: JobEvent::Submitted(_) | JobEvent::Redriven(_),
            ..
        },
    ) = bus::decode_event(delivery.headers.as_ref(), &delivery.payload)
    else {
        tracing::warn!(subject = %delivery.subject, "submissions audit: unreadable event skipped");
        return Disposition::Terminate;
    };
    let age = (Utc::now() - ev.time).to_std().unwrap_or_default();
    if let Some(wait) = AUDIT_DELAY.checked_sub(age) {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // Handed back to whoever audits next.
            _ = shutdown.cancelled() => return Disposition::Retry(None),
        }
    }
    if settled_in_read_model(shared, &ev).await {
        return Disposition::Ack;
    }
    match repair(shared, delivery.stream_sequence, &ev).await {
        Ok(()) => Disposition::Ack,
        // A stored event it cannot read stays unreadable: asking again would not help.
        Err(e @ bus::Error::Decode(_)) => {
            tracing::warn!(job_id = %ev.job, error = %e, "submissions audit: unreadable submission; skipped");
            Disposition::Terminate
        }
        Err(e) => {
            tracing::warn!(job_id = %ev.job, error = %e, "submissions audit: check failed; retrying");
            Disposition::Retry(Some(Duration::from_secs(1)))
        }
    }
}

/// The attempt the audited event's run command starts.
fn next_attempt(ev: &Envelope<JobEvent>) -> u32 {
    match &ev.payload {
        JobEvent::Redriven(r) => r.next_attempt,
        _ => 1,
    }
}

/// Whether the read model shows the attempt `ev` asks for as started, or its job as cancelled
/// (`false` if it cannot be read).
async fn settled_in_read_model(shared: &Shared, ev: &Envelope<JobEvent>) -> bool {
    let Some(db) = &shared.db else {
        return false;
    };
    let attempt = i32::try_from(next_attempt(ev)).unwrap_or(i32::MAX);
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND (attempt >= $2 OR status = 'cancelled'))",
    )
    .bind(ev.job.0)
    .bind(attempt)
    .fetch_one(db)
    .await
    .unwrap_or(false)
}

/// Publishes the run command that follows `ev` (stored at `seq`) again if the log shows none.
async fn repair(shared: &Shared, seq: u64, ev: &Envelope<JobEvent>) -> Result<(), bus::Error> {
    let ns = shared.bus.ns();
    let commands = shared.bus.commands_stream().await?;
    if bus::last_message(&commands, ns.run_command_of(&ev.kind, ev.job))
        .await?
        .is_some()
    {
        return Ok(());
    }
    let events = shared.bus.events_stream().await?;
    for name in ["started", "cancelled"] {
        let last = bus::last_message(&events, ns.job_event(&ev.tenant, ev.job, name)).await?;
        if last.is_some_and(|m| m.sequence > seq) {
            return Ok(());
        }
    }
    let run = match &ev.payload {
        JobEvent::Submitted(job) => RunJob::first(job),
        JobEvent::Redriven(redriven) => {
            // The payload and limits are the submission's.
            let subject = ns.job_event(&ev.tenant, ev.job, "submitted");
            let Some(msg) = bus::last_message(&events, subject).await? else {
                // Redriven without a submission: nothing to repeat.
                return Ok(());
            };
            match bus::decode_event(Some(&msg.headers), &msg.payload)? {
                Envelope {
                    payload: JobEvent::Submitted(job),
                    ..
                } => RunJob::redrive(&job, redriven),
                _ => return Ok(()),
            }
        }
        _ => return Ok(()),
    };
    tracing::warn!(job_id = %ev.job, tenant = %ev.tenant, kind = %ev.kind, event = ev.payload.name(),
        "submissions audit: no run command followed the event; publishing it again");
    metrics::counter!("conveyor_submissions_repaired_total").increment(1);
    let id = msg_id::run(ev.job, run.attempt);
    let cmd = Envelope::new(
        SOURCE,
        ev.job,
        ev.tenant.clone(),
        ev.kind.clone(),
        Command::Run(run),
    )
    .with_trace(ev.traceparent.clone());
    shared.bus.publish_command(&cmd, &id).await.map(drop)
}

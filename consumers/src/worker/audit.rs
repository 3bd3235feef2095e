//! The submissions audit: every `job.submitted` in the log gets its first run command, and every
//! `job.redriven` the run command of its next attempt.
//!
//! The API stores the event, then the run command. A crash or an outage between the two leaves
//! the event without its command, and the job would stay queued forever. One durable consumer,
//! shared by the workers, reads each of these events [`AUDIT_DELAY`] after it was made and
//! checks that its job has what it needs, in this order:
//!
//! 1. the read model says the attempt started, or the job was cancelled (one query for a batch;
//!    skipped if Postgres is down);
//! 2. else COMMANDS holds a run command for it (run subjects end with the job, so this is a
//!    direct get);
//! 3. else EVENTS holds a `job.started` or `job.cancelled` stored after the audited event: a
//!    worker publishes those *before* it acknowledges (and so removes) the command, so checking
//!    the command first and the events second leaves no gap.
//!
//! A job that has none of these lost its command: the audit publishes it again, under the
//! original's message id.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bus::consume::{Delivery, Disposition, Pull};
use bus::transition::JobEnvelope;
use chrono::Utc;
use events::command::RunJob;
use events::subjects::msg_id;
use events::{streams, Command, Envelope, JobEvent};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Shared, SOURCE};

/// How old a submission is before it is audited: the API publishes the command right after the
/// event, so by then it is there unless it was lost.
const AUDIT_DELAY: Duration = Duration::from_secs(5);
/// Submissions checked together (one read-model query).
const BATCH: usize = 256;

pub(super) async fn audit_loop(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> crate::Result<()> {
    let spec = streams::submissions_audit_consumer(shared.bus.ns());
    let bus = shared.bus.clone();
    let stop = shutdown.clone();
    bus.consume_batches(Pull::new(spec, BATCH), &shutdown, move |batch| {
        let (shared, stop) = (shared.clone(), stop.clone());
        async move { audit(&shared, batch, &stop).await }
    })
    .await?;
    Ok(())
}

/// Checks that each submission (or re-drive) of a batch has what it needs, and repairs those
/// that do not.
async fn audit(
    shared: &Shared,
    batch: Vec<Delivery>,
    shutdown: &CancellationToken,
) -> Vec<Disposition> {
    let events: Vec<_> = batch
        .iter()
        .map(|delivery| match bus::decode_event(delivery.headers.as_ref(), &delivery.payload) {
            Ok(
                ev @ Envelope {
                    payload: JobEvent::Submitted(_) | JobEvent::Redriven(_),
                    ..
                },
            ) => Some(ev),
            _ => {
                tracing::warn!(subject = %delivery.subject, "submissions audit: unreadable event skipped");
                None
            }
        })
        .collect();
    // Messages come in log order: waiting for the newest makes all of them due.
    if let Some(newest) = events.iter().flatten().last() {
        let age = (Utc::now() - newest.time).to_std().unwrap_or_default();
        if let Some(wait) = AUDIT_DELAY.checked_sub(age) {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // Handed back to whoever audits next.
                _ = shutdown.cancelled() => return vec![Disposition::Retry(None); batch.len()],
            }
        }
    }
    let settled = settled_in_read_model(shared, events.iter().flatten()).await;
    let mut dispositions = Vec::with_capacity(batch.len());
    for (delivery, ev) in batch.iter().zip(&events) {
        let Some(ev) = ev else {
            dispositions.push(Disposition::Terminate);
            continue;
        };
        if settled.contains(&(ev.job.0, attempt_of(ev))) {
            dispositions.push(Disposition::Ack);
            continue;
        }
        dispositions.push(match repair(shared, delivery.stream_sequence, ev).await {
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
        });
    }
    dispositions
}

/// The attempt the audited event's run command starts, as the read model numbers it.
fn attempt_of(ev: &Envelope<JobEvent>) -> i32 {
    let attempt = match &ev.payload {
        JobEvent::Redriven(r) => r.next_attempt,
        _ => 1,
    };
    i32::try_from(attempt).unwrap_or(i32::MAX)
}

/// The `(job, attempt)` pairs of `events` whose attempt the read model shows as started, or
/// whose job it shows cancelled (none if it cannot be read).
async fn settled_in_read_model<'a>(
    shared: &Shared,
    events: impl Iterator<Item = &'a Envelope<JobEvent>>,
) -> HashSet<(Uuid, i32)> {
    let Some(db) = &shared.db else {
        return HashSet::new();
    };
    let attempts: Vec<_> = events.map(|ev| (ev.job.0, attempt_of(ev))).collect();
    readmodel::jobs::started_or_cancelled(db, &attempts)
        .await
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Publishes the run command that follows `ev` (stored at `seq`) again if the log shows none.
async fn repair(shared: &Shared, seq: u64, ev: &Envelope<JobEvent>) -> Result<(), bus::Error> {
    let ns = shared.bus.ns();
    // Waiting for the scheduler, or released to the workers.
    for subject in [
        ns.wait_command_of(&ev.kind, ev.job),
        ns.run_command_of(&ev.kind, ev.job),
    ] {
        if bus::last_message(&shared.commands, subject)
            .await?
            .is_some()
        {
            return Ok(());
        }
    }
    for name in ["started", "cancelled"] {
        let last =
            bus::last_message(&shared.events, ns.job_event(&ev.tenant, ev.job, name)).await?;
        if last.is_some_and(|m| m.sequence > seq) {
            return Ok(());
        }
    }
    let run = match &ev.payload {
        JobEvent::Submitted(job) => RunJob::first(job),
        JobEvent::Redriven(redriven) => {
            // The payload and limits are the submission's.
            let subject = ns.job_event(&ev.tenant, ev.job, "submitted");
            let Some(msg) = bus::last_message(&shared.events, subject).await? else {
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
    let cmd = JobEnvelope::of(SOURCE, ev).wrap(Command::Run(run));
    shared.bus.publish_command(&cmd, &id).await.map(drop)
}

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

use async_nats::jetstream::{self, stream::DirectGetErrorKind, AckKind};
use chrono::Utc;
use events::command::RunJob;
use events::subjects::msg_id;
use events::{streams, Command, Envelope, JobEvent};
use futures::StreamExt;
use uuid::Uuid;

use super::{Shared, SOURCE};

/// How old a submission is before it is audited: the API publishes the command right after the
/// event, so by then it is there unless it was lost.
const AUDIT_DELAY: Duration = Duration::from_secs(5);
/// Submissions checked together (one read-model query).
const BATCH: usize = 256;

pub(super) async fn audit_loop(
    shared: Arc<Shared>,
    shutdown: tokio_util::sync::CancellationToken,
) -> crate::Result<()> {
    let spec = streams::submissions_audit_consumer(shared.bus.ns());
    let consumer = shared.bus.pull_consumer(&spec).await?;
    while !shutdown.is_cancelled() {
        let batch = consumer
            .batch()
            .max_messages(BATCH)
            .expires(Duration::from_secs(5))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "submissions audit: pull failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        let mut due = Vec::new();
        while let Some(Ok(msg)) = batch.next().await {
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            match bus::decode_event(msg.headers.as_ref(), &msg.payload) {
                Ok(
                    ev @ Envelope {
                        payload: JobEvent::Submitted(_) | JobEvent::Redriven(_),
                        ..
                    },
                ) => due.push(Due { msg, seq, ev }),
                _ => {
                    tracing::warn!(subject = %msg.subject, "submissions audit: unreadable event skipped");
                    let _ = msg.ack_with(AckKind::Term).await;
                }
            }
        }
        // Messages come in log order: waiting for the newest makes all of them due.
        if let Some(newest) = due.last() {
            let age = (Utc::now() - newest.ev.time).to_std().unwrap_or_default();
            if let Some(wait) = AUDIT_DELAY.checked_sub(age) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // Unacknowledged: redelivered to whoever audits next.
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        let settled = settled_in_read_model(&shared, &due).await;
        for Due { msg, seq, ev } in due {
            let outcome = if settled.contains(&(ev.job.0, next_attempt(&ev))) {
                Ok(())
            } else {
                repair(&shared, seq, &ev).await
            };
            match outcome {
                Ok(()) => {
                    let _ = msg.ack().await;
                }
                Err(e) => {
                    tracing::warn!(job_id = %ev.job, error = %e, "submissions audit: check failed; retrying");
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
            }
        }
    }
    Ok(())
}

/// An event to audit: its message (acknowledged once checked), its EVENTS sequence, and itself.
struct Due {
    msg: jetstream::Message,
    seq: u64,
    ev: Envelope<JobEvent>,
}

/// The attempt the audited event's run command starts.
fn next_attempt(ev: &Envelope<JobEvent>) -> u32 {
    match &ev.payload {
        JobEvent::Redriven(r) => r.next_attempt,
        _ => 1,
    }
}

/// The `(job, attempt)` pairs of `due` whose attempt the read model shows as started, or whose
/// job it shows cancelled (none if it cannot be read).
async fn settled_in_read_model(shared: &Shared, due: &[Due]) -> Vec<(Uuid, u32)> {
    let Some(db) = &shared.db else {
        return Vec::new();
    };
    let ids: Vec<Uuid> = due.iter().map(|d| d.ev.job.0).collect();
    let attempts: Vec<i32> = due
        .iter()
        .map(|d| i32::try_from(next_attempt(&d.ev)).unwrap_or(i32::MAX))
        .collect();
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT d.id, d.attempt FROM unnest($1::uuid[], $2::int[]) AS d(id, attempt)
         JOIN jobs j ON j.id = d.id
         WHERE j.attempt >= d.attempt OR j.status = 'cancelled'",
    )
    .bind(&ids)
    .bind(&attempts)
    .fetch_all(db)
    .await
    .unwrap_or_default();
    rows.into_iter()
        .map(|(id, attempt)| (id, u32::try_from(attempt).unwrap_or(0)))
        .collect()
}

/// Publishes the run command that follows `ev` (stored at `seq`) again if the log shows none.
async fn repair(shared: &Shared, seq: u64, ev: &Envelope<JobEvent>) -> Result<(), bus::Error> {
    let ns = shared.bus.ns();
    let commands = shared.bus.commands_stream().await?;
    if last_seq(&commands, ns.run_command_of(&ev.kind, ev.job)).await? > 0 {
        return Ok(());
    }
    let events = shared.bus.events_stream().await?;
    for name in ["started", "cancelled"] {
        if last_seq(&events, ns.job_event(&ev.tenant, ev.job, name)).await? > seq {
            return Ok(());
        }
    }
    let run = match &ev.payload {
        JobEvent::Submitted(job) => RunJob::first(job),
        JobEvent::Redriven(redriven) => {
            // The payload and limits are the submission's.
            let subject = ns.job_event(&ev.tenant, ev.job, "submitted");
            let msg = events
                .direct_get_last_for_subject(subject)
                .await
                .map_err(|e| bus::Error::JetStream(e.to_string()))?;
            match bus::decode_event(Some(&msg.headers), &msg.payload) {
                Ok(Envelope {
                    payload: JobEvent::Submitted(job),
                    ..
                }) => RunJob::redrive(&job, redriven),
                _ => return Err(bus::Error::JetStream("unreadable job.submitted".into())),
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

/// The sequence of the last message on `subject` in `stream` (0 if none).
async fn last_seq(stream: &jetstream::stream::Stream, subject: String) -> Result<u64, bus::Error> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(msg) => Ok(msg.sequence),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(0),
        Err(e) => Err(bus::Error::JetStream(e.to_string())),
    }
}

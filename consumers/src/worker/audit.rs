//! The submissions audit: every `job.submitted` in the log gets its first run command.
//!
//! The API stores a job's `job.submitted`, then its run command. A crash or an outage between
//! the two leaves a submission without a command, and the job would stay queued forever. One
//! durable consumer, shared by the workers, reads each submission [`AUDIT_DELAY`] after it was
//! made and checks that its job has what it needs, in this order:
//!
//! 1. the read model says it started or ended (a cheap batch query; skipped if Postgres is down);
//! 2. else COMMANDS holds a run command for it (run subjects end with the job, so this is a
//!    direct get);
//! 3. else EVENTS holds its `job.started` or `job.cancelled`: a worker publishes those *before*
//!    it acknowledges (and so removes) the command, so checking the command first and the events
//!    second leaves no gap.
//!
//! A job that has none of these lost its command: the audit publishes it again, under the
//! original's message id.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream::DirectGetErrorKind, AckKind};
use chrono::Utc;
use events::command::RunJob;
use events::job::Submitted;
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
            match bus::decode_event(msg.headers.as_ref(), &msg.payload) {
                Ok(
                    ev @ Envelope {
                        payload: JobEvent::Submitted(_),
                        ..
                    },
                ) => due.push((msg, ev)),
                _ => {
                    tracing::warn!(subject = %msg.subject, "submissions audit: unreadable job.submitted skipped");
                    let _ = msg.ack_with(AckKind::Term).await;
                }
            }
        }
        // Messages come in log order: waiting for the newest makes all of them due.
        if let Some((_, newest)) = due.last() {
            let age = (Utc::now() - newest.time).to_std().unwrap_or_default();
            if let Some(wait) = AUDIT_DELAY.checked_sub(age) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // Unacknowledged: redelivered to whoever audits next.
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        let settled = settled_in_read_model(&shared, &due).await;
        for (msg, ev) in due {
            let outcome = if settled.contains(&ev.job.0) {
                Ok(())
            } else {
                repair(&shared, &ev).await
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

/// The jobs of `due` the read model shows as started or ended (none if it cannot be read).
async fn settled_in_read_model(
    shared: &Shared,
    due: &[(jetstream::Message, Envelope<JobEvent>)],
) -> Vec<Uuid> {
    let Some(db) = &shared.db else {
        return Vec::new();
    };
    let ids: Vec<Uuid> = due.iter().map(|(_, ev)| ev.job.0).collect();
    sqlx::query_scalar(
        "SELECT id FROM jobs WHERE id = ANY($1) AND (attempt > 0 OR status <> 'queued')",
    )
    .bind(&ids)
    .fetch_all(db)
    .await
    .unwrap_or_default()
}

/// Publishes the run command of a submitted job again if the log shows it has none.
async fn repair(shared: &Shared, ev: &Envelope<JobEvent>) -> Result<(), bus::Error> {
    let JobEvent::Submitted(job) = &ev.payload else {
        return Ok(());
    };
    let ns = shared.bus.ns();
    let commands = shared.bus.commands_stream().await?;
    if exists(&commands, ns.run_command_of(&ev.kind, ev.job)).await? {
        return Ok(());
    }
    let events = shared.bus.events_stream().await?;
    for name in ["started", "cancelled"] {
        if exists(&events, ns.job_event(&ev.tenant, ev.job, name)).await? {
            return Ok(());
        }
    }
    tracing::warn!(job_id = %ev.job, tenant = %ev.tenant, kind = %ev.kind,
        "submissions audit: job.submitted without a run command; publishing it again");
    metrics::counter!("conveyor_submissions_repaired_total").increment(1);
    let cmd = first_run(ev, job);
    shared
        .bus
        .publish_command(&cmd, &msg_id::run(ev.job, 1))
        .await
        .map(drop)
}

fn first_run(ev: &Envelope<JobEvent>, job: &Submitted) -> Envelope<Command> {
    Envelope::new(
        SOURCE,
        ev.job,
        ev.tenant.clone(),
        ev.kind.clone(),
        Command::Run(RunJob::first(job)),
    )
    .with_trace(ev.traceparent.clone())
}

/// Whether `stream` holds a message on `subject`.
async fn exists(stream: &jetstream::stream::Stream, subject: String) -> Result<bool, bus::Error> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(false),
        Err(e) => Err(bus::Error::JetStream(e.to_string())),
    }
}

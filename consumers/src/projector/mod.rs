//! The projector: folds the EVENTS stream into the Postgres read models.
//!
//! It reads with an ordered consumer starting right after the checkpoint stored in Postgres,
//! so the only state is the database: no durable consumer can drift from it. Each batch
//! (as many events as are ready, up to `batch_size`) is applied in one transaction that also
//! moves the checkpoints, with a compare-and-set on their previous values, so:
//! - a crash at any point replays from the last committed checkpoint and nothing is applied twice;
//! - two projectors running by mistake cannot both apply a batch (the loser's commit fails and it
//!   re-reads from the checkpoint).
//!
//! After each commit it sends `NOTIFY conveyor_checkpoint` with the new sequence, which the API
//! uses to answer reads of a job right after its `202` (read-your-writes).

pub mod read_models;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use bus::Bus;
use events::{Envelope, JobEvent};
use futures::{FutureExt, StreamExt};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The projections this projector maintains, each with its own checkpoint row.
pub const PROJECTIONS: [&str; 3] = ["jobs", "job_events", "job_stats"];

/// The Postgres channel notified after each commit, with the new checkpoint as payload.
pub const CHECKPOINT_CHANNEL: &str = "conveyor_checkpoint";

/// Tuning of the projector.
#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    /// Most events per transaction.
    pub batch_size: usize,
}

impl Default for ProjectorSettings {
    fn default() -> Self {
        Self { batch_size: 1000 }
    }
}

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("checkpoint of {0} moved under us: another projector is active")]
    Conflict(&'static str),
    #[error("JetStream: {0}")]
    Bus(String),
    #[error("the EVENTS stream starts at {first} but the checkpoint needs {wanted}: events were removed before they were projected")]
    Gap { first: u64, wanted: u64 },
}

/// The projector role.
#[derive(Debug)]
pub struct Projector {
    bus: Bus,
    db: PgPool,
    settings: ProjectorSettings,
}

impl Projector {
    /// A projector from `bus` into `db` (migrated).
    pub fn new(bus: Bus, db: PgPool, settings: ProjectorSettings) -> Self {
        Self { bus, db, settings }
    }

    /// Runs until `shutdown`. Failures (NATS or Postgres down) are retried with backoff from the
    /// last checkpoint; only a gap in the stream stops it.
    pub async fn run(self, shutdown: CancellationToken) -> crate::Result<()> {
        self.bus.provision_streams().await?;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.follow(&shutdown).await {
                Ok(()) => return Ok(()),
                Err(e @ ApplyError::Gap { .. }) => {
                    tracing::error!(error = %e, "projector stopped");
                    return Err(crate::Error::Nats(e.to_string()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "projector restarting from its checkpoint");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn checkpoints(&self) -> sqlx::Result<HashMap<String, i64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT projection, last_seq FROM projection_checkpoints WHERE projection = ANY($1)",
        )
        .bind(&PROJECTIONS[..])
        .fetch_all(&self.db)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn follow(&self, shutdown: &CancellationToken) -> Result<(), ApplyError> {
        let mut cps = self.checkpoints().await?;
        let start = PROJECTIONS
            .iter()
            .map(|p| cps.get(*p).copied().unwrap_or(0))
            .min()
            .unwrap_or(0)
            + 1;
        let mut stream = self
            .bus
            .events_stream()
            .await
            .map_err(|e| ApplyError::Bus(e.to_string()))?;
        let state = stream
            .info()
            .await
            .map_err(|e| ApplyError::Bus(e.to_string()))?
            .state
            .clone();
        let wanted = u64::try_from(start).unwrap_or(1);
        if state.messages > 0 && state.first_sequence > wanted {
            return Err(ApplyError::Gap {
                first: state.first_sequence,
                wanted,
            });
        }
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: wanted,
                },
                filter_subject: self.bus.ns().all_events(),
                ..Default::default()
            })
            .await
            .map_err(|e| ApplyError::Bus(e.to_string()))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| ApplyError::Bus(e.to_string()))?;
        tracing::info!(from_seq = wanted, "projector following EVENTS");
        loop {
            let first = tokio::select! {
                m = messages.next() => m,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let mut batch = vec![first
                .ok_or_else(|| ApplyError::Bus("event stream ended".into()))?
                .map_err(|e| ApplyError::Bus(e.to_string()))?];
            // Take whatever else is already here, without waiting: low latency when idle,
            // large transactions under load.
            while batch.len() < self.settings.batch_size {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    _ => break,
                }
            }
            let (decoded, last) = decode_batch(&batch)?;
            self.apply(&mut cps, &decoded, last).await?;
        }
    }

    async fn apply(
        &self,
        cps: &mut HashMap<String, i64>,
        events: &[Sequenced],
        last: i64,
    ) -> Result<(), ApplyError> {
        let cp = |name: &str| cps.get(name).copied().unwrap_or(0);
        let mut tx = self.db.begin().await?;
        let mut ids: Vec<uuid::Uuid> = events.iter().map(|(_, e)| e.job.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let before = read_models::load_jobs(&mut tx, &ids).await?;
        let batch = read_models::fold(before, events, cp("jobs"), cp("job_events"));
        read_models::write(&mut tx, &batch).await?;
        for name in PROJECTIONS {
            let moved = sqlx::query(
                "UPDATE projection_checkpoints SET last_seq = $2, updated_at = now()
                 WHERE projection = $1 AND last_seq = $3",
            )
            .bind(name)
            .bind(last.max(cp(name)))
            .bind(cp(name))
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() != 1 {
                return Err(ApplyError::Conflict(name));
            }
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHECKPOINT_CHANNEL)
            .bind(last.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let moved: Vec<_> = PROJECTIONS.iter().map(|n| (*n, last.max(cp(n)))).collect();
        for (name, v) in moved {
            cps.insert(name.to_owned(), v);
        }
        Ok(())
    }
}

/// An event with its EVENTS stream sequence.
type Sequenced = (i64, Envelope<JobEvent>);

/// Decodes a batch and returns it with the sequence of its last message. Poison (not a
/// conveyor CloudEvent) is skipped with a logged reason; the checkpoint still moves past it.
fn decode_batch(
    batch: &[async_nats::jetstream::Message],
) -> Result<(Vec<Sequenced>, i64), ApplyError> {
    let mut out = Vec::with_capacity(batch.len());
    let mut last = 0;
    for msg in batch {
        let seq = msg
            .info()
            .map_err(|e| ApplyError::Bus(e.to_string()))?
            .stream_sequence;
        last = i64::try_from(seq).unwrap_or(i64::MAX);
        match bus::decode_event(msg.headers.as_ref(), &msg.payload) {
            Ok(ev) => out.push((last, ev)),
            Err(e) => {
                tracing::warn!(seq, subject = %msg.subject, reason = %e, "poison event skipped")
            }
        }
    }
    Ok((out, last))
}

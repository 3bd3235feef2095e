//! What every runner of an attempt needs besides the lifecycle's decisions, whether the attempt
//! runs in a Rust worker or behind the worker protocol (the API acting for a worker in another
//! language): the worker consumer of a kind, the cancel marker, whether the job already ended,
//! where a large result goes, and acknowledging a `run` command by its reply subject alone (so
//! any API process can act on a command another one leased).

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, Consumer};
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{kv, stream, AckKind};
use events::job::ResultRef;
use events::{streams, Command, Envelope, JobId, JobKind, Tenant};
use serde_json::Value;

use crate::{Bus, Error, Result};

impl Bus {
    /// The durable consumer of `kind`'s run commands, created with `ack_wait` if no worker has
    /// made it yet; with the ack wait it really has (a worker may have made it with its own).
    pub async fn worker_consumer(
        &self,
        kind: &JobKind,
        ack_wait: Duration,
    ) -> Result<(Consumer<pull::Config>, Duration)> {
        let spec = streams::worker_consumer(&self.ns, kind, ack_wait);
        let mut consumer = match self.pull_consumer(&spec).await {
            Ok(c) => c,
            Err(_) => {
                self.ensure_consumer(&spec).await?;
                self.pull_consumer(&spec).await?
            }
        };
        let ack_wait = consumer
            .info()
            .await
            .map_err(Error::consumer)?
            .config
            .ack_wait;
        Ok((consumer, ack_wait))
    }

    /// Acknowledges a JetStream message by its reply subject (`+ACK`, `+WPI`, `-NAK` …), as the
    /// message's own `ack_with` would.
    pub async fn acknowledge(&self, reply: &str, kind: AckKind) -> Result<()> {
        self.client
            .publish(reply.to_owned(), kind.into())
            .await
            .map_err(Error::core)
    }

    /// The command stored at `sequence` in the COMMANDS stream (a `run` command stays there
    /// until it is acknowledged); `None` once it is gone.
    pub async fn command_at(&self, sequence: u64) -> Result<Option<Envelope<Command>>> {
        let stream = self.commands_stream().await?;
        let msg = match stream.direct_get(sequence).await {
            Ok(msg) => msg,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::stream(e)),
        };
        Ok(Some(crate::decode_command(
            Some(&msg.headers),
            &msg.payload,
        )?))
    }

    /// Inlines a result of at most `inline_limit` JSON bytes; puts a larger one into the object
    /// store and returns its reference instead.
    pub async fn store_result(
        &self,
        job: JobId,
        result: Value,
        inline_limit: usize,
    ) -> Result<(Option<Value>, Option<ResultRef>)> {
        let bytes = serde_json::to_vec(&result).expect("a JSON value serialises");
        if bytes.len() <= inline_limit {
            return Ok((Some(result), None));
        }
        let store = self.results().await?;
        let object = job.to_string();
        store
            .put(object.as_str(), &mut bytes.as_slice())
            .await
            .map_err(Error::bucket)?;
        Ok((
            None,
            Some(ResultRef {
                bucket: self.ns.results_bucket(),
                object,
                size: bytes.len() as u64,
            }),
        ))
    }

    /// Whether the job ended in its current generation: its last terminal event is newer than
    /// its last re-drive. (An unreadable stream counts as not ended: the terminal event's
    /// message id keeps a second one out of the log anyway.)
    pub async fn job_ended(&self, events: &stream::Stream, tenant: &Tenant, job: JobId) -> bool {
        let last_seq = |name: &'static str| {
            let subject = self.ns.job_event(tenant, job, name);
            async move {
                crate::last_message(events, subject)
                    .await
                    .ok()
                    .flatten()
                    .map_or(0, |m| m.sequence)
            }
        };
        let redriven = last_seq("redriven").await;
        for name in ["succeeded", "dead_lettered", "cancelled"] {
            if last_seq(name).await > redriven {
                return true;
            }
        }
        false
    }
}

/// Whether `job` carries a cancel marker (an unreadable bucket counts as not).
pub async fn cancel_marked(cancels: &kv::Store, job: JobId) -> bool {
    cancels.get(job.to_string()).await.ok().flatten().is_some()
}

/// Starts recorded under a rate limit's key: `(ms, "job.attempt")`, oldest first.
type Starts = Vec<(i64, String)>;

impl Bus {
    /// Takes a start under `rate` for attempt `attempt` of `job` at `at`: `None` if it may start
    /// (or already took one), else how long to hand the job back for. Exact across processes: the
    /// key's recent starts are one entry, updated by compare-and-set, and a start is taken only
    /// while fewer than `limit` starts are recorded later than `at - period`, so no window of
    /// `period` holds more than `limit` starts.
    pub async fn take_start(
        &self,
        tenant: &Tenant,
        rate: &events::job::RateLimit,
        job: JobId,
        attempt: u32,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Duration>> {
        use sha2::Digest as _;
        let store = self.rates().await?;
        let key = format!(
            "{tenant}.{}",
            &hex::encode(sha2::Sha256::digest(rate.key.as_bytes()))[..32]
        );
        let me = format!("{job}.{attempt}");
        let (now, period) = (at.timestamp_millis(), rate.period_ms as i64);
        loop {
            let entry = crate::entry(&store, &key).await?;
            let revision = entry.as_ref().map(|(_, r)| *r);
            let mut starts: Starts = entry
                .and_then(|(b, _)| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            if starts.iter().any(|(_, who)| *who == me) {
                return Ok(None);
            }
            // Kept two periods: a start taken a moment earlier elsewhere still counts.
            starts.retain(|(ms, _)| *ms > now - 2 * period);
            let recent: Vec<i64> = starts
                .iter()
                .map(|(ms, _)| *ms)
                .filter(|ms| *ms > now - period)
                .collect();
            if recent.len() >= rate.limit as usize {
                // Until the oldest start falls out of the period, with jitter so the jobs that
                // wait for it do not all come back at once, and never longer than a hand-back.
                let oldest = recent.iter().min().copied().unwrap_or(now);
                let wait = (oldest + period - now).max(1) as u64 + jitter_ms(&me);
                let wait = Duration::from_millis(wait).min(crate::consume::MAX_HAND_BACK);
                return Ok(Some(wait));
            }
            starts.push((now, me.clone()));
            starts.sort();
            let value = serde_json::to_vec(&starts).expect("starts serialise");
            if crate::put_if(&store, &key, value.into(), revision).await? {
                return Ok(None);
            }
        }
    }
}

/// 0 to 49 ms, from `who`: spreads the jobs waiting on one rate limit.
fn jitter_ms(who: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (who, std::time::SystemTime::now()).hash(&mut h);
    h.finish() % 50
}

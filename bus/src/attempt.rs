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

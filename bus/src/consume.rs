//! Consuming a durable pull consumer: the one loop every role's handlers run in.
//!
//! A handler gets each message as a [`Delivery`] (no acknowledgement methods) and says what
//! became of it with a [`Disposition`]; the loop alone acknowledges, hands back or terminates.
//! The loop pulls in batches, runs the handler on each message (in line, or up to a bound of
//! handlers at once), backs off while pulls fail and stops pulling when shutdown is asked; it
//! returns once the handlers it started have finished, so nothing is left half-done.
//!
//! ```no_run
//! # async fn f(bus: bus::Bus, spec: events::streams::ConsumerSpec) -> bus::Result<()> {
//! use bus::consume::{Disposition, Pull};
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! bus.consume(Pull::new(spec, 64), &shutdown, |delivery| async move {
//!     match bus::decode_command(delivery.headers.as_ref(), &delivery.payload) {
//!         Ok(_) => Disposition::Ack,
//!         Err(_) => Disposition::Terminate,
//!     }
//! })
//! .await
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, Consumer};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, AckKind};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use events::streams::ConsumerSpec;
use events::RetryPolicy;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Bus, Result};

/// The longest a message that is not due yet is handed back for: it comes round at least this
/// often, so that a cancel made meanwhile is noticed.
pub const MAX_HAND_BACK: Duration = Duration::from_secs(15);

/// The waits between failed pulls (reset by the next successful one).
const PULL_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(250), Duration::from_secs(2));

/// What became of a message: the loop acknowledges accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done with: acknowledged.
    Ack,
    /// Hand it back (NAK), to be redelivered after the delay (at once if `None`).
    Retry(Option<Duration>),
    /// Never deliver it again (TERM): it cannot be handled (a poison message).
    Terminate,
}

/// A message handed to a handler: what it carries and where it is in its stream.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its subject.
    pub subject: Subject,
    /// Its NATS headers.
    pub headers: Option<HeaderMap>,
    /// Its payload.
    pub payload: Bytes,
    /// Its sequence in the stream.
    pub stream_sequence: u64,
}

/// How a durable consumer is read.
#[derive(Debug, Clone)]
pub struct Pull {
    spec: ConsumerSpec,
    batch: usize,
    expires: Duration,
    concurrency: Option<usize>,
}

impl Pull {
    /// Reads `spec` (provisioned beforehand) `batch` messages at a time, each pull waiting up to
    /// 5 s for messages, handling them one after the other.
    pub fn new(spec: ConsumerSpec, batch: usize) -> Self {
        Self {
            spec,
            batch: batch.max(1),
            expires: Duration::from_secs(5),
            concurrency: None,
        }
    }

    /// How long one pull waits for messages on the server.
    pub fn expires(mut self, expires: Duration) -> Self {
        self.expires = expires;
        self
    }

    /// Runs up to `limit` handlers at once; a pull asks for no more messages than there are
    /// free handlers, so what waits stays in JetStream, not in memory.
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.concurrency = Some(limit.max(1));
        self
    }
}

impl Bus {
    /// Runs `handler` on every message of the consumer until `shutdown`, acknowledging each as
    /// its [`Disposition`] says. Fails only if the consumer cannot be found; a failing pull is
    /// retried with backoff.
    pub async fn consume<H, Fut>(
        &self,
        pull: Pull,
        shutdown: &CancellationToken,
        handler: H,
    ) -> Result<()>
    where
        H: Fn(Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Disposition> + Send + 'static,
    {
        let consumer = self.pull_consumer(&pull.spec).await?;
        let mut reader = Reader {
            consumer,
            pull,
            backoff: PULL_RETRY.backoff(),
        };
        match reader.pull.concurrency {
            None => {
                while let Some(mut batch) = reader.next_batch(reader.pull.batch, shutdown).await {
                    while let Some(Ok(msg)) = batch.next().await {
                        handle(msg, &handler).await;
                    }
                }
            }
            Some(limit) => {
                let handler = Arc::new(handler);
                let slots = Arc::new(Semaphore::new(limit));
                let running = TaskTracker::new();
                loop {
                    let first = tokio::select! {
                        p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                        _ = shutdown.cancelled() => break,
                    };
                    let mut permits = vec![first];
                    while permits.len() < reader.pull.batch {
                        match slots.clone().try_acquire_owned() {
                            Ok(p) => permits.push(p),
                            Err(_) => break,
                        }
                    }
                    let Some(mut batch) = reader.next_batch(permits.len(), shutdown).await else {
                        break;
                    };
                    while let Some(Ok(msg)) = batch.next().await {
                        let Some(permit) = permits.pop() else {
                            let _ = msg.ack_with(AckKind::Nak(None)).await;
                            continue;
                        };
                        let handler = handler.clone();
                        running.spawn(async move {
                            handle(msg, handler.as_ref()).await;
                            drop(permit);
                        });
                    }
                }
                running.close();
                running.wait().await;
            }
        }
        Ok(())
    }

    /// Runs `handler` on every batch of the consumer (up to `pull`'s batch size, as many as one
    /// pull brings) until `shutdown`; it returns a [`Disposition`] for each delivery, in order,
    /// and the loop acknowledges accordingly (a delivery it gives none for is handed back). For
    /// handlers that do one thing for many messages, such as one query for a whole batch.
    pub async fn consume_batches<H, Fut>(
        &self,
        pull: Pull,
        shutdown: &CancellationToken,
        mut handler: H,
    ) -> Result<()>
    where
        H: FnMut(Vec<Delivery>) -> Fut + Send,
        Fut: Future<Output = Vec<Disposition>> + Send,
    {
        let consumer = self.pull_consumer(&pull.spec).await?;
        let mut reader = Reader {
            consumer,
            pull,
            backoff: PULL_RETRY.backoff(),
        };
        while let Some(mut batch) = reader.next_batch(reader.pull.batch, shutdown).await {
            let mut deliveries = Vec::new();
            let mut ackers = Vec::new();
            while let Some(Ok(msg)) = batch.next().await {
                if let Some((delivery, acker)) = split(msg).await {
                    deliveries.push(delivery);
                    ackers.push(acker);
                }
            }
            if deliveries.is_empty() {
                continue;
            }
            let dispositions = handler(deliveries).await.into_iter();
            for (acker, disposition) in ackers
                .into_iter()
                .zip(dispositions.chain(std::iter::repeat(Disposition::Retry(None))))
            {
                let _ = acker.ack_with(ack_kind(disposition)).await;
            }
        }
        Ok(())
    }

    /// Reports the backlog of durable consumers as gauges (`conveyor_consumer_pending`,
    /// `_ack_pending`, `_redelivered`) every `every` until `stop` resolves.
    pub async fn report_consumers(
        &self,
        specs: Vec<ConsumerSpec>,
        every: Duration,
        stop: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            for spec in &specs {
                // Getting the consumer reads its info.
                let Ok(consumer) = self.pull_consumer(spec).await else {
                    continue;
                };
                let info = consumer.cached_info();
                let labels = [
                    ("stream", spec.stream.clone()),
                    ("consumer", spec.durable.clone()),
                ];
                metrics::gauge!("conveyor_consumer_pending", &labels).set(info.num_pending as f64);
                metrics::gauge!("conveyor_consumer_ack_pending", &labels)
                    .set(info.num_ack_pending as f64);
                metrics::gauge!("conveyor_consumer_redelivered", &labels)
                    .set(info.num_redelivered as f64);
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = &mut stop => return,
            }
        }
    }
}

struct Reader {
    consumer: Consumer<pull::Config>,
    pull: Pull,
    backoff: events::retry::Backoff,
}

impl Reader {
    /// The next batch of up to `max` messages; `None` once shutdown is asked. A batch is not
    /// cut short by shutdown: its request stays with the server until it expires, and a message
    /// delivered to nobody would wait out the ack wait.
    async fn next_batch(
        &mut self,
        max: usize,
        shutdown: &CancellationToken,
    ) -> Option<pull::Batch> {
        while !shutdown.is_cancelled() {
            let batch = self
                .consumer
                .batch()
                .max_messages(max)
                .expires(self.pull.expires)
                .messages()
                .await;
            match batch {
                Ok(batch) => {
                    self.backoff.reset();
                    return Some(batch);
                }
                Err(e) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(consumer = %self.pull.spec.durable, error = %e, retry_in = ?delay,
                        "pull failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                }
            }
        }
        None
    }
}

/// Runs `handler` on `msg` and acknowledges it as the handler said.
async fn handle<H, Fut>(msg: jetstream::Message, handler: &H)
where
    H: Fn(Delivery) -> Fut,
    Fut: Future<Output = Disposition>,
{
    let Some((delivery, acker)) = split(msg).await else {
        return;
    };
    let disposition = handler(delivery).await;
    // A lost acknowledgement only means a redelivery, which every handler tolerates.
    let _ = acker.ack_with(ack_kind(disposition)).await;
}

/// A message as a delivery and what acknowledges it; `None` (and terminated) if it is not a
/// JetStream message.
async fn split(msg: jetstream::Message) -> Option<(Delivery, Acker)> {
    let stream_sequence = match msg.info() {
        Ok(info) => info.stream_sequence,
        Err(e) => {
            tracing::warn!(subject = %msg.subject, error = %e, "not a JetStream message; terminated");
            let _ = msg.ack_with(AckKind::Term).await;
            return None;
        }
    };
    let (msg, acker) = msg.split();
    let delivery = Delivery {
        subject: msg.subject,
        headers: msg.headers,
        payload: msg.payload,
        stream_sequence,
    };
    Some((delivery, acker))
}

fn ack_kind(disposition: Disposition) -> AckKind {
    match disposition {
        Disposition::Ack => AckKind::Ack,
        Disposition::Retry(after) => AckKind::Nak(after),
        Disposition::Terminate => AckKind::Term,
    }
}

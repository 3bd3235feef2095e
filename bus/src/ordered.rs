//! Reading a stream in order, from a start, without acknowledgements: what the projector, the
//! API's live tail and the log tools do with EVENTS.
//!
//! It works like the client's ordered consumer (an ephemeral, in-memory R1 consumer that is
//! recreated after the last sequence seen whenever a message is missing or the consumer is gone)
//! with two differences that matter when a server dies. The consumer lives on the stream's
//! leader and dies with it, silently; the silence is how the loss is noticed. Here the idle
//! heartbeat is short ([`HEARTBEAT`], so silence is flagged after 2 s) and the first flag
//! recreates the consumer. The client's ordered consumer has a 15 s heartbeat, waits for a second
//! flag, and its stream is not woken again after the first, so it could wait forever once its
//! server was gone.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::{self, stream};
use events::RetryPolicy;
use futures::{Stream, StreamExt};

use crate::{Error, Result};

/// How often the server confirms an idle consumer is alive; two of these without a word from
/// it recreate the consumer.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long one pull request waits on the server (the client then sends the next one).
const EXPIRES: Duration = Duration::from_secs(10);
/// Messages asked for per pull request.
const BATCH: usize = 500;
/// How long recreating may keep failing before the reader reports it (and goes on trying).
const PATIENCE: Duration = Duration::from_secs(30);
/// The waits between attempts at recreating the consumer.
const RECREATE_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(50), Duration::from_secs(2));

/// Messages of `stream` matching `filter`, in stream order, from `start`, and how many there
/// were when reading began. The reader survives the loss of its consumer (a server restart, a
/// leader change): it recreates it after the last message it returned, so nothing is skipped or
/// repeated. An `Err` item reports a failure that lasted 30 s; reading may go on after it.
pub async fn ordered(
    stream: stream::Stream,
    filter: impl Into<Filters>,
    start: DeliverPolicy,
) -> Result<(
    impl Stream<Item = Result<jetstream::Message>> + Send + Unpin + 'static,
    u64,
)> {
    let mut reader = Reader {
        stream,
        filter: filter.into(),
        start,
        consumer_seq: 0,
        messages: None,
    };
    let pending = reader.open().await?;
    // `unfold` keeps a `next` that is under way when its caller stops waiting (a `select!`, a
    // timeout), so the reader can be polled from anywhere without losing a message.
    let messages = futures::stream::unfold(reader, |mut r| async move {
        let item = r.next().await;
        Some((item, r))
    });
    Ok((Box::pin(messages), pending))
}

/// The subjects an ordered reader reads: one filter, or several (nats-server 2.10).
#[derive(Debug, Clone)]
pub struct Filters(Vec<String>);

impl From<String> for Filters {
    fn from(one: String) -> Self {
        Self(vec![one])
    }
}

impl From<Vec<String>> for Filters {
    fn from(many: Vec<String>) -> Self {
        Self(many)
    }
}

struct Reader {
    stream: stream::Stream,
    filter: Filters,
    /// Where the next consumer starts: `start`, then right after the last message returned.
    start: DeliverPolicy,
    /// The consumer sequence of the last message returned (a gap means a lost message).
    consumer_seq: u64,
    messages: Option<pull::Stream>,
}

impl Reader {
    /// Creates a consumer from `start`; returns how many messages it has pending.
    async fn open(&mut self) -> Result<u64> {
        let config = pull::Config::from(pull::OrderedConfig {
            deliver_policy: self.start,
            filter_subject: match self.filter.0.as_slice() {
                [one] => one.clone(),
                _ => String::new(),
            },
            filter_subjects: match self.filter.0.as_slice() {
                [_] => Vec::new(),
                many => many.to_vec(),
            },
            ..Default::default()
        });
        let consumer = self
            .stream
            .create_consumer(config)
            .await
            .map_err(Error::consumer)?;
        let info = consumer.cached_info();
        let pending = info.num_pending;
        // From here on the start is a sequence (the server resolved `New` or a time to one), so
        // a consumer recreated before the first message starts at the same place.
        if let Some(next) = info.delivered.stream_sequence.checked_add(1) {
            self.start = DeliverPolicy::ByStartSequence {
                start_sequence: next,
            };
        }
        let messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .heartbeat(HEARTBEAT)
            .expires(EXPIRES)
            .messages()
            .await
            .map_err(Error::consumer)?;
        self.messages = Some(messages);
        self.consumer_seq = 0;
        Ok(pending)
    }

    async fn next(&mut self) -> Result<jetstream::Message> {
        let mut failing_since = None;
        let mut backoff = RECREATE_RETRY.backoff();
        loop {
            let Some(messages) = self.messages.as_mut() else {
                match self.open().await {
                    Ok(_) => {
                        tracing::info!(filter = ?self.filter.0, start = ?self.start, "ordered reader resumed on a new consumer");
                        failing_since = None;
                        backoff.reset();
                    }
                    Err(e) => {
                        let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= PATIENCE {
                            return Err(e);
                        }
                        let delay = backoff.next_delay();
                        tracing::debug!(error = %e, retry_in = ?delay, "ordered reader cannot recreate its consumer yet");
                        tokio::time::sleep(delay).await;
                    }
                }
                continue;
            };
            match messages.next().await {
                Some(Ok(msg)) => {
                    let info = msg.info().map_err(Error::consumer)?;
                    if info.consumer_sequence != self.consumer_seq + 1 {
                        tracing::info!(
                            expected = self.consumer_seq + 1,
                            got = info.consumer_sequence,
                            "ordered reader saw a gap; recreating its consumer"
                        );
                        self.messages = None;
                        continue;
                    }
                    self.consumer_seq = info.consumer_sequence;
                    self.start = DeliverPolicy::ByStartSequence {
                        start_sequence: info.stream_sequence + 1,
                    };
                    return Ok(msg);
                }
                Some(Err(e)) => {
                    tracing::info!(error = %e, "ordered reader lost its consumer; recreating it");
                    self.messages = None;
                }
                None => self.messages = None,
            }
        }
    }
}

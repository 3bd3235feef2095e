//! Handles on what provisioning created: the two streams, the durable consumers, the key-value
//! buckets and the object store.

use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{kv, object_store, stream};
use bytes::Bytes;
use events::streams::ConsumerSpec;

use crate::{Bus, Error, Result};

impl Bus {
    /// The EVENTS stream handle.
    pub async fn events_stream(&self) -> Result<stream::Stream> {
        self.js
            .get_stream(self.ns.events_stream())
            .await
            .map_err(Error::stream)
    }

    /// A handle on the EVENTS stream for direct gets ([`last_message`], [`next_message`]),
    /// made without asking the server for the stream's info.
    pub async fn events_direct(&self) -> Result<stream::Stream<()>> {
        self.js
            .get_stream_no_info(self.ns.events_stream())
            .await
            .map_err(Error::stream)
    }

    /// The COMMANDS stream handle.
    pub async fn commands_stream(&self) -> Result<stream::Stream> {
        self.js
            .get_stream(self.ns.commands_stream())
            .await
            .map_err(Error::stream)
    }

    /// A durable pull consumer by spec (it must have been provisioned).
    pub async fn pull_consumer(
        &self,
        spec: &ConsumerSpec,
    ) -> Result<consumer::Consumer<pull::Config>> {
        self.js
            .get_consumer_from_stream(&spec.durable, &spec.stream)
            .await
            .map_err(Error::consumer)
    }

    /// The idempotency-key bucket.
    pub async fn idempotency(&self) -> Result<kv::Store> {
        self.bucket(self.ns.idempotency_bucket()).await
    }

    /// The kind registry: which kinds workers serve, with their payload schemas.
    pub async fn kinds(&self) -> Result<kv::Store> {
        self.bucket(self.ns.kinds_bucket()).await
    }

    /// The bucket of attempts' outcome claims (the worker protocol's).
    pub async fn outcomes(&self) -> Result<kv::Store> {
        self.bucket(self.ns.outcomes_bucket()).await
    }

    /// The cancellation-marker bucket.
    pub async fn cancels(&self) -> Result<kv::Store> {
        self.bucket(self.ns.cancels_bucket()).await
    }

    /// The paused kinds.
    pub async fn pauses(&self) -> Result<kv::Store> {
        self.bucket(self.ns.pauses_bucket()).await
    }

    /// Rate limits' recent starts.
    pub async fn rates(&self) -> Result<kv::Store> {
        self.bucket(self.ns.rates_bucket()).await
    }

    /// The tenants' shares of the workers.
    pub async fn shares(&self) -> Result<kv::Store> {
        self.bucket(self.ns.shares_bucket()).await
    }

    /// The schedules.
    pub async fn schedules(&self) -> Result<kv::Store> {
        self.bucket(self.ns.schedules_bucket()).await
    }

    /// The failed-webhook-deliveries bucket.
    pub async fn webhook_failures(&self) -> Result<kv::Store> {
        self.bucket(self.ns.webhook_failures_bucket()).await
    }

    async fn bucket(&self, name: String) -> Result<kv::Store> {
        self.js.get_key_value(name).await.map_err(Error::bucket)
    }

    /// The large-result object store (created on first use).
    pub async fn results(&self) -> Result<object_store::ObjectStore> {
        let name = self.ns.results_bucket();
        match self.js.get_object_store(&name).await {
            Ok(store) => Ok(store),
            Err(_) => self
                .js
                .create_object_store(object_store::Config {
                    bucket: name,
                    num_replicas: self.replicas,
                    ..Default::default()
                })
                .await
                .map_err(Error::bucket),
        }
    }
}

/// The first message stored on `subject` in `stream` at or after sequence `from` (a direct get),
/// `None` if there is none.
pub async fn next_message<I>(
    stream: &stream::Stream<I>,
    subject: String,
    from: u64,
) -> Result<Option<StreamMessage>> {
    match stream
        .direct_get_next_for_subject(subject, Some(from))
        .await
    {
        Ok(msg) => Ok(Some(msg)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::stream(e)),
    }
}

/// Puts `value` under `key` unless the key holds a value already: `true` if this call put it.
pub async fn create_once(store: &kv::Store, key: &str, value: Bytes) -> Result<bool> {
    match store.create(key, value).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::bucket(e)),
    }
}

/// The value under `key` and its revision, `None` if the key has none (or was deleted).
pub async fn entry(store: &kv::Store, key: &str) -> Result<Option<(Bytes, u64)>> {
    match store.entry(key).await.map_err(Error::bucket)? {
        Some(e) if e.operation == kv::Operation::Put => Ok(Some((e.value, e.revision))),
        _ => Ok(None),
    }
}

/// Puts `value` under `key` if the key is still at `revision` (`None`: has no value yet):
/// `true` if this call put it, `false` if another write came first.
pub async fn put_if(
    store: &kv::Store,
    key: &str,
    value: Bytes,
    revision: Option<u64>,
) -> Result<bool> {
    let Some(revision) = revision else {
        return create_once(store, key, value).await;
    };
    match store.update(key, value, revision).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
        Err(e) => Err(Error::bucket(e)),
    }
}

/// The last message stored on `subject` in `stream` (a direct get), `None` if there is none.
pub async fn last_message<I>(
    stream: &stream::Stream<I>,
    subject: String,
) -> Result<Option<StreamMessage>> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(msg) => Ok(Some(msg)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::stream(e)),
    }
}

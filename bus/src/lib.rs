//! conveyor's JetStream I/O, shared by the API, the workers, the projector and the tools:
//! connecting (with the server version check), provisioning streams, consumers and buckets from
//! the definitions in [`events::streams`], and publishing and decoding CloudEvents.
//!
//! Everything is idempotent: provisioning creates what is missing, reads back what the server
//! stored and refuses to start on a mismatch (older servers silently ignore fields they do not
//! know); publishing sets `Nats-Msg-Id` so a retried publish is stored once.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use events::streams::{self, ConsumerSpec, Retention, StreamSpec};
use events::{Command, DecodeError, Envelope, JobEvent, JobKind, Namespace};

pub mod ordered;
pub mod trace;
pub mod transition;
pub mod webhook_url;

pub use async_nats;

/// The oldest nats-server conveyor runs on: `sync_interval`, multiple filters and reliable
/// config read-back arrived in 2.10.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 10);

/// How long idempotency keys are remembered.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not reach the server.
    #[error("cannot connect to NATS at {url}: {source}. Start it with `scripts/up` (or set CONVEYOR_NATS_URL)")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why.
        source: async_nats::ConnectError,
    },
    /// `CONVEYOR_NATS_URL` is not a list of NATS server URLs.
    #[error("CONVEYOR_NATS_URL: {0}")]
    BadUrl(String),
    /// The server is too old.
    #[error("nats-server {version} at {url} is too old: conveyor needs 2.10 or newer with JetStream; set CONVEYOR_NATS_URL to a current server (`scripts/up` runs one and `conveyor dev` prints its address)")]
    ServerTooOld {
        /// The version the server announced.
        version: String,
        /// The URL it was reached at.
        url: String,
    },
    /// JetStream is not enabled.
    #[error("JetStream is not enabled on the NATS server: start nats-server with -js")]
    NoJetStream,
    /// A stream or consumer exists with a configuration other than the one conveyor needs.
    #[error("{what} exists with a different configuration ({field}: server has {got}, conveyor needs {want}); fix or delete it")]
    Mismatch {
        /// Stream or consumer name.
        what: String,
        /// The differing field.
        field: &'static str,
        /// What the server has.
        got: String,
        /// What conveyor needs.
        want: String,
    },
    /// A JetStream request failed.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// Not connected to NATS right now (the client keeps reconnecting).
    #[error("not connected to NATS")]
    Disconnected,
    /// Too many publishes of this process are waiting for their acks.
    #[error("too many publishes in flight")]
    Busy,
    /// A publish was not acknowledged.
    #[error("publish to {subject} failed: {reason}")]
    Publish {
        /// Subject.
        subject: String,
        /// Why.
        reason: String,
        /// Whether the stream refused it because it is full.
        full: bool,
    },
}

/// Result with the bus error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn js_err(e: impl std::fmt::Display) -> Error {
    Error::JetStream(e.to_string())
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Namespace of every name.
    pub namespace: Namespace,
    /// Stream replicas (1 on a single server).
    pub replicas: usize,
    /// How long a JetStream request or publish ack may take before it fails.
    pub request_timeout: Duration,
    /// Connection name, shown in the server's monitoring.
    pub name: String,
    /// Most publishes waiting for their acks at once.
    pub max_publishes_in_flight: usize,
    /// Fail a publish at once while disconnected or at `max_publishes_in_flight` (the API: it
    /// answers 503 rather than hold a request), instead of waiting (workers, tools).
    pub fail_fast: bool,
}

impl BusSettings {
    /// Settings for `url` and `namespace` with the usual timeouts (5 s), waiting publishers.
    pub fn new(url: &str, namespace: Namespace, name: &str) -> Self {
        Self {
            url: url.to_owned(),
            namespace,
            replicas: 1,
            request_timeout: Duration::from_secs(5),
            name: name.to_owned(),
            max_publishes_in_flight: 4096,
            fail_fast: false,
        }
    }
}

/// A connected JetStream client scoped to one namespace.
#[derive(Debug, Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    ns: Namespace,
    replicas: usize,
    fail_fast: bool,
}

/// Parses `major.minor` out of a server version string.
fn parse_version(v: &str) -> Option<(u64, u64)> {
    let mut it = v.trim_start_matches('v').split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// How long provisioning (streams, buckets, consumers, kinds) keeps trying a request that failed
/// for a passing reason: on a cluster, a JetStream leader election takes a few seconds, during
/// which requests time out or find no responder.
pub const PROVISION_PATIENCE: Duration = Duration::from_secs(60);

/// Whether a failure may pass by itself (a timeout, no responder, a lost connection), rather
/// than a configuration the server refuses (replicas it cannot place) or a mismatch.
fn transient(e: &Error) -> bool {
    match e {
        Error::JetStream(text) => {
            !(text.contains("not supported") || text.contains("insufficient"))
        }
        Error::Disconnected => true,
        _ => false,
    }
}

/// Runs `attempt` until it succeeds, fails for good, or [`PROVISION_PATIENCE`] has passed.
async fn patiently<T, F, Fut>(what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + PROVISION_PATIENCE;
    let mut delay = Duration::from_millis(250);
    loop {
        match attempt().await {
            Err(e) if transient(&e) && tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, retry_in = ?delay, "{what} failed; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// Parses a comma-separated list of server URLs (`nats://a:4222,nats://b:4222`; the scheme
/// and port may be left out: `a,b:4223`). async-nats parses a `&str` as one address, so the
/// list is split here and handed over whole: the client then connects to any of them and, after
/// losing its server, reconnects to another (and to the servers the cluster announces).
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| Error::BadUrl(format!("{u}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    if addrs.is_empty() {
        return Err(Error::BadUrl("no server URL".into()));
    }
    Ok(addrs)
}

impl Bus {
    /// Connects to any of the servers listed in `settings.url`, checks the server version and
    /// JetStream, and keeps reconnecting for ever after a loss, to any server of the list or of
    /// the cluster (publishes then fail within `request_timeout`, never hang).
    pub async fn connect(settings: &BusSettings) -> Result<Self> {
        let addrs = server_addrs(&settings.url)?;
        let client = async_nats::ConnectOptions::new()
            .name(&settings.name)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(settings.request_timeout))
            .max_reconnects(None)
            .connect(addrs)
            .await
            .map_err(|source| Error::Connect {
                url: settings.url.clone(),
                source,
            })?;
        let info = client.server_info();
        match parse_version(&info.version) {
            Some(v) if v >= MIN_SERVER_VERSION => {}
            _ => {
                return Err(Error::ServerTooOld {
                    version: info.version,
                    url: settings.url.clone(),
                })
            }
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(settings.request_timeout)
            .max_ack_inflight(settings.max_publishes_in_flight.max(1))
            .backpressure_on_inflight(!settings.fail_fast)
            .build(client.clone());
        js.query_account().await.map_err(|_| Error::NoJetStream)?;
        Ok(Self {
            client,
            js,
            ns: settings.namespace.clone(),
            replicas: settings.replicas.max(1),
            fail_fast: settings.fail_fast,
        })
    }

    /// The namespace.
    pub fn ns(&self) -> &Namespace {
        &self.ns
    }

    /// The core NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn js(&self) -> &jetstream::Context {
        &self.js
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Creates (or checks) the streams and buckets every role relies on. A request that fails
    /// for a passing reason (a timeout or no responder while a JetStream leader is being
    /// elected) is tried again for up to [`PROVISION_PATIENCE`].
    pub async fn provision_streams(&self) -> Result<()> {
        patiently("provisioning streams and buckets", || {
            self.provision_streams_once()
        })
        .await
    }

    async fn provision_streams_once(&self) -> Result<()> {
        self.ensure_stream(&streams::events_stream(&self.ns, self.replicas))
            .await?;
        self.ensure_stream(&streams::commands_stream(&self.ns, self.replicas))
            .await?;
        self.ensure_kv(&self.ns.idempotency_bucket(), IDEMPOTENCY_TTL)
            .await?;
        self.ensure_kv(
            &self.ns.cancels_bucket(),
            Duration::from_secs(30 * 24 * 3600),
        )
        .await?;
        self.ensure_kv(&self.ns.webhook_failures_bucket(), Duration::ZERO)
            .await?;
        self.ensure_kv(&self.ns.kinds_bucket(), Duration::ZERO)
            .await?;
        self.results().await?;
        self.ensure_consumer(&streams::webhook_fanin_consumer(&self.ns))
            .await?;
        self.ensure_consumer(&streams::submissions_audit_consumer(&self.ns))
            .await?;
        Ok(())
    }

    /// Creates (or checks) the webhook delivery consumer (retrying like
    /// [`Bus::provision_streams`]).
    pub async fn provision_webhook_consumer(&self, ack_wait: Duration) -> Result<()> {
        let spec = streams::webhook_delivery_consumer(&self.ns, ack_wait);
        patiently("provisioning the webhook consumer", || {
            self.ensure_consumer(&spec)
        })
        .await
    }

    /// The failed-webhook-deliveries bucket.
    pub async fn webhook_failures(&self) -> Result<kv::Store> {
        self.js
            .get_key_value(self.ns.webhook_failures_bucket())
            .await
            .map_err(js_err)
    }

    /// Creates (or checks) the worker consumers of `kinds` and the canceller (retrying like
    /// [`Bus::provision_streams`]).
    pub async fn provision_worker_consumers(
        &self,
        kinds: &[JobKind],
        ack_wait: Duration,
    ) -> Result<()> {
        patiently("provisioning the worker consumers", || {
            self.provision_worker_consumers_once(kinds, ack_wait)
        })
        .await
    }

    async fn provision_worker_consumers_once(
        &self,
        kinds: &[JobKind],
        ack_wait: Duration,
    ) -> Result<()> {
        for kind in kinds {
            self.ensure_consumer(&streams::worker_consumer(&self.ns, kind, ack_wait))
                .await?;
        }
        self.ensure_consumer(&streams::canceller_consumer(&self.ns, ack_wait))
            .await?;
        Ok(())
    }

    /// The EVENTS stream handle.
    pub async fn events_stream(&self) -> Result<stream::Stream> {
        self.js
            .get_stream(self.ns.events_stream())
            .await
            .map_err(js_err)
    }

    /// The COMMANDS stream handle.
    pub async fn commands_stream(&self) -> Result<stream::Stream> {
        self.js
            .get_stream(self.ns.commands_stream())
            .await
            .map_err(js_err)
    }

    /// A durable pull consumer by spec (it must have been provisioned).
    pub async fn pull_consumer(
        &self,
        spec: &ConsumerSpec,
    ) -> Result<consumer::Consumer<consumer::pull::Config>> {
        self.js
            .get_consumer_from_stream(&spec.durable, &spec.stream)
            .await
            .map_err(js_err)
    }

    /// Reports the backlog of durable consumers as gauges (`conveyor_consumer_pending`,
    /// `_ack_pending`, `_redelivered`) every `every` until `stop` resolves.
    pub async fn report_consumers(
        &self,
        specs: Vec<ConsumerSpec>,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            for spec in &specs {
                let Ok(mut consumer) = self.pull_consumer(spec).await else {
                    continue;
                };
                let Ok(info) = consumer.info().await else {
                    continue;
                };
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

    /// The idempotency-key bucket.
    pub async fn idempotency(&self) -> Result<kv::Store> {
        self.js
            .get_key_value(self.ns.idempotency_bucket())
            .await
            .map_err(js_err)
    }

    /// The kind registry: which kinds workers serve, with their payload schemas.
    pub async fn kinds(&self) -> Result<kv::Store> {
        self.js
            .get_key_value(self.ns.kinds_bucket())
            .await
            .map_err(js_err)
    }

    /// Records that a worker serves `kind`, with its payload schema (if it declares one);
    /// retried like [`Bus::provision_streams`].
    pub async fn register_kind(
        &self,
        kind: &JobKind,
        schema: Option<&serde_json::Value>,
    ) -> Result<()> {
        let entry = serde_json::json!({ "kind": kind, "schema": schema }).to_string();
        patiently("registering a kind", || async {
            self.kinds()
                .await?
                .put(kind.as_str(), entry.clone().into())
                .await
                .map(drop)
                .map_err(js_err)
        })
        .await
    }

    /// The cancellation-marker bucket.
    pub async fn cancels(&self) -> Result<kv::Store> {
        self.js
            .get_key_value(self.ns.cancels_bucket())
            .await
            .map_err(js_err)
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
                .map_err(js_err),
        }
    }

    async fn ensure_kv(&self, bucket: &str, max_age: Duration) -> Result<()> {
        if let Ok(store) = self.js.get_key_value(bucket).await {
            // A bucket is a stream (`KV_<bucket>`): it must have the replicas asked for, like
            // the streams (a bucket made R1 before the cluster would not survive a node).
            let got = store
                .status()
                .await
                .map_err(js_err)?
                .info
                .config
                .num_replicas;
            if got != self.replicas {
                return Err(Error::Mismatch {
                    what: format!("key-value bucket {bucket}"),
                    field: "num_replicas",
                    got: got.to_string(),
                    want: self.replicas.to_string(),
                });
            }
            return Ok(());
        }
        let created = self
            .js
            .create_key_value(kv::Config {
                bucket: bucket.to_owned(),
                history: 1,
                max_age,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => Ok(()),
            // Another process created it between our get and create.
            Err(_) if self.js.get_key_value(bucket).await.is_ok() => Ok(()),
            Err(e) => Err(js_err(e)),
        }
    }

    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<()> {
        let want = stream::Config {
            name: spec.name.clone(),
            subjects: spec.subjects.clone(),
            retention: match spec.retention {
                Retention::Limits => stream::RetentionPolicy::Limits,
                Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
            },
            discard: if spec.discard_new {
                stream::DiscardPolicy::New
            } else {
                stream::DiscardPolicy::Old
            },
            max_messages: spec.max_msgs,
            max_message_size: streams::MAX_MESSAGE_BYTES,
            duplicate_window: spec.duplicate_window,
            num_replicas: spec.replicas,
            storage: stream::StorageType::File,
            allow_direct: true,
            ..Default::default()
        };
        let info = match self.js.get_stream(&spec.name).await {
            Ok(mut s) => s.info().await.map_err(js_err)?.clone(),
            Err(_) => match self.js.create_stream(want.clone()).await {
                Ok(mut s) => s.info().await.map_err(js_err)?.clone(),
                Err(e) => match self.js.get_stream(&spec.name).await {
                    Ok(mut s) => s.info().await.map_err(js_err)?.clone(),
                    Err(_) => return Err(js_err(e)),
                },
            },
        };
        let got = &info.config;
        let check = |field: &'static str, g: String, w: String| {
            if g == w {
                Ok(())
            } else {
                Err(Error::Mismatch {
                    what: format!("stream {}", spec.name),
                    field,
                    got: g,
                    want: w,
                })
            }
        };
        check(
            "subjects",
            format!("{:?}", got.subjects),
            format!("{:?}", want.subjects),
        )?;
        check(
            "retention",
            format!("{:?}", got.retention),
            format!("{:?}", want.retention),
        )?;
        check(
            "discard",
            format!("{:?}", got.discard),
            format!("{:?}", want.discard),
        )?;
        check(
            "duplicate_window",
            format!("{:?}", got.duplicate_window),
            format!("{:?}", want.duplicate_window),
        )?;
        check(
            "num_replicas",
            got.num_replicas.to_string(),
            want.num_replicas.to_string(),
        )?;
        Ok(())
    }

    async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<()> {
        let (filter_subject, filter_subjects) = match spec.filters.as_slice() {
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        let want = consumer::pull::Config {
            durable_name: Some(spec.durable.clone()),
            filter_subject,
            filter_subjects,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            max_deliver: -1,
            max_ack_pending: spec.max_ack_pending,
            deliver_policy: consumer::DeliverPolicy::All,
            // 0: as many as the stream (CONVEYOR_REPLICAS), so a durable consumer's state
            // survives the loss of a node exactly as the stream's messages do.
            num_replicas: 0,
            ..Default::default()
        };
        let stream = self.js.get_stream(&spec.stream).await.map_err(js_err)?;
        let info = match stream.consumer_info(&spec.durable).await {
            Ok(info)
                if info.config.ack_wait == want.ack_wait
                    && info.config.filter_subject == want.filter_subject
                    && info.config.filter_subjects == want.filter_subjects =>
            {
                info
            }
            // An ack wait changed by configuration, or filters changed by a new version:
            // update in place (the consumer keeps its position).
            Ok(_) => stream
                .update_consumer(want.clone())
                .await
                .map_err(js_err)?
                .cached_info()
                .clone(),
            Err(_) => stream
                .get_or_create_consumer(&spec.durable, want.clone())
                .await
                .map_err(js_err)?
                .cached_info()
                .clone(),
        };
        let got = &info.config;
        let mismatch = |field: &'static str, g: String, w: String| Error::Mismatch {
            what: format!("consumer {} on {}", spec.durable, spec.stream),
            field,
            got: g,
            want: w,
        };
        if got.filter_subject != want.filter_subject || got.filter_subjects != want.filter_subjects
        {
            return Err(mismatch(
                "filter_subjects",
                format!("{} {:?}", got.filter_subject, got.filter_subjects),
                format!("{} {:?}", want.filter_subject, want.filter_subjects),
            ));
        }
        if got.ack_policy != want.ack_policy {
            return Err(mismatch(
                "ack_policy",
                format!("{:?}", got.ack_policy),
                format!("{:?}", want.ack_policy),
            ));
        }
        if got.ack_wait != want.ack_wait {
            return Err(mismatch(
                "ack_wait",
                format!("{:?}", got.ack_wait),
                format!("{:?}", want.ack_wait),
            ));
        }
        Ok(())
    }

    /// Publishes a domain event and waits for JetStream's ack. Returns the ack (its `sequence`
    /// is the event's stream sequence; `duplicate` is set when `msg_id` was already stored).
    pub async fn publish_event(
        &self,
        ev: &Envelope<JobEvent>,
        msg_id: &str,
    ) -> Result<jetstream::publish::PublishAck> {
        self.publish(self.ns.event_subject(ev), ev.to_json(), msg_id)
            .await
    }

    /// [`Bus::publish_event`] with a NATS header besides the usual ones.
    pub async fn publish_event_with(
        &self,
        ev: &Envelope<JobEvent>,
        msg_id: &str,
        header: Option<(&str, &str)>,
    ) -> Result<jetstream::publish::PublishAck> {
        let subject = self.ns.event_subject(ev);
        let pending = self
            .send_with(subject.clone(), ev.to_json(), msg_id, header)
            .await?;
        Self::acked(subject, pending.await)
    }

    /// Publishes a command and waits for JetStream's ack.
    pub async fn publish_command(
        &self,
        cmd: &Envelope<Command>,
        msg_id: &str,
    ) -> Result<jetstream::publish::PublishAck> {
        self.publish(self.ns.command_subject(cmd), cmd.to_json(), msg_id)
            .await
    }

    /// Publishes raw bytes with a message id and the structured CloudEvents content type, and
    /// waits for JetStream's ack.
    pub async fn publish(
        &self,
        subject: String,
        payload: Vec<u8>,
        msg_id: &str,
    ) -> Result<jetstream::publish::PublishAck> {
        let started = std::time::Instant::now();
        let stream = if subject
            .get(self.ns.as_str().len() + 1..)
            .is_some_and(|rest| rest.starts_with("events."))
        {
            "events"
        } else {
            "commands"
        };
        let pending = self.send(subject.clone(), payload, msg_id).await?;
        let acked = pending.await;
        metrics::histogram!("conveyor_publish_duration_seconds", "stream" => stream)
            .record(started.elapsed().as_secs_f64());
        Self::acked(subject, acked)
    }

    fn acked(
        subject: String,
        acked: std::result::Result<
            jetstream::publish::PublishAck,
            jetstream::context::PublishError,
        >,
    ) -> Result<jetstream::publish::PublishAck> {
        acked.map_err(|e| {
            let text = e.to_string();
            // JetStream error 10077: "maximum messages exceeded" on a DiscardNew stream.
            let full = text.contains("maximum messages") || text.contains("10077");
            Error::Publish {
                subject,
                reason: text,
                full,
            }
        })
    }

    /// Sends a publish and returns the future of its ack, so a caller can pipeline publishes
    /// (sent in order) and await the acks together.
    pub async fn send(
        &self,
        subject: String,
        payload: Vec<u8>,
        msg_id: &str,
    ) -> Result<jetstream::context::PublishAckFuture> {
        self.send_with(subject, payload, msg_id, None).await
    }

    async fn send_with(
        &self,
        subject: String,
        payload: Vec<u8>,
        msg_id: &str,
        header: Option<(&str, &str)>,
    ) -> Result<jetstream::context::PublishAckFuture> {
        if self.fail_fast && !self.is_connected() {
            return Err(Error::Disconnected);
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        headers.insert("Content-Type", events::envelope::STRUCTURED_CONTENT_TYPE);
        if let Some((name, value)) = header {
            headers.insert(name, value);
        }
        self.js
            .send_publish(
                subject.clone(),
                jetstream::message::PublishMessage::build()
                    .payload(Bytes::from(payload))
                    .headers(headers),
            )
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::PublishErrorKind::MaxAckPending => Error::Busy,
                _ => Error::Publish {
                    subject,
                    reason: e.to_string(),
                    full: false,
                },
            })
    }
}

/// Decodes a domain event from a NATS message: structured mode (the payload is the CloudEvent),
/// or binary mode when `ce-specversion` is among the headers.
pub fn decode_event(
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Envelope<JobEvent>, DecodeError> {
    decode(headers, payload)
}

/// Decodes a command from a NATS message (see [`decode_event`]).
pub fn decode_command(
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Envelope<Command>, DecodeError> {
    decode(headers, payload)
}

fn decode<P: events::Payload>(
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Envelope<P>, DecodeError> {
    match headers {
        Some(h) if h.get("ce-specversion").is_some() => {
            Envelope::from_binary(|name| h.get(name).map(|v| v.as_str()), payload)
        }
        _ => Envelope::from_json(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists() {
        let addrs = server_addrs("nats://127.0.0.1:4222, nats://127.0.0.1:4223,b:5000").unwrap();
        let got: Vec<(String, u16)> = addrs
            .iter()
            .map(|a| (a.host().to_owned(), a.port()))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1".to_owned(), 4222),
                ("127.0.0.1".to_owned(), 4223),
                ("b".to_owned(), 5000)
            ]
        );
        assert_eq!(server_addrs("a").unwrap()[0].port(), 4222);
        assert!(server_addrs(" , ").is_err());
        assert!(server_addrs("http://a:1").is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("2.9.10"), Some((2, 9)));
        assert_eq!(parse_version("v2.14.6"), Some((2, 14)));
        assert_eq!(parse_version("2.10.0-beta.1"), Some((2, 10)));
        assert!(parse_version("2.9.10").unwrap() < MIN_SERVER_VERSION);
        assert!(parse_version("2.10.0").unwrap() >= MIN_SERVER_VERSION);
        assert_eq!(parse_version("junk"), None);
    }
}

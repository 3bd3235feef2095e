//! Provisioning: creates the streams, buckets and durable consumers of [`events::streams`] that
//! are missing, reads back what the server stored, and refuses to start on a mismatch (older
//! servers silently ignore fields they do not know).

use std::time::Duration;

use async_nats::jetstream::{consumer, kv, stream};
use events::streams::{self, ConsumerSpec, Retention, StreamSpec};
use events::JobKind;

use crate::{Bus, Error, Result};

/// How long idempotency keys are remembered.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long provisioning (streams, buckets, consumers, kinds) keeps trying a request that failed
/// for a passing reason: on a cluster, a JetStream leader election takes a few seconds, during
/// which requests time out or find no responder.
pub const PROVISION_PATIENCE: Duration = Duration::from_secs(60);

/// Runs `attempt` until it succeeds, fails for good, or [`PROVISION_PATIENCE`] has passed.
pub(crate) async fn patiently<T, F, Fut>(what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + PROVISION_PATIENCE;
    let mut backoff = events::retry::SERVICE_RETRY.backoff();
    loop {
        let delay = backoff.next_delay();
        match attempt().await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, retry_in = ?delay, "{what} failed; trying again");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

impl Bus {
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
        // A claim outlives every lease that could still report on its attempt (a lease lasts at
        // most five minutes between heartbeats).
        self.ensure_kv(&self.ns.outcomes_bucket(), Duration::from_secs(600))
            .await?;
        self.ensure_kv(&self.ns.kinds_bucket(), Duration::ZERO)
            .await?;
        self.ensure_kv(&self.ns.pauses_bucket(), Duration::ZERO)
            .await?;
        self.ensure_kv(&self.ns.schedules_bucket(), Duration::ZERO)
            .await?;
        self.ensure_kv(&self.ns.shares_bucket(), Duration::ZERO)
            .await?;
        // Outlives the longest rate period twice over (starts are kept that long).
        self.ensure_kv(
            &self.ns.rates_bucket(),
            Duration::from_secs(2 * 86_400 + 60),
        )
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

    /// Records that a worker serves `kind`, with its payload schema (if it declares one);
    /// retried like [`Bus::provision_streams`].
    pub async fn register_kind(
        &self,
        kind: &JobKind,
        schema: Option<&serde_json::Value>,
    ) -> Result<()> {
        let entry = events::kinds::Registered {
            kind: kind.to_string(),
            schema: schema.cloned(),
            push: None,
            owner: None,
        };
        patiently("registering a kind", || self.register_kind_once(&entry)).await
    }

    /// Records `entry` in the kind registry, once.
    pub async fn register_kind_once(&self, entry: &events::kinds::Registered) -> Result<()> {
        let value = serde_json::to_vec(entry).expect("a registry entry serialises");
        self.kinds()
            .await?
            .put(entry.kind.as_str(), value.into())
            .await
            .map(drop)
            .map_err(Error::bucket)
    }

    /// The registry entry of `kind` and its revision, if it has one.
    pub async fn registered_kind(
        &self,
        kind: &JobKind,
    ) -> Result<Option<(events::kinds::Registered, u64)>> {
        let found = crate::entry(&self.kinds().await?, kind.as_str()).await?;
        Ok(found
            .and_then(|(value, revision)| Some((serde_json::from_slice(&value).ok()?, revision))))
    }

    /// Records `entry` in the kind registry if the kind's entry is still at `revision` (`None`:
    /// the kind has none): `false` if another registration came first.
    pub async fn register_kind_if(
        &self,
        entry: &events::kinds::Registered,
        revision: Option<u64>,
    ) -> Result<bool> {
        let value = serde_json::to_vec(entry).expect("a registry entry serialises");
        crate::put_if(&self.kinds().await?, &entry.kind, value.into(), revision).await
    }

    async fn ensure_kv(&self, bucket: &str, max_age: Duration) -> Result<()> {
        if let Ok(store) = self.js.get_key_value(bucket).await {
            // A bucket is a stream (`KV_<bucket>`): it must have the replicas asked for, like
            // the streams (a bucket made R1 before the cluster would not survive a node).
            let got = store
                .status()
                .await
                .map_err(Error::bucket)?
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
            Err(e) => Err(Error::bucket(e)),
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
        // Getting or creating a stream answers with its info: what the server stored.
        let stream = match self.js.get_stream(&spec.name).await {
            Ok(s) => s,
            Err(_) => match self.js.create_stream(want.clone()).await {
                Ok(s) => s,
                // Created meanwhile by another process.
                Err(e) => self
                    .js
                    .get_stream(&spec.name)
                    .await
                    .map_err(|_| Error::stream(e))?,
            },
        };
        let got = &stream.cached_info().config;
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

    pub(crate) async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<()> {
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
        let stream = self
            .js
            .get_stream(&spec.stream)
            .await
            .map_err(Error::stream)?;
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
                .map_err(Error::consumer)?
                .cached_info()
                .clone(),
            Err(_) => stream
                .get_or_create_consumer(&spec.durable, want.clone())
                .await
                .map_err(Error::consumer)?
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
}

//! Webhook delivery.
//!
//! Two steps, each with its own durable consumer, so a slow or dead endpoint never delays jobs,
//! projections or the fan-in:
//!
//! 1. **Fan-in** (`webhook-fanin` on EVENTS, filtered to terminal events): for a job submitted
//!    with `webhook.url`, queues a `webhook` command on COMMANDS (message id `<job>.webhook`, so a
//!    redelivered terminal event queues nothing new).
//! 2. **Delivery** (`webhooks` on COMMANDS): POSTs the terminal CloudEvent, signed per Standard
//!    Webhooks with the tenant's secret, with a bounded number of deliveries in flight (in all
//!    and per target host), a timeout per request and no redirects. A non-2xx answer, a timeout or
//!    a connection error is retried with exponential backoff and jitter (the next attempt is a new
//!    command with a `not_before`; `Retry-After` of a 429 or 503 is honoured) up to
//!    `max_attempts`; then, or at once on `410 Gone` or a refused target, the
//!    delivery is recorded in the `<NS>_WEBHOOK_FAILURES` bucket, where operators list and
//!    re-drive it. The target is vetted at each delivery by [`events::webhooks::url`] and resolved by
//!    [`bus::webhook_dns`]: the HTTP client
//!    resolves names through the policy and connects to exactly the addresses it allowed (one
//!    lookup, no second one that a rebinding name could answer differently); a name that points
//!    to a refused address is recorded as failed at once, and no proxy is used (a proxy would
//!    resolve the name itself).
//!
//! Deliveries are at least once: receivers deduplicate on `webhook-id` (the CloudEvent id).

use std::sync::Arc;
use std::time::Duration;

use bus::consume::{Delivery, Disposition, Pull};
use bus::transition::JobEnvelope;
use bus::webhook_dns::TargetPolicy;
use bus::Bus;
use chrono::Utc;
use events::command::DeliverWebhook;
use events::job::JobEvent;
use events::subjects::msg_id;
use events::webhooks::url::{self as webhook_url, TargetSettings};
use events::webhooks::FailedDelivery;
use events::{streams, Command, Envelope, RetryPolicy};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::outbound::{self, Failure, HostSlots};
use crate::supervisor::Supervisor;

/// CloudEvents `source` of commands the notifier publishes.
pub const SOURCE: &str = "/conveyor/notifier";

/// Tuning of webhook delivery.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Master secret from which each tenant's signing secret is derived.
    pub master_secret: String,
    /// Attempts before a delivery is recorded as failed.
    pub max_attempts: u32,
    /// Time limit of one POST.
    pub timeout: Duration,
    /// Deliveries in flight per process.
    pub concurrency: usize,
    /// Deliveries in flight per target host (and port), so one endpoint cannot take them all.
    pub per_host: usize,
    /// Delays between attempts (jittered).
    pub retry: RetryPolicy,
    /// Which targets are allowed, and how their names are resolved.
    pub targets: TargetSettings,
}

/// The webhook notifier role.
#[derive(Debug)]
pub struct WebhookNotifier {
    bus: Bus,
    settings: WebhookSettings,
}

struct Shared {
    bus: Bus,
    settings: WebhookSettings,
    http: reqwest::Client,
    policy: TargetPolicy,
    failures: bus::jetstream::Store,
    /// The EVENTS stream, for direct gets (fetched once: its handle is its name).
    events: bus::jetstream::Stream,
    hosts: HostSlots,
}

impl WebhookNotifier {
    /// A notifier over `bus`.
    pub fn new(bus: Bus, settings: WebhookSettings) -> Self {
        Self { bus, settings }
    }

    fn ack_wait(settings: &WebhookSettings) -> Duration {
        settings.timeout * 2 + Duration::from_secs(10)
    }

    /// Runs until `shutdown`; deliveries in flight finish (bounded by the request timeout).
    pub async fn run(self, shutdown: CancellationToken) -> crate::Result<()> {
        self.bus.provision_streams().await?;
        self.bus
            .provision_webhook_consumer(Self::ack_wait(&self.settings))
            .await?;
        let policy = TargetPolicy::new(&self.settings.targets)
            .map_err(|e| crate::Error::Config(e.to_string()))?;
        let http = outbound::client(
            &policy,
            self.settings.timeout,
            concat!("conveyor-webhooks/", env!("CARGO_PKG_VERSION")),
        )?;
        let shared = Arc::new(Shared {
            policy,
            hosts: HostSlots::new(self.settings.per_host),
            failures: self.bus.webhook_failures().await?,
            events: self.bus.events_stream().await?,
            bus: self.bus,
            settings: self.settings,
            http,
        });
        let mut loops = Supervisor::new(shutdown.clone());
        loops.spawn(
            "webhook fan-in",
            fanin_loop(shared.clone(), shutdown.clone()),
        );
        loops.spawn(
            "webhook delivery",
            delivery_loop(shared.clone(), shutdown.clone()),
        );
        {
            let (shared, shutdown) = (shared.clone(), shutdown.clone());
            let specs = vec![
                streams::webhook_fanin_consumer(shared.bus.ns()),
                streams::webhook_delivery_consumer(
                    shared.bus.ns(),
                    WebhookNotifier::ack_wait(&shared.settings),
                ),
            ];
            loops.spawn("consumer metrics", async move {
                let bus = shared.bus.clone();
                bus.report_consumers(specs, Duration::from_secs(5), shutdown.cancelled())
                    .await;
                Ok(())
            });
        }
        // The loops end once their deliveries in flight have (each bounded by the request
        // timeout): none is cut short.
        let result = loops
            .run(Duration::MAX)
            .await
            .map_err(|failed| failed.error);
        // Send the buffered acknowledgements before the process exits.
        if let Err(e) = shared.bus.flush().await {
            tracing::warn!(error = %e, "acknowledgements not flushed");
        }
        result
    }
}

/// Terminal events taken per pull by the fan-in.
const FANIN_BATCH: usize = 256;
/// Most delivery commands taken per pull.
const DELIVERY_BATCH: usize = 256;

async fn fanin_loop(shared: Arc<Shared>, shutdown: CancellationToken) -> crate::Result<()> {
    let pull = Pull::new(
        streams::webhook_fanin_consumer(shared.bus.ns()),
        FANIN_BATCH,
    );
    let bus = shared.bus.clone();
    bus.consume(pull, &shutdown, move |delivery| {
        let shared = shared.clone();
        async move {
            match queue_delivery(&shared, &delivery).await {
                Ok(()) => Disposition::Ack,
                Err(Some(e)) => {
                    tracing::warn!(error = %e, "webhook not queued; retrying");
                    Disposition::Retry(Some(Duration::from_secs(1)))
                }
                Err(None) => Disposition::Terminate,
            }
        }
    })
    .await?;
    Ok(())
}

/// Queues the delivery of a terminal event if its job has a webhook. `Err(None)`: poison.
async fn queue_delivery(shared: &Shared, msg: &Delivery) -> Result<(), Option<bus::Error>> {
    // The worker said the job has no webhook: nothing to look up.
    if msg
        .headers
        .as_ref()
        .and_then(|h| h.get(streams::WEBHOOK_HEADER))
        .is_some_and(|v| v.as_str() == "0")
    {
        return Ok(());
    }
    let ev = bus::decode_event(msg.headers.as_ref(), &msg.payload).map_err(|e| {
        tracing::warn!(subject = %msg.subject, reason = %e, "poison event skipped by the webhook fan-in");
        None
    })?;
    let subject = shared.bus.ns().job_event(&ev.tenant, ev.job, "submitted");
    let Some(submitted) = bus::last_message(&shared.events, subject).await? else {
        return Ok(());
    };
    let url = match bus::decode_event(Some(&submitted.headers), &submitted.payload) {
        Ok(Envelope {
            payload: JobEvent::Submitted(s),
            ..
        }) => s.webhook.map(|w| w.url),
        _ => None,
    };
    let Some(url) = url else { return Ok(()) };
    // The delivery belongs to the trace of the attempt that ended the job.
    let cmd = JobEnvelope::of(SOURCE, &ev).wrap(Command::Webhook(DeliverWebhook {
        event_seq: msg.stream_sequence,
        url,
        attempt: 1,
        not_before: None,
    }));
    shared
        .bus
        .publish_command(&cmd, &msg_id::webhook(ev.job, 0))
        .await?;
    Ok(())
}

async fn delivery_loop(shared: Arc<Shared>, shutdown: CancellationToken) -> crate::Result<()> {
    let spec = streams::webhook_delivery_consumer(
        shared.bus.ns(),
        WebhookNotifier::ack_wait(&shared.settings),
    );
    let pull = Pull::new(spec, DELIVERY_BATCH).concurrency(shared.settings.concurrency);
    let bus = shared.bus.clone();
    bus.consume(pull, &shutdown, move |delivery| {
        let shared = shared.clone();
        async move { deliver(&shared, &delivery).await }
    })
    .await?;
    Ok(())
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Retry later (after this long, if the receiver said so).
    Retry(String, Option<Duration>),
    /// Never retry: the target is refused, or the event cannot be read.
    GiveUp(String),
    /// The receiver answered `410 Gone`: never retry.
    Gone,
}

async fn deliver(shared: &Shared, msg: &Delivery) -> Disposition {
    let cmd = bus::decode_command(msg.headers.as_ref(), &msg.payload).ok();
    let Some(Command::Webhook(delivery)) = cmd.as_ref().map(|c| &c.payload) else {
        tracing::warn!(subject = %msg.subject, "poison webhook command terminated");
        return Disposition::Terminate;
    };
    let cmd = cmd.as_ref().expect("decoded above");
    if let Some(wait) = delivery
        .not_before
        .and_then(|t| (t - Utc::now()).to_std().ok())
    {
        return Disposition::Retry(Some(wait.min(bus::consume::MAX_HAND_BACK)));
    }
    // One target may only hold a few of the delivery slots, so a slow or dead endpoint never
    // delays the deliveries of others. Handing the command back does not use up an attempt.
    let Some(_host_slot) = shared.hosts.try_acquire(&delivery.url) else {
        return Disposition::Retry(Some(Duration::from_millis(500)));
    };
    // The target without its query or user information, which may carry secrets.
    let span = tracing::info_span!("webhook", otel.kind = "producer", job_id = %cmd.job,
        tenant = %cmd.tenant, attempt = delivery.attempt,
        webhook = %webhook_url::redact(&delivery.url), trace_id = tracing::field::Empty);
    bus::trace::continue_trace(&span, cmd.traceparent.as_ref());
    finish_delivery(shared, cmd, delivery)
        .instrument(span)
        .await
}

async fn finish_delivery(
    shared: &Shared,
    cmd: &Envelope<Command>,
    delivery: &DeliverWebhook,
) -> Disposition {
    let started = std::time::Instant::now();
    let attempt = attempt_delivery(shared, delivery, cmd.tenant.as_str()).await;
    metrics::histogram!("conveyor_webhook_delivery_seconds")
        .record(started.elapsed().as_secs_f64());
    let outcome = match &attempt {
        Attempt::Delivered => "delivered",
        Attempt::Retry(..) if delivery.attempt < shared.settings.max_attempts => "retried",
        Attempt::Retry(..) => "failed",
        Attempt::GiveUp(_) => "refused",
        Attempt::Gone => "gone",
    };
    metrics::counter!("conveyor_webhook_deliveries_total", "outcome" => outcome).increment(1);
    let error = match attempt {
        Attempt::Delivered => {
            tracing::debug!("webhook delivered");
            return Disposition::Ack;
        }
        Attempt::Retry(e, after) if delivery.attempt < shared.settings.max_attempts => {
            let delay = after.unwrap_or_else(|| {
                shared
                    .settings
                    .retry
                    .jittered(delivery.attempt, rand::rng().random())
            });
            tracing::info!(error = %e, retry_in = ?delay, "webhook delivery failed; will retry");
            // The next attempt is a new command, so attempts are counted exactly, whatever
            // redeliveries happen in between.
            let next = Envelope {
                id: uuid::Uuid::now_v7(),
                time: Utc::now(),
                payload: Command::Webhook(DeliverWebhook {
                    attempt: delivery.attempt + 1,
                    not_before: Some(Utc::now() + delay),
                    ..delivery.clone()
                }),
                ..cmd.clone()
            };
            return match shared
                .bus
                .publish_command(&next, &format!("{}.next", cmd.id))
                .await
            {
                Ok(_) => Disposition::Ack,
                Err(e) => {
                    tracing::warn!(error = %e, "retry not queued; handing the delivery back");
                    Disposition::Retry(Some(Duration::from_secs(1)))
                }
            };
        }
        Attempt::Retry(e, _) | Attempt::GiveUp(e) => e,
        Attempt::Gone => "the endpoint answered 410 Gone".to_owned(),
    };
    tracing::warn!(error = %error, "webhook delivery failed for good; recorded for re-drive");
    let record = FailedDelivery {
        job: cmd.job.to_string(),
        tenant: cmd.tenant.to_string(),
        kind: cmd.kind.to_string(),
        url: delivery.url.clone(),
        event_seq: delivery.event_seq,
        attempts: delivery.attempt.into(),
        last_error: error,
        failed_at: Utc::now().to_rfc3339(),
    };
    let key = format!("{}.{}", cmd.tenant, cmd.job);
    let value = serde_json::to_vec(&record).expect("a record serialises");
    match shared.failures.put(key, value.into()).await {
        Ok(_) => Disposition::Ack,
        Err(e) => {
            tracing::warn!(error = %e, "failed delivery not recorded; retrying");
            Disposition::Retry(Some(Duration::from_secs(1)))
        }
    }
}

/// What a failed POST comes to: the policy's refusal of the target is final, anything else is
/// retried.
fn send_failure(e: reqwest::Error) -> Attempt {
    match outbound::failure(e) {
        Failure::Refused(why) => Attempt::GiveUp(why),
        Failure::Passing(why) => Attempt::Retry(why, None),
    }
}

async fn attempt_delivery(shared: &Shared, delivery: &DeliverWebhook, tenant: &str) -> Attempt {
    // What needs no lookup (form, and an address as host, which the client does not resolve);
    // a name is resolved and vetted by the client's resolver, once, when it connects.
    if let Err(e) = shared.policy.parse(&delivery.url) {
        return Attempt::GiveUp(format!("refused: {e}"));
    }
    let event = match shared.events.direct_get(delivery.event_seq).await {
        Ok(m) => m,
        Err(e) => {
            return Attempt::Retry(
                format!("reading the event: {e}"),
                Some(Duration::from_secs(1)),
            )
        }
    };
    let id = match bus::decode_event(Some(&event.headers), &event.payload) {
        Ok(ev) => ev.id.to_string(),
        Err(e) => return Attempt::GiveUp(format!("the event is unreadable: {e}")),
    };
    let secret = events::webhooks::tenant_secret(&shared.settings.master_secret, tenant);
    let timestamp = Utc::now().timestamp();
    let signature = events::webhooks::sign(&secret, &id, timestamp, &event.payload)
        .expect("derived secrets are valid");
    let sent = shared
        .http
        .post(&delivery.url)
        .header("content-type", events::envelope::STRUCTURED_CONTENT_TYPE)
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(event.payload.clone())
        .send()
        .await;
    match sent {
        Ok(res) if res.status().is_success() => Attempt::Delivered,
        Ok(res) if res.status() == reqwest::StatusCode::GONE => Attempt::Gone,
        Ok(res) => {
            let status = res.status();
            let retry_after = matches!(status.as_u16(), 429 | 503)
                .then(|| {
                    res.headers()
                        .get("retry-after")?
                        .to_str()
                        .ok()?
                        .parse::<u64>()
                        .ok()
                })
                .flatten()
                .map(|s| Duration::from_secs(s.min(600)));
            Attempt::Retry(format!("the endpoint answered {status}"), retry_after)
        }
        Err(e) => send_failure(e),
    }
}

//! Push kinds: jobs delivered to an endpoint as signed POSTs, for serverless functions with no
//! worker process of their own.
//!
//! A push kind is a kind whose registry entry names an endpoint ([`events::kinds::PushEndpoint`]).
//! Every worker process with push kinds enabled follows the registry and runs a pull loop for
//! each push kind with a [`PushHandler`], so a push job has everything a Rust handler's job has:
//! `job.started` first, heartbeats, the job's timeout, retries with backoff, dead letters and
//! cancellation. The POST is signed per Standard Webhooks with the kind's secret, vetted and
//! resolved like a webhook delivery, and bounded per host.
//!
//! The answer decides the attempt: a `2xx` with a JSON body (or none) is the result; a `4xx`
//! other than `408` and `429` is a fatal failure; anything else (a `5xx`, `408`, `429`, a timeout,
//! a connection error) is a retryable one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bus::webhook_dns::TargetPolicy;
use chrono::Utc;
use events::kinds::{PushEndpoint, Registered};
use events::webhooks::url::TargetSettings;
use events::JobKind;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::{Handler, JobContext, JobError};
use super::Shared;
use crate::outbound::{self, Failure, HostSlots};

/// The largest answer taken as a result.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// How much of an error answer's body goes into the failure's message.
const ERROR_EXCERPT: usize = 512;

/// How a worker process delivers push kinds.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// Which endpoints are allowed, and how their names are resolved (the webhook targets').
    pub targets: TargetSettings,
    /// Requests in flight per endpoint host.
    pub per_host: usize,
}

/// What every push handler of a process shares.
struct Outbound {
    http: reqwest::Client,
    policy: TargetPolicy,
    hosts: HostSlots,
}

/// Runs one push kind's attempts: a signed POST to its endpoint.
struct PushHandler {
    endpoint: PushEndpoint,
    schema: Option<Value>,
    out: Arc<Outbound>,
}

#[async_trait::async_trait]
impl Handler for PushHandler {
    async fn run(&self, job: JobContext) -> Result<Value, JobError> {
        let url = &self.endpoint.url;
        if let Err(e) = self.out.policy.parse(url) {
            return Err(JobError::fatal(format!("the endpoint is refused: {e}")));
        }
        // A host's slots all taken: wait for one (the job's timeout and cancellation hold).
        let _slot = loop {
            if let Some(slot) = self.out.hosts.try_acquire(url) {
                break slot;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = job.cancel.cancelled() => return Err(JobError::Cancelled),
            }
        };
        let mut body = json!({
            "id": job.id,
            "tenant": job.tenant,
            "kind": job.kind,
            "payload": job.payload,
            "attempt": job.attempt,
            "max_attempts": job.max_attempts,
        });
        if let Some(upstream) = &job.upstream {
            body["upstream"] = json!(upstream);
        }
        let body = serde_json::to_vec(&body).expect("a job serialises");
        let id = format!("{}.{}", job.id, job.attempt);
        let timestamp = Utc::now().timestamp();
        let signature = events::webhooks::sign(&self.endpoint.secret, &id, timestamp, &body)
            .map_err(|e| JobError::fatal(format!("the kind's secret is unusable: {e}")))?;
        let request = self
            .out
            .http
            .post(url)
            .timeout(Duration::from_millis(self.endpoint.timeout_ms))
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body);
        let answer = tokio::select! {
            sent = request.send() => sent,
            _ = job.cancel.cancelled() => return Err(JobError::Cancelled),
        };
        let res = answer.map_err(|e| match outbound::failure(e) {
            Failure::Refused(why) => JobError::fatal(why),
            Failure::Passing(why) => JobError::retryable(why),
        })?;
        let status = res.status();
        let body = read_bounded(res).await?;
        if status.is_success() {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&body).map_err(|e| {
                JobError::retryable(format!(
                    "the endpoint answered {status} with a body that is not JSON: {e}"
                ))
            });
        }
        let excerpt = String::from_utf8_lossy(&body[..body.len().min(ERROR_EXCERPT)]).into_owned();
        let message = format!("the endpoint answered {status}: {excerpt}");
        if status.is_client_error() && !matches!(status.as_u16(), 408 | 429) {
            Err(JobError::fatal(message))
        } else {
            Err(JobError::retryable(message))
        }
    }

    fn schema(&self) -> Option<Value> {
        self.schema.clone()
    }
}

/// The answer's body, up to [`MAX_ANSWER_BYTES`].
async fn read_bounded(res: reqwest::Response) -> Result<Vec<u8>, JobError> {
    let mut body = Vec::new();
    let mut chunks = res.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| JobError::retryable(format!("reading the answer: {e}")))?;
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(JobError::fatal(format!(
                "the endpoint's answer is larger than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Follows the kind registry and runs a pull loop for each push kind (not one this process
/// serves with a handler of its own), restarting it when its endpoint changes and stopping it
/// when the kind stops being a push kind. A lost watch is made again.
pub(super) async fn serve_push_kinds(
    shared: Arc<Shared>,
    settings: PushSettings,
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    shutdown: CancellationToken,
) -> crate::Result<()> {
    let policy =
        TargetPolicy::new(&settings.targets).map_err(|e| crate::Error::Config(e.to_string()))?;
    let out = Arc::new(Outbound {
        http: outbound::client(
            &policy,
            Duration::from_secs(3600),
            concat!("conveyor-push/", env!("CARGO_PKG_VERSION")),
        )?,
        hosts: HostSlots::new(settings.per_host),
        policy,
    });
    let mut served: HashMap<JobKind, (PushEndpoint, CancellationToken)> = HashMap::new();
    let mut loops = JoinSet::new();
    while !shutdown.is_cancelled() {
        let watched = async {
            let kv = shared.bus.kinds().await?;
            kv.watch_with_history(">").await.map_err(bus::Error::bucket)
        };
        let mut watch = match watched.await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "kind registry not readable; push kinds wait");
                if !super::pause(&shutdown).await {
                    break;
                }
                continue;
            }
        };
        loop {
            let entry = tokio::select! {
                entry = watch.next() => entry,
                Some(ended) = loops.join_next() => {
                    match ended {
                        Ok(Err(e)) => return Err(e),
                        Err(e) if e.is_panic() => {
                            let why = crate::supervisor::panic_message(e.into_panic().as_ref());
                            return Err(crate::supervisor::Panicked(why).into());
                        }
                        _ => continue,
                    }
                }
                _ = shutdown.cancelled() => break,
            };
            let Some(Ok(entry)) = entry else {
                tracing::debug!("kind registry watch interrupted; watching again");
                break;
            };
            let Ok(kind) = JobKind::parse(&entry.key) else {
                continue;
            };
            if shared.registry.get(&kind).is_some() {
                continue;
            }
            let registered = serde_json::from_slice::<Registered>(&entry.value).ok();
            let wanted = registered.as_ref().and_then(|r| r.push.clone());
            if served.get(&kind).map(|(ep, _)| ep) == wanted.as_ref() {
                continue;
            }
            if let Some((_, stop)) = served.remove(&kind) {
                stop.cancel();
            }
            let Some(endpoint) = wanted else {
                tracing::info!(%kind, "no longer a push kind");
                continue;
            };
            shared
                .bus
                .worker_consumer(&kind, shared.settings.ack_wait)
                .await?;
            tracing::info!(%kind, endpoint = %events::webhooks::url::redact(&endpoint.url), "serving push kind");
            let handler: Arc<dyn Handler> = Arc::new(PushHandler {
                endpoint: endpoint.clone(),
                schema: registered.and_then(|r| r.schema),
                out: out.clone(),
            });
            let stop = shutdown.child_token();
            loops.spawn(super::pull_loop(
                shared.clone(),
                kind.clone(),
                handler,
                slots.clone(),
                jobs.clone(),
                stop.clone(),
            ));
            served.insert(kind, (endpoint, stop));
        }
    }
    while let Some(ended) = loops.join_next().await {
        if let Ok(Err(e)) = ended {
            return Err(e);
        }
    }
    Ok(())
}

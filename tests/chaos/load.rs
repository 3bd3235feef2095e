//! The load: clients submitting a steady mix of jobs through both APIs, as a careful client
//! would (an idempotency key on every submission, retried on errors), cancelling some, repeating
//! some on purpose; and a webhook receiver.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use events::JobId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::faults::Roles;
use crate::Tally;

/// Submitting clients.
const CLIENTS: u64 = 4;

/// What a job's outcome must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    Succeeded,
    Failed,
    /// A cancel was requested while it ran: cancelled, or succeeded if it finished first.
    CancelledOrSucceeded,
    /// A job it depends on fails: cancelled unrun.
    Cancelled,
}

/// A job the API accepted.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub(crate) id: String,
    pub(crate) expect: Expect,
    pub(crate) webhook: bool,
}

/// Recently accepted jobs, for the duplicate-publish faults.
#[derive(Default, Clone)]
pub(crate) struct Recent(Arc<Mutex<VecDeque<JobId>>>);

impl Recent {
    fn push(&self, id: &str) {
        let mut q = self.0.lock().unwrap();
        q.push_back(id.parse().expect("a job id"));
        if q.len() > 200 {
            q.pop_front();
        }
    }

    pub(crate) fn pick(&self, rng: &mut StdRng) -> Option<JobId> {
        let q = self.0.lock().unwrap();
        (!q.is_empty()).then(|| q[rng.random_range(0..q.len())])
    }
}

pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    clients: JoinSet<Vec<Accepted>>,
    pub(crate) recent: Recent,
    /// Answers that break the API's contract (a repeat accepted twice, an unexpected status).
    pub(crate) violations: Arc<Mutex<Vec<String>>>,
}

impl Load {
    pub(crate) fn start(roles: Arc<Roles>, hooks: String, tally: Arc<Tally>, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let recent = Recent::default();
        let violations = Arc::new(Mutex::new(Vec::new()));
        let mut clients = JoinSet::new();
        for n in 0..CLIENTS {
            let client = Client {
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .expect("HTTP client"),
                urls: roles.api_urls.clone(),
                token: roles.env.token("acme", "jobs:write jobs:read events:read"),
                tally: tally.clone(),
                violations: violations.clone(),
            };
            let (stop, recent, hooks) = (stop.clone(), recent.clone(), hooks.clone());
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(n + 1));
            clients.spawn(async move {
                let mut accepted = Vec::new();
                let mut cancels = JoinSet::new();
                while !stop.load(Ordering::Relaxed) {
                    if rng.random_bool(0.04) {
                        accepted.extend(client.workflow(&mut rng).await);
                        continue;
                    }
                    let (body, expect, cancel) = pick_job(&mut rng);
                    let webhook = rng.random_bool(0.2);
                    let mut body = body;
                    if webhook {
                        let path = if rng.random_bool(0.2) { "flaky" } else { "ok" };
                        body["webhook"] = json!({ "url": format!("{hooks}/{path}") });
                    }
                    body["idempotency_key"] = json!(uuid::Uuid::new_v4().to_string());
                    if let Some(id) = client.submit(&body, &mut rng).await {
                        recent.push(&id);
                        if rng.random_bool(0.1) {
                            client.repeat(&body, &id, &mut rng).await;
                        }
                        let expect = if cancel {
                            let client = client.clone();
                            let (id, delay) = (id.clone(), rng.random_range(100..800));
                            let mut rng = StdRng::seed_from_u64(rng.random());
                            cancels.spawn(async move {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                                client.cancel(&id, &mut rng).await;
                            });
                            Expect::CancelledOrSucceeded
                        } else {
                            expect
                        };
                        accepted.push(Accepted {
                            id,
                            expect,
                            webhook,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
                }
                while cancels.join_next().await.is_some() {}
                accepted
            });
        }
        Self {
            stop,
            clients,
            recent,
            violations,
        }
    }

    /// Stops submitting; returns every accepted job.
    pub(crate) async fn stop(mut self) -> (Vec<Accepted>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        while let Some(done) = self.clients.join_next().await {
            all.extend(done.expect("a client task"));
        }
        let violations = std::mem::take(&mut *self.violations.lock().unwrap());
        (all, violations)
    }
}

/// A job of the mix: its body, its expected outcome, whether to cancel it.
fn pick_job(rng: &mut StdRng) -> (Value, Expect, bool) {
    match rng.random_range(0..100) {
        0..=39 => (
            json!({ "kind": "noop", "priority": rng.random_range(-3..=3) }),
            Expect::Succeeded,
            false,
        ),
        40..=49 => (
            json!({ "kind": "sleep", "payload": {
                "ms": rng.random_range(100..1500), "steps": rng.random_range(2..5) } }),
            Expect::Succeeded,
            false,
        ),
        50..=59 => {
            // A concurrency key: three keys, limits 1, 2 and 1.
            let k = rng.random_range(0..3);
            (
                json!({ "kind": "sleep",
                        "payload": { "ms": rng.random_range(50..400), "steps": 2 },
                        "concurrency": { "key": format!("chaos-{k}"), "limit": 1 + k % 2 } }),
                Expect::Succeeded,
                false,
            )
        }
        60..=74 => (
            json!({ "kind": "flaky", "max_attempts": 4,
                    "payload": { "fail_times": rng.random_range(1..3) } }),
            Expect::Succeeded,
            false,
        ),
        75..=81 => (
            json!({ "kind": "fail", "max_attempts": 2 }),
            Expect::Failed,
            false,
        ),
        82..=85 => (
            // Poison of another kind: the handler panics on every attempt.
            json!({ "kind": "fail", "max_attempts": 2, "payload": { "panic": true } }),
            Expect::Failed,
            false,
        ),
        86..=91 => (
            json!({ "kind": crate::http_workers::HTTP_KIND }),
            Expect::Succeeded,
            false,
        ),
        92..=95 => (
            json!({ "kind": crate::http_workers::PUSH_KIND,
                    "payload": { "fail_first": rng.random_bool(0.3) } }),
            Expect::Succeeded,
            false,
        ),
        _ => (
            json!({ "kind": "sleep", "payload": { "ms": 3000, "steps": 6 } }),
            Expect::Succeeded,
            true,
        ),
    }
}

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    urls: Vec<String>,
    token: String,
    tally: Arc<Tally>,
    violations: Arc<Mutex<Vec<String>>>,
}

/// How a request ended.
enum Answer {
    Status(u16, Value),
    /// Refused, reset or timed out: the outcome is unknown.
    Lost,
}

impl Client {
    async fn post(&self, rng: &mut StdRng, path: &str, body: &Value) -> Answer {
        self.post_with(rng, path, body, None).await
    }

    async fn post_with(
        &self,
        rng: &mut StdRng,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> Answer {
        let url = &self.urls[rng.random_range(0..self.urls.len())];
        let mut req = self
            .http
            .post(format!("{url}{path}"))
            .bearer_auth(&self.token)
            .json(body);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        match req.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                Answer::Status(status, res.json().await.unwrap_or(Value::Null))
            }
            Err(_) => Answer::Lost,
        }
    }

    /// Submits until answered 202 (or 200, when an earlier try was stored but its answer lost),
    /// retrying on 429, 503 and lost requests for up to about 30 s, as a client should.
    async fn submit(&self, body: &Value, rng: &mut StdRng) -> Option<String> {
        for attempt in 0..60 {
            match self.post(rng, "/v1/jobs", body).await {
                Answer::Status(202, b) => {
                    self.tally.add(if attempt == 0 {
                        "submissions accepted (202)"
                    } else {
                        "submissions accepted after retries"
                    });
                    return b["id"].as_str().map(str::to_owned);
                }
                Answer::Status(200, b) => {
                    self.tally.add("submissions found stored on retry (200)");
                    return b["id"].as_str().map(str::to_owned);
                }
                Answer::Status(s @ (429 | 503), _) => {
                    self.tally.add(&format!("answers {s} (retried)"));
                }
                Answer::Status(s, b) => {
                    self.violations
                        .lock()
                        .unwrap()
                        .push(format!("submit {body} answered {s}: {b}"));
                    return None;
                }
                Answer::Lost => self.tally.add("requests lost (retried)"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.tally.add("submissions given up");
        None
    }

    /// A small workflow: a batch of five (one member fails) with the built-in callback, a job
    /// depending on a job that succeeds, and one depending on a job that fails.
    async fn workflow(&self, rng: &mut StdRng) -> Vec<Accepted> {
        let mut accepted = Vec::new();
        let accept = |id: String, expect: Expect| Accepted {
            id,
            expect,
            webhook: false,
        };
        let members = json!({ "jobs": [
            { "kind": "noop" }, { "kind": "noop" },
            { "kind": "sleep", "payload": { "ms": rng.random_range(50..500) } },
            { "kind": "flaky", "max_attempts": 3, "payload": { "fail_times": 1 } },
            { "kind": "fail", "max_attempts": 1 },
        ] });
        let key = uuid::Uuid::new_v4().to_string();
        for _ in 0..60 {
            match self
                .post_with(rng, "/v1/batches", &members, Some(&key))
                .await
            {
                Answer::Status(202 | 200, b) => {
                    self.tally.add("batches accepted");
                    let ids = b["jobs"].as_array().cloned().unwrap_or_default();
                    for (i, id) in ids.iter().enumerate() {
                        let expect = if i == 4 {
                            Expect::Failed
                        } else {
                            Expect::Succeeded
                        };
                        accepted.push(accept(id.as_str().unwrap_or_default().into(), expect));
                    }
                    accepted.push(accept(
                        b["id"].as_str().unwrap_or_default().into(),
                        Expect::Succeeded,
                    ));
                    break;
                }
                Answer::Status(429 | 503, _) | Answer::Lost => {}
                Answer::Status(s, b) => {
                    self.violations
                        .lock()
                        .unwrap()
                        .push(format!("a batch answered {s}: {b}"));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let keyed = |body: Value| {
            let mut body = body;
            body["idempotency_key"] = json!(uuid::Uuid::new_v4().to_string());
            body
        };
        // A Rust handler that submits children and waits for them, holding no slot.
        let fan = keyed(json!({ "kind": "fan_out", "payload": { "count": 3,
            "kind": "sleep", "payload": { "ms": rng.random_range(50..300) } } }));
        if let Some(id) = self.submit(&fan, rng).await {
            self.tally.add("fan-outs accepted");
            accepted.push(accept(id, Expect::Succeeded));
        }
        for (first, expect) in [
            (json!({ "kind": "noop" }), Expect::Succeeded),
            (json!({ "kind": "fail", "max_attempts": 1 }), Expect::Failed),
        ] {
            let Some(dep) = self.submit(&keyed(first), rng).await else {
                continue;
            };
            accepted.push(accept(dep.clone(), expect));
            let then = keyed(json!({ "kind": "noop", "depends_on": [dep] }));
            if let Some(id) = self.submit(&then, rng).await {
                let expect = if expect == Expect::Failed {
                    Expect::Cancelled
                } else {
                    Expect::Succeeded
                };
                self.tally.add("dependent jobs accepted");
                accepted.push(accept(id, expect));
            }
        }
        accepted
    }

    /// Sends an accepted submission again on purpose: it must answer 200 with the same job.
    async fn repeat(&self, body: &Value, id: &str, rng: &mut StdRng) {
        for _ in 0..60 {
            match self.post(rng, "/v1/jobs", body).await {
                Answer::Status(200, b) if b["id"] == id => {
                    self.tally.add("repeats answered 200 with the same job");
                    return;
                }
                Answer::Status(429 | 503, _) | Answer::Lost => {}
                Answer::Status(s, b) => {
                    self.violations.lock().unwrap().push(format!(
                        "a repeat of job {id}'s submission answered {s}: {b}"
                    ));
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn cancel(&self, id: &str, rng: &mut StdRng) {
        for _ in 0..60 {
            match self
                .post(rng, &format!("/v1/jobs/{id}/cancel"), &json!({}))
                .await
            {
                Answer::Status(202 | 200 | 409, _) => {
                    self.tally.add("cancellations requested");
                    return;
                }
                Answer::Status(429 | 503, _) | Answer::Lost => {}
                // Read-your-writes has a budget; a job the read model does not show yet is
                // retried.
                Answer::Status(404, _) => {}
                Answer::Status(s, b) => {
                    self.violations
                        .lock()
                        .unwrap()
                        .push(format!("cancel of {id} answered {s}: {b}"));
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// One request the webhook receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) id: String,
    pub(crate) timestamp: String,
    pub(crate) signature: String,
    pub(crate) body: Bytes,
    pub(crate) answered: u16,
}

/// A webhook receiver on 127.0.0.1: `/ok` answers 200; `/flaky` answers 500 to the first try
/// of each delivery, then 200.
#[derive(Default)]
pub(crate) struct Receiver {
    pub(crate) deliveries: Mutex<Vec<Delivery>>,
}

impl Receiver {
    pub(crate) async fn start() -> (Arc<Self>, String) {
        let receiver = Arc::new(Self::default());
        let app = Router::new()
            .route("/hooks/{path}", post(hook))
            .route("/push", post(push))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}/hooks", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        (receiver, base)
    }
}

/// The push kind's endpoint: a job whose payload says `fail_first` fails its first attempt
/// (500), anything else succeeds with a JSON result.
async fn push(body: Bytes) -> (StatusCode, axum::Json<Value>) {
    let job: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if job["payload"]["fail_first"] == true && job["attempt"] == 1 {
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({})));
    }
    (StatusCode::OK, axum::Json(json!({"pushed": job["id"]})))
}

async fn hook(
    State(r): State<Arc<Receiver>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut deliveries = r.deliveries.lock().unwrap();
    let id = h("webhook-id");
    let seen = deliveries.iter().any(|d| d.id == id);
    let status = if path == "flaky" && !seen {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    deliveries.push(Delivery {
        id,
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        body,
        answered: status.as_u16(),
    });
    status
}

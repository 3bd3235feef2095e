//! Workers in other languages under the faults: workers of the worker protocol (HTTP) that lease
//! from either API, heartbeat, complete, sometimes vanish with a job (a killed process: its lease
//! must expire and the job run elsewhere) and sometimes report again (the same report is answered
//! as the first, another one refused); and a push kind delivered by conveyor's own workers to the
//! receiver.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::faults::Roles;
use crate::Tally;

/// The kind HTTP workers serve.
pub(crate) const HTTP_KIND: &str = "chaos.http";
/// The push kind.
pub(crate) const PUSH_KIND: &str = "chaos.push";
/// Worker-protocol processes.
const WORKERS: u64 = 2;

/// A small HTTP client over both APIs, retrying through their faults.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    urls: Vec<String>,
}

impl Api {
    /// `method` `path` with `body` on one API or the other, until answered with something other
    /// than 429, 503 or a lost request (about 30 s at most); `None` if never.
    async fn call(
        &self,
        rng: &mut StdRng,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> Option<(u16, Value)> {
        for _ in 0..60 {
            let url = &self.urls[rng.random_range(0..self.urls.len())];
            let sent = self
                .http
                .request(method.clone(), format!("{url}{path}"))
                .bearer_auth(token)
                .json(body)
                .send()
                .await;
            match sent {
                Ok(res) if !matches!(res.status().as_u16(), 429 | 503) => {
                    let status = res.status().as_u16();
                    return Some((status, res.json().await.unwrap_or(Value::Null)));
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        None
    }
}

/// The worker-protocol workers, running until stopped.
pub(crate) struct HttpWorkers {
    stop: Arc<AtomicBool>,
    workers: JoinSet<()>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl HttpWorkers {
    /// Registers the HTTP kind and the push kind (to `push_url`), then starts the workers.
    pub(crate) async fn start(
        roles: &Roles,
        push_url: String,
        tally: Arc<Tally>,
        seed: u64,
    ) -> Self {
        let api = Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(35))
                .build()
                .expect("HTTP client"),
            urls: roles.api_urls.clone(),
        };
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let worker_token = roles.env.token("ops", "worker:any-tenant");
        let operator = roles.env.token("ops", "operator");
        for (token, path, body) in [
            (
                &worker_token,
                format!("/v1/workers/kinds/{HTTP_KIND}"),
                json!({}),
            ),
            (
                &operator,
                format!("/v1/admin/kinds/{PUSH_KIND}"),
                json!({"url": push_url, "timeout_ms": 5000}),
            ),
        ] {
            let answer = api
                .call(&mut rng, token, reqwest::Method::PUT, &path, &body)
                .await;
            assert!(
                matches!(answer, Some((200, _))),
                "registering {path}: {answer:?}"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let mut workers = JoinSet::new();
        for n in 0..WORKERS {
            let worker = Worker {
                api: api.clone(),
                token: worker_token.clone(),
                name: format!("chaos-http-{n}"),
                tally: tally.clone(),
                violations: violations.clone(),
            };
            let stop = stop.clone();
            let rng = StdRng::seed_from_u64(seed.wrapping_add(100 + n));
            workers.spawn(worker.run(stop, rng));
        }
        Self {
            stop,
            workers,
            violations,
        }
    }

    /// Stops leasing and lets the running jobs finish; the answers that broke the protocol.
    pub(crate) async fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        while self.workers.join_next().await.is_some() {}
        std::mem::take(&mut *self.violations.lock().unwrap())
    }
}

#[derive(Clone)]
struct Worker {
    api: Api,
    token: String,
    name: String,
    tally: Arc<Tally>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    async fn run(self, stop: Arc<AtomicBool>, mut rng: StdRng) {
        let mut running = JoinSet::new();
        while !stop.load(Ordering::Relaxed) {
            let body =
                json!({"kinds": [HTTP_KIND], "max_jobs": 4, "wait_ms": 1000, "worker": self.name});
            let leased = self
                .api
                .call(
                    &mut rng,
                    &self.token,
                    reqwest::Method::POST,
                    "/v1/workers/lease",
                    &body,
                )
                .await;
            let jobs = match leased {
                Some((200, b)) => b["jobs"].as_array().cloned().unwrap_or_default(),
                Some((s, b)) => {
                    self.violate(format!("lease answered {s}: {b}"));
                    continue;
                }
                None => continue,
            };
            for job in jobs {
                let worker = self.clone();
                let rng = StdRng::seed_from_u64(rng.random());
                running.spawn(async move { worker.work(job, rng).await });
            }
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
    }

    /// Runs one leased job: now and then vanishes with it, else works (heartbeating), completes,
    /// and now and then completes again.
    async fn work(self, job: Value, mut rng: StdRng) {
        let id = job["id"].as_str().unwrap_or_default().to_owned();
        if rng.random_bool(0.05) {
            self.tally.add("http worker: vanished with a leased job");
            return;
        }
        let mut lease = job["lease"].clone();
        let beat = Duration::from_millis(job["heartbeat_ms"].as_u64().unwrap_or(500));
        let mut left = Duration::from_millis(rng.random_range(20..1500));
        while left > Duration::ZERO {
            let nap = left.min(beat);
            tokio::time::sleep(nap).await;
            left -= nap;
            if left.is_zero() {
                break;
            }
            match self
                .report(&mut rng, &id, "heartbeat", json!({"lease": lease}))
                .await
            {
                Some((200, b)) => lease = b["lease"].clone(),
                // Lost under the faults (an API away past the lease): the job runs elsewhere.
                Some((409, _)) | None => {
                    self.tally.add("http worker: lease lost while working");
                    return;
                }
                Some((s, b)) => {
                    return self.violate(format!("heartbeat of {id} answered {s}: {b}"))
                }
            }
        }
        let done = json!({"lease": lease, "result": {"by": self.name}});
        match self.report(&mut rng, &id, "complete", done.clone()).await {
            Some((200, _)) => self.tally.add("http worker: completed"),
            Some((409, _)) | None => {
                self.tally
                    .add("http worker: completion refused (lease lost)");
                return;
            }
            Some((s, b)) => return self.violate(format!("complete of {id} answered {s}: {b}")),
        }
        if rng.random_bool(0.1) {
            // The same report again (a retry after a lost answer) is answered as the first; any
            // other report on the ended attempt is refused.
            match self.report(&mut rng, &id, "complete", done).await {
                Some((200 | 409, _)) | None => {
                    self.tally.add("http worker: repeated completion answered")
                }
                Some((s, b)) => {
                    self.violate(format!("a repeated complete of {id} answered {s}: {b}"))
                }
            }
            let fail = json!({"lease": lease, "error": {"message": "after the outcome"}});
            match self.report(&mut rng, &id, "fail", fail).await {
                Some((409, _)) => self
                    .tally
                    .add("http worker: report after the outcome refused"),
                None => {}
                Some((s, b)) => self.violate(format!(
                    "a fail of {id} after its complete answered {s}: {b}"
                )),
            }
        }
    }

    async fn report(
        &self,
        rng: &mut StdRng,
        id: &str,
        what: &str,
        body: Value,
    ) -> Option<(u16, Value)> {
        let path = format!("/v1/workers/jobs/{id}/{what}");
        self.api
            .call(rng, &self.token, reqwest::Method::POST, &path, &body)
            .await
    }

    fn violate(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }
}

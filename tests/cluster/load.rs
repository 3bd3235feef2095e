//! Clients of a deployment with several API processes: submitters that spread their requests
//! over the processes (as a load balancer would) and retry a refused or failed submission with
//! the same `Idempotency-Key` on the next process; and an SSE client that follows the tenant's
//! events and, when its stream ends, reconnects to another process with `Last-Event-ID`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The API processes' base URLs, shared by the clients.
pub(crate) type Bases = Arc<RwLock<Vec<String>>>;

fn pick(bases: &Bases, n: usize) -> String {
    let bases = bases.read().unwrap();
    bases[n % bases.len()].clone()
}

/// Steady submissions from several clients.
pub(crate) struct Load {
    pub(crate) bases: Bases,
    accepted: Arc<Mutex<Vec<String>>>,
    refused: Arc<AtomicUsize>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

/// What the submitters did.
pub(crate) struct Outcome {
    /// Ids of the jobs answered 202 (or 200 to a retry of the same key).
    pub(crate) accepted: Vec<String>,
    /// Answers other than 202/200, and failed requests, all retried.
    pub(crate) refused: usize,
}

impl Load {
    /// `clients` submitters, each pausing `pause` between jobs. With a pause, one job in five
    /// is a short `sleep` (so some are running when a worker dies); otherwise all are `noop`.
    pub(crate) fn start(bases: Vec<String>, token: &str, clients: usize, pause: Duration) -> Self {
        let bases: Bases = Arc::new(RwLock::new(bases));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let mut tasks = JoinSet::new();
        for client in 0..clients {
            let (bases, accepted, refused, stop, http, token) = (
                bases.clone(),
                accepted.clone(),
                refused.clone(),
                stop.clone(),
                http.clone(),
                token.to_owned(),
            );
            tasks.spawn(async move {
                let mut turn = client;
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    n += 1;
                    let body = if !pause.is_zero() && n.is_multiple_of(5) {
                        json!({ "kind": "sleep", "payload": { "ms": 200, "steps": 2 } })
                    } else {
                        json!({ "kind": "noop" })
                    };
                    let key = uuid::Uuid::new_v4().to_string();
                    // Retried until answered (also after `stop`: a submission under way is
                    // either accepted or known to have failed for 60 s).
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        turn += 1;
                        let res = http
                            .post(format!("{}/v1/jobs", pick(&bases, turn)))
                            .bearer_auth(&token)
                            .header("Idempotency-Key", &key)
                            .json(&body)
                            .send()
                            .await;
                        if let Ok(res) = res {
                            if matches!(res.status().as_u16(), 200 | 202) {
                                if let Ok(v) = res.json::<Value>().await {
                                    if let Some(id) = v["id"].as_str() {
                                        accepted.lock().unwrap().push(id.to_owned());
                                        break;
                                    }
                                }
                            }
                        }
                        refused.fetch_add(1, Ordering::Relaxed);
                        assert!(
                            Instant::now() < deadline,
                            "a submission was not accepted by any API process for 60 s"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            });
        }
        Self {
            bases,
            accepted,
            refused,
            stop,
            tasks,
        }
    }

    /// Jobs accepted so far.
    pub(crate) fn accepted_count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Waits until `n` jobs were accepted in all.
    pub(crate) async fn until_accepted(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.accepted_count() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} submissions accepted within {within:?}",
                self.accepted_count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An API process was replaced: its clients use `base` from now on.
    pub(crate) fn replace_base(&self, i: usize, base: &str) {
        self.bases.write().unwrap()[i] = base.to_owned();
    }

    /// Stops submitting; waits for the submissions under way.
    pub(crate) async fn stop(mut self) -> Outcome {
        self.stop.cancel();
        while let Some(r) = self.tasks.join_next().await {
            r.expect("a submitter failed");
        }
        Outcome {
            accepted: self.accepted.lock().unwrap().clone(),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// What the SSE client saw.
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    /// The `id` of every event received, in order of arrival.
    pub(crate) seqs: Vec<u64>,
    /// Streams it had to open again (its server died or told it to resume).
    pub(crate) reconnects: usize,
    /// The resume point: the last event id received (or covered, per a `resume` event).
    last: u64,
}

/// A live follower of `GET /v1/events`.
pub(crate) struct Sse {
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
}

impl Sse {
    /// Follows the tenant's events from the start of the log, on the API processes of `bases`.
    pub(crate) fn start(bases: Bases, token: &str) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let (seen2, stop2, token) = (seen.clone(), stop.clone(), token.to_owned());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut turn = 0;
            let mut first = true;
            while !stop2.is_cancelled() {
                let base = pick(&bases, turn);
                let last = seen2.lock().unwrap().last;
                let mut req = http.get(format!("{base}/v1/events")).bearer_auth(&token);
                req = if first {
                    req.query(&[("after", "0")])
                } else {
                    req.header("Last-Event-ID", last.to_string())
                };
                if let Ok(res) = req.send().await {
                    if res.status() == 200 {
                        first = false;
                        let mut body = res.bytes_stream();
                        let mut buf = String::new();
                        loop {
                            let chunk = tokio::select! {
                                c = body.next() => c,
                                _ = stop2.cancelled() => return,
                            };
                            let Some(Ok(chunk)) = chunk else { break };
                            buf.push_str(&String::from_utf8_lossy(&chunk));
                            while let Some(end) = buf.find("\n\n") {
                                let block: String = buf.drain(..end + 2).collect();
                                record(&seen2, &block);
                            }
                        }
                        seen2.lock().unwrap().reconnects += 1;
                    }
                }
                // Its server died or ended the stream: resume on the next one.
                turn += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { seen, stop }
    }

    /// Waits until it has received (or covered) event `last` (up to `within`), then stops.
    pub(crate) async fn until(self, last: u64, within: Duration) -> Seen {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.seen.lock().unwrap().clone();
            if seen.last >= last {
                self.stop.cancel();
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "the SSE client got to event {} of {last} within {within:?}",
                seen.last
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One SSE block: an event with its `id`, or a `resume` hint.
fn record(seen: &Mutex<Seen>, block: &str) {
    let (mut id, mut event, mut data) = (None, "", "");
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse::<u64>().ok();
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim();
        } else if let Some(v) = line.strip_prefix("data:") {
            data = v.trim();
        }
    }
    let mut seen = seen.lock().unwrap();
    if event == "resume" {
        if let Some(after) = serde_json::from_str::<Value>(data)
            .ok()
            .and_then(|v| v["last_event_id"].as_u64())
        {
            seen.last = seen.last.max(after);
        }
    } else if let Some(id) = id {
        seen.seqs.push(id);
        seen.last = id;
    }
}

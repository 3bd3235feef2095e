//! conveyor's figures, measured from the outside as clients see them: submissions (one at a
//! time and in batches), end-to-end throughput at saturation, latency from `202` to `succeeded`
//! visible in the read model at a given rate, notification latency, memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use conveyor::client::Client;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Quantiles of a latency histogram (recorded in microseconds), in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client")
}

/// One `POST /v1/jobs` of a no-op job; its id once accepted.
async fn submit(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<String> {
    let res = http
        .post(format!("{url}/v1/jobs"))
        .bearer_auth(token)
        .json(&json!({ "kind": "noop" }))
        .send()
        .await?;
    anyhow::ensure!(res.status() == 202, "submit answered {}", res.status());
    let body: Value = res.json().await?;
    Ok(body["id"].as_str().context("an id")?.to_owned())
}

/// Figure 1: `concurrency` clients each submitting one job at a time for `duration`: jobs per
/// second, and the latency of each submission.
pub(crate) async fn submit_single(
    url: &str,
    token: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Latency, u64)> {
    let http = http();
    let hist = Arc::new(Mutex::new(histogram()));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, url, token, hist) =
                (http.clone(), url.to_owned(), token.to_owned(), hist.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    submit(&http, &url, &token).await?;
                    hist.lock()
                        .expect("histogram")
                        .record(t.elapsed().as_micros() as u64)?;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let h = hist.lock().expect("histogram");
    Ok((rate, Latency::of(&h), total))
}

/// One `POST /v1/jobs/batch` of `n` no-op jobs; how many were accepted.
async fn submit_batch_once(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    n: usize,
) -> anyhow::Result<u64> {
    post_batch(http, url, token, &json!({ "kind": "noop" }), n as u64).await
}

/// One batch of `n` jobs like `job`: how many were accepted.
async fn post_batch(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    job: &Value,
    n: u64,
) -> anyhow::Result<u64> {
    let jobs: Vec<&Value> = (0..n).map(|_| job).collect();
    let res = http
        .post(format!("{url}/v1/jobs/batch"))
        .bearer_auth(token)
        .json(&json!({ "jobs": jobs }))
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "batch answered {}", res.status());
    let body: Value = res.json().await?;
    Ok(body["accepted"].as_u64().unwrap_or(0))
}

/// Submits `n` jobs like `job` as one batch (`POST /v1/batches`, pages of 1,000, then sealed)
/// with the built-in callback; returns the batch's id.
pub(crate) async fn submit_as_batch(
    url: &str,
    token: &str,
    job: &Value,
    n: u64,
) -> anyhow::Result<String> {
    let http = http();
    let page = |size: u64| (0..size).map(|_| job).collect::<Vec<_>>();
    let res = http
        .post(format!("{url}/v1/batches"))
        .bearer_auth(token)
        .json(&json!({ "jobs": page(n.min(1000)), "seal": false }))
        .send()
        .await?;
    anyhow::ensure!(res.status() == 202, "a batch answered {}", res.status());
    let id = res.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut left = n.saturating_sub(1000);
    while left > 0 {
        let size = left.min(1000);
        let res = http
            .post(format!("{url}/v1/batches/{id}/jobs"))
            .bearer_auth(token)
            .json(&json!({ "jobs": page(size) }))
            .send()
            .await?;
        anyhow::ensure!(res.status() == 202, "a page answered {}", res.status());
        left -= size;
    }
    let res = http
        .post(format!("{url}/v1/batches/{id}/seal"))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "the seal answered {}", res.status());
    Ok(id)
}

/// Waits until job `id` has succeeded in the read model.
pub(crate) async fn until_succeeded(
    db: &sqlx::PgPool,
    id: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1::uuid")
                .bind(id)
                .fetch_optional(db)
                .await?;
        if status.as_deref() == Some("succeeded") {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "job {id} is {status:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Submits `n` jobs like `job`, in batches of 1,000; returns how many were accepted.
pub(crate) async fn submit_jobs(
    url: &str,
    token: &str,
    job: &Value,
    n: u64,
) -> anyhow::Result<u64> {
    let http = http();
    let mut accepted = 0;
    let mut left = n;
    while left > 0 {
        let size = left.min(1000);
        accepted += post_batch(&http, url, token, job, size).await?;
        left -= size;
    }
    Ok(accepted)
}

/// Figure 1, batches: `clients` clients each submitting batches of 1,000 for `duration`: jobs
/// accepted per second.
pub(crate) async fn submit_batch(
    url: &str,
    token: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<(f64, u64)> {
    let http = http();
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url, token) = (http.clone(), url.to_owned(), token.to_owned());
            tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < deadline {
                    n += submit_batch_once(&http, &url, &token, 1000).await?;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok((total as f64 / started.elapsed().as_secs_f64(), total))
}

/// Jobs `succeeded` in the read model.
async fn succeeded(db: &sqlx::PgPool) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(count), 0)::bigint FROM job_stats WHERE status = 'succeeded'",
    )
    .fetch_one(db)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Waits until `target` jobs have succeeded in the read model.
pub(crate) async fn drain(db: &sqlx::PgPool, target: u64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while succeeded(db).await? < target {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {target} jobs succeeded after {within:?}",
            succeeded(db).await?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// How the end-to-end load is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feed {
    /// 64 clients, one job per request.
    Single,
    /// 4 clients, batches of 1,000.
    Batches,
}

/// Figure 2: jobs per second from submission to `succeeded` visible in the read model, at
/// saturation: clients keep up to `backlog` jobs in the system for `duration` (after a warm-up
/// of a tenth of it), and what the read model shows as succeeded is counted. `sample` is called
/// twice a second (for memory readings).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn end_to_end(
    url: &str,
    token: &str,
    db: &sqlx::PgPool,
    accepted_before: u64,
    feed: Feed,
    backlog: u64,
    duration: Duration,
    mut sample: impl FnMut(),
) -> anyhow::Result<(f64, u64)> {
    let http = http();
    let accepted = Arc::new(AtomicU64::new(accepted_before));
    let done = Arc::new(AtomicU64::new(succeeded(db).await?));
    let stop = tokio_util::sync::CancellationToken::new();
    let (clients, per_request) = match feed {
        Feed::Single => (64, 1),
        Feed::Batches => (4, 1000),
    };
    let feeders: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url, token) = (http.clone(), url.to_owned(), token.to_owned());
            let (accepted, done, stop) = (accepted.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let waiting = accepted.load(Ordering::Relaxed) - done.load(Ordering::Relaxed);
                    if waiting + per_request > backlog {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    let n = if per_request == 1 {
                        submit(&http, &url, &token).await.map(|_| 1)?
                    } else {
                        submit_batch_once(&http, &url, &token, per_request as usize).await?
                    };
                    accepted.fetch_add(n, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let warmup = duration / 10;
    let mut window: Option<(Instant, u64)> = None;
    let begun = Instant::now();
    let mut ticks = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = succeeded(db).await?;
        done.store(now, Ordering::Relaxed);
        ticks += 1;
        if ticks.is_multiple_of(5) {
            sample();
        }
        match window {
            None if begun.elapsed() >= warmup => window = Some((Instant::now(), now)),
            Some((since, from)) if since.elapsed() >= duration => {
                stop.cancel();
                for f in feeders {
                    f.await??;
                }
                let rate = (now - from) as f64 / since.elapsed().as_secs_f64();
                // Let the backlog drain so the next figure starts from a quiet system.
                drain(
                    db,
                    accepted.load(Ordering::Relaxed),
                    Duration::from_secs(300),
                )
                .await?;
                return Ok((rate, accepted.load(Ordering::Relaxed)));
            }
            _ => {}
        }
    }
}

/// What the latency run measured.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Paced {
    /// The rate achieved (jobs/s).
    pub(crate) rate: f64,
    /// From sending `POST /v1/jobs` to its `202`.
    pub(crate) submit: Latency,
    /// From the `202` to `succeeded` visible in the read model.
    pub(crate) visible: Latency,
    /// From `job.succeeded` published (its CloudEvents time) to an SSE client receiving it.
    pub(crate) notify: Latency,
}

/// Figures 2 and 3 at a given load: no-op jobs submitted one by one at `rate` per second for
/// `duration` (open loop). A job is visible when the projector's checkpoint (announced by
/// `NOTIFY`) passes the sequence of its `job.succeeded`, which an SSE client follows.
pub(crate) async fn paced(
    url: &str,
    token: &str,
    database_url: &str,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Paced> {
    // Checkpoint announcements, in order, with when they arrived.
    let checkpoints: Arc<Mutex<Vec<(Instant, i64)>>> = Arc::default();
    let mut listener = sqlx::postgres::PgListener::connect(database_url).await?;
    listener.listen(readmodel::CHECKPOINT_CHANNEL).await?;
    let cps = checkpoints.clone();
    let listening = tokio::spawn(async move {
        while let Ok(n) = listener.recv().await {
            if let Ok(seq) = n.payload().parse::<i64>() {
                cps.lock().expect("checkpoints").push((Instant::now(), seq));
            }
        }
    });
    // job id → (sequence of its job.succeeded, published → received in µs).
    let succeeded: Arc<Mutex<HashMap<String, (i64, u64)>>> = Arc::default();
    let follower = {
        let (client, succeeded) = (Client::new(url, token), succeeded.clone());
        tokio::spawn(async move {
            client
                .follow("/v1/events?type=job.succeeded", None, None, |ev| {
                    let received = Utc::now();
                    let ce: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                    let published = ce["time"]
                        .as_str()
                        .and_then(|t| t.parse::<DateTime<Utc>>().ok());
                    let us = published
                        .and_then(|p| (received - p).num_microseconds())
                        .unwrap_or(0)
                        .max(0) as u64;
                    if let (Some(job), Some(seq)) = (
                        ce["subject"].as_str(),
                        ev.id.as_deref().and_then(|i| i.parse::<i64>().ok()),
                    ) {
                        succeeded
                            .lock()
                            .expect("map")
                            .insert(job.to_owned(), (seq, us));
                    }
                    true
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let http = http();
    let accepted: Arc<Mutex<Vec<(String, Instant, u64)>>> = Arc::default();
    let slots = Arc::new(Semaphore::new(512));
    let n = (rate * duration.as_secs_f64()) as u64;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        let permit = slots.clone().acquire_owned().await?;
        let (http, url, token, accepted) = (
            http.clone(),
            url.to_owned(),
            token.to_owned(),
            accepted.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let id = submit(&http, &url, &token).await?;
            let took = t.elapsed().as_micros() as u64;
            accepted
                .lock()
                .expect("accepted")
                .push((id, Instant::now(), took));
            drop(permit);
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let achieved = n as f64 / started.elapsed().as_secs_f64();
    // Wait until every job was seen succeeded and its sequence was announced as projected.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all_seen = {
            let s = succeeded.lock().expect("map");
            let a = accepted.lock().expect("accepted");
            a.iter()
                .all(|(id, _, _)| s.contains_key(id))
                .then(|| a.iter().map(|(id, _, _)| s[id].0).max().unwrap_or(0))
        };
        if let Some(last) = all_seen {
            if checkpoints
                .lock()
                .expect("checkpoints")
                .last()
                .is_some_and(|(_, c)| *c >= last)
            {
                break;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every job became visible within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    follower.abort();
    listening.abort();
    let (mut submit_h, mut visible_h, mut notify_h) = (histogram(), histogram(), histogram());
    let s = succeeded.lock().expect("map");
    let cps = checkpoints.lock().expect("checkpoints");
    for (id, answered, took) in accepted.lock().expect("accepted").iter() {
        submit_h.record(*took)?;
        let (seq, notified) = s[id];
        notify_h.record(notified)?;
        let i = cps.partition_point(|(_, c)| *c < seq);
        let visible_at = cps[i].0;
        visible_h.record(visible_at.saturating_duration_since(*answered).as_micros() as u64)?;
    }
    Ok(Paced {
        rate: achieved,
        submit: Latency::of(&submit_h),
        visible: Latency::of(&visible_h),
        notify: Latency::of(&notify_h),
    })
}

/// Figure 5: memory added to the API by `n` idle SSE subscribers (bytes).
pub(crate) async fn idle_subscribers(
    url: &str,
    token: &str,
    n: usize,
    api: &crate::procs::Proc,
) -> anyhow::Result<u64> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = api.rss();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let res = http
            .get(format!("{url}/v1/events?type=job.cancel_requested"))
            .bearer_auth(token)
            .send()
            .await?;
        anyhow::ensure!(
            res.status().is_success(),
            "subscriber refused: {}",
            res.status()
        );
        open.push(res);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = api.rss();
    drop(open);
    Ok(after.saturating_sub(before))
}

/// Waits out `futures` with a bound, so a stuck phase fails the run instead of hanging it.
pub(crate) async fn bounded<T>(
    what: &str,
    within: Duration,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(within, f)
        .await
        .with_context(|| format!("{what} did not finish within {within:?}"))?
}

/// Submits `jobs` in batches of 1,000; returns how many were accepted.
pub(crate) async fn submit_each(url: &str, token: &str, jobs: Vec<Value>) -> anyhow::Result<u64> {
    let http = http();
    let mut accepted = 0;
    for chunk in jobs.chunks(1_000) {
        let res = http
            .post(format!("{url}/v1/jobs/batch"))
            .bearer_auth(token)
            .json(&json!({ "jobs": chunk }))
            .send()
            .await?;
        anyhow::ensure!(res.status() == 200, "batch answered {}", res.status());
        let body: Value = res.json().await?;
        accepted += body["accepted"].as_u64().unwrap_or(0);
    }
    Ok(accepted)
}

/// Once a first job has started (the deployment is warm), submits `n` jobs like `job` one at a
/// time, 20 a second, then waits for all of them to start; returns their start latency (`started_at - created_at` in the read model) at p50 and
/// p99, in ms, and how many other jobs were still waiting when the last one started.
pub(crate) async fn probe_starts(
    url: &str,
    token: &str,
    db: &sqlx::PgPool,
    job: &Value,
    n: usize,
) -> anyhow::Result<(f64, f64, i64)> {
    let http = http();
    // One job first, waited for: the probes measure the scheduler at work, not its start.
    let res = http
        .post(format!("{url}/v1/jobs"))
        .bearer_auth(token)
        .json(&json!({"kind": "noop"}))
        .send()
        .await?;
    anyhow::ensure!(res.status() == 202, "submit answered {}", res.status());
    let first: uuid::Uuid = res.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM jobs WHERE id = $1 AND started_at IS NOT NULL",
    )
    .bind(first)
    .fetch_one(db)
    .await?
        == 0
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the first job never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ids = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for _ in 0..n {
        tick.tick().await;
        let res = http
            .post(format!("{url}/v1/jobs"))
            .bearer_auth(token)
            .json(job)
            .send()
            .await?;
        anyhow::ensure!(res.status() == 202, "submit answered {}", res.status());
        let body: Value = res.json().await?;
        ids.push(
            body["id"]
                .as_str()
                .unwrap_or_default()
                .parse::<uuid::Uuid>()?,
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let started: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE id = ANY($1) AND started_at IS NOT NULL",
        )
        .bind(&ids)
        .fetch_one(db)
        .await?;
        if started as usize == n {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the probes did not all start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ms: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM started_at - created_at)::float8 * 1000 FROM jobs WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE status = 'queued' AND NOT (id = ANY($1))",
    )
    .bind(&ids)
    .fetch_one(db)
    .await?;
    Ok((at(0.5), at(0.99), waiting))
}

/// The rate `jobs` jobs ran at, from the first start to the last end as the workers recorded
/// them in the read model: the workers' own pace, not their start-up.
pub(crate) async fn drain_rate(db: &sqlx::PgPool, jobs: u64) -> anyhow::Result<f64> {
    let span: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8 FROM jobs",
    )
    .fetch_one(db)
    .await?;
    Ok(jobs as f64 / span.max(0.001))
}

//! `conveyor-bench`: measures a running conveyor from the outside, as a client would.
//!
//! Run through `scripts/bench`, which starts the services and conveyor's roles as separate
//! processes and passes their address and a token.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use conveyor::client::Client;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(name = "conveyor-bench", about = "Benchmarks of a running conveyor")]
struct Cli {
    /// API base URL.
    #[arg(long, env = "CONVEYOR_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token with jobs:write, jobs:read and events:read.
    #[arg(long, env = "CONVEYOR_TOKEN", default_value = "")]
    token: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Latency from `job.succeeded` being published to an SSE client receiving it.
    NotifyLatency {
        /// Jobs to run (one latency sample each).
        #[arg(long, default_value_t = 1000)]
        jobs: usize,
        /// Submissions in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Extra SSE subscribers held open (of the same tenant, filtering for an event type
        /// that never comes), so every event is checked against them too.
        #[arg(long, default_value_t = 0)]
        idle_subscribers: usize,
    },
    /// Fills a fresh namespace's EVENTS with `events` events (3 per job), then measures the raw
    /// ordered-consumer read rate of the stream and the rate of a full read-model rebuild.
    Replay {
        /// Events to publish and replay.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// NATS URL.
        #[arg(
            long,
            env = "CONVEYOR_NATS_URL",
            default_value = "nats://127.0.0.1:4222"
        )]
        nats_url: String,
        /// Namespace to fill (must be new).
        #[arg(long, env = "CONVEYOR_NAMESPACE")]
        namespace: String,
        /// Postgres URL of a fresh, migrated database.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Events per rebuild transaction.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
    },
}

mod replay;

fn quantiles(h: &Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n = {})",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0,
        h.len()
    )
}

async fn open_idle_subscribers(
    url: &str,
    token: &str,
    n: usize,
) -> anyhow::Result<Vec<reqwest::Response>> {
    let http = reqwest::Client::new();
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let res = http
            .get(format!("{url}/v1/events?type=job.cancel_requested"))
            .bearer_auth(token)
            .send()
            .await
            .context("opening an idle subscriber")?;
        anyhow::ensure!(
            res.status().is_success(),
            "idle subscriber refused: {}",
            res.status()
        );
        open.push(res);
    }
    Ok(open)
}

async fn notify_latency(c: Client, jobs: usize, concurrency: usize) -> anyhow::Result<()> {
    let published_to_received = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let seen = Arc::new(Mutex::new(0usize));
    // The subscriber: live events of type job.succeeded.
    let listener = {
        let (c, hist, seen) = (c.clone(), published_to_received.clone(), seen.clone());
        tokio::spawn(async move {
            c.follow("/v1/events?type=job.succeeded", None, None, |ev| {
                let received = Utc::now();
                let ce: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                if let Some(Ok(published)) = ce["time"].as_str().map(str::parse::<DateTime<Utc>>) {
                    let us = (received - published)
                        .num_microseconds()
                        .unwrap_or(0)
                        .max(0) as u64;
                    let _ = hist.lock().expect("histogram").record(us);
                }
                let mut n = seen.lock().expect("counter");
                *n += 1;
                *n < jobs
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let submit = futures::stream::iter(0..jobs).for_each_concurrent(concurrency, |_| {
        let c = c.clone();
        async move {
            if let Err(e) = c
                .call(
                    reqwest::Method::POST,
                    "/v1/jobs",
                    Some(&json!({ "kind": "noop" })),
                    &[],
                )
                .await
            {
                eprintln!("submit failed: {e:#}");
            }
        }
    });
    submit.await;
    let submitted = started.elapsed();
    tokio::time::timeout(Duration::from_secs(120), listener)
        .await
        .context("not every job.succeeded arrived within 120 s")???;
    let elapsed = started.elapsed();
    let h = published_to_received.lock().expect("histogram");
    println!(
        "notification latency, job.succeeded published -> SSE client: {}",
        quantiles(&h)
    );
    println!(
        "{jobs} jobs submitted in {:.2} s, all succeeded and notified in {:.2} s ({:.0} jobs/s at {concurrency} submitters)",
        submitted.as_secs_f64(),
        elapsed.as_secs_f64(),
        jobs as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let c = Client::new(&cli.url, &cli.token);
    match cli.command {
        Command::Replay {
            events,
            nats_url,
            namespace,
            database_url,
            batch,
        } => replay::run(events, &nats_url, &namespace, &database_url, batch).await,
        Command::NotifyLatency {
            jobs,
            concurrency,
            idle_subscribers,
        } => {
            let _idle = open_idle_subscribers(&cli.url, &cli.token, idle_subscribers).await?;
            if idle_subscribers > 0 {
                println!("{idle_subscribers} idle SSE subscribers open");
            }
            notify_latency(c, jobs, concurrency).await
        }
    }
}

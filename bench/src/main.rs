//! `conveyor-bench`: the benchmark suite behind `scripts/bench`.
//!
//! In one run on one machine it starts a nats-server of its own (with the default fsync policy,
//! then with `sync_interval: always`), conveyor's roles as separate processes in fresh
//! namespaces and databases, measures the raw limits of the same NATS and Postgres, then
//! conveyor's figures from the outside as a client would, and prints one table with each
//! figure, its ratio to the matching limit, the versions and the durability settings. With
//! `--peer-dir`, graphile-worker runs the same no-op workload on the same Postgres.

mod load;
mod procs;
mod raw;
mod replay;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use procs::{Nats, Roles, Setup, Sync};
use report::{pct, Results, Table};

/// The worker concurrencies figure 6 measures.
const SLOTS: [usize; 4] = [1, 2, 4, 64];

/// The JWT secret the benchmark's roles use.
const SECRET: &str = "bench-secret-of-the-benchmark-suite-0123456789";

#[derive(Debug, Parser)]
#[command(name = "conveyor-bench", about = "conveyor's benchmark suite")]
struct Cli {
    /// Short runs, once each (under 2 minutes); otherwise three runs of each figure.
    #[arg(long)]
    quick: bool,
    /// The `conveyor` binary (release build).
    #[arg(long)]
    conveyor: PathBuf,
    /// A nats-server binary, 2.10 or newer.
    #[arg(long)]
    nats_server: PathBuf,
    /// Postgres URL (its database part is replaced by fresh ones).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// A folder where graphile-worker is installed: runs the peer benchmark there.
    #[arg(long)]
    peer_dir: Option<PathBuf>,
    /// A Python interpreter with the Python SDK installed: runs the SDK workers' figure with it.
    #[arg(long)]
    sdk_python: Option<PathBuf>,
    /// Run the TypeScript SDK worker's figure (with `node`; the SDK built in sdks/typescript).
    #[arg(long)]
    sdk_node: bool,
    /// Only these parts, comma-separated: `raw`, `load`, `replay`, `memory`, `slots`, `workers`,
    /// `scheduling`, `workflows`, `peer`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only this fsync policy: `default` or `always` (both otherwise).
    #[arg(long)]
    sync: Option<String>,
    /// Where logs and stores go.
    #[arg(long, default_value = "target/bench")]
    work: PathBuf,
}

/// How long and how many of everything.
struct Plan {
    runs: usize,
    submit: Duration,
    batch: Duration,
    e2e: Duration,
    paced: Duration,
    raw: Duration,
    replay_events: u64,
    peer_jobs: u64,
}

impl Plan {
    fn of(quick: bool) -> Self {
        if quick {
            Self {
                runs: 1,
                submit: Duration::from_secs(3),
                batch: Duration::from_secs(3),
                e2e: Duration::from_secs(8),
                paced: Duration::from_secs(4),
                raw: Duration::from_secs(2),
                replay_events: 150_000,
                peer_jobs: 100_000,
            }
        } else {
            Self {
                runs: 3,
                submit: Duration::from_secs(8),
                batch: Duration::from_secs(6),
                e2e: Duration::from_secs(60),
                paced: Duration::from_secs(12),
                raw: Duration::from_secs(5),
                replay_events: 1_000_000,
                peer_jobs: 200_000,
            }
        }
    }
}

struct Suite {
    cli: Cli,
    plan: Plan,
    results: Results,
    notes: Vec<String>,
    serial: usize,
}

impl Suite {
    fn wants(&self, part: &str) -> bool {
        self.cli.only.is_empty() || self.cli.only.iter().any(|o| o == part)
    }

    /// A fresh namespace and database for one run.
    async fn setup(&mut self, nats: &Nats, tag: &str) -> anyhow::Result<Setup> {
        self.serial += 1;
        let namespace = format!("bench_{tag}_{}_{}", std::process::id(), self.serial);
        let database_url =
            procs::fresh_database(&self.cli.database_url, &format!("conveyor_{namespace}")).await?;
        Ok(Setup {
            conveyor: self.cli.conveyor.clone(),
            nats_url: nats.url.clone(),
            namespace,
            database_url,
            logs: self.cli.work.join("logs"),
        })
    }

    fn token() -> String {
        Self::token_of("bench")
    }

    fn token_of(tenant: &str) -> String {
        producers::auth::mint(
            &producers::JwtSettings::hs256(SECRET),
            "bench",
            &events::Tenant::parse(tenant).expect("valid"),
            "jobs:write jobs:read events:read admin",
            86_400,
        )
    }

    async fn raw(&mut self, nats: &Nats, sync: Sync) -> anyhow::Result<()> {
        let key = sync_key(sync);
        for _ in 0..self.plan.runs {
            let rate = raw::publish_per_message_ack(&nats.url, 64, self.plan.raw).await?;
            self.results.add(&format!("raw.publish.{key}"), rate);
        }
        eprintln!(
            "  raw JetStream publish, 64 publishers, ack per message: {}",
            self.results
                .get(&format!("raw.publish.{key}"))
                .show(0, "/s")
        );
        Ok(())
    }

    async fn load(&mut self, nats: &Nats, sync: Sync) -> anyhow::Result<()> {
        let key = sync_key(sync);
        let token = Self::token();
        // With an fsync per message the figures are stable and slow to gather: one run is
        // enough for the durability comparison, and keeps the full suite under 15 minutes.
        let runs = if sync == Sync::Always {
            1
        } else {
            self.plan.runs
        };
        for run in 0..runs {
            let setup = self.setup(nats, key).await?;
            // Submissions first, with the API and the projector only, so they measure what
            // accepting a job costs; the jobs wait, and are then drained by a worker.
            let mut roles = Roles::start_front(&setup).await?;
            let db = sqlx::PgPool::connect(&setup.database_url).await?;
            let (rate, lat, n1) = load::bounded(
                "single submissions",
                self.plan.submit * 4,
                load::submit_single(&roles.url, &token, 64, self.plan.submit),
            )
            .await?;
            self.results.add(&format!("submit.rate.{key}"), rate);
            self.results.add(&format!("submit.p50.{key}"), lat.p50);
            self.results.add(&format!("submit.p99.{key}"), lat.p99);
            let (rate, n2) = load::bounded(
                "batch submissions",
                self.plan.batch * 4,
                load::submit_batch(&roles.url, &token, 4, self.plan.batch),
            )
            .await?;
            self.results.add(&format!("batch.rate.{key}"), rate);
            // The drain: every queued job to `succeeded` in the read model, once workers run
            // (what graphile-worker reports for itself).
            let started = std::time::Instant::now();
            roles.start_back(&setup).await?;
            load::drain(&db, n1 + n2, Duration::from_secs(600)).await?;
            let drained = (n1 + n2) as f64 / started.elapsed().as_secs_f64();
            self.results.add(&format!("drain.rate.{key}"), drained);
            let mut peak = [0u64; 4];
            let mut sample = || {
                for (p, now) in peak.iter_mut().zip(roles.rss()) {
                    *p = (*p).max(now);
                }
            };
            let (e2e, total) = load::bounded(
                "end to end",
                self.plan.e2e * 3 + Duration::from_secs(300),
                load::end_to_end(
                    &roles.url,
                    &token,
                    &db,
                    n1 + n2,
                    load::Feed::Batches,
                    20_000,
                    self.plan.e2e,
                    &mut sample,
                ),
            )
            .await?;
            self.results.add(&format!("e2e.rate.{key}"), e2e);
            let (e2e_single, total) = load::bounded(
                "end to end, one job per request",
                self.plan.e2e * 3 + Duration::from_secs(300),
                load::end_to_end(
                    &roles.url,
                    &token,
                    &db,
                    total,
                    load::Feed::Single,
                    2_000,
                    self.plan.e2e / 2,
                    &mut sample,
                ),
            )
            .await?;
            self.results.add(&format!("e2e.single.{key}"), e2e_single);
            if sync == Sync::Default {
                for (name, rss) in ["api", "worker", "projector", "notifier"].iter().zip(peak) {
                    self.results.add(&format!("rss.busy.{name}"), rss as f64);
                }
            }
            let paced = load::bounded(
                "paced submissions",
                self.plan.paced * 4 + Duration::from_secs(120),
                load::paced(
                    &roles.url,
                    &token,
                    &setup.database_url,
                    e2e_single / 2.0,
                    self.plan.paced,
                ),
            )
            .await?;
            for (name, v) in [
                ("paced.rate", paced.rate),
                ("paced.submit.p50", paced.submit.p50),
                ("paced.submit.p99", paced.submit.p99),
                ("paced.visible.p50", paced.visible.p50),
                ("paced.visible.p99", paced.visible.p99),
                ("notify.p50", paced.notify.p50),
                ("notify.p99", paced.notify.p99),
            ] {
                self.results.add(&format!("{name}.{key}"), v);
            }
            eprintln!(
                "  run {}: submit {:.0}/s (p99 {:.1} ms), batch {:.0} jobs/s, drain of {} jobs {drained:.0}/s, end to end {e2e:.0} jobs/s (one per request {e2e_single:.0}/s; {total} jobs), at {:.0}/s: 202 p99 {:.1} ms, visible p50 {:.1} ms p99 {:.1} ms, notified p99 {:.1} ms",
                run + 1, rate_of(&self.results, &format!("submit.rate.{key}")), lat.p99,
                rate_of(&self.results, &format!("batch.rate.{key}")), n1 + n2, paced.rate, paced.submit.p99,
                paced.visible.p50, paced.visible.p99, paced.notify.p99
            );
            drop(roles);
            db.close().await;
        }
        Ok(())
    }

    async fn replay(&mut self, nats: &Nats) -> anyhow::Result<()> {
        let namespace = format!("bench_replay_{}", std::process::id());
        let bus = replay::bus(&nats.url, &namespace).await?;
        let fill = replay::fill(&bus, self.plan.replay_events).await?;
        eprintln!("  filled {} events at {fill:.0}/s", self.plan.replay_events);
        let stream = events::Namespace::parse(&namespace)?.events_stream();
        for run in 0..self.plan.runs {
            let raw = raw::ordered_read(&nats.url, &stream, self.plan.replay_events).await?;
            self.results.add("raw.read", raw);
            let db = procs::fresh_database(
                &self.cli.database_url,
                &format!("conveyor_{namespace}_{run}"),
            )
            .await?;
            let rebuilt = replay::rebuild(bus.clone(), &db, self.plan.replay_events, 5000).await?;
            self.results.add("replay.rate", rebuilt);
            eprintln!(
                "  run {}: raw read {raw:.0} events/s, rebuild {rebuilt:.0} events/s",
                run + 1
            );
        }
        for _ in 0..self.plan.runs {
            let db =
                procs::fresh_database(&self.cli.database_url, &format!("conveyor_{namespace}_pg"))
                    .await?;
            self.results.add(
                "raw.upsert",
                raw::pg_upsert(&db, 1000, self.plan.raw).await?,
            );
        }
        Ok(())
    }

    /// Figure 6: one worker process with few slots (serving the five built-in kinds) drains a
    /// backlog of one kind, from its first job's start to its last job's end: against what its
    /// slots allow (20 ms jobs), or, for no-op jobs, against 64 slots.
    async fn slots(&mut self, nats: &Nats) -> anyhow::Result<()> {
        let token = Self::token();
        for concurrency in SLOTS {
            for (name, job) in [
                (
                    "sleep",
                    serde_json::json!({"kind": "sleep", "payload": {"ms": 20, "steps": 1}}),
                ),
                ("noop", serde_json::json!({"kind": "noop"})),
            ] {
                let setup = self.setup(nats, "slots").await?;
                let mut roles = Roles::start_front(&setup).await?;
                let db = sqlx::PgPool::connect(&setup.database_url).await?;
                // About two seconds of work for the slots at full speed.
                let n = if name == "sleep" {
                    100 * concurrency as u64
                } else {
                    2_000
                };
                let queued = load::submit_jobs(&roles.url, &token, &job, n).await?;
                roles.start_worker(&setup, concurrency).await?;
                load::drain(&db, queued, Duration::from_secs(300)).await?;
                let rate = load::drain_rate(&db, queued).await?;
                self.results
                    .add(&format!("slots.{name}.{concurrency}"), rate);
                eprintln!("  {concurrency} slots, {name}: {queued} jobs at {rate:.0}/s");
                drop(roles);
                db.close().await;
            }
        }
        Ok(())
    }

    /// Figure 7: one worker process drains no-op jobs end to end, each at its default
    /// concurrency (64 for all three): the embedded Rust worker, and the Python and TypeScript
    /// SDKs' workers over the worker protocol; from the first start to the last end in the read
    /// model.
    async fn workers(&mut self, nats: &Nats) -> anyhow::Result<()> {
        let token = Self::token();
        let n: u64 = if self.cli.quick { 2_000 } else { 5_000 };
        let mut languages = vec!["rust"];
        match &self.cli.sdk_python {
            Some(_) => languages.push("python"),
            None => self
                .notes
                .push("7. the Python SDK worker was not measured: no --sdk-python".into()),
        }
        if self.cli.sdk_node {
            languages.push("typescript");
        } else {
            self.notes
                .push("7. the TypeScript SDK worker was not measured: no --sdk-node".into());
        }
        for language in languages {
            let setup = self.setup(nats, "workers").await?;
            let mut roles = Roles::start_front(&setup).await?;
            let db = sqlx::PgPool::connect(&setup.database_url).await?;
            let kind = if language == "rust" {
                "noop"
            } else {
                "bench.noop"
            };
            if language != "rust" {
                let put = reqwest::Client::new()
                    .put(format!("{}/v1/workers/kinds/{kind}", roles.url))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({}))
                    .send()
                    .await?;
                anyhow::ensure!(
                    put.status().is_success(),
                    "registering {kind}: {}",
                    put.status()
                );
            }
            let queued =
                load::submit_jobs(&roles.url, &token, &serde_json::json!({"kind": kind}), n)
                    .await?;
            let sdk_worker = match language {
                "rust" => {
                    roles.start_worker(&setup, 64).await?;
                    None
                }
                "python" => {
                    let python = self.cli.sdk_python.clone().expect("checked above");
                    Some(procs::spawn_sdk_worker(
                        &setup,
                        &roles.url,
                        &token,
                        python,
                        "bench/workers/noop.py",
                    )?)
                }
                _ => Some(procs::spawn_sdk_worker(
                    &setup,
                    &roles.url,
                    &token,
                    "node".into(),
                    "bench/workers/noop.mjs",
                )?),
            };
            load::drain(&db, queued, Duration::from_secs(600)).await?;
            let rate = load::drain_rate(&db, queued).await?;
            self.results.add(&format!("workers.{language}"), rate);
            eprintln!("  {language} worker: {queued} no-op jobs at {rate:.0}/s");
            drop(sdk_worker);
            drop(roles);
            db.close().await;
        }
        Ok(())
    }

    /// Figure 8: what scheduling costs and what it buys. (a) One worker (64 slots) drains the
    /// same number of no-op jobs twice in one run: all of one tenant with no options (what
    /// every job took before scheduling), then spread over 10 tenants, each job with a priority
    /// and a concurrency key (200 keys, limit 4); from the first start to the last end.
    /// (b) Tenant B submits jobs one at a time while tenant A holds a backlog, and B's start
    /// latency (`started_at - created_at`) is read from the read model, beside B's latency with
    /// no backlog in the same run.
    async fn scheduling(&mut self, nats: &Nats) -> anyhow::Result<()> {
        let n: u64 = if self.cli.quick { 5_000 } else { 20_000 };
        for mode in ["plain", "keys"] {
            let setup = self.setup(nats, "sched").await?;
            let mut roles = Roles::start_front(&setup).await?;
            let db = sqlx::PgPool::connect(&setup.database_url).await?;
            let queued = if mode == "plain" {
                load::submit_jobs(
                    &roles.url,
                    &Self::token(),
                    &serde_json::json!({"kind": "noop"}),
                    n,
                )
                .await?
            } else {
                let mut queued = 0;
                for t in 0..10u64 {
                    let jobs: Vec<serde_json::Value> = (0..n / 10)
                        .map(|i| {
                            serde_json::json!({"kind": "noop", "priority": i % 4,
                                "concurrency": {"key": format!("k{}", (i + t) % 200), "limit": 4}})
                        })
                        .collect();
                    queued +=
                        load::submit_each(&roles.url, &Self::token_of(&format!("tenant{t}")), jobs)
                            .await?;
                }
                queued
            };
            roles.start_worker(&setup, 64).await?;
            load::drain(&db, queued, Duration::from_secs(600)).await?;
            let rate = load::drain_rate(&db, queued).await?;
            self.results.add(&format!("sched.{mode}"), rate);
            eprintln!("  {mode}: {queued} no-op jobs at {rate:.0}/s");
            drop(roles);
            db.close().await;
        }
        let backlog: u64 = if self.cli.quick { 20_000 } else { 50_000 };
        let probes = if self.cli.quick { 50 } else { 200 };
        for mode in ["alone", "behind"] {
            let setup = self.setup(nats, "fair").await?;
            let mut roles = Roles::start_front(&setup).await?;
            roles.start_worker(&setup, 64).await?;
            let db = sqlx::PgPool::connect(&setup.database_url).await?;
            let job = serde_json::json!({"kind": "sleep", "payload": {"ms": 2, "steps": 1}});
            if mode == "behind" {
                load::submit_jobs(&roles.url, &Self::token_of("tenant_a"), &job, backlog).await?;
            }
            let (p50, p99, still) =
                load::probe_starts(&roles.url, &Self::token_of("tenant_b"), &db, &job, probes)
                    .await?;
            self.results.add(&format!("fair.{mode}.p50"), p50);
            self.results.add(&format!("fair.{mode}.p99"), p99);
            eprintln!(
                "  tenant B {mode}: start latency p50 {p50:.1} ms, p99 {p99:.1} ms ({still} of tenant A's jobs still waiting at the end)"
            );
            drop(roles);
            db.close().await;
        }
        Ok(())
    }

    /// Figure 9: what a batch costs. One worker (64 slots) runs the same number of no-op jobs
    /// twice in one run, submitted in pages of 1,000 while it runs: as plain jobs, from the first
    /// submission to the last job's end; then as one batch with a callback, from the first
    /// submission to the callback's end.
    async fn workflows(&mut self, nats: &Nats) -> anyhow::Result<()> {
        let n: u64 = if self.cli.quick { 20_000 } else { 100_000 };
        let job = serde_json::json!({"kind": "noop"});
        for mode in ["plain", "batch"] {
            let setup = self.setup(nats, "flow").await?;
            let mut roles = Roles::start_front(&setup).await?;
            roles.start_worker(&setup, 64).await?;
            let db = sqlx::PgPool::connect(&setup.database_url).await?;
            let began = std::time::Instant::now();
            if mode == "plain" {
                let queued = load::submit_jobs(&roles.url, &Self::token(), &job, n).await?;
                load::drain(&db, queued, Duration::from_secs(900)).await?;
            } else {
                let id = load::submit_as_batch(&roles.url, &Self::token(), &job, n).await?;
                load::until_succeeded(&db, &id, Duration::from_secs(900)).await?;
            }
            let rate = n as f64 / began.elapsed().as_secs_f64();
            self.results.add(&format!("flow.{mode}"), rate);
            eprintln!("  {mode}: {n} no-op jobs, submitted to done, at {rate:.0}/s");
            drop(roles);
            db.close().await;
        }
        Ok(())
    }

    async fn memory(&mut self, nats: &Nats) -> anyhow::Result<()> {
        let setup = self.setup(nats, "memory").await?;
        let roles = Roles::start(&setup).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (name, rss) in ["api", "worker", "projector", "notifier"]
            .iter()
            .zip(roles.rss())
        {
            self.results.add(&format!("rss.idle.{name}"), rss as f64);
        }
        let added = load::idle_subscribers(&roles.url, &Self::token(), 1000, &roles.api).await?;
        self.results.add("rss.sse1000", added as f64);
        drop(roles);
        let setup = self.setup(nats, "dev").await?;
        let (dev, _) = setup.spawn("dev", &[]).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        self.results.add("rss.dev", dev.rss() as f64);
        Ok(())
    }

    async fn peer(&mut self) -> anyhow::Result<()> {
        let Some(dir) = self.cli.peer_dir.clone() else {
            return Ok(());
        };
        for run in 0..self.plan.runs {
            let db = procs::fresh_database(
                &self.cli.database_url,
                &format!("graphile_worker_bench_{run}"),
            )
            .await?;
            let out = tokio::process::Command::new("node")
                .arg("run.cjs")
                .current_dir(&dir)
                .env("DATABASE_URL", &db)
                .env("JOBS", self.plan.peer_jobs.to_string())
                .env("PROCESSES", "2")
                .output()
                .await
                .context("running node (graphile-worker's benchmark)")?;
            anyhow::ensure!(
                out.status.success(),
                "graphile-worker run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let result: serde_json::Value =
                serde_json::from_slice(&out.stdout).with_context(|| {
                    format!(
                        "graphile-worker printed: {}",
                        String::from_utf8_lossy(&out.stdout)
                    )
                })?;
            let rate = result["jobs_per_sec"].as_f64().unwrap_or(0.0);
            self.results.add("peer.rate", rate);
            self.results.add(
                "peer.enqueue",
                result["enqueue_per_sec"].as_f64().unwrap_or(0.0),
            );
            if run == 0 {
                self.notes.push(format!(
                    "peer: graphile-worker {} ({} jobs, 2 worker processes × 24 concurrent jobs, local queue 500, batched completion: its own benchmark settings)",
                    result["version"].as_str().unwrap_or("?"),
                    result["jobs"]
                ));
            }
            eprintln!("  run {}: graphile-worker {rate:.0} jobs/s", run + 1);
        }
        Ok(())
    }

    fn table(&self) -> String {
        let r = &self.results;
        let mut t = Table::default();
        let ms = |key: &str| r.get(key).show(2, " ms");
        let rate = |key: &str| r.get(key).show(0, "/s");
        let mib = |key: &str| {
            let s = r.get(key);
            report::Samples(s.0.iter().map(|b| b / 1_048_576.0).collect()).show(1, " MiB")
        };
        for key in ["default", "always"] {
            if r.get(&format!("e2e.rate.{key}")).0.is_empty()
                && r.get(&format!("raw.publish.{key}")).0.is_empty()
            {
                continue;
            }
            let sync = if key == "default" {
                ""
            } else {
                ", sync always"
            };
            let raw_pub = r.median(&format!("raw.publish.{key}"));
            t.row(
                &format!("1. submit, one job per request, 64 clients{sync}"),
                format!(
                    "{} jobs (p50 {}, p99 {})",
                    rate(&format!("submit.rate.{key}")),
                    ms(&format!("submit.p50.{key}")),
                    ms(&format!("submit.p99.{key}"))
                ),
                format!(
                    "{} raw publishes, ack each (2 per job)",
                    rate(&format!("raw.publish.{key}"))
                ),
                pct(2.0 * r.median(&format!("submit.rate.{key}")), raw_pub),
                "",
            );
            t.row(
                &format!("1. submit, batches of 1,000, 4 clients{sync}"),
                format!("{} jobs", rate(&format!("batch.rate.{key}"))),
                format!(
                    "{} raw publishes, ack each",
                    rate(&format!("raw.publish.{key}"))
                ),
                pct(r.median(&format!("batch.rate.{key}")), raw_pub),
                "≥ 50%",
            );
            t.row(
                &format!("2. end to end, batches, saturated, sustained{sync}"),
                format!("{} jobs", rate(&format!("e2e.rate.{key}"))),
                format!("{} graphile-worker (drain)", rate("peer.rate")),
                pct(r.median(&format!("e2e.rate.{key}")), r.median("peer.rate")),
                "≥ 100%",
            );
            t.row(
                &format!("2. end to end, one job per request, saturated{sync}"),
                format!("{} jobs", rate(&format!("e2e.single.{key}"))),
                String::new(),
                String::new(),
                "",
            );
            t.row(
                &format!("2. drain of queued jobs{sync}"),
                format!("{} jobs", rate(&format!("drain.rate.{key}"))),
                format!("{} graphile-worker (drain)", rate("peer.rate")),
                pct(
                    r.median(&format!("drain.rate.{key}")),
                    r.median("peer.rate"),
                ),
                "≥ 100%",
            );
            t.row(
                &format!("1. submit latency at half saturation{sync}"),
                format!(
                    "p50 {}, p99 {} at {}",
                    ms(&format!("paced.submit.p50.{key}")),
                    ms(&format!("paced.submit.p99.{key}")),
                    rate(&format!("paced.rate.{key}"))
                ),
                String::new(),
                String::new(),
                "p99 < 5 ms",
            );
            t.row(
                &format!("2. 202 → succeeded visible, half saturation{sync}"),
                format!(
                    "p50 {}, p99 {}",
                    ms(&format!("paced.visible.p50.{key}")),
                    ms(&format!("paced.visible.p99.{key}"))
                ),
                String::new(),
                String::new(),
                "p50 < 5 ms, p99 < 25 ms",
            );
            t.row(
                &format!("3. job.succeeded published → SSE client{sync}"),
                format!(
                    "p50 {}, p99 {}",
                    ms(&format!("notify.p50.{key}")),
                    ms(&format!("notify.p99.{key}"))
                ),
                String::new(),
                String::new(),
                "",
            );
        }
        if !r.get("replay.rate").0.is_empty() {
            t.row(
                &format!("4. replay: rebuild of {} events", self.plan.replay_events),
                format!("{} events", rate("replay.rate")),
                format!("{} raw ordered-consumer read", rate("raw.read")),
                pct(r.median("replay.rate"), r.median("raw.read")),
                "≥ 50%",
            );
            t.row(
                "   Postgres: batched upsert, 1,000 rows per statement",
                String::new(),
                format!("{} rows", rate("raw.upsert")),
                String::new(),
                "",
            );
        }
        if !r.get("rss.dev").0.is_empty() {
            t.row(
                "5. memory: `conveyor dev` idle",
                mib("rss.dev"),
                String::new(),
                String::new(),
                "< 40 MiB",
            );
            t.row(
                "5. memory: 1,000 idle SSE subscribers (API)",
                mib("rss.sse1000"),
                String::new(),
                String::new(),
                "< 30 MB",
            );
        }
        for role in ["api", "worker", "projector", "notifier"] {
            if !r.get(&format!("rss.idle.{role}")).0.is_empty() {
                t.row(
                    &format!("5. memory: {role}, idle → saturated"),
                    format!(
                        "{} → {}",
                        mib(&format!("rss.idle.{role}")),
                        mib(&format!("rss.busy.{role}"))
                    ),
                    String::new(),
                    String::new(),
                    "",
                );
            }
        }
        for concurrency in SLOTS {
            let sleep = format!("slots.sleep.{concurrency}");
            if r.get(&sleep).0.is_empty() {
                continue;
            }
            let allowed = 50.0 * concurrency as f64;
            t.row(
                &format!("6. worker with {concurrency} slots, 20 ms jobs, drain"),
                format!("{} jobs", rate(&sleep)),
                format!("{allowed:.0}/s that {concurrency} slots allow"),
                pct(r.median(&sleep), allowed),
                "≈ 100%",
            );
            let noop = format!("slots.noop.{concurrency}");
            t.row(
                &format!("6. worker with {concurrency} slots, no-op jobs, drain"),
                format!("{} jobs", rate(&noop)),
                format!("{} with 64 slots", rate("slots.noop.64")),
                pct(r.median(&noop), r.median("slots.noop.64")),
                "",
            );
        }
        if !r.get("workers.rust").0.is_empty() {
            t.row(
                "7. one worker process, no-op jobs end to end: Rust (embedded, 64 slots)",
                format!("{} jobs", rate("workers.rust")),
                String::new(),
                String::new(),
                "",
            );
            for (language, name) in [("python", "Python SDK"), ("typescript", "TypeScript SDK")] {
                let key = format!("workers.{language}");
                if r.get(&key).0.is_empty() {
                    continue;
                }
                t.row(
                    &format!(
                        "7. one worker process, no-op jobs end to end: {name} (HTTP, 64 slots)"
                    ),
                    format!("{} jobs", rate(&key)),
                    format!("{} Rust", rate("workers.rust")),
                    pct(r.median(&key), r.median("workers.rust")),
                    "≥ 50%",
                );
            }
        }
        if !r.get("sched.plain").0.is_empty() {
            t.row(
                "8. drain, 10 tenants, priorities, 200 concurrency keys (limit 4)",
                format!("{} jobs", rate("sched.keys")),
                format!("{} one tenant, no options", rate("sched.plain")),
                pct(r.median("sched.keys"), r.median("sched.plain")),
                "≥ 80%",
            );
        }
        if !r.get("fair.alone.p50").0.is_empty() {
            t.row(
                &format!(
                    "8. tenant B's start latency, behind tenant A's backlog of {}",
                    if self.cli.quick { "20,000" } else { "50,000" }
                ),
                format!(
                    "p50 {}, p99 {}",
                    ms("fair.behind.p50"),
                    ms("fair.behind.p99")
                ),
                format!(
                    "p50 {}, p99 {} with no backlog",
                    ms("fair.alone.p50"),
                    ms("fair.alone.p99")
                ),
                String::new(),
                "",
            );
        }
        if !r.get("flow.plain").0.is_empty() {
            t.row(
                &format!(
                    "9. {} no-op jobs as one batch with a callback, submitted to the callback's end",
                    if self.cli.quick { "20,000" } else { "100,000" }
                ),
                format!("{} jobs", rate("flow.batch")),
                format!("{} as plain jobs, to the last end", rate("flow.plain")),
                pct(r.median("flow.batch"), r.median("flow.plain")),
                "",
            );
        }
        if !r.get("peer.enqueue").0.is_empty() {
            t.row(
                "   graphile-worker: bulk add_jobs",
                String::new(),
                format!("{} jobs", rate("peer.enqueue")),
                String::new(),
                "",
            );
        }
        t.render()
    }
}

fn sync_key(sync: Sync) -> &'static str {
    match sync {
        Sync::Default => "default",
        Sync::Always => "always",
    }
}

fn rate_of(r: &Results, key: &str) -> f64 {
    r.get(key).0.last().copied().unwrap_or(0.0)
}

async fn versions(cli: &Cli, nats: &str) -> String {
    let postgres_db = format!(
        "{}/postgres",
        cli.database_url
            .rsplit_once('/')
            .map_or("", |(base, _)| base)
    );
    let pg: String = match sqlx::PgPool::connect(&postgres_db).await {
        Ok(db) => sqlx::query_scalar("SHOW server_version")
            .fetch_one(&db)
            .await
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    format!(
        "conveyor {rev} (release), nats-server {nats}, PostgreSQL {pg} (fsync on, synchronous_commit on), {cores} cores, {:.0} GiB; everything on one host, each role a separate process",
        mem as f64 / 1_048_576.0
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(cli.work.join("logs"))?;
    let plan = Plan::of(cli.quick);
    let modes: Vec<Sync> = match cli.sync.as_deref() {
        Some("default") => vec![Sync::Default],
        Some("always") => vec![Sync::Always],
        Some(other) => anyhow::bail!("--sync {other}: use default or always"),
        None => vec![Sync::Default, Sync::Always],
    };
    let mut suite = Suite {
        cli,
        plan,
        results: Results::default(),
        notes: Vec::new(),
        serial: 0,
    };
    let started = std::time::Instant::now();
    let mut version = String::new();
    for sync in modes {
        eprintln!("== NATS with {}", sync.label());
        let nats = Nats::start(&suite.cli.nats_server, &suite.cli.work, sync).await?;
        version = nats.version.clone();
        if suite.wants("raw") {
            suite.raw(&nats, sync).await?;
        }
        if suite.wants("load") {
            suite.load(&nats, sync).await?;
        }
        if sync == Sync::Default {
            if suite.wants("replay") {
                suite.replay(&nats).await?;
            }
            if suite.wants("memory") {
                suite.memory(&nats).await?;
            }
            if suite.wants("slots") {
                suite.slots(&nats).await?;
            }
            if suite.wants("workers") {
                suite.workers(&nats).await?;
            }
            if suite.wants("scheduling") {
                suite.scheduling(&nats).await?;
            }
            if suite.wants("workflows") {
                suite.workflows(&nats).await?;
            }
        }
    }
    if suite.wants("peer") {
        eprintln!("== peer");
        suite.peer().await?;
    }
    println!("\n{}\n", versions(&suite.cli, &version).await);
    println!("{}", suite.table());
    for note in &suite.notes {
        println!("{note}");
    }
    procs::drop_databases().await;
    // The NATS servers are gone (killed with their handles); so can their stores be.
    for dir in std::fs::read_dir(&suite.cli.work)?.flatten() {
        if dir.file_name().to_string_lossy().starts_with("nats-") {
            let _ = std::fs::remove_dir_all(dir.path());
        }
    }
    println!(
        "{} run(s) of each figure, one of those with `sync_interval: always` (median, with the range when several); took {:.0} s.",
        suite.plan.runs,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

//! conveyor on a three-node JetStream cluster (R3 streams, buckets and consumers), with several
//! processes per role, under steady load while parts of it die: the node leading the EVENTS
//! stream, then an API process, a worker and the active projector. Run by `scripts/cluster-test`.
//!
//! The invariants checked afterwards: every accepted job is terminal exactly once in the read
//! models (one terminal row in `job_events`), `job_stats` equals a recount from `jobs`, the read
//! models equal a rebuild from the log, and a live SSE client that reconnected across API
//! processes with `Last-Event-ID` saw every event once, in order, without a gap.
//! `throughput_of_the_cluster_against_a_single_node` measures the same load on both setups.

mod load;
mod nodes;
mod ordered;

use std::time::{Duration, Instant};

use load::{Load, Sse};
use nodes::NatsCluster;
use testkit::{Api, Env, Proc};

/// This build's `conveyor` binary and scratch folder, for the harness.
pub(crate) const BUILD: testkit::Build = testkit::build!();

/// A conveyor deployment on the cluster: its processes, by role.
struct Deployment {
    env: Env,
    apis: Vec<(Proc, Api)>,
    workers: Vec<Proc>,
    projectors: Vec<(Proc, String)>,
    _notifier: Proc,
}

impl Deployment {
    /// `apis` API processes, `workers` workers, `projectors` projectors and a notifier, all
    /// given every node's URL and `CONVEYOR_REPLICAS=replicas`.
    async fn start(
        urls: &str,
        replicas: usize,
        apis: usize,
        workers: usize,
        projectors: usize,
    ) -> Self {
        // The harness's own connection needs one server; the roles get the whole list.
        let first = urls.split(',').next().expect("a URL");
        let mut env = Env::on_nats(BUILD, first).await;
        env.set("CONVEYOR_NATS_URL", urls)
            .set("CONVEYOR_REPLICAS", &replicas.to_string())
            .set("CONVEYOR_KINDS", "noop,sleep");
        let mut projector_procs = Vec::new();
        for _ in 0..projectors {
            projector_procs.push(env.spawn_ops("projector").await);
        }
        let notifier = env.spawn("notifier").await;
        let mut worker_procs = Vec::new();
        for _ in 0..workers {
            worker_procs.push(env.spawn("worker").await);
        }
        let mut api_procs = Vec::new();
        for _ in 0..apis {
            api_procs.push(env.spawn_http("api").await);
        }
        Self {
            env,
            apis: api_procs,
            workers: worker_procs,
            projectors: projector_procs,
            _notifier: notifier,
        }
    }

    fn api_bases(&self) -> Vec<String> {
        self.apis.iter().map(|(_, a)| a.base.clone()).collect()
    }

    fn stream(&self, which: &str) -> String {
        format!("{}_{which}", self.env.ns.to_uppercase())
    }

    /// The index of the projector holding the leadership lock, per its metrics.
    async fn active_projector(&self) -> Option<usize> {
        for (i, (_, metrics)) in self.projectors.iter().enumerate() {
            let Ok(res) = reqwest::get(format!("{metrics}/metrics")).await else {
                continue;
            };
            let text = res.text().await.unwrap_or_default();
            if text
                .lines()
                .any(|l| l.starts_with("conveyor_projector_leader") && l.ends_with(" 1"))
            {
                return Some(i);
            }
        }
        None
    }

    /// The live version's checkpoint.
    async fn checkpoint(&self) -> i64 {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT min(last_seq) FROM projection_checkpoints
             WHERE version = (SELECT version FROM read_model_versions WHERE state = 'live')",
        )
        .fetch_one(&self.env.db().await)
        .await
        .expect("read checkpoints")
        .unwrap_or(0)
    }
}

/// Every accepted job is terminal in `jobs`, with exactly one terminal row in `job_events`
/// (waiting up to `secs` for the last ones to finish).
async fn all_terminal_once(env: &Env, ids: &[String], secs: u64) {
    let db = env.db().await;
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE id::text = ANY($1)
               AND status IN ('succeeded', 'failed', 'cancelled')",
        )
        .bind(ids)
        .fetch_one(&db)
        .await
        .expect("count terminal jobs");
        if done == ids.len() as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {} accepted jobs terminal after {secs} s",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let statuses: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM jobs WHERE id::text = ANY($1) GROUP BY status",
    )
    .bind(ids)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        statuses,
        [("succeeded".to_owned(), ids.len() as i64)],
        "every accepted job succeeded"
    );
    let not_once: Vec<(String, i64)> = sqlx::query_as(
        "SELECT j.id::text, count(e.seq) FROM jobs j
           LEFT JOIN job_events e ON e.job_id = j.id
                AND e.type IN ('succeeded', 'dead_lettered', 'cancelled')
         WHERE j.id::text = ANY($1) GROUP BY j.id HAVING count(e.seq) <> 1",
    )
    .bind(ids)
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(
        not_once.is_empty(),
        "jobs without exactly one terminal event: {not_once:?}"
    );
}

/// `job_stats` equals a count of `jobs` by tenant, kind and status.
async fn stats_match_jobs(env: &Env) {
    let (stats, recount) = env.job_stats_and_recount().await;
    assert_eq!(stats, recount, "job_stats equals a recount from jobs");
}

/// The read models equal a rebuild of them from the log (`conveyor replay jobs`).
async fn equal_to_rebuild(env: &Env) {
    let before = env.read_models().await;
    let out = env.run(&["replay", "jobs"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is live"),
        "{out:?}"
    );
    assert_eq!(
        env.read_models().await,
        before,
        "the read models equal a rebuild from the log"
    );
}

/// Waits until the projector's checkpoint passes `seq` (up to `secs`); the time it took.
async fn checkpoint_passes(dep: &Deployment, seq: i64, secs: u64) -> Duration {
    let started = Instant::now();
    while dep.checkpoint().await <= seq {
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "the read models stopped moving (checkpoint at or below {seq} for {secs} s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_loss_and_process_loss_under_load_lose_and_duplicate_nothing() {
    let test_started = Instant::now();
    let mut cluster = NatsCluster::start(true).await;
    let mut dep = Deployment::start(&cluster.urls(), 3, 2, 2, 2).await;
    let events_stream = dep.stream("EVENTS");
    for stream in [events_stream.clone(), dep.stream("COMMANDS")] {
        assert_eq!(
            cluster.replicas(&stream).await,
            (3, 3),
            "{stream} is R3, all current"
        );
    }
    let token = dep.env.token("acme", "jobs:write jobs:read events:read");
    let load = Load::start(dep.api_bases(), &token, 4, Duration::from_millis(20));
    let sse = Sse::start(load.bases.clone(), &token);
    load.until_accepted(50, Duration::from_secs(60)).await;

    // 1. The node leading EVENTS dies.
    let leader = cluster.leader(&events_stream, None).await;
    let before = load.accepted_count();
    let killed_at = Instant::now();
    cluster.kill(&leader).await;
    let new_leader = cluster.leader(&events_stream, Some(&leader)).await;
    let elected = killed_at.elapsed();
    load.until_accepted(before + 50, Duration::from_secs(60))
        .await;
    let resumed = killed_at.elapsed();
    eprintln!(
        "EVENTS leader {leader} killed: {new_leader} leads after {elected:?}; \
         50 more jobs accepted {resumed:?} after the kill"
    );
    assert_ne!(leader, new_leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let checkpoint = dep.checkpoint().await;
    checkpoint_passes(&dep, checkpoint, 30).await;
    cluster.restart(&leader).await;
    eprintln!("{leader} is back ({})", cluster.url(&leader));

    // 2. An API process, a worker and the active projector die.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let active = dep
        .active_projector()
        .await
        .expect("one projector is active");
    dep.apis[0].0.kill().await;
    dep.workers[0].kill().await;
    dep.projectors[active].0.kill().await;
    let killed_at = Instant::now();
    // The standby takes the lock, then moves the read models on from the checkpoint.
    let standby = loop {
        if let Some(i) = dep.active_projector().await.filter(|i| *i != active) {
            break i;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "no standby projector took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took_over = killed_at.elapsed();
    let checkpoint = dep.checkpoint().await;
    checkpoint_passes(&dep, checkpoint, 30).await;
    eprintln!(
        "api, worker and active projector killed: projector {standby} took over after {took_over:?} \
         and moved the read models on after {:?}",
        killed_at.elapsed()
    );
    let before = load.accepted_count();
    load.until_accepted(before + 50, Duration::from_secs(60))
        .await;
    // They come back (the API on a new port, which the clients learn like a load balancer would).
    let (proc, api) = dep.env.spawn_http("api").await;
    load.replace_base(0, &api.base);
    dep.apis[0] = (proc, api);
    dep.workers[0] = dep.env.spawn("worker").await;
    dep.projectors[active] = dep.env.spawn_ops("projector").await;
    let before = load.accepted_count();
    load.until_accepted(before + 50, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. Load stops; everything accepted ends; the invariants hold.
    let outcome = load.stop().await;
    eprintln!(
        "load: {} jobs accepted, {} answers other than 202/200 (retried with the same Idempotency-Key)",
        outcome.accepted.len(),
        outcome.refused
    );
    all_terminal_once(&dep.env, &outcome.accepted, 120).await;
    let last = dep.env.settle().await;
    stats_match_jobs(&dep.env).await;
    let seen = sse.until(last as u64, Duration::from_secs(60)).await;
    let expected: Vec<i64> = sqlx::query_scalar("SELECT seq FROM job_events ORDER BY seq")
        .fetch_all(&dep.env.db().await)
        .await
        .unwrap();
    let seen_seqs: Vec<i64> = seen.seqs.iter().map(|s| *s as i64).collect();
    assert_eq!(
        seen_seqs.len(),
        expected.len(),
        "the SSE client saw every event once ({} reconnections)",
        seen.reconnects
    );
    assert_eq!(
        seen_seqs, expected,
        "the SSE client saw every event once, in order"
    );
    assert!(
        seen.reconnects >= 1,
        "the SSE client reconnected at least once (its API process died)"
    );
    eprintln!(
        "SSE: {} events, {} reconnections with Last-Event-ID, no gap, no duplicate",
        seen_seqs.len(),
        seen.reconnects
    );
    equal_to_rebuild(&dep.env).await;
    eprintln!("node-loss test took {:?}", test_started.elapsed());
}

/// Submissions per second and jobs completed per second of one setup.
async fn measure(dep: &Deployment, secs: u64) -> (f64, f64, usize) {
    let token = dep.env.token("acme", "jobs:write jobs:read events:read");
    let load = Load::start(dep.api_bases(), &token, 16, Duration::ZERO);
    load.until_accepted(20, Duration::from_secs(60)).await;
    // Measured from here: the start-up is behind.
    let started = Instant::now();
    let first = load.accepted_count();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let submitted = load.accepted_count() - first;
    let submit_rate = submitted as f64 / started.elapsed().as_secs_f64();
    let outcome = load.stop().await;
    all_terminal_once(&dep.env, &outcome.accepted, 300).await;
    let total = started.elapsed().as_secs_f64();
    (
        submit_rate,
        (outcome.accepted.len() - first) as f64 / total,
        outcome.accepted.len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throughput_of_the_cluster_against_a_single_node() {
    let secs = std::env::var("CLUSTER_THROUGHPUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut lines = Vec::new();
    {
        let single = testkit::services::OwnNats::start(BUILD).await;
        let dep = Deployment::start(&single.url(), 1, 2, 2, 1).await;
        let (submit, done, n) = measure(&dep, secs).await;
        lines.push(format!(
            "single node, R1, default sync: {submit:.0} submissions/s, {done:.0} jobs/s end to end ({n} jobs)"
        ));
    }
    for sync_always in [false, true] {
        let cluster = NatsCluster::start(sync_always).await;
        let dep = Deployment::start(&cluster.urls(), 3, 2, 2, 1).await;
        let (submit, done, n) = measure(&dep, secs).await;
        lines.push(format!(
            "3-node cluster, R3, {} sync: {submit:.0} submissions/s, {done:.0} jobs/s end to end ({n} jobs)",
            if sync_always { "always" } else { "default" }
        ));
    }
    let report = lines.join("\n");
    eprintln!(
        "throughput, 2 API processes, 2 workers, 1 projector, 16 clients, {secs} s:\n{report}"
    );
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster-throughput.txt");
    std::fs::write(&path, format!("{report}\n")).expect("write the figures");
}

//! A worker keeps every slot busy while any of its kinds has work, however few slots it has and
//! however many kinds it serves: kinds with nothing to run never sit on the slots.
//!
//! The worker runs in this process (a Rust handler registry of the built-in kinds plus idle
//! ones, as a user's own binary would) against the real NATS, with the real `conveyor api` in
//! front. Everything is checked from the event log.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use consumers::worker::handler::{Handler, JobContext, JobError};
use consumers::worker::{Worker, WorkerSettings};
use consumers::Registry;
use events::{JobEvent, Namespace};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::BUILD;
use testkit::Env;

/// A kind that never gets a job.
struct Idle;

#[async_trait]
impl Handler for Idle {
    async fn run(&self, _job: JobContext) -> Result<Value, JobError> {
        Ok(Value::Null)
    }
}

/// Kinds this worker serves beside the five built-in ones.
const IDLE_KINDS: usize = 8;
/// Length of each backlog job.
const JOB_MS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_slot_runs_a_backlog_back_to_back() {
    slots_stay_busy(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_slots_run_a_backlog_back_to_back() {
    slots_stay_busy(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_slots_run_a_backlog_back_to_back() {
    slots_stay_busy(4).await;
}

/// What the log says of one job.
#[derive(Debug, Default, Clone)]
struct Run {
    kind: String,
    submitted_seq: u64,
    started_seq: u64,
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    ended_seq: u64,
    ended_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn slots_stay_busy(concurrency: usize) {
    let env = Env::new(BUILD).await;
    let (_api_proc, api) = env.spawn_http("api").await;

    // The backlog, all queued before the worker starts.
    let backlog = 8 * concurrency;
    let jobs: Vec<Value> = (0..backlog)
        .map(|_| json!({"kind": "sleep", "payload": {"ms": JOB_MS, "steps": 1}}))
        .collect();
    api.submit_batch(jobs).await;

    let ns = Namespace::parse(&env.ns).expect("namespace");
    let bus = bus::Bus::connect(&bus::BusSettings::new(&env.nats_url, ns, "test-worker"))
        .await
        .expect("connect");
    let mut registry = Registry::builtin();
    for i in 0..IDLE_KINDS {
        registry = registry.register(&format!("idle.k{i}"), Idle);
    }
    let settings = WorkerSettings {
        concurrency,
        ack_wait: Duration::from_secs(10),
        ..WorkerSettings::default()
    };
    let stop = CancellationToken::new();
    // With the database, so this worker is also the scheduler.
    let db = env.db().await;
    let worker = tokio::spawn(Worker::new(bus, registry, settings, Some(db)).run(stop.clone()));

    // A job of another kind, submitted once the backlog is running.
    wait_for_events(&env, |runs| runs.values().any(|r| r.started_seq > 0)).await;
    let noop = api.submit(json!({"kind": "noop"})).await;
    let noop = noop["id"].as_str().unwrap().to_owned();

    let runs = wait_for_events(&env, |runs| {
        runs.len() == backlog + 1 && runs.values().all(|r| r.ended_seq > 0)
    })
    .await;
    stop.cancel();
    worker.await.expect("worker task").expect("worker ran");

    let sleeps: Vec<&Run> = runs.values().filter(|r| r.kind == "sleep").collect();
    let noop = &runs[&noop];

    // Never more running than the slots, in log order.
    let mut edges: Vec<(u64, i32)> = sleeps
        .iter()
        .chain(std::iter::once(&noop))
        .flat_map(|r| [(r.started_seq, 1), (r.ended_seq, -1)])
        .collect();
    edges.sort();
    let mut running = 0;
    for (_, d) in edges {
        running += d;
        assert!(
            running <= concurrency as i32,
            "more jobs running than slots"
        );
    }

    // Every slot busy while the backlog lasts: the jobs' running time fills the slots between
    // the first start and the last end, but for the gaps between one job's end and the next
    // one's start (a round trip or two each). Measured in the events' own times, as a ratio.
    let first = sleeps.iter().filter_map(|r| r.started_at).min().unwrap();
    let last = sleeps.iter().filter_map(|r| r.ended_at).max().unwrap();
    let busy: f64 = sleeps
        .iter()
        .map(|r| (r.ended_at.unwrap() - r.started_at.unwrap()).as_seconds_f64())
        .sum();
    let span = (last - first).as_seconds_f64();
    let occupancy = busy / (concurrency as f64 * span);
    eprintln!(
        "concurrency {concurrency}: {backlog} jobs of {JOB_MS} ms in {span:.2} s, slots {:.0}% busy",
        occupancy * 100.0
    );
    assert!(
        occupancy >= 0.75,
        "with {concurrency} slots, {} idle kinds and a backlog, the slots were busy only {:.0}% of the time",
        IDLE_KINDS + 4,
        occupancy * 100.0
    );

    // The job of the second kind does not wait for the backlog: at most one pull's worth of
    // backlog jobs (one per slot) starts between its submission and its start.
    let overtaken = sleeps
        .iter()
        .filter(|r| r.started_seq > noop.submitted_seq && r.started_seq < noop.started_seq)
        .count();
    let after = sleeps
        .iter()
        .filter(|r| r.started_seq > noop.started_seq)
        .count();
    assert!(
        after > 0,
        "the backlog was over before the second kind's job started"
    );
    assert!(
        overtaken <= concurrency,
        "{overtaken} backlog jobs started between the {} job's submission and its start (slots: {concurrency})",
        noop.kind
    );
}

/// Reads the namespace's event log until `done` holds of the jobs it shows (60 s at most).
async fn wait_for_events(
    env: &Env,
    done: impl Fn(&HashMap<String, Run>) -> bool,
) -> HashMap<String, Run> {
    let js = env.js().await;
    let stream = js
        .get_stream(format!("{}_EVENTS", env.ns.to_uppercase()))
        .await
        .expect("EVENTS stream");
    let mut runs: HashMap<String, Run> = HashMap::new();
    let mut next = 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        loop {
            let Ok(msg) = stream.direct_get(next).await else {
                break;
            };
            next += 1;
            let ev = bus::decode_event(Some(&msg.headers), &msg.payload).expect("an event");
            let run = runs.entry(ev.job.to_string()).or_default();
            run.kind = ev.kind.to_string();
            match ev.payload {
                JobEvent::Submitted(_) => run.submitted_seq = msg.sequence,
                JobEvent::Started(_) => {
                    run.started_seq = msg.sequence;
                    run.started_at = Some(ev.time);
                }
                e if e.is_terminal() => {
                    run.ended_seq = msg.sequence;
                    run.ended_at = Some(ev.time);
                }
                _ => {}
            }
        }
        if done(&runs) {
            return runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the jobs did not all run within 60 s: {} of {} ended",
            runs.values().filter(|r| r.ended_seq > 0).count(),
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

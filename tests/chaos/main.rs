//! The fault-injection suite: the real `conveyor` processes against a NATS server and a Postgres
//! server of its own (behind a proxy of its own), a steady mixed load, and faults on a seeded
//! random schedule. At the end it lets the system settle and checks that nothing was lost or
//! duplicated.
//!
//! ```text
//! cargo test --test chaos -- [--seconds N] [--seed S]     (or scripts/chaos)
//! ```
//!
//! Besides the roles, workers of the worker protocol (HTTP) lease, heartbeat and complete jobs of
//! a kind of their own through either API, vanishing with a job now and then and reporting twice
//! now and then; and a push kind is delivered by the workers to the test's endpoint.
//!
//! The load mixes priorities and concurrency keys in, so the scheduler (active in one of the two
//! workers, standing by in the other) is killed and frozen with them, and raced by its standby
//! when Postgres ends its lock session.
//!
//! Faults: SIGKILL and restart of each role (several at once too), SIGSTOP of a worker for
//! longer than the ack wait, a NATS server kill and restart (store kept), a Postgres crash and
//! restart (immediate shutdown: asynchronous commits not yet flushed are lost), Postgres
//! connections terminated (`pg_terminate_backend`) and Postgres unreachable for seconds (every
//! connection cut at a proxy), duplicate publishes of commands and events, poison messages
//! (garbage bytes, a CloudEvent of an unknown type, a payload that panics its handler).
//!
//! Invariants, checked once everything is back and quiet: every accepted job is in the read
//! model, terminal, with the outcome its kind implies; no job is left unfinished; each job has
//! exactly one terminal event in the log; no concurrency key ever had more attempts between
//! `job.started` and their end than its limit; the run's schedule (a job every second) submitted
//! exactly one job per tick, none missing; `job_events` holds one row per readable event of the
//! log, none missing, none extra; `job_stats` equals a recount of `jobs`; every ended job with a
//! webhook got a correctly signed delivery of its terminal event, and no delivery came for a job
//! that did not end; a report of an HTTP worker after its attempt's outcome is refused; a
//! rebuild from the log equals the live read models. On a violation it exits non-zero and prints
//! the seed that reproduces the schedule.

mod faults;
mod http_workers;
mod invariants;
mod load;

use std::collections::BTreeMap;
use std::sync::Arc;

use testkit::services::{OwnNats, OwnPostgres, PgProxy};
use testkit::Env;

/// This build's `conveyor` binary and scratch folder, for the harness.
pub(crate) const BUILD: testkit::Build = testkit::build!();

/// Run settings, from the command line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    seconds: u64,
    seed: u64,
}

fn settings() -> Settings {
    let mut s = Settings {
        seconds: 120,
        seed: 20261124,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number, e.g. {name} 600"))
        };
        match arg.as_str() {
            "--seconds" => s.seconds = value("--seconds"),
            "--seed" => s.seed = value("--seed"),
            // What `cargo test` may pass to every test binary.
            _ => {}
        }
    }
    s
}

/// Counters shown in the summary.
#[derive(Default)]
pub(crate) struct Tally(std::sync::Mutex<BTreeMap<String, u64>>);

impl Tally {
    pub(crate) fn add(&self, what: &str) {
        *self.0.lock().unwrap().entry(what.to_owned()).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap().clone()
    }
}

/// The run's schedule, `chaos-tick`: a `noop` job every second.
struct Schedule {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Schedule {
    async fn create(roles: &faults::Roles) -> Self {
        let schedule = Self {
            http: reqwest::Client::new(),
            url: roles.api_urls[0].clone(),
            token: roles.env.token("acme", "jobs:write jobs:read"),
        };
        let res = schedule
            .http
            .post(format!("{}/v1/schedules", schedule.url))
            .bearer_auth(&schedule.token)
            .json(&serde_json::json!({"id": invariants::SCHEDULE, "every": "1s", "kind": "noop"}))
            .send()
            .await
            .expect("create the schedule");
        assert_eq!(
            res.status(),
            201,
            "{}",
            res.text().await.unwrap_or_default()
        );
        schedule
    }

    /// Deletes it, retrying while the API comes back from the faults.
    async fn delete(&self) {
        for _ in 0..60 {
            let res = self
                .http
                .delete(format!(
                    "{}/v1/schedules/{}",
                    self.url,
                    invariants::SCHEDULE
                ))
                .bearer_auth(&self.token)
                .send()
                .await;
            if res.is_ok_and(|r| r.status() == 204) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        panic!("the schedule could not be deleted");
    }
}

#[tokio::main]
async fn main() {
    let settings = settings();
    println!(
        "chaos: {} s of load and faults, seed {} (reproduce: scripts/chaos --seconds {} --seed {})",
        settings.seconds, settings.seed, settings.seconds, settings.seed
    );
    let mut nats = OwnNats::start(BUILD).await;
    let pg = OwnPostgres::start().await;
    let mut env = Env::on_services(BUILD, &nats.url(), &pg.url()).await;
    let proxy = PgProxy::start(&env.db_url).await;
    env.through(&proxy);
    let (receiver, hooks) = load::Receiver::start().await;
    let roles = Arc::new(faults::Roles::start(env).await);
    let tally = Arc::new(Tally::default());

    let push_url = format!("{}/push", hooks.trim_end_matches("/hooks"));
    let http_workers =
        http_workers::HttpWorkers::start(&roles, push_url, tally.clone(), settings.seed).await;
    let load = load::Load::start(roles.clone(), hooks, tally.clone(), settings.seed);
    // A schedule ticking every second through all the faults: one job per tick, none missing.
    let schedule = Schedule::create(&roles).await;
    faults::inject(
        &roles,
        &mut nats,
        &pg,
        &proxy,
        &load.recent,
        &tally,
        settings,
    )
    .await;
    let (accepted, contract) = load.stop().await;
    roles.restore_all().await;
    schedule.delete().await;
    println!(
        "chaos: load and faults over; {} jobs accepted; settling",
        accepted.len()
    );

    // The HTTP workers run on while everything settles (a job one of them vanished with comes
    // back once its lease expires), then stop.
    let mut report = invariants::check(&roles, &accepted, contract, &receiver).await;
    report.push((
        "every report of the HTTP workers answered as documented (after the outcome, refused)",
        http_workers.stop().await,
    ));
    let faults = tally.snapshot();
    println!("\nfaults injected:");
    for (what, n) in faults.iter().filter(|(k, _)| k.starts_with("fault ")) {
        println!("  {:<44} {n}", what.trim_start_matches("fault "));
    }
    println!("load:");
    for (what, n) in faults.iter().filter(|(k, _)| !k.starts_with("fault ")) {
        println!("  {what:<44} {n}");
    }
    println!("invariants:");
    for (name, violations) in &report {
        if violations.is_empty() {
            println!("  ok    {name}");
        } else {
            println!("  FAIL  {name}: {} violation(s)", violations.len());
            for v in violations.iter().take(10) {
                println!("          {v}");
            }
        }
    }
    roles.stop().await;
    if report.iter().any(|(_, v)| !v.is_empty()) {
        println!(
            "\nchaos: invariants violated; reproduce with scripts/chaos --seconds {} --seed {} (process logs: {})",
            settings.seconds,
            settings.seed,
            roles.env.logs_dir().display()
        );
        std::process::exit(1);
    }
    println!("\nchaos: every invariant holds");
}

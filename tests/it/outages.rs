//! Backpressure under outages: with NATS down the API answers 503 at once and recovers by
//! itself; with Postgres down (cut off, or crashed and restarted) submissions go on, reads answer
//! 503, and the projector catches up. No accepted job is lost or duplicated either way.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::BUILD;
use testkit::services::{OwnNats, OwnPostgres, PgProxy};
use testkit::{id_of, Api, Env};

/// What a submission came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Unavailable,
}

/// A steady load of submissions and what it got.
struct Load {
    /// Each answer, when it came.
    log: Arc<Mutex<Vec<(Instant, Outcome)>>>,
    /// The ids of the accepted jobs.
    accepted: Arc<Mutex<Vec<String>>>,
    tasks: tokio::task::JoinSet<()>,
}

/// Submits noop jobs from `n` clients until `stop`, recording each answer: 202 (its id kept)
/// or 503 with a `Retry-After`. Any other answer, or a request that does not end within 10 s,
/// fails the test.
fn submitters(api: &Api, n: usize, stop: tokio_util::sync::CancellationToken) -> Load {
    let log = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for _ in 0..n {
        let (api, stop, log, accepted, http) = (
            api.clone(),
            stop.clone(),
            log.clone(),
            accepted.clone(),
            http.clone(),
        );
        tasks.spawn(async move {
            while !stop.is_cancelled() {
                let res = http
                    .post(format!("{}/v1/jobs", api.base))
                    .bearer_auth(&api.token)
                    .json(&json!({ "kind": "noop" }))
                    .send()
                    .await
                    .expect("every submission is answered within 10 s");
                let status = res.status().as_u16();
                let outcome = match status {
                    202 => {
                        let body: Value = res.json().await.unwrap();
                        accepted.lock().unwrap().push(id_of(&body));
                        Outcome::Accepted
                    }
                    503 => {
                        assert!(
                            res.headers().contains_key("retry-after"),
                            "a 503 says when to retry"
                        );
                        let ctype = res.headers()["content-type"].to_str().unwrap().to_owned();
                        assert_eq!(ctype, "application/problem+json");
                        Outcome::Unavailable
                    }
                    other => panic!("unexpected answer {other}: {}", res.text().await.unwrap()),
                };
                log.lock().unwrap().push((Instant::now(), outcome));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    Load {
        log,
        accepted,
        tasks,
    }
}

/// Waits until the log holds an answer of `outcome` given after `since`.
async fn until_answered(log: &Mutex<Vec<(Instant, Outcome)>>, outcome: Outcome, since: Instant) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log
        .lock()
        .unwrap()
        .iter()
        .any(|(t, o)| *t > since && *o == outcome)
    {
        assert!(Instant::now() < deadline, "no {outcome:?} answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every accepted job ends `succeeded`, with exactly one terminal event in its timeline.
async fn all_succeeded_once(env: &Env, api: &Api, ids: &[String]) {
    for id in ids {
        let job = api.wait_terminal(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    env.settle().await;
    let db = env.db().await;
    let terminal: Vec<(String, i64)> = sqlx::query_as(
        "SELECT job_id::text, count(*) FROM job_events
         WHERE type IN ('succeeded', 'dead_lettered', 'cancelled') GROUP BY job_id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    for id in ids {
        assert!(
            terminal.iter().any(|(j, n)| j == id && *n == 1),
            "job {id} has exactly one terminal event"
        );
    }
}

#[tokio::test]
async fn nats_down_gives_503_then_the_api_recovers_by_itself_and_loses_nothing() {
    let mut nats = OwnNats::start(BUILD).await;
    let env = Env::on_nats(BUILD, &nats.url()).await;
    let (_api, api) = env.spawn_http("api").await;
    let _worker = env.spawn("worker").await;
    let _projector = env.spawn("projector").await;
    // Every role is up once a job has gone all the way through.
    let first = id_of(&api.submit(json!({ "kind": "noop" })).await);
    api.wait_terminal(&first).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let Load {
        log,
        accepted,
        mut tasks,
    } = submitters(&api, 4, stop.clone());
    until_answered(&log, Outcome::Accepted, Instant::now()).await;

    nats.kill().await;
    let down = Instant::now();
    until_answered(&log, Outcome::Unavailable, down).await;
    let (status, body) = api.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    nats.restart().await;
    let up = Instant::now();
    // Same processes, no restart: submissions are accepted again.
    until_answered(&log, Outcome::Accepted, up).await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}

    let log = log.lock().unwrap().clone();
    let refused = log
        .iter()
        .filter(|(t, o)| *t > down && *t < up && *o == Outcome::Unavailable)
        .count();
    assert!(refused > 0);
    let mut ids = accepted.lock().unwrap().clone();
    ids.push(first);
    eprintln!(
        "NATS outage: {} submissions accepted, {refused} answered 503 while it was down",
        ids.len()
    );
    all_succeeded_once(&env, &api, &ids).await;
}

#[tokio::test]
async fn postgres_down_submissions_go_on_reads_503_and_projections_catch_up() {
    let proxy = PgProxy::start(
        &std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/conveyor".into()),
    )
    .await;
    let mut env = Env::new(BUILD).await;
    env.through(&proxy);
    let (_api, api) = env.spawn_http("api").await;
    let _worker = env.spawn("worker").await;
    let _projector = env.spawn("projector").await;

    let first = id_of(&api.submit(json!({ "kind": "noop" })).await);
    api.wait_terminal(&first).await;

    proxy.cut();
    let mut ids = vec![first.clone()];
    for _ in 0..20 {
        ids.push(id_of(&api.submit(json!({ "kind": "noop" })).await));
    }
    let res = api
        .request(reqwest::Method::GET, &format!("/v1/jobs/{first}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503, "reads need Postgres");
    assert!(res.headers().contains_key("retry-after"));
    let (status, _) = api.get("/readyz").await;
    assert_eq!(status, 503);
    // The jobs ran meanwhile: their events are in the log, waiting for the projector.
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.stream_messages("EVENTS").await < 3 * ids.len() as u64 {
        assert!(Instant::now() < deadline, "the jobs did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    proxy.restore().await;
    all_succeeded_once(&env, &api, &ids).await;
    let db = env.db().await;
    let stats: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count FROM job_stats ORDER BY status")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(stats, vec![("succeeded".to_owned(), ids.len() as i64)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_and_restart_under_load_loses_and_duplicates_nothing() {
    // A server of the test's own, so it can crash: an immediate shutdown cuts every session and
    // loses what was committed asynchronously but not yet flushed (the projector commits so).
    let pg = OwnPostgres::start().await;
    let env = Env::on_postgres(BUILD, &pg.url()).await;
    let (_api, api) = env.spawn_http("api").await;
    let _worker = env.spawn("worker").await;
    let _projector = env.spawn("projector").await;
    let first = id_of(&api.submit(json!({ "kind": "noop" })).await);
    api.wait_terminal(&first).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let Load {
        log,
        accepted,
        mut tasks,
    } = submitters(&api, 4, stop.clone());
    while accepted.lock().unwrap().len() < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let checkpoint = async || -> i64 {
        sqlx::query_scalar("SELECT coalesce(min(last_seq), 0) FROM projection_checkpoints")
            .fetch_one(&env.db().await)
            .await
            .unwrap()
    };
    let committed = checkpoint().await;
    pg.crash().await;
    let down = Instant::now();
    // Submissions only need JetStream: they go on while Postgres is gone.
    let before = accepted.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = accepted.lock().unwrap().len() - before;
    pg.start_again().await;
    let up = Instant::now();
    // Read before the projector is back (informative: how many commits the crash took).
    let recovered = checkpoint().await;
    until_answered(&log, Outcome::Accepted, up).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}

    assert!(
        during > 0,
        "no submission was accepted while Postgres was down"
    );
    let mut ids = accepted.lock().unwrap().clone();
    ids.push(first);
    eprintln!(
        "Postgres crash: {} submissions accepted, {during} of them in the {:?} it was down; \
         checkpoint {committed} seen before the crash, {recovered} after recovery",
        ids.len(),
        up - down
    );
    all_succeeded_once(&env, &api, &ids).await;
    let (stats, recount) = env.job_stats_and_recount().await;
    assert_eq!(stats, recount, "job_stats equals a recount from jobs");
    // The read models equal a rebuild of them from the log.
    let live = env.read_models().await;
    let out = env.run(&["replay", "jobs"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        env.read_models().await,
        live,
        "the read models equal a rebuild"
    );
}

#[tokio::test]
async fn roles_started_while_nats_is_down_wait_for_it() {
    let mut nats = OwnNats::start(BUILD).await;
    let env = Env::on_nats(BUILD, &nats.url()).await;
    nats.kill().await;
    let mut worker = env.spawn("worker").await;
    let _projector = env.spawn("projector").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        worker.is_running(),
        "the worker waits for NATS instead of exiting"
    );
    nats.restart().await;
    let (_api, api) = env.spawn_http("api").await;
    let id = id_of(&api.submit(json!({ "kind": "noop" })).await);
    assert_eq!(api.wait_terminal(&id).await["status"], "succeeded");
}

//! Reads across a rebuild's switch: while the read models move to a rebuilt version (the views
//! `jobs`, `job_events`, `job_stats` are pointed at it and the old version is dropped), every
//! read sees the whole old version or the whole new one, never an empty or partial table, nor an
//! error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::BUILD;
use testkit::{Api, Env};

/// Jobs in the read models (one page of `GET /v1/jobs` holds them all).
const JOBS: usize = 200;
/// Tasks reading in a tight loop.
const READERS: usize = 4;

async fn live_version(env: &Env) -> i32 {
    sqlx::query_scalar("SELECT version FROM read_model_versions WHERE state = 'live'")
        .fetch_one(&env.db().await)
        .await
        .unwrap()
}

/// What a read answered, if it was not the whole of it: the list of every job, and the
/// timeline of job `id` (a `noop`: submitted, started, succeeded).
async fn wrong_answer(api: &Api, id: &str) -> Option<String> {
    let (status, body) = api.get("/v1/jobs?limit=500").await;
    let items = body["items"].as_array().map_or(0, Vec::len);
    if status != 200 || items != JOBS {
        let text = body.to_string();
        return Some(format!(
            "list: {status}, {items} items: {}",
            &text[..text.len().min(300)]
        ));
    }
    let (status, body) = api.get(&format!("/v1/jobs/{id}/events")).await;
    let events = body.as_array().map_or(0, Vec::len);
    (status != 200 || events != 3).then(|| format!("timeline: {status}, {events} events: {body}"))
}

#[tokio::test]
async fn reads_during_and_right_after_a_rebuild_switch_see_every_job() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let jobs: Vec<Value> = (0..JOBS)
        .map(|n| json!({ "kind": "noop", "payload": { "n": n } }))
        .collect();
    let accepted = api.submit_batch(jobs).await;
    let id = accepted["items"][0]["job"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("an accepted job: {accepted}"))
        .to_owned();
    api.wait_terminal(&id).await;
    env.settle().await;
    assert_eq!(wrong_answer(&api, &id).await, None, "every job is listed");

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (api, id, stop, reads) = (api.clone(), id.clone(), stop.clone(), reads.clone());
            tokio::spawn(async move {
                let mut wrong = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    wrong.extend(wrong_answer(&api, &id).await);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                wrong
            })
        })
        .collect();

    // Two rebuilds the projector runs (the admin endpoint), two `conveyor replay` runs.
    let admin = api.with_token(&env.token("acme", "operator"));
    for n in 1..=2 {
        let res = admin
            .request(reqwest::Method::POST, "/v1/admin/projections/jobs/rebuild")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while live_version(&env).await != 1 + n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "rebuild {n} did not switch"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Reads right after the switch too, while the old version is dropped.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for n in 3..=4 {
        let out = env.run(&["replay", "jobs"]).await;
        let out = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.contains(&format!("version {} is live", 1 + n)), "{out}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut wrong = Vec::new();
    for r in readers {
        wrong.extend(r.await.unwrap());
    }
    let reads = reads.load(Ordering::Relaxed);
    assert!(
        wrong.is_empty(),
        "{} of {reads} reads across 4 switches were not whole; first ones: {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(reads > 20, "the readers read ({reads} reads)");
}

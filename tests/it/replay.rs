//! Rebuilding the read models from the event log, beside the live ones.

use std::time::Duration;

use serde_json::{json, Value};

use crate::BUILD;
use testkit::{id_of, Api, Env};

async fn live_version(env: &Env) -> i32 {
    sqlx::query_scalar("SELECT version FROM read_model_versions WHERE state = 'live'")
        .fetch_one(&env.db().await)
        .await
        .unwrap()
}

async fn mixed_jobs(api: &Api) -> Vec<String> {
    let mut ids = Vec::new();
    for body in [
        json!({ "kind": "noop" }),
        json!({ "kind": "noop", "payload": { "echo": [1, 2, 3] } }),
        json!({ "kind": "flaky", "payload": { "fail_times": 1 } }),
        json!({ "kind": "fail", "max_attempts": 2 }),
        json!({ "kind": "sleep", "payload": { "ms": 30, "steps": 3 } }),
    ] {
        ids.push(id_of(&api.submit(body).await));
    }
    for id in &ids {
        api.wait_terminal(id).await;
    }
    ids
}

#[tokio::test]
async fn a_rebuild_equals_the_live_read_models_row_for_row() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    mixed_jobs(&api).await;
    let last = env.settle().await;
    let before = env.read_models().await;

    let dry = env.run(&["replay", "jobs", "--dry-run"]).await;
    let dry = String::from_utf8_lossy(&dry.stdout).to_string();
    assert!(dry.contains(&format!("{last} events")), "{dry}");
    assert_eq!(live_version(&env).await, 1, "a dry run changes nothing");

    let out = env.run(&["replay", "jobs"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("version 2 is live"),
        "{out:?}"
    );
    assert_eq!(live_version(&env).await, 2);
    assert_eq!(
        env.read_models().await,
        before,
        "the rebuilt version equals the live one"
    );
    let old: Option<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = 'rm_1'")
            .fetch_optional(&env.db().await)
            .await
            .unwrap();
    assert_eq!(old, None, "the old version was dropped");

    // The new version goes on with live events from its own checkpoint.
    let id = id_of(&api.submit(json!({ "kind": "noop" })).await);
    assert_eq!(api.wait_terminal(&id).await["status"], "succeeded");
    let admin = api.with_token(&env.token("acme", "operator"));
    let (_, projections) = admin.get("/v1/admin/projections").await;
    assert!(
        projections["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["version"] == 2),
        "{projections}"
    );
}

#[tokio::test]
async fn a_rebuild_while_jobs_keep_flowing_loses_and_duplicates_nothing() {
    let mut env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    mixed_jobs(&api).await;
    let submitter = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..150 {
                ids.push(id_of(&api.submit(json!({ "kind": "noop" })).await));
            }
            ids
        })
    };
    // Small batches: the rebuild takes long enough to overlap the submissions.
    env.set("CONVEYOR_REBUILD_BATCH", "5");
    let out = env.run(&["replay", "job_events"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("version 2 is live"),
        "{out:?}"
    );
    let ids = submitter.await.unwrap();
    for id in &ids {
        api.wait_terminal(id).await;
    }
    let last = env.settle().await;
    let db = env.db().await;
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM job_events ORDER BY seq")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "every event once, none missing, across the switch"
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(jobs, 155);
    let stats: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT kind, status, count FROM job_stats ORDER BY 1, 2")
            .fetch_all(&db)
            .await
            .unwrap();
    let recount: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT kind, status, count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1, 2")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(stats, recount, "job_stats equals a recount from jobs");
}

#[tokio::test]
async fn an_interrupted_rebuild_leaves_the_live_version_serving_and_can_be_resumed() {
    let mut env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(id_of(&api.submit(json!({ "kind": "noop" })).await));
    }
    for id in &ids {
        api.wait_terminal(id).await;
    }
    env.settle().await;
    let before = env.read_models().await;
    env.set("CONVEYOR_REBUILD_BATCH", "1");
    let mut replay = env.spawn("replay jobs").await;
    let db = env.db().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let cp: Option<i64> = sqlx::query_scalar(
            "SELECT max(c.last_seq) FROM projection_checkpoints c
             JOIN read_model_versions v USING (version) WHERE v.state = 'building'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        if cp.unwrap_or(0) > 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rebuild did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replay.kill().await;
    // Interrupted: the live version is untouched and serving.
    assert_eq!(live_version(&env).await, 1);
    assert_eq!(api.job(&ids[0]).await["status"], "succeeded");
    // Run again: it resumes (or finds the projector already finishing it).
    env.run(&["replay", "jobs"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while live_version(&env).await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rebuild did not complete"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.settle().await;
    assert_eq!(env.read_models().await, before);
}

#[tokio::test]
async fn the_admin_api_asks_the_projector_for_a_rebuild() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    mixed_jobs(&api).await;
    env.settle().await;
    let before = env.read_models().await;
    let admin = api.with_token(&env.token("acme", "operator"));
    let res = api
        .request(reqwest::Method::POST, "/v1/admin/projections/jobs/rebuild")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = admin
        .request(reqwest::Method::POST, "/v1/admin/projections/nope/rebuild")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = admin
        .request(
            reqwest::Method::POST,
            "/v1/admin/projections/job_stats/rebuild",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["version"], 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while live_version(&env).await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projector did not rebuild"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.settle().await;
    assert_eq!(env.read_models().await, before);
}

//! Crash safety: processes killed with SIGKILL at awkward moments lose and duplicate nothing.

use std::time::Duration;

use serde_json::json;

use crate::BUILD;
use testkit::{id_of, Env};

#[tokio::test]
async fn worker_killed_mid_job_completes_exactly_once_after_restart() {
    let env = Env::new(BUILD).await;
    let (_api, api) = env.spawn_http("api").await;
    let _projector = env.spawn("projector").await;
    let mut worker = env.spawn("worker").await;
    let id = id_of(
        &api.submit(json!({ "kind": "sleep", "payload": { "ms": 3000, "steps": 6 } }))
            .await,
    );
    // Mid-job: started and some progress reported.
    api.wait_for(&id, 30, |j| {
        j["progress"]["current"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    worker.kill().await;
    let _replacement = env.spawn("worker").await;
    let job = api.wait_terminal(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let timeline = api.timeline(&id).await;
    assert_eq!(
        timeline.iter().filter(|t| *t == "succeeded").count(),
        1,
        "{timeline:?}"
    );
    assert_eq!(
        timeline
            .iter()
            .filter(|t| matches!(t.as_str(), "succeeded" | "dead_lettered" | "cancelled"))
            .count(),
        1
    );
    // Let any late redelivery play out, then check again: still exactly one terminal event.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let db = env.db().await;
    let terminal: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_events WHERE job_id = $1::uuid AND type IN ('succeeded', 'dead_lettered', 'cancelled')",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(terminal, 1);
}

#[tokio::test]
async fn projector_killed_mid_batch_loses_and_duplicates_nothing() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_PROJECTOR_BATCH", "20");
    let (_api, api) = env.spawn_http("api").await;
    let _worker = env.spawn("worker").await;
    let mut projector = env.spawn("projector").await;

    const JOBS: usize = 300;
    let submitter = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for chunk in 0..JOBS / 10 {
                let batch = (0..10)
                    .map(|_| api.submit(json!({ "kind": "noop", "payload": { "chunk": chunk } })));
                ids.extend(futures::future::join_all(batch).await.iter().map(id_of));
            }
            ids
        })
    };
    // Kill the projector repeatedly while events pour in, restarting it each time.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        projector.kill().await;
        projector = env.spawn("projector").await;
    }
    let ids = submitter.await.unwrap();
    assert_eq!(ids.len(), JOBS);

    // Settle: every job terminal, and the checkpoint at the end of the stream.
    for id in &ids {
        api.wait_terminal(id).await;
    }
    let db = env.db().await;
    let last = env.settle().await;
    assert_eq!(
        last as usize,
        JOBS * 3,
        "submitted, started and succeeded per job"
    );
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM job_events ORDER BY seq")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "one timeline row per stream event, none missing"
    );
    let succeeded: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(succeeded as usize, JOBS);
    let (stats, recount) = env.job_stats_and_recount().await;
    assert_eq!(stats, recount, "job_stats equals a recount");
    assert_eq!(
        stats,
        vec![(
            "acme".to_owned(),
            "noop".to_owned(),
            "succeeded".to_owned(),
            JOBS as i64
        )],
    );
}

#[tokio::test]
async fn sigterm_lets_the_running_job_finish_and_exits_cleanly() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_SHUTDOWN_GRACE_MS", "10000");
    let (_api, api) = env.spawn_http("api").await;
    let _projector = env.spawn("projector").await;
    let mut worker = env.spawn("worker").await;
    let id = id_of(
        &api.submit(json!({ "kind": "sleep", "payload": { "ms": 1500, "steps": 3 } }))
            .await,
    );
    api.wait_for(&id, 30, |j| j["status"] == "running").await;
    let status = worker.terminate_and_wait().await;
    assert!(
        status.success(),
        "the worker exits 0 on SIGTERM: {status:?}"
    );
    // It finished the job before exiting, with no other worker around.
    let job = api.job(&id).await;
    let job = if job["status"] == "succeeded" {
        job
    } else {
        api.wait_terminal(&id).await
    };
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        api.timeline(&id)
            .await
            .iter()
            .filter(|t| *t == "started")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_submission_whose_run_command_was_lost_is_run_by_the_audit() {
    // What an API crash between storing `job.submitted` and its run command leaves behind.
    let env = Env::new(BUILD).await;
    let (_api, api) = env.spawn_http("api").await;
    let _projector = env.spawn("projector").await;
    let _worker = env.spawn("worker").await;
    let job = events::JobId::new();
    let ev = events::Envelope::new(
        "/conveyor/api",
        job,
        events::Tenant::parse("acme").unwrap(),
        events::JobKind::parse("noop").unwrap(),
        events::JobEvent::Submitted(events::job::Submitted {
            payload: json!({}),
            max_attempts: 3,
            timeout_ms: 10_000,
            run_at: None,
            webhook: None,
            scheduling: Default::default(),
            schedule: None,
            workflow: Default::default(),
        }),
    );
    env.publish_event(&ev).await;
    let done = api.wait_terminal(&job.to_string()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        api.timeline(&job.to_string()).await,
        ["submitted", "started", "succeeded"]
    );
}

#[tokio::test]
async fn a_redrive_whose_run_command_was_lost_is_run_by_the_audit() {
    // What an API crash between storing `job.redriven` and the next attempt's command leaves.
    let env = Env::new(BUILD).await;
    let (_api, api) = env.spawn_http("api").await;
    let _projector = env.spawn("projector").await;
    let _worker = env.spawn("worker").await;
    let id = id_of(
        &api.submit(json!({ "kind": "flaky", "payload": { "fail_times": 2 }, "max_attempts": 2 }))
            .await,
    );
    let job = api.wait_terminal(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    let job_id: events::JobId = id.parse().unwrap();
    let ev = events::Envelope::new(
        "/conveyor/api",
        job_id,
        events::Tenant::parse("acme").unwrap(),
        events::JobKind::parse("flaky").unwrap(),
        events::JobEvent::Redriven(events::job::Redriven {
            generation: 1,
            next_attempt: 3,
            max_attempts: 4,
        }),
    );
    env.publish_event(&ev).await;
    let job = api.wait_for(&id, 60, |j| j["status"] == "succeeded").await;
    assert_eq!(job["attempt"], 3, "{job}");
    let timeline = api.timeline(&id).await;
    assert!(
        timeline.ends_with(&["redriven", "started", "succeeded"].map(String::from)),
        "{timeline:?}"
    );
}

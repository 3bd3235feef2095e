//! Graceful shutdown: on SIGTERM every role stops taking work, finishes or hands back what it
//! holds, and exits 0; live streams end with a resume hint.

use std::time::Duration;

use conveyor::client::Client;
use serde_json::{json, Value};

use crate::BUILD;
use testkit::{id_of, Env};

#[tokio::test]
async fn sigterm_stops_every_role_cleanly_and_live_streams_get_a_resume_hint() {
    let env = Env::new(BUILD).await;
    let (mut api_proc, api) = env.spawn_http("api").await;
    let mut worker = env.spawn("worker").await;
    let mut projector = env.spawn("projector").await;
    let mut notifier = env.spawn("notifier").await;

    // A client follows the tenant's events and sees three jobs end.
    let follower = {
        let client = Client::new(&api.base, &api.token);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            client
                .follow("/v1/events?type=job.succeeded", None, None, |ev| {
                    seen.push(ev);
                    true
                })
                .await
                .expect("follow");
            seen
        })
    };
    // The subscription is open once the API counts it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = reqwest::get(format!("{}/metrics", api.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains(r#"conveyor_live_subscribers{transport="sse"} 1"#) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(id_of(&api.submit(json!({ "kind": "noop" })).await));
    }
    for id in &ids {
        api.wait_terminal(id).await;
    }
    env.settle().await;

    assert!(api_proc.terminate_and_wait().await.success(), "api exits 0");
    let seen = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("the stream ended with the server")
        .unwrap();
    let (hint, events) = seen.split_last().expect("events, then the hint");
    assert_eq!(events.len(), 3, "{seen:?}");
    assert_eq!(hint.event, "resume", "{seen:?}");
    let hint: Value = serde_json::from_str(&hint.data).unwrap();
    assert!(
        hint["reason"].as_str().unwrap().contains("shutting down"),
        "{hint}"
    );
    // Resuming from the hint misses nothing: it is the last event this client was sent (or a
    // later one that did not match its filter).
    let resume_after: u64 = hint["last_event_id"].as_str().unwrap().parse().unwrap();
    let last_sent: u64 = events
        .last()
        .unwrap()
        .id
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(resume_after >= last_sent, "{resume_after} < {last_sent}");

    for (name, proc) in [
        ("worker", &mut worker),
        ("projector", &mut projector),
        ("notifier", &mut notifier),
    ] {
        assert!(proc.terminate_and_wait().await.success(), "{name} exits 0");
    }
}

#[tokio::test]
async fn a_job_outlasting_the_grace_period_is_handed_back_at_once() {
    let mut env = Env::new(BUILD).await;
    // A long ack wait: a job not handed back would wait two minutes for redelivery.
    env.set("CONVEYOR_ACK_WAIT_MS", "120000")
        .set("CONVEYOR_SHUTDOWN_GRACE_MS", "300");
    let (_api, api) = env.spawn_http("api").await;
    let _projector = env.spawn("projector").await;
    let mut first = env.spawn("worker").await;
    let id = id_of(
        &api.submit(json!({ "kind": "sleep", "payload": { "ms": 3000, "steps": 3 } }))
            .await,
    );
    api.wait_for(&id, 30, |j| j["status"] == "running").await;
    assert!(first.terminate_and_wait().await.success(), "exits 0");
    let _second = env.spawn("worker").await;
    let job = api.wait_for(&id, 60, |j| j["status"] == "succeeded").await;
    assert_eq!(
        job["attempt"], 1,
        "handing back does not use up an attempt: {job}"
    );
}

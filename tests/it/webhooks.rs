//! Webhooks: signed deliveries to a receiver on 127.0.0.1, retries, isolation from slow
//! receivers, failed deliveries and re-drive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::BUILD;
use testkit::{id_of, Api, Env};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: Bytes,
    answered: u16,
}

#[derive(Default)]
struct Receiver {
    deliveries: Mutex<Vec<Delivery>>,
    flaky_calls: Mutex<HashMap<String, usize>>,
    hanging: AtomicUsize,
    healed: AtomicBool,
}

async fn hook(
    State(r): State<Arc<Receiver>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let status = match path.as_str() {
        "ok" => StatusCode::OK,
        "flaky" => {
            let mut calls = r.flaky_calls.lock().unwrap();
            let n = calls.entry(h("webhook-id")).or_default();
            *n += 1;
            if *n <= 2 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::NO_CONTENT
            }
        }
        "hang" => {
            r.hanging.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK
        }
        "until-healed" if r.healed.load(Ordering::SeqCst) => StatusCode::OK,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    r.deliveries.lock().unwrap().push(Delivery {
        path,
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        body,
        answered: status.as_u16(),
    });
    status
}

async fn start_receiver() -> (Arc<Receiver>, String) {
    let receiver = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/hooks/{path}", post(hook))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, base)
}

async fn secret(api: &Api) -> String {
    let (status, body) = api.get("/v1/webhooks/secret").await;
    assert_eq!(status, 200, "{body}");
    body["secret"].as_str().unwrap().to_owned()
}

fn successes(r: &Receiver) -> Vec<Delivery> {
    r.deliveries
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.answered < 300)
        .cloned()
        .collect()
}

async fn wait_until(what: &str, secs: u64, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_terminal_job_gets_exactly_one_correctly_signed_delivery() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let (receiver, base) = start_receiver().await;
    let mut jobs = Vec::new();
    for (body, path) in [
        (json!({ "kind": "noop" }), "ok"),
        (json!({ "kind": "noop" }), "ok"),
        (json!({ "kind": "fail", "max_attempts": 1 }), "ok"),
        (json!({ "kind": "noop" }), "flaky"),
    ] {
        let mut body = body;
        body["webhook"] = json!({ "url": format!("{base}/{path}") });
        jobs.push(id_of(&api.submit(body).await));
    }
    let no_hook = id_of(&api.submit(json!({ "kind": "noop" })).await);
    for id in jobs.iter().chain([&no_hook]) {
        api.wait_terminal(id).await;
    }
    wait_until("a delivery per job", 30, || {
        successes(&receiver).len() >= jobs.len()
    })
    .await;
    // Let any duplicate show up before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let secret = secret(&api).await;
    let ok = successes(&receiver);
    assert_eq!(
        ok.len(),
        jobs.len(),
        "exactly one successful delivery per job: {ok:?}"
    );
    let now = chrono::Utc::now().timestamp();
    for d in &ok {
        events::webhooks::verify(&secret, &d.id, &d.timestamp, &d.signature, &d.body, now)
            .unwrap_or_else(|e| panic!("{e}: {d:?}"));
        let ce: Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(ce["id"], d.id.as_str(), "webhook-id is the CloudEvent id");
        assert!(jobs.contains(&ce["subject"].as_str().unwrap().to_owned()));
        let ty = ce["type"].as_str().unwrap();
        assert!(
            ty.ends_with("succeeded") || ty.ends_with("dead_lettered"),
            "{ty}"
        );
    }
    // Another tenant's secret does not verify these deliveries.
    let other = secret_of_other_tenant(&env, &api).await;
    assert!(events::webhooks::verify(
        &other,
        &ok[0].id,
        &ok[0].timestamp,
        &ok[0].signature,
        &ok[0].body,
        now
    )
    .is_err());
    // The flaky receiver answered 500 twice, then took the third try, with the same webhook-id.
    let flaky: Vec<_> = receiver
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.path == "flaky")
        .cloned()
        .collect();
    assert_eq!(
        flaky.iter().map(|d| d.answered).collect::<Vec<_>>(),
        [500, 500, 204]
    );
    assert!(flaky.iter().all(|d| d.id == flaky[0].id));
}

async fn secret_of_other_tenant(env: &Env, api: &Api) -> String {
    secret(&api.with_token(&env.token("globex", "jobs:write"))).await
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_slow_other_deliveries() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_WEBHOOK_TIMEOUT_MS", "60000")
        .set("CONVEYOR_WEBHOOK_CONCURRENCY", "4")
        .set("CONVEYOR_WEBHOOK_PER_HOST", "2");
    let (_dev, api) = env.spawn_http("dev").await;
    let (dead, dead_base) = start_receiver().await;
    let (alive, alive_base) = start_receiver().await;
    // More hanging deliveries than the notifier has slots in all.
    for _ in 0..6 {
        api.submit(json!({ "kind": "noop", "webhook": { "url": format!("{dead_base}/hang") } }))
            .await;
    }
    wait_until("the hanging deliveries to start", 30, || {
        dead.hanging.load(Ordering::SeqCst) == 2
    })
    .await;
    for _ in 0..5 {
        api.submit(json!({ "kind": "noop", "webhook": { "url": format!("{alive_base}/ok") } }))
            .await;
    }
    wait_until("the other endpoint's deliveries", 30, || {
        successes(&alive).len() == 5
    })
    .await;
    // They all arrived while the dead endpoint held its (capped) share of slots.
    assert_eq!(
        dead.hanging.load(Ordering::SeqCst),
        2,
        "at most 2 in flight per host"
    );
    assert!(
        dead.deliveries.lock().unwrap().is_empty(),
        "no hanging request has been answered"
    );
}

#[tokio::test]
async fn failed_deliveries_are_listed_and_can_be_redriven() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_WEBHOOK_MAX_ATTEMPTS", "2");
    let (_dev, api) = env.spawn_http("dev").await;
    let admin = api.with_token(&env.token("acme", "admin"));
    let (receiver, base) = start_receiver().await;
    let id = id_of(
        &api.submit(
            json!({ "kind": "noop", "webhook": { "url": format!("{base}/until-healed") } }),
        )
        .await,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let (status, body) = admin.get("/v1/admin/webhooks/failed").await;
        assert_eq!(status, 200, "{body}");
        if let Some(item) = body["items"].as_array().and_then(|a| a.first()).cloned() {
            break item;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failed delivery was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failed["job"], id.as_str());
    assert_eq!(failed["attempts"], 2);
    assert_eq!(receiver.deliveries.lock().unwrap().len(), 2);
    // Not for other tenants or non-admins.
    let (status, _) = api.get("/v1/admin/webhooks/failed").await;
    assert_eq!(status, 403);
    let (_, theirs) = admin
        .with_token(&env.token("globex", "admin"))
        .get("/v1/admin/webhooks/failed")
        .await;
    assert_eq!(theirs["items"], json!([]));

    receiver.healed.store(true, Ordering::SeqCst);
    let res = admin
        .request(
            reqwest::Method::POST,
            &format!("/v1/admin/webhooks/failed/{id}/redrive"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    wait_until("the re-driven delivery", 30, || {
        successes(&receiver).len() == 1
    })
    .await;
    let (_, after) = admin.get("/v1/admin/webhooks/failed").await;
    assert_eq!(after["items"], json!([]));
}

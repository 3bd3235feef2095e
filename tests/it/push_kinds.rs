//! Push kinds: conveyor's workers deliver a kind's jobs as signed POSTs to an endpoint (here a
//! server of the test's on 127.0.0.1), with the job's retries, dead letters and timeouts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::BUILD;
use testkit::{id_of, Api, Env};

/// The endpoint: what it was sent, and how many times per job.
#[derive(Default)]
struct Endpoint {
    calls: Mutex<HashMap<String, u32>>,
    bodies: Mutex<Vec<(HeaderMap, Bytes)>>,
}

/// `/ok` echoes; `/flaky` answers 500 to a job's first call; `/bad` 400; `/slow` takes a minute;
/// `/text` answers 200 with a body that is not JSON.
async fn endpoint(
    State(e): State<Arc<Endpoint>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let job: Value = serde_json::from_slice(&body).unwrap();
    let calls = {
        let mut calls = e.calls.lock().unwrap();
        let n = calls
            .entry(job["id"].as_str().unwrap().to_owned())
            .or_default();
        *n += 1;
        *n
    };
    e.bodies.lock().unwrap().push((headers, body));
    match path.as_str() {
        "ok" => {
            axum::Json(json!({"echo": job["payload"], "attempt": job["attempt"]})).into_response()
        }
        "flaky" if calls == 1 => (StatusCode::INTERNAL_SERVER_ERROR, "not yet").into_response(),
        "flaky" => axum::Json(json!({"calls": calls})).into_response(),
        "bad" => (StatusCode::BAD_REQUEST, "no such account").into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK.into_response()
        }
        _ => (StatusCode::OK, "plain text").into_response(),
    }
}

async fn start_endpoint() -> (Arc<Endpoint>, String) {
    let e = Arc::new(Endpoint::default());
    let app = Router::new()
        .route("/push/{path}", post(endpoint))
        .with_state(e.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (e, base)
}

/// Registers `kind` as a push kind to `url`; the answer.
async fn register(op: &Api, kind: &str, body: Value) -> (u16, Value) {
    let res = op
        .request(reqwest::Method::PUT, &format!("/v1/admin/kinds/{kind}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn push_kinds_are_delivered_signed_retried_and_dead_lettered() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let (endpoint, base) = start_endpoint().await;
    let op = api.with_token(&env.token("ops", "operator"));
    let client = api.with_token(&env.token("acme", "jobs:write jobs:read"));

    let mut secret = String::new();
    for (kind, path, timeout_ms) in [
        ("push.ok", "ok", 5_000),
        ("push.flaky", "flaky", 5_000),
        ("push.bad", "bad", 5_000),
        ("push.slow", "slow", 300),
        ("push.text", "text", 5_000),
    ] {
        let (status, body) = register(
            &op,
            kind,
            json!({"url": format!("{base}/{path}"), "timeout_ms": timeout_ms,
                   "schema": {"type": "object"}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["push"]["timeout_ms"], timeout_ms);
        assert!(
            body["secret"].as_str().unwrap().starts_with("whsec_"),
            "{body}"
        );
        if kind == "push.ok" {
            secret = body["secret"].as_str().unwrap().to_owned();
        }
    }
    // Registering again keeps the secret; the kinds are listed, without it.
    let (_, again) = register(&op, "push.ok", json!({"url": format!("{base}/ok")})).await;
    assert_eq!(again["secret"], secret.as_str());
    let (_, kinds) = client.get("/v1/kinds").await;
    let listed = kinds["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "push.ok")
        .unwrap()
        .clone();
    // Shown to every tenant, the URL keeps its origin alone (a path may carry a function key).
    let origin = base.trim_end_matches("/push");
    let shown = listed["push"]["url"].as_str().unwrap();
    assert!(
        shown.starts_with(origin) && !shown.contains("/push/ok"),
        "{shown}"
    );
    assert!(!kinds.to_string().contains("whsec_"), "{kinds}");

    let submit = |kind: &str, extra: Value| {
        let mut body = json!({"kind": kind, "payload": {"n": 1}, "max_attempts": 3});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let client = client.clone();
        async move { id_of(&client.submit(body).await) }
    };
    let ok = submit("push.ok", json!({})).await;
    let flaky = submit("push.flaky", json!({})).await;
    let bad = submit("push.bad", json!({})).await;
    let slow = submit("push.slow", json!({"max_attempts": 2})).await;
    let text = submit("push.text", json!({"max_attempts": 1})).await;

    let job = client.wait_terminal(&ok).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"], json!({"echo": {"n": 1}, "attempt": 1}));
    assert_eq!(
        client.timeline(&ok).await,
        ["submitted", "started", "succeeded"]
    );

    let job = client.wait_terminal(&flaky).await;
    assert_eq!(
        (job["status"].as_str(), job["attempt"].as_u64()),
        (Some("succeeded"), Some(2)),
        "{job}"
    );
    assert_eq!(
        client.timeline(&flaky).await,
        [
            "submitted",
            "started",
            "failed",
            "retry_scheduled",
            "started",
            "succeeded"
        ]
    );

    let job = client.wait_terminal(&bad).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["class"], "fatal", "a 400 is final: {job}");
    assert!(
        job["error"]["message"].as_str().unwrap().contains("400"),
        "{job}"
    );
    assert_eq!(
        client.timeline(&bad).await,
        ["submitted", "started", "failed", "dead_lettered"]
    );

    let job = client.wait_terminal(&slow).await;
    assert_eq!(
        (job["status"].as_str(), job["attempt"].as_u64()),
        (Some("failed"), Some(2)),
        "timed out twice: {job}"
    );
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in time"),
        "{job}"
    );

    let job = client.wait_terminal(&text).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not JSON"),
        "{job}"
    );

    // Each POST is signed per Standard Webhooks with the kind's secret, over the job it carries.
    let bodies = endpoint.bodies.lock().unwrap().clone();
    let (headers, body) = bodies
        .iter()
        .find(|(_, b)| serde_json::from_slice::<Value>(b).unwrap()["id"] == ok.as_str())
        .unwrap();
    let h = |n: &str| headers[n].to_str().unwrap().to_owned();
    assert_eq!(h("webhook-id"), format!("{ok}.1"));
    let now = chrono::Utc::now().timestamp();
    events::webhooks::verify(
        &secret,
        &h("webhook-id"),
        &h("webhook-timestamp"),
        &h("webhook-signature"),
        body,
        now,
    )
    .expect("the signature verifies with the kind's secret");
    let sent: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        (
            sent["tenant"].as_str(),
            sent["kind"].as_str(),
            sent["attempt"].as_u64(),
            sent["max_attempts"].as_u64()
        ),
        (Some("acme"), Some("push.ok"), Some(1), Some(3))
    );
    assert_eq!(endpoint.calls.lock().unwrap()[&ok], 1, "delivered once");

    // The CLI registers one too, and lists it.
    let token = env.token("ops", "operator jobs:read");
    let vars = [
        ("CONVEYOR_URL", api.base.as_str()),
        ("CONVEYOR_TOKEN", token.as_str()),
    ];
    let url = format!("{base}/ok");
    let out = env
        .run_raw(
            &[
                "kinds",
                "push",
                "push.cli",
                "--endpoint",
                &url,
                "--timeout-ms",
                "2000",
            ],
            &vars,
            &[],
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        printed["secret"].as_str().unwrap().starts_with("whsec_"),
        "{printed}"
    );
    let out = env.run_raw(&["kinds", "list"], &vars, &[]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("push.cli"));
    let cli = id_of(
        &client
            .submit(json!({"kind": "push.cli", "payload": {"n": 2}}))
            .await,
    );
    assert_eq!(
        client.wait_terminal(&cli).await["result"]["echo"],
        json!({"n": 2})
    );
}

#[tokio::test]
async fn push_kind_endpoints_are_vetted_like_webhook_targets() {
    // Private targets refused, as in production.
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_ALLOW_PRIVATE_WEBHOOKS", "false");
    let (_dev, api) = env.spawn_http("dev").await;
    let op = api.with_token(&env.token("ops", "operator"));
    for url in [
        "http://127.0.0.1:9/push",
        "http://[::1]/x",
        "http://10.0.0.8/x",
        "ftp://example.com/x",
    ] {
        let (status, body) = register(&op, "push.ssrf", json!({"url": url})).await;
        assert_eq!(status, 422, "{url}: {body}");
    }
    // Only operators register push kinds; built-in kinds cannot be one.
    let admin = api.with_token(&env.token("acme", "admin"));
    let (status, _) = register(&admin, "push.mine", json!({"url": "https://example.com/x"})).await;
    assert_eq!(status, 403);
    let (status, _) = register(&op, "noop", json!({"url": "https://example.com/x"})).await;
    assert_eq!(status, 409);
    let (status, _) = register(
        &op,
        "push.t",
        json!({"url": "https://example.com/x", "timeout_ms": 0}),
    )
    .await;
    assert_eq!(status, 422);
}

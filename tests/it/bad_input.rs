//! Bad input gets the documented status and a problem+json body, and nothing is published.

use reqwest::Method;
use serde_json::{json, Value};

use crate::BUILD;
use testkit::{jwt, Env};

async fn expect_problem(res: reqwest::Response, status: u16, what: &str) {
    assert_eq!(res.status().as_u16(), status, "{what}");
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(ct.as_deref(), Some("application/problem+json"), "{what}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status, "{what}: {body}");
    assert!(
        body["type"].is_string() && body["title"].is_string(),
        "{what}: {body}"
    );
    assert!(
        !body["detail"].as_str().unwrap_or_default().is_empty(),
        "{what}: {body}"
    );
}

#[tokio::test]
async fn bad_requests_get_problem_details_and_publish_nothing() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_ALLOW_PRIVATE_WEBHOOKS", "false");
    // Only the API runs, so anything published would stay in the streams.
    let (_api, api) = env.spawn_http("api").await;
    let post = |body: &str| {
        api.request(Method::POST, "/v1/jobs")
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };

    expect_problem(post("{\"kind\": ").await.unwrap(), 400, "malformed JSON").await;
    expect_problem(post("[1, 2]").await.unwrap(), 400, "not an object").await;
    expect_problem(
        post(r#"{"kind": "noop", "tenant": "other"}"#)
            .await
            .unwrap(),
        400,
        "unknown field",
    )
    .await;
    expect_problem(
        post(r#"{"kind": "noop", "max_attempts": "three"}"#)
            .await
            .unwrap(),
        400,
        "wrong type",
    )
    .await;
    let no_type = api
        .request(Method::POST, "/v1/jobs")
        .body(r#"{"kind":"noop"}"#)
        .send()
        .await
        .unwrap();
    expect_problem(no_type, 415, "no content type").await;
    expect_problem(
        post(r#"{"kind": "teleport"}"#).await.unwrap(),
        422,
        "unknown kind",
    )
    .await;
    expect_problem(
        post(r#"{"kind": "Bad Kind!"}"#).await.unwrap(),
        422,
        "invalid kind",
    )
    .await;
    expect_problem(
        post(r#"{"kind": "sleep", "payload": {"ms": "long"}}"#)
            .await
            .unwrap(),
        422,
        "invalid payload",
    )
    .await;
    expect_problem(
        post(r#"{"kind": "sleep", "payload": {"ms": 99999999}}"#)
            .await
            .unwrap(),
        422,
        "payload out of range",
    )
    .await;
    expect_problem(
        post(r#"{"kind": "noop", "max_attempts": 0}"#)
            .await
            .unwrap(),
        422,
        "max_attempts 0",
    )
    .await;
    expect_problem(
        post(r#"{"kind": "noop", "webhook": {"url": "http://127.0.0.1:4222/"}}"#)
            .await
            .unwrap(),
        422,
        "private webhook",
    )
    .await;
    expect_problem(
        post(r#"{"kind": "noop", "webhook": {"url": "file:///etc/passwd"}}"#)
            .await
            .unwrap(),
        422,
        "file webhook",
    )
    .await;
    let huge =
        json!({ "kind": "noop", "payload": { "blob": "x".repeat(1024 * 1024) } }).to_string();
    expect_problem(post(&huge).await.unwrap(), 413, "oversized body").await;
    let deep = format!(
        r#"{{"kind": "noop", "payload": {}1{}}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    expect_problem(post(&deep).await.unwrap(), 422, "payload nesting too deep").await;
    let very_deep = format!(
        r#"{{"kind": "noop", "payload": {}1{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    expect_problem(
        post(&very_deep).await.unwrap(),
        400,
        "nesting beyond the parser's limit",
    )
    .await;
    let long_url = format!(
        r#"{{"kind": "noop", "webhook": {{"url": "https://example.com/{}"}}}}"#,
        "a".repeat(3000)
    );
    expect_problem(post(&long_url).await.unwrap(), 422, "webhook URL too long").await;
    let res = api
        .request(Method::POST, "/v1/jobs")
        .header("x-padding", "p".repeat(20 * 1024))
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .unwrap();
    expect_problem(res, 431, "headers too large").await;
    let res = api
        .request(Method::POST, "/v1/jobs")
        .header("idempotency-key", "k".repeat(300))
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .unwrap();
    expect_problem(res, 400, "idempotency key too long").await;
    // A hostile `traceparent` is ignored (a new trace starts), never copied.
    let res = api
        .request(Method::GET, "/v1/jobs")
        .header(
            "traceparent",
            "ff-00000000000000000000000000000000-0000000000000000-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for id in ["abc", "-1", "1 2", "99999999999999999999999"] {
        let res = api
            .request(Method::GET, "/v1/events")
            .header("last-event-id", id)
            .send()
            .await
            .unwrap();
        expect_problem(res, 400, &format!("Last-Event-ID {id:?}")).await;
    }

    // Authentication and authorisation.
    let anonymous = api.with_token("");
    let res = reqwest::Client::new()
        .post(format!("{}/v1/jobs", api.base))
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .unwrap();
    expect_problem(res, 401, "missing token").await;
    let res = anonymous
        .with_token("not.a.jwt")
        .request(Method::POST, "/v1/jobs")
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .unwrap();
    expect_problem(res, 401, "garbage token").await;
    let expired = producers::auth::encode(
        &jwt(),
        &producers::auth::Claims {
            sub: "t".into(),
            tenant: "acme".into(),
            scope: "jobs:write".into(),
            exp: (chrono::Utc::now().timestamp() - 3600) as u64,
            iss: "conveyor".into(),
            aud: "conveyor".into(),
            kinds: Vec::new(),
        },
    );
    let res = api
        .with_token(&expired)
        .request(Method::POST, "/v1/jobs")
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .unwrap();
    expect_problem(res, 401, "expired token").await;
    let reader = api.with_token(&env.token("acme", "jobs:read"));
    let res = reader
        .request(Method::POST, "/v1/jobs")
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .unwrap();
    expect_problem(res, 403, "wrong scope").await;
    let res = api
        .with_token(&env.token("acme", "events:read"))
        .request(Method::GET, "/v1/jobs")
        .send()
        .await
        .unwrap();
    expect_problem(res, 403, "read without jobs:read").await;

    // Bad query parameters and ids.
    for (path, status) in [
        ("/v1/jobs?limit=0", 400),
        ("/v1/jobs?limit=501", 400),
        ("/v1/jobs?status=lost", 400),
        ("/v1/jobs?cursor=nope", 400),
        ("/v1/jobs?bogus=1", 400),
        ("/v1/jobs/not-a-uuid", 404),
    ] {
        let res = api.request(Method::GET, path).send().await.unwrap();
        expect_problem(res, status, path).await;
    }

    assert_eq!(
        env.stream_messages("EVENTS").await,
        0,
        "no event may be published for bad input"
    );
    assert_eq!(
        env.stream_messages("COMMANDS").await,
        0,
        "no command may be published for bad input"
    );
}

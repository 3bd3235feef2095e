//! What operators and client builders rely on: `/metrics` in every role, the kind registry
//! (`GET /v1/kinds`, schemas declared by workers), and the consumers' backlog.

use std::time::Duration;

use serde_json::{json, Value};

use crate::BUILD;
use testkit::{id_of, Env};

/// The value of the first sample of `name` whose labels contain all of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn scrape(base: &str) -> String {
    let res = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(res.status(), 200);
    let ctype = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    res.text().await.unwrap()
}

#[tokio::test]
async fn every_role_serves_metrics() {
    let env = Env::new(BUILD).await;
    let (_api, api) = env.spawn_http("api").await;
    let (_worker, worker) = env.spawn_ops("worker").await;
    let (_projector, projector) = env.spawn_ops("projector").await;
    let (_notifier, notifier) = env.spawn_ops("notifier").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(id_of(&api.submit(json!({ "kind": "noop" })).await));
    }
    ids.push(id_of(
        &api.submit(json!({ "kind": "fail", "max_attempts": 1 }))
            .await,
    ));
    for id in &ids {
        api.wait_terminal(id).await;
    }
    env.settle().await;

    let m = scrape(&api.base).await;
    assert_eq!(
        sample(
            &m,
            "conveyor_http_requests_total",
            &[r#"route="/v1/jobs""#, r#"status="202""#]
        ),
        Some(6.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "conveyor_http_request_duration_seconds_count",
            &[r#"route="/v1/jobs/{id}""#]
        )
        .unwrap()
            >= 6.0
    );
    assert_eq!(
        sample(&m, "conveyor_jobs_submitted_total", &[r#"kind="noop""#]),
        Some(5.0)
    );
    assert!(
        sample(
            &m,
            "conveyor_publish_duration_seconds_count",
            &[r#"stream="events""#]
        )
        .unwrap()
            >= 6.0
    );
    assert!(sample(&m, "process_resident_memory_bytes", &[]).unwrap() > 1e6);

    let m = scrape(&worker).await;
    assert_eq!(
        sample(
            &m,
            "conveyor_job_attempts_total",
            &[r#"kind="noop""#, r#"outcome="succeeded""#]
        ),
        Some(5.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "conveyor_job_attempts_total",
            &[r#"kind="fail""#, r#"outcome="failed""#]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "conveyor_job_duration_seconds_count",
            &[r#"kind="noop""#]
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(&m, "conveyor_jobs_running", &[r#"kind="noop""#]),
        Some(0.0)
    );
    assert!(
        sample(
            &m,
            "conveyor_consumer_pending",
            &[r#"consumer="worker-noop""#]
        )
        .is_some(),
        "{m}"
    );

    let m = scrape(&projector).await;
    assert_eq!(
        sample(
            &m,
            "conveyor_jobs_finished_total",
            &[r#"kind="noop""#, r#"status="succeeded""#]
        ),
        Some(5.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "conveyor_jobs_finished_total",
            &[r#"kind="fail""#, r#"status="failed""#]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "conveyor_job_latency_seconds_count",
            &[r#"kind="noop""#]
        ),
        Some(5.0)
    );
    let last = env.stream_messages("EVENTS").await as f64;
    assert_eq!(
        sample(
            &m,
            "conveyor_projection_checkpoint",
            &[r#"projection="jobs""#]
        ),
        Some(last)
    );
    // The lag gauges are refreshed every 2 s; once caught up they read zero.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = scrape(&projector).await;
        if sample(
            &m,
            "conveyor_projection_lag_events",
            &[r#"projection="jobs""#],
        ) == Some(0.0)
        {
            assert_eq!(
                sample(
                    &m,
                    "conveyor_projection_lag_seconds",
                    &[r#"projection="jobs""#]
                ),
                Some(0.0)
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no lag gauge: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let m = scrape(&notifier).await;
    assert!(
        sample(
            &m,
            "conveyor_consumer_pending",
            &[r#"consumer="webhook-fanin""#]
        )
        .is_some(),
        "{m}"
    );
    for base in [&worker, &projector, &notifier] {
        let res = reqwest::get(format!("{base}/readyz")).await.unwrap();
        assert_eq!(res.status(), 200);
    }
}

#[tokio::test]
async fn kinds_registered_by_workers_are_accepted_and_validated() {
    let env = Env::new(BUILD).await;
    let (_api, api) = env.spawn_http("api").await;
    let (status, body) = api.get("/v1/kinds").await;
    assert_eq!(status, 200, "{body}");
    let kinds: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "batch",
            "fail",
            "fan_out",
            "flaky",
            "noop",
            "report.job_stats",
            "sleep"
        ]
    );
    let sleep = &body["items"][6];
    assert_eq!(sleep["builtin"], true);
    assert_eq!(sleep["schema"]["required"], json!(["ms"]));

    // A kind nobody serves yet is refused…
    let res = api
        .request(reqwest::Method::POST, "/v1/jobs")
        .json(&json!({ "kind": "image.resize", "payload": { "width": 10 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);

    // …until a worker registers it with its schema (as `Worker::run` does for each handler).
    let bus = bus::Bus::connect(&bus::BusSettings::new(
        &env.nats_url,
        events::Namespace::parse(&env.ns).unwrap(),
        "test",
    ))
    .await
    .unwrap();
    let schema = json!({
        "type": "object",
        "required": ["width"],
        "properties": { "width": { "type": "integer", "minimum": 1 } },
        "additionalProperties": false,
    });
    bus.register_kind(&"image.resize".parse().unwrap(), Some(&schema))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = api.get("/v1/kinds").await;
        if let Some(k) = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == "image.resize")
        {
            assert_eq!(k["builtin"], false);
            assert_eq!(k["schema"], schema);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not registered: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, problem) = api
        .post(
            "/v1/jobs",
            &json!({ "kind": "image.resize", "payload": { "width": 0, "height": 3 } }),
        )
        .await;
    assert_eq!(status, 422);
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("/width"), "{detail}");
    assert!(detail.contains("height"), "{detail}");
    api.submit(json!({ "kind": "image.resize", "payload": { "width": 640 } }))
        .await;

    // The worker's own kinds carry their schemas too.
    let _worker = env.spawn("worker").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let kv = env
            .js()
            .await
            .get_key_value(format!("{}_KINDS", env.ns.to_uppercase()))
            .await;
        if let Ok(kv) = kv {
            if let Ok(Some(entry)) = kv.get("flaky").await {
                let entry: Value = serde_json::from_slice(&entry).unwrap();
                assert_eq!(entry["schema"]["required"], json!(["fail_times"]));
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not register its kinds"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn operators_see_the_consumers_backlog() {
    let env = Env::new(BUILD).await;
    let (_api, api) = env.spawn_http("api").await;
    let _worker = env.spawn("worker").await;
    let _projector = env.spawn("projector").await;
    let admin = api.with_token(&env.token("acme", "operator"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let items = loop {
        let (status, body) = admin.get("/v1/admin/consumers").await;
        assert_eq!(status, 200, "{body}");
        let items = body["items"].as_array().unwrap().clone();
        // The worker makes its consumers one after the other: wait for the last of them.
        let made = |name: &str| items.iter().any(|c| c["consumer"] == name);
        if ["canceller", "webhook-fanin", "worker-noop", "worker-sleep"]
            .iter()
            .all(|name| made(name))
        {
            break items;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names: Vec<&str> = items
        .iter()
        .map(|c| c["consumer"].as_str().unwrap())
        .collect();
    for want in ["canceller", "webhook-fanin", "worker-noop", "worker-sleep"] {
        assert!(names.contains(&want), "{names:?}");
    }
    let id = id_of(
        &api.submit(json!({ "kind": "sleep", "payload": { "ms": 3000 } }))
            .await,
    );
    api.wait_for(&id, 30, |j| j["status"] == "running").await;
    let (_, body) = admin.get("/v1/admin/consumers").await;
    let sleep = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["consumer"] == "worker-sleep")
        .unwrap()
        .clone();
    assert_eq!(sleep["ack_pending"], 1, "{sleep}");
    let (status, _) = api.get("/v1/admin/consumers").await;
    assert_eq!(status, 403, "operators only");
    let tenant_admin = api.with_token(&env.token("acme", "admin"));
    let (status, _) = tenant_admin.get("/v1/admin/consumers").await;
    assert_eq!(
        status, 403,
        "a tenant's admin lists no other tenant's consumers"
    );
}

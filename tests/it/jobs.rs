//! A job's life through the whole system: submit, run, project, read.

use serde_json::{json, Value};

use crate::BUILD;
use testkit::{id_of, Env};

#[tokio::test]
async fn noop_job_goes_from_queued_to_succeeded() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let accepted = api.submit(json!({ "kind": "noop" })).await;
    assert_eq!(accepted["status"], "queued");
    assert!(accepted["seq"].as_u64().unwrap() >= 1);
    let id = id_of(&accepted);
    let job = api.wait_terminal(&id).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["attempt"], 1);
    assert!(job["finished_at"].is_string());
    assert_eq!(
        api.timeline(&id).await,
        ["submitted", "started", "succeeded"]
    );
}

#[tokio::test]
async fn flaky_job_succeeds_on_its_third_attempt() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let id = id_of(
        &api.submit(json!({ "kind": "flaky", "payload": { "fail_times": 2 }, "max_attempts": 5 }))
            .await,
    );
    let job = api.wait_terminal(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 3);
    assert_eq!(job["result"]["succeeded_on_attempt"], 3);
    assert_eq!(
        api.timeline(&id).await,
        [
            "submitted",
            "started",
            "failed",
            "retry_scheduled",
            "started",
            "failed",
            "retry_scheduled",
            "started",
            "succeeded"
        ]
    );
}

#[tokio::test]
async fn failing_job_is_dead_lettered_after_max_attempts() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let id = id_of(
        &api.submit(json!({ "kind": "fail", "max_attempts": 3 }))
            .await,
    );
    let job = api.wait_terminal(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempt"], 3);
    assert_eq!(job["error"]["attempt"], 3);
    let timeline = api.timeline(&id).await;
    assert_eq!(timeline.iter().filter(|t| *t == "started").count(), 3);
    assert_eq!(timeline.iter().filter(|t| *t == "failed").count(), 3);
    assert_eq!(timeline.last().unwrap(), "dead_lettered");
}

#[tokio::test]
async fn running_sleep_job_is_cancelled() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let id = id_of(
        &api.submit(json!({ "kind": "sleep", "payload": { "ms": 30000, "steps": 300 } }))
            .await,
    );
    api.wait_for(&id, 30, |j| {
        j["progress"]["current"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let res = api
        .request(reqwest::Method::POST, &format!("/v1/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let job = api.wait_terminal(&id).await;
    assert_eq!(job["status"], "cancelled");
    let timeline = api.timeline(&id).await;
    assert!(timeline.contains(&"cancel_requested".to_owned()));
    assert_eq!(timeline.last().unwrap(), "cancelled");
    // Cancelling a job that ended is a conflict.
    let again = api
        .request(reqwest::Method::POST, &format!("/v1/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
}

#[tokio::test]
async fn queued_job_cancelled_before_it_runs_never_starts() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let run_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let id = id_of(
        &api.submit(json!({ "kind": "noop", "run_at": run_at }))
            .await,
    );
    let res = api
        .request(reqwest::Method::POST, &format!("/v1/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let job = api.wait_terminal(&id).await;
    assert_eq!(job["status"], "cancelled");
    assert!(!api.timeline(&id).await.contains(&"started".to_owned()));
}

#[tokio::test]
async fn delayed_job_waits_for_run_at() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let run_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let id = id_of(
        &api.submit(json!({ "kind": "noop", "run_at": run_at.to_rfc3339() }))
            .await,
    );
    let job = api.wait_terminal(&id).await;
    let started: chrono::DateTime<chrono::Utc> =
        job["started_at"].as_str().unwrap().parse().unwrap();
    assert!(
        started >= run_at,
        "started {started} before run_at {run_at}"
    );
}

#[tokio::test]
async fn same_idempotency_key_gives_one_job() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let body = json!({ "kind": "noop", "payload": { "n": 1 } });
    let post = |key: &'static str, body: Value| {
        let api = api.clone();
        async move {
            let res = api
                .request(reqwest::Method::POST, "/v1/jobs")
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    // Concurrent duplicates: one 202, the rest 200, all with the same id.
    let answers = futures::future::join_all((0..5).map(|_| post("order-42", body.clone()))).await;
    let ids: Vec<_> = answers.iter().map(|(_, b)| b["id"].clone()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{answers:?}");
    assert_eq!(
        answers.iter().filter(|(s, _)| *s == 202).count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|(s, _)| *s == 202 || *s == 200),
        "{answers:?}"
    );
    // Later repeat: 200, same id.
    let id = ids[0].as_str().unwrap().to_owned();
    api.wait_terminal(&id).await;
    let (status, again) = post("order-42", body.clone()).await;
    assert_eq!((status, again["id"].as_str().unwrap()), (200, id.as_str()));
    assert_eq!(again["status"], "succeeded");
    // Same key, other body: 409.
    let (status, problem) =
        post("order-42", json!({ "kind": "noop", "payload": { "n": 2 } })).await;
    assert_eq!(status, 409, "{problem}");
    // One job in all.
    let (_, page) = api.get("/v1/jobs").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        env.stream_messages("EVENTS").await,
        3,
        "submitted, started, succeeded once each"
    );
}

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_jobs() {
    let env = Env::new(BUILD).await;
    let (_dev, acme) = env.spawn_http("dev").await;
    let globex = acme.with_token(&env.token("globex", "jobs:write jobs:read"));
    let id = id_of(&acme.submit(json!({ "kind": "noop" })).await);
    acme.wait_terminal(&id).await;
    for path in [
        format!("/v1/jobs/{id}"),
        format!("/v1/jobs/{id}/events"),
        format!("/v1/jobs/{id}/result"),
    ] {
        let (status, body) = globex.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let res = globex
        .request(reqwest::Method::POST, &format!("/v1/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let (_, page) = globex.get("/v1/jobs").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0);
    // The same 404 as for an id that never existed.
    let (status, body) = globex
        .get(&format!("/v1/jobs/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn get_right_after_accept_never_answers_404() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_READ_YOUR_WRITES_MS", "300");
    // No projector at all: reads must be answered from the event log.
    let (_api, api) = env.spawn_http("api").await;
    let id = id_of(&api.submit(json!({ "kind": "noop" })).await);
    let job = api.job(&id).await;
    assert_eq!(job["status"], "queued");
    // With the projector, many submit-then-read pairs in a row.
    let _projector = env.spawn("projector").await;
    let _worker = env.spawn("worker").await;
    for _ in 0..30 {
        let id = id_of(&api.submit(json!({ "kind": "noop" })).await);
        let (status, body) = api.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn list_pages_newest_first_with_a_cursor() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(id_of(&api.submit(json!({ "kind": "noop" })).await));
    }
    for id in &ids {
        api.wait_terminal(id).await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/jobs?limit=2".to_owned();
    loop {
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/jobs?limit=2&cursor={c}"),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let (_, filtered) = api
        .get("/v1/jobs?status=succeeded&kind=noop&limit=500")
        .await;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn large_results_are_kept_in_the_object_store() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let big = "x".repeat(100_000);
    let id = id_of(
        &api.submit(json!({ "kind": "noop", "payload": { "echo": big } }))
            .await,
    );
    let job = api.wait_terminal(&id).await;
    assert_eq!(job["status"], "succeeded");
    assert!(job["result"].is_null(), "not inlined");
    assert_eq!(job["result_url"], format!("/v1/jobs/{id}/result"));
    let (status, result) = api.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(status, 200);
    assert_eq!(result.as_str().map(str::len), Some(100_000));
    // A small result is inlined and served by the same endpoint.
    let small = id_of(
        &api.submit(json!({ "kind": "noop", "payload": { "echo": { "ok": true } } }))
            .await,
    );
    assert_eq!(
        api.wait_terminal(&small).await["result"],
        json!({ "ok": true })
    );
    assert_eq!(
        api.get(&format!("/v1/jobs/{small}/result")).await,
        (200, json!({ "ok": true }))
    );
}

#[tokio::test]
async fn job_stats_report_aggregates_the_tenants_jobs() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    for body in [
        json!({ "kind": "noop" }),
        json!({ "kind": "noop" }),
        json!({ "kind": "fail", "max_attempts": 1 }),
    ] {
        let id = id_of(&api.submit(body).await);
        api.wait_terminal(&id).await;
    }
    // Another tenant's job must not be counted.
    let other = api.with_token(&env.token("globex", "jobs:write jobs:read"));
    let theirs = id_of(&other.submit(json!({ "kind": "noop" })).await);
    other.wait_terminal(&theirs).await;
    let id = id_of(
        &api.submit(json!({ "kind": "report.job_stats", "payload": { "window_secs": 3600 } }))
            .await,
    );
    let job = api.wait_terminal(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let rows = job["result"]["rows"].as_array().unwrap();
    let count = |kind: &str, status: &str| {
        rows.iter()
            .find(|r| r["kind"] == kind && r["status"] == status)
            .map(|r| r["count"].as_i64().unwrap())
    };
    assert_eq!(count("noop", "succeeded"), Some(2), "{rows:?}");
    assert_eq!(count("fail", "failed"), Some(1), "{rows:?}");
    // The stats read model agrees.
    let db = env.db().await;
    let stats: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT tenant, kind, status, count FROM job_stats WHERE count <> 0 ORDER BY 1, 2, 3",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(
        stats.contains(&("acme".into(), "noop".into(), "succeeded".into(), 2)),
        "{stats:?}"
    );
    assert!(
        stats.contains(&("globex".into(), "noop".into(), "succeeded".into(), 1)),
        "{stats:?}"
    );
}

#[tokio::test]
async fn health_readiness_and_openapi() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    assert_eq!(api.get("/healthz").await.0, 200);
    let (status, ready) = api.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let (status, doc) = api.get("/openapi.json").await;
    assert_eq!(status, 200);
    for path in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/v1/jobs/{id}/events",
        "/v1/jobs/{id}/result",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["SubmitJob"].is_object());
    // The document lists the API's operations, no more (the dashboard, `/metrics` and
    // `/openapi.json` are not in it), and each of them is served.
    // By path, then method.
    let mut operations: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (path.clone(), method.to_uppercase()))
        })
        .collect();
    operations.sort();
    let listed: Vec<String> = operations.iter().map(|(p, m)| format!("{m} {p}")).collect();
    assert_eq!(
        listed,
        [
            "GET /healthz",
            "GET /readyz",
            "GET /v1/admin/consumers",
            "GET /v1/admin/dead-letters",
            "POST /v1/admin/dead-letters/{id}/redrive",
            "PUT /v1/admin/kinds/{kind}",
            "POST /v1/admin/kinds/{kind}/pause",
            "POST /v1/admin/kinds/{kind}/resume",
            "GET /v1/admin/pauses",
            "GET /v1/admin/projections",
            "POST /v1/admin/projections/{name}/rebuild",
            "DELETE /v1/admin/tenants/{tenant}/share",
            "GET /v1/admin/tenants/{tenant}/share",
            "PUT /v1/admin/tenants/{tenant}/share",
            "GET /v1/admin/webhooks/failed",
            "POST /v1/admin/webhooks/failed/{job}/redrive",
            "POST /v1/batches",
            "GET /v1/batches/{id}",
            "POST /v1/batches/{id}/cancel",
            "GET /v1/batches/{id}/jobs",
            "POST /v1/batches/{id}/jobs",
            "POST /v1/batches/{id}/seal",
            "GET /v1/events",
            "GET /v1/jobs",
            "POST /v1/jobs",
            "POST /v1/jobs/batch",
            "GET /v1/jobs/{id}",
            "POST /v1/jobs/{id}/cancel",
            "GET /v1/jobs/{id}/children",
            "GET /v1/jobs/{id}/events",
            "GET /v1/jobs/{id}/result",
            "GET /v1/kinds",
            "POST /v1/kinds/{kind}/pause",
            "POST /v1/kinds/{kind}/resume",
            "GET /v1/pauses",
            "GET /v1/schedules",
            "POST /v1/schedules",
            "DELETE /v1/schedules/{id}",
            "GET /v1/schedules/{id}",
            "POST /v1/schedules/{id}/pause",
            "POST /v1/schedules/{id}/resume",
            "GET /v1/webhooks/secret",
            "POST /v1/workers/complete",
            "POST /v1/workers/fail",
            "POST /v1/workers/jobs/{id}/children",
            "POST /v1/workers/jobs/{id}/complete",
            "POST /v1/workers/jobs/{id}/fail",
            "POST /v1/workers/jobs/{id}/heartbeat",
            "POST /v1/workers/jobs/{id}/progress",
            "POST /v1/workers/jobs/{id}/release",
            "POST /v1/workers/jobs/{id}/wait",
            "PUT /v1/workers/kinds/{kind}",
            "POST /v1/workers/lease",
            "GET /v1/ws",
        ]
    );
    // Every error is documented as problem+json; every operation but the health checks may
    // answer 401.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let public = matches!(path.as_str(), "/healthz" | "/readyz");
            assert_eq!(
                responses.contains_key("401"),
                !public,
                "{method} {path}: 401 documented for every operation behind the token"
            );
            for (status, response) in responses {
                if status.as_str() >= "400" {
                    let types: Vec<&String> = response["content"]
                        .as_object()
                        .map(|c| c.keys().collect())
                        .unwrap_or_default();
                    assert_eq!(
                        types,
                        ["application/problem+json"],
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    for (path, method) in &operations {
        let concrete = path
            .replace("{id}", &unknown)
            .replace("{job}", &unknown)
            .replace("{name}", "jobs")
            .replace("{tenant}", "acme")
            .replace("{kind}", "it.unknown");
        let res = api
            .request(method.parse().unwrap(), &concrete)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        assert_ne!(status, 405, "{method} {path} is not served");
        if status == 404 {
            // A handler's 404 names what it did not find; the router's says only "not found".
            let body: Value = res.json().await.unwrap();
            assert_ne!(body["detail"], "not found", "{method} {path} is not served");
        }
    }
}

#[tokio::test]
async fn operators_see_each_projection_caught_up_with_the_stream() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let id = id_of(&api.submit(json!({ "kind": "noop" })).await);
    api.wait_terminal(&id).await;
    let admin = api.with_token(&env.token("acme", "operator"));
    assert_eq!(api.get("/v1/admin/projections").await.0, 403);
    // A tenant's admin is not an operator: projections concern every tenant.
    let tenant_admin = api.with_token(&env.token("acme", "admin"));
    assert_eq!(tenant_admin.get("/v1/admin/projections").await.0, 403);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = admin.get("/v1/admin/projections").await;
        assert_eq!(status, 200, "{body}");
        let items = body["items"].as_array().unwrap();
        let names: Vec<_> = items.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["job_events", "job_stats", "jobs"]);
        if items
            .iter()
            .all(|p| p["lag"] == 0 && p["checkpoint"] == 3 && p["stream_last_seq"] == 3)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projections did not catch up: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_attempt_over_its_timeout_fails_and_is_retried() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let id = id_of(
        &api.submit(json!({ "kind": "sleep", "payload": { "ms": 20000 }, "timeout_ms": 300, "max_attempts": 2 }))
            .await,
    );
    let job = api.wait_terminal(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["class"], "timeout", "{job}");
    assert_eq!(job["attempt"], 2);
    let timeline = api.timeline(&id).await;
    assert_eq!(
        timeline.iter().filter(|t| *t == "started").count(),
        2,
        "{timeline:?}"
    );
}

#[tokio::test]
async fn heartbeats_keep_a_job_longer_than_the_ack_wait_from_being_redelivered() {
    // The harness sets a 2 s ack wait; this job runs 5 s.
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let id = id_of(
        &api.submit(json!({ "kind": "sleep", "payload": { "ms": 5000, "steps": 5 } }))
            .await,
    );
    let job = api.wait_terminal(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let js = env.js().await;
    let stream = js
        .get_stream(format!("{}_COMMANDS", env.ns.to_uppercase()))
        .await
        .unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("worker-sleep").await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        info.delivered.consumer_sequence, 1,
        "the command was delivered once: {info:?}"
    );
}

#[tokio::test]
async fn a_dead_lettered_job_redriven_succeeds_with_a_fresh_attempt_budget() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let admin = api.with_token(&env.token("acme", "jobs:read admin"));
    let id = id_of(
        &api.submit(json!({ "kind": "flaky", "payload": { "fail_times": 2 }, "max_attempts": 2 }))
            .await,
    );
    let job = api.wait_terminal(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["attempt"].as_i64()),
        (Some("failed"), Some(2)),
        "{job}"
    );
    let (status, dead) = admin.get("/v1/admin/dead-letters?kind=flaky").await;
    assert_eq!(status, 200, "{dead}");
    assert_eq!(dead["items"][0]["id"], id.as_str());
    // Not for callers without the admin scope, nor for jobs that did not fail.
    let res = api
        .request(
            reqwest::Method::POST,
            &format!("/v1/admin/dead-letters/{id}/redrive"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    let res = admin
        .request(
            reqwest::Method::POST,
            &format!("/v1/admin/dead-letters/{id}/redrive"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    // The read model shows `failed` until the projector has the re-drive.
    let job = api.wait_for(&id, 60, |j| j["status"] == "succeeded").await;
    assert_eq!(
        (job["attempt"].as_i64(), job["max_attempts"].as_i64()),
        (Some(3), Some(4))
    );
    let timeline = api.timeline(&id).await;
    let after_redrive: Vec<_> = timeline
        .iter()
        .skip_while(|t| *t != "redriven")
        .map(String::as_str)
        .collect();
    assert_eq!(
        after_redrive,
        ["redriven", "started", "succeeded"],
        "{timeline:?}"
    );
    assert!(timeline.contains(&"dead_lettered".to_owned()));
    let res = admin
        .request(
            reqwest::Method::POST,
            &format!("/v1/admin/dead-letters/{id}/redrive"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409, "a succeeded job cannot be re-driven");
    let (_, dead) = admin.get("/v1/admin/dead-letters").await;
    assert_eq!(dead["items"], json!([]));
    // Stats follow: one flaky job, succeeded.
    let stats: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count FROM job_stats WHERE kind = 'flaky'")
            .fetch_all(&env.db().await)
            .await
            .unwrap();
    assert_eq!(stats, vec![("succeeded".to_owned(), 1)]);
}

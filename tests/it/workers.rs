//! The worker protocol over raw HTTP, as a worker in any language speaks it: leases, reports,
//! lost leases, cancellation, timeouts, and what a worker token may see. (The SDKs' own suites
//! run the same guarantees through each SDK.)

use std::time::Duration;

use serde_json::{json, Value};

use crate::BUILD;
use testkit::{id_of, Api, Env};

const KIND: &str = "it.report";

/// A worker's client: the API with a worker token.
fn worker(env: &Env, api: &Api, tenant: &str, scope: &str) -> Api {
    api.with_token(&env.token(tenant, scope))
}

async fn register(w: &Api, kind: &str, schema: Value) {
    let res = w
        .request(reqwest::Method::PUT, &format!("/v1/workers/kinds/{kind}"))
        .json(&json!({ "schema": schema }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

/// Leases up to `max` jobs of `KIND`, waiting up to `wait_ms`.
async fn lease(w: &Api, max: u32, wait_ms: u64) -> Vec<Value> {
    let (status, body) = w
        .post(
            "/v1/workers/lease",
            &json!({ "kinds": [KIND], "max_jobs": max, "wait_ms": wait_ms, "worker": "it-worker" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["jobs"].as_array().unwrap().clone()
}

/// Leases until `n` jobs are leased (they may come over several leases).
async fn lease_n(w: &Api, n: usize) -> Vec<Value> {
    let mut jobs = Vec::new();
    for _ in 0..20 {
        jobs.extend(lease(w, (n - jobs.len()) as u32, 2_000).await);
        if jobs.len() == n {
            return jobs;
        }
    }
    panic!("leased {} of {n} jobs", jobs.len());
}

/// Posts a report on a leased job (`heartbeat`, `progress`, `complete`, `fail`, `release`).
async fn report(w: &Api, job: &Value, what: &str, mut body: Value) -> (u16, Value) {
    body["lease"] = job["lease"].clone();
    w.post(
        &format!("/v1/workers/jobs/{}/{what}", job["id"].as_str().unwrap()),
        &body,
    )
    .await
}

fn ids(jobs: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = jobs
        .iter()
        .map(|j| j["id"].as_str().unwrap().into())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_worker_leases_runs_and_reports_over_http() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let w = worker(&env, &api, "acme", "worker");
    let client = api.with_token(&env.token("acme", "jobs:write jobs:read"));
    register(
        &w,
        KIND,
        json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}),
    )
    .await;
    // The kind is accepted, listed and its payloads validated at once.
    let (status, kinds) = client.get("/v1/kinds").await;
    assert_eq!(status, 200);
    assert!(
        kinds["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kind"] == KIND),
        "{kinds}"
    );
    let (status, refused) = client
        .post("/v1/jobs", &json!({"kind": KIND, "payload": {"n": "x"}}))
        .await;
    assert_eq!(status, 422, "{refused}");

    let mut submitted = Vec::new();
    for n in 1..=5 {
        let body = json!({"kind": KIND, "payload": {"n": n}, "max_attempts": 2});
        submitted.push(id_of(&client.submit(body).await));
    }
    let jobs = lease_n(&w, 5).await;
    let events = env
        .js()
        .await
        .get_stream(format!("{}_EVENTS", env.ns.to_uppercase()))
        .await
        .unwrap();
    let mut want = submitted.clone();
    want.sort();
    assert_eq!(ids(&jobs), want);
    for job in &jobs {
        assert_eq!(job["tenant"], "acme");
        assert_eq!(job["kind"], KIND);
        assert_eq!(job["attempt"], 1);
        assert_eq!(job["max_attempts"], 2);
        assert!(job["payload"]["n"].is_i64(), "{job}");
        assert!(job["deadline"].is_string() && job["lease_expires_at"].is_string());
        assert!(job["heartbeat_ms"].as_u64().unwrap() > 0);
        // `job.started` is stored before the job is handed out.
        let started = format!(
            "{}.events.acme.job.{}.started",
            env.ns,
            job["id"].as_str().unwrap()
        );
        assert!(
            events.direct_get_last_for_subject(started).await.is_ok(),
            "{job}"
        );
    }
    let by_n = |n: i64| {
        jobs.iter()
            .find(|j| j["payload"]["n"] == n)
            .unwrap()
            .clone()
    };

    // 1: progress, then a result.
    let (status, body) = report(
        &w,
        &by_n(1),
        "progress",
        json!({"seq": 1, "current": 1, "total": 2, "message": "half"}),
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("progressed")));
    // The same report again is stored once.
    report(
        &w,
        &by_n(1),
        "progress",
        json!({"seq": 1, "current": 1, "total": 2}),
    )
    .await;
    let (status, body) = report(&w, &by_n(1), "complete", json!({"result": {"rows": 10}})).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("succeeded")),
        "{body}"
    );
    // 2: a retryable failure, then the retry runs (attempt 2) and succeeds.
    let (status, body) = report(
        &w,
        &by_n(2),
        "fail",
        json!({"error": {"message": "upstream 503"}}),
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("retry_scheduled")),
        "{body}"
    );
    // 3: fatal: dead-lettered at once.
    let (status, body) = report(
        &w,
        &by_n(3),
        "fail",
        json!({"error": {"message": "bad input", "class": "fatal"}}),
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("dead_lettered")),
        "{body}"
    );
    // 4 and 5 in one batch, with one forged item that fails alone.
    let (status, body) = w
        .post(
            "/v1/workers/complete",
            &json!({"jobs": [
                {"id": by_n(4)["id"], "lease": by_n(4)["lease"], "result": 4},
                {"id": by_n(5)["id"], "lease": by_n(4)["lease"], "result": 5},
                {"id": by_n(5)["id"], "lease": by_n(5)["lease"], "result": {"big": "x".repeat(40_000)}},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let statuses: Vec<&str> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeeded", "refused", "succeeded"], "{body}");

    let retry = lease_n(&w, 1).await.remove(0);
    assert_eq!(
        (retry["id"].as_str(), retry["attempt"].as_u64()),
        (Some(by_n(2)["id"].as_str().unwrap()), Some(2))
    );
    assert_eq!(
        retry["payload"],
        json!({"n": 2}),
        "the retry carries the payload"
    );
    let (status, _) = report(&w, &retry, "complete", json!({"result": "second time"})).await;
    assert_eq!(status, 200);

    let id = |n: i64| by_n(n)["id"].as_str().unwrap().to_owned();
    assert_eq!(
        client.wait_terminal(&id(1)).await["result"],
        json!({"rows": 10})
    );
    assert_eq!(
        client.timeline(&id(1)).await,
        ["submitted", "started", "progressed", "succeeded"]
    );
    assert_eq!(client.wait_terminal(&id(2)).await["status"], "succeeded");
    assert_eq!(
        client.timeline(&id(2)).await,
        [
            "submitted",
            "started",
            "failed",
            "retry_scheduled",
            "started",
            "succeeded"
        ]
    );
    let dead = client.wait_terminal(&id(3)).await;
    assert_eq!(dead["status"], "failed", "{dead}");
    assert_eq!(
        client.timeline(&id(3)).await,
        ["submitted", "started", "failed", "dead_lettered"]
    );
    client.wait_terminal(&id(4)).await;
    // The large result went to the object store and reads back whole.
    let big = client.wait_terminal(&id(5)).await;
    assert!(big["result"].is_null(), "not inlined: {big}");
    let (status, result) = client.get(&format!("/v1/jobs/{}/result", id(5))).await;
    assert_eq!(status, 200);
    assert_eq!(result["big"].as_str().map(str::len), Some(40_000));
}

#[tokio::test]
async fn a_lost_lease_goes_to_another_worker_and_its_late_report_adds_nothing() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let w = worker(&env, &api, "acme", "worker");
    let client = api.with_token(&env.token("acme", "jobs:write jobs:read"));
    register(&w, KIND, Value::Null).await;
    let heartbeaten = id_of(&client.submit(json!({"kind": KIND})).await);
    let mut kept = lease_n(&w, 1).await.remove(0);
    assert_eq!(kept["id"], heartbeaten.as_str());

    // Heartbeats keep a job well past the ack wait (2 s): no other lease gets it meanwhile.
    let silent = id_of(&client.submit(json!({"kind": KIND})).await);
    let lost = lease_n(&w, 1).await.remove(0);
    assert_eq!(lost["id"], silent.as_str());
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut again = Vec::new();
    while tokio::time::Instant::now() < until && again.is_empty() {
        let (status, body) = report(&w, &kept, "heartbeat", json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["cancelled"], false);
        kept["lease"] = body["lease"].clone();
        again = lease(&w, 5, kept["heartbeat_ms"].as_u64().unwrap()).await;
    }
    // The silent job's lease ran out: it came back (the same attempt), the kept one did not.
    assert_eq!(ids(&again), std::slice::from_ref(&silent), "{again:?}");
    let rerun = again.remove(0);
    assert_eq!(rerun["attempt"], 1);

    // The first holder's report is refused and adds nothing; the new holder's is taken.
    let (status, body) = report(&w, &lost, "complete", json!({"result": "stale"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["type"], "https://conveyor.dev/problems/lease-lost");
    let (status, _) = report(&w, &rerun, "complete", json!({"result": "fresh"})).await;
    assert_eq!(status, 200);
    // A repeat of a taken report adds nothing either.
    let (status, _) = report(&w, &rerun, "complete", json!({"result": "again"})).await;
    assert_eq!(status, 409);
    let (status, _) = report(&w, &kept, "complete", json!({"result": "kept"})).await;
    assert_eq!(status, 200);

    assert_eq!(client.wait_terminal(&silent).await["result"], "fresh");
    assert_eq!(
        client.timeline(&silent).await,
        ["submitted", "started", "succeeded"]
    );
    assert_eq!(client.wait_terminal(&heartbeaten).await["result"], "kept");
}

#[tokio::test]
async fn cancellation_reaches_the_worker_at_its_next_heartbeat() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let w = worker(&env, &api, "acme", "worker");
    let client = api.with_token(&env.token("acme", "jobs:write jobs:read"));
    register(&w, KIND, Value::Null).await;
    let id = id_of(&client.submit(json!({"kind": KIND})).await);
    let mut job = lease_n(&w, 1).await.remove(0);
    let (status, _) = client
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 202);
    let mut cancelled = false;
    for _ in 0..50 {
        let (status, body) = report(&w, &job, "heartbeat", json!({})).await;
        assert_eq!(status, 200, "{body}");
        job["lease"] = body["lease"].clone();
        if body["cancelled"] == true {
            cancelled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cancelled, "no heartbeat said the job was cancelled");
    let (status, body) = report(&w, &job, "fail", json!({"error": {"class": "cancelled"}})).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );
    assert_eq!(client.wait_terminal(&id).await["status"], "cancelled");
    assert_eq!(
        client.timeline(&id).await,
        ["submitted", "started", "cancel_requested", "cancelled"]
    );
}

#[tokio::test]
async fn an_attempt_past_its_deadline_ends_as_timed_out() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let w = worker(&env, &api, "acme", "worker");
    let client = api.with_token(&env.token("acme", "jobs:write jobs:read"));
    register(&w, KIND, Value::Null).await;
    let id = id_of(
        &client
            .submit(json!({"kind": KIND, "timeout_ms": 300, "max_attempts": 1}))
            .await,
    );
    let job = lease_n(&w, 1).await.remove(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = report(&w, &job, "heartbeat", json!({})).await;
    assert_eq!(status, 409, "{body}");
    let dead = client.wait_terminal(&id).await;
    assert_eq!(dead["status"], "failed", "{dead}");
    assert_eq!(dead["error"]["class"], "timeout", "{dead}");
    let (status, _) = report(&w, &job, "complete", json!({"result": 1})).await;
    assert_eq!(status, 409, "a report after the timeout adds nothing");
    assert_eq!(
        client.timeline(&id).await,
        ["submitted", "started", "failed", "dead_lettered"]
    );
}

#[tokio::test]
async fn a_worker_sees_only_the_tenants_and_kinds_its_token_covers() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let acme = worker(&env, &api, "acme", "worker");
    register(&acme, KIND, Value::Null).await;
    let other = api.with_token(&env.token("other", "jobs:write jobs:read"));
    let theirs = id_of(&other.submit(json!({"kind": KIND})).await);

    // acme's worker does not get another tenant's job; a worker for every tenant does.
    assert!(lease(&acme, 5, 1_000).await.is_empty());
    let everyone = worker(&env, &api, "ops", "worker:any-tenant");
    let job = lease_n(&everyone, 1).await.remove(0);
    assert_eq!(
        (job["id"].as_str(), job["tenant"].as_str()),
        (Some(theirs.as_str()), Some("other"))
    );
    // acme's worker cannot report on it either.
    let (status, _) = report(&acme, &job, "heartbeat", json!({})).await;
    assert_eq!(status, 403);
    // A lease altered by the worker does not verify.
    let mut forged = job.clone();
    let token = job["lease"].as_str().unwrap();
    let flipped = if token.starts_with('e') { 'f' } else { 'e' };
    forged["lease"] = format!("{flipped}{}", &token[1..]).into();
    let (status, _) = report(&everyone, &forged, "complete", json!({})).await;
    assert_eq!(status, 403);
    // A lease is for its job only.
    let (status, _) = everyone
        .post(
            &format!("/v1/workers/jobs/{}/complete", uuid::Uuid::now_v7()),
            &json!({"lease": token}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = report(&everyone, &job, "complete", json!({})).await;
    assert_eq!(status, 200);

    // `admin` includes `worker` for its tenant, not for every tenant.
    let admin = worker(&env, &api, "acme", "admin");
    assert!(lease(&admin, 1, 0).await.is_empty());

    // A token limited to kinds covers those alone.
    let limited = api.with_token(&producers::auth::mint_for_kinds(
        &testkit::jwt(),
        "t",
        &events::Tenant::parse("acme").unwrap(),
        "worker",
        &["it.other".to_owned()],
        3600,
    ));
    let (status, _) = limited
        .post("/v1/workers/lease", &json!({"kinds": [KIND]}))
        .await;
    assert_eq!(status, 403);
    let res = limited
        .request(reqwest::Method::PUT, &format!("/v1/workers/kinds/{KIND}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    register(&limited, "it.other", Value::Null).await;

    // Bad requests, each refused with a problem.
    let client = api.with_token(&env.token("acme", "jobs:write jobs:read"));
    for (who, body, want) in [
        (&client, json!({"kinds": [KIND]}), 403),
        (&acme, json!({"kinds": []}), 422),
        (&acme, json!({"kinds": ["it.unknown"]}), 422),
        (&acme, json!({"kinds": [KIND], "wait_ms": 60_000}), 422),
        (&acme, json!({"kinds": [KIND], "max_jobs": 0}), 422),
        (&acme, json!({"kinds": [KIND], "extra": 1}), 400),
    ] {
        let (status, body) = who.post("/v1/workers/lease", &body).await;
        assert_eq!(status, want, "{body}");
        assert!(body["detail"].is_string(), "{body}");
    }
    let res = acme
        .request(reqwest::Method::PUT, "/v1/workers/kinds/noop")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409, "a built-in kind");
}

#[tokio::test]
async fn one_attempt_takes_one_outcome_whatever_the_reports_race() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let w = worker(&env, &api, "acme", "worker");
    let client = api.with_token(&env.token("acme", "jobs:write jobs:read"));
    register(&w, KIND, Value::Null).await;

    // complete and fail of one lease at the same moment: exactly one is taken.
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(id_of(
            &client
                .submit(json!({"kind": KIND, "max_attempts": 3}))
                .await,
        ));
    }
    let mut failed_first = 0;
    for job in lease_n(&w, 5).await {
        let (done, failed) = tokio::join!(
            report(&w, &job, "complete", json!({"result": 1})),
            report(&w, &job, "fail", json!({"error": {"message": "x"}})),
        );
        let taken = [done.0, failed.0].iter().filter(|s| **s == 200).count();
        assert_eq!(taken, 1, "complete {done:?}, fail {failed:?}");
        assert!([done.0, failed.0].contains(&409), "{done:?} {failed:?}");
        failed_first += usize::from(failed.0 == 200);
    }
    // Whichever was taken, the jobs end once: those that failed run attempt 2 and complete.
    let retries = if failed_first > 0 {
        lease_n(&w, failed_first).await
    } else {
        Vec::new()
    };
    for job in &retries {
        assert_eq!(job["attempt"], 2, "{job}");
        assert_eq!(
            report(&w, job, "complete", json!({"result": 2})).await.0,
            200
        );
    }
    for id in &ids {
        client.wait_terminal(id).await;
        let timeline = client.timeline(id).await;
        let ends = timeline
            .iter()
            .filter(|t| matches!(t.as_str(), "succeeded" | "dead_lettered" | "cancelled"))
            .count();
        assert_eq!(ends, 1, "{id}: {timeline:?}");
    }

    // A released lease is over: its holder's later reports are refused, the next holder's taken.
    let id = id_of(&client.submit(json!({"kind": KIND})).await);
    let first = lease_n(&w, 1).await.remove(0);
    assert_eq!(report(&w, &first, "release", json!({})).await.0, 200);
    let second = lease_n(&w, 1).await.remove(0);
    assert_eq!(
        (second["id"].as_str(), second["attempt"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
    for (what, body) in [
        ("heartbeat", json!({})),
        ("fail", json!({"error": {"message": "stale"}})),
        ("complete", json!({"result": "stale"})),
    ] {
        let (status, body) = report(&w, &first, what, body).await;
        assert_eq!(status, 409, "{what} on a released lease: {body}");
    }
    assert_eq!(
        report(&w, &second, "complete", json!({"result": "second"}))
            .await
            .0,
        200
    );
    assert_eq!(client.wait_terminal(&id).await["result"], "second");

    // `cancelled` is an answer to a cancellation, not an outcome a worker may choose.
    let id = id_of(&client.submit(json!({"kind": KIND})).await);
    let job = lease_n(&w, 1).await.remove(0);
    let (status, body) = report(&w, &job, "fail", json!({"error": {"class": "cancelled"}})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(report(&w, &job, "complete", json!({})).await.0, 200);
    client.wait_terminal(&id).await;
}

#[tokio::test]
async fn kinds_belong_to_who_registered_them_and_conveyor_keeps_its_own() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let acme = worker(&env, &api, "acme", "worker");
    let beta = worker(&env, &api, "beta", "worker");
    register(
        &acme,
        KIND,
        json!({"type": "object", "required": ["month"]}),
    )
    .await;
    register(
        &acme,
        KIND,
        json!({"type": "object", "required": ["month"]}),
    )
    .await;
    // Another tenant's worker cannot take it over (nor change its schema).
    let res = beta
        .request(reqwest::Method::PUT, &format!("/v1/workers/kinds/{KIND}"))
        .json(&json!({"schema": {"required": ["pwned"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let client = api.with_token(&env.token("acme", "jobs:write"));
    let (status, body) = client
        .post(
            "/v1/jobs",
            &json!({"kind": KIND, "payload": {"month": "x"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");

    // Built-in kinds are conveyor's own workers' to run: no worker of the protocol leases them.
    let (status, body) = acme
        .post(
            "/v1/workers/lease",
            &json!({"kinds": ["noop"], "wait_ms": 0}),
        )
        .await;
    assert_eq!(status, 409, "{body}");

    // A tenant-limited worker finds its tenant's job behind other tenants' jobs.
    let everyone = worker(&env, &api, "ops", "worker:any-tenant");
    register(&everyone, "it.shared", Value::Null).await;
    let other = api.with_token(&env.token("other", "jobs:write"));
    for _ in 0..3 {
        other.submit(json!({"kind": "it.shared"})).await;
    }
    let acme_client = api.with_token(&env.token("acme", "jobs:write jobs:read"));
    let mine = id_of(&acme_client.submit(json!({"kind": "it.shared"})).await);
    let (status, body) = acme
        .post(
            "/v1/workers/lease",
            &json!({"kinds": ["it.shared"], "max_jobs": 1, "wait_ms": 5000}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jobs"][0]["id"], mine.as_str(), "{body}");
    // The other tenant's jobs are still there for a worker that may run them.
    let (_, theirs) = everyone
        .post(
            "/v1/workers/lease",
            &json!({"kinds": ["it.shared"], "max_jobs": 10, "wait_ms": 3000}),
        )
        .await;
    assert!(!theirs["jobs"].as_array().unwrap().is_empty(), "{theirs}");
}

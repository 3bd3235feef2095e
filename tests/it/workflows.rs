//! Workflows: jobs that wait for other jobs (dependencies), and batches whose callback runs once,
//! after every member has ended, through crashes and rebuilds.

use std::time::Duration;

use serde_json::{json, Value};

use crate::BUILD;
use testkit::{id_of, Api, Env};

const STEP: &str = "it.step";

/// Leases up to `max` jobs of `STEP` as a worker of the worker protocol, waiting up to `wait_ms`.
async fn lease(w: &Api, max: u32, wait_ms: u64) -> Vec<Value> {
    lease_of(w, STEP, max, wait_ms).await
}

async fn lease_of(w: &Api, kind: &str, max: u32, wait_ms: u64) -> Vec<Value> {
    let (status, body) = w
        .post(
            "/v1/workers/lease",
            &json!({ "kinds": [kind], "max_jobs": max, "wait_ms": wait_ms, "worker": "it-flow" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["jobs"].as_array().unwrap().clone()
}

/// Leases the one next job of `kind`, waiting up to a minute for it.
async fn lease_one(w: &Api, kind: &str) -> Value {
    for _ in 0..30 {
        if let Some(job) = lease_of(w, kind, 1, 2_000).await.pop() {
            return job;
        }
    }
    panic!("no job of {kind} to lease");
}

async fn register(w: &Api, kind: &str) {
    let res = w
        .request(reqwest::Method::PUT, &format!("/v1/workers/kinds/{kind}"))
        .json(&json!({ "schema": null }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn complete(w: &Api, job: &Value, result: Value) {
    let (status, body) = w
        .post(
            &format!("/v1/workers/jobs/{}/complete", job["id"].as_str().unwrap()),
            &json!({ "lease": job["lease"], "result": result }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The stream sequence of the job's first event of type `name`, once projected.
async fn seq_of(env: &Env, id: &str, name: &str) -> i64 {
    env.settle().await;
    sqlx::query_scalar("SELECT min(seq) FROM job_events WHERE job_id = $1::uuid AND type = $2")
        .bind(id)
        .bind(name)
        .fetch_one(&env.db().await)
        .await
        .unwrap()
}

async fn waits_for(api: &Api, id: &str, reason: &str) -> Value {
    api.wait_for(id, 30, |j| j["waiting"]["reason"] == reason)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_diamond_runs_in_order_and_passes_results_along() {
    let env = Env::new(BUILD).await;
    let (_dev, acme) = env.spawn_http("dev").await;
    let worker = acme.with_token(&env.token("acme", "worker"));
    register(&worker, STEP).await;

    // A → (B, C) → D.
    let step = |deps: &[&str]| json!({ "kind": STEP, "depends_on": deps });
    let a = id_of(&acme.submit(step(&[])).await);
    let b = id_of(&acme.submit(step(&[&a])).await);
    let c = id_of(&acme.submit(step(&[&a])).await);
    let d = id_of(&acme.submit(step(&[&b, &c])).await);
    assert_eq!(acme.job(&d).await["depends_on"], json!([b, c]));

    // Only A may start; the others say why they wait.
    let first = lease_one(&worker, STEP).await;
    assert_eq!(first["id"], a.as_str());
    assert!(first.get("upstream").is_none(), "{first}");
    waits_for(&acme, &d, "dependencies").await;
    assert!(
        lease(&worker, 10, 500).await.is_empty(),
        "B, C and D wait for A"
    );
    complete(&worker, &first, json!({ "value": 1 })).await;

    // B and C start, each told A's result.
    let mut middle = Vec::new();
    for _ in 0..40 {
        middle.extend(lease(&worker, 10, 500).await);
        if middle.len() >= 2 {
            break;
        }
    }
    assert_eq!(middle.len(), 2, "{middle:?}");
    for job in &middle {
        assert_eq!(
            job["upstream"]["dependencies"],
            json!([{ "id": a, "status": "succeeded", "result": { "value": 1 } }]),
            "{job}"
        );
    }
    // D waits while one of B and C runs.
    let (bj, cj) = if middle[0]["id"] == b.as_str() {
        (&middle[0], &middle[1])
    } else {
        (&middle[1], &middle[0])
    };
    complete(&worker, bj, json!({ "value": 11 })).await;
    assert!(lease(&worker, 10, 1_500).await.is_empty());
    assert_eq!(acme.job(&d).await["status"], "queued");
    complete(&worker, cj, json!({ "value": 101 })).await;

    // D is told both results, in the order it named them.
    let mut last = Vec::new();
    for _ in 0..40 {
        last = lease(&worker, 10, 500).await;
        if !last.is_empty() {
            break;
        }
    }
    assert_eq!(last.len(), 1);
    let deps = &last[0]["upstream"]["dependencies"];
    assert_eq!(deps[0]["id"], b.as_str(), "{deps}");
    assert_eq!(deps[1]["id"], c.as_str(), "{deps}");
    let sum: i64 = deps
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["result"]["value"].as_i64().unwrap())
        .sum();
    complete(&worker, &last[0], json!({ "value": sum })).await;
    let done = acme.wait_terminal(&d).await;
    assert_eq!(done["result"], json!({ "value": 112 }), "{done}");
    assert!(done.get("waiting").is_none(), "{done}");
    // In the log: D started after both its dependencies ended.
    let started = seq_of(&env, &d, "started").await;
    assert!(started > seq_of(&env, &b, "succeeded").await);
    assert!(started > seq_of(&env, &c, "succeeded").await);
    assert_eq!(
        acme.timeline(&d).await,
        ["submitted", "waiting", "started", "succeeded"]
    );

    // A result too large to pass on says where it is.
    let big = id_of(
        &acme
            .submit(json!({ "kind": "noop", "payload": { "echo": "x".repeat(20_000) } }))
            .await,
    );
    assert_eq!(acme.wait_terminal(&big).await["status"], "succeeded");
    let after_big = id_of(&acme.submit(step(&[&big])).await);
    let leased = lease_one(&worker, STEP).await;
    assert_eq!(leased["id"], after_big.as_str());
    let told = &leased["upstream"]["dependencies"][0];
    assert!(told.get("result").is_none(), "{told}");
    assert_eq!(told["result_url"], format!("/v1/jobs/{big}/result"));
    complete(&worker, &leased, json!(null)).await;

    // Unknown jobs, and other tenants' jobs, cannot be depended on.
    let globex = acme.with_token(&env.token("globex", "jobs:write jobs:read"));
    for (who, deps) in [
        (&acme, json!([uuid::Uuid::now_v7()])),
        (&globex, json!([a])),
        (&acme, json!(["not-a-uuid"])),
    ] {
        let (status, body) = who
            .post("/v1/jobs", &json!({ "kind": "noop", "depends_on": deps }))
            .await;
        assert!(matches!(status, 400 | 422), "{status} {body}");
    }
    let too_many: Vec<String> = (0..33).map(|_| a.clone()).collect();
    let (status, _) = acme
        .post(
            "/v1/jobs",
            &json!({ "kind": "noop", "depends_on": too_many }),
        )
        .await;
    assert_eq!(status, 202, "the same job named twice counts once");
}

#[tokio::test]
async fn a_dependency_that_does_not_succeed_cancels_its_dependents() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let failing = id_of(
        &api.submit(json!({ "kind": "fail", "payload": { "fatal": true } }))
            .await,
    );
    let next = id_of(
        &api.submit(json!({ "kind": "noop", "depends_on": [failing] }))
            .await,
    );
    let after_next = id_of(
        &api.submit(json!({ "kind": "noop", "depends_on": [next] }))
            .await,
    );
    assert_eq!(api.wait_terminal(&failing).await["status"], "failed");
    for (id, on) in [(&next, &failing), (&after_next, &next)] {
        let job = api.wait_terminal(id).await;
        assert_eq!(job["status"], "cancelled", "{job}");
        assert_eq!(job["attempt"], 0, "it never started: {job}");
        let (_, events) = api.get(&format!("/v1/jobs/{id}/events")).await;
        let cancelled = events.as_array().unwrap().last().unwrap().clone();
        let status = if on == &failing {
            "failed"
        } else {
            "cancelled"
        };
        assert_eq!(
            cancelled["data"]["reason"],
            format!("dependency {on} {status}"),
            "{events}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_callback_runs_once_after_all_members_through_worker_and_scheduler_kills() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_WORKER_CONCURRENCY", "16");
    let (_api, api) = env.spawn_http("api").await;
    let _projector = env.spawn("projector").await;
    // The scheduler is active in one of the workers: both are killed in turn.
    let mut first = env.spawn("worker").await;
    let mut second = env.spawn("worker").await;
    let members: Vec<Value> = (0..1000)
        .map(|i| json!({ "kind": "sleep", "payload": { "ms": 20 + i % 7 } }))
        .collect();
    let (status, batch) = api.post("/v1/batches", &json!({ "jobs": members })).await;
    assert_eq!(status, 202, "{batch}");
    let id = id_of(&batch);
    assert_eq!(batch["jobs"].as_array().unwrap().len(), 1000);
    assert_eq!(batch["sealed"], true);

    let ended = |b: &Value| {
        let m = &b["members"];
        m["succeeded"].as_i64().unwrap()
            + m["failed"].as_i64().unwrap()
            + m["cancelled"].as_i64().unwrap()
    };
    let mut replacements = Vec::new();
    for (victim, at) in [(&mut first, 150), (&mut second, 500)] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let (_, b) = api.get(&format!("/v1/batches/{id}")).await;
            if ended(&b) >= at {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "stuck: {b}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        victim.kill().await;
        replacements.push(env.spawn("worker").await);
    }

    let done = api.wait_for(&id, 180, |j| j["status"] == "succeeded").await;
    assert_eq!(
        done["result"],
        json!({ "total": 1000, "succeeded": 1000, "failed": 0, "cancelled": 0 }),
        "the callback saw every member: {done}"
    );
    let (_, b) = api.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(b["members"]["total"], 1000, "{b}");
    assert_eq!(b["members"]["succeeded"], 1000, "{b}");
    assert_eq!(b["status"], "succeeded");

    // Once, and only after the last member ended, in the log.
    env.settle().await;
    let db = env.db().await;
    let starts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_events WHERE job_id = $1::uuid AND type = 'started'",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(starts, 1, "the callback ran once");
    let last_member: i64 = sqlx::query_scalar(
        "SELECT max(e.seq) FROM job_events e JOIN jobs j ON j.id = e.job_id
         WHERE j.batch = $1::uuid AND e.type = 'succeeded'",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    let callback_start: i64 = sqlx::query_scalar(
        "SELECT seq FROM job_events WHERE job_id = $1::uuid AND type = 'started'",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(
        callback_start > last_member,
        "the callback started before a member ended"
    );
    let terminals: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_events e JOIN jobs j ON j.id = e.job_id
         WHERE j.batch = $1::uuid AND e.type IN ('succeeded', 'dead_lettered', 'cancelled')",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(terminals, 1000, "each member ended exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_built_in_pages_seals_then_calls_back_and_cancelling_one_stops_it() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_WORKER_CONCURRENCY", "2");
    let (_dev, api) = env.spawn_http("dev").await;

    // Open, two pages (one repeated under its key), sealed: the callback waits for the seal.
    let (status, batch) = api
        .post(
            "/v1/batches",
            &json!({ "jobs": [{ "kind": "noop" }], "seal": false,
                     "callback": { "kind": "noop", "payload": { "echo": "done" } } }),
        )
        .await;
    assert_eq!(status, 202, "{batch}");
    let id = id_of(&batch);
    let page = json!({ "jobs": [{ "kind": "noop" }, { "kind": "noop" }] });
    let add = |key: &'static str| {
        api.request(reqwest::Method::POST, &format!("/v1/batches/{id}/jobs"))
            .header("Idempotency-Key", key)
            .json(&page)
    };
    let once: Value = add("page-1").send().await.unwrap().json().await.unwrap();
    let again: Value = add("page-1").send().await.unwrap().json().await.unwrap();
    assert_eq!(
        once["jobs"], again["jobs"],
        "a repeated page adds its members once"
    );
    let held = waits_for(&api, &id, "batch").await;
    assert_eq!(held["is_batch"], true, "{held}");
    let (_, view) = api.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(view["sealed"], false, "{view}");
    let members = loop {
        let (_, view) = api.get(&format!("/v1/batches/{id}")).await;
        if view["members"]["succeeded"] == 3 {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(members["members"]["total"], 3, "{members}");
    assert_eq!(
        api.job(&id).await["status"],
        "queued",
        "not sealed: no callback"
    );
    let (status, sealed) = api
        .post(&format!("/v1/batches/{id}/seal"), &json!({}))
        .await;
    assert_eq!(status, 200, "{sealed}");
    let done = api.wait_terminal(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], "done");
    let (status, late) = api.post(&format!("/v1/batches/{id}/jobs"), &page).await;
    assert_eq!(status, 409, "{late}");
    let (status, listed) = api.get(&format!("/v1/batches/{id}/jobs?limit=2")).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    let cursor = listed["next_cursor"].as_str().unwrap();
    let (_, rest) = api
        .get(&format!("/v1/batches/{id}/jobs?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest["items"][0]["batch"], id.as_str());

    // A batch cancelled mid-way: its callback never runs, its unended members never start.
    let slow: Vec<Value> = (0..30)
        .map(|_| json!({ "kind": "sleep", "payload": { "ms": 300 } }))
        .collect();
    let (status, batch) = api
        .post(
            "/v1/batches",
            &json!({ "jobs": slow, "callback": { "kind": "noop" } }),
        )
        .await;
    assert_eq!(status, 202, "{batch}");
    let doomed = id_of(&batch);
    loop {
        let (_, view) = api.get(&format!("/v1/batches/{doomed}")).await;
        if view["members"]["succeeded"].as_i64().unwrap() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, cancelled) = api
        .post(&format!("/v1/batches/{doomed}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 202, "{cancelled}");
    assert!(
        cancelled["cancelled"].as_i64().unwrap() >= 20,
        "{cancelled}"
    );
    assert_eq!(api.wait_terminal(&doomed).await["status"], "cancelled");
    let view = loop {
        let (_, view) = api.get(&format!("/v1/batches/{doomed}")).await;
        let m = &view["members"];
        if m["queued"] == 0 && m["running"] == 0 && m["retry_scheduled"] == 0 {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let m = &view["members"];
    assert_eq!(m["total"], 30, "{view}");
    assert!(m["cancelled"].as_i64().unwrap() >= 20, "{view}");
    assert!(!api.timeline(&doomed).await.contains(&"started".to_owned()));
    let (status, again) = api
        .post(&format!("/v1/batches/{doomed}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409, "{again}");

    // A job that is no batch is no batch; a bad member refuses the whole request.
    let plain = id_of(&api.submit(json!({ "kind": "noop" })).await);
    assert_eq!(api.get(&format!("/v1/batches/{plain}")).await.0, 404);
    let (status, refused) = api
        .post(
            "/v1/batches",
            &json!({ "jobs": [{ "kind": "noop" }, { "kind": "sleep", "payload": { "ms": -1 } }] }),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().starts_with("jobs[1]"),
        "{refused}"
    );

    // From the CLI: a file of 1,500 jobs as one batch, in two pages, sealed; then its progress.
    let file = std::env::temp_dir().join(format!("conveyor-batch-{}.jsonl", env.ns));
    std::fs::write(&file, "{\"kind\": \"noop\"}\n".repeat(1500)).unwrap();
    let vars = [
        ("CONVEYOR_URL", api.base.as_str()),
        ("CONVEYOR_TOKEN", &api.token),
    ];
    let file_arg = file.to_str().unwrap();
    let args = [
        "batches",
        "submit",
        "--file",
        file_arg,
        "--callback",
        "noop",
    ];
    let out = env.run_raw(&args, &vars, &["CONVEYOR_LOG"]).await;
    assert!(out.status.success(), "{out:?}");
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["sealed"], true, "{made}");
    let from_cli = id_of(&made);
    assert_eq!(api.wait_terminal(&from_cli).await["status"], "succeeded");
    let out = env
        .run_raw(&["batches", "get", &from_cli], &vars, &["CONVEYOR_LOG"])
        .await;
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["members"]["total"], 1500, "{shown}");
    assert_eq!(shown["members"]["succeeded"], 1500, "{shown}");
    let _ = std::fs::remove_file(&file);

    // The workflow state rebuilds as it was.
    env.settle().await;
    let before = env.read_models().await;
    let out = env.run(&["replay", "jobs"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        env.read_models().await,
        before,
        "a rebuild changed the workflow state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parent_fans_out_to_children_then_continues_or_waits_for_them() {
    let env = Env::new(BUILD).await;
    let (_dev, acme) = env.spawn_http("dev").await;
    let worker = acme.with_token(&env.token("acme", "worker"));
    register(&worker, "it.parent").await;
    register(&worker, "it.merge").await;

    // 50 children and a continuation: the parent ends, the continuation runs once all ended.
    let parent = id_of(&acme.submit(json!({ "kind": "it.parent" })).await);
    let leased = lease_one(&worker, "it.parent").await;
    let children: Vec<Value> = (0..50)
        .map(|i| json!({ "kind": "noop", "payload": { "echo": i } }))
        .collect();
    let (status, made) = worker
        .post(
            &format!("/v1/workers/jobs/{parent}/children"),
            &json!({ "lease": leased["lease"], "jobs": children,
                     "then": { "kind": "it.merge", "payload": { "of": parent } } }),
        )
        .await;
    assert_eq!(status, 202, "{made}");
    let kids: Vec<String> = made["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kids.len(), 50);
    let then = made["then"].as_str().unwrap().to_owned();
    complete(&worker, &leased, json!({ "fanned_out": 50 })).await;
    assert_eq!(acme.wait_terminal(&parent).await["status"], "succeeded");
    let merge = lease_one(&worker, "it.merge").await;
    assert_eq!(merge["id"], then.as_str());
    let members = &merge["upstream"]["members"];
    assert_eq!(members["total"], 50, "{merge}");
    assert_eq!(members["succeeded"], 50, "{merge}");
    let told: Vec<&str> = members["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(told, kids, "each child, in submission order");
    complete(&worker, &merge, json!({ "merged": 50 })).await;
    assert_eq!(acme.wait_terminal(&then).await["status"], "succeeded");
    assert!(
        seq_of(&env, &then, "started").await
            > seq_of(&env, kids.last().unwrap(), "succeeded").await
    );
    let (status, listed) = acme
        .get(&format!("/v1/jobs/{parent}/children?limit=1000"))
        .await;
    assert_eq!(status, 200, "{listed}");
    let listed = listed["items"].as_array().unwrap();
    assert_eq!(listed.len(), 51, "the children and the continuation");
    assert!(listed.iter().all(|c| c["parent"] == parent.as_str()));
    let order: Vec<&str> = listed.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(order[0], then, "the continuation, submitted first");
    let sent: Vec<&str> = kids.iter().map(String::as_str).collect();
    assert_eq!(order[1..], sent[..], "then the children as sent");
    assert_eq!(acme.job(&then).await["is_batch"], true);

    // Waiting for its children, holding no worker: the attempt ends, the next one starts once
    // they have all ended, told how.
    let waiter = id_of(&acme.submit(json!({ "kind": "it.parent" })).await);
    let first = lease_one(&worker, "it.parent").await;
    // A child may not wait for its parent: a cycle.
    let (status, refused) = worker
        .post(
            &format!("/v1/workers/jobs/{waiter}/children"),
            &json!({ "lease": first["lease"], "jobs": [{ "kind": "noop", "depends_on": [waiter] }] }),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    let kids_body = json!({ "lease": first["lease"],
                            "jobs": [{ "kind": "sleep", "payload": { "ms": 2500 } },
                                     { "kind": "sleep", "payload": { "ms": 2500 } },
                                     { "kind": "fail", "payload": { "fatal": true } }] });
    let post_kids = || {
        worker
            .request(
                reqwest::Method::POST,
                &format!("/v1/workers/jobs/{waiter}/children"),
            )
            .header("Idempotency-Key", "round-1")
            .json(&kids_body)
            .send()
    };
    let once: Value = post_kids().await.unwrap().json().await.unwrap();
    let again: Value = post_kids().await.unwrap().json().await.unwrap();
    assert_eq!(
        once["jobs"], again["jobs"],
        "a repeat submits the same children once"
    );
    let (wait_path, wait_body) = (
        format!("/v1/workers/jobs/{waiter}/wait"),
        json!({ "lease": first["lease"] }),
    );
    let wait = || worker.post(&wait_path, &wait_body);
    let (status, waited) = wait().await;
    assert_eq!(status, 200, "{waited}");
    assert_eq!(waited["status"], "waiting_for_children");
    let (status, again) = wait().await;
    assert_eq!(
        (status, &again["status"]),
        (200, &waited["status"]),
        "a retry answers as the first"
    );
    let held = waits_for(&acme, &waiter, "children").await;
    assert_eq!(held["status"], "queued", "{held}");
    let resumed = lease_one(&worker, "it.parent").await;
    assert_eq!(resumed["id"], waiter.as_str());
    assert_eq!(resumed["attempt"], 2);
    let told = &resumed["upstream"]["children"];
    assert_eq!(
        (&told["total"], &told["succeeded"], &told["failed"]),
        (&json!(3), &json!(2), &json!(1)),
        "{resumed}"
    );
    complete(&worker, &resumed, json!({ "done": true })).await;
    let done = acme.wait_terminal(&waiter).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        acme.timeline(&waiter).await,
        [
            "submitted",
            "started",
            "suspended",
            "waiting",
            "started",
            "succeeded"
        ]
    );

    // The same from a Rust handler: the built-in `fan_out`.
    let fan = id_of(
        &acme
            .submit(json!({ "kind": "fan_out",
                            "payload": { "count": 20, "kind": "sleep", "payload": { "ms": 50 } } }))
            .await,
    );
    let done = acme.wait_terminal(&fan).await;
    assert_eq!(
        done["result"],
        json!({ "total": 20, "succeeded": 20, "failed": 0, "cancelled": 0 }),
        "{done}"
    );
    assert_eq!(done["attempt"], 2);
    let (_, kids) = acme
        .get(&format!("/v1/jobs/{fan}/children?limit=100"))
        .await;
    assert_eq!(kids["items"].as_array().unwrap().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dependency_that_succeeds_while_the_projector_is_down_releases_its_dependent_once_back() {
    let env = Env::new(BUILD).await;
    let (_api, api) = env.spawn_http("api").await;
    let _worker = env.spawn("worker").await;
    let mut projector = env.spawn("projector").await;
    let first = id_of(
        &api.submit(json!({ "kind": "sleep", "payload": { "ms": 3000 } }))
            .await,
    );
    api.wait_for(&first, 30, |j| j["status"] == "running").await;
    let then = id_of(
        &api.submit(json!({ "kind": "noop", "depends_on": [first] }))
            .await,
    );
    // The dependency ends while nothing folds the log.
    projector.kill().await;
    let db = env.db().await;
    let ended = || async {
        let js = env.js().await;
        let stream = js
            .get_stream(format!("{}_EVENTS", env.ns.to_uppercase()))
            .await
            .unwrap();
        stream
            .direct_get_last_for_subject(format!("{}.events.acme.job.{first}.succeeded", env.ns))
            .await
            .is_ok()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ended().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dependency did not end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_events WHERE job_id = $1::uuid AND type = 'started'",
    )
    .bind(&then)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(started, 0, "nothing projected, nothing released");
    let js = env.js().await;
    let started_in_log = js
        .get_stream(format!("{}_EVENTS", env.ns.to_uppercase()))
        .await
        .unwrap()
        .direct_get_last_for_subject(format!("{}.events.acme.job.{then}.started", env.ns))
        .await
        .is_ok();
    assert!(
        !started_in_log,
        "the dependent started before the read model showed its dependency"
    );
    // Back: the dependent starts once the read model has caught up.
    let _projector = env.spawn("projector").await;
    let done = api.wait_terminal(&then).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(seq_of(&env, &then, "started").await > seq_of(&env, &first, "succeeded").await);
}

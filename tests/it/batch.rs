//! Batch submission: `POST /v1/jobs/batch` answers each job on its own, and
//! `conveyor jobs submit --file` sends a JSON Lines file through it.

use serde_json::{json, Value};

use crate::BUILD;
use testkit::Env;

#[tokio::test]
async fn a_batch_answers_each_job_and_runs_the_accepted_ones() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let post = |body: Value| {
        let api = api.clone();
        async move {
            let res = api
                .request(reqwest::Method::POST, "/v1/jobs/batch")
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    let (status, out) = post(json!({ "jobs": [
        { "kind": "noop", "payload": { "echo": 1 } },
        { "kind": "sleep", "payload": { "ms": 10 }, "idempotency_key": "nightly-1" },
        { "kind": "sleep", "payload": { "ms": "soon" } },
        { "kind": "teleport" },
        { "kind": "flaky", "payload": { "fail_times": 1 }, "max_attempts": 3 },
    ]}))
    .await;
    assert_eq!(status, 200, "{out}");
    let statuses: Vec<u64> = out["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [202, 202, 422, 422, 202], "{out}");
    assert_eq!(
        (out["accepted"].clone(), out["failed"].clone()),
        (json!(3), json!(2))
    );
    assert!(out["items"][2]["problem"]["detail"]
        .as_str()
        .unwrap()
        .contains("invalid payload"));
    let keyed = out["items"][1]["job"]["id"].as_str().unwrap().to_owned();

    // The same key again, in another batch: the original job.
    let (_, again) = post(json!({ "jobs": [
        { "kind": "sleep", "payload": { "ms": 10 }, "idempotency_key": "nightly-1" },
    ]}))
    .await;
    assert_eq!(again["items"][0]["status"], 200, "{again}");
    assert_eq!(again["items"][0]["job"]["id"], keyed.as_str());

    for item in out["items"].as_array().unwrap() {
        if let Some(id) = item["job"]["id"].as_str() {
            assert_eq!(api.wait_terminal(id).await["status"], "succeeded");
        }
    }
    let too_many: Vec<Value> = (0..1001).map(|_| json!({ "kind": "noop" })).collect();
    let (status, problem) = post(json!({ "jobs": too_many })).await;
    assert_eq!(status, 400, "{problem}");
    let (status, _) = post(json!({ "jobs": [] })).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_cli_submits_a_json_lines_file_in_batches() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_RATE_BURST", "5000");
    let (_dev, api) = env.spawn_http("dev").await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&env.ns);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jobs.jsonl");
    let mut lines: Vec<String> = (0..2500)
        .map(|i| json!({ "kind": "noop", "payload": { "n": i } }).to_string())
        .collect();
    lines.push(String::new());
    lines.push(json!({ "kind": "noop", "idempotency_key": "once" }).to_string());
    std::fs::write(&file, lines.join("\n")).unwrap();
    let submit = |token: String| {
        let (url, file) = (api.base.clone(), file.clone());
        let env = &env;
        async move {
            env.run(&[
                "jobs",
                "submit",
                "--url",
                &url,
                "--token",
                &token,
                "--file",
                file.to_str().unwrap(),
            ])
            .await
        }
    };
    let out = submit(api.token.clone()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("2501 accepted, 0 already submitted, 0 refused, of 2501 jobs"),
        "{stdout}"
    );
    env.settle().await;
    let db = env.db().await;
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(jobs, 2501);
}

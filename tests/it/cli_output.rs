//! What the client commands print, run as the real binary against `conveyor dev`: a table with
//! `--table` (the default on a terminal), and, piped or with `--json`, the API's JSON exactly as
//! the commands always printed it, so scripts that parse it keep working.

use serde_json::{json, Value};

use crate::BUILD;
use testkit::{id_of, Api, Env};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `conveyor args` against `api` with its token; stdout and stderr, failing if it did.
async fn conveyor(env: &Env, api: &Api, args: &[&str]) -> (String, String) {
    let vars = [
        ("CONVEYOR_URL", api.base.as_str()),
        ("CONVEYOR_TOKEN", &api.token),
    ];
    let out = env.run_raw(args, &vars, &["CONVEYOR_LOG"]).await;
    assert!(
        out.status.success(),
        "conveyor {args:?} failed: {}",
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

/// What the commands printed before tables: the API's answer, pretty, and a newline.
async fn json_as_before(api: &Api, path: &str) -> String {
    let (status, body) = api.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    format!("{}\n", serde_json::to_string_pretty(&body).unwrap())
}

#[tokio::test]
async fn jobs_list_is_a_table_when_asked_and_the_same_json_otherwise() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(id_of(&api.submit(json!({ "kind": "noop" })).await));
    }
    for id in &ids {
        api.wait_terminal(id).await;
    }

    let (table, _) = conveyor(&env, &api, &["jobs", "list", "--table"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 1 + ids.len(), "{table}");
    for column in [
        "ID", "KIND", "STATUS", "ATTEMPT", "PROGRESS", "AGE", "RUN TIME",
    ] {
        assert!(lines[0].contains(column), "header {:?}", lines[0]);
    }
    // Newest first, one line each, with the full id and the status.
    for (line, id) in lines[1..].iter().zip(ids.iter().rev()) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[..3], [id.as_str(), "noop", "succeeded"], "{table}");
    }

    // Piped, and with --json: byte for byte what the command printed before.
    let before = json_as_before(&api, "/v1/jobs?limit=20").await;
    let (piped, _) = conveyor(&env, &api, &["jobs", "list"]).await;
    assert_eq!(piped, before);
    let parsed: Value = serde_json::from_str(&piped).unwrap();
    assert_eq!(parsed["items"].as_array().unwrap().len(), ids.len());
    assert!(parsed["next_cursor"].is_null());
    let (explicit, _) = conveyor(&env, &api, &["jobs", "list", "--json"]).await;
    assert_eq!(explicit, before);

    // A page with more after it says how to get the rest, off stdout.
    let (page, hint) = conveyor(&env, &api, &["jobs", "list", "--table", "--limit", "2"]).await;
    assert_eq!(page.lines().count(), 3, "{page}");
    let cursor = hint
        .lines()
        .find_map(|l| l.strip_prefix("more: --cursor "))
        .unwrap_or_else(|| panic!("no cursor hint on stderr: {hint}"));
    let (rest, _) = conveyor(
        &env,
        &api,
        &[
            "jobs", "list", "--table", "--limit", "2", "--cursor", cursor,
        ],
    )
    .await;
    assert_eq!(rest.lines().count(), 2, "{rest}");
    assert!(rest.contains(&ids[0]), "{rest}");

    // Both at once is a mistake, said so.
    let vars = [
        ("CONVEYOR_URL", api.base.as_str()),
        ("CONVEYOR_TOKEN", &api.token),
    ];
    let out = env
        .run_raw(&["jobs", "list", "--json", "--table"], &vars, &[])
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn a_large_report_reads_as_a_short_block_and_its_timeline_as_a_table() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    // Jobs of several kinds and outcomes, so the report has several rows.
    let mut ids = vec![
        id_of(&api.submit(json!({ "kind": "noop" })).await),
        id_of(
            &api.submit(json!({ "kind": "sleep", "payload": {"ms": 10, "steps": 2} }))
                .await,
        ),
        id_of(
            &api.submit(json!({ "kind": "fail", "max_attempts": 1 }))
                .await,
        ),
        id_of(
            &api.submit(json!({ "kind": "flaky", "payload": {"fail_times": 1} }))
                .await,
        ),
    ];
    for id in &ids {
        api.wait_terminal(id).await;
    }
    let report = id_of(
        &api.submit(json!({ "kind": "report.job_stats", "payload": {"window_secs": 3600} }))
            .await,
    );
    let job = api.wait_terminal(&report).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(
        job["result"]["rows"].as_array().unwrap().len() >= 4,
        "{job}"
    );
    ids.push(report.clone());

    let path = format!("/v1/jobs/{report}");
    let before = json_as_before(&api, &path).await;
    let (piped, _) = conveyor(&env, &api, &["jobs", "get", &report]).await;
    assert_eq!(piped, before);
    assert!(
        piped.lines().count() > 40,
        "the JSON fills a screen: {piped}"
    );
    let (explicit, _) = conveyor(&env, &api, &["jobs", "get", &report, "--json"]).await;
    assert_eq!(explicit, before);

    let (block, _) = conveyor(&env, &api, &["jobs", "get", &report, "--table"]).await;
    assert!(block.lines().count() <= 40, "{block}");
    let field = |key: &str| {
        block
            .lines()
            .find_map(|l| l.strip_prefix(key).filter(|v| v.starts_with("  ")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no `{key}` in {block}"))
    };
    assert_eq!(field("id"), report);
    assert_eq!(field("kind"), "report.job_stats");
    assert_eq!(field("status"), "succeeded");
    assert!(field("result").contains("rows: ["), "{block}");
    // Every line fits the width a table is fitted to when stdout is no terminal.
    assert!(block.lines().all(|l| l.chars().count() <= 120), "{block}");

    // The timeline: a header and one line per event.
    let sleep = &ids[1];
    let events_path = format!("/v1/jobs/{sleep}/events");
    let (events, _) = conveyor(&env, &api, &["jobs", "events", sleep, "--table"]).await;
    let timeline = api.timeline(sleep).await;
    let lines: Vec<&str> = events.lines().collect();
    assert_eq!(lines.len(), 1 + timeline.len(), "{events}");
    assert!(
        lines[0].contains("TYPE") && lines[0].contains("SUMMARY"),
        "{events}"
    );
    for (line, ty) in lines[1..].iter().zip(&timeline) {
        assert!(line.contains(&format!("job.{ty}")), "{line} is not {ty}");
    }
    assert!(events.contains("attempt 1 on "), "{events}");
    let (piped, _) = conveyor(&env, &api, &["jobs", "events", sleep]).await;
    assert_eq!(piped, json_as_before(&api, &events_path).await);

    // Dead letters (an admin's): the failed job, with its error.
    let admin = api.with_token(&env.token("acme", "admin"));
    let failed = &ids[2];
    let (table, _) = conveyor(&env, &admin, &["dlq", "list", "--table"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].contains("ERROR") && lines[0].contains("DEAD-LETTERED"));
    assert!(lines[1].starts_with(failed.as_str()), "{table}");
    assert!(
        lines[1].contains("fail") && lines[1].contains("1/1"),
        "{table}"
    );
    let (piped, _) = conveyor(&env, &admin, &["dlq", "list"]).await;
    assert_eq!(
        piped,
        json_as_before(&admin, "/v1/admin/dead-letters?limit=50").await
    );
    let (show, _) = conveyor(&env, &admin, &["dlq", "show", failed, "--table"]).await;
    assert!(show.contains("job.dead_lettered"), "{show}");
    let (piped, _) = conveyor(&env, &admin, &["dlq", "show", failed]).await;
    let parsed: Value = serde_json::from_str(&piped).unwrap();
    assert_eq!(parsed["job"]["id"], failed.as_str());
    assert!(parsed["events"].as_array().unwrap().len() >= 3);
}

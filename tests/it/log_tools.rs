//! Export and import of the event log.

use serde_json::json;

use crate::BUILD;
use testkit::{id_of, Env};

#[tokio::test]
async fn export_then_import_elsewhere_rebuilds_identical_read_models() {
    let source = Env::new(BUILD).await;
    let (dev, api) = source.spawn_http("dev").await;
    let mut ids = Vec::new();
    for body in [
        json!({ "kind": "noop", "payload": { "echo": { "n": 1 } } }),
        json!({ "kind": "flaky", "payload": { "fail_times": 1 } }),
        json!({ "kind": "fail", "max_attempts": 2 }),
        json!({ "kind": "sleep", "payload": { "ms": 50, "steps": 2 } }),
    ] {
        ids.push(id_of(&api.submit(body).await));
    }
    let other = api.with_token(&source.token("globex", "jobs:write jobs:read"));
    ids.push(id_of(&other.submit(json!({ "kind": "noop" })).await));
    for id in &ids[..4] {
        api.wait_terminal(id).await;
    }
    other.wait_terminal(&ids[4]).await;
    drop(dev);

    // Operators tail the log directly, across tenants or for one.
    let lines_of = |out: std::process::Output| {
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let globex = lines_of(
        source
            .run(&["events", "tail", "--direct", "--tenant", "globex"])
            .await,
    );
    assert_eq!(globex.len(), 3, "{globex:?}");
    assert!(globex.iter().all(|l| l.contains("\"tenant\":\"globex\"")));
    let succeeded = lines_of(
        source
            .run(&[
                "events",
                "tail",
                "--direct",
                "--type",
                "job.succeeded",
                "--from-seq",
                "1",
            ])
            .await,
    );
    assert_eq!(
        succeeded.len(),
        4,
        "noop, flaky, sleep and globex's noop succeeded: {succeeded:?}"
    );

    let exported = source.run(&["events", "export"]).await.stdout;
    let lines = exported
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as u64;
    assert_eq!(
        lines,
        source.stream_messages("EVENTS").await,
        "one line per event"
    );
    let file = std::env::temp_dir().join(format!("{}.jsonl", source.ns));
    std::fs::write(&file, &exported).unwrap();
    let path = file.to_str().unwrap();

    let target = Env::new(BUILD).await;
    let first = target.run(&["events", "import", path]).await;
    assert!(
        String::from_utf8_lossy(&first.stdout).contains(&format!("({lines} new, 0 already there)"))
    );
    let again = target.run(&["events", "import", path]).await;
    assert!(
        String::from_utf8_lossy(&again.stdout).contains(&format!("(0 new, {lines} already there)")),
        "importing twice adds nothing: {}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_eq!(target.stream_messages("EVENTS").await, lines);

    let _projector = target.spawn("projector").await;
    assert_eq!(target.settle().await as u64, lines);
    for (table, order) in [
        ("jobs", "id"),
        ("job_events", "seq"),
        ("job_stats", "tenant, kind, status"),
    ] {
        let (a, b) = (
            source.table(table, order).await,
            target.table(table, order).await,
        );
        assert!(!a.is_empty(), "{table} has rows");
        assert_eq!(a, b, "{table} differs after export and import");
    }
    let _ = std::fs::remove_file(file);
}

//! The README's Usage section, run as a user runs it: `conveyor dev` with no configuration, the
//! banner's `export` lines in a shell with nothing else set, then every command of the section's
//! shell blocks, top to bottom, as the README writes it. The README cannot drift from what works.
//!
//! Read from the README itself, with three rules a reader applies too: `<id>` is the id the last
//! submission above printed; a command whose comment says `exits N` must exit N; a command that
//! follows a live stream (`--follow`, `curl -N`) runs for a few seconds and must print something.
//! Commands aimed at anything but this deployment (an identity provider's URL) are not run. The
//! one change: the `staging` namespace becomes one of this test's own, so runs never share it.

use std::process::Stdio;
use std::time::Duration;

use crate::BUILD;
use testkit::{Api, Env};

/// One command of the README, with the rule its comment sets.
#[derive(Debug)]
struct Step {
    command: String,
    exits: i32,
    live: bool,
}

/// The commands of the shell blocks of `## Usage` (up to the next `## `), in order.
fn usage_steps(readme: &str) -> Vec<Step> {
    let start = readme.find("\n## Usage\n").expect("a Usage section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    let section = &rest[..end];
    let mut steps = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in section.lines() {
        if line.starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        // Continuation lines join the command they continue.
        if let Some(part) = line.strip_suffix('\\') {
            pending.push_str(part);
            continue;
        }
        let full = format!("{pending}{line}");
        pending.clear();
        let (command, comment) = split_comment(&full);
        let command = command.trim();
        let runs_here = command.starts_with("conveyor ")
            || command.starts_with("printf ")
            || command.starts_with("DATABASE_URL=")
            || (command.starts_with("curl ") && command.contains("$CONVEYOR_URL"));
        if !runs_here {
            continue;
        }
        let exits = comment
            .split("exits ")
            .nth(1)
            .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .unwrap_or(0);
        steps.push(Step {
            live: command.contains("--follow") || command.starts_with("curl -N"),
            command: command.to_owned(),
            exits,
        });
    }
    steps
}

/// A shell line's command and its `#` comment (a `#` inside quotes is not one).
fn split_comment(line: &str) -> (&str, &str) {
    let (mut single, mut double) = (false, false);
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && (i == 0 || line[..i].ends_with(' ')) => {
                return (&line[..i], &line[i + 1..]);
            }
            _ => {}
        }
    }
    (line, "")
}

/// The first UUID in `text`.
fn first_uuid(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .find(|w| w.len() == 36 && uuid::Uuid::parse_str(w).is_ok())
        .map(str::to_owned)
}

#[tokio::test]
async fn the_readme_usage_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let steps = usage_steps(&readme);
    assert!(
        steps.len() >= 20,
        "the Usage section's commands: {steps:#?}"
    );

    // `conveyor dev` as `scripts/up` runs it: no secrets, nothing configured but the services.
    let env = Env::new(BUILD).await;
    let (_dev, mut lines) = env.spawn_lines(
        "dev",
        &[],
        &[
            "CONVEYOR_JWT_SECRET",
            "CONVEYOR_WEBHOOK_SECRET",
            "CONVEYOR_LOG",
        ],
    );
    let mut exports = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.recv().await {
            if let Some(export) = line.trim().strip_prefix("export ") {
                exports.push(format!("export {export}"));
            }
            if line.starts_with("Try: ") {
                return;
            }
        }
        panic!("conveyor dev ended before its banner");
    })
    .await
    .expect("the banner within 60 s");
    assert!(exports.len() >= 4, "{exports:?}");
    let exported = |name: &str| {
        exports
            .iter()
            .find_map(|e| e.strip_prefix(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("the banner exports no {name}: {exports:?}"))
            .to_owned()
    };
    // The banner's API and token, for the jobs this test makes to follow.
    let api = Api::new(&exported("CONVEYOR_URL"), &exported("CONVEYOR_TOKEN"));

    let staging = format!("{}stg", env.ns);
    let work = tempdir(&env.ns);
    let mut last_id: Option<String> = None;
    for step in &steps {
        let mut command = step.command.replace("staging", &staging);
        if command.contains("<id>") {
            let id = last_id
                .as_deref()
                .unwrap_or_else(|| panic!("`{}` names <id> before any submission", step.command));
            command = command.replace("<id>", id);
        }
        let script = format!("set -e\n{}\n{command}", exports.join("\n"));
        let mut child = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(&work)
            // Nothing of this suite's environment: only what the banner exports.
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &work)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run bash");
        let out = if step.live {
            // Something to follow: a job submitted while it runs.
            tokio::time::sleep(Duration::from_secs(1)).await;
            api.submit(serde_json::json!({ "kind": "noop" })).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(
                child.try_wait().unwrap().is_none(),
                "`{}` ended instead of following",
                step.command
            );
            child.start_kill().unwrap();
            child.wait_with_output().await.unwrap()
        } else {
            tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
                .await
                .unwrap_or_else(|_| panic!("`{}` still running after 120 s", step.command))
                .unwrap()
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("$ {}\n{}{}", step.command, stdout, stderr);
        if step.live {
            assert!(
                stdout.contains("job.submitted"),
                "`{}` did not show the job submitted meanwhile: {stdout}",
                step.command
            );
        } else {
            assert_eq!(
                out.status.code(),
                Some(step.exits),
                "`{}` exited {:?}: {stdout}{stderr}",
                step.command,
                out.status.code()
            );
        }
        let submits = command.contains("jobs submit ") && !command.contains("--file")
            || command.contains("batches submit ")
            || command.contains("-X POST $CONVEYOR_URL/v1/jobs");
        if submits {
            last_id = Some(
                first_uuid(&stdout)
                    .unwrap_or_else(|| panic!("`{}` printed no job id: {stdout}", step.command)),
            );
        }
    }

    // What the section promised: the long job was cancelled.
    let db = env.db().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let cancelled: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'cancelled'")
                .fetch_one(&db)
                .await
                .unwrap();
        if cancelled == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no job was cancelled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&work);
    cleanup_staging(&env, &staging).await;
}

fn tempdir(ns: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("conveyor-readme-{ns}"));
    std::fs::create_dir_all(&dir).expect("a working folder");
    dir
}

/// Removes the other namespace's streams and database, which the README's commands made.
async fn cleanup_staging(env: &Env, staging: &str) {
    let js = env.js().await;
    let upper = staging.to_uppercase();
    for name in [format!("{upper}_EVENTS"), format!("{upper}_COMMANDS")] {
        let _ = js.delete_stream(&name).await;
    }
    let admin = format!("{}/postgres", env.db_url.rsplit_once('/').unwrap().0);
    if let Ok(pool) = sqlx::PgPool::connect(&admin).await {
        let drop = format!("DROP DATABASE IF EXISTS conveyor_{staging} WITH (FORCE)");
        let _ = sqlx::query(&drop).execute(&pool).await;
    }
}

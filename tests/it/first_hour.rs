//! What a new user meets in the first hour with the CLI, run as the real binary: no secret in
//! `--help`, a `conveyor dev` banner whose lines make every command work in another shell, quiet
//! client commands, errors that say what to fix.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::BUILD;
use testkit::{jwt, Env};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn help_never_prints_a_secret() {
    let env = Env::new(BUILD).await;
    let secrets = [
        ("CONVEYOR_TOKEN", "token-value-that-must-stay-hidden"),
        (
            "CONVEYOR_JWT_SECRET",
            "jwt-secret-value-that-must-stay-hidden",
        ),
        (
            "CONVEYOR_WEBHOOK_SECRET",
            "webhook-secret-value-that-must-stay-hidden",
        ),
        (
            "DATABASE_URL",
            "postgres://postgres:password-that-must-stay-hidden@127.0.0.1:5432/x",
        ),
    ];
    for args in [
        &["jobs", "submit", "--help"][..],
        &["dev", "--help"],
        &["api", "--help"],
        &["notifier", "--help"],
        &["token", "--help"],
        &["replay", "--help"],
    ] {
        let out = env.run_raw(args, &secrets, &[]).await;
        assert!(out.status.success(), "{args:?}");
        let help = text(&out.stdout);
        assert!(!help.is_empty());
        for (var, value) in secrets {
            assert!(!help.contains(value), "`conveyor {args:?}` printed {var}");
        }
    }
}

#[tokio::test]
async fn the_dev_banner_exports_everything_the_cli_needs() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_JWT_SECRET", "")
        .set("CONVEYOR_WEBHOOK_SECRET", "");
    let (_dev, mut lines) = env.spawn_lines("dev", &[], &[]);
    let mut banner = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.recv().await {
            let done = line.starts_with("Try: ");
            banner.push(line);
            if done {
                return;
            }
        }
        panic!("conveyor dev ended before its banner: {banner:?}");
    })
    .await
    .expect("the banner within 60 s");

    // The `export` lines, as a shell would read them.
    let mut exported: Vec<(String, String)> = Vec::new();
    for line in banner
        .iter()
        .filter_map(|l| l.trim().strip_prefix("export "))
    {
        for word in shell_words(line) {
            let (k, v) = word.split_once('=').expect("NAME=value");
            exported.push((k.to_owned(), v.to_owned()));
        }
    }
    let get = |k: &str| {
        exported
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("the banner does not export {k}: {banner:#?}"))
    };
    assert_eq!(get("CONVEYOR_NATS_URL"), env.nats_url);
    assert_eq!(get("CONVEYOR_NAMESPACE"), env.ns);
    assert_eq!(get("DATABASE_URL"), env.db_url);
    // `conveyor` as printed in "Try: conveyor …" is on the exported PATH.
    let dir = get("PATH").trim_end_matches(":$PATH").to_owned();
    assert!(
        std::path::Path::new(&dir).join("conveyor").is_file(),
        "no conveyor in {dir}"
    );

    // With only what the banner exports (none of this suite's variables), a client command and
    // an operator command both work.
    let vars: Vec<(&str, &str)> = exported
        .iter()
        .filter(|(k, _)| k != "PATH")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let unset = [
        "CONVEYOR_NATS_URL",
        "CONVEYOR_NAMESPACE",
        "DATABASE_URL",
        "CONVEYOR_JWT_SECRET",
        "CONVEYOR_LOG",
    ];
    let out = env
        .run_raw(
            &["jobs", "submit", "noop", "--payload", "{}"],
            &vars,
            &unset,
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = env
        .run_raw(&["replay", "jobs", "--dry-run"], &vars, &unset)
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "operator commands log warnings only");
}

/// The words of a line of `NAME=value` assignments, with single quotes as a shell reads them.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            '"' if !quoted => {}
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[tokio::test]
async fn a_nats_server_too_old_is_named_with_the_variable_to_set() {
    let env = Env::new(BUILD).await;
    // A server on loopback that introduces itself as nats-server 2.9.10, as Debian's does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let info = json!({"server_id": "old", "server_name": "old", "version": "2.9.10",
                    "proto": 1, "host": "127.0.0.1", "port": port, "max_payload": 1048576,
                    "jetstream": true, "headers": true});
                let _ = write.write_all(format!("INFO {info}\r\n").as_bytes()).await;
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("PING") {
                        let _ = write.write_all(b"PONG\r\n").await;
                    }
                }
            });
        }
    });
    let url = format!("nats://127.0.0.1:{port}");
    let out = env
        .run_raw(
            &["replay", "jobs", "--dry-run"],
            &[("CONVEYOR_NATS_URL", &url)],
            &["CONVEYOR_LOG"],
        )
        .await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("nats-server 2.9.10 at {url} is too old"))
            && stderr.contains("set CONVEYOR_NATS_URL"),
        "{stderr}"
    );
}

#[tokio::test]
async fn client_commands_log_warnings_only() {
    let env = Env::new(BUILD).await;
    let (_dev, api) = env.spawn_http("dev").await;
    let vars = [
        ("CONVEYOR_URL", api.base.as_str()),
        ("CONVEYOR_TOKEN", &api.token),
    ];
    for args in [&["jobs", "list"][..], &["migrate"], &["events", "export"]] {
        let out = env.run_raw(args, &vars, &["CONVEYOR_LOG"]).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        // What a command reports of itself may go to stderr (`exported 0 events`), logs not.
        let stderr = text(&out.stderr);
        assert!(
            !stderr.contains("INFO") && !stderr.contains("async_nats"),
            "`conveyor {args:?}` logged: {stderr}"
        );
    }
    // Asked for, they log.
    let out = env
        .run_raw(&["migrate"], &[("CONVEYOR_LOG", "debug")], &[])
        .await;
    assert!(!out.stderr.is_empty());
}

#[tokio::test]
async fn a_bad_payload_of_a_built_in_kind_lists_its_schema_violations() {
    let env = Env::new(BUILD).await;
    let (_api, api) = env.spawn_http("api").await;
    let (status, problem) = api
        .post(
            "/v1/jobs",
            &json!({"kind": "sleep", "payload": {"ms": "soon", "steps": 0}}),
        )
        .await;
    assert_eq!(status, 422);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("/ms") && detail.contains("\"soon\" is not of type \"integer\""),
        "{detail}"
    );
    assert!(detail.contains("/steps"), "every violation: {detail}");
    // The CLI shows the same.
    let vars = [
        ("CONVEYOR_URL", api.base.as_str()),
        ("CONVEYOR_TOKEN", &api.token),
    ];
    let out = env
        .run_raw(
            &["jobs", "submit", "sleep", "--payload", r#"{"ms": "soon"}"#],
            &vars,
            &[],
        )
        .await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("is not of type \"integer\""), "{stderr}");
    assert!(!stderr.contains("expected u64"), "{stderr}");
}

#[tokio::test]
async fn token_errors_say_what_is_wrong() {
    let env = Env::new(BUILD).await;
    let (_api, api) = env.spawn_http("api").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |exp: u64, aud: &str| {
        json!({"sub": "t", "tenant": "acme", "scope": "jobs:read", "exp": exp,
               "iss": "conveyor", "aud": aud})
    };
    let other_secret =
        producers::JwtSettings::hs256("another-secret-of-thirty-two-bytes-0123456789");
    for (token, says) in [
        (
            producers::auth::encode(&jwt(), &claims(now - 3600, "conveyor")),
            "it has expired",
        ),
        (
            producers::auth::encode(&jwt(), &claims(now + 600, "someone-else")),
            "wrong audience",
        ),
        (
            producers::auth::encode(&other_secret, &claims(now + 600, "conveyor")),
            "the signature does not verify",
        ),
        ("not-a-token".to_owned(), "it is not a JWT"),
    ] {
        let out = env
            .run_raw(
                &["jobs", "list"],
                &[
                    ("CONVEYOR_URL", api.base.as_str()),
                    ("CONVEYOR_TOKEN", &token),
                ],
                &["CONVEYOR_LOG"],
            )
            .await;
        assert!(!out.status.success());
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("401") && stderr.contains(says),
            "wanted `{says}`: {stderr}"
        );
        assert!(!stderr.contains("InvalidToken") && !stderr.contains("ExpiredSignature"));
    }
}

#[tokio::test]
async fn a_file_over_the_rate_limit_is_submitted_whole_and_resumes_when_run_again() {
    let mut env = Env::new(BUILD).await;
    // 200 a second, bursts of 1,000 (the default burst): the second batch of 1,000 waits about
    // five seconds for the rate, however fast the first went in. Only the API runs: the jobs
    // wait.
    env.set("CONVEYOR_RATE_LIMIT", "200");
    let (_api, api) = env.spawn_http("api").await;
    let path = std::env::temp_dir().join(format!("{}-jobs.jsonl", env.ns));
    let lines: Vec<String> = (0..2_500)
        .map(|i| json!({"kind": "noop", "payload": {"n": i}}).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let file = path.to_str().unwrap();
    let vars = [
        ("CONVEYOR_URL", api.base.as_str()),
        ("CONVEYOR_TOKEN", &api.token),
    ];

    // A token that may not submit: nothing gets in, and the summary says where it stopped.
    let reader = env.token("acme", "jobs:read");
    let out = env
        .run_raw(
            &["jobs", "submit", "--file", file],
            &[
                ("CONVEYOR_URL", api.base.as_str()),
                ("CONVEYOR_TOKEN", &reader),
            ],
            &["CONVEYOR_LOG"],
        )
        .await;
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        "0 accepted, 0 already submitted, 0 refused, of 2500 jobs; stopped at line 1, 2500 not sent"
    );
    assert!(text(&out.stderr).contains("run the same command again"));

    let out = submit_file(&env, file, &vars).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        text(&out.stdout).trim(),
        "2500 accepted, 0 already submitted, 0 refused, of 2500 jobs"
    );
    assert!(
        stderr.contains("429") && stderr.contains("(Retry-After)"),
        "the wait is shown: {stderr}"
    );
    // Again: every line is found already submitted, and no job is made twice.
    let out = submit_file(&env, file, &vars).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "0 accepted, 2500 already submitted, 0 refused, of 2500 jobs"
    );
    let _ = std::fs::remove_file(&path);
}

async fn submit_file(env: &Env, file: &str, vars: &[(&str, &str)]) -> std::process::Output {
    env.run_raw(&["jobs", "submit", "--file", file], vars, &["CONVEYOR_LOG"])
        .await
}

//! Only `conveyor dev` runs on development secrets: every other role that verifies tokens or signs
//! webhooks refuses to start without a secret of its own, with one line naming the variable.

use crate::BUILD;
use testkit::Env;

const DEV_JWT_SECRET: &str = "conveyor-development-secret-do-not-use-in-production";
const DEV_WEBHOOK_SECRET: &str = "conveyor-development-webhook-secret";
const GOOD: &str = "a-secret-of-thirty-two-bytes-or-more-0123456789";

/// Runs `role` with these secrets (`None`: unset) and returns its last stderr line, asserting
/// that it refused to start.
async fn refused(env: &Env, role: &str, jwt: Option<&str>, webhook: Option<&str>) -> String {
    let mut vars = Vec::new();
    let mut unset = Vec::new();
    for (var, value) in [
        ("CONVEYOR_JWT_SECRET", jwt),
        ("CONVEYOR_WEBHOOK_SECRET", webhook),
    ] {
        match value {
            Some(v) => vars.push((var, v)),
            None => unset.push(var),
        }
    }
    let out = env.run_raw(&[role], &vars, &unset).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "conveyor {role} started with jwt {jwt:?}, webhook {webhook:?}: {stderr}"
    );
    stderr.lines().last().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn api_and_notifier_refuse_missing_public_or_short_secrets() {
    let env = Env::new(BUILD).await;

    let line = refused(&env, "api", None, Some(GOOD)).await;
    assert!(
        line.contains("CONVEYOR_JWT_SECRET is not set") && line.contains("openssl rand -hex 32"),
        "{line}"
    );
    let line = refused(&env, "api", Some(DEV_JWT_SECRET), Some(GOOD)).await;
    assert!(
        line.contains("CONVEYOR_JWT_SECRET is the public development secret"),
        "{line}"
    );
    let line = refused(&env, "api", Some("short-secret"), Some(GOOD)).await;
    assert!(
        line.contains("CONVEYOR_JWT_SECRET is shorter than 32 bytes"),
        "{line}"
    );

    let line = refused(&env, "api", Some(GOOD), None).await;
    assert!(
        line.contains("CONVEYOR_WEBHOOK_SECRET is not set"),
        "{line}"
    );
    let line = refused(&env, "api", Some(GOOD), Some(DEV_WEBHOOK_SECRET)).await;
    assert!(
        line.contains("CONVEYOR_WEBHOOK_SECRET is the public development secret"),
        "{line}"
    );
    let line = refused(&env, "notifier", None, None).await;
    assert!(
        line.contains("CONVEYOR_WEBHOOK_SECRET is not set"),
        "{line}"
    );
    let line = refused(&env, "notifier", None, Some("tiny")).await;
    assert!(
        line.contains("CONVEYOR_WEBHOOK_SECRET is shorter than 32 bytes"),
        "{line}"
    );
    // Each refusal is one line: nothing else was started or logged.
    let out = env
        .run_raw(
            &["api"],
            &[("CONVEYOR_WEBHOOK_SECRET", GOOD)],
            &["CONVEYOR_JWT_SECRET"],
        )
        .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().count(),
        1,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_identity_provider_needs_no_shared_secret() {
    // With RS256 keys from a JWKS, the API needs no HS256 secret (the webhook secret still).
    let env = Env::new(BUILD).await;
    let line = refused(&env, "api", None, None).await;
    assert!(line.contains("CONVEYOR_JWT_SECRET"), "{line}");
    let out = env
        .run_raw(
            &["api"],
            &[
                ("CONVEYOR_JWT_ALGORITHM", "RS256"),
                ("CONVEYOR_JWKS_URL", "http://127.0.0.1:9/jwks"),
            ],
            &["CONVEYOR_JWT_SECRET", "CONVEYOR_WEBHOOK_SECRET"],
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .contains("CONVEYOR_WEBHOOK_SECRET is not set"),
        "{stderr}"
    );
}

#[tokio::test]
async fn dev_keeps_development_secrets_to_loopback() {
    let env = Env::new(BUILD).await;
    let out = env
        .run_raw(
            &["dev"],
            &[("CONVEYOR_HTTP_ADDR", "0.0.0.0:0")],
            &["CONVEYOR_JWT_SECRET", "CONVEYOR_WEBHOOK_SECRET"],
        )
        .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("with the public development secret")
            && stderr.contains("CONVEYOR_JWT_SECRET"),
        "{stderr}"
    );
}

#[tokio::test]
async fn dev_still_runs_on_development_secrets() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_JWT_SECRET", "")
        .set("CONVEYOR_WEBHOOK_SECRET", "");
    let (_dev, api) = env.spawn_http("dev").await;
    // A token made with the development secret is accepted by `conveyor dev`, and only there.
    let dev = producers::JwtSettings::hs256(DEV_JWT_SECRET);
    let token = producers::auth::mint(
        &dev,
        "developer",
        &events::Tenant::parse("dev").unwrap(),
        "jobs:read",
        60,
    );
    let (status, body) = api.with_token(&token).get("/v1/jobs").await;
    assert_eq!(status, 200, "{body}");
}

//! Property test of request parsing: arbitrary bodies, headers, paths and query strings sent
//! through the whole router (against the real NATS and Postgres) never make it panic or answer
//! 500, and every error is a problem+json body with the status it carries.
//!
//! Bounded: `PROPTEST_CASES` cases (default 1000), so it fits in the suite's time; seeded
//! (`PROPTEST_RNG_SEED`), so a failure reproduces.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt as _;

use crate::BUILD;
use testkit::Env;

/// JSON values shaped like submissions: the known fields, some unknown ones, any values.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[ -~]{0,40}".prop_map(Value::from),
        prop::sample::select(vec![
            "noop",
            "sleep",
            "flaky",
            "fail",
            "report.job_stats",
            "x.y"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec![
                        "kind",
                        "payload",
                        "max_attempts",
                        "timeout_ms",
                        "run_at",
                        "webhook",
                        "url",
                        "ms",
                        "steps",
                        "fail_times",
                        "tenant",
                        "status",
                    ])
                    .prop_map(str::to_owned),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let submission = (
        json_value(),
        prop::sample::select(vec!["noop", "sleep", "flaky", "fail"]),
    )
        .prop_map(|(payload, kind)| {
            json!({ "kind": kind, "payload": payload })
                .to_string()
                .into_bytes()
        });
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        3 => submission,
    ]
}

fn path() -> impl Strategy<Value = (Method, String)> {
    // Characters a URI may carry (percent-escapes included, valid or not).
    let segment = "[A-Za-z0-9._~!$&'()*+,;=:@%-]{0,40}";
    let query = "[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,60}";
    prop_oneof![
        4 => Just((Method::POST, "/v1/jobs".to_owned())),
        1 => query.prop_map(|q| (Method::GET, format!("/v1/jobs?{q}"))),
        1 => segment.prop_map(|s| (Method::GET, format!("/v1/jobs/{s}"))),
        1 => segment.prop_map(|s| (Method::POST, format!("/v1/jobs/{s}/cancel"))),
        1 => segment.prop_map(|s| (Method::GET, format!("/v1/jobs/{s}/events"))),
        1 => query.prop_map(|q| (Method::GET, format!("/v1/events?{q}"))),
        1 => Just((Method::GET, "/v1/kinds".to_owned())),
        1 => segment.prop_map(|s| (Method::POST, format!("/v1/admin/dead-letters/{s}/redrive"))),
    ]
}

/// Header values: printable strings, and near-misses of the valid forms.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,80}",
        "00-[0-9a-f]{32}-[0-9a-f]{16}-0[0-9]",
        "[0-9]{1,25}",
        Just(String::new()),
    ]
}

#[test]
fn arbitrary_requests_never_crash_the_api_or_answer_500() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (env, app) = rt.block_on(async {
        let env = Env::new(BUILD).await;
        let mut settings = bus::BusSettings::new(
            &env.nats_url,
            events::Namespace::parse(&env.ns).unwrap(),
            "fuzz",
        );
        settings.fail_fast = true;
        let bus = bus::Bus::connect(&settings).await.unwrap();
        let db = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(&env.db_url)
            .unwrap();
        let mut api = producers::ApiSettings::new(testkit::jwt());
        api.read_your_writes_wait = Duration::from_millis(20);
        api.limits = producers::Limits {
            submit_rate: 0,
            max_active_jobs: 0,
            ..producers::Limits::default()
        };
        let state = producers::AppState::new(bus, db, api, None).await.unwrap();
        (env, producers::app(state))
    });
    let token = env.token("acme", "jobs:write jobs:read events:read");
    let app = Arc::new(app);
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1000);
    // A fixed seed by default, so a run is reproducible; `PROPTEST_RNG_SEED` explores others.
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_124);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        ..ProptestConfig::default()
    });
    let strategy = (
        path(),
        body(),
        prop_oneof![
            3 => Just(Some("application/json")),
            1 => prop::option::of(prop::sample::select(vec![
                "text/plain",
                "application/json; charset=utf-8",
                "application/x-www-form-urlencoded",
            ])),
        ],
        prop::option::weighted(0.3, header_value()),
        prop::option::weighted(0.3, header_value()),
        prop::option::weighted(0.3, header_value()),
        // Mostly the valid token, so requests get past authentication.
        prop::option::weighted(0.15, header_value()),
    );
    runner
        .run(
            &strategy,
            |((method, uri), body, ctype, traceparent, key, last_id, auth)| {
                let mut req = Request::builder().method(method).uri(&uri);
                if let Some(c) = ctype {
                    req = req.header("content-type", c);
                }
                for (name, value) in [
                    ("traceparent", traceparent),
                    ("idempotency-key", key),
                    ("last-event-id", last_id),
                ] {
                    if let Some(v) = value {
                        req = req.header(name, v);
                    }
                }
                req = req.header(
                    "authorization",
                    auth.map_or_else(|| format!("Bearer {token}"), |a| format!("Bearer {a}")),
                );
                let Ok(req) = req.body(Body::from(body)) else {
                    // Not expressible as an HTTP request (e.g. an invalid URI): nothing to send.
                    return Ok(());
                };
                let res = rt.block_on((*app).clone().oneshot(req)).unwrap();
                let status = res.status().as_u16();
                *seen.lock().unwrap().entry(status).or_default() += 1;
                prop_assert!(status != 500, "{uri} answered 500");
                if status >= 400 {
                    let ctype = res.headers().get("content-type").cloned();
                    prop_assert_eq!(
                        ctype.as_ref().and_then(|c| c.to_str().ok()),
                        Some("application/problem+json"),
                        "{} {}",
                        uri,
                        status
                    );
                    let body = rt
                        .block_on(axum::body::to_bytes(res.into_body(), 1 << 20))
                        .unwrap();
                    let problem: Value = serde_json::from_slice(&body).unwrap();
                    prop_assert_eq!(problem["status"].as_u64(), Some(u64::from(status)));
                    prop_assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
                }
                Ok(())
            },
        )
        .unwrap();
    let seen = seen.into_inner().unwrap();
    eprintln!("statuses over {cases} requests: {seen:?}");
    assert!(
        seen.values().sum::<u32>() * 10 >= cases * 9,
        "most generated requests are valid HTTP: {seen:?}"
    );
    // The generator reaches past the front door: accepted jobs and each kind of refusal.
    for status in [202, 400, 401, 404, 422] {
        assert!(seen.contains_key(&status), "no {status} in {seen:?}");
    }
}

//! Webhook targets against server-side request forgery, with private targets refused
//! (`CONVEYOR_ALLOW_PRIVATE_WEBHOOKS=false`) and the roles resolving webhook hosts through a
//! name server of the test's own on 127.0.0.1 (`CONVEYOR_DNS_SERVER`). 127.0.0.2 is allowed
//! (`CONVEYOR_WEBHOOK_ALLOW_CIDRS`) and stands for a public host; 127.0.0.1 stands for an
//! internal one. Every connection stays on loopback.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::Router;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata, RData, Record, RecordType};
use serde_json::{json, Value};

use crate::BUILD;
use testkit::{Api, Env};

/// What the test name server does with an A query.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// One A record, TTL 0.
    A(Ipv4Addr),
    /// NXDOMAIN.
    NoSuchName,
    /// Read it and never answer.
    Silence,
}

/// How the name server answers the `n`th (from 0) A query for a name (lowercase, no final dot).
type Zone = dyn Fn(&str, usize) -> Answer + Send + Sync;

/// A UDP name server on 127.0.0.1 that counts the queries it gets. AAAA queries are answered
/// with no records (or not at all, for a silent name).
struct Dns {
    addr: SocketAddr,
    /// Every query received, in order: name and type.
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
}

impl Dns {
    async fn start(zone: impl Fn(&str, usize) -> Answer + Send + Sync + 'static) -> Self {
        let zone: Arc<Zone> = Arc::new(zone);
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let queries: Arc<Mutex<Vec<(String, RecordType)>>> = Arc::default();
        let log = queries.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let Some(q) = query.queries.first().cloned() else {
                    continue;
                };
                let name = q.name.to_ascii().trim_end_matches('.').to_lowercase();
                let nth = {
                    let mut log = log.lock().unwrap();
                    let nth = log
                        .iter()
                        .filter(|(n, t)| *n == name && *t == q.query_type)
                        .count();
                    log.push((name.clone(), q.query_type));
                    nth
                };
                let answer = zone(&name, nth);
                let mut reply = Message::response(query.metadata.id, OpCode::Query);
                reply.metadata.message_type = MessageType::Response;
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.metadata.authoritative = true;
                reply.add_query(q.clone());
                match (answer, q.query_type) {
                    (Answer::Silence, _) => continue,
                    (Answer::NoSuchName, _) => {
                        reply.metadata.response_code = ResponseCode::NXDomain;
                    }
                    (Answer::A(ip), RecordType::A) => {
                        reply.add_answer(Record::from_rdata(
                            q.name.clone(),
                            0,
                            RData::A(rdata::A(ip)),
                        ));
                    }
                    // No AAAA (or other) records: an empty answer.
                    (Answer::A(_), _) => {}
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
            }
        });
        Self { addr, queries }
    }

    /// Queries received so far for names matching `name` (of any type).
    fn count(&self, name: impl Fn(&str) -> bool) -> usize {
        self.queries
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| name(n))
            .count()
    }

    /// A queries received so far for `name`.
    fn a_queries(&self, name: &str) -> usize {
        self.queries
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, t)| n == name && *t == RecordType::A)
            .count()
    }
}

/// Private targets refused, 127.0.0.2 allowed, webhook hosts resolved by `dns`.
fn guarded(env: &mut Env, dns: &Dns) {
    env.set("CONVEYOR_ALLOW_PRIVATE_WEBHOOKS", "false")
        .set("CONVEYOR_WEBHOOK_ALLOW_CIDRS", "127.0.0.2/32")
        .set("CONVEYOR_DNS_SERVER", &dns.addr.to_string());
}

/// An HTTP receiver on `ip:port` that counts requests to any path and answers `status`, closing
/// the connection (so the notifier's next attempt connects, and resolves, afresh).
async fn receiver(ip: &str, port: u16, status: StatusCode) -> Option<Arc<AtomicUsize>> {
    let listener = tokio::net::TcpListener::bind((ip, port)).await.ok()?;
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            (status, [(header::CONNECTION, "close")])
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Some(hits)
}

/// Receivers on 127.0.0.2 and 127.0.0.1 on one port: (port, public, internal).
async fn receiver_pair(public: StatusCode) -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    for _ in 0..20 {
        let probe = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let (Some(outside), Some(inside)) = (
            receiver("127.0.0.2", port, public).await,
            receiver("127.0.0.1", port, StatusCode::OK).await,
        ) else {
            continue;
        };
        return (port, outside, inside);
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// Polls the tenant's failed deliveries until one is listed.
async fn first_failed(admin: &Api) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = admin.get("/v1/admin/webhooks/failed").await;
        assert_eq!(status, 200, "{body}");
        if let Some(item) = body["items"].as_array().and_then(|a| a.first()).cloned() {
            return item;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed delivery was recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A time no job of these tests reaches: they are accepted but never run.
fn never() -> String {
    (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339()
}

#[tokio::test]
async fn a_name_that_rebinds_to_an_internal_address_never_gets_a_request_there() {
    // hook.test answers the allowed address to the API's check and to the first two delivery
    // attempts, then the internal one.
    let dns = Dns::start(|name, nth| match (name, nth) {
        ("hook.test", 0..=2) => Answer::A(Ipv4Addr::new(127, 0, 0, 2)),
        ("hook.test", _) => Answer::A(Ipv4Addr::LOCALHOST),
        _ => Answer::NoSuchName,
    })
    .await;
    let (port, outside, inside) = receiver_pair(StatusCode::INTERNAL_SERVER_ERROR).await;
    let mut env = Env::new(BUILD).await;
    guarded(&mut env, &dns);
    env.set("CONVEYOR_WEBHOOK_MAX_ATTEMPTS", "8");
    // The API and the notifier as processes of their own: each reads the settings.
    let (_api, api) = env.spawn_http("api").await;
    let _worker = env.spawn_ops("worker").await;
    let _notifier = env.spawn_ops("notifier").await;
    let admin = api.with_token(&env.token("acme", "admin"));
    let url = format!("http://hook.test:{port}/hooks/done?token=s3cret");
    let (status, body) = api
        .post(
            "/v1/jobs",
            &json!({ "kind": "noop", "webhook": { "url": url } }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        dns.a_queries("hook.test"),
        1,
        "the API looked the host up once"
    );

    let failed = first_failed(&admin).await;
    let error = failed["last_error"].as_str().unwrap();
    eprintln!(
        "failed: {failed}; A queries: {}; outside: {}; inside: {}",
        dns.a_queries("hook.test"),
        outside.load(Ordering::SeqCst),
        inside.load(Ordering::SeqCst)
    );
    assert_eq!(
        inside.load(Ordering::SeqCst),
        0,
        "the internal receiver got a request"
    );
    // Each attempt resolved once and connected to what it resolved: two to the allowed address
    // (answered 500), then the name pointed inside and the delivery was refused for good, long
    // before its 8 attempts.
    assert_eq!(outside.load(Ordering::SeqCst), 2);
    assert_eq!(dns.a_queries("hook.test"), 4);
    assert_eq!(failed["attempts"], 3, "{failed}");
    assert!(error.starts_with("refused: "), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
}

#[tokio::test]
async fn delivery_errors_never_show_the_query_or_credentials_of_the_url() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_WEBHOOK_MAX_ATTEMPTS", "2");
    let (dev, api) = env.spawn_http("dev").await;
    let admin = api.with_token(&env.token("acme", "admin"));
    // A port nothing listens on: every attempt fails to connect.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Secrets where receivers put them: user information, path (as Slack's) and query.
    let url =
        format!("http://user:pw-s3cret@127.0.0.1:{closed}/hooks/path-s3cret?token=tok-s3cret&b=1");
    api.submit(json!({ "kind": "noop", "webhook": { "url": url } }))
        .await;
    let failed = first_failed(&admin).await;
    let error = failed["last_error"].as_str().unwrap();
    eprintln!("last_error: {error}");
    assert!(error.starts_with("cannot reach the endpoint"), "{error}");
    assert_eq!(failed["attempts"], 2, "{failed}");
    let log = std::fs::read_to_string(&dev.log).unwrap();
    for (what, text) in [("last_error", error), ("the notifier's log", log.as_str())] {
        assert!(!text.contains("s3cret"), "{what} shows a secret of the URL");
        assert!(
            !text.contains("token="),
            "{what} shows the query of the URL"
        );
    }
    assert!(
        log.contains(&format!("http://127.0.0.1:{closed}/… (#")),
        "the log names the target (scheme, host, port and a hash of the URL)"
    );
}

#[tokio::test]
async fn special_purpose_addresses_are_refused_and_allowed_networks_accepted() {
    let dns = Dns::start(|_, _| Answer::NoSuchName).await;
    let mut env = Env::new(BUILD).await;
    guarded(&mut env, &dns);
    let (_dev, api) = env.spawn_http("dev").await;
    for host in [
        "[64:ff9b::a9fe:a9fe]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::1]",
        "[::127.0.0.1]",
        "[fec0::1]",
        "198.18.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "127.0.0.1",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "100.64.0.1",
        "[fd00::1]",
        "[ff02::1]",
    ] {
        let url = format!("http://{host}/hook");
        let (status, body) = api
            .post(
                "/v1/jobs",
                &json!({ "kind": "noop", "run_at": never(), "webhook": { "url": url } }),
            )
            .await;
        assert_eq!(status, 422, "{url}: {body}");
    }
    // The allowed network, also written as an IPv4-mapped address.
    for url in [
        "http://127.0.0.2:9/hook",
        "http://[::ffff:127.0.0.2]:9/hook",
    ] {
        let (status, body) = api
            .post(
                "/v1/jobs",
                &json!({ "kind": "noop", "run_at": never(), "webhook": { "url": url } }),
            )
            .await;
        assert_eq!(status, 202, "{url}: {body}");
    }
    assert_eq!(dns.count(|_| true), 0, "addresses need no lookup");
}

#[tokio::test]
async fn webhook_hosts_are_looked_up_once_per_request_and_only_within_the_rate_limit() {
    let dns = Dns::start(|name, _| match name {
        "batch.test" | "rate.test" => Answer::A(Ipv4Addr::new(127, 0, 0, 2)),
        _ => Answer::NoSuchName,
    })
    .await;
    let mut env = Env::new(BUILD).await;
    guarded(&mut env, &dns);
    // A burst of exactly one full batch, refilled at one submission a second.
    env.set("CONVEYOR_RATE_LIMIT", "1")
        .set("CONVEYOR_RATE_BURST", "1000");
    let (_dev, api) = env.spawn_http("dev").await;
    let run_at = never();
    let batch = |host: &str, n: usize| {
        let jobs: Vec<Value> = (0..n)
            .map(|i| {
                json!({ "kind": "noop", "run_at": run_at,
                        "webhook": { "url": format!("http://{host}:9/hooks/{i}") } })
            })
            .collect();
        json!({ "jobs": jobs })
    };

    let (status, body) = api.post("/v1/jobs/batch", &batch("batch.test", 1000)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1000, "{}", body["items"][0]);
    let lookups = dns.count(|n| n == "batch.test");
    eprintln!("queries for 1,000 jobs with one host: {lookups}");
    assert!(
        (1..=2).contains(&lookups),
        "one lookup (A and AAAA) for the batch, not {lookups} queries"
    );

    // The tenant's burst is spent: refused before any lookup, whole batches as single jobs.
    let (status, body) = api.post("/v1/jobs/batch", &batch("rate.test", 500)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        dns.count(|n| n == "rate.test"),
        0,
        "looked up over the rate"
    );
    let single = json!({ "kind": "noop", "run_at": run_at,
                         "webhook": { "url": "http://rate.test:9/hooks/single" } });
    let mut refused = 0;
    for _ in 0..20 {
        let (status, body) = api.post("/v1/jobs", &single).await;
        if status == 429 {
            refused += 1;
        } else {
            // A token came back (one a second).
            assert_eq!(status, 202, "{body}");
        }
    }
    let lookups = dns.count(|n| n == "rate.test");
    eprintln!("single submissions refused: {refused} of 20; queries for rate.test: {lookups}");
    assert!(refused > 0);
    assert!(
        lookups <= 2 * (20 - refused),
        "{lookups} queries for {} accepted submissions",
        20 - refused
    );
}

#[tokio::test]
async fn a_tenant_whose_name_server_never_answers_does_not_hold_up_another() {
    // Names under hang.test are read and never answered.
    let dns = Dns::start(|name, _| match name {
        "ok.test" => Answer::A(Ipv4Addr::new(127, 0, 0, 2)),
        n if n.ends_with(".hang.test") => Answer::Silence,
        _ => Answer::NoSuchName,
    })
    .await;
    let mut env = Env::new(BUILD).await;
    guarded(&mut env, &dns);
    env.set("CONVEYOR_WEBHOOK_LOOKUPS_PER_TENANT", "2");
    let (_dev, api) = env.spawn_http("dev").await;
    let run_at = never();
    // Ten requests at once, each with five hosts whose lookups hang.
    let mut hanging = Vec::new();
    for r in 0..10 {
        let jobs: Vec<Value> = (0..5)
            .map(|j| {
                json!({ "kind": "noop", "run_at": run_at,
                        "webhook": { "url": format!("http://h{r}-{j}.hang.test/hook") } })
            })
            .collect();
        let api = api.clone();
        hanging.push(tokio::spawn(async move {
            api.post("/v1/jobs/batch", &json!({ "jobs": jobs })).await
        }));
    }
    let hang = |n: &str| n.ends_with(".hang.test");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while dns.count(hang) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no lookup started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Another tenant's webhook host resolves at once, while those lookups hang.
    let globex = api.with_token(&env.token("globex", "jobs:write jobs:read"));
    let (status, body) = globex
        .post(
            "/v1/jobs",
            &json!({ "kind": "noop", "run_at": run_at,
                 "webhook": { "url": "http://ok.test:9/hook" } }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let pending = hanging.iter().filter(|h| !h.is_finished()).count();
    let in_flight = dns.count(hang);
    eprintln!("hanging requests still pending: {pending}; hang queries so far: {in_flight}");
    assert_eq!(pending, 10, "the other tenant was answered first");
    // Two lookups in flight for the tenant (an A and an AAAA query each), not fifty.
    assert!(in_flight <= 4, "{in_flight} queries");

    let mut statuses: HashMap<u64, usize> = HashMap::new();
    for h in hanging {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["accepted"], 0, "{body}");
        for item in body["items"].as_array().unwrap() {
            *statuses
                .entry(item["status"].as_u64().unwrap())
                .or_default() += 1;
        }
    }
    eprintln!(
        "item statuses: {statuses:?}; hang queries: {}",
        dns.count(hang)
    );
    // A host whose lookup ran out of time is 422; one that never got a lookup slot is 429.
    assert_eq!(
        statuses.keys().filter(|s| ![422, 429].contains(*s)).count(),
        0
    );
    assert!(statuses.get(&429).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert!(statuses.get(&422).copied().unwrap_or(0) > 0, "{statuses:?}");
}

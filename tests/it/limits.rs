//! Limits: per-tenant submission rate, active-jobs quota and live-stream cap (429 with
//! `Retry-After`, nothing published), the process's in-flight bound (503), and fairness: a
//! tenant flooding the API does not starve another.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::BUILD;
use testkit::{id_of, Api, Env};

async fn post_job(api: &Api, body: Value) -> reqwest::Response {
    api.request(reqwest::Method::POST, "/v1/jobs")
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn expect_429(res: reqwest::Response) -> Value {
    assert_eq!(res.status(), 429);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 1, "Retry-After {wait}");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    res.json().await.unwrap()
}

#[tokio::test]
async fn the_submission_rate_is_limited_per_tenant() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_RATE_LIMIT", "1")
        .set("CONVEYOR_RATE_BURST", "5");
    let (_api, acme) = env.spawn_http("api").await;
    let globex = acme.with_token(&env.token("globex", "jobs:write jobs:read"));
    for _ in 0..5 {
        acme.submit(json!({ "kind": "noop" })).await;
    }
    let problem = expect_429(post_job(&acme, json!({ "kind": "noop" })).await).await;
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("too many submissions"));
    // Another tenant has its own budget.
    globex.submit(json!({ "kind": "noop" })).await;
    // Refused submissions published nothing: 6 accepted jobs, 6 `job.submitted`.
    assert_eq!(env.stream_messages("EVENTS").await, 6);
}

#[tokio::test]
async fn a_tenant_may_only_have_so_many_active_jobs() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_TENANT_MAX_ACTIVE", "3");
    let (_api, acme) = env.spawn_http("api").await;
    let _projector = env.spawn("projector").await;
    let globex = acme.with_token(&env.token("globex", "jobs:write jobs:read"));
    // No worker yet: jobs stay queued.
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(id_of(&acme.submit(json!({ "kind": "noop" })).await));
    }
    let problem = expect_429(post_job(&acme, json!({ "kind": "noop" })).await).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("3 jobs queued or running"),
        "{problem}"
    );
    globex.submit(json!({ "kind": "noop" })).await;
    // As the jobs finish, the tenant may submit again.
    let _worker = env.spawn("worker").await;
    for id in &ids {
        acme.wait_terminal(id).await;
    }
    env.settle().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = post_job(&acme, json!({ "kind": "noop" })).await;
        if res.status() == 202 {
            break;
        }
        expect_429(res).await;
        assert!(Instant::now() < deadline, "the quota never freed up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn live_streams_are_capped_per_tenant() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_TENANT_MAX_STREAMS", "2");
    let (_api, api) = env.spawn_http("api").await;
    let open = || async {
        api.request(reqwest::Method::GET, "/v1/events")
            .send()
            .await
            .unwrap()
    };
    let first = open().await;
    assert_eq!(first.status(), 200);
    let second = open().await;
    assert_eq!(second.status(), 200);
    expect_429(open().await).await;
    let other = api.with_token(&env.token("globex", "events:read"));
    let theirs = other
        .request(reqwest::Method::GET, "/v1/events")
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 200, "another tenant has its own streams");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = open().await;
        if res.status() == 200 {
            break;
        }
        assert_eq!(res.status(), 429);
        assert!(
            Instant::now() < deadline,
            "a closed stream's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_api_at_capacity_answers_503_at_once() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_MAX_INFLIGHT", "2")
        .set("CONVEYOR_READ_YOUR_WRITES_MS", "4000");
    let (_api, api) = env.spawn_http("api").await;
    // No projector: a read of a just-accepted job waits (up to 4 s) for it, holding its slot.
    let id = id_of(&api.submit(json!({ "kind": "noop" })).await);
    let slow = (0..2).map(|_| {
        let api = api.clone();
        let id = id.clone();
        tokio::spawn(async move { api.get(&format!("/v1/jobs/{id}")).await.0 })
    });
    let slow: Vec<_> = slow.collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = api
        .request(reqwest::Method::GET, "/v1/jobs")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let (health, _) = api.get("/healthz").await;
    assert_eq!(health, 200, "probes are never shed");
    for s in slow {
        assert_eq!(s.await.unwrap(), 200, "the held reads were answered");
    }
    let (status, _) = api.get("/v1/jobs").await;
    assert_eq!(status, 200, "capacity is back");
}

/// Latencies, from `202` to `succeeded` visible through the API, of `n` jobs submitted one
/// after the other.
async fn latencies(api: &Api, n: usize, body: Value) -> Vec<Duration> {
    let mut out = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let res = post_job(api, body.clone()).await;
        assert_eq!(res.status(), 202, "the quiet tenant is never refused");
        let id = id_of(&res.json().await.unwrap());
        let job = api.wait_terminal(&id).await;
        assert_eq!(job["status"], "succeeded");
        out.push(started.elapsed());
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_flooding_tenant_does_not_starve_another() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_TENANT_MAX_ACTIVE", "40")
        .set("CONVEYOR_WORKER_CONCURRENCY", "8");
    let (_api, quiet) = env.spawn_http("api").await;
    let _worker = env.spawn("worker").await;
    let _projector = env.spawn("projector").await;
    let noisy = quiet.with_token(&env.token("noisy", "jobs:write jobs:read"));
    let job = json!({ "kind": "sleep", "payload": { "ms": 100 } });

    let baseline = latencies(&quiet, 8, job.clone()).await;

    // The noisy tenant floods the same kind from 16 clients, as fast as it is let.
    let stop = tokio_util::sync::CancellationToken::new();
    let flood: Vec<_> = (0..16)
        .map(|_| {
            let (noisy, stop, job) = (noisy.clone(), stop.clone(), job.clone());
            tokio::spawn(async move {
                let (mut accepted, mut refused) = (0u32, 0u32);
                while !stop.is_cancelled() {
                    match post_job(&noisy, job.clone()).await.status().as_u16() {
                        202 => accepted += 1,
                        429 => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => panic!("unexpected {other}"),
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    // Let the flood fill its quota first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let flooded = latencies(&quiet, 8, job).await;
    stop.cancel();
    let (mut accepted, mut refused) = (0, 0);
    for f in flood {
        let (a, r) = f.await.unwrap();
        accepted += a;
        refused += r;
    }
    let p50 = |l: &[Duration]| l[l.len() / 2];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "fairness: noisy tenant {accepted} accepted, {refused} refused (429); quiet tenant \
         p50 {:.0} ms, max {:.0} ms alone; p50 {:.0} ms, max {:.0} ms during the flood \
         (x{:.1} at p50)",
        ms(p50(&baseline)),
        ms(*baseline.last().unwrap()),
        ms(p50(&flooded)),
        ms(*flooded.last().unwrap()),
        p50(&flooded).as_secs_f64() / p50(&baseline).as_secs_f64()
    );
    assert!(refused > 0, "the flood hit its tenant's quota");
}

/// Opens a connection from `source` (a loopback address) to `api`'s port and sends the start of
/// a request whose headers never end.
async fn half_sent_request(api: &Api, source: &str) -> std::io::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let target: std::net::SocketAddr = api
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("the API listens on an address");
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    let mut tcp = socket.connect(target).await?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: conveyor\r\nx-slow: ")
        .await?;
    Ok(tcp)
}

/// What the server does with a connection: the bytes it sent before closing it (empty when it
/// closed it without a word), or `None` if it is still open after 30 s.
async fn closed_with(mut tcp: tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

#[tokio::test]
async fn slow_clients_from_one_address_leave_the_api_serving_others() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_HEADER_TIMEOUT_MS", "1500")
        .set("CONVEYOR_MAX_CONNECTIONS_PER_ADDRESS", "100");
    let (_api, api) = env.spawn_http("dev").await;

    // A live stream opened before the attack outlives the header timeout: streams are not cut.
    let mut sse = api
        .request(reqwest::Method::GET, "/v1/events")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);

    // Connections from 127.0.0.3 that never send a byte.
    let mut silent = Vec::new();
    for _ in 0..20 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        let target = api.base.trim_start_matches("http://").parse().unwrap();
        silent.push(socket.connect(target).await.expect("connect"));
    }
    // A slowloris from 127.0.0.2: 300 requests whose headers never end.
    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(half_sent_request(&api, "127.0.0.2").await.expect("connect"));
    }
    // The API still serves other addresses at once, and everything else it can.
    for _ in 0..20 {
        let (status, body) = api.get("/v1/jobs?limit=1").await;
        assert_eq!(status, 200, "{body}");
    }
    let id = id_of(&api.submit(json!({ "kind": "noop" })).await);
    api.wait_terminal(&id).await;

    // Past 100 from that address, the connections were answered 503 and closed at once; the
    // rest were closed once their headers did not come in time. None is left open.
    let mut refused = 0;
    let mut timed_out = 0;
    for tcp in held {
        let answer = closed_with(tcp)
            .await
            .expect("the server closed every half-sent request");
        if answer.starts_with(b"HTTP/1.1 503") {
            let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
            assert!(answer.contains("retry-after: 1"), "{answer}");
            refused += 1;
        } else {
            timed_out += 1;
        }
    }
    assert_eq!((refused, timed_out), (200, 100));
    for tcp in silent {
        let said = closed_with(tcp)
            .await
            .expect("the server closed every silent connection");
        assert!(
            said.is_empty() || said.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&said)
        );
    }

    // The stream opened first is still live and sees the next job.
    let id = id_of(&api.submit(json!({ "kind": "noop" })).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while !seen.contains(&id) {
        let chunk = tokio::time::timeout_at(deadline, sse.chunk())
            .await
            .expect("the stream delivers the new job's events")
            .expect("the stream is open")
            .expect("the stream has not ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

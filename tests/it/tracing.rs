//! One trace per job across the bus: the client's `traceparent` is continued by the API, the
//! worker, the projector and the webhook delivery, each a separate process exporting its spans
//! over OTLP to a collector run here; and structured logs carry the trace id.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use serde_json::{json, Value};

use crate::BUILD;
use testkit::{id_of, Env};

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

/// An OTLP/HTTP collector (JSON encoding) on 127.0.0.1 that keeps every span it receives.
async fn collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                for rs in body["resourceSpans"].as_array().into_iter().flatten() {
                    let service = rs["resource"]["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "service.name")
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .unwrap_or_default()
                        .to_owned();
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for s in ss["spans"].as_array().into_iter().flatten() {
                            let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
                            kept.lock().unwrap().push(Span {
                                service: service.clone(),
                                name: text("name"),
                                trace_id: text("traceId").to_lowercase(),
                                span_id: text("spanId").to_lowercase(),
                                parent: text("parentSpanId").to_lowercase(),
                            });
                        }
                    }
                }
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

/// A webhook receiver that accepts everything.
async fn webhook_receiver() -> String {
    let app = axum::Router::new().route("/hook", post(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn one_trace_runs_from_the_request_to_the_read_model_and_the_webhook() {
    let (endpoint, spans) = collector().await;
    let hook = webhook_receiver().await;
    let mut env = Env::new(BUILD).await;
    env.set("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .set("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .set("OTEL_BSP_SCHEDULE_DELAY", "100")
        .set("CONVEYOR_LOG_FORMAT", "json");
    let (_api, api) = env.spawn_http("api").await;
    let worker = env.spawn("worker").await;
    let _projector = env.spawn("projector").await;
    let _notifier = env.spawn("notifier").await;

    // The client's own trace: the API continues it.
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let client_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let res = api
        .request(reqwest::Method::POST, "/v1/jobs")
        .header("traceparent", format!("00-{trace}-{client_span}-01"))
        .json(
            &json!({ "kind": "sleep", "payload": { "ms": 50, "steps": 2 },
                       "webhook": { "url": hook } }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = id_of(&res.json().await.unwrap());
    assert_eq!(api.wait_terminal(&id).await["trace_id"], trace.as_str());

    // Wait for the spans of every role: API request, worker attempt, the projector's writes of
    // each event (submitted, started, 2 × progressed, succeeded) and the webhook delivery.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ours = loop {
        let ours: Vec<Span> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect();
        let count = |service: &str, name: &str| {
            ours.iter()
                .filter(|s| s.service == service && s.name == name)
                .count()
        };
        if count("conveyor-api", "request") == 1
            && count("conveyor-worker", "job") == 1
            && count("conveyor-projector", "project") == 5
            && count("conveyor-notifier", "webhook") == 1
        {
            break ours;
        }
        assert!(
            Instant::now() < deadline,
            "spans of trace {trace}: {ours:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let one = |service: &str, name: &str| {
        ours.iter()
            .find(|s| s.service == service && s.name == name)
            .unwrap()
            .clone()
    };
    let request = one("conveyor-api", "request");
    assert_eq!(
        request.parent, client_span,
        "the API continues the client's span"
    );
    let attempt = one("conveyor-worker", "job");
    assert_eq!(
        attempt.parent, request.span_id,
        "the attempt is a child of the request"
    );
    let projected: Vec<&Span> = ours.iter().filter(|s| s.name == "project").collect();
    assert!(
        projected.iter().any(|s| s.parent == request.span_id),
        "job.submitted is projected under the request"
    );
    assert_eq!(
        projected
            .iter()
            .filter(|s| s.parent == attempt.span_id)
            .count(),
        4,
        "started, progressed ×2 and succeeded are projected under the attempt"
    );
    let delivery = one("conveyor-notifier", "webhook");
    assert_eq!(
        delivery.parent, attempt.span_id,
        "the delivery is a child of the attempt that ended the job"
    );

    // Structured logs carry the job, the tenant and the trace: a failing attempt is logged.
    let failing_trace = uuid::Uuid::new_v4().simple().to_string();
    let res = api
        .request(reqwest::Method::POST, "/v1/jobs")
        .header(
            "traceparent",
            format!("00-{failing_trace}-{client_span}-01"),
        )
        .json(&json!({ "kind": "fail", "max_attempts": 1 }))
        .send()
        .await
        .unwrap();
    let failed = id_of(&res.json().await.unwrap());
    api.wait_terminal(&failed).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&worker.log).unwrap();
        let line = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == "attempt ended" && l["span"]["job_id"] == failed.as_str());
        if let Some(line) = line {
            assert_eq!(line["span"]["trace_id"], failing_trace.as_str(), "{line}");
            assert_eq!(line["span"]["tenant"], "acme", "{line}");
            assert_eq!(line["outcome"], "failed", "{line}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no JSON log line for the attempt:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

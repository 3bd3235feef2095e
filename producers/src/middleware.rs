//! What every request goes through: load shedding, header limits, metrics and a span; and what
//! each route's body limit answers.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use events::TraceParent;
use tracing::field::Empty;
use tracing::Instrument;

use crate::error::ApiError;
use crate::AppState;

/// The most bytes of request headers accepted (names and values).
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The trace context of a request: what the events it publishes carry.
#[derive(Debug, Clone)]
pub(crate) struct RequestTrace(pub(crate) TraceParent);

/// Routes that are never shed: probes and scrapes must answer while the process is busy.
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Refuses requests beyond the process's in-flight bound (503, at once) and oversized headers
/// (431); records each request's count and duration by route and status; runs the handler in a
/// span that carries the trace id the request continues or starts.
pub(crate) async fn track(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    let response = if header_bytes > MAX_HEADER_BYTES {
        ApiError::HeadersTooLarge(format!(
            "request headers are {header_bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"
        ))
        .into_response()
    } else if exempt(req.uri().path()) {
        next.run(req).await
    } else {
        match state.limits.admit() {
            // The permit is held while the handler runs; a live stream's body outlives it.
            Some(_permit) => {
                // A valid inbound `traceparent` is continued; an invalid one is ignored and a
                // new trace started (never copied into events unchecked).
                let inbound = req
                    .headers()
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .and_then(TraceParent::parse);
                let span = tracing::info_span!("request", otel.kind = "server",
                    http.method = %method, http.route = %route,
                    trace_id = Empty, tenant = Empty, job_id = Empty);
                let trace = bus::trace::continue_trace(&span, inbound.as_ref());
                req.extensions_mut().insert(RequestTrace(trace));
                next.run(req).instrument(span).await
            }
            None => {
                metrics::counter!("conveyor_rejected_requests_total", "reason" => "inflight")
                    .increment(1);
                ApiError::Overloaded("this server is at capacity; retry shortly".into())
                    .into_response()
            }
        }
    };
    let response = as_problem(response).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("conveyor_http_requests_total",
        "method" => method.clone(), "route" => route.clone(), "status" => status)
    .increment(1);
    metrics::histogram!("conveyor_http_request_duration_seconds",
        "method" => method, "route" => route)
    .record(started.elapsed().as_secs_f64());
    response
}

/// The most bytes a route accepts in a request body: the state of [`refuse_oversized`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub(crate) usize);

/// Refuses a request whose declared length is over the route's [`BodyLimit`] (413) before its
/// handler runs; a body that grows past the limit unannounced fails the handler's extractor.
pub(crate) async fn refuse_oversized(
    State(BodyLimit(limit)): State<BodyLimit>,
    req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        // Read (and drop) what the client is sending before answering: closing the connection
        // on an unread body resets it, and the client would see a broken pipe instead of 413.
        drain(req.into_body(), 8 * limit).await;
        return ApiError::PayloadTooLarge(format!(
            "the request body is larger than the {limit} bytes allowed"
        ))
        .into_response();
    }
    next.run(req).await
}

/// Reads and discards up to `max` bytes of a body, for at most two seconds.
async fn drain(body: axum::body::Body, max: usize) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut read = 0;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len());
            if read > max {
                break;
            }
        }
    })
    .await;
}

/// Gives every error the problem+json shape, also those axum answers by itself (no route, wrong
/// method, an undecodable path): clients then parse one kind of error.
async fn as_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|c| c == "application/problem+json");
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&text).trim().to_owned();
    let detail = if detail.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_lowercase()
    } else {
        detail
    };
    let mut problem = ApiError::from_status(status, detail).into_response();
    // Keep what the original answer said besides its body (e.g. `Allow` on a 405).
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            problem.headers_mut().insert(name.clone(), value.clone());
        }
    }
    problem
}

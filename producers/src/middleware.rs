//! What every request goes through: load shedding, header limits, metrics and a span.

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
    let status = response.status().as_u16().to_string();
    metrics::counter!("conveyor_http_requests_total",
        "method" => method.clone(), "route" => route.clone(), "status" => status)
    .increment(1);
    metrics::histogram!("conveyor_http_request_duration_seconds",
        "method" => method, "route" => route)
    .record(started.elapsed().as_secs_f64());
    response
}

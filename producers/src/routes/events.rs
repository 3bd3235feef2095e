//! Live event streams: `GET /v1/events` (SSE) and `GET /v1/ws` (WebSocket), and the SSE form of
//! a job's timeline (`GET /v1/jobs/{id}/events` with `Accept: text/event-stream`).

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, EVENTS_READ};
use crate::error::{ApiError, ApiResult};
use crate::limits::StreamSlot;
use crate::live::{Ended, Filter, Item, Stop, SubscribeError};
use crate::AppState;

/// Keep-alive comment interval on SSE streams.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events))
        .routes(routes!(websocket))
}

/// Filters of `GET /v1/events`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Comma-separated types, e.g. `job.succeeded,job.failed`.
    #[serde(rename = "type")]
    types: Option<String>,
    /// Only jobs of this kind.
    kind: Option<String>,
    /// Only this job.
    job: Option<String>,
    /// Resume after this stream sequence (same as `Last-Event-ID`).
    after: Option<String>,
}

fn parse_seq(raw: &str) -> ApiResult<u64> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 20 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest(
            "Last-Event-ID / after must be a stream sequence (digits)".into(),
        ));
    }
    raw.parse()
        .map_err(|_| ApiError::BadRequest("Last-Event-ID / after is out of range".into()))
}

impl EventsQuery {
    fn filter(&self, auth: &Auth) -> ApiResult<Filter> {
        Ok(Filter {
            tenant: auth.tenant.clone(),
            types: match &self.types {
                Some(t) => Filter::parse_types(t).map_err(ApiError::BadRequest)?,
                None => Vec::new(),
            },
            kind: match &self.kind {
                Some(k) => Some(
                    events::JobKind::parse(k)
                        .map_err(|e| ApiError::BadRequest(e.to_string()))?
                        .to_string(),
                ),
                None => None,
            },
            job: match &self.job {
                Some(j) => Some(
                    j.parse()
                        .map_err(|_| ApiError::BadRequest(format!("invalid job id `{j}`")))?,
                ),
                None => None,
            },
        })
    }
}

/// A live subscription of the caller's, which ends (with a resume hint) when the server stops
/// or the caller's token expires.
pub(crate) async fn subscription(
    state: &AppState,
    auth: &Auth,
    filter: Filter,
    after: Option<u64>,
    until_terminal: bool,
) -> ApiResult<impl Stream<Item = Item> + Send + 'static> {
    state
        .hub
        .subscribe(
            state.bus.clone(),
            filter,
            after,
            until_terminal,
            stop_signal(state, auth),
        )
        .await
        .map_err(|e| match e {
            SubscribeError::Bus(e) => ApiError::bus(e),
            e @ SubscribeError::BeyondEnd { .. } => ApiError::BadRequest(e.to_string()),
        })
}

/// What ends a live stream early: the server stopping, or the caller's token expiring.
fn stop_signal(state: &AppState, auth: &Auth) -> Stop {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let left = Duration::from_secs(auth.exp.saturating_sub(now));
    let shutdown = state.shutdown.clone();
    Box::pin(async move {
        tokio::select! {
            _ = tokio::time::sleep(left) => Ended::TokenExpired,
            _ = shutdown.cancelled() => Ended::ServerStopping,
        }
    })
}

/// An SSE response over a subscription; `slot` is held until the stream ends.
pub(crate) fn sse(items: impl Stream<Item = Item> + Send + 'static, slot: StreamSlot) -> Response {
    let events = items.map(move |item| {
        let _held = &slot;
        Ok::<_, Infallible>(match item {
            Item::Event(ev) => Event::default()
                .id(ev.seq.to_string())
                .event(ev.event_name())
                .data(&ev.json),
            Item::Resume { after, reason } => Event::default().event("resume").data(
                json!({
                    "reason": reason.reason(),
                    "last_event_id": after.to_string(),
                })
                .to_string(),
            ),
        })
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response()
}

/// The tenant's domain events, live, over SSE.
///
/// `id:` is the EVENTS stream sequence; reconnect with `Last-Event-ID` (or `?after=`) to resume
/// exactly after it. A client that falls too far behind gets a `resume` event and the stream
/// ends. A comment line every 15 s keeps the connection alive.
#[utoipa::path(get, path = "/v1/events", operation_id = "stream_events", tag = "events", params(EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this sequence")),
    responses(
        (status = 200, description = "Server-sent events, one per CloudEvent", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad filter or resume point", body = crate::error::Problem),
        (status = 403, description = "Token lacks events:read", body = crate::error::Problem),
    ))]
pub(crate) async fn events(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    auth.require(EVENTS_READ)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let filter = q.filter(&auth)?;
    let after = match headers.get("last-event-id") {
        Some(v) => Some(parse_seq(v.to_str().unwrap_or("x"))?),
        None => q.after.as_deref().map(parse_seq).transpose()?,
    };
    let slot = state.limits.open_stream(&auth.tenant, "sse")?;
    let items = subscription(&state, &auth, filter, after, false).await?;
    Ok(sse(items, slot))
}

/// What a WebSocket client sends first.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Subscribe {
    #[serde(rename = "type")]
    kind_of_message: String,
    #[serde(default)]
    filters: EventsQuery,
    #[serde(default)]
    after: Option<u64>,
}

/// The same subscription as `/v1/events`, over WebSocket.
///
/// Send `{"type": "subscribe", "filters": {"type": "job.succeeded", "kind": "…", "job": "…"},
/// "after": 1234}`; receive `{"id": 1235, "event": "job.succeeded", "data": {…CloudEvent…}}`.
/// A client that falls behind gets `{"type": "resume", "last_event_id": …}` and the socket
/// closes. Browsers may pass the token as `?access_token=`.
#[utoipa::path(get, path = "/v1/ws", tag = "events",
    responses((status = 101, description = "WebSocket upgrade")))]
pub(crate) async fn websocket(
    State(state): State<AppState>,
    auth: Auth,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    auth.require(EVENTS_READ)?;
    let slot = state.limits.open_stream(&auth.tenant, "websocket")?;
    Ok(upgrade
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| serve_socket(state, auth, socket, slot)))
}

async fn serve_socket(state: AppState, auth: Auth, mut socket: WebSocket, _slot: StreamSlot) {
    let close = |reason: String| {
        Message::Text(
            json!({ "type": "error", "detail": reason })
                .to_string()
                .into(),
        )
    };
    let first = tokio::time::timeout(Duration::from_secs(10), socket.recv()).await;
    let sub = match first {
        Ok(Some(Ok(Message::Text(t)))) => {
            serde_json::from_str::<Subscribe>(&t).map_err(|e| e.to_string())
        }
        _ => Err("expected a subscribe message within 10 s".into()),
    };
    let sub = match sub.and_then(|s| {
        if s.kind_of_message == "subscribe" {
            Ok(s)
        } else {
            Err("the first message must be {\"type\": \"subscribe\", …}".into())
        }
    }) {
        Ok(s) => s,
        Err(e) => {
            let _ = socket.send(close(e)).await;
            return;
        }
    };
    let filter = match sub.filters.filter(&auth) {
        Ok(f) => f,
        Err(e) => {
            let _ = socket.send(close(e.to_string())).await;
            return;
        }
    };
    let after = match (sub.after, sub.filters.after.as_deref()) {
        (Some(after), _) => Some(after),
        (None, Some(raw)) => match parse_seq(raw) {
            Ok(after) => Some(after),
            Err(e) => {
                let _ = socket.send(close(e.to_string())).await;
                return;
            }
        },
        (None, None) => None,
    };
    let items = match subscription(&state, &auth, filter, after, false).await {
        Ok(items) => items,
        Err(e) => {
            let _ = socket.send(close(e.to_string())).await;
            return;
        }
    };
    tokio::pin!(items);
    loop {
        tokio::select! {
            item = items.next() => {
                let text = match item {
                    Some(Item::Event(ev)) => format!(
                        "{{\"id\":{},\"event\":\"{}\",\"data\":{}}}", ev.seq, ev.event_name(), ev.json
                    ),
                    Some(Item::Resume { after, reason }) => {
                        let msg = json!({ "type": "resume", "reason": reason.reason(), "last_event_id": after });
                        let _ = socket.send(Message::Text(msg.to_string().into())).await;
                        break;
                    }
                    None => break,
                };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

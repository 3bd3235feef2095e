//! `/healthz`, `/readyz` and `/openapi.json`.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Json};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::openapi::Document;
use crate::AppState;

/// `/openapi.json` and `/metrics` are not in the OpenAPI document.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive")))]
pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// NATS, the JetStream streams and Postgres are reachable.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready"),
              (status = 503, description = "A dependency is down", body = crate::error::Problem)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let nats = state.bus.is_connected();
    let streams = nats && state.bus.events_stream().await.is_ok();
    let postgres = sqlx::query("SELECT 1").execute(&state.db).await.is_ok();
    if nats && streams && postgres {
        Ok(Json(
            json!({ "status": "ready", "nats": true, "streams": true, "postgres": true }),
        ))
    } else {
        Err(ApiError::Unavailable(format!(
            "not ready: nats={nats} streams={streams} postgres={postgres}"
        )))
    }
}

/// This process's metrics, in the Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let render = state
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("metrics are not enabled in this process".into()))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(),
    ))
}

/// This API's OpenAPI document.
async fn openapi(Extension(doc): Extension<Document>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.json(),
    )
}

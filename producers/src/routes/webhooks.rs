//! Webhooks: a tenant's signing secret, and failed deliveries for operators.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use events::command::DeliverWebhook;
use events::subjects::msg_id;
use events::webhooks::FailedDelivery;
use events::{Command, Envelope, JobId, JobKind};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, ADMIN, JOBS_WRITE};
use crate::error::{ApiError, ApiResult};
use crate::{AppState, SOURCE};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(secret))
        .routes(routes!(list_failed))
        .routes(routes!(redrive))
}

fn kv_err(e: impl Into<bus::error::Failure>) -> ApiError {
    ApiError::bus(bus::Error::bucket(e))
}

/// The signing secret of the caller's tenant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Secret {
    /// `whsec_…`: verify `webhook-signature` with it (Standard Webhooks).
    secret: String,
}

/// The secret that signs this tenant's webhook deliveries.
#[utoipa::path(get, path = "/v1/webhooks/secret", tag = "webhooks",
    responses((status = 200, description = "The tenant's signing secret", body = Secret)))]
pub(crate) async fn secret(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Secret>> {
    auth.require(JOBS_WRITE)?;
    Ok(Json(Secret {
        secret: events::webhooks::tenant_secret(
            &state.settings.webhook_secret,
            auth.tenant.as_str(),
        ),
    }))
}

/// Deliveries that exhausted their attempts (this tenant's).
#[utoipa::path(get, path = "/v1/admin/webhooks/failed", tag = "admin",
    responses((status = 200, description = "Failed deliveries", body = Object),
              (status = 403, description = "Token lacks admin", body = crate::error::Problem)))]
pub(crate) async fn list_failed(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Value>> {
    auth.require(ADMIN)?;
    let store = state.bus.webhook_failures().await.map_err(ApiError::bus)?;
    let prefix = format!("{}.", auth.tenant);
    let mut keys = store.keys().await.map_err(kv_err)?;
    let mut items = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(kv_err)?;
        if !key.starts_with(&prefix) {
            continue;
        }
        if let Some(v) = store.get(&key).await.map_err(kv_err)? {
            if let Ok(f) = serde_json::from_slice::<FailedDelivery>(&v) {
                items.push(f);
            }
        }
    }
    items.sort_by(|a, b| a.failed_at.cmp(&b.failed_at));
    Ok(Json(json!({ "items": items })))
}

/// Queue a failed delivery again, with a fresh attempt budget.
#[utoipa::path(post, path = "/v1/admin/webhooks/failed/{job}/redrive", operation_id = "redrive_webhook", tag = "admin",
    params(("job" = String, Path, description = "Job id")),
    responses((status = 202, description = "Queued again"),
              (status = 404, description = "No failed delivery for this job", body = crate::error::Problem)))]
pub(crate) async fn redrive(
    State(state): State<AppState>,
    auth: Auth,
    Path(job): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth.require(ADMIN)?;
    let not_found = || ApiError::NotFound(format!("no failed webhook delivery for job {job}"));
    let id: JobId = job.parse().map_err(|_| not_found())?;
    let store = state.bus.webhook_failures().await.map_err(ApiError::bus)?;
    let key = format!("{}.{id}", auth.tenant);
    let failed: FailedDelivery = store
        .get(&key)
        .await
        .map_err(kv_err)?
        .and_then(|v| serde_json::from_slice(&v).ok())
        .ok_or_else(not_found)?;
    let kind = JobKind::parse(&failed.kind).map_err(|e| ApiError::Internal(e.to_string()))?;
    let cmd = Envelope::new(
        SOURCE,
        id,
        auth.tenant.clone(),
        kind,
        Command::Webhook(DeliverWebhook {
            event_seq: failed.event_seq,
            url: failed.url,
            attempt: 1,
            not_before: None,
        }),
    );
    let nonce = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(1);
    state
        .bus
        .publish_command(&cmd, &msg_id::webhook(id, nonce))
        .await
        .map_err(ApiError::bus)?;
    store.delete(&key).await.map_err(kv_err)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "job": id, "status": "redriven" })),
    ))
}

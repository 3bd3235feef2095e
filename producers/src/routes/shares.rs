//! `/v1/admin/tenants/{tenant}/share`: a tenant's share of every kind's workers (operator). By
//! default the tenants with waiting jobs of a kind take one release each in turn; a weight of n
//! gives a tenant n per turn, and a cap limits how many of its jobs of one kind run at once.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use events::pause::TenantShare;
use events::Tenant;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, OPERATOR};
use crate::error::{ApiError, ApiResult};
use crate::extract::AppJson;
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(put_share, get_share, reset_share))
}

/// A tenant's share, as set.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShareRequest {
    /// Releases per turn among the tenants with waiting jobs of a kind (1 to 100; default 1).
    #[serde(default)]
    weight: Option<u32>,
    /// The most of the tenant's jobs of one kind running at once (1 to 100000; absent: no cap).
    #[serde(default)]
    max_running: Option<u32>,
}

/// A tenant's share, as in force.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Share {
    tenant: String,
    weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_running: Option<u32>,
}

fn tenant_of(raw: &str) -> ApiResult<Tenant> {
    Tenant::parse(raw).map_err(|e| ApiError::Unprocessable(e.to_string()))
}

/// Set a tenant's share of the workers: its weight in the turns, and a cap on its running jobs
/// per kind.
#[utoipa::path(put, path = "/v1/admin/tenants/{tenant}/share", tag = "admin", request_body = ShareRequest,
    params(("tenant" = String, Path, description = "The tenant")),
    responses(
        (status = 200, description = "In force", body = Share),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem),
        (status = 403, description = "Token lacks operator", body = crate::error::Problem),
        (status = 422, description = "A bad tenant name, weight or cap", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn put_share(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
    AppJson(req): AppJson<ShareRequest>,
) -> ApiResult<Json<Share>> {
    auth.require(OPERATOR)?;
    let tenant = tenant_of(&tenant)?;
    let share = TenantShare {
        weight: req.weight.unwrap_or(1),
        max_running: req.max_running,
    };
    if !TenantShare::WEIGHTS.contains(&share.weight) {
        return Err(ApiError::Unprocessable("`weight` must be 1 to 100".into()));
    }
    if share
        .max_running
        .is_some_and(|m| !(1..=100_000).contains(&m))
    {
        return Err(ApiError::Unprocessable(
            "`max_running` must be 1 to 100000".into(),
        ));
    }
    let kv = state.bus.shares().await.map_err(ApiError::bus)?;
    let value = serde_json::to_vec(&share).expect("a share serialises");
    kv.put(tenant.as_str(), value.into())
        .await
        .map_err(ApiError::bucket)?;
    Ok(Json(Share {
        tenant: tenant.to_string(),
        weight: share.weight,
        max_running: share.max_running,
    }))
}

/// A tenant's share of the workers (the default one if none was set).
#[utoipa::path(get, path = "/v1/admin/tenants/{tenant}/share", tag = "admin",
    params(("tenant" = String, Path, description = "The tenant")),
    responses(
        (status = 200, description = "In force", body = Share),
        (status = 403, description = "Token lacks operator", body = crate::error::Problem),
        (status = 422, description = "A bad tenant name", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn get_share(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
) -> ApiResult<Json<Share>> {
    auth.require(OPERATOR)?;
    let tenant = tenant_of(&tenant)?;
    let kv = state.bus.shares().await.map_err(ApiError::bus)?;
    let share = kv
        .get(tenant.as_str())
        .await
        .map_err(ApiError::bucket)?
        .and_then(|b| serde_json::from_slice::<TenantShare>(&b).ok())
        .unwrap_or(TenantShare {
            weight: 1,
            max_running: None,
        });
    Ok(Json(Share {
        tenant: tenant.to_string(),
        weight: share.weight,
        max_running: share.max_running,
    }))
}

/// Give a tenant the default share back (weight 1, no cap).
#[utoipa::path(delete, path = "/v1/admin/tenants/{tenant}/share", tag = "admin",
    params(("tenant" = String, Path, description = "The tenant")),
    responses(
        (status = 204, description = "The default share again"),
        (status = 403, description = "Token lacks operator", body = crate::error::Problem),
        (status = 422, description = "A bad tenant name", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn reset_share(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(OPERATOR)?;
    let tenant = tenant_of(&tenant)?;
    let kv = state.bus.shares().await.map_err(ApiError::bus)?;
    kv.delete(tenant.as_str()).await.map_err(ApiError::bucket)?;
    Ok(StatusCode::NO_CONTENT)
}

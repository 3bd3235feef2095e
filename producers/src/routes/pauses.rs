//! Pausing and resuming kinds: a tenant pauses its own jobs of a kind (`/v1/kinds/{kind}/…`), an
//! operator pauses a kind for every tenant or for one (`/v1/admin/kinds/{kind}/…`). Waiting jobs
//! stay queued and none starts; running ones finish. The scheduler follows the pauses bucket.

use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use events::pause::{self, By, Paused};
use events::{JobKind, Tenant};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, JOBS_WRITE, OPERATOR};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(pause_own))
        .routes(routes!(resume_own))
        .routes(routes!(list_own))
        .routes(routes!(pause_any))
        .routes(routes!(resume_any))
        .routes(routes!(list_all))
}

/// A kind paused (or resumed) for one tenant or for all.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Pause {
    kind: String,
    /// The tenant it is paused for; `null`: every tenant.
    tenant: Option<String>,
    paused: bool,
    /// When it was paused (absent once resumed).
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<DateTime<Utc>>,
    /// Who paused it (the token's subject).
    #[serde(skip_serializing_if = "Option::is_none")]
    by: Option<String>,
    /// Paused by an operator (a tenant's resume does not lift it).
    by_operator: bool,
}

/// Pauses in force.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PauseList {
    items: Vec<Pause>,
}

/// Which tenant an operator's pause is for.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PauseScope {
    /// Only this tenant (default: every tenant).
    tenant: Option<String>,
}

fn kind_of(raw: &str) -> ApiResult<JobKind> {
    JobKind::parse(raw).map_err(|e| ApiError::Unprocessable(e.to_string()))
}

async fn set(
    state: &AppState,
    auth: &Auth,
    kind: JobKind,
    tenant: Option<Tenant>,
    author: By,
    on: bool,
) -> ApiResult<Json<Pause>> {
    let kv = state.bus.pauses().await.map_err(ApiError::bus)?;
    let key = pause::key(&kind, tenant.as_ref(), author);
    let (since, by) = if on {
        let value = Paused {
            since: Utc::now(),
            by: auth.sub.clone(),
        };
        kv.put(
            &key,
            serde_json::to_vec(&value)
                .expect("a pause serialises")
                .into(),
        )
        .await
        .map_err(ApiError::bucket)?;
        (Some(value.since), Some(value.by))
    } else {
        kv.delete(&key).await.map_err(ApiError::bucket)?;
        (None, None)
    };
    Ok(Json(Pause {
        kind: kind.to_string(),
        tenant: tenant.map(|t| t.to_string()),
        paused: on,
        since,
        by,
        by_operator: by_operator(&key),
    }))
}

fn by_operator(key: &str) -> bool {
    pause::parse(key).is_some_and(|(_, _, by)| by == By::Operator)
}

/// Every pause in force, those `keep` accepts.
async fn pauses(
    state: &AppState,
    keep: impl Fn(&Option<Tenant>) -> bool,
) -> ApiResult<Json<PauseList>> {
    let kv = state.bus.pauses().await.map_err(ApiError::bus)?;
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(ApiError::bucket)?
        .try_collect()
        .await
        .map_err(ApiError::bucket)?;
    let mut items = Vec::new();
    for key in keys {
        let Some((kind, tenant, by)) = pause::parse(&key) else {
            continue;
        };
        if !keep(&tenant) {
            continue;
        }
        let Some(value) = kv.get(&key).await.map_err(ApiError::bucket)? else {
            continue;
        };
        let value: Option<Paused> = serde_json::from_slice(&value).ok();
        items.push(Pause {
            kind: kind.to_string(),
            tenant: tenant.map(|t| t.to_string()),
            paused: true,
            since: value.as_ref().map(|v| v.since),
            by: value.map(|v| v.by),
            by_operator: by == By::Operator,
        });
    }
    items.sort_by(|a, b| {
        (&a.kind, &a.tenant, a.by_operator).cmp(&(&b.kind, &b.tenant, b.by_operator))
    });
    Ok(Json(PauseList { items }))
}

/// Pause the caller's jobs of a kind: its waiting jobs stay queued and none starts until it is
/// resumed; running ones finish.
#[utoipa::path(post, path = "/v1/kinds/{kind}/pause", tag = "jobs",
    params(("kind" = String, Path, description = "The kind")),
    responses(
        (status = 200, description = "Paused (pausing again changes nothing)", body = Pause),
        (status = 403, description = "Token lacks jobs:write", body = crate::error::Problem),
        (status = 422, description = "Not a kind name", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn pause_own(
    State(state): State<AppState>,
    auth: Auth,
    Path(kind): Path<String>,
) -> ApiResult<Json<Pause>> {
    set_own(&state, &auth, &kind, true).await
}

/// Resume the caller's jobs of a kind (paused by the tenant; an operator's pause stays).
#[utoipa::path(post, path = "/v1/kinds/{kind}/resume", tag = "jobs",
    params(("kind" = String, Path, description = "The kind")),
    responses(
        (status = 200, description = "Resumed (resuming again changes nothing)", body = Pause),
        (status = 403, description = "Token lacks jobs:write", body = crate::error::Problem),
        (status = 422, description = "Not a kind name", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn resume_own(
    State(state): State<AppState>,
    auth: Auth,
    Path(kind): Path<String>,
) -> ApiResult<Json<Pause>> {
    set_own(&state, &auth, &kind, false).await
}

/// The pauses that hold the caller's jobs: its own and those for every tenant.
#[utoipa::path(get, path = "/v1/pauses", tag = "jobs",
    responses(
        (status = 200, description = "Pauses in force", body = PauseList),
        (status = 403, description = "Token lacks jobs:read", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn list_own(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<PauseList>> {
    auth.require_reader()?;
    let own = auth.tenant.clone();
    pauses(&state, |t| t.as_ref().is_none_or(|t| *t == own)).await
}

/// The query of an operator's pause or resume, as axum hands it over.
type ScopeQuery = Result<Query<PauseScope>, axum::extract::rejection::QueryRejection>;

/// A tenant pauses (`on`) or resumes its own jobs of `kind`.
async fn set_own(state: &AppState, auth: &Auth, kind: &str, on: bool) -> ApiResult<Json<Pause>> {
    auth.require(JOBS_WRITE)?;
    let tenant = auth.tenant.clone();
    set(state, auth, kind_of(kind)?, Some(tenant), By::Tenant, on).await
}

/// An operator pauses (`on`) or resumes `kind` for every tenant, or for the scope's one.
async fn set_any(
    state: &AppState,
    auth: &Auth,
    kind: &str,
    scope: ScopeQuery,
    on: bool,
) -> ApiResult<Json<Pause>> {
    auth.require(OPERATOR)?;
    let Query(scope) = scope.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let tenant = scope
        .tenant
        .as_deref()
        .map(|t| Tenant::parse(t).map_err(|e| ApiError::Unprocessable(e.to_string())))
        .transpose()?;
    set(state, auth, kind_of(kind)?, tenant, By::Operator, on).await
}

/// Pause a kind for every tenant (or, with `tenant`, for one): waiting jobs stay queued and none
/// starts until it is resumed; running ones finish.
#[utoipa::path(post, path = "/v1/admin/kinds/{kind}/pause", tag = "admin", params(PauseScope,
        ("kind" = String, Path, description = "The kind")),
    responses(
        (status = 200, description = "Paused (pausing again changes nothing)", body = Pause),
        (status = 400, description = "An unknown query parameter", body = crate::error::Problem),
        (status = 403, description = "Token lacks operator", body = crate::error::Problem),
        (status = 422, description = "Not a kind or tenant name", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn pause_any(
    State(state): State<AppState>,
    auth: Auth,
    Path(kind): Path<String>,
    scope: ScopeQuery,
) -> ApiResult<Json<Pause>> {
    set_any(&state, &auth, &kind, scope, true).await
}

/// Resume a kind paused for every tenant (or, with `tenant`, for one).
#[utoipa::path(post, path = "/v1/admin/kinds/{kind}/resume", tag = "admin", params(PauseScope,
        ("kind" = String, Path, description = "The kind")),
    responses(
        (status = 200, description = "Resumed (resuming again changes nothing)", body = Pause),
        (status = 400, description = "An unknown query parameter", body = crate::error::Problem),
        (status = 403, description = "Token lacks operator", body = crate::error::Problem),
        (status = 422, description = "Not a kind or tenant name", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn resume_any(
    State(state): State<AppState>,
    auth: Auth,
    Path(kind): Path<String>,
    scope: ScopeQuery,
) -> ApiResult<Json<Pause>> {
    set_any(&state, &auth, &kind, scope, false).await
}

/// Every pause in force, of every tenant.
#[utoipa::path(get, path = "/v1/admin/pauses", tag = "admin",
    responses(
        (status = 200, description = "Pauses in force", body = PauseList),
        (status = 403, description = "Token lacks operator", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn list_all(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<PauseList>> {
    auth.require(OPERATOR)?;
    pauses(&state, |_| true).await
}

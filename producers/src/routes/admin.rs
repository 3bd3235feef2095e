//! Operations on dead letters: jobs that exhausted their attempts (or failed fatally).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use events::job::Redriven;
use events::JobStatus;
use readmodel::versions::{self, VersionState};
use readmodel::{checkpoints, Projection};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, ADMIN, OPERATOR};
use crate::error::{ApiError, ApiResult};
use crate::reads;
use crate::submission;
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(redrive))
        .routes(routes!(projections))
        .routes(routes!(rebuild))
        .routes(routes!(consumers))
}

/// The durable consumers of the EVENTS and COMMANDS streams, with how much each has waiting:
/// `pending` (not yet delivered), `ack_pending` (delivered, not yet acknowledged: running jobs,
/// and retries waiting out their backoff), `redelivered` and `waiting` (pull requests).
#[utoipa::path(get, path = "/v1/admin/consumers", tag = "admin",
    responses((status = 200, description = "Consumers", body = Object),
              (status = 403, description = "Token lacks operator", body = crate::error::Problem)))]
pub(crate) async fn consumers(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Value>> {
    use futures::TryStreamExt;
    auth.require(OPERATOR)?;
    let mut items = Vec::new();
    let streams = [
        state.bus.events_stream().await,
        state.bus.commands_stream().await,
    ];
    for stream in streams {
        let stream = stream.map_err(ApiError::bus)?;
        let name = stream.cached_info().config.name.clone();
        let infos: Vec<_> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(|e| ApiError::bus(bus::Error::stream(e)))?;
        items.extend(
            infos
                .into_iter()
                .filter(|i| i.config.durable_name.is_some())
                .map(|i| {
                    json!({
                        "stream": name,
                        "consumer": i.name,
                        "pending": i.num_pending,
                        "ack_pending": i.num_ack_pending,
                        "redelivered": i.num_redelivered,
                        "waiting": i.num_waiting,
                    })
                }),
        );
    }
    items.sort_by(|a, b| a["consumer"].as_str().cmp(&b["consumer"].as_str()));
    Ok(Json(json!({ "items": items })))
}

/// Ask the projector to rebuild the read models into a new version from the event log, then
/// switch reads to it. Rebuilding any one rebuilds the three together. A rebuild already under
/// way is returned instead of starting another.
#[utoipa::path(post, path = "/v1/admin/projections/{name}/rebuild", tag = "admin",
    params(("name" = String, Path, description = "jobs, job_events or job_stats")),
    responses((status = 202, description = "Rebuild requested", body = Object),
              (status = 403, description = "Token lacks operator", body = crate::error::Problem),
              (status = 404, description = "No such projection", body = crate::error::Problem)))]
pub(crate) async fn rebuild(
    State(state): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth.require(OPERATOR)?;
    if Projection::parse(&name).is_none() {
        return Err(ApiError::NotFound(format!(
            "no projection `{name}`; projections: {}",
            Projection::names()
        )));
    }
    let (version, _) = versions::request_rebuild(&state.db, 1)
        .await
        .map_err(ApiError::db)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "projections": Projection::ALL,
            "version": version,
            "state": VersionState::Building.as_str(),
        })),
    ))
}

/// Each projection's version, checkpoint and lag behind the EVENTS stream.
#[utoipa::path(get, path = "/v1/admin/projections", tag = "admin",
    responses((status = 200, description = "Projections", body = Object),
              (status = 403, description = "Token lacks operator", body = crate::error::Problem)))]
pub(crate) async fn projections(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Value>> {
    auth.require(OPERATOR)?;
    let rows = checkpoints::list(&state.db).await.map_err(ApiError::db)?;
    let stream = state.bus.events_stream().await.map_err(ApiError::bus)?;
    let last = stream.cached_info().state.last_sequence;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|c| {
            let checkpoint = u64::try_from(c.last_seq).unwrap_or(0);
            json!({
                "name": c.projection,
                "version": c.version,
                "state": c.state,
                "checkpoint": checkpoint,
                "stream_last_seq": last,
                "lag": last.saturating_sub(checkpoint),
                "updated_at": c.updated_at,
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// Query of `GET /v1/admin/dead-letters`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadLetterQuery {
    /// Only jobs of this kind.
    kind: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Dead-lettered jobs of the caller's tenant, newest first.
#[utoipa::path(get, path = "/v1/admin/dead-letters", operation_id = "list_dead_letters", tag = "admin", params(DeadLetterQuery),
    responses((status = 200, description = "A page of dead-lettered jobs", body = crate::routes::jobs::JobPage),
              (status = 403, description = "Token lacks admin", body = crate::error::Problem)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    auth: Auth,
    query: Result<Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    auth.require(ADMIN)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (items, next_cursor) = reads::page_jobs(
        &state,
        &auth.tenant,
        Some(JobStatus::Failed.as_str()),
        q.kind.as_deref(),
        q.limit,
        q.cursor.as_deref(),
    )
    .await?;
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

/// Run a dead-lettered job again, with a fresh budget of attempts. Its timeline shows
/// `job.redriven`, then the new attempts.
#[utoipa::path(post, path = "/v1/admin/dead-letters/{id}/redrive", operation_id = "redrive_dead_letter", tag = "admin",
    params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 202, description = "Queued again"),
              (status = 404, description = "No such job for this tenant", body = crate::error::Problem),
              (status = 409, description = "The job is not dead-lettered", body = crate::error::Problem)))]
pub(crate) async fn redrive(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth.require(ADMIN)?;
    let id = id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no job {id}")))?;
    let Redriven {
        next_attempt,
        max_attempts,
        ..
    } = submission::redrive(&state, &auth.tenant, id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({ "id": id, "status": JobStatus::Queued.as_str(), "next_attempt": next_attempt, "max_attempts": max_attempts }),
        ),
    ))
}

//! `/v1/jobs`: submit, read, list, cancel, timeline and result.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use events::{JobId, JobStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Auth, JOBS_READ, JOBS_WRITE};
use crate::error::{ApiError, ApiResult};
use crate::extract::AppJson;
use crate::middleware::RequestTrace;
use crate::reads::{self, JobView};
use crate::submission::{self, Accepted, SubmitJob};
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit, list))
        .routes(routes!(get_job))
        .routes(routes!(cancel))
        .routes(routes!(events))
        .routes(routes!(result))
}

/// A page of jobs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct JobPage {
    items: Vec<JobView>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// The answer to a cancellation request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CancelAccepted {
    id: Uuid,
    status: String,
}

/// Submit a job.
///
/// Answers `202` once JetStream has stored `job.submitted` and the first `run` command. With an
/// `Idempotency-Key`, a repeat of the same request answers `200` with the original job; the same
/// key with a different request is `409`.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = SubmitJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "Deduplicates retries of one submission")),
    responses(
        (status = 202, description = "Accepted", body = Accepted),
        (status = 200, description = "Repeat of an earlier submission with the same Idempotency-Key", body = Accepted),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem),
        (status = 401, description = "Missing or invalid token", body = crate::error::Problem),
        (status = 403, description = "Token lacks jobs:write", body = crate::error::Problem),
        (status = 409, description = "Idempotency-Key reused with another request", body = crate::error::Problem),
        (status = 413, description = "Body too large", body = crate::error::Problem),
        (status = 422, description = "Unknown kind or invalid payload", body = crate::error::Problem),
        (status = 429, description = "The tenant's submission rate or active-jobs quota is exceeded, or its webhook host lookups are all taken (see Retry-After)", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable, or this server is at capacity (see Retry-After)", body = crate::error::Problem),
    ))]
pub(crate) async fn submit(
    State(state): State<AppState>,
    auth: Auth,
    Extension(trace): Extension<RequestTrace>,
    headers: HeaderMap,
    AppJson(req): AppJson<SubmitJob>,
) -> ApiResult<Response> {
    auth.require(JOBS_WRITE)?;
    tracing::Span::current().record("tenant", auth.tenant.as_str());
    let given = headers.get("idempotency-key").map(HeaderValue::as_bytes);
    let key = submission::idempotency_key(given, &req)?;
    let (kind, job, webhook_host) = submission::validate(&state, &req)?;
    // Nothing is accepted without JetStream: say so at once rather than after a timeout.
    if !state.bus.is_connected() {
        return Err(ApiError::bus(bus::Error::Disconnected));
    }
    state.limits.check_rate(&auth.tenant, 1)?;
    state
        .limits
        .reserve_active(&state.db, &auth.tenant, 1)
        .await?;
    // The webhook host is looked up only for a submission within the tenant's rate and quota.
    let resolved = match webhook_host {
        Some(host) => state.webhooks.resolve(&auth.tenant, [host]).await,
        None => Default::default(),
    };
    let accepted = match resolved.into_values().find_map(Result::err) {
        Some(refused) => Err(refused.into()),
        None => {
            match submission::check_dependencies(
                &state,
                &auth.tenant,
                &job.workflow.depends_on,
                &[],
            )
            .await
            {
                Ok(()) => {
                    submission::accept(&state, &auth.tenant, &trace.0, key.into(), &req, kind, job)
                        .await
                }
                Err(e) => Err(e),
            }
        }
    };
    if !accepted.as_ref().is_ok_and(|r| r.fresh) {
        state.limits.release_active(&auth.tenant, 1);
    }
    let receipt = accepted?;
    let location =
        HeaderValue::from_str(&receipt.job.links.self_).expect("a path is a valid header");
    Ok((
        receipt.status(),
        [(header::LOCATION, location)],
        Json(receipt.job),
    )
        .into_response())
}

fn parse_id(id: &str) -> ApiResult<JobId> {
    id.parse::<JobId>()
        .map_err(|_| ApiError::NotFound(format!("no job {id}")))
}

/// Get a job.
///
/// Read-your-writes: right after the `202` this never answers 404.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "No such job for this tenant", body = crate::error::Problem),
    ))]
pub(crate) async fn get_job(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    auth.require(JOBS_READ)?;
    let id = parse_id(&id)?;
    Ok(Json(reads::find_job(&state, &auth.tenant, id).await?))
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only jobs in this status. `queued` lists them in the order they will start: highest
    /// priority first, then earliest submitted.
    status: Option<String>,
    /// Only jobs of this kind.
    kind: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List jobs, newest first (queued ones in the order they will start), with keyset pagination.
#[utoipa::path(get, path = "/v1/jobs", operation_id = "list_jobs", tag = "jobs", params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "Bad filter, limit or cursor", body = crate::error::Problem),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    auth: Auth,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<JobPage>> {
    auth.require(JOBS_READ)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (items, next_cursor) = reads::page_jobs(
        &state,
        &auth.tenant,
        q.status.as_deref(),
        q.kind.as_deref(),
        q.limit,
        q.cursor.as_deref(),
    )
    .await?;
    Ok(Json(JobPage { items, next_cursor }))
}

/// Request cancellation.
///
/// A queued job never starts; a running one sees its cancellation token fire and ends
/// `cancelled`. `409` if the job already ended.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", operation_id = "cancel_job", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 202, description = "Cancellation requested", body = CancelAccepted),
        (status = 404, description = "No such job for this tenant", body = crate::error::Problem),
        (status = 409, description = "The job already ended", body = crate::error::Problem),
    ))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    auth: Auth,
    Extension(trace): Extension<RequestTrace>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<CancelAccepted>)> {
    auth.require(JOBS_WRITE)?;
    let id = parse_id(&id)?;
    submission::cancel(&state, &auth.tenant, id, trace.0).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(CancelAccepted {
            id: id.0,
            status: "cancel_requested".into(),
        }),
    ))
}

/// The job's timeline: its CloudEvents, oldest first (CloudEvents JSON batch format).
///
/// With `Accept: text/event-stream`: the same as server-sent events, then the live ones, and the
/// stream ends after the terminal event (at once if the job already ended).
#[utoipa::path(get, path = "/v1/jobs/{id}/events", operation_id = "job_events", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job's CloudEvents (or server-sent events)",
            content_type = "application/cloudevents-batch+json", body = Vec<Object>),
        (status = 404, description = "No such job for this tenant", body = crate::error::Problem),
    ))]
pub(crate) async fn events(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    auth.require(JOBS_READ)?;
    let id = parse_id(&id)?;
    reads::find_job(&state, &auth.tenant, id).await?;
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if wants_sse {
        let filter = crate::live::Filter {
            tenant: auth.tenant.clone(),
            types: Vec::new(),
            kind: None,
            job: Some(id),
        };
        let slot = state.limits.open_stream(&auth.tenant, "sse")?;
        let items =
            crate::routes::events::subscription(&state, &auth, filter, Some(0), true).await?;
        return Ok(crate::routes::events::sse(items, slot));
    }
    let events: Vec<Value> = reads::job_events(&state, &auth.tenant, id)
        .await?
        .into_iter()
        .map(|(_, ev)| ev)
        .collect();
    Ok((
        [(header::CONTENT_TYPE, "application/cloudevents-batch+json")],
        Json(events),
    )
        .into_response())
}

/// The job's result: inlined results and large ones kept in the object store alike.
#[utoipa::path(get, path = "/v1/jobs/{id}/result", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The result (JSON)", body = Object),
        (status = 404, description = "No such job, or it has no result yet", body = crate::error::Problem),
    ))]
pub(crate) async fn result(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    use tokio::io::AsyncReadExt;
    auth.require(JOBS_READ)?;
    let id = parse_id(&id)?;
    let job = reads::find_job(&state, &auth.tenant, id).await?;
    if job.status != JobStatus::Succeeded {
        return Err(ApiError::NotFound(format!(
            "job {id} has no result (status {})",
            job.status.as_str()
        )));
    }
    let Some(reference) = job.result_ref else {
        return Ok(Json(job.result.unwrap_or(Value::Null)).into_response());
    };
    let object = reference
        .get("object")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::Internal("result_ref without object".into()))?
        .to_owned();
    let store = state.bus.results().await.map_err(ApiError::bus)?;
    let mut reader = store
        .get(&object)
        .await
        .map_err(|e| ApiError::bus(bus::Error::bucket(e)))?;
    let mut body = Vec::new();
    reader
        .read_to_end(&mut body)
        .await
        .map_err(|e| ApiError::bus(bus::Error::bucket(e)))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

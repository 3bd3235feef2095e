//! `/v1/jobs`: submit, read, list, cancel, timeline and result.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use events::command::{CancelJob, RunJob};
use events::job::{CancelRequested, Submitted, Webhook};
use events::subjects::msg_id;
use events::{Command, Envelope, JobEvent, JobId, JobKind, JobStatus, Tenant, TraceParent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::{Auth, JOBS_READ, JOBS_WRITE};
use crate::error::{ApiError, ApiResult};
use crate::extract::AppJson;
use crate::middleware::RequestTrace;
use crate::reads::{self, JobLinks, JobView};
use crate::{AppState, SOURCE};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/events", get(events))
        .route("/v1/jobs/{id}/result", get(result))
}

/// Where to POST the terminal event.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookRequest {
    /// `http` or `https` URL.
    url: String,
}

/// A job to run. Only `kind` is required.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitJob {
    /// Which handler runs it, e.g. `sleep`.
    kind: String,
    /// The handler's input.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    payload: Option<Value>,
    /// Attempts before dead-lettering (1 to 100, default 3).
    #[serde(default)]
    max_attempts: Option<u32>,
    /// Per-attempt time limit in ms (1 to 86400000, default 300000).
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Not before this time (RFC 3339).
    #[serde(default)]
    run_at: Option<DateTime<Utc>>,
    /// Completion webhook.
    #[serde(default)]
    webhook: Option<WebhookRequest>,
    /// Deduplicates retries, like the `Idempotency-Key` header (which wins when both are given);
    /// in a batch, each job's own.
    #[serde(default, skip_serializing)]
    idempotency_key: Option<String>,
}

/// The answer to an accepted submission.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted {
    id: Uuid,
    kind: String,
    status: String,
    created_at: DateTime<Utc>,
    /// EVENTS stream sequence of `job.submitted`.
    seq: u64,
    links: JobLinks,
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

fn unprocessable(msg: impl Into<String>) -> ApiError {
    ApiError::Unprocessable(msg.into())
}

/// A submission that passed [`validate`]: its kind, its `job.submitted` data, and its webhook's
/// host name, still to be resolved (after the rate limit and quota, see
/// [`crate::webhook_targets`]).
pub(crate) type Validated = (JobKind, Submitted, Option<String>);

/// Validates a submission, with no lookup, into the kind and the `job.submitted` data.
pub(crate) fn validate(state: &AppState, req: &SubmitJob) -> ApiResult<Validated> {
    let kind = JobKind::parse(&req.kind).map_err(|e| unprocessable(e.to_string()))?;
    let payload = req.payload.clone().unwrap_or(Value::Null);
    state
        .kinds
        .validate(&kind, &payload)
        .map_err(unprocessable)?;
    let max_attempts = req
        .max_attempts
        .unwrap_or(state.settings.default_max_attempts);
    if !(1..=100).contains(&max_attempts) {
        return Err(unprocessable("max_attempts must be between 1 and 100"));
    }
    let timeout_ms = req.timeout_ms.unwrap_or(state.settings.default_timeout_ms);
    if !(1..=86_400_000).contains(&timeout_ms) {
        return Err(unprocessable("timeout_ms must be between 1 and 86400000"));
    }
    let host = match &req.webhook {
        Some(w) => state.webhooks.parse(&w.url)?,
        None => None,
    };
    Ok((
        kind,
        Submitted {
            payload,
            max_attempts,
            timeout_ms,
            run_at: req.run_at,
            webhook: req.webhook.as_ref().map(|w| Webhook { url: w.url.clone() }),
        },
        host,
    ))
}

/// What the idempotency bucket remembers of a key.
#[derive(Debug, Serialize, Deserialize)]
struct Claimed {
    job: JobId,
    request: String,
    created_at: DateTime<Utc>,
}

/// Claims an `Idempotency-Key` for a new job, or returns the job that already holds it.
/// Returns `(job, created_at, fresh)`.
async fn claim_key(
    state: &AppState,
    tenant: &Tenant,
    key: &str,
    req: &SubmitJob,
) -> ApiResult<(JobId, DateTime<Utc>, bool)> {
    let request = hex::encode(Sha256::digest(
        serde_json::to_vec(req).expect("a request serialises"),
    ));
    let slot = format!("{tenant}.{}", hex::encode(Sha256::digest(key.as_bytes())));
    let claim = Claimed {
        job: JobId::new(),
        request,
        created_at: Utc::now(),
    };
    let kv = state.bus.idempotency().await.map_err(ApiError::bus)?;
    let value = serde_json::to_vec(&claim).expect("a claim serialises");
    match kv.create(&slot, value.into()).await {
        Ok(_) => return Ok((claim.job, claim.created_at, true)),
        Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(ApiError::bus(bus::Error::bucket(e))),
    }
    let held = kv
        .get(&slot)
        .await
        .map_err(|e| ApiError::bus(bus::Error::bucket(e)))?
        .and_then(|b| serde_json::from_slice::<Claimed>(&b).ok())
        .ok_or_else(|| ApiError::Unavailable("idempotency key is being claimed; retry".into()))?;
    if held.request != claim.request {
        return Err(ApiError::Conflict(
            "this Idempotency-Key was already used with a different request".into(),
        ));
    }
    Ok((held.job, held.created_at, false))
}

/// The idempotency key of a submission: the header's, else the body's; 1 to 255 visible ASCII
/// characters.
pub(crate) fn idempotency_key(
    headers: Option<&HeaderMap>,
    req: &SubmitJob,
) -> ApiResult<Option<String>> {
    let bad =
        || ApiError::BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into());
    let key = match headers.and_then(|h| h.get("idempotency-key")) {
        Some(v) => v.to_str().map_err(|_| bad())?,
        None => match &req.idempotency_key {
            Some(k) => k.as_str(),
            None => return Ok(None),
        },
    };
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

/// Publishes `job.submitted`, then the first `run` command, waiting for each ack. Message ids
/// derive from the job id, so a repeat (same idempotency key) stores nothing new.
async fn publish_submission(
    state: &AppState,
    tenant: &Tenant,
    id: JobId,
    created_at: DateTime<Utc>,
    kind: &JobKind,
    job: Submitted,
    trace: TraceParent,
) -> ApiResult<u64> {
    let cmd = run_command(tenant, id, kind, &job, &trace);
    let mut ev = Envelope::new(
        SOURCE,
        id,
        tenant.clone(),
        kind.clone(),
        JobEvent::Submitted(job),
    )
    .with_trace(Some(trace));
    ev.time = created_at;
    // The event first, then the command: a job never runs before its submission is in the log
    // (else a fast worker's events could precede it and the read model would miss them). A
    // command lost in between (a crash, an outage) is published again by a repeat of the
    // request and by the workers' submissions audit.
    let ack = state
        .bus
        .publish_event(&ev, &msg_id::submitted(id))
        .await
        .map_err(ApiError::bus)?;
    publish_first_run(state, cmd).await?;
    Ok(ack.sequence)
}

/// The first `run` command of a submitted job.
fn run_command(
    tenant: &Tenant,
    id: JobId,
    kind: &JobKind,
    job: &Submitted,
    trace: &TraceParent,
) -> Envelope<Command> {
    Envelope::new(
        SOURCE,
        id,
        tenant.clone(),
        kind.clone(),
        Command::Run(RunJob::first(job)),
    )
    .with_trace(Some(trace.clone()))
}

/// Publishes a job's first `run` command under its deterministic message id, so a second copy
/// within the duplicate window is dropped by JetStream.
async fn publish_first_run(state: &AppState, cmd: Envelope<Command>) -> ApiResult<()> {
    let id = msg_id::run(cmd.job, 1);
    state
        .bus
        .publish_command(&cmd, &id)
        .await
        .map_err(ApiError::bus)?;
    Ok(())
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
    let key = idempotency_key(Some(&headers), &req)?;
    let (kind, job, webhook_host) = validate(&state, &req)?;
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
        None => accept(&state, &auth.tenant, &trace.0, key, &req, kind, job).await,
    };
    if !matches!(accepted, Ok((StatusCode::ACCEPTED, _))) {
        state.limits.release_active(&auth.tenant, 1);
    }
    let (code, body) = accepted?;
    let location = HeaderValue::from_str(&body.links.self_).expect("a path is a valid header");
    Ok((code, [(header::LOCATION, location)], Json(body)).into_response())
}

/// Accepts one validated submission: claims its idempotency key (a repeat returns the original
/// job, `200`) and publishes it (`202`). The caller has reserved its place in the tenant's
/// quota, and gives it back unless the answer is `202`.
pub(crate) async fn accept(
    state: &AppState,
    tenant: &Tenant,
    trace: &TraceParent,
    key: Option<String>,
    req: &SubmitJob,
    kind: JobKind,
    job: Submitted,
) -> ApiResult<(StatusCode, Accepted)> {
    let (id, created_at, fresh) = match key {
        None => (JobId::new(), Utc::now(), true),
        Some(key) => claim_key(state, tenant, &key, req).await?,
    };
    tracing::Span::current().record("job_id", tracing::field::display(id));
    let known = if fresh {
        None
    } else {
        reads::submitted_event(state, tenant, id).await?
    };
    let seq = match known {
        // A repeat of a job that has not started: its run command may be what the first
        // attempt lost, so publish it again (a copy is dropped as a duplicate).
        Some((seq, ev))
            if reads::last_event(state, tenant, id, "started")
                .await?
                .is_none() =>
        {
            if let JobEvent::Submitted(job) = &ev.payload {
                let trace = ev.traceparent.clone().unwrap_or_else(|| trace.clone());
                publish_first_run(state, run_command(tenant, id, &kind, job, &trace)).await?;
            }
            seq
        }
        Some((seq, _)) => seq,
        // New, or a repeat whose first attempt never got its events stored: publish (again).
        None => {
            publish_submission(state, tenant, id, created_at, &kind, job, trace.clone()).await?
        }
    };
    let status = if fresh {
        metrics::counter!("conveyor_jobs_submitted_total", "kind" => kind.to_string()).increment(1);
        JobStatus::Queued.as_str().to_owned()
    } else {
        reads::query_job(state, tenant, id.0)
            .await
            .ok()
            .flatten()
            .map(|j| j.status)
            .unwrap_or_else(|| JobStatus::Queued.as_str().to_owned())
    };
    let body = Accepted {
        id: id.0,
        kind: kind.to_string(),
        status,
        created_at,
        seq,
        links: JobLinks::of(id.0),
    };
    let code = if fresh {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((code, body))
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
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only jobs in this status.
    status: Option<String>,
    /// Only jobs of this kind.
    kind: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List jobs, newest first, with keyset pagination.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListQuery),
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
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
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
    let job = reads::find_job(&state, &auth.tenant, id).await?;
    if JobStatus::parse(&job.status).is_some_and(JobStatus::is_terminal) {
        return Err(ApiError::Conflict(format!(
            "job {id} already ended ({})",
            job.status
        )));
    }
    let kind = JobKind::parse(&job.kind).map_err(|e| ApiError::Internal(e.to_string()))?;
    let trace = Some(trace.0);
    let ev = Envelope::new(
        SOURCE,
        id,
        auth.tenant.clone(),
        kind.clone(),
        JobEvent::CancelRequested(CancelRequested { reason: None }),
    )
    .with_trace(trace.clone());
    let cmd = Envelope::new(
        SOURCE,
        id,
        auth.tenant.clone(),
        kind,
        Command::Cancel(CancelJob {}),
    )
    .with_trace(trace);
    let (ev_id, cmd_id) = (
        msg_id::cancel(id, "cancel_requested"),
        msg_id::cancel(id, "cancel"),
    );
    tokio::try_join!(
        state.bus.publish_event(&ev, &ev_id),
        state.bus.publish_command(&cmd, &cmd_id),
    )
    .map_err(ApiError::bus)?;
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
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
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
    if job.status != JobStatus::Succeeded.as_str() {
        return Err(ApiError::NotFound(format!(
            "job {id} has no result (status {})",
            job.status
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

//! `/v1/workers`: the worker protocol, for workers in any language (see `docs/workers.md`).
//! Every route needs the `worker` scope (or `worker:any-tenant`); the work is in
//! [`crate::workers`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use events::job::{ErrorClass, ErrorInfo};
use events::JobKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Auth, WORKER, WORKER_ANY_TENANT};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::AppJson;
use crate::kinds::{Catalog, KindInfo, ServedBy};
use crate::middleware::RequestTrace;
use crate::submission::{self, SubmitJob};
use crate::workers::lease::Lease;
use crate::workers::{Report, Scope, MAX_LEASE, MAX_WAIT};
use crate::AppState;

/// The most kinds one lease names.
const MAX_KINDS: usize = 32;
/// The longest worker name.
const MAX_WORKER_NAME: usize = 128;
/// How long a lease waits when the request does not say.
const DEFAULT_WAIT_MS: u64 = 20_000;

/// The protocol's routes. Their bodies may be as large as a batch's: results come in them.
pub(crate) fn router(single_limit: usize) -> OpenApiRouter<AppState> {
    let routes = OpenApiRouter::new()
        .routes(routes!(register_kind))
        .routes(routes!(lease))
        .routes(routes!(heartbeat))
        .routes(routes!(progress))
        .routes(routes!(complete))
        .routes(routes!(fail))
        .routes(routes!(release))
        .routes(routes!(wait))
        .routes(routes!(children))
        .routes(routes!(complete_batch))
        .routes(routes!(fail_batch));
    super::limit_body(
        routes,
        single_limit.saturating_mul(super::batch::BATCH_BODY_FACTOR),
    )
}

/// Whom a worker token serves: its tenant, or every tenant with `worker:any-tenant`.
fn scope(auth: &Auth, worker: Option<String>) -> ApiResult<Scope> {
    let tenant = if auth.has(WORKER_ANY_TENANT) {
        None
    } else if auth.has(WORKER) {
        Some(auth.tenant.clone())
    } else {
        return Err(ApiError::Forbidden(
            "this token lacks the `worker` scope (mint one with `conveyor token --scope worker`)"
                .into(),
        ));
    };
    let worker = worker.unwrap_or_else(|| auth.sub.clone());
    if worker.chars().count() > MAX_WORKER_NAME || worker.chars().any(char::is_control) {
        return Err(ApiError::Unprocessable(format!(
            "`worker` must be at most {MAX_WORKER_NAME} printable characters"
        )));
    }
    Ok(Scope { tenant, worker })
}

/// The kind, if the token covers it.
fn covered_kind(auth: &Auth, kind: &str) -> ApiResult<JobKind> {
    let parsed = JobKind::parse(kind).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    if !auth.covers_kind(kind) {
        return Err(ApiError::Forbidden(format!(
            "this token is limited to other kinds than `{kind}` (its `kinds` claim)"
        )));
    }
    Ok(parsed)
}

/// The lease of `token`, checked against the caller and the job of the path.
fn checked(state: &AppState, auth: &Auth, id: Uuid, token: &str) -> ApiResult<Lease> {
    let scope = scope(auth, None)?;
    let lease = state.workers.verify(token)?;
    if lease.job.0 != id {
        return Err(ApiError::BadRequest(format!(
            "the lease is for job {}, not {id}",
            lease.job
        )));
    }
    if scope.tenant.is_some_and(|t| t != lease.tenant) || !auth.covers_kind(lease.kind.as_str()) {
        return Err(ApiError::Forbidden(
            "this token does not cover the lease's job".into(),
        ));
    }
    Ok(lease)
}

/// A kind a worker serves.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterKind {
    /// JSON Schema of the kind's payload (`null`: payloads are not checked).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    schema: Option<Value>,
}

/// Register a kind a worker serves.
///
/// Records the kind and its payload schema in the kind registry, as a Rust worker does at start:
/// `POST /v1/jobs` then accepts the kind on every API process and validates payloads against the
/// schema. A kind a tenant's worker registered belongs to that tenant: another tenant's worker
/// cannot register it again. Idempotent for its owner.
#[utoipa::path(put, path = "/v1/workers/kinds/{kind}", tag = "workers", request_body = RegisterKind,
    params(("kind" = String, Path, description = "The kind, e.g. `report.monthly`")),
    responses(
        (status = 200, description = "Registered", body = KindInfo),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks `worker` or does not cover the kind", body = Problem),
        (status = 409, description = "A built-in kind, a push kind, or a kind another tenant (or the deployment) registered", body = Problem),
        (status = 422, description = "Not a kind name, or the schema is not a JSON Schema", body = Problem),
        (status = 503, description = "Event bus unavailable", body = Problem),
    ))]
pub(crate) async fn register_kind(
    State(state): State<AppState>,
    auth: Auth,
    Path(kind): Path<String>,
    AppJson(req): AppJson<RegisterKind>,
) -> ApiResult<Json<KindInfo>> {
    let scope = scope(&auth, None)?;
    let kind = covered_kind(&auth, &kind)?;
    if Catalog::is_builtin(&kind) {
        return Err(ApiError::Conflict(format!(
            "`{kind}` is a built-in kind, served by conveyor's own workers"
        )));
    }
    let schema = req.schema.filter(|s| !s.is_null());
    if let Some(s) = &schema {
        Catalog::check_schema(s).map_err(ApiError::Unprocessable)?;
    }
    let earlier = state
        .bus
        .registered_kind(&kind)
        .await
        .map_err(ApiError::bus)?;
    if let Some((entry, _)) = &earlier {
        if entry.push.is_some() {
            return Err(ApiError::Conflict(format!(
                "`{kind}` is a push kind: conveyor delivers its jobs to its endpoint"
            )));
        }
        // A tenant's worker may register again only what its tenant registered.
        if let Some(tenant) = &scope.tenant {
            if entry.owner.as_deref() != Some(tenant.as_str()) {
                return Err(ApiError::Conflict(format!(
                    "`{kind}` is registered by {}: only its workers may register it again",
                    entry
                        .owner
                        .as_deref()
                        .map_or("the deployment".to_owned(), |o| format!("tenant {o}"))
                )));
            }
        }
    }
    let entry = events::kinds::Registered {
        kind: kind.to_string(),
        schema,
        push: None,
        owner: scope.tenant.as_ref().map(ToString::to_string),
    };
    let registered = state
        .bus
        .register_kind_if(&entry, earlier.map(|(_, revision)| revision))
        .await
        .map_err(ApiError::bus)?;
    if !registered {
        return Err(ApiError::Conflict(format!(
            "`{kind}` was registered by another request at the same moment; try again"
        )));
    }
    // Its consumer exists from now on, so jobs submitted before the first lease wait for it.
    state.workers.consumer(&state.bus, &kind).await?;
    let info = state
        .kinds
        .register(&entry)
        .ok_or_else(|| ApiError::Internal(format!("`{kind}` not registered")))?;
    Ok(Json(info))
}

/// What to lease.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeaseRequest {
    /// The kinds to take jobs of (1 to 32).
    kinds: Vec<String>,
    /// The most jobs to take (1 to 256; default 1).
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 256, default = 1)]
    max_jobs: u64,
    /// How long to wait when no job is waiting (0 to 30000 ms; default 20000).
    #[schema(minimum = 0, maximum = 30000, default = 20000)]
    wait_ms: Option<u64>,
    /// The worker's name in `job.started` (default: the token's subject).
    worker: Option<String>,
}

fn one() -> u64 {
    1
}

/// A leased job.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct LeasedJob {
    id: Uuid,
    tenant: String,
    kind: String,
    /// The job's input.
    #[schema(value_type = Object)]
    payload: Value,
    /// 1-based attempt number.
    attempt: u32,
    max_attempts: u32,
    /// When the attempt's `timeout_ms` runs out.
    deadline: DateTime<Utc>,
    /// The lease token: pass it to every report on this job; replace it with the one each
    /// heartbeat returns.
    lease: String,
    /// When the job goes back to the queue unless a heartbeat comes first.
    lease_expires_at: DateTime<Utc>,
    /// How often to heartbeat (ms).
    heartbeat_ms: u64,
    /// How the jobs it waited for ended: its dependencies (with their results) or, for a batch's
    /// callback, the batch's members. Absent for a job that waited for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    upstream: Option<events::job::Upstream>,
}

/// Leased jobs (empty when none came within the wait).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct LeasedJobs {
    jobs: Vec<LeasedJob>,
}

/// Lease jobs.
///
/// Answers as soon as at least one job of `kinds` is leased (with whatever else was waiting, up
/// to `max_jobs`), or with none when `wait_ms` passes. `job.started` is in the log before a job
/// is answered.
#[utoipa::path(post, path = "/v1/workers/lease", tag = "workers", request_body = LeaseRequest,
    responses(
        (status = 200, description = "Leased jobs", body = LeasedJobs),
        (status = 400, description = "Malformed JSON", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks `worker` or does not cover a kind", body = Problem),
        (status = 409, description = "A built-in or push kind, which conveyor serves itself", body = Problem),
        (status = 422, description = "No kinds, too many, an unknown kind, or a bound exceeded", body = Problem),
        (status = 503, description = "Event bus unavailable, or too many workers waiting (see Retry-After)", body = Problem),
    ))]
pub(crate) async fn lease(
    State(state): State<AppState>,
    auth: Auth,
    AppJson(req): AppJson<LeaseRequest>,
) -> ApiResult<Json<LeasedJobs>> {
    let scope = scope(&auth, req.worker)?;
    if req.kinds.is_empty() || req.kinds.len() > MAX_KINDS {
        return Err(ApiError::Unprocessable(format!(
            "`kinds` must name 1 to {MAX_KINDS} kinds"
        )));
    }
    let mut kinds = Vec::with_capacity(req.kinds.len());
    for kind in &req.kinds {
        let kind = covered_kind(&auth, kind)?;
        match state.kinds.served_by(&kind) {
            None => {
                return Err(ApiError::Unprocessable(format!(
                    "unknown job kind `{kind}`: register it first (PUT /v1/workers/kinds/{kind})"
                )))
            }
            Some(ServedBy::Workers) => {}
            Some(ServedBy::Conveyor) => {
                return Err(ApiError::Conflict(format!(
                    "`{kind}` is served by conveyor itself (a built-in or push kind), not by workers of the worker protocol"
                )))
            }
        }
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if !(1..=MAX_LEASE as u64).contains(&req.max_jobs) {
        return Err(ApiError::Unprocessable(format!(
            "`max_jobs` must be 1 to {MAX_LEASE}"
        )));
    }
    let wait_ms = req.wait_ms.unwrap_or(DEFAULT_WAIT_MS);
    if wait_ms > MAX_WAIT.as_millis() as u64 {
        return Err(ApiError::Unprocessable(format!(
            "`wait_ms` must be 0 to {}",
            MAX_WAIT.as_millis()
        )));
    }
    let leased = state
        .workers
        .lease(
            &state.bus,
            &scope,
            &kinds,
            req.max_jobs as usize,
            std::time::Duration::from_millis(wait_ms),
            &state.shutdown,
        )
        .await?;
    let jobs = leased
        .into_iter()
        .map(|l| LeasedJob {
            id: l.lease.job.0,
            tenant: l.lease.tenant.to_string(),
            kind: l.lease.kind.to_string(),
            payload: l.payload,
            attempt: l.lease.attempt,
            max_attempts: l.lease.max_attempts,
            deadline: l.lease.deadline(),
            lease_expires_at: l.lease.expires,
            heartbeat_ms: l.lease.lease_ms / 3,
            lease: l.token,
            upstream: l.upstream,
        })
        .collect();
    Ok(Json(LeasedJobs { jobs }))
}

/// A report on a leased job that carries nothing but the lease.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeaseBody {
    /// The lease token.
    lease: String,
}

/// A renewed lease.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct HeartbeatAnswer {
    /// The renewed lease token: use it from now on.
    lease: String,
    lease_expires_at: DateTime<Utc>,
    /// The job was cancelled: stop, and report `fail` with class `cancelled`.
    cancelled: bool,
}

/// Heartbeat a leased job.
///
/// Extends the lease and says whether the job was cancelled. After the attempt's deadline, the
/// attempt ends as timed out and the answer is `409`.
#[utoipa::path(post, path = "/v1/workers/jobs/{id}/heartbeat", tag = "workers", request_body = LeaseBody,
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "Lease extended", body = HeartbeatAnswer),
        (status = 400, description = "Malformed body or lease", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks `worker`, or does not cover the job", body = Problem),
        (status = 409, description = "The lease is lost (expired, or the attempt timed out): drop the job", body = Problem),
        (status = 503, description = "Event bus unavailable", body = Problem),
    ))]
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
    AppJson(req): AppJson<LeaseBody>,
) -> ApiResult<Json<HeartbeatAnswer>> {
    let lease = checked(&state, &auth, id, &req.lease)?;
    let renewed = state.workers.heartbeat(&state.bus, lease).await?;
    Ok(Json(HeartbeatAnswer {
        lease: renewed.token,
        lease_expires_at: renewed.expires,
        cancelled: renewed.cancelled,
    }))
}

/// A progress report.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProgressBody {
    /// The lease token.
    lease: String,
    /// Numbers this lease's reports from 1: a report sent twice with the same `seq` is stored
    /// once.
    seq: Option<u64>,
    /// Units done.
    current: u64,
    /// Units in all, when known.
    total: Option<u64>,
    /// Free text.
    message: Option<String>,
}

/// The state of a job after a report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ReportAnswer {
    id: Uuid,
    /// `succeeded`, `retry_scheduled`, `dead_lettered`, `cancelled`, `released`, `progressed`;
    /// in a batch also `lease_lost` or `refused`.
    status: String,
    /// Why an item of a batch was not taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl ReportAnswer {
    fn new(id: Uuid, status: &str) -> Self {
        Self {
            id,
            status: status.to_owned(),
            detail: None,
        }
    }
}

/// Report progress.
///
/// Appends `job.progressed`, as a Rust handler's progress report does.
#[utoipa::path(post, path = "/v1/workers/jobs/{id}/progress", tag = "workers", request_body = ProgressBody,
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "Stored", body = ReportAnswer),
        (status = 400, description = "Malformed body or lease", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks `worker`, or does not cover the job", body = Problem),
        (status = 409, description = "The lease is lost: drop the job", body = Problem),
        (status = 503, description = "Event bus unavailable", body = Problem),
    ))]
pub(crate) async fn progress(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
    AppJson(req): AppJson<ProgressBody>,
) -> ApiResult<Json<ReportAnswer>> {
    let lease = checked(&state, &auth, id, &req.lease)?;
    state
        .workers
        .progress(
            &state.bus,
            &lease,
            req.seq,
            (req.current, req.total, req.message),
        )
        .await?;
    Ok(Json(ReportAnswer::new(id, "progressed")))
}

/// A job's result.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteBody {
    /// The lease token.
    lease: String,
    /// The result (any JSON; large ones go to the object store).
    #[serde(default)]
    #[schema(value_type = Object)]
    result: Value,
}

/// Complete a leased job.
///
/// Appends `job.succeeded` with the result, then acknowledges the job's command.
#[utoipa::path(post, path = "/v1/workers/jobs/{id}/complete", tag = "workers", request_body = CompleteBody,
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "Stored", body = ReportAnswer),
        (status = 400, description = "Malformed body or lease", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks `worker`, or does not cover the job", body = Problem),
        (status = 409, description = "The lease is lost (expired, or the job already reported on): drop the job", body = Problem),
        (status = 413, description = "Body too large", body = Problem),
        (status = 503, description = "Event bus unavailable", body = Problem),
    ))]
pub(crate) async fn complete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
    AppJson(req): AppJson<CompleteBody>,
) -> ApiResult<Json<ReportAnswer>> {
    let lease = checked(&state, &auth, id, &req.lease)?;
    let status = state
        .workers
        .conclude(&state.bus, lease, Some(Report::Completed(req.result)))
        .await?;
    Ok(Json(ReportAnswer::new(id, status)))
}

/// Why an attempt failed, as a worker reports it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailureBody {
    /// What went wrong.
    #[serde(default)]
    message: String,
    /// `retryable` (default), `fatal` (dead-letter now), `timeout`, or `cancelled` (the worker
    /// stopped because a heartbeat said the job was cancelled).
    #[serde(default)]
    class: FailureClass,
}

/// How a failure counts.
#[derive(Debug, Default, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FailureClass {
    #[default]
    Retryable,
    Fatal,
    Timeout,
    Cancelled,
}

impl FailureBody {
    fn report(self) -> Report {
        let class = match self.class {
            FailureClass::Cancelled => return Report::Cancelled,
            FailureClass::Retryable => ErrorClass::Retryable,
            FailureClass::Fatal => ErrorClass::Fatal,
            FailureClass::Timeout => ErrorClass::Timeout,
        };
        let message = if self.message.is_empty() {
            "the worker reported a failure without a message".to_owned()
        } else {
            self.message
        };
        Report::Failed(ErrorInfo { class, message })
    }
}

/// A failed attempt.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailBody {
    /// The lease token.
    lease: String,
    error: FailureBody,
}

/// Fail a leased job's attempt.
///
/// Appends `job.failed`, then `job.retry_scheduled` (another attempt after the retry delay) or
/// `job.dead_lettered` (a fatal error, or no attempt left); for class `cancelled`,
/// `job.cancelled`. Then acknowledges the job's command.
#[utoipa::path(post, path = "/v1/workers/jobs/{id}/fail", tag = "workers", request_body = FailBody,
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "Stored", body = ReportAnswer),
        (status = 400, description = "Malformed body or lease", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks `worker`, or does not cover the job", body = Problem),
        (status = 409, description = "The lease is lost: drop the job", body = Problem),
        (status = 503, description = "Event bus unavailable", body = Problem),
    ))]
pub(crate) async fn fail(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
    AppJson(req): AppJson<FailBody>,
) -> ApiResult<Json<ReportAnswer>> {
    let lease = checked(&state, &auth, id, &req.lease)?;
    let status = state
        .workers
        .conclude(&state.bus, lease, Some(req.error.report()))
        .await?;
    Ok(Json(ReportAnswer::new(id, status)))
}

/// Release a leased job.
///
/// Hands the job back to the queue unfinished (a worker shutting down): another worker runs
/// the same attempt.
#[utoipa::path(post, path = "/v1/workers/jobs/{id}/release", tag = "workers", request_body = LeaseBody,
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "Handed back", body = ReportAnswer),
        (status = 400, description = "Malformed body or lease", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks `worker`, or does not cover the job", body = Problem),
        (status = 409, description = "The lease is lost", body = Problem),
        (status = 503, description = "Event bus unavailable", body = Problem),
    ))]
pub(crate) async fn release(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
    AppJson(req): AppJson<LeaseBody>,
) -> ApiResult<Json<ReportAnswer>> {
    let lease = checked(&state, &auth, id, &req.lease)?;
    state.workers.release(&state.bus, &lease).await?;
    Ok(Json(ReportAnswer::new(id, "released")))
}

/// Wait for the job's children.
///
/// Ends the attempt without an outcome: the handler submitted children
/// (`POST /v1/workers/jobs/{id}/children`) and waits for them holding no worker. Appends
/// `job.suspended`; the job's next attempt is leased, with `upstream.children` saying how each
/// child ended, once every child submitted so far has ended. A wait is no failure: it adds one to
/// the job's attempts allowed.
#[utoipa::path(post, path = "/v1/workers/jobs/{id}/wait", tag = "workers", request_body = LeaseBody,
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "Suspended (`status`: `waiting_for_children`)", body = ReportAnswer),
        (status = 400, description = "Malformed body or lease", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks `worker`, or does not cover the job", body = Problem),
        (status = 409, description = "The lease is lost: drop the job", body = Problem),
        (status = 503, description = "Event bus unavailable", body = Problem),
    ))]
pub(crate) async fn wait(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
    AppJson(req): AppJson<LeaseBody>,
) -> ApiResult<Json<ReportAnswer>> {
    let lease = checked(&state, &auth, id, &req.lease)?;
    let status = state
        .workers
        .conclude(&state.bus, lease, Some(Report::WaitsForChildren))
        .await?;
    Ok(Json(ReportAnswer::new(id, status)))
}

/// Children a handler submits.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChildrenBody {
    /// The lease token.
    lease: String,
    /// 1 to 1,000 jobs, as `POST /v1/jobs` takes them (without `idempotency_key`).
    jobs: Vec<SubmitJob>,
    /// A continuation: a job that runs once every one of these children has ended (the
    /// callback of a batch of them), told how each ended. The handler may then end.
    #[serde(default)]
    then: Option<SubmitJob>,
}

/// Submit children of a leased job.
///
/// Submits jobs tied to the job (their `parent`), for its tenant, within its rate and quota. The
/// handler then either ends (with a `then`, its continuation runs once they have all ended) or
/// waits for them (`POST /v1/workers/jobs/{id}/wait`). With an `Idempotency-Key`, a repeat of
/// the request during the same attempt submits the same children, stored once.
#[utoipa::path(post, path = "/v1/workers/jobs/{id}/children", operation_id = "submit_children", tag = "workers", request_body = ChildrenBody,
    params(("id" = Uuid, Path, description = "Job id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Deduplicates retries of this request")),
    responses(
        (status = 202, description = "Submitted", body = crate::routes::batches::ChildrenAccepted),
        (status = 400, description = "Malformed body or lease, or not 1 to 1,000 children", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks `worker`, or does not cover the job", body = Problem),
        (status = 409, description = "The lease is lost: drop the job", body = Problem),
        (status = 413, description = "Body too large", body = Problem),
        (status = 422, description = "A child is invalid", body = Problem),
        (status = 429, description = "The tenant's submission rate or active-jobs quota would be exceeded", body = Problem),
        (status = 503, description = "Event bus unavailable", body = Problem),
    ))]
pub(crate) async fn children(
    State(state): State<AppState>,
    auth: Auth,
    Extension(trace): Extension<RequestTrace>,
    Path(id): Path<Uuid>,
    headers: axum::http::HeaderMap,
    AppJson(req): AppJson<ChildrenBody>,
) -> ApiResult<(StatusCode, Json<crate::routes::batches::ChildrenAccepted>)> {
    let lease = checked(&state, &auth, id, &req.lease)?;
    let given = headers
        .get("idempotency-key")
        .map(axum::http::HeaderValue::as_bytes);
    let key = submission::idempotency_key(given, &SubmitJob::of_kind("noop"))?;
    state.workers.holds(&state.bus, &lease).await?;
    let accepted = crate::routes::batches::submit_children(
        &state,
        &lease.tenant,
        &trace.0,
        (lease.job, lease.attempt),
        key.as_deref(),
        &req.jobs,
        req.then,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// One result of a batch.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteItem {
    id: Uuid,
    lease: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    result: Value,
}

/// Results of several leased jobs.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteBatch {
    /// Up to 256 results.
    jobs: Vec<CompleteItem>,
}

/// One failure of a batch.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailItem {
    id: Uuid,
    lease: String,
    error: FailureBody,
}

/// Failures of several leased jobs.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailBatch {
    /// Up to 256 failures.
    jobs: Vec<FailItem>,
}

/// One answer per report of a batch, in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ReportAnswers {
    jobs: Vec<ReportAnswer>,
}

/// Reports in flight per batch.
const REPORTS_IN_FLIGHT: usize = 32;

/// Each report of a batch, concurrently; one answer per report, in order.
async fn conclude_all(
    state: &AppState,
    auth: &Auth,
    reports: Vec<(Uuid, String, Report)>,
) -> ApiResult<Json<ReportAnswers>> {
    use futures::StreamExt;
    if reports.len() > MAX_LEASE {
        return Err(ApiError::Unprocessable(format!(
            "a batch holds at most {MAX_LEASE} reports"
        )));
    }
    scope(auth, None)?;
    let answers = futures::stream::iter(reports)
        .map(|(id, token, report)| async move {
            let concluded = match checked(state, auth, id, &token) {
                Ok(lease) => {
                    state
                        .workers
                        .conclude(&state.bus, lease, Some(report))
                        .await
                }
                Err(e) => Err(e),
            };
            match concluded {
                Ok(status) => ReportAnswer::new(id, status),
                Err(e) => ReportAnswer {
                    id,
                    status: match e {
                        ApiError::LeaseLost(_) => "lease_lost",
                        _ => "refused",
                    }
                    .to_owned(),
                    detail: Some(e.to_string()),
                },
            }
        })
        .buffered(REPORTS_IN_FLIGHT)
        .collect()
        .await;
    Ok(Json(ReportAnswers { jobs: answers }))
}

/// Complete several leased jobs.
///
/// Each item as `POST /v1/workers/jobs/{id}/complete`; an item's problem does not fail the
/// others.
#[utoipa::path(post, path = "/v1/workers/complete", tag = "workers", request_body = CompleteBatch,
    responses(
        (status = 200, description = "One answer per item, in order", body = ReportAnswers),
        (status = 400, description = "Malformed JSON", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks `worker`", body = Problem),
        (status = 413, description = "Body too large", body = Problem),
        (status = 422, description = "More than 256 items", body = Problem),
    ))]
pub(crate) async fn complete_batch(
    State(state): State<AppState>,
    auth: Auth,
    AppJson(req): AppJson<CompleteBatch>,
) -> ApiResult<Json<ReportAnswers>> {
    let reports = req
        .jobs
        .into_iter()
        .map(|i| (i.id, i.lease, Report::Completed(i.result)))
        .collect();
    conclude_all(&state, &auth, reports).await
}

/// Fail several leased jobs' attempts.
///
/// Each item as `POST /v1/workers/jobs/{id}/fail`; an item's problem does not fail the others.
#[utoipa::path(post, path = "/v1/workers/fail", tag = "workers", request_body = FailBatch,
    responses(
        (status = 200, description = "One answer per item, in order", body = ReportAnswers),
        (status = 400, description = "Malformed JSON", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "The token lacks `worker`", body = Problem),
        (status = 422, description = "More than 256 items", body = Problem),
    ))]
pub(crate) async fn fail_batch(
    State(state): State<AppState>,
    auth: Auth,
    AppJson(req): AppJson<FailBatch>,
) -> ApiResult<Json<ReportAnswers>> {
    let reports = req
        .jobs
        .into_iter()
        .map(|i| (i.id, i.lease, i.error.report()))
        .collect();
    conclude_all(&state, &auth, reports).await
}

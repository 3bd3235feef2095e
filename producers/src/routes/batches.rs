//! Workflows over HTTP: `/v1/batches` (jobs submitted as one batch, with a callback that runs
//! once every member has ended), a job's children (`GET /v1/jobs/{id}/children`, and their
//! submission by a handler, which the worker protocol's route calls).
//!
//! A batch is a job of its own, whose id is the batch's: its callback (of the kind the client
//! names, or the built-in `batch`, which only reports the counts). The scheduler holds it until
//! the batch is sealed and every member has ended, whatever their outcomes, then lets it run with
//! the members' outcomes (`upstream.members`). Its status is the batch's, so a client follows a
//! batch as it follows a job: `GET /v1/jobs/{id}`, its event stream, its webhook.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use events::{JobId, JobKind, JobStatus, Tenant, TraceParent};
use futures::StreamExt;
use readmodel::workflows::{Group, MemberCounts};
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
use crate::routes::batch::{self, MAX_BATCH};
use crate::submission::{self, Identity, SubmitJob};
use crate::AppState;

/// Members of one request in flight at once (each waits for its two publish acks).
const PIPELINE: usize = 256;

/// The most members one request cancels (a larger batch takes more requests).
const CANCEL_MOST: usize = 10_000;

/// The kind of a batch's job when no callback is named.
const DEFAULT_CALLBACK: &str = "batch";

pub(crate) fn router(single_limit: usize) -> OpenApiRouter<AppState> {
    let bodies = super::limit_body(
        OpenApiRouter::new()
            .routes(routes!(create))
            .routes(routes!(add_jobs)),
        single_limit.saturating_mul(batch::BATCH_BODY_FACTOR),
    );
    let small = super::limit_body(
        OpenApiRouter::new()
            .routes(routes!(get_batch))
            .routes(routes!(seal))
            .routes(routes!(cancel))
            .routes(routes!(members))
            .routes(routes!(children)),
        single_limit,
    );
    bodies.merge(small)
}

/// A batch to submit.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBatch {
    /// 0 to 1,000 members now; more with `POST /v1/batches/{id}/jobs` while it is open. Members
    /// take no `idempotency_key` of their own: the request's `Idempotency-Key` covers them all.
    #[serde(default)]
    jobs: Vec<SubmitJob>,
    /// The job that runs once the batch is sealed and every member has ended, whatever their
    /// outcomes (default: a job of the built-in kind `batch`, whose result is the counts).
    #[serde(default)]
    callback: Option<SubmitJob>,
    /// Seal the batch now, with these members (default `true`); `false` keeps it open for more.
    #[serde(default)]
    seal: Option<bool>,
}

/// More members of an open batch.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddJobs {
    /// 1 to 1,000 members.
    jobs: Vec<SubmitJob>,
    /// Seal the batch after these (default `false`).
    #[serde(default)]
    seal: Option<bool>,
}

/// A batch accepted, or members added to it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BatchAccepted {
    /// The batch's id: also its callback job's.
    id: Uuid,
    /// Whether it is sealed (no member can be added).
    sealed: bool,
    /// The members this request submitted, in the order sent.
    jobs: Vec<Uuid>,
    links: BatchLinks,
}

/// Links from a batch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BatchLinks {
    #[serde(rename = "self")]
    self_: String,
    /// Its members.
    jobs: String,
    /// Its callback job (whose status, timeline and result are the batch's).
    callback: String,
}

impl BatchLinks {
    fn of(id: Uuid) -> Self {
        Self {
            self_: format!("/v1/batches/{id}"),
            jobs: format!("/v1/batches/{id}/jobs"),
            callback: format!("/v1/jobs/{id}"),
        }
    }
}

/// A batch and its progress.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BatchView {
    id: Uuid,
    /// The callback's kind.
    kind: String,
    /// The callback's status: `queued` until every member has ended and it starts; then as any
    /// job's.
    #[schema(value_type = String)]
    status: JobStatus,
    /// Whether the batch is sealed.
    sealed: bool,
    sealed_at: Option<DateTime<Utc>>,
    /// Its members by status, as the read model shows them now.
    members: Members,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    /// The callback's result, once it succeeded.
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    links: BatchLinks,
}

/// A batch's members by status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Members {
    total: i64,
    queued: i64,
    running: i64,
    retry_scheduled: i64,
    succeeded: i64,
    failed: i64,
    cancelled: i64,
}

impl From<MemberCounts> for Members {
    fn from(c: MemberCounts) -> Self {
        Self {
            total: c.total(),
            queued: c.queued,
            running: c.running,
            retry_scheduled: c.retry_scheduled,
            succeeded: c.succeeded,
            failed: c.failed,
            cancelled: c.cancelled,
        }
    }
}

/// The answer to a batch's cancellation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BatchCancelled {
    id: Uuid,
    /// Members whose cancellation this request asked (not those an earlier one did).
    cancelled: usize,
    /// Whether members may be left to cancel (a request asks at most 10,000, and goes through
    /// at most 50,000 members not ended): call again.
    more: bool,
}

/// A page of a batch's members.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MemberPage {
    items: Vec<JobView>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// Filters of the members' list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct MemberQuery {
    /// Only members in this status.
    status: Option<String>,
    /// 1 to 1000 (default 100).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Prefixes a refusal of one job of a request with where it is (`jobs[3]`).
fn at(place: &str, e: ApiError) -> ApiError {
    match e {
        ApiError::Unprocessable(m) => ApiError::Unprocessable(format!("{place}: {m}")),
        ApiError::BadRequest(m) => ApiError::BadRequest(format!("{place}: {m}")),
        e => e,
    }
}

fn not_a_batch(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no batch {id}"))
}

/// How a request's jobs are checked together.
#[derive(Debug, Clone, Copy)]
struct Checks<'a> {
    /// The first job is a batch's callback (not counted against the rate).
    callback: bool,
    /// The jobs they join (their batch, their parent): none of them may depend on these.
    joining: &'a [JobId],
    /// Whether they count against the tenant's rate and quota (not a repeat of a request taken).
    charge: bool,
}

/// Validates `jobs` all together, within the tenant's rate and quota: all or none. Returns their
/// kinds and `job.submitted` data.
async fn prepare_all(
    state: &AppState,
    tenant: &Tenant,
    jobs: &[SubmitJob],
    checks: Checks<'_>,
) -> ApiResult<Vec<(JobKind, events::job::Submitted)>> {
    let place = |i: usize| match (checks.callback, i) {
        (true, 0) => "callback".to_owned(),
        (true, i) => format!("jobs[{}]", i - 1),
        (false, i) => format!("jobs[{i}]"),
    };
    if let Some(i) = jobs.iter().position(SubmitJob::has_own_key) {
        return Err(ApiError::Unprocessable(format!(
            "{}: a batch's jobs take no idempotency_key; the request's Idempotency-Key covers them all",
            place(i)
        )));
    }
    let unrated = usize::from(checks.callback);
    let (checked, reserved) = batch::prepare(state, tenant, jobs, unrated, checks.charge).await?;
    let mut prepared = Vec::with_capacity(jobs.len());
    let mut refused = None;
    for (i, c) in checked.into_iter().enumerate() {
        match c {
            Ok((_, (kind, job, _))) => prepared.push((kind, job)),
            Err(e) => {
                refused.get_or_insert_with(|| at(&place(i), e));
            }
        }
    }
    if refused.is_none() {
        for (i, (_, job)) in prepared.iter().enumerate() {
            let deps = &job.workflow.depends_on;
            let checked = submission::check_dependencies(state, tenant, deps, checks.joining);
            if let Err(e) = checked.await {
                refused = Some(at(&place(i), e));
                break;
            }
        }
    }
    if let Some(e) = refused {
        state.limits.release_active(tenant, reserved as u64);
        return Err(e);
    }
    Ok(prepared)
}

/// Where the ids of jobs submitted together come from: new ones, or, for a request with an
/// idempotency key, ids derived from the key's claim (`page`), the same on every repeat and in
/// the order sent.
#[derive(Debug, Clone, Copy)]
enum Ids {
    New,
    Derived(JobId),
}

impl Ids {
    /// The ids of `n` jobs, the first the `from`th of the page.
    fn of(&self, from: usize, n: usize) -> Vec<Identity> {
        (from..from + n)
            .map(|i| match self {
                Self::Derived(page) => Identity::Given(JobId::derived_nth(
                    page.timestamp_ms(),
                    &page.to_string(),
                    u16::try_from(i).unwrap_or(u16::MAX),
                )),
                Self::New => Identity::New,
            })
            .collect()
    }
}

/// Claims a page's idempotency `key` (scoped by `scope`, so one key names one page of one
/// batch or parent): its ids and whether it is new. Without a key, new ids.
async fn claim_page(
    state: &AppState,
    tenant: &Tenant,
    scope: &str,
    key: Option<&str>,
    request: &impl Serialize,
) -> ApiResult<(Ids, bool)> {
    match key {
        None => Ok((Ids::New, true)),
        Some(key) => {
            let (page, _, fresh) =
                submission::claim_key(state, tenant, &format!("{scope} {key}"), request).await?;
            Ok((Ids::Derived(page), fresh))
        }
    }
}

/// Publishes `jobs` (validated, their workflow set), pipelined, each under its identity. Returns
/// their ids and how many were new; the quota reserved for the others (if `charged`) goes back.
async fn submit_all(
    state: &AppState,
    (tenant, trace): (&Tenant, &TraceParent),
    reqs: &[SubmitJob],
    jobs: Vec<(JobKind, events::job::Submitted)>,
    ids: Vec<Identity>,
    charged: bool,
) -> ApiResult<(Vec<Uuid>, usize)> {
    let results: Vec<ApiResult<submission::Receipt>> =
        futures::stream::iter(reqs.iter().cloned().zip(jobs).zip(ids))
            .map(|((req, (kind, job)), identity)| {
                let (state, tenant, trace) = (state.clone(), tenant.clone(), trace.clone());
                async move {
                    submission::accept(&state, &tenant, &trace, identity, &req, kind, job).await
                }
            })
            .buffered(PIPELINE)
            .collect()
            .await;
    let mut ids = Vec::with_capacity(results.len());
    let mut fresh = 0;
    let mut failed = None;
    for r in results {
        match r {
            Ok(receipt) => {
                fresh += usize::from(receipt.fresh);
                ids.push(receipt.job.id);
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    if charged {
        state
            .limits
            .release_active(tenant, (reqs.len() - fresh) as u64);
    }
    match failed {
        Some(e) => Err(e),
        None => Ok((ids, fresh)),
    }
}

/// Publishes `members` of batch `id`, with their `ids` (from the `from`th of the page).
async fn submit_members(
    state: &AppState,
    to: (&Tenant, &TraceParent),
    (id, ids, from): (JobId, Ids, usize),
    reqs: &[SubmitJob],
    mut members: Vec<(JobKind, events::job::Submitted)>,
    charged: bool,
) -> ApiResult<(Vec<Uuid>, usize)> {
    for (_, job) in &mut members {
        job.workflow.batch = Some(id);
    }
    let ids = ids.of(from, members.len());
    submit_all(state, to, reqs, members, ids, charged).await
}

/// Children submitted by a handler: their ids, and the continuation's if one was asked for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ChildrenAccepted {
    /// The children, in the order sent.
    jobs: Vec<Uuid>,
    /// The continuation: a batch of the children whose callback it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    then: Option<Uuid>,
}

/// Submits `reqs` as children of job `parent` (its attempt `attempt`), for `tenant`: with `then`,
/// as the members of a sealed batch whose callback is `then` (the parent's continuation, a child
/// too). With `key` (the request's idempotency key), a repeat submits the same jobs again, stored
/// once.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn submit_children(
    state: &AppState,
    tenant: &Tenant,
    trace: &TraceParent,
    (parent, attempt): (JobId, u32),
    key: Option<&str>,
    reqs: &[SubmitJob],
    then: Option<SubmitJob>,
) -> ApiResult<ChildrenAccepted> {
    if reqs.is_empty() || reqs.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "a request submits 1 to {MAX_BATCH} children, this one has {}",
            reqs.len()
        )));
    }
    let scope = format!("children of {parent} attempt {attempt}");
    let (ids, fresh) = claim_page(state, tenant, &scope, key, &(reqs, &then)).await?;
    let with_then = then.is_some();
    let all: Vec<SubmitJob> = then.into_iter().chain(reqs.iter().cloned()).collect();
    let checks = Checks {
        callback: with_then,
        joining: &[parent],
        charge: fresh,
    };
    let mut prepared = prepare_all(state, tenant, &all, checks).await?;
    for (_, job) in &mut prepared {
        job.workflow.parent = Some(parent);
    }
    let Some((kind, mut callback)) = with_then.then(|| prepared.remove(0)) else {
        let ids = ids.of(0, prepared.len());
        let (jobs, _) = submit_all(state, (tenant, trace), reqs, prepared, ids, fresh).await?;
        return Ok(ChildrenAccepted { jobs, then: None });
    };
    // The continuation first in the page, as sent.
    callback.workflow.is_batch = true;
    let id = match ids.of(0, 1).pop() {
        Some(Identity::Given(id)) => id,
        _ => JobId::new(),
    };
    let receipt = submission::accept(
        state,
        tenant,
        trace,
        Identity::Given(id),
        &all[0],
        kind.clone(),
        callback,
    )
    .await
    .inspect_err(|_| {
        if fresh {
            state.limits.release_active(tenant, all.len() as u64)
        }
    })?;
    if !receipt.fresh && fresh {
        state.limits.release_active(tenant, 1);
    }
    let to = (tenant, trace);
    let (jobs, _) = submit_members(state, to, (id, ids, 1), reqs, prepared, fresh).await?;
    submission::seal(state, tenant, id, &kind, trace.clone()).await?;
    Ok(ChildrenAccepted {
        jobs,
        then: Some(id.0),
    })
}

/// Submit a batch.
///
/// Submits the batch's own job (its callback) and its members, then, unless `seal` is `false`,
/// seals it. The callback runs once, when every member has ended. All jobs are validated first:
/// one refused refuses the request (its place in `detail`), and nothing is submitted. With an
/// `Idempotency-Key`, a repeat answers `200` with the same batch and member ids, publishing what
/// an interrupted first try may have missed.
#[utoipa::path(post, path = "/v1/batches", operation_id = "create_batch", tag = "batches", request_body = CreateBatch,
    params(("Idempotency-Key" = Option<String>, Header, description = "Deduplicates retries of the whole request")),
    responses(
        (status = 202, description = "Accepted", body = BatchAccepted),
        (status = 200, description = "Repeat of an earlier request with the same Idempotency-Key", body = BatchAccepted),
        (status = 400, description = "Malformed JSON, or more than 1,000 members", body = crate::error::Problem),
        (status = 401, description = "Missing or invalid token", body = crate::error::Problem),
        (status = 403, description = "Token lacks jobs:write", body = crate::error::Problem),
        (status = 409, description = "Idempotency-Key reused with another request", body = crate::error::Problem),
        (status = 413, description = "Body too large", body = crate::error::Problem),
        (status = 422, description = "A job is invalid (unknown kind, invalid payload, unknown dependency)", body = crate::error::Problem),
        (status = 429, description = "The tenant's submission rate or active-jobs quota would be exceeded", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    auth: Auth,
    Extension(trace): Extension<RequestTrace>,
    headers: HeaderMap,
    AppJson(req): AppJson<CreateBatch>,
) -> ApiResult<Response> {
    auth.require(JOBS_WRITE)?;
    tracing::Span::current().record("tenant", auth.tenant.as_str());
    if req.jobs.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "a request adds at most {MAX_BATCH} members, this one has {}; add more with POST /v1/batches/{{id}}/jobs",
            req.jobs.len()
        )));
    }
    let given = headers.get("idempotency-key").map(HeaderValue::as_bytes);
    let callback = req
        .callback
        .clone()
        .unwrap_or_else(|| SubmitJob::of_kind(DEFAULT_CALLBACK));
    let key = submission::idempotency_key(given, &SubmitJob::of_kind(DEFAULT_CALLBACK))?;
    let all: Vec<SubmitJob> = std::iter::once(callback)
        .chain(req.jobs.iter().cloned())
        .collect();
    // The key first: a repeat (its first answer lost) is not charged again.
    let (id, fresh) = match &key {
        Some(key) => {
            let (id, _, fresh) = submission::claim_key(&state, &auth.tenant, key, &req).await?;
            (id, fresh)
        }
        None => (JobId::new(), true),
    };
    let checks = Checks {
        callback: true,
        joining: &[],
        charge: fresh,
    };
    let mut prepared = prepare_all(&state, &auth.tenant, &all, checks).await?;
    let members = prepared.split_off(1);
    let (kind, mut job) = prepared.pop().expect("the callback");
    job.workflow.is_batch = true;
    let release = |n: usize| {
        if fresh {
            state.limits.release_active(&auth.tenant, n as u64)
        }
    };
    let receipt = submission::accept(
        &state,
        &auth.tenant,
        &trace.0,
        Identity::Given(id),
        &all[0],
        kind.clone(),
        job,
    )
    .await
    .inspect_err(|_| release(all.len()))?;
    if !receipt.fresh {
        release(1);
    }
    // The members of a keyed request: ids derived from the batch's, the same on a repeat.
    let ids = if key.is_some() {
        Ids::Derived(id)
    } else {
        Ids::New
    };
    let to = (&auth.tenant, &trace.0);
    let sealed = req.seal.unwrap_or(true);
    let submitted = async {
        let (jobs, _) = submit_members(&state, to, (id, ids, 0), &req.jobs, members, fresh).await?;
        if sealed {
            submission::seal(&state, &auth.tenant, id, &kind, trace.0.clone()).await?;
        }
        Ok::<_, ApiError>(jobs)
    };
    let jobs = match submitted.await {
        Ok(jobs) => jobs,
        Err(e) => {
            // Without a key the client cannot take this batch up again: its callback is
            // cancelled rather than left waiting for ever (members already in run as jobs).
            if key.is_none() {
                let cancelled = submission::cancel(&state, &auth.tenant, id, trace.0.clone()).await;
                tracing::warn!(batch = %id, error = %e, cancelled = cancelled.is_ok(),
                    "a batch was not fully submitted; its callback was cancelled");
            }
            return Err(e);
        }
    };
    metrics::counter!("conveyor_batches_submitted_total").increment(u64::from(fresh));
    let status = if fresh {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(BatchAccepted {
            id: id.0,
            sealed,
            jobs,
            links: BatchLinks::of(id.0),
        }),
    )
        .into_response())
}

/// The batch `id` of `tenant` (its callback job), read-your-writes; 404 if it is no batch.
async fn find_batch(state: &AppState, tenant: &Tenant, id: Uuid) -> ApiResult<JobView> {
    let job = reads::find_job(state, tenant, JobId(id))
        .await
        .map_err(|e| match e {
            ApiError::NotFound(_) => not_a_batch(id),
            e => e,
        })?;
    if !job.is_batch {
        return Err(not_a_batch(id));
    }
    Ok(job)
}

/// Whether batch `id` is sealed, from the log (exact, even before the read model shows it).
async fn is_sealed(state: &AppState, tenant: &Tenant, id: Uuid) -> ApiResult<bool> {
    Ok(reads::last_event(state, tenant, JobId(id), "sealed")
        .await?
        .is_some())
}

/// Add members to an open batch.
///
/// `409` if the batch is sealed or its cancellation was requested. Members are validated all
/// together, as in `POST /v1/batches`; with an `Idempotency-Key` (one per page), a repeat adds
/// the same members once.
#[utoipa::path(post, path = "/v1/batches/{id}/jobs", tag = "batches", request_body = AddJobs,
    params(("id" = Uuid, Path, description = "Batch id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Deduplicates retries of this page")),
    responses(
        (status = 202, description = "Added", body = BatchAccepted),
        (status = 200, description = "A repeat of a page added before with the same Idempotency-Key", body = BatchAccepted),
        (status = 400, description = "Malformed JSON, or not 1 to 1,000 members", body = crate::error::Problem),
        (status = 401, description = "Missing or invalid token", body = crate::error::Problem),
        (status = 403, description = "Token lacks jobs:write", body = crate::error::Problem),
        (status = 404, description = "No such batch", body = crate::error::Problem),
        (status = 409, description = "The batch is sealed or cancelled, or the Idempotency-Key was used for another page", body = crate::error::Problem),
        (status = 413, description = "Body too large", body = crate::error::Problem),
        (status = 422, description = "A job is invalid", body = crate::error::Problem),
        (status = 429, description = "The tenant's submission rate or active-jobs quota would be exceeded", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn add_jobs(
    State(state): State<AppState>,
    auth: Auth,
    Extension(trace): Extension<RequestTrace>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    AppJson(req): AppJson<AddJobs>,
) -> ApiResult<Response> {
    auth.require(JOBS_WRITE)?;
    tracing::Span::current().record("tenant", auth.tenant.as_str());
    if req.jobs.is_empty() || req.jobs.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "a page adds 1 to {MAX_BATCH} members, this one has {}",
            req.jobs.len()
        )));
    }
    let given = headers.get("idempotency-key").map(HeaderValue::as_bytes);
    let key = submission::idempotency_key(given, &SubmitJob::of_kind(DEFAULT_CALLBACK))?;
    let batch = find_batch(&state, &auth.tenant, id).await?;
    let scope = format!("page of batch {id}");
    let (ids, claimed_now) = claim_page(&state, &auth.tenant, &scope, key.as_deref(), &req).await?;
    // A repeat of a page that was stored (its first member in the log) is taken again even once
    // the batch is sealed: it adds nothing that was stored. Any other page (a new one, or one
    // whose key a refused try claimed) must find the batch open.
    let repeat = match (claimed_now, ids.of(0, 1).pop()) {
        (false, Some(Identity::Given(first))) => {
            reads::submitted_event(&state, &auth.tenant, first)
                .await?
                .is_some()
        }
        _ => false,
    };
    if !repeat {
        if is_sealed(&state, &auth.tenant, id).await? {
            return Err(ApiError::Conflict(format!(
                "batch {id} is sealed: no member can be added"
            )));
        }
        let cancelled = batch.status.is_terminal()
            || reads::last_event(&state, &auth.tenant, JobId(id), "cancel_requested")
                .await?
                .is_some();
        if cancelled {
            return Err(ApiError::Conflict(format!("batch {id} was cancelled")));
        }
    }
    let fresh = !repeat;
    // The members may wait for nothing that waits for the batch (or for its parent).
    let joining: Vec<JobId> = std::iter::once(JobId(id))
        .chain(batch.parent.map(JobId))
        .collect();
    let checks = Checks {
        callback: false,
        joining: &joining,
        charge: fresh,
    };
    let members = prepare_all(&state, &auth.tenant, &req.jobs, checks).await?;
    let to = (&auth.tenant, &trace.0);
    let (jobs, _) =
        submit_members(&state, to, (JobId(id), ids, 0), &req.jobs, members, fresh).await?;
    let kind = JobKind::parse(&batch.kind).map_err(|e| ApiError::Internal(e.to_string()))?;
    let sealed = req.seal.unwrap_or(false);
    if sealed {
        submission::seal(&state, &auth.tenant, JobId(id), &kind, trace.0.clone()).await?;
    }
    let status = if fresh {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(BatchAccepted {
            id,
            sealed: sealed || is_sealed(&state, &auth.tenant, id).await?,
            jobs,
            links: BatchLinks::of(id),
        }),
    )
        .into_response())
}

/// Seal a batch.
///
/// No member can be added after; once every member has ended, the callback runs. Sealing a
/// sealed batch changes nothing.
#[utoipa::path(post, path = "/v1/batches/{id}/seal", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id")),
    responses(
        (status = 200, description = "Sealed", body = BatchView),
        (status = 401, description = "Missing or invalid token", body = crate::error::Problem),
        (status = 403, description = "Token lacks jobs:write", body = crate::error::Problem),
        (status = 404, description = "No such batch", body = crate::error::Problem),
        (status = 503, description = "Event bus or read model unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn seal(
    State(state): State<AppState>,
    auth: Auth,
    Extension(trace): Extension<RequestTrace>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<BatchView>> {
    auth.require(JOBS_WRITE)?;
    let batch = find_batch(&state, &auth.tenant, id).await?;
    let kind = JobKind::parse(&batch.kind).map_err(|e| ApiError::Internal(e.to_string()))?;
    submission::seal(&state, &auth.tenant, JobId(id), &kind, trace.0).await?;
    let mut view = view(&state, batch).await?;
    view.sealed = true;
    Ok(Json(view))
}

async fn view(state: &AppState, batch: JobView) -> ApiResult<BatchView> {
    let counts = readmodel::workflows::counts(&state.db, Group::Members(batch.id))
        .await
        .map_err(ApiError::db)?;
    Ok(BatchView {
        id: batch.id,
        kind: batch.kind,
        status: batch.status,
        sealed: batch.sealed_at.is_some(),
        sealed_at: batch.sealed_at,
        members: counts.into(),
        created_at: batch.created_at,
        finished_at: batch.finished_at,
        result: batch.result,
        links: BatchLinks::of(batch.id),
    })
}

/// Get a batch and its progress.
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id")),
    responses(
        (status = 200, description = "The batch", body = BatchView),
        (status = 401, description = "Missing or invalid token", body = crate::error::Problem),
        (status = 403, description = "Token lacks jobs:read", body = crate::error::Problem),
        (status = 404, description = "No such batch", body = crate::error::Problem),
        (status = 503, description = "Read model unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn get_batch(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<BatchView>> {
    auth.require(JOBS_READ)?;
    let batch = find_batch(&state, &auth.tenant, id).await?;
    Ok(Json(view(&state, batch).await?))
}

/// List a batch's members.
///
/// In submission order; `status` filters.
#[utoipa::path(get, path = "/v1/batches/{id}/jobs", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id"), MemberQuery),
    responses(
        (status = 200, description = "A page of members", body = MemberPage),
        (status = 400, description = "Invalid status, limit or cursor", body = crate::error::Problem),
        (status = 401, description = "Missing or invalid token", body = crate::error::Problem),
        (status = 403, description = "Token lacks jobs:read", body = crate::error::Problem),
        (status = 404, description = "No such batch", body = crate::error::Problem),
        (status = 503, description = "Read model unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn members(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
    Query(q): Query<MemberQuery>,
) -> ApiResult<Json<MemberPage>> {
    auth.require(JOBS_READ)?;
    find_batch(&state, &auth.tenant, id).await?;
    Ok(Json(
        page_of(&state, &auth.tenant, Group::Members(id), q).await?,
    ))
}

/// List a job's children.
///
/// The jobs its handler submitted (their `parent` is this job), in submission order, with a
/// continuation among them; `status` filters.
#[utoipa::path(get, path = "/v1/jobs/{id}/children", operation_id = "list_children", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id"), MemberQuery),
    responses(
        (status = 200, description = "A page of children", body = MemberPage),
        (status = 400, description = "Invalid status, limit or cursor", body = crate::error::Problem),
        (status = 401, description = "Missing or invalid token", body = crate::error::Problem),
        (status = 403, description = "Token lacks jobs:read", body = crate::error::Problem),
        (status = 404, description = "No such job", body = crate::error::Problem),
        (status = 503, description = "Read model unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn children(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
    Query(q): Query<MemberQuery>,
) -> ApiResult<Json<MemberPage>> {
    auth.require(JOBS_READ)?;
    reads::find_job(&state, &auth.tenant, JobId(id)).await?;
    Ok(Json(
        page_of(&state, &auth.tenant, Group::Children(id), q).await?,
    ))
}

/// A page of `group`'s jobs, from the query as clients send it.
async fn page_of(
    state: &AppState,
    tenant: &Tenant,
    group: Group,
    q: MemberQuery,
) -> ApiResult<MemberPage> {
    let status = q
        .status
        .as_deref()
        .map(|s| {
            JobStatus::parse(s).ok_or_else(|| ApiError::BadRequest(format!("unknown status `{s}`")))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let after = q
        .cursor
        .as_deref()
        .map(|c| Uuid::parse_str(c).map_err(|_| ApiError::BadRequest("invalid cursor".into())))
        .transpose()?;
    let rows = readmodel::workflows::page(&state.db, tenant, group, status, after, limit + 1)
        .await
        .map_err(ApiError::db)?;
    let mut items: Vec<JobView> = rows.into_iter().map(JobView::from).collect();
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|j| j.id.to_string())
    });
    Ok(MemberPage {
        items,
        next_cursor: next_cursor.flatten(),
    })
}

/// Cancel a batch.
///
/// Cancels its callback first (so it never runs), then every member that has not ended (running
/// ones see their cancellation, waiting ones never start), up to 10,000 a request: with `more`,
/// call again (`cancelled` counts the members this request asked; a `409` then says all ended). Members submitted in the last moment, not yet in the read model, are not seen; no
/// member can be added once this was asked. `409` once the batch and every member have ended.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", operation_id = "cancel_batch", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id")),
    responses(
        (status = 202, description = "Cancellation requested", body = BatchCancelled),
        (status = 401, description = "Missing or invalid token", body = crate::error::Problem),
        (status = 403, description = "Token lacks jobs:write", body = crate::error::Problem),
        (status = 404, description = "No such batch", body = crate::error::Problem),
        (status = 409, description = "The batch and every member already ended", body = crate::error::Problem),
        (status = 503, description = "Event bus or read model unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    auth: Auth,
    Extension(trace): Extension<RequestTrace>,
    Path(id): Path<Uuid>,
) -> ApiResult<(StatusCode, Json<BatchCancelled>)> {
    auth.require(JOBS_WRITE)?;
    tracing::Span::current().record("tenant", auth.tenant.as_str());
    let batch = find_batch(&state, &auth.tenant, id).await?;
    let open = |after| {
        readmodel::workflows::page(
            &state.db,
            &auth.tenant,
            Group::Members(id),
            None,
            after,
            1000,
        )
    };
    let first = open(None).await.map_err(ApiError::db)?;
    if batch.status.is_terminal() && first.iter().all(|m| m.status.is_terminal()) {
        let counts = readmodel::workflows::counts(&state.db, Group::Members(id))
            .await
            .map_err(ApiError::db)?;
        if counts.total() == counts.ended() {
            return Err(ApiError::Conflict(format!(
                "batch {id} already ended ({}), and so has every member",
                batch.status.as_str()
            )));
        }
    }
    if !batch.status.is_terminal() {
        match submission::cancel(&state, &auth.tenant, JobId(id), trace.0.clone()).await {
            Ok(()) | Err(ApiError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    // Counted: members asked now (not those asked by an earlier request). Bounded: the cancels
    // asked now, and the members gone through.
    let (mut cancelled, mut seen, mut more) = (0, 0, false);
    let mut page = first;
    while let Some(last) = page.last().map(|m| m.id) {
        if cancelled >= CANCEL_MOST || seen >= 5 * CANCEL_MOST {
            more = true;
            break;
        }
        let unended: Vec<(Uuid, String)> = page
            .iter()
            .filter(|m| !m.status.is_terminal())
            .map(|m| (m.id, m.kind.clone()))
            .collect();
        seen += unended.len();
        let results: Vec<ApiResult<bool>> = futures::stream::iter(unended)
            .map(|(member, kind)| {
                let (state, tenant, trace) = (state.clone(), auth.tenant.clone(), trace.0.clone());
                async move {
                    let kind =
                        JobKind::parse(&kind).map_err(|e| ApiError::Internal(e.to_string()))?;
                    submission::request_cancel(&state, &tenant, JobId(member), &kind, trace).await
                }
            })
            .buffered(PIPELINE)
            .collect()
            .await;
        for r in results {
            cancelled += usize::from(r?);
        }
        page = open(Some(last)).await.map_err(ApiError::db)?;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(BatchCancelled {
            id,
            cancelled,
            more,
        }),
    ))
}

//! `POST /v1/jobs/batch`: up to 1,000 jobs in one request, each validated, deduplicated and
//! answered on its own; the valid ones are published together, pipelined.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, JOBS_WRITE};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::AppJson;
use crate::middleware::RequestTrace;
use crate::submission::{self, Receipt, SubmitJob};
use crate::AppState;

/// The most jobs in one batch.
pub const MAX_BATCH: usize = 1000;
/// A batch's body may be as large as this many single submissions.
pub(crate) const BATCH_BODY_FACTOR: usize = 16;
/// Submissions of one batch in flight at once (each waits for its two publish acks).
const PIPELINE: usize = 256;

/// `single_limit` is the body limit of one submission: a batch may be as large as
/// [`BATCH_BODY_FACTOR`] of them.
pub(crate) fn router(single_limit: usize) -> OpenApiRouter<AppState> {
    super::limit_body(
        OpenApiRouter::new().routes(routes!(submit_batch)),
        single_limit.saturating_mul(BATCH_BODY_FACTOR),
    )
}

/// Jobs to submit together.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitBatch {
    /// 1 to 1,000 jobs; each may carry its own `idempotency_key`.
    jobs: Vec<SubmitJob>,
}

/// What became of one job of a batch: `job` when `status` is 202 (accepted) or 200 (a repeat of
/// an earlier submission with the same idempotency key), `problem` otherwise.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BatchItem {
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<submission::Accepted>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<Problem>,
}

/// The answer to a batch: one item per job, in the order sent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BatchResult {
    /// Jobs accepted (202).
    accepted: usize,
    /// Repeats of earlier submissions (200).
    repeated: usize,
    /// Jobs refused or not stored (see their `problem`).
    failed: usize,
    items: Vec<BatchItem>,
}

impl BatchItem {
    fn of(result: ApiResult<Receipt>) -> Self {
        match result {
            Ok(receipt) => Self {
                status: receipt.status().as_u16(),
                job: Some(receipt.job),
                problem: None,
            },
            Err(e) => {
                let problem = e.problem();
                Self {
                    status: problem.status,
                    job: None,
                    problem: Some(problem),
                }
            }
        }
    }
}

/// A submission of several jobs, checked: each one's idempotency key and validated job, or why
/// it was refused.
pub(crate) type Checked = Vec<ApiResult<(Option<String>, submission::Validated)>>;

/// Validates `jobs`, counts the valid ones against `tenant`'s rate (but for `unrated` of them: a
/// batch's own job is bookkeeping, not work submitted) and quota, refusing them all (429) if they
/// would exceed it, then looks up each distinct webhook host once, all at once. Returns each
/// job's check and how many passed validation and were reserved in the quota (the caller gives
/// back what it does not accept). `charge: false` (a repeat of a request already taken) skips the
/// rate and the quota.
pub(crate) async fn prepare(
    state: &AppState,
    tenant: &events::Tenant,
    jobs: &[SubmitJob],
    unrated: usize,
    charge: bool,
) -> ApiResult<(Checked, usize)> {
    let mut checked: Checked = jobs
        .iter()
        .map(|req| {
            let key = submission::idempotency_key(None, req)?;
            Ok((key, submission::validate(state, req)?))
        })
        .collect();
    let valid = checked.iter().filter(|c| c.is_ok()).count();
    if valid > 0 && !state.bus.is_connected() {
        return Err(ApiError::bus(bus::Error::Disconnected));
    }
    if valid > 0 && charge {
        let rated = u32::try_from(valid.saturating_sub(unrated)).unwrap_or(u32::MAX);
        if rated > 0 {
            state.limits.check_rate(tenant, rated)?;
        }
        state
            .limits
            .reserve_active(&state.db, tenant, valid as u64)
            .await?;
    }
    // Within the rate and quota: each distinct webhook host is looked up once, all at once.
    let hosts = checked
        .iter()
        .filter_map(|c| c.as_ref().ok().and_then(|(_, (_, _, host))| host.clone()));
    let resolved = state.webhooks.resolve(tenant, hosts).await;
    for c in &mut checked {
        let refused = match c {
            Ok((_, (_, _, Some(host)))) => resolved.get(host).and_then(|r| r.as_ref().err()),
            _ => None,
        };
        if let Some(e) = refused {
            *c = Err(e.clone().into());
        }
    }
    Ok((checked, if charge { valid } else { 0 }))
}

/// Submit up to 1,000 jobs at once.
///
/// Each job is validated and answered on its own (`items`, in the order sent): 202 accepted,
/// 200 a repeat of an earlier submission with the same `idempotency_key`, or an error status
/// with its problem. The tenant's rate limit and quota count every valid job; a batch over them
/// is refused whole (429), before any webhook host is looked up. Then each distinct webhook host
/// is looked up once, all at once: a job whose host does not resolve, or resolves to a refused
/// address, gets 422 (429 if its tenant had no lookup slot free in time).
#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs", request_body = SubmitBatch,
    responses(
        (status = 200, description = "Each job's outcome", body = BatchResult),
        (status = 400, description = "Malformed JSON, or not 1 to 1,000 jobs", body = crate::error::Problem),
        (status = 429, description = "The tenant's rate or quota would be exceeded", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn submit_batch(
    State(state): State<AppState>,
    auth: Auth,
    Extension(trace): Extension<RequestTrace>,
    AppJson(batch): AppJson<SubmitBatch>,
) -> ApiResult<impl IntoResponse> {
    auth.require(JOBS_WRITE)?;
    tracing::Span::current().record("tenant", auth.tenant.as_str());
    if batch.jobs.is_empty() || batch.jobs.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "a batch has 1 to {MAX_BATCH} jobs, this one has {}",
            batch.jobs.len()
        )));
    }
    let (checked, valid) = prepare(&state, &auth.tenant, &batch.jobs, 0, true).await?;
    // A key used again within the batch is a repeat of its first use: the first uses go first,
    // so the earlier item is the one accepted (202) and the later one the repeat (200).
    let mut seen = std::collections::HashSet::new();
    let repeat: Vec<bool> = checked
        .iter()
        .map(|c| match c {
            Ok((Some(key), _)) => !seen.insert(key.clone()),
            _ => false,
        })
        .collect();
    let mut results: Vec<Option<ApiResult<Receipt>>> =
        (0..batch.jobs.len()).map(|_| None).collect();
    let (later, first): (Vec<_>, Vec<_>) = batch
        .jobs
        .into_iter()
        .zip(checked)
        .enumerate()
        .partition(|(i, _)| repeat[*i]);
    for phase in [first, later] {
        let this = phase
            .into_iter()
            .map(|(i, (req, checked))| (i, req, checked));
        let done: Vec<(usize, ApiResult<Receipt>)> = futures::stream::iter(this)
            .map(|(i, req, checked)| {
                let (state, tenant, trace) = (state.clone(), auth.tenant.clone(), trace.0.clone());
                async move {
                    let accepted = async {
                        let (key, (kind, job, _)) = checked?;
                        let deps = &job.workflow.depends_on;
                        submission::check_dependencies(&state, &tenant, deps, &[]).await?;
                        submission::accept(&state, &tenant, &trace, key.into(), &req, kind, job)
                            .await
                    };
                    (i, accepted.await)
                }
            })
            .buffered(PIPELINE)
            .collect()
            .await;
        for (i, result) in done {
            results[i] = Some(result);
        }
    }
    let results = results.into_iter().flatten();
    let items: Vec<BatchItem> = results.map(BatchItem::of).collect();
    let count = |status: u16| items.iter().filter(|i| i.status == status).count();
    let (accepted, repeated) = (count(202), count(200));
    let failed = items.len() - accepted - repeated;
    // Give back the quota reserved for jobs that were not accepted after all.
    state
        .limits
        .release_active(&auth.tenant, (valid - accepted) as u64);
    Ok(Json(BatchResult {
        accepted,
        repeated,
        failed,
        items,
    }))
}

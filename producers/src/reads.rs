//! Reads from the read models (queried through the `readmodel` crate), with read-your-writes.
//!
//! A `GET` of a job the projector has not reached yet looks up the job's `job.submitted` in the
//! EVENTS stream (a direct get by subject, which includes the tenant, so other tenants' jobs stay
//! invisible), waits until the projector's checkpoint passes its sequence (bounded), and, if the
//! projector is still behind, answers from the event itself. So a `GET` after a `202` never 404s.

use std::time::Duration;

use chrono::{DateTime, Utc};
use events::{Envelope, JobEvent, JobId, JobStatus, Tenant};
use readmodel::jobs::JobFilter;
use readmodel::{JobRow, Projection};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Links from a job to its sub-resources.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct JobLinks {
    #[serde(rename = "self")]
    pub(crate) self_: String,
    pub(crate) events: String,
}

impl JobLinks {
    pub(crate) fn of(id: Uuid) -> Self {
        Self {
            self_: format!("/v1/jobs/{id}"),
            events: format!("/v1/jobs/{id}/events"),
        }
    }
}

/// A job as clients see it: its read-model row without the tenant, the webhook and the
/// sequence, and with the link to a result kept apart.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct JobView {
    pub(crate) id: Uuid,
    pub(crate) kind: String,
    /// `queued`, `running`, `retry_scheduled`, `succeeded`, `failed` or `cancelled`.
    #[schema(value_type = String)]
    pub(crate) status: JobStatus,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) timeout_ms: i64,
    #[schema(value_type = Object)]
    pub(crate) payload: Value,
    #[schema(value_type = Option<Object>)]
    pub(crate) progress: Option<Value>,
    /// The result, when inlined; see `result_url` otherwise.
    #[schema(value_type = Option<Object>)]
    pub(crate) result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) result_url: Option<String>,
    #[serde(skip_serializing)]
    #[schema(ignore)]
    pub(crate) result_ref: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub(crate) error: Option<Value>,
    pub(crate) run_at: Option<DateTime<Utc>>,
    pub(crate) trace_id: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) updated_at: DateTime<Utc>,
    /// Higher starts first (-100 to 100).
    pub(crate) priority: i32,
    /// While it waits to start: why the scheduler holds it back, as its latest `job.waiting`
    /// said (`reason`: `concurrency_key`, `rate_limit`, `paused`, `tenant_cap`, `priority` or
    /// `tenant_share`; `key` for the first two; `since`). Absent for a job that only waits for a
    /// free worker, or no longer waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub(crate) waiting: Option<Value>,
    /// The batch it is a member of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) batch: Option<Uuid>,
    /// The jobs it waits for before it starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Uuid>>)]
    pub(crate) depends_on: Option<Value>,
    /// Whether it is a batch (its callback; `/v1/batches/{id}` shows the batch).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) is_batch: bool,
    /// When its batch was sealed (a batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sealed_at: Option<DateTime<Utc>>,
    /// The job whose handler submitted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) parent: Option<Uuid>,
}

impl From<JobRow> for JobView {
    fn from(row: JobRow) -> Self {
        Self {
            result_url: row
                .result_ref
                .is_some()
                .then(|| format!("/v1/jobs/{}/result", row.id)),
            id: row.id,
            kind: row.kind,
            status: row.status,
            attempt: row.attempt,
            max_attempts: row.max_attempts,
            timeout_ms: row.timeout_ms,
            payload: row.payload,
            progress: row.progress,
            result: row.result,
            result_ref: row.result_ref,
            error: row.error,
            run_at: row.run_at,
            trace_id: row.trace_id,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            updated_at: row.updated_at,
            priority: row.priority,
            waiting: row.waiting,
            batch: row.batch,
            depends_on: row.depends_on,
            is_batch: row.is_batch,
            sealed_at: row.sealed_at,
            parent: row.parent,
        }
    }
}

/// The job from the read model only.
pub(crate) async fn query_job(
    state: &AppState,
    tenant: &Tenant,
    id: Uuid,
) -> ApiResult<Option<JobView>> {
    let row = readmodel::jobs::find(&state.db, tenant, id)
        .await
        .map_err(ApiError::db)?;
    Ok(row.map(JobView::from))
}

/// The job's `job.submitted` event and its stream sequence, straight from the log.
pub(crate) async fn submitted_event(
    state: &AppState,
    tenant: &Tenant,
    id: JobId,
) -> ApiResult<Option<(u64, Envelope<JobEvent>)>> {
    last_event(state, tenant, id, "submitted").await
}

/// The job's latest event named `name` (`submitted`, `started`, …) and its stream sequence,
/// straight from the log.
pub(crate) async fn last_event(
    state: &AppState,
    tenant: &Tenant,
    id: JobId,
    name: &str,
) -> ApiResult<Option<(u64, Envelope<JobEvent>)>> {
    let stream = state.bus.events_direct().await.map_err(ApiError::bus)?;
    let subject = state.bus.ns().job_event(tenant, id, name);
    let Some(msg) = bus::last_message(&stream, subject)
        .await
        .map_err(ApiError::bus)?
    else {
        return Ok(None);
    };
    let ev = bus::decode_event(Some(&msg.headers), &msg.payload)
        .map_err(|e| ApiError::Internal(format!("stored job.{name} unreadable: {e}")))?;
    Ok(Some((msg.sequence, ev)))
}

/// Waits until the projector has applied `seq`, or the read-your-writes budget is spent.
async fn wait_for_checkpoint(state: &AppState, seq: u64) -> ApiResult<bool> {
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let deadline = tokio::time::Instant::now() + state.settings.read_your_writes_wait;
    let mut announced = state.checkpoint.subscribe();
    loop {
        if *announced.borrow_and_update() >= seq {
            return Ok(true);
        }
        let stored = readmodel::checkpoints::live_min(&state.db, &Projection::JOB_READS)
            .await
            .map_err(ApiError::db)?;
        if stored.unwrap_or(0) >= seq {
            return Ok(true);
        }
        // Woken by the projector's NOTIFY; the timer is the fallback if a notification is lost.
        tokio::select! {
            _ = announced.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(false),
        }
    }
}

/// A job of `tenant`, with read-your-writes; 404 only if it was never submitted.
pub(crate) async fn find_job(state: &AppState, tenant: &Tenant, id: JobId) -> ApiResult<JobView> {
    if let Some(job) = query_job(state, tenant, id.0).await? {
        return Ok(job);
    }
    let Some((seq, ev)) = submitted_event(state, tenant, id).await? else {
        return Err(not_found(id));
    };
    if wait_for_checkpoint(state, seq).await? {
        if let Some(job) = query_job(state, tenant, id.0).await? {
            return Ok(job);
        }
    }
    // Not projected in time: the job as the projector will first show it.
    match &ev.payload {
        JobEvent::Submitted(job) => {
            let seq = i64::try_from(seq).unwrap_or(i64::MAX);
            Ok(JobRow::submitted(seq, &ev, job).into())
        }
        _ => Err(not_found(id)),
    }
}

/// The 404 of a job: the same whether it does not exist or belongs to another tenant.
pub(crate) fn not_found(id: JobId) -> ApiError {
    ApiError::NotFound(format!("no job {id}"))
}

/// A page of jobs, newest first (queued ones: in the order they will start, see
/// [`readmodel::jobs::page_queued`]), from query parameters as clients send them: validates the
/// filters, the `limit` (1 to 500, default 50) and the `cursor`, and returns the page with the
/// cursor of the next one.
pub(crate) async fn page_jobs(
    state: &AppState,
    tenant: &Tenant,
    status: Option<&str>,
    kind: Option<&str>,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> ApiResult<(Vec<JobView>, Option<String>)> {
    let status = status
        .map(|s| {
            JobStatus::parse(s).ok_or_else(|| ApiError::BadRequest(format!("unknown status `{s}`")))
        })
        .transpose()?;
    if let Some(k) = kind {
        events::JobKind::parse(k).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    let limit = limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 500".into(),
        ));
    }
    let invalid = || ApiError::BadRequest("invalid cursor".into());
    let rows = if status == Some(JobStatus::Queued) {
        // Queued jobs are listed in the order they will start (`<priority>:<id>` cursors).
        let after = cursor
            .map(|c| {
                let (priority, id) = c.split_once(':').ok_or_else(invalid)?;
                Ok::<_, ApiError>((
                    priority.parse().map_err(|_| invalid())?,
                    Uuid::parse_str(id).map_err(|_| invalid())?,
                ))
            })
            .transpose()?;
        readmodel::jobs::page_queued(&state.db, tenant, kind, after, limit + 1).await
    } else {
        let before = cursor
            .map(|c| Uuid::parse_str(c).map_err(|_| invalid()))
            .transpose()?;
        let filter = JobFilter {
            status,
            kind,
            before,
        };
        readmodel::jobs::page(&state.db, tenant, filter, limit + 1).await
    };
    let mut items: Vec<JobView> = rows
        .map_err(ApiError::db)?
        .into_iter()
        .map(JobView::from)
        .collect();
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|j| match status {
            Some(JobStatus::Queued) => format!("{}:{}", j.priority, j.id),
            _ => j.id.to_string(),
        })
    });
    Ok((items, next_cursor.flatten()))
}

/// The job's timeline: its CloudEvents, oldest first, with their stream sequences.
pub(crate) async fn job_events(
    state: &AppState,
    tenant: &Tenant,
    id: JobId,
) -> ApiResult<Vec<(i64, Value)>> {
    readmodel::timeline::events(&state.db, tenant, id)
        .await
        .map_err(ApiError::db)
}

/// How many events of type `name` the job's timeline has.
pub(crate) async fn count_events(
    state: &AppState,
    tenant: &Tenant,
    id: JobId,
    name: &str,
) -> ApiResult<i64> {
    readmodel::timeline::count(&state.db, tenant, id, name)
        .await
        .map_err(ApiError::db)
}

/// Keeps `state.checkpoint` up to date from the projector's `NOTIFY`s, reconnecting as needed.
pub(crate) async fn checkpoint_listener(state: AppState, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let listener = async {
            let mut l = PgListener::connect_with(&state.db).await?;
            l.listen(readmodel::CHECKPOINT_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = match listener.await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "checkpoint listener not connected; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        loop {
            let n = tokio::select! {
                n = listener.try_recv() => n,
                _ = shutdown.cancelled() => return,
            };
            match n {
                Ok(Some(n)) => {
                    if let Ok(seq) = n.payload().parse::<i64>() {
                        state.checkpoint.send_if_modified(|cur| {
                            let newer = seq > *cur;
                            if newer {
                                *cur = seq;
                            }
                            newer
                        });
                    }
                }
                // Connection lost (notifications may have been missed: waiters also poll).
                Ok(None) => continue,
                Err(_) => break,
            }
        }
    }
}

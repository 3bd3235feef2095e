//! `jobs`: each job's current state, one row per job, and the reads of it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use events::job::Submitted;
use events::{Envelope, JobEvent, JobStatus, Tenant};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// One row of `jobs`; field names are the column names.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobRow {
    /// The job id (UUIDv7, so id order is submission order).
    pub id: Uuid,
    /// The tenant that submitted it.
    pub tenant: String,
    /// Its kind.
    pub kind: String,
    /// Where it stands.
    #[sqlx(try_from = "StoredStatus")]
    pub status: JobStatus,
    /// The latest attempt started (0 before the first).
    pub attempt: i32,
    /// Attempts allowed before dead-lettering (raised by a re-drive).
    pub max_attempts: i32,
    /// Per-attempt time limit.
    pub timeout_ms: i64,
    /// The job's input (`{}` when it had none).
    pub payload: Value,
    /// The latest progress reported by the current attempt.
    pub progress: Option<Value>,
    /// The result, when inlined.
    pub result: Option<Value>,
    /// Where a result too large to inline is kept.
    pub result_ref: Option<Value>,
    /// The latest failure.
    pub error: Option<Value>,
    /// The completion webhook.
    pub webhook_url: Option<String>,
    /// Not before this time (the submission's, then each retry's).
    pub run_at: Option<DateTime<Utc>>,
    /// The trace of the submitting request.
    pub trace_id: Option<String>,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When its first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Time of the last event applied.
    pub updated_at: DateTime<Utc>,
    /// EVENTS sequence of the last event applied.
    pub last_seq: i64,
    /// Higher starts first (-100 to 100).
    pub priority: i32,
    /// While it waits: why the scheduler holds it back (the data of its attempt's latest
    /// `job.waiting`, with the event's `time` as `since`).
    pub waiting: Option<Value>,
    /// The batch it is a member of.
    pub batch: Option<Uuid>,
    /// The jobs it waits for (a JSON array of ids), if any.
    pub depends_on: Option<Value>,
    /// Whether it is a batch (its id is the batch's; it runs as the batch's callback).
    pub is_batch: bool,
    /// When its batch was sealed (a batch).
    pub sealed_at: Option<DateTime<Utc>>,
    /// The job whose handler submitted it.
    pub parent: Option<Uuid>,
    /// The last attempt that ended waiting for the job's children (`job.suspended`).
    pub suspended_attempt: Option<i32>,
}

impl JobRow {
    /// The row of a job just submitted: `ev`, stored at `seq`, carrying `job`.
    pub fn submitted(seq: i64, ev: &Envelope<JobEvent>, job: &Submitted) -> Self {
        Self {
            id: ev.job.0,
            tenant: ev.tenant.to_string(),
            kind: ev.kind.to_string(),
            status: JobStatus::Queued,
            attempt: 0,
            max_attempts: i32::try_from(job.max_attempts).unwrap_or(i32::MAX),
            timeout_ms: i64::try_from(job.timeout_ms).unwrap_or(i64::MAX),
            payload: if job.payload.is_null() {
                json!({})
            } else {
                job.payload.clone()
            },
            progress: None,
            result: None,
            result_ref: None,
            error: None,
            webhook_url: job.webhook.as_ref().map(|w| w.url.clone()),
            run_at: job.run_at,
            trace_id: ev.traceparent.as_ref().map(|t| t.trace_id().to_owned()),
            created_at: ev.time,
            started_at: None,
            finished_at: None,
            updated_at: ev.time,
            last_seq: seq,
            priority: job.scheduling.priority,
            waiting: None,
            batch: job.workflow.batch.map(|b| b.0),
            depends_on: (!job.workflow.depends_on.is_empty())
                .then(|| json!(job.workflow.depends_on)),
            is_batch: job.workflow.is_batch,
            sealed_at: None,
            parent: job.workflow.parent.map(|p| p.0),
            suspended_attempt: None,
        }
    }
}

/// A job status as stored (text), decoded into a [`JobStatus`] or refused.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::Type)]
#[sqlx(transparent)]
pub struct StoredStatus(pub String);

/// A status in the database that conveyor does not know: the read model is from another
/// version of conveyor, or was written by hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status `{0}` in the read model")]
pub struct UnknownStatus(pub String);

impl TryFrom<StoredStatus> for JobStatus {
    type Error = UnknownStatus;

    fn try_from(StoredStatus(s): StoredStatus) -> Result<Self, UnknownStatus> {
        JobStatus::parse(&s).ok_or(UnknownStatus(s))
    }
}

/// The columns of [`JobRow`], in its order.
pub const COLUMNS: &str = "id, tenant, kind, status, attempt, max_attempts, timeout_ms, payload,
    progress, result, result_ref, error, webhook_url, run_at, trace_id, created_at, started_at,
    finished_at, updated_at, last_seq, priority, waiting, batch, depends_on, is_batch, sealed_at, parent,
    suspended_attempt";

/// The live row of job `id` of `tenant`.
pub async fn find(
    db: impl PgExecutor<'_>,
    tenant: &Tenant,
    id: Uuid,
) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE id = $1 AND tenant = $2"
    ))
    .bind(id)
    .bind(tenant.as_str())
    .fetch_optional(db)
    .await
}

/// Which jobs a page lists.
#[derive(Debug, Clone, Copy)]
pub struct JobFilter<'a> {
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this kind.
    pub kind: Option<&'a str>,
    /// Only jobs older than this one (the cursor).
    pub before: Option<Uuid>,
}

/// Up to `limit` live rows of `tenant` matching `filter`, newest first.
pub async fn page(
    db: impl PgExecutor<'_>,
    tenant: &Tenant,
    filter: JobFilter<'_>,
    limit: i64,
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE tenant = $1 AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR kind = $3) AND ($4::uuid IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5"
    ))
    .bind(tenant.as_str())
    .bind(filter.status.map(JobStatus::as_str))
    .bind(filter.kind)
    .bind(filter.before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Up to `limit` of `tenant`'s queued jobs (of `kind`, if given) in the order the scheduler
/// weighs them within a tenant: highest priority first, then earliest submitted; `after` is the
/// last `(priority, id)` of the previous page.
pub async fn page_queued(
    db: impl PgExecutor<'_>,
    tenant: &Tenant,
    kind: Option<&str>,
    after: Option<(i32, Uuid)>,
    limit: i64,
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(&format!(
        // `-priority` ascending is priority descending, so one row comparison is one range of
        // the `jobs_queued_in_start_order` index (whose predicate the literal status matches).
        "SELECT {COLUMNS} FROM jobs WHERE tenant = $1 AND status = 'queued'
           AND ($2::text IS NULL OR kind = $2)
           AND ($3::int4 IS NULL OR (-priority, id) > (-$3::int4, $4::uuid))
         ORDER BY -priority, id LIMIT $5"
    ))
    .bind(tenant.as_str())
    .bind(kind)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The rows of `ids` in `version` (those it has), by id: what the projector folds a batch over.
pub async fn load(
    conn: &mut PgConnection,
    version: i32,
    ids: &[Uuid],
) -> sqlx::Result<HashMap<Uuid, JobRow>> {
    let schema = crate::schema(version);
    let rows: Vec<JobRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM {schema}.jobs WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r)).collect())
}

/// Which of `attempts` (a job and one of its attempts) the read model shows started, or whose
/// job it shows cancelled: the submissions audit's check, one query for a batch.
pub async fn started_or_cancelled(
    db: impl PgExecutor<'_>,
    attempts: &[(Uuid, i32)],
) -> sqlx::Result<Vec<(Uuid, i32)>> {
    let (ids, numbers): (Vec<Uuid>, Vec<i32>) = attempts.iter().copied().unzip();
    sqlx::query_as(
        "SELECT d.id, d.attempt FROM unnest($1::uuid[], $2::int[]) AS d(id, attempt)
         JOIN jobs j ON j.id = d.id
         WHERE j.attempt >= d.attempt OR j.status = $3",
    )
    .bind(&ids)
    .bind(&numbers)
    .bind(JobStatus::Cancelled.as_str())
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_decodes_from_its_name() {
        for status in JobStatus::ALL {
            let stored = StoredStatus(status.as_str().to_owned());
            assert_eq!(JobStatus::try_from(stored), Ok(status));
        }
    }

    #[test]
    fn an_unknown_status_is_refused_not_taken_for_queued() {
        let stored = StoredStatus("paused".to_owned());
        assert_eq!(
            JobStatus::try_from(stored),
            Err(UnknownStatus("paused".to_owned()))
        );
    }
}

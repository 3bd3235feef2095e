//! Workflows in the read model: a batch's members and their progress, and how the jobs that
//! others wait for ended (what the scheduler checks before it lets a waiting job start).
//!
//! A batch's state is never counted as events arrive: it is read off its members' rows, which
//! the projector keeps exact in the same transaction as its checkpoint, so it is as exact and as
//! replayable as the rows themselves.

use std::collections::HashMap;

use events::job::{Ended, Members};
use events::{JobId, JobStatus, Tenant};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::jobs::{JobRow, StoredStatus, COLUMNS};

/// The jobs a workflow waits for as one: a batch's members, or a parent's children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The members of the batch of this id.
    Members(Uuid),
    /// The children of the job of this id.
    Children(Uuid),
}

impl Group {
    /// The column naming the group (each with its index over `(column, status, id)`).
    fn column(self) -> &'static str {
        match self {
            Self::Members(_) => "batch",
            Self::Children(_) => "parent",
        }
    }

    fn id(self) -> Uuid {
        match self {
            Self::Members(id) | Self::Children(id) => id,
        }
    }
}

/// How many of a batch's members (or a parent's children) stand where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemberCounts {
    pub queued: i64,
    pub running: i64,
    pub retry_scheduled: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

impl MemberCounts {
    /// Members in all.
    pub fn total(&self) -> i64 {
        self.queued
            + self.running
            + self.retry_scheduled
            + self.succeeded
            + self.failed
            + self.cancelled
    }

    /// Members that have ended.
    pub fn ended(&self) -> i64 {
        self.succeeded + self.failed + self.cancelled
    }

    fn add(&mut self, status: JobStatus, n: i64) {
        *match status {
            JobStatus::Queued => &mut self.queued,
            JobStatus::Running => &mut self.running,
            JobStatus::RetryScheduled => &mut self.retry_scheduled,
            JobStatus::Succeeded => &mut self.succeeded,
            JobStatus::Failed => &mut self.failed,
            JobStatus::Cancelled => &mut self.cancelled,
        } += n;
    }
}

/// The counts of `group`'s jobs by status.
pub async fn counts(db: impl PgExecutor<'_>, group: Group) -> sqlx::Result<MemberCounts> {
    let column = group.column();
    let rows: Vec<(StoredStatus, i64)> = sqlx::query_as(&format!(
        "SELECT status, count(*) FROM jobs WHERE {column} = $1 GROUP BY status"
    ))
    .bind(group.id())
    .fetch_all(db)
    .await?;
    let mut counts = MemberCounts::default();
    for (status, n) in rows {
        let status = JobStatus::try_from(status).map_err(|e| sqlx::Error::Decode(e.into()))?;
        counts.add(status, n);
    }
    Ok(counts)
}

/// Up to `limit` of `tenant`'s jobs of `group` (in `status`, if given), in submission order,
/// after the job `after`.
pub async fn page(
    db: impl PgExecutor<'_>,
    tenant: &Tenant,
    group: Group,
    status: Option<JobStatus>,
    after: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<JobRow>> {
    let column = group.column();
    // Two shapes, each one range of its index (`(column, id)`, or `(column, status, id)`).
    let status_filter = if status.is_some() {
        "AND status = $3"
    } else {
        "AND $3::text IS NULL"
    };
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE {column} = $1 AND tenant = $2 {status_filter}
           AND id > coalesce($4::uuid, '00000000-0000-0000-0000-000000000000')
         ORDER BY id LIMIT $5"
    ))
    .bind(group.id())
    .bind(tenant.as_str())
    .bind(status.map(JobStatus::as_str))
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Which of the groups named by `ids` (all batches, or all parents, as `of` says) have a job not
/// ended yet: one query for them all.
pub async fn open_groups(
    db: impl PgExecutor<'_>,
    of: fn(Uuid) -> Group,
    ids: &[Uuid],
) -> sqlx::Result<Vec<Uuid>> {
    let Some(first) = ids.first() else {
        return Ok(Vec::new());
    };
    let column = of(*first).column();
    sqlx::query_scalar(&format!(
        "SELECT DISTINCT {column} FROM jobs WHERE {column} = ANY($1)
           AND status IN ('queued', 'running', 'retry_scheduled')"
    ))
    .bind(ids)
    .fetch_all(db)
    .await
}

/// Whether a job of `group` has not ended yet (one index probe per unended status).
pub async fn has_open(db: impl PgExecutor<'_>, group: Group) -> sqlx::Result<bool> {
    let column = group.column();
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE {column} = $1
           AND status IN ('queued', 'running', 'retry_scheduled'))"
    ))
    .bind(group.id())
    .fetch_one(db)
    .await
}

/// The last attempt of each of `ids` that ended waiting for its children, for those that have
/// one.
pub async fn suspended(db: impl PgExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<HashMap<Uuid, i32>> {
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT id, suspended_attempt FROM jobs WHERE id = ANY($1) AND suspended_attempt IS NOT NULL",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Which of `batches` are sealed.
pub async fn sealed(db: impl PgExecutor<'_>, batches: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT id FROM jobs WHERE id = ANY($1) AND sealed_at IS NOT NULL")
        .bind(batches)
        .fetch_all(db)
        .await
}

/// The jobs of an ended group: their counts, and each one's status if there are at most
/// `list_up_to` of them.
pub async fn ended_group(
    db: impl PgExecutor<'_> + Copy,
    group: Group,
    list_up_to: usize,
) -> sqlx::Result<Members> {
    let counts = counts(db, group).await?;
    let jobs = if counts.total() <= list_up_to as i64 {
        let column = group.column();
        let rows: Vec<(Uuid, StoredStatus)> = sqlx::query_as(&format!(
            "SELECT id, status FROM jobs WHERE {column} = $1 ORDER BY id"
        ))
        .bind(group.id())
        .fetch_all(db)
        .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for (id, status) in rows {
            jobs.push(Ended {
                id: JobId(id),
                status: JobStatus::try_from(status).map_err(|e| sqlx::Error::Decode(e.into()))?,
                result: None,
                result_url: None,
            });
        }
        Some(jobs)
    } else {
        None
    };
    let n = |c: i64| u64::try_from(c).unwrap_or(0);
    Ok(Members {
        total: n(counts.total()),
        succeeded: n(counts.succeeded),
        failed: n(counts.failed),
        cancelled: n(counts.cancelled),
        jobs,
    })
}

/// Those of `ids` that have ended, with their tenant, status and result (a result of more than
/// `result_limit` JSON bytes, or kept in the object store, left out: its `result_url` says where
/// it is).
pub async fn ended(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    result_limit: usize,
) -> sqlx::Result<HashMap<Uuid, (String, Ended)>> {
    let rows: Vec<(Uuid, String, StoredStatus, Option<Value>, bool)> = sqlx::query_as(
        "SELECT id, tenant, status,
                CASE WHEN octet_length(result::text) <= $2 THEN result END,
                result_ref IS NOT NULL OR coalesce(octet_length(result::text) > $2, false)
         FROM jobs WHERE id = ANY($1) AND status IN ('succeeded', 'failed', 'cancelled')",
    )
    .bind(ids)
    .bind(i32::try_from(result_limit).unwrap_or(i32::MAX))
    .fetch_all(db)
    .await?;
    let mut ended = HashMap::with_capacity(rows.len());
    for (id, tenant, status, result, elsewhere) in rows {
        let status = JobStatus::try_from(status).map_err(|e| sqlx::Error::Decode(e.into()))?;
        let result_url = elsewhere.then(|| format!("/v1/jobs/{id}/result"));
        ended.insert(
            id,
            (
                tenant,
                Ended {
                    id: JobId(id),
                    status,
                    result,
                    result_url,
                },
            ),
        );
    }
    Ok(ended)
}

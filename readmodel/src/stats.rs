//! `job_stats`: counts and run time per tenant, kind and status.

use events::{JobStatus, Tenant};
use sqlx::PgExecutor;

/// How many jobs of `tenant` have not ended (queued, running or waiting for a retry).
pub async fn active_jobs(db: impl PgExecutor<'_>, tenant: &Tenant) -> sqlx::Result<i64> {
    let active: Vec<&str> = JobStatus::ALL
        .into_iter()
        .filter(|s| !s.is_terminal())
        .map(JobStatus::as_str)
        .collect();
    sqlx::query_scalar(
        "SELECT coalesce(sum(count), 0)::bigint FROM job_stats
         WHERE tenant = $1 AND status = ANY($2)",
    )
    .bind(tenant.as_str())
    .bind(active)
    .fetch_one(db)
    .await
}

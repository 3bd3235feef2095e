//! `job_events`: every event of every job, keyed by its EVENTS stream sequence.

use events::{JobId, Tenant};
use serde_json::Value;
use sqlx::PgExecutor;

/// The timeline of job `id` of `tenant`: its CloudEvents (JSON as received), oldest first, with
/// their stream sequences.
pub async fn events(
    db: impl PgExecutor<'_>,
    tenant: &Tenant,
    id: JobId,
) -> sqlx::Result<Vec<(i64, Value)>> {
    sqlx::query_as(
        "SELECT seq, event FROM job_events WHERE job_id = $1 AND tenant = $2 ORDER BY seq",
    )
    .bind(id.0)
    .bind(tenant.as_str())
    .fetch_all(db)
    .await
}

/// How many events named `name` (`redriven`, …) the timeline of job `id` of `tenant` has.
pub async fn count(
    db: impl PgExecutor<'_>,
    tenant: &Tenant,
    id: JobId,
    name: &str,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM job_events WHERE job_id = $1 AND tenant = $2 AND type = $3",
    )
    .bind(id.0)
    .bind(tenant.as_str())
    .bind(name)
    .fetch_one(db)
    .await
}

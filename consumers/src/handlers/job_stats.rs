use chrono::{Duration, Utc};
use serde_json::{json, Value};

use crate::{Handler, JobContext, JobError};

/// `report.job_stats`: aggregates the tenant's jobs created in the last `window_secs` by kind
/// and status (count, mean and max run time) from the `jobs` read model, and returns the table.
#[derive(Debug, Clone, Copy)]
pub struct JobStats;

#[async_trait::async_trait]
impl Handler for JobStats {
    async fn run(&self, job: JobContext) -> Result<Value, JobError> {
        let p = super::payload(events::kinds::JobStatsReport::from_payload, &job.payload)?;
        let db = job
            .db
            .as_ref()
            .ok_or_else(|| JobError::fatal("this worker has no database configured"))?;
        let until = Utc::now();
        let since = until - Duration::seconds(i64::try_from(p.window_secs).unwrap_or(i64::MAX));
        let rows: Vec<(String, String, i64, Option<f64>, Option<f64>)> = sqlx::query_as(
            "SELECT kind, status, count(*),
                    (avg(extract(epoch FROM finished_at - started_at)) * 1000)::float8,
                    (max(extract(epoch FROM finished_at - started_at)) * 1000)::float8
             FROM jobs
             WHERE tenant = $1 AND created_at >= $2 AND created_at < $3
             GROUP BY kind, status ORDER BY kind, status",
        )
        .bind(job.tenant.as_str())
        .bind(since)
        .bind(until)
        .fetch_all(db)
        .await
        .map_err(|e| JobError::retryable(format!("reading jobs: {e}")))?;
        let rows: Vec<Value> = rows
            .into_iter()
            .map(|(kind, status, count, mean, max)| {
                json!({ "kind": kind, "status": status, "count": count,
                        "mean_run_ms": mean.map(f64::round), "max_run_ms": max.map(f64::round) })
            })
            .collect();
        Ok(json!({ "since": since, "until": until, "rows": rows }))
    }

    fn schema(&self) -> Option<Value> {
        events::kinds::builtin_schema("report.job_stats")
    }
}

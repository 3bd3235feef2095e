//! `projection_checkpoints`: per projection and version, the last EVENTS sequence applied. The
//! projector moves them in the same transaction as its writes.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::Projection;

/// The checkpoints of `version`, by projection (those it has).
pub async fn of_version(
    db: impl PgExecutor<'_>,
    version: i32,
) -> sqlx::Result<HashMap<Projection, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT projection, last_seq FROM projection_checkpoints
         WHERE projection = ANY($1) AND version = $2",
    )
    .bind(&Projection::ALL.map(Projection::as_str)[..])
    .bind(version)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, seq)| Some((Projection::parse(&name)?, seq)))
        .collect())
}

/// The lowest checkpoint of `projections` in the live version: every event up to it is visible
/// in all of them (`None` if the live version has none of their checkpoints).
pub async fn live_min(
    db: impl PgExecutor<'_>,
    projections: &[Projection],
) -> sqlx::Result<Option<i64>> {
    let names: Vec<&str> = projections.iter().map(|p| p.as_str()).collect();
    sqlx::query_scalar(
        "SELECT min(last_seq) FROM projection_checkpoints
         WHERE projection = ANY($1)
           AND version = (SELECT version FROM read_model_versions WHERE state = 'live')",
    )
    .bind(names)
    .fetch_one(db)
    .await
}

/// One checkpoint, with the state of its version.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Checkpoint {
    /// The projection.
    pub projection: String,
    /// The version of the read models.
    pub version: i32,
    /// `live` or `building`.
    pub state: String,
    /// The last EVENTS sequence applied.
    pub last_seq: i64,
    /// When it last moved.
    pub updated_at: DateTime<Utc>,
}

/// Every checkpoint of every version, by projection then version.
pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Checkpoint>> {
    sqlx::query_as(
        "SELECT c.projection, c.version, v.state, c.last_seq, c.updated_at
         FROM projection_checkpoints c JOIN read_model_versions v USING (version)
         ORDER BY c.projection, c.version",
    )
    .fetch_all(db)
    .await
}

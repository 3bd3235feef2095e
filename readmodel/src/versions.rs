//! `read_model_versions`: which version of the projections is live and which, if any, is being
//! built. At most one of each (a unique index on the state).

use sqlx::{PgExecutor, PgPool};

/// What a version is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// The one the views point at, followed by the live projector.
    Live,
    /// Being rebuilt beside the live one; it becomes live once it has caught up.
    Building,
}

impl VersionState {
    /// The name in `read_model_versions.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Building => "building",
        }
    }
}

/// The version in `state`, if there is one.
pub async fn in_state(db: impl PgExecutor<'_>, state: VersionState) -> sqlx::Result<Option<i32>> {
    sqlx::query_scalar("SELECT version FROM read_model_versions WHERE state = $1")
        .bind(state.as_str())
        .fetch_optional(db)
        .await
}

/// The live version (the migrations create one; there is always one).
pub async fn live(db: impl PgExecutor<'_>) -> sqlx::Result<i32> {
    in_state(db, VersionState::Live)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

/// The version being built, if a rebuild was requested.
pub async fn building(db: impl PgExecutor<'_>) -> sqlx::Result<Option<i32>> {
    in_state(db, VersionState::Building).await
}

/// Requests a rebuild from stream sequence `from_seq` (1 for the whole log): registers a new
/// version in state `building` (`true`), or returns the one already requested (`false`), which
/// then resumes. The projector process, or `conveyor replay`, builds it.
pub async fn request_rebuild(db: &PgPool, from_seq: u64) -> sqlx::Result<(i32, bool)> {
    if let Some(v) = building(db).await? {
        return Ok((v, false));
    }
    let inserted: Option<i32> = sqlx::query_scalar(
        "INSERT INTO read_model_versions (version, state, from_seq)
         SELECT coalesce(max(version), 0) + 1, 'building', $1 FROM read_model_versions
         ON CONFLICT DO NOTHING RETURNING version",
    )
    .bind(i64::try_from(from_seq.max(1)).unwrap_or(1))
    .fetch_optional(db)
    .await?;
    match inserted {
        Some(v) => Ok((v, true)),
        // Someone else requested one at the same moment.
        None => Ok((building(db).await?.unwrap_or(0), false)),
    }
}

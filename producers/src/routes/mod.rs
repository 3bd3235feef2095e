//! Every route, one file per resource, merged here.

pub(crate) mod admin;
pub(crate) mod batch;
pub(crate) mod dashboard;
pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod jobs;
pub(crate) mod kinds;
pub(crate) mod webhooks;

use axum::extract::DefaultBodyLimit;
use axum::Router;

use crate::AppState;

/// A batch may be as large as this many single submissions.
pub(crate) fn batch_body_limit(single: usize) -> usize {
    single.saturating_mul(16)
}

pub(crate) fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .merge(jobs::router())
        .merge(batch::router(batch_body_limit(limit)))
        .merge(kinds::router())
        .merge(events::router())
        .merge(webhooks::router())
        .merge(admin::router())
        .merge(health::router())
        .merge(dashboard::router())
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::middleware::track,
        ))
        .with_state(state)
}

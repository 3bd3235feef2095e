//! Every route, one file per resource, merged here.

pub(crate) mod admin;
pub(crate) mod dashboard;
pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod jobs;
pub(crate) mod kinds;
pub(crate) mod webhooks;

use axum::extract::DefaultBodyLimit;
use axum::Router;

use crate::AppState;

pub(crate) fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .merge(jobs::router())
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

//! Every route, one file per resource, merged here. A route of the API is registered with
//! `routes!(handler)`, which takes its path and method from the handler's `#[utoipa::path]` and
//! adds its operation to the OpenAPI document; the few routes outside the API (the dashboard,
//! `/metrics`, `/openapi.json`) are plain `route`s.

pub(crate) mod admin;
pub(crate) mod batch;
pub(crate) mod batches;
pub(crate) mod dashboard;
pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod jobs;
pub(crate) mod kinds;
pub(crate) mod pauses;
pub(crate) mod schedules;
pub(crate) mod shares;
pub(crate) mod webhooks;
pub(crate) mod workers;

use axum::extract::DefaultBodyLimit;
use axum::{Extension, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::middleware::{refuse_oversized, BodyLimit};
use crate::openapi::{ApiDoc, Document};
use crate::AppState;

pub(crate) fn router(state: AppState) -> Router {
    let (routes, mut doc) = documented(state.settings.max_body_bytes).split_for_parts();
    crate::openapi::finish(&mut doc);
    routes
        .layer(Extension(Document::new(&doc)))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::middleware::track,
        ))
        .with_state(state)
}

/// The OpenAPI document of the API as served, pretty JSON (`conveyor openapi` prints it).
pub(crate) fn document() -> String {
    let (_, mut doc) = documented(usize::MAX).split_for_parts();
    crate::openapi::finish(&mut doc);
    doc.to_pretty_json()
        .expect("the OpenAPI document serialises")
}

/// Every route with its body limit (`max_body` bytes but for batches), and the OpenAPI document
/// of those that are the API.
fn documented(max_body: usize) -> OpenApiRouter<AppState> {
    let routes = OpenApiRouter::new()
        .merge(jobs::router())
        .merge(kinds::router())
        .merge(pauses::router())
        .merge(schedules::router())
        .merge(shares::router())
        .merge(events::router())
        .merge(webhooks::router())
        .merge(admin::router())
        .merge(health::router())
        .merge(dashboard::router());
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(batch::router(max_body))
        .merge(batches::router(max_body))
        .merge(workers::router(max_body))
        // Merged last, its fallback (under the default limit) is the router's: a request to an
        // unknown route is refused as an oversized one elsewhere would be.
        .merge(limit_body(routes, max_body))
}

/// Caps the request bodies of `routes` at `max` bytes: a declared length over it is refused at
/// once, a body that grows past it fails its extractor.
fn limit_body(routes: OpenApiRouter<AppState>, max: usize) -> OpenApiRouter<AppState> {
    routes
        .layer(DefaultBodyLimit::max(max))
        .layer(axum::middleware::from_fn_with_state(
            BodyLimit(max),
            refuse_oversized,
        ))
}

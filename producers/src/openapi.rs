//! The OpenAPI document. Its operations and the schemas they use come from the handlers'
//! `#[utoipa::path]` annotations, collected as `routes::router` registers each route, so the
//! document lists what is served; this module adds what no route has: the title, and the bearer
//! scheme every operation requires.

use axum::body::Bytes;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document before any route is registered.
#[derive(OpenApi)]
#[openapi(
    info(title = "conveyor", description = "Submit long-running jobs, follow them, read their results."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document as `GET /openapi.json` serves it: JSON, rendered once.
#[derive(Debug, Clone)]
pub(crate) struct Document(Bytes);

impl Document {
    pub(crate) fn new(doc: &utoipa::openapi::OpenApi) -> Self {
        Self(
            doc.to_pretty_json()
                .expect("the OpenAPI document serialises")
                .into(),
        )
    }

    pub(crate) fn json(&self) -> Bytes {
        self.0.clone()
    }
}

//! The OpenAPI document, generated from the handlers' annotations and the types they use.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::jobs;

#[derive(OpenApi)]
#[openapi(
    info(title = "conveyor", description = "Submit long-running jobs, follow them, read their results."),
    paths(
        jobs::submit, crate::routes::batch::submit_batch, jobs::get_job, crate::routes::events::events, crate::routes::events::websocket, jobs::list, jobs::cancel, jobs::events, jobs::result,
        crate::routes::admin::list, crate::routes::admin::redrive, crate::routes::admin::projections, crate::routes::admin::rebuild, crate::routes::admin::consumers,
        crate::routes::kinds::list,
        crate::routes::webhooks::secret, crate::routes::webhooks::list_failed, crate::routes::webhooks::redrive,
        crate::routes::health::healthz, crate::routes::health::readyz,
    ),
    components(schemas(
        crate::submission::SubmitJob, crate::routes::batch::SubmitBatch, crate::routes::batch::BatchItem, crate::routes::batch::BatchResult, crate::submission::WebhookRequest, crate::submission::Accepted, jobs::JobPage, jobs::CancelAccepted,
        crate::reads::JobView, crate::reads::JobLinks, crate::routes::kinds::KindList, crate::kinds::KindInfo, crate::routes::webhooks::Secret, crate::error::Problem,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

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

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}

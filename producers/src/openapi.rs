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

/// Paths anyone may call, without a token.
const PUBLIC: [&str; 2] = ["/healthz", "/readyz"];

/// Makes explicit, on every operation, what the routes' annotations leave implicit, because the
/// extractors and the middleware answer it for every route alike: an error answers
/// `application/problem+json`; an operation behind the bearer scheme may answer `401`; one with
/// parameters, `400` (a malformed one); one with a body, `400` (malformed JSON), `413` and `415`
/// (not JSON); and the health checks need no token.
pub(crate) fn finish(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let problem = |description: &str| {
        let content = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build();
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content("application/problem+json", content)
                .build(),
        )
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = PUBLIC.contains(&path.as_str());
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            if public {
                op.security = Some(Vec::new());
            }
            let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
            let has_body = op.request_body.is_some();
            let responses = &mut op.responses.responses;
            let implied = [
                ("401", "Missing or invalid token", !public),
                (
                    "400",
                    "A malformed parameter or body",
                    has_params || has_body,
                ),
                ("413", "Body too large", has_body),
                ("415", "The body is not application/json", has_body),
            ];
            for (status, description, applies) in implied {
                if applies && !responses.contains_key(status) {
                    responses.insert(status.into(), problem(description));
                }
            }
            for (status, response) in responses.iter_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                if status.as_str() >= "400" {
                    if let Some(content) = response.content.shift_remove("application/json") {
                        response
                            .content
                            .insert("application/problem+json".into(), content);
                    }
                }
            }
        }
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

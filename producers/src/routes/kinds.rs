//! `/v1/kinds`: the job kinds this API accepts, with their payload schemas; and
//! `/v1/admin/kinds`, where operators register push kinds.

use axum::extract::{Path, State};
use axum::Json;
use events::kinds::{PushEndpoint, Registered};
use events::JobKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, OPERATOR};
use crate::error::{ApiError, ApiResult};
use crate::extract::AppJson;
use crate::kinds::{Catalog, KindInfo};
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(register_push))
}

/// The accepted kinds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct KindList {
    items: Vec<KindInfo>,
}

/// The job kinds `POST /v1/jobs` accepts: the built-in ones, those configured with
/// `CONVEYOR_KINDS`, and those workers have registered, each with the JSON Schema of its payload
/// when it declares one.
#[utoipa::path(get, path = "/v1/kinds", operation_id = "list_kinds", tag = "jobs",
    responses((status = 200, description = "The accepted kinds", body = KindList)))]
pub(crate) async fn list(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<KindList>> {
    auth.require_reader()?;
    Ok(Json(KindList {
        items: state.kinds.list(),
    }))
}

/// A push kind: jobs delivered by conveyor as signed POSTs, with no worker process of one's own.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PushKind {
    /// Where each job is POSTed (vetted like a webhook target: no private addresses unless
    /// allowed).
    url: String,
    /// Time limit of one POST (1 to 3600000 ms; default 30000). The job's own `timeout_ms`
    /// also holds.
    #[serde(default = "default_push_timeout")]
    #[schema(minimum = 1, maximum = 3600000, default = 30000)]
    timeout_ms: u64,
    /// JSON Schema of the payload (`null`: payloads are not checked).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    schema: Option<Value>,
}

fn default_push_timeout() -> u64 {
    30_000
}

/// A push kind as registered, with the secret its endpoint verifies signatures with.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RegisteredPushKind {
    #[serde(flatten)]
    kind: KindInfo,
    /// The kind's signing secret (`whsec_…`): the endpoint verifies each POST's
    /// `webhook-signature` with it (Standard Webhooks). Kept when the kind is registered again.
    secret: String,
}

/// Register a push kind.
///
/// Jobs of the kind are delivered by conveyor's workers as a signed POST to `url` (Standard
/// Webhooks headers; the body is the job: `id`, `tenant`, `kind`, `payload`, `attempt`,
/// `max_attempts`): a `2xx` answer with a JSON body (or none) is the result, a `4xx` other than
/// `408` and `429` fails the job for good, anything else is retried like a failed attempt.
#[utoipa::path(put, path = "/v1/admin/kinds/{kind}", tag = "admin", request_body = PushKind,
    params(("kind" = String, Path, description = "The kind, e.g. `thumbnail.render`")),
    responses(
        (status = 200, description = "Registered", body = RegisteredPushKind),
        (status = 401, description = "Missing or invalid token", body = crate::error::Problem),
        (status = 403, description = "Token lacks operator", body = crate::error::Problem),
        (status = 409, description = "A built-in kind", body = crate::error::Problem),
        (status = 422, description = "Not a kind name, a refused URL, a bad timeout or schema", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn register_push(
    State(state): State<AppState>,
    auth: Auth,
    Path(kind): Path<String>,
    AppJson(req): AppJson<PushKind>,
) -> ApiResult<Json<RegisteredPushKind>> {
    auth.require(OPERATOR)?;
    let kind = JobKind::parse(&kind).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    if Catalog::is_builtin(&kind) {
        return Err(ApiError::Conflict(format!(
            "`{kind}` is a built-in kind, served by conveyor's own workers"
        )));
    }
    if !(1..=3_600_000).contains(&req.timeout_ms) {
        return Err(ApiError::Unprocessable(
            "`timeout_ms` must be 1 to 3600000".into(),
        ));
    }
    let schema = req.schema.filter(|s| !s.is_null());
    if let Some(s) = &schema {
        Catalog::check_schema(s).map_err(ApiError::Unprocessable)?;
    }
    // The endpoint is vetted now, and again by the worker's resolver at each delivery.
    if let Some(host) = state.webhooks.parse(&req.url)? {
        let looked_up = state.webhooks.resolve(&auth.tenant, [host]).await;
        if let Some(refused) = looked_up.into_values().find_map(Result::err) {
            return Err(refused.into());
        }
    }
    // A kind registered again keeps its secret, so its endpoint need not change.
    let earlier = state
        .bus
        .registered_kind(&kind)
        .await
        .map_err(ApiError::bus)?;
    let revision = earlier.as_ref().map(|(_, revision)| *revision);
    let secret = earlier
        .and_then(|(e, _)| e.push)
        .map(|p| p.secret)
        .unwrap_or_else(new_secret);
    let entry = Registered {
        kind: kind.to_string(),
        schema,
        push: Some(PushEndpoint {
            url: req.url,
            timeout_ms: req.timeout_ms,
            secret: secret.clone(),
        }),
        owner: None,
    };
    let registered = state
        .bus
        .register_kind_if(&entry, revision)
        .await
        .map_err(ApiError::bus)?;
    if !registered {
        return Err(ApiError::Conflict(format!(
            "`{kind}` was registered by another request at the same moment; try again"
        )));
    }
    let kind = state
        .kinds
        .register(&entry)
        .ok_or_else(|| ApiError::Internal(format!("`{kind}` not registered")))?;
    Ok(Json(RegisteredPushKind { kind, secret }))
}

/// A fresh signing secret in the Standard Webhooks form.
fn new_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

//! `/v1/kinds`: the job kinds this API accepts, with their payload schemas.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, JOBS_READ, JOBS_WRITE};
use crate::error::{ApiError, ApiResult};
use crate::kinds::KindInfo;
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// The accepted kinds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct KindList {
    items: Vec<KindInfo>,
}

/// The job kinds `POST /v1/jobs` accepts: the built-in ones, those configured with
/// `CONVEYOR_KINDS`, and those workers have registered, each with the JSON Schema of its payload
/// when it declares one.
#[utoipa::path(get, path = "/v1/kinds", tag = "jobs",
    responses((status = 200, description = "The accepted kinds", body = KindList)))]
pub(crate) async fn list(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<KindList>> {
    if !auth.has(JOBS_READ) && !auth.has(JOBS_WRITE) {
        return Err(ApiError::Forbidden(
            "this token lacks the `jobs:read` or `jobs:write` scope".into(),
        ));
    }
    Ok(Json(KindList {
        items: state.kinds.list(),
    }))
}

//! `/v1/schedules`: a tenant's cron and interval schedules. Each tick submits a job, once: the
//! active scheduler (in the worker processes) fires the ticks, the API only keeps the
//! definitions in the schedules bucket.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use events::schedule::{self, CatchUp, Schedule, Timing};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, JOBS_WRITE};
use crate::error::{ApiError, ApiResult};
use crate::extract::AppJson;
use crate::submission::{self, SubmitJob};
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, delete))
        .routes(routes!(pause))
        .routes(routes!(resume))
}

/// A schedule: a job submitted at each tick of `cron` (in `timezone`) or of `every`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "serde_json::Map<String, Value>")]
pub(crate) struct CreateSchedule {
    /// Its name: 1 to 128 letters, digits, `-` and `_`. Creating it again replaces it, keeping
    /// its ticks (none runs twice).
    id: String,
    /// A cron expression: 5 fields, or 6 with seconds first (`0 30 2 * * *`). Or `every`.
    #[serde(default)]
    cron: Option<String>,
    /// The IANA time zone `cron` is read in (default `UTC`).
    #[serde(default)]
    timezone: Option<String>,
    /// An interval instead of `cron`, from 1s to 366d (`30s`, `1h 30m`), counted from creation.
    #[serde(default)]
    every: Option<String>,
    /// What ticks missed by more than a minute (everything was down) get: `skip` (default) or
    /// `once` (one job for the latest missed tick).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    catch_up: Option<CatchUp>,
    /// The job each tick submits, as for `POST /v1/jobs` (without `run_at` or
    /// `idempotency_key`).
    #[serde(flatten)]
    job: SubmitJob,
}

impl TryFrom<serde_json::Map<String, Value>> for CreateSchedule {
    type Error = String;

    /// The schedule's own fields, then the job's from the rest, so a field neither knows is
    /// refused (`flatten` alone would let it pass).
    fn try_from(mut fields: serde_json::Map<String, Value>) -> Result<Self, String> {
        fn take<T: serde::de::DeserializeOwned>(
            fields: &mut serde_json::Map<String, Value>,
            name: &str,
        ) -> Result<Option<T>, String> {
            match fields.remove(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => serde_json::from_value(v)
                    .map(Some)
                    .map_err(|e| format!("`{name}`: {e}")),
            }
        }
        let id = take(&mut fields, "id")?.ok_or("missing field `id`")?;
        Ok(Self {
            id,
            cron: take(&mut fields, "cron")?,
            timezone: take(&mut fields, "timezone")?,
            every: take(&mut fields, "every")?,
            catch_up: take(&mut fields, "catch_up")?,
            job: serde_json::from_value(Value::Object(fields)).map_err(|e| e.to_string())?,
        })
    }
}

/// A schedule as it stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ScheduleView {
    id: String,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cron: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    /// The interval, in ms (for `every`).
    #[serde(skip_serializing_if = "Option::is_none")]
    every_ms: Option<u64>,
    /// `skip` or `once`.
    #[schema(value_type = String)]
    catch_up: CatchUp,
    paused: bool,
    /// Its next tick (absent while paused).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_run_at: Option<DateTime<Utc>>,
    /// The last tick it acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_run_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    /// Each tick's job: payload, attempts, time limit, priority, concurrency key, webhook.
    #[schema(value_type = Object)]
    job: Value,
}

impl From<&Schedule> for ScheduleView {
    fn from(s: &Schedule) -> Self {
        let (cron, timezone, every_ms) = match &s.timing {
            Timing::Cron { cron, timezone } => (Some(cron.clone()), Some(timezone.clone()), None),
            Timing::Every { every_ms, .. } => (None, None, Some(*every_ms)),
        };
        Self {
            id: s.id.clone(),
            kind: s.kind.clone(),
            cron,
            timezone,
            every_ms,
            catch_up: s.catch_up,
            paused: s.paused,
            next_run_at: (!s.paused).then(|| s.next_tick()).flatten(),
            last_run_at: s.last_tick,
            created_at: s.created_at,
            job: serde_json::to_value(&s.job).unwrap_or(Value::Null),
        }
    }
}

/// A tenant's schedules.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ScheduleList {
    items: Vec<ScheduleView>,
}

/// The most schedules a tenant may have.
const MAX_SCHEDULES: usize = 1_000;

/// The keys of the caller's schedules (a filtered listing of the bucket's keys).
async fn tenant_keys(kv: &bus::jetstream::Store, auth: &Auth) -> ApiResult<Vec<String>> {
    let prefix = format!("{}.", auth.tenant);
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(ApiError::bucket)?
        .try_collect()
        .await
        .map_err(ApiError::bucket)?;
    Ok(keys
        .into_iter()
        .filter(|k| k.starts_with(&prefix))
        .collect())
}

fn unprocessable(msg: impl ToString) -> ApiError {
    ApiError::Unprocessable(msg.to_string())
}

/// The caller's schedule `id` and its revision.
async fn stored(state: &AppState, auth: &Auth, id: &str) -> ApiResult<(Schedule, u64)> {
    let kv = state.bus.schedules().await.map_err(ApiError::bus)?;
    let key = Schedule::key(&auth.tenant, id);
    let entry = if schedule::valid_id(id) {
        bus::entry(&kv, &key).await.map_err(ApiError::bus)?
    } else {
        None
    };
    let (bytes, revision) =
        entry.ok_or_else(|| ApiError::NotFound(format!("no schedule {id:?} for this tenant")))?;
    let schedule = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Internal(format!("schedule {id} is unreadable: {e}")))?;
    Ok((schedule, revision))
}

/// Create or replace a schedule. Each tick submits its job once, with an id derived from the
/// schedule and the tick, even across restarts and a scheduler taking over; ticks up to a minute
/// late still run, older missed ones follow `catch_up`.
#[utoipa::path(post, path = "/v1/schedules", operation_id = "create_schedule", tag = "schedules", request_body = CreateSchedule,
    responses(
        (status = 201, description = "Created", body = ScheduleView),
        (status = 200, description = "Replaced (its ticks so far kept)", body = ScheduleView),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem),
        (status = 403, description = "Token lacks jobs:write", body = crate::error::Problem),
        (status = 409, description = "Changed by another request at the same moment; try again", body = crate::error::Problem),
        (status = 422, description = "A bad id, timing, time zone or job, or the tenant's 1,000 schedules reached", body = crate::error::Problem),
        (status = 429, description = "The tenant's webhook host lookups are all taken (see Retry-After)", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    auth: Auth,
    AppJson(req): AppJson<CreateSchedule>,
) -> ApiResult<(StatusCode, Json<ScheduleView>)> {
    auth.require(JOBS_WRITE)?;
    if !schedule::valid_id(&req.id) {
        return Err(unprocessable(
            "`id` must be 1 to 128 letters, digits, `-` and `_`",
        ));
    }
    submission::check_for_schedule(&req.job)?;
    let (kind, job, host) = submission::validate(&state, &req.job)?;
    if let Some(host) = host {
        let looked_up = state.webhooks.resolve(&auth.tenant, [host]).await;
        if let Some(refused) = looked_up.into_values().find_map(Result::err) {
            return Err(refused.into());
        }
    }
    let now = Utc::now();
    let timing = match (&req.cron, &req.every) {
        (Some(cron), None) => {
            Timing::cron(cron, req.timezone.as_deref().unwrap_or("UTC")).map_err(unprocessable)?
        }
        (None, Some(every)) if req.timezone.is_none() => {
            Timing::every(every, now).map_err(unprocessable)?
        }
        (None, Some(_)) => return Err(unprocessable("`timezone` goes with `cron`, not `every`")),
        _ => return Err(unprocessable("give either `cron` or `every`")),
    };
    let kv = state.bus.schedules().await.map_err(ApiError::bus)?;
    let key = Schedule::key(&auth.tenant, &req.id);
    let earlier = bus::entry(&kv, &key).await.map_err(ApiError::bus)?;
    if earlier.is_none() && tenant_keys(&kv, &auth).await?.len() >= MAX_SCHEDULES {
        return Err(unprocessable(format!(
            "a tenant has at most {MAX_SCHEDULES} schedules: delete one first"
        )));
    }
    let revision = earlier.as_ref().map(|(_, r)| *r);
    let earlier: Option<Schedule> = earlier.and_then(|(b, _)| serde_json::from_slice(&b).ok());
    // Replaced: its ticks so far stand, and an interval keeps its anchor if it is unchanged.
    let timing = match (&earlier, timing) {
        (
            Some(Schedule {
                timing: old @ Timing::Every { every_ms: was, .. },
                ..
            }),
            Timing::Every { every_ms, .. },
        ) if *was == every_ms => old.clone(),
        (_, timing) => timing,
    };
    let schedule = Schedule {
        id: req.id.clone(),
        tenant: auth.tenant.clone(),
        kind: kind.to_string(),
        timing,
        catch_up: req.catch_up.unwrap_or_default(),
        job,
        paused: earlier.as_ref().is_some_and(|e| e.paused),
        created_at: earlier.as_ref().map_or(now, |e| e.created_at),
        last_tick: earlier.as_ref().and_then(|e| e.last_tick),
    };
    let value = serde_json::to_vec(&schedule).expect("a schedule serialises");
    if !bus::put_if(&kv, &key, value.into(), revision)
        .await
        .map_err(ApiError::bus)?
    {
        return Err(ApiError::Conflict(format!(
            "schedule {:?} was changed by another request at the same moment; try again",
            req.id
        )));
    }
    let status = if revision.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(ScheduleView::from(&schedule))))
}

/// The caller's schedules, by id.
#[utoipa::path(get, path = "/v1/schedules", operation_id = "list_schedules", tag = "schedules",
    responses(
        (status = 200, description = "The schedules", body = ScheduleList),
        (status = 403, description = "Token lacks jobs:read", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<ScheduleList>> {
    auth.require_reader()?;
    let kv = state.bus.schedules().await.map_err(ApiError::bus)?;
    let mut items = Vec::new();
    for key in tenant_keys(&kv, &auth).await? {
        if let Some(bytes) = kv.get(&key).await.map_err(ApiError::bucket)? {
            if let Ok(s) = serde_json::from_slice::<Schedule>(&bytes) {
                items.push(ScheduleView::from(&s));
            }
        }
    }
    items.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(ScheduleList { items }))
}

/// One of the caller's schedules.
#[utoipa::path(get, path = "/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = 403, description = "Token lacks jobs:read", body = crate::error::Problem),
        (status = 404, description = "No such schedule for this tenant", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleView>> {
    auth.require_reader()?;
    let (schedule, _) = stored(&state, &auth, &id).await?;
    Ok(Json(ScheduleView::from(&schedule)))
}

/// Delete a schedule: no tick fires after this; its jobs already submitted run on.
#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Token lacks jobs:write", body = crate::error::Problem),
        (status = 404, description = "No such schedule for this tenant", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(JOBS_WRITE)?;
    stored(&state, &auth, &id).await?;
    let kv = state.bus.schedules().await.map_err(ApiError::bus)?;
    kv.delete(Schedule::key(&auth.tenant, &id))
        .await
        .map_err(ApiError::bucket)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_paused(
    state: &AppState,
    auth: &Auth,
    id: &str,
    paused: bool,
) -> ApiResult<Json<ScheduleView>> {
    auth.require(JOBS_WRITE)?;
    let kv = state.bus.schedules().await.map_err(ApiError::bus)?;
    let (mut schedule, revision) = stored(state, auth, id).await?;
    if schedule.paused != paused {
        schedule.paused = paused;
        if !paused {
            // Resumed: from the next tick on, whatever it missed while paused.
            schedule.last_tick = Some(Utc::now());
        }
        let value = serde_json::to_vec(&schedule).expect("a schedule serialises");
        let key = Schedule::key(&auth.tenant, id);
        if !bus::put_if(&kv, &key, value.into(), Some(revision))
            .await
            .map_err(ApiError::bus)?
        {
            return Err(ApiError::Conflict(format!(
                "schedule {id:?} was changed by another request at the same moment; try again"
            )));
        }
    }
    Ok(Json(ScheduleView::from(&schedule)))
}

/// Pause a schedule: no tick fires until it is resumed.
#[utoipa::path(post, path = "/v1/schedules/{id}/pause", tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    responses(
        (status = 200, description = "Paused (pausing again changes nothing)", body = ScheduleView),
        (status = 403, description = "Token lacks jobs:write", body = crate::error::Problem),
        (status = 404, description = "No such schedule for this tenant", body = crate::error::Problem),
        (status = 409, description = "Changed by another request at the same moment; try again", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn pause(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleView>> {
    set_paused(&state, &auth, &id, true).await
}

/// Resume a paused schedule from its next tick (the ticks it missed while paused do not run).
#[utoipa::path(post, path = "/v1/schedules/{id}/resume", tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    responses(
        (status = 200, description = "Resumed (resuming again changes nothing)", body = ScheduleView),
        (status = 403, description = "Token lacks jobs:write", body = crate::error::Problem),
        (status = 404, description = "No such schedule for this tenant", body = crate::error::Problem),
        (status = 409, description = "Changed by another request at the same moment; try again", body = crate::error::Problem),
        (status = 503, description = "Event bus unavailable", body = crate::error::Problem),
    ))]
pub(crate) async fn resume(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleView>> {
    set_paused(&state, &auth, &id, false).await
}

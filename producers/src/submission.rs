//! The API's steps of a job's lifecycle, apart from HTTP: validating and accepting a
//! submission (with its idempotency key), cancelling and re-driving. Each step is decided by
//! [`events::lifecycle`] and published with [`bus::Bus::publish_transition`], so the API keeps
//! the worker's rule (the event stored first, then the command) in one place. The routes
//! (`routes/jobs.rs`, `routes/batch.rs`, `routes/admin.rs`) parse requests and shape answers.

use axum::http::StatusCode;
use bus::transition::JobEnvelope;
use chrono::{DateTime, Utc};
use events::job::{ConcurrencyKey, RateLimit, Redriven, Scheduling, Submitted, Webhook, Workflow};
use events::lifecycle;
use events::{JobEvent, JobId, JobKind, JobStatus, Tenant, TraceParent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::reads::{self, JobLinks};
use crate::{AppState, SOURCE};

/// Where to POST the terminal event.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookRequest {
    /// `http` or `https` URL.
    url: String,
}

/// A job to run. Only `kind` is required.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitJob {
    /// Which handler runs it, e.g. `sleep`.
    kind: String,
    /// The handler's input.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    payload: Option<Value>,
    /// Attempts before dead-lettering (1 to 100, default 3).
    #[serde(default)]
    max_attempts: Option<u32>,
    /// Per-attempt time limit in ms (1 to 86400000, default 300000).
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Not before this time (RFC 3339).
    #[serde(default)]
    run_at: Option<DateTime<Utc>>,
    /// Completion webhook.
    #[serde(default)]
    webhook: Option<WebhookRequest>,
    /// Higher starts first, among the waiting jobs of its kind (-100 to 100, default 0).
    #[serde(default)]
    priority: Option<i32>,
    /// At most `limit` of the tenant's jobs with this `key` (of any kind) run at once.
    #[serde(default)]
    concurrency: Option<ConcurrencyRequest>,
    /// At most `limit` of the tenant's jobs with this `key` (of any kind) start per `period_ms`;
    /// the others wait their turn.
    #[serde(default)]
    rate_limit: Option<RateLimitRequest>,
    /// Jobs of the caller's, already submitted, that must all end before this one starts (up to
    /// 32). If one ends other than `succeeded`, this job is cancelled unrun; their results reach
    /// its handler (`upstream`).
    #[serde(default)]
    depends_on: Option<Vec<Uuid>>,
    /// Deduplicates retries, like the `Idempotency-Key` header (which wins when both are given);
    /// in a batch, each job's own.
    #[serde(default, skip_serializing)]
    idempotency_key: Option<String>,
}

/// A concurrency key on a job.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConcurrencyRequest {
    /// Any name, 1 to 255 bytes (`account-42`); the tenant's own.
    key: String,
    /// How many of the tenant's jobs with this key may run at once (1 to 10000).
    limit: u32,
}

/// A rate limit on a job.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitRequest {
    /// Any name, 1 to 255 bytes (`stripe:account-42`); the tenant's own.
    key: String,
    /// Starts allowed per period (1 to 1000).
    limit: u32,
    /// The period in ms (1 to 86400000).
    period_ms: u64,
}

/// The answer to an accepted submission.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted {
    pub(crate) id: Uuid,
    kind: String,
    #[schema(value_type = String)]
    status: JobStatus,
    created_at: DateTime<Utc>,
    /// EVENTS stream sequence of `job.submitted`.
    seq: u64,
    pub(crate) links: JobLinks,
}

/// A submission taken: a new job, or a repeat of one with the same idempotency key.
#[derive(Debug)]
pub(crate) struct Receipt {
    /// Whether the job is new (else the repeat's original).
    pub(crate) fresh: bool,
    /// What the client is told.
    pub(crate) job: Accepted,
}

impl Receipt {
    /// `202` for a new job, `200` for a repeat.
    pub(crate) fn status(&self) -> StatusCode {
        if self.fresh {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        }
    }
}

fn unprocessable(msg: impl Into<String>) -> ApiError {
    ApiError::Unprocessable(msg.into())
}

/// A submission that passed [`validate`]: its kind, its `job.submitted` data, and its webhook's
/// host name, still to be resolved (after the rate limit and quota, see
/// [`crate::webhook_targets`]).
pub(crate) type Validated = (JobKind, Submitted, Option<String>);

/// Validates a submission, with no lookup, into the kind and the `job.submitted` data.
pub(crate) fn validate(state: &AppState, req: &SubmitJob) -> ApiResult<Validated> {
    let kind = JobKind::parse(&req.kind).map_err(|e| unprocessable(e.to_string()))?;
    let payload = req.payload.clone().unwrap_or(Value::Null);
    state
        .kinds
        .validate(&kind, &payload)
        .map_err(unprocessable)?;
    let max_attempts = req
        .max_attempts
        .unwrap_or(state.settings.default_max_attempts);
    if !(1..=100).contains(&max_attempts) {
        return Err(unprocessable("max_attempts must be between 1 and 100"));
    }
    let timeout_ms = req.timeout_ms.unwrap_or(state.settings.default_timeout_ms);
    if !(1..=86_400_000).contains(&timeout_ms) {
        return Err(unprocessable("timeout_ms must be between 1 and 86400000"));
    }
    let host = match &req.webhook {
        Some(w) => state.webhooks.parse(&w.url)?,
        None => None,
    };
    let priority = req.priority.unwrap_or(0);
    if !Scheduling::PRIORITIES.contains(&priority) {
        return Err(unprocessable("priority must be between -100 and 100"));
    }
    let concurrency = match &req.concurrency {
        None => None,
        Some(c) => {
            if c.key.is_empty() || c.key.len() > 255 {
                return Err(unprocessable("concurrency.key must be 1 to 255 bytes"));
            }
            if !ConcurrencyKey::LIMITS.contains(&c.limit) {
                return Err(unprocessable(
                    "concurrency.limit must be between 1 and 10000",
                ));
            }
            Some(ConcurrencyKey {
                key: c.key.clone(),
                limit: c.limit,
            })
        }
    };
    let rate_limit = match &req.rate_limit {
        None => None,
        Some(r) => {
            if r.key.is_empty() || r.key.len() > 255 {
                return Err(unprocessable("rate_limit.key must be 1 to 255 bytes"));
            }
            if !RateLimit::LIMITS.contains(&r.limit) {
                return Err(unprocessable("rate_limit.limit must be between 1 and 1000"));
            }
            if !RateLimit::PERIODS.contains(&r.period_ms) {
                return Err(unprocessable(
                    "rate_limit.period_ms must be between 1 and 86400000",
                ));
            }
            Some(RateLimit {
                key: r.key.clone(),
                limit: r.limit,
                period_ms: r.period_ms,
            })
        }
    };
    let mut depends_on: Vec<JobId> = Vec::new();
    for id in req.depends_on.iter().flatten() {
        if !depends_on.contains(&JobId(*id)) {
            depends_on.push(JobId(*id));
        }
    }
    if depends_on.len() > Workflow::MAX_DEPENDENCIES {
        return Err(unprocessable(format!(
            "depends_on names at most {} jobs",
            Workflow::MAX_DEPENDENCIES
        )));
    }
    Ok((
        kind,
        Submitted {
            payload,
            max_attempts,
            timeout_ms,
            run_at: req.run_at,
            webhook: req.webhook.as_ref().map(|w| Webhook { url: w.url.clone() }),
            scheduling: Scheduling {
                priority,
                concurrency,
                rate_limit,
            },
            schedule: None,
            workflow: Workflow {
                depends_on,
                ..Workflow::default()
            },
        },
        host,
    ))
}

/// Refuses what a schedule's job cannot have: a `run_at` (its ticks say when) or an idempotency
/// key (its ticks give its ids).
pub(crate) fn check_for_schedule(req: &SubmitJob) -> ApiResult<()> {
    if req.run_at.is_some() {
        return Err(unprocessable(
            "a schedule's jobs take no `run_at`: its ticks say when they run",
        ));
    }
    if req.idempotency_key.is_some() {
        return Err(unprocessable(
            "a schedule's jobs take no `idempotency_key`: each tick's job has an id of its own",
        ));
    }
    if req.depends_on.as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(unprocessable(
            "a schedule's jobs take no `depends_on`: each tick's job starts on its own",
        ));
    }
    Ok(())
}

impl SubmitJob {
    /// A job of `kind` with nothing else set.
    pub(crate) fn of_kind(kind: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            payload: None,
            max_attempts: None,
            timeout_ms: None,
            run_at: None,
            webhook: None,
            priority: None,
            concurrency: None,
            rate_limit: None,
            depends_on: None,
            idempotency_key: None,
        }
    }

    /// Whether it carries an idempotency key of its own (in its body).
    pub(crate) fn has_own_key(&self) -> bool {
        self.idempotency_key.is_some()
    }
}

/// Seals batch `batch` (a job of `kind`): `job.sealed`, stored once whatever the repeats.
pub(crate) async fn seal(
    state: &AppState,
    tenant: &Tenant,
    batch: JobId,
    kind: &JobKind,
    trace: TraceParent,
) -> ApiResult<()> {
    state
        .bus
        .publish_transition(
            &envelope(batch, tenant, kind, Some(trace)),
            lifecycle::seal(batch, Utc::now()),
        )
        .await
        .map_err(ApiError::bus)?;
    Ok(())
}

/// Refuses dependencies that name no job of `tenant`'s (422): each must be in the read model or,
/// submitted a moment ago, in the log. A job can depend only on jobs submitted before it; and a
/// job joining `containers` (the batch it is added to, the parent that submits it) cannot depend
/// on them, nor on a job that waits for them, as far as the read model shows: either would be a
/// cycle, waiting for ever.
pub(crate) async fn check_dependencies(
    state: &AppState,
    tenant: &Tenant,
    depends_on: &[JobId],
    containers: &[JobId],
) -> ApiResult<()> {
    if depends_on.is_empty() {
        return Ok(());
    }
    if let Some(own) = depends_on.iter().find(|d| containers.contains(d)) {
        return Err(unprocessable(format!(
            "depends_on: job {own} waits for this job (its batch or its parent), so it cannot wait for it"
        )));
    }
    let ids: Vec<Uuid> = depends_on.iter().map(|d| d.0).collect();
    let known: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE tenant = $1 AND id = ANY($2)")
            .bind(tenant.as_str())
            .bind(&ids)
            .fetch_all(&state.db)
            .await
            .map_err(ApiError::db)?;
    for dep in depends_on.iter().filter(|d| !known.contains(&d.0)) {
        // Submitted a moment ago: in the log, and (within the read-your-writes wait) in the read
        // model, where the cycle check below looks.
        match reads::find_job(state, tenant, *dep).await {
            Ok(_) => {}
            Err(ApiError::NotFound(_)) => {
                return Err(unprocessable(format!(
                    "depends_on: no job {dep} (a job can depend only on jobs of its tenant already submitted)"
                )))
            }
            Err(e) => return Err(e),
        }
    }
    if containers.is_empty() {
        return Ok(());
    }
    // What the dependencies wait for, transitively (unended jobs only: an ended one waits for
    // nothing): their own dependencies, a batch's members, a waiting parent's children.
    let containers: Vec<Uuid> = containers.iter().map(|c| c.0).collect();
    let cycle: bool = sqlx::query_scalar(
        "WITH RECURSIVE waits(id, depth) AS (
             SELECT unnest($1::uuid[]), 0
           UNION
             SELECT e.next, w.depth + 1
             FROM waits w
             JOIN jobs j ON j.id = w.id AND j.tenant = $3
                        AND j.status IN ('queued', 'running', 'retry_scheduled')
             CROSS JOIN LATERAL (
                 SELECT (jsonb_array_elements_text(coalesce(j.depends_on, '[]')))::uuid AS next
               UNION ALL
                 SELECT m.id FROM jobs m WHERE j.is_batch AND m.batch = j.id
                   AND m.status IN ('queued', 'running', 'retry_scheduled')
               UNION ALL
                 SELECT c.id FROM jobs c WHERE j.suspended_attempt IS NOT NULL AND c.parent = j.id
                   AND c.status IN ('queued', 'running', 'retry_scheduled')
             ) e
             WHERE w.depth < 16)
         SELECT EXISTS (SELECT 1 FROM waits WHERE id = ANY($2))",
    )
    .bind(&ids)
    .bind(&containers)
    .bind(tenant.as_str())
    .fetch_one(&state.db)
    .await
    .map_err(ApiError::db)?;
    if cycle {
        return Err(unprocessable(
            "depends_on: a job it names waits, through others, for this job's batch or parent: a cycle",
        ));
    }
    Ok(())
}

/// Which id a submission's job gets.
#[derive(Debug, Clone)]
pub(crate) enum Identity {
    /// A new one.
    New,
    /// The one its idempotency key holds (a new one on the key's first use).
    Key(String),
    /// One the caller derived, the same on every repeat of the request (a batch's members):
    /// a job already in the log under it is a repeat.
    Given(JobId),
}

impl From<Option<String>> for Identity {
    fn from(key: Option<String>) -> Self {
        key.map_or(Self::New, Self::Key)
    }
}

/// The idempotency key of a submission: `given` apart (the `Idempotency-Key` header's bytes),
/// else the body's; 1 to 255 visible ASCII characters.
pub(crate) fn idempotency_key(given: Option<&[u8]>, req: &SubmitJob) -> ApiResult<Option<String>> {
    let bad =
        || ApiError::BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into());
    let key = match given {
        Some(bytes) => std::str::from_utf8(bytes).map_err(|_| bad())?,
        None => match &req.idempotency_key {
            Some(k) => k.as_str(),
            None => return Ok(None),
        },
    };
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

/// What the idempotency bucket remembers of a key.
#[derive(Debug, Serialize, Deserialize)]
struct Claimed {
    job: JobId,
    request: String,
    created_at: DateTime<Utc>,
}

/// Claims an `Idempotency-Key` for a new job, or returns the job that already holds it.
/// Returns `(job, created_at, fresh)`.
pub(crate) async fn claim_key(
    state: &AppState,
    tenant: &Tenant,
    key: &str,
    req: &impl Serialize,
) -> ApiResult<(JobId, DateTime<Utc>, bool)> {
    let request = hex::encode(Sha256::digest(
        serde_json::to_vec(req).expect("a request serialises"),
    ));
    let slot = format!("{tenant}.{}", hex::encode(Sha256::digest(key.as_bytes())));
    let claim = Claimed {
        job: JobId::new(),
        request,
        created_at: Utc::now(),
    };
    let kv = state.bus.idempotency().await.map_err(ApiError::bus)?;
    let value = serde_json::to_vec(&claim).expect("a claim serialises");
    if bus::create_once(&kv, &slot, value.into())
        .await
        .map_err(ApiError::bus)?
    {
        return Ok((claim.job, claim.created_at, true));
    }
    let held = kv
        .get(&slot)
        .await
        .map_err(|e| ApiError::bus(bus::Error::bucket(e)))?
        .and_then(|b| serde_json::from_slice::<Claimed>(&b).ok())
        .ok_or_else(|| ApiError::Unavailable("idempotency key is being claimed; retry".into()))?;
    if held.request != claim.request {
        return Err(ApiError::Conflict(
            "this Idempotency-Key was already used with a different request".into(),
        ));
    }
    Ok((held.job, held.created_at, false))
}

/// The envelopes of the API's steps of `job`.
fn envelope(
    job: JobId,
    tenant: &Tenant,
    kind: &JobKind,
    trace: Option<TraceParent>,
) -> JobEnvelope {
    JobEnvelope {
        source: SOURCE,
        job,
        tenant: tenant.clone(),
        kind: kind.clone(),
        trace,
    }
}

/// Accepts one validated submission: claims its idempotency key (a repeat returns the original
/// job) and publishes it. The caller has reserved its place in the tenant's quota, and gives it
/// back unless the job is new.
pub(crate) async fn accept(
    state: &AppState,
    tenant: &Tenant,
    trace: &TraceParent,
    identity: Identity,
    req: &SubmitJob,
    kind: JobKind,
    job: Submitted,
) -> ApiResult<Receipt> {
    let (id, created_at, fresh) = match identity {
        Identity::New => (JobId::new(), Utc::now(), true),
        Identity::Key(key) => claim_key(state, tenant, &key, req).await?,
        Identity::Given(id) => match reads::submitted_event(state, tenant, id).await? {
            Some((_, ev)) => (id, ev.time, false),
            None => (id, Utc::now(), true),
        },
    };
    tracing::Span::current().record("job_id", tracing::field::display(id));
    let known = if fresh {
        None
    } else {
        reads::submitted_event(state, tenant, id).await?
    };
    let seq = match known {
        // A repeat of a job that has not started: its run command may be what the first
        // attempt lost, so publish it again (a copy is dropped as a duplicate).
        Some((seq, ev))
            if reads::last_event(state, tenant, id, "started")
                .await?
                .is_none() =>
        {
            if let JobEvent::Submitted(job) = &ev.payload {
                let to = JobEnvelope {
                    trace: Some(ev.traceparent.clone().unwrap_or_else(|| trace.clone())),
                    ..JobEnvelope::of(SOURCE, &ev)
                };
                state
                    .bus
                    .publish_transition(&to, lifecycle::first_run(id, job, Utc::now()))
                    .await
                    .map_err(ApiError::bus)?;
            }
            seq
        }
        Some((seq, _)) => seq,
        // New, or a repeat whose first attempt never got its events stored: publish (again).
        // The event first, then the command: a job never runs before its submission is in the
        // log (else a fast worker's events could precede it and the read model would miss
        // them). A command lost in between (a crash, an outage) is published again by a repeat
        // of the request and by the workers' submissions audit.
        None => {
            let acks = state
                .bus
                .publish_transition(
                    &envelope(id, tenant, &kind, Some(trace.clone())),
                    lifecycle::submit(id, job, created_at),
                )
                .await
                .map_err(ApiError::bus)?;
            acks[0].sequence
        }
    };
    let status = if fresh {
        metrics::counter!("conveyor_jobs_submitted_total", "kind" => kind.to_string()).increment(1);
        JobStatus::Queued
    } else {
        // Not projected yet is queued; so is a read model out of reach: a submission never
        // depends on Postgres.
        reads::query_job(state, tenant, id.0)
            .await
            .ok()
            .flatten()
            .map_or(JobStatus::Queued, |j| j.status)
    };
    Ok(Receipt {
        fresh,
        job: Accepted {
            id: id.0,
            kind: kind.to_string(),
            status,
            created_at,
            seq,
            links: JobLinks::of(id.0),
        },
    })
}

/// Requests the cancellation of `id`: `409` if it already ended.
pub(crate) async fn cancel(
    state: &AppState,
    tenant: &Tenant,
    id: JobId,
    trace: TraceParent,
) -> ApiResult<()> {
    let job = reads::find_job(state, tenant, id).await?;
    if job.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "job {id} already ended ({})",
            job.status.as_str()
        )));
    }
    let kind = JobKind::parse(&job.kind).map_err(|e| ApiError::Internal(e.to_string()))?;
    request_cancel(state, tenant, id, &kind, trace)
        .await
        .map(drop)
}

/// Publishes the cancellation of `id` (a job of `kind` the caller knows has not ended): whether
/// it was asked now (`false`: it had been asked before, within the duplicate window).
pub(crate) async fn request_cancel(
    state: &AppState,
    tenant: &Tenant,
    id: JobId,
    kind: &JobKind,
    trace: TraceParent,
) -> ApiResult<bool> {
    let acks = state
        .bus
        .publish_transition(
            &envelope(id, tenant, kind, Some(trace)),
            lifecycle::cancel(id, Utc::now()),
        )
        .await
        .map_err(ApiError::bus)?;
    Ok(!acks.first().is_some_and(|a| a.duplicate))
}

/// Re-drives the dead-lettered job `id`: `409` unless it is dead-lettered (failed).
pub(crate) async fn redrive(state: &AppState, tenant: &Tenant, id: JobId) -> ApiResult<Redriven> {
    let job = reads::find_job(state, tenant, id).await?;
    if job.status != JobStatus::Failed {
        return Err(ApiError::Conflict(format!(
            "job {id} is {}, only dead-lettered (failed) jobs can be re-driven",
            job.status.as_str()
        )));
    }
    let Some((_, submitted)) = reads::submitted_event(state, tenant, id).await? else {
        return Err(reads::not_found(id));
    };
    let JobEvent::Submitted(original) = &submitted.payload else {
        return Err(ApiError::Internal("job.submitted has another type".into()));
    };
    let earlier = reads::count_events(state, tenant, id, "redriven").await?;
    let (redriven, transition) = lifecycle::redrive(
        id,
        original,
        u32::try_from(job.attempt.max(0)).unwrap_or(0),
        u32::try_from(earlier).unwrap_or(u32::MAX),
        Utc::now(),
    );
    // The re-driven attempts go on in the job's own trace, under its submission.
    let to = JobEnvelope::of(SOURCE, &submitted);
    state
        .bus
        .publish_transition(&to, transition)
        .await
        .map_err(ApiError::bus)?;
    Ok(redriven)
}

//! The worker protocol: the API runs the attempts of workers in other languages, which lease jobs
//! over HTTP, run them and report back.
//!
//! The API takes a worker's place on the bus: it pulls the kind's `run` commands from the same
//! durable consumer the Rust workers share, decides each step with [`events::lifecycle`] and
//! publishes it with `bus::transition`, exactly as the Rust runtime does. What a Rust worker holds
//! in memory while its handler runs (the message to acknowledge, the attempt, its deadline) the
//! worker holds instead, in a signed [`lease::Lease`] token, so any API process can act on any
//! lease and the API keeps no state of its own.
//!
//! The guarantees follow from the Rust runtime's: `job.started` is stored before a job is
//! handed out; a heartbeat sends `+WPI`, so a live job is not redelivered; a lease expires a
//! little before JetStream's ack wait runs out, and from then on its reports are refused, so a
//! worker that lost its job cannot report on it; every event carries its deterministic message
//! id, so a repeated report adds nothing, and the report whose terminal event was a duplicate is
//! told so.

pub(crate) mod lease;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::jetstream::{self, AckKind, PullConsumer};
use bus::transition::JobEnvelope;
use bus::Bus;
use chrono::{DateTime, Utc};
use events::command::RunJob;
use events::job::{ErrorInfo, JobEvent, Progressed};
use events::lifecycle::{Attempt, AttemptOutcome, Start, Transition};
use events::subjects::msg_id;
use events::{Command, Envelope, JobKind, RetryPolicy, Tenant};
use futures::StreamExt;
use rand::Rng;
use serde_json::Value;
use tokio::sync::{mpsc, OnceCell, RwLock, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, ApiResult};
use lease::{Lease, Signer};

/// CloudEvents `source` of the events the API publishes for workers of the worker protocol.
pub(crate) const SOURCE: &str = "/conveyor/api/workers";

/// The most jobs one lease answers.
pub(crate) const MAX_LEASE: usize = 256;
/// The longest a lease request waits for a job.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(30);
/// The most pulls one API process keeps waiting for leases at once (a lease waits with one pull
/// per kind it names), well under a consumer's bound on waiting pulls (512).
const MAX_WAITING_PULLS: usize = 256;
/// The longest a lease lasts between heartbeats, whatever the ack wait: an outcome claim
/// (kept ten minutes) outlives every lease that could still report on its attempt.
const MAX_LEASE_SPAN: Duration = Duration::from_secs(300);
/// How long another tenant's job that a tenant-limited lease met stays back, so the lease looks
/// past it (JetStream redelivers a handed-back command before anything else).
const FOREIGN_HAND_BACK: Duration = Duration::from_millis(250);
/// The longest a no-wait fetch may take to be answered.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Starts of leased jobs (each a `job.started` publish) in flight per lease.
const STARTS_IN_FLIGHT: usize = 32;

/// How the API runs attempts for workers of the worker protocol: the same as the Rust workers'
/// settings (`CONVEYOR_ACK_WAIT_MS`, `CONVEYOR_RETRY_*`, `CONVEYOR_RESULT_INLINE_BYTES`).
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// The ack wait of worker consumers this API creates (a kind no Rust worker serves). A
    /// lease lasts nine tenths of the consumer's actual ack wait.
    pub ack_wait: Duration,
    /// Delay before a failed attempt's retry.
    pub retry: RetryPolicy,
    /// Results larger than this (JSON bytes) go to the object store.
    pub inline_result_limit: usize,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            retry: RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(600)),
            inline_result_limit: 16 * 1024,
        }
    }
}

/// A job handed to a worker.
#[derive(Debug)]
pub(crate) struct Leased {
    pub(crate) lease: Lease,
    pub(crate) token: String,
    pub(crate) payload: Value,
    /// How the jobs it waited for ended.
    pub(crate) upstream: Option<events::job::Upstream>,
}

/// A renewed lease.
#[derive(Debug)]
pub(crate) struct Renewed {
    pub(crate) token: String,
    pub(crate) expires: DateTime<Utc>,
    pub(crate) cancelled: bool,
}

/// How an attempt ended, as a worker reports it.
#[derive(Debug)]
pub(crate) enum Report {
    Completed(Value),
    Failed(ErrorInfo),
    Cancelled,
    /// The handler submitted children and waits for them.
    WaitsForChildren,
}

/// Who may lease what: the token's tenant (or every tenant) and kinds.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    /// `None`: every tenant.
    pub(crate) tenant: Option<Tenant>,
    /// The worker's name in `job.started`.
    pub(crate) worker: String,
}

/// The worker protocol's state: consumer handles and the lease signer; no lease is kept here.
pub(crate) struct Workers {
    signer: Signer,
    settings: LeaseSettings,
    /// Each kind's worker consumer and its ack wait, looked up once.
    consumers: RwLock<HashMap<JobKind, (PullConsumer, Duration)>>,
    cancels: OnceCell<jetstream::Store>,
    outcomes: OnceCell<jetstream::Store>,
    events: OnceCell<jetstream::Stream>,
    /// Pulls waiting for leases, bounded.
    pulls: Arc<Semaphore>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What a lease found in a command.
enum Found {
    Leased(Box<Leased>),
    /// Another tenant's job, handed back.
    Foreign,
    /// Nothing to hand out (not due, already ended, cancelled, unreadable).
    Nothing,
}

impl Workers {
    /// The protocol's state; lease tokens are signed with a key derived from `master_secret`.
    pub(crate) fn new(master_secret: &str, settings: LeaseSettings) -> Self {
        Self {
            signer: Signer::new(master_secret),
            settings,
            consumers: Default::default(),
            cancels: OnceCell::new(),
            outcomes: OnceCell::new(),
            events: OnceCell::new(),
            pulls: Arc::new(Semaphore::new(MAX_WAITING_PULLS)),
        }
    }

    /// The lease of a token, unless it is forged, malformed or expired.
    pub(crate) fn verify(&self, token: &str) -> ApiResult<Lease> {
        let lease = self.signer.verify(token).map_err(|e| match e {
            lease::TokenError::Forged => ApiError::Forbidden(e.to_string()),
            lease::TokenError::Malformed => ApiError::BadRequest(e.to_string()),
        })?;
        if Utc::now() > lease.expires {
            return Err(ApiError::LeaseLost(format!(
                "the lease of job {} expired at {}: the job went back to the queue and may run elsewhere; drop it",
                lease.job,
                lease.expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )));
        }
        Ok(lease)
    }

    /// `kind`'s worker consumer (made if no worker has made it yet) and its ack wait.
    pub(crate) async fn consumer(
        &self,
        bus: &Bus,
        kind: &JobKind,
    ) -> ApiResult<(PullConsumer, Duration)> {
        if let Some(found) = self.consumers.read().await.get(kind) {
            return Ok(found.clone());
        }
        let found = bus
            .worker_consumer(kind, self.settings.ack_wait)
            .await
            .map_err(ApiError::bus)?;
        self.consumers
            .write()
            .await
            .insert(kind.clone(), found.clone());
        Ok(found)
    }

    async fn cancels(&self, bus: &Bus) -> ApiResult<&jetstream::Store> {
        self.cancels
            .get_or_try_init(|| bus.cancels())
            .await
            .map_err(ApiError::bus)
    }

    async fn outcomes(&self, bus: &Bus) -> ApiResult<&jetstream::Store> {
        self.outcomes
            .get_or_try_init(|| bus.outcomes())
            .await
            .map_err(ApiError::bus)
    }

    async fn events(&self, bus: &Bus) -> ApiResult<&jetstream::Stream> {
        self.events
            .get_or_try_init(|| bus.events_stream())
            .await
            .map_err(ApiError::bus)
    }

    /// Leases up to `max` jobs of `kinds` for `scope`, waiting up to `wait` for the first.
    pub(crate) async fn lease(
        &self,
        bus: &Bus,
        scope: &Scope,
        kinds: &[JobKind],
        max: usize,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> ApiResult<Vec<Leased>> {
        let mut consumers = Vec::with_capacity(kinds.len());
        for kind in kinds {
            consumers.push(self.consumer(bus, kind).await?);
        }
        let until = Instant::now() + wait;
        let mut leased = Vec::new();
        loop {
            let mut foreign = false;
            // Whatever is waiting, kind after kind, up to `max`.
            for (consumer, ack_wait) in &consumers {
                let room = max - leased.len();
                if room == 0 {
                    break;
                }
                let received = Utc::now();
                let waiting = fetch_waiting(consumer, room).await?;
                let found = futures::stream::iter(waiting)
                    .map(|msg| self.start(bus, scope, msg, received, *ack_wait))
                    .buffered(STARTS_IN_FLIGHT)
                    .collect::<Vec<_>>()
                    .await;
                for f in found {
                    match f {
                        Found::Leased(l) => leased.push(*l),
                        Found::Foreign => foreign = true,
                        Found::Nothing => {}
                    }
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            if !leased.is_empty() || left < Duration::from_millis(50) || shutdown.is_cancelled() {
                return Ok(leased);
            }
            if foreign {
                // Other tenants' jobs came first and went back for a moment: look past them.
                continue;
            }
            // Nothing waiting: wait for the next command of any of the kinds.
            let pulls = self.pull_permits(consumers.len())?;
            let Some((msg, received, ack_wait)) =
                wait_for_one(&consumers, pulls, left, shutdown).await
            else {
                // The pulls expired, or failed (a server going away): then pause before
                // asking again, rather than answer at once and be asked again at once.
                let left = until.saturating_duration_since(Instant::now());
                if left > Duration::from_millis(100) && !shutdown.is_cancelled() {
                    tokio::time::sleep(left.min(Duration::from_secs(1))).await;
                    continue;
                }
                return Ok(leased);
            };
            if let Found::Leased(l) = self.start(bus, scope, msg, received, ack_wait).await {
                leased.push(*l);
            }
        }
    }

    /// One permit per pull a long poll makes, or 503 when this process has too many waiting.
    fn pull_permits(&self, n: usize) -> ApiResult<Vec<tokio::sync::OwnedSemaphorePermit>> {
        (0..n)
            .map(|_| self.pulls.clone().try_acquire_owned())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                ApiError::Overloaded(
                    "too many workers are waiting on this server; retry shortly".into(),
                )
            })
    }

    /// Decides what to do with a `run` command a lease found: hand it back (another tenant's,
    /// not due), end it (cancelled before it started, or ended already), or append `job.started`
    /// and hand it to the worker.
    async fn start(
        &self,
        bus: &Bus,
        scope: &Scope,
        msg: jetstream::Message,
        received: DateTime<Utc>,
        ack_wait: Duration,
    ) -> Found {
        let Ok(cmd) = bus::decode_command(msg.headers.as_ref(), &msg.payload) else {
            tracing::warn!(subject = %msg.subject, "poison command terminated");
            let _ = msg.ack_with(AckKind::Term).await;
            return Found::Nothing;
        };
        let Command::Run(run) = cmd.payload.clone() else {
            let _ = msg.ack_with(AckKind::Term).await;
            return Found::Nothing;
        };
        if scope.tenant.as_ref().is_some_and(|t| *t != cmd.tenant) {
            let _ = msg.ack_with(AckKind::Nak(Some(FOREIGN_HAND_BACK))).await;
            return Found::Foreign;
        }
        let (Some(reply), Ok(info)) = (msg.reply.clone(), msg.info()) else {
            let _ = msg.ack_with(AckKind::Term).await;
            return Found::Nothing;
        };
        let (seq, delivered) = (info.stream_sequence, info.delivered);
        let now = Utc::now();
        let cancelled = match self.cancels(bus).await {
            Ok(store) => bus::attempt::cancel_marked(store, cmd.job).await,
            Err(_) => false,
        };
        let to = JobEnvelope::of(SOURCE, &cmd);
        let attempt = Attempt::new(cmd.job, run.clone());
        let started = match attempt.start(now, cancelled, &scope.worker) {
            Start::NotDue(wait) => {
                let back = wait.min(bus::consume::MAX_HAND_BACK);
                let _ = msg.ack_with(AckKind::Nak(Some(back))).await;
                return Found::Nothing;
            }
            _ if delivered > 1 && self.ended(bus, &cmd.tenant, cmd.job).await => {
                let _ = msg.ack().await;
                return Found::Nothing;
            }
            Start::Cancelled(transition) => {
                if bus.publish_transition(&to, transition).await.is_ok() {
                    let _ = msg.ack().await;
                }
                return Found::Nothing;
            }
            Start::Started(transition) => transition,
        };
        if let Some(rate) = &run.scheduling.rate_limit {
            match bus
                .take_start(&cmd.tenant, rate, cmd.job, run.attempt, now)
                .await
            {
                Ok(None) => {}
                Ok(Some(back)) => {
                    // Its key started its limit within the period: back until a start frees up.
                    let _ = msg.ack_with(AckKind::Nak(Some(back))).await;
                    return Found::Nothing;
                }
                Err(e) => {
                    tracing::warn!(job = %cmd.job, error = %e, "rate limit not read; command handed back");
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                    return Found::Nothing;
                }
            }
        }
        if let Err(e) = bus.publish_transition(&to, started).await {
            tracing::warn!(job = %cmd.job, error = %e, "job.started not stored; command handed back");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return Found::Nothing;
        }
        let lease = Lease {
            job: cmd.job,
            tenant: cmd.tenant.clone(),
            kind: cmd.kind.clone(),
            attempt: run.attempt,
            max_attempts: run.max_attempts,
            generation: run.generation,
            timeout_ms: run.timeout_ms,
            webhook: run.webhook,
            seq,
            delivered: u64::try_from(delivered).unwrap_or(u64::MAX),
            reply: reply.to_string(),
            started: now,
            // From when the command came: JetStream's clock for it started then.
            expires: received + lease_span(ack_wait),
            lease_ms: u64::try_from(ack_wait.as_millis()).unwrap_or(u64::MAX),
            worker: scope.worker.clone(),
            trace: cmd.traceparent.as_ref().map(|t| t.as_str().to_owned()),
        };
        Found::Leased(Box::new(Leased {
            token: self.signer.sign(&lease),
            lease,
            payload: run.payload,
            upstream: run.upstream.map(|u| *u),
        }))
    }

    async fn ended(&self, bus: &Bus, tenant: &Tenant, job: events::JobId) -> bool {
        match self.events(bus).await {
            Ok(events) => bus.job_ended(events, tenant, job).await,
            Err(_) => false,
        }
    }

    /// The lease's `run` command, or a lost lease once it is gone (acknowledged: the attempt's
    /// outcome is stored).
    async fn held_command(&self, bus: &Bus, lease: &Lease) -> ApiResult<RunJob> {
        match bus.command_at(lease.seq).await.map_err(ApiError::bus)? {
            Some(Envelope {
                payload: Command::Run(run),
                ..
            }) => Ok(run),
            _ => Err(ApiError::LeaseLost(format!(
                "job {} was already reported on; drop it",
                lease.job
            ))),
        }
    }

    /// Extends a lease (`+WPI` to JetStream) and says whether the job was cancelled. After the
    /// attempt's deadline, the attempt ends as timed out instead and the lease is lost.
    pub(crate) async fn heartbeat(&self, bus: &Bus, lease: Lease) -> ApiResult<Renewed> {
        self.claim(bus, &lease, None).await?;
        let now = Utc::now();
        if now > lease.deadline() {
            let job = lease.job;
            self.conclude(bus, lease, None).await?;
            return Err(ApiError::LeaseLost(format!(
                "job {job} outran its timeout_ms and was ended as timed out; drop it"
            )));
        }
        bus.acknowledge(&lease.reply, AckKind::Progress)
            .await
            .map_err(ApiError::bus)?;
        let cancelled = bus::attempt::cancel_marked(self.cancels(bus).await?, lease.job).await;
        let ack_wait = Duration::from_millis(lease.lease_ms);
        let renewed = Lease {
            expires: now + lease_span(ack_wait),
            ..lease
        };
        Ok(Renewed {
            token: self.signer.sign(&renewed),
            expires: renewed.expires,
            cancelled,
        })
    }

    /// Refuses a lease whose attempt has ended or was handed back (`409`): what a worker may do
    /// only while it holds the job, such as submitting its children.
    pub(crate) async fn holds(&self, bus: &Bus, lease: &Lease) -> ApiResult<()> {
        self.claim(bus, lease, None).await.map(drop)
    }

    /// Appends a `job.progressed` of the lease's attempt. `seq` numbers the reports of the
    /// attempt, so a report sent twice is stored once.
    pub(crate) async fn progress(
        &self,
        bus: &Bus,
        lease: &Lease,
        seq: Option<u64>,
        progress: (u64, Option<u64>, Option<String>),
    ) -> ApiResult<()> {
        self.claim(bus, lease, None).await?;
        let (current, total, message) = progress;
        // Without a `seq`, a number no numbered report uses.
        let seq = seq.unwrap_or_else(|| rand::rng().random::<u64>() | (1 << 63));
        let ev = envelope(lease).wrap(JobEvent::Progressed(Progressed {
            attempt: lease.attempt,
            current,
            total,
            message,
        }));
        bus.publish_event(&ev, &msg_id::progress(lease.job, lease.attempt, seq))
            .await
            .map(drop)
            .map_err(ApiError::bus)
    }

    /// Hands the job back to the queue unfinished: another worker runs the same attempt.
    pub(crate) async fn release(&self, bus: &Bus, lease: &Lease) -> ApiResult<()> {
        self.claim(bus, lease, Some(Claim::Released)).await?;
        bus.acknowledge(&lease.reply, AckKind::Nak(None))
            .await
            .map_err(ApiError::bus)
    }

    /// Ends the attempt as the worker reports (`None`: timed out): decides what follows,
    /// publishes it, then acknowledges the command. Returns the job's status after the report;
    /// a report whose outcome the log already has is refused as a lost lease.
    pub(crate) async fn conclude(
        &self,
        bus: &Bus,
        lease: Lease,
        report: Option<Report>,
    ) -> ApiResult<&'static str> {
        if matches!(report, Some(Report::Cancelled))
            && !bus::attempt::cancel_marked(self.cancels(bus).await?, lease.job).await
        {
            return Err(ApiError::Unprocessable(format!(
                "job {} was not cancelled: report `cancelled` only when a heartbeat says so",
                lease.job
            )));
        }
        // This report ends the attempt, unless another report on it came first.
        let digest = report_digest(&lease, report.as_ref());
        let fresh = self
            .claim(bus, &lease, Some(Claim::Concluded(digest)))
            .await?;
        let now = Utc::now();
        let late = now > lease.deadline();
        let outcome = match report {
            Some(Report::Cancelled) => AttemptOutcome::Cancelled,
            None => AttemptOutcome::TimedOut,
            Some(_) if late => AttemptOutcome::TimedOut,
            Some(Report::Completed(value)) => {
                let (result, result_ref) = bus
                    .store_result(lease.job, value, self.settings.inline_result_limit)
                    .await
                    .map_err(ApiError::bus)?;
                AttemptOutcome::Succeeded { result, result_ref }
            }
            Some(Report::Failed(error)) => AttemptOutcome::Failed(error),
            Some(Report::WaitsForChildren) => AttemptOutcome::WaitsForChildren,
        };
        // A retry's command carries the payload and the scheduling, which the lease does not:
        // read them from the command, still stored until it is acknowledged.
        let held = match outcome {
            AttemptOutcome::Succeeded { .. } | AttemptOutcome::Cancelled => None,
            _ => match self.held_command(bus, &lease).await {
                Ok(held) => Some(held),
                // A retry of a report whose outcome is stored (its command acknowledged, so
                // gone): answered as the first was.
                Err(ApiError::LeaseLost(_)) if !fresh => {
                    return Ok(match outcome {
                        AttemptOutcome::WaitsForChildren => "waiting_for_children",
                        _ if self.ended(bus, &lease.tenant, lease.job).await => "dead_lettered",
                        _ => "retry_scheduled",
                    });
                }
                Err(e) => return Err(e),
            },
        };
        let duration_ms = u64::try_from((now - lease.started).num_milliseconds()).unwrap_or(0);
        let jitter = rand::rng().random_range(0.0..1.0);
        let kind = lease.kind.to_string();
        let transition = Attempt::new(lease.job, lease.run(held)).conclude(
            outcome,
            duration_ms,
            &self.settings.retry,
            now,
            jitter,
        );
        let status = status_after(&transition);
        let acks = bus
            .publish_transition(&envelope(&lease), transition)
            .await
            .map_err(ApiError::bus)?;
        bus.acknowledge(&lease.reply, AckKind::Ack)
            .await
            .map_err(ApiError::bus)?;
        // A fresh claim whose events were already there: the job ended by another way (a
        // cancellation decided as a delivery of its command started).
        if fresh && acks.iter().any(|ack| ack.duplicate) {
            return Err(ApiError::LeaseLost(format!(
                "job {} was already reported on; this report adds nothing",
                lease.job
            )));
        }
        let outcome = match status {
            "succeeded" | "cancelled" | "waiting_for_children" => status,
            _ => "failed",
        };
        metrics::counter!("conveyor_job_attempts_total", "kind" => kind.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("conveyor_job_duration_seconds", "kind" => kind)
            .record(duration_ms as f64 / 1000.0);
        Ok(status)
    }
}

/// A lease's claim on its attempt, in the OUTCOMES bucket (key `<job>.<generation>.<attempt>`,
/// value `<claim> <delivery>`): the first report that ends the attempt, or hands it back, claims
/// it for its delivery of the command, and from then on the attempt answers to that alone.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    /// Handed back by the delivery: a later delivery (the next holder) may still end it.
    Released,
    /// Ended by the delivery, with the report of this digest (a retry of the same report is
    /// let through: its events carry the same message ids).
    Concluded(String),
}

impl Claim {
    fn encode(&self, delivered: u64) -> String {
        match self {
            Self::Released => format!("released {delivered}"),
            Self::Concluded(digest) => format!("concluded {delivered} {digest}"),
        }
    }

    fn decode(value: &[u8]) -> Option<(Self, u64)> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.split(' ');
        let what = parts.next()?;
        let delivered = parts.next()?.parse().ok()?;
        let claim = match what {
            "released" => Self::Released,
            "concluded" => Self::Concluded(parts.next()?.to_owned()),
            _ => return None,
        };
        Some((claim, delivered))
    }
}

impl Workers {
    /// Checks the lease against its attempt's claim and, with `wanted`, claims the attempt.
    /// A lease may act unless the attempt was ended or handed back by this or another report
    /// of its delivery, or ended by an earlier delivery that got its outcome stored. (An earlier
    /// delivery's claim whose command is still here, with no outcome in the log, is a report
    /// that an API process died in the middle of: the command's later delivery takes over, as a
    /// redelivered command does in a Rust worker.) Returns whether `wanted` was claimed now
    /// (`false`: the same report already had, and this is its retry).
    async fn claim(&self, bus: &Bus, lease: &Lease, wanted: Option<Claim>) -> ApiResult<bool> {
        let store = self.outcomes(bus).await?;
        let key = format!("{}.{}.{}", lease.job, lease.generation, lease.attempt);
        let lost = |why: &str| {
            ApiError::LeaseLost(format!(
                "job {}'s attempt {} {why}; drop it",
                lease.job, lease.attempt
            ))
        };
        loop {
            let found = bus::entry(store, &key).await.map_err(ApiError::bus)?;
            let revision = match found {
                None => None,
                Some((value, revision)) => match Claim::decode(&value) {
                    Some((claim, delivered))
                        if wanted.as_ref() == Some(&claim) && delivered == lease.delivered =>
                    {
                        return Ok(false)
                    }
                    Some((_, delivered)) if delivered >= lease.delivered => {
                        return Err(lost("was already reported on or handed back"))
                    }
                    Some((Claim::Released, _)) => Some(revision),
                    Some((Claim::Concluded(_), _)) => {
                        if self.outcome_stored(bus, lease).await {
                            // Its report got through but its acknowledgement did not.
                            let _ = bus.acknowledge(&lease.reply, AckKind::Ack).await;
                            return Err(lost("was already reported on"));
                        }
                        Some(revision)
                    }
                    None => return Err(lost("has an unreadable claim")),
                },
            };
            let Some(wanted) = &wanted else {
                return Ok(false);
            };
            let value = wanted.encode(lease.delivered);
            if bus::put_if(store, &key, value.into(), revision)
                .await
                .map_err(ApiError::bus)?
            {
                return Ok(true);
            }
            // Another report claimed it meanwhile: judge against that one.
        }
    }

    /// Whether the attempt's outcome is in the log: the job ended in its generation, or this
    /// attempt's retry was scheduled.
    async fn outcome_stored(&self, bus: &Bus, lease: &Lease) -> bool {
        if self.ended(bus, &lease.tenant, lease.job).await {
            return true;
        }
        let Ok(events) = self.events(bus).await else {
            return false;
        };
        let subject = bus
            .ns()
            .job_event(&lease.tenant, lease.job, "retry_scheduled");
        let Ok(Some(last)) = bus::last_message(events, subject).await else {
            return false;
        };
        matches!(
            bus::decode_event(Some(&last.headers), &last.payload),
            Ok(Envelope { payload: JobEvent::RetryScheduled(r), .. }) if r.next_attempt > lease.attempt
        )
    }
}

/// What identifies a report, so that its retry is told from another report.
fn report_digest(lease: &Lease, report: Option<&Report>) -> String {
    use sha2::Digest as _;
    let described = format!("{}|{report:?}", lease.reply);
    hex::encode(&sha2::Sha256::digest(described.as_bytes())[..12])
}

/// How long a lease lasts: nine tenths of the ack wait, so it runs out before JetStream would
/// redeliver the command (whose clock started a little earlier, at delivery); at most
/// [`MAX_LEASE_SPAN`].
fn lease_span(ack_wait: Duration) -> chrono::Duration {
    chrono::Duration::from_std((ack_wait * 9 / 10).min(MAX_LEASE_SPAN))
        .unwrap_or(chrono::Duration::MAX)
}

/// What the API's events for a lease's job carry besides their payload.
fn envelope(lease: &Lease) -> JobEnvelope {
    JobEnvelope {
        source: SOURCE,
        job: lease.job,
        tenant: lease.tenant.clone(),
        kind: lease.kind.clone(),
        trace: lease.traceparent(),
    }
}

/// The job's status once `transition` is stored: its last event's.
fn status_after(transition: &Transition) -> &'static str {
    match transition.events.last().map(|e| &e.payload) {
        Some(JobEvent::Succeeded(_)) => "succeeded",
        Some(JobEvent::Cancelled(_)) => "cancelled",
        Some(JobEvent::DeadLettered(_)) => "dead_lettered",
        Some(JobEvent::Suspended(_)) => "waiting_for_children",
        _ => "retry_scheduled",
    }
}

/// The commands waiting for `consumer` now, up to `max` (a no-wait fetch).
async fn fetch_waiting(consumer: &PullConsumer, max: usize) -> ApiResult<Vec<jetstream::Message>> {
    let batch = consumer
        .fetch()
        .max_messages(max)
        .messages()
        .await
        .map_err(|e| ApiError::bus(bus::Error::consumer(e)))?;
    let collect = batch
        .take(max)
        .filter_map(|m| async move { m.ok() })
        .collect::<Vec<_>>();
    // Answered at once by a live server; bounded for one that went away.
    Ok(tokio::time::timeout(FETCH_TIMEOUT, collect)
        .await
        .unwrap_or_default())
}

/// Waits up to `wait` for the next command of any of `consumers` (one pull of one message each).
/// A pull cannot be withdrawn, so what the others deliver after the first goes straight back to
/// the queue (as it does if the request is dropped while waiting).
async fn wait_for_one(
    consumers: &[(PullConsumer, Duration)],
    permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Option<(jetstream::Message, DateTime<Utc>, Duration)> {
    let (tx, mut rx) = mpsc::channel(consumers.len());
    for ((consumer, ack_wait), permit) in consumers.iter().zip(permits) {
        let (consumer, ack_wait, tx) = (consumer.clone(), *ack_wait, tx.clone());
        tokio::spawn(async move {
            // The pull counts against the process's bound until it ends.
            let _permit = permit;
            let Ok(mut pull) = consumer
                .batch()
                .max_messages(1)
                .expires(wait)
                .messages()
                .await
            else {
                return;
            };
            while let Some(Ok(msg)) = pull.next().await {
                let received = Utc::now();
                if let Err(mpsc::error::SendError((msg, ..))) =
                    tx.send((msg, received, ack_wait)).await
                {
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                }
            }
        });
    }
    drop(tx);
    let first = tokio::select! {
        first = rx.recv() => first,
        _ = shutdown.cancelled() => None,
    };
    tokio::spawn(async move {
        while let Some((late, ..)) = rx.recv().await {
            let _ = late.ack_with(AckKind::Nak(None)).await;
        }
    });
    first
}

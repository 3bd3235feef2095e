//! The worker runtime.
//!
//! Every worker process pulls from one durable consumer per kind it serves (shared with the other
//! processes serving that kind), so adding processes adds throughput. Each `run` command is
//! leased, decided ([`events::lifecycle`]: start or not), run, decided again (what follows the
//! outcome), published (`bus::transition`: events first, then the next command) and acked:
//!
//! 1. not due yet (`run_at`, retry backoff): handed back with a delayed NAK;
//! 2. cancelled before it started: `job.cancelled`;
//! 3. otherwise `job.started`, then the handler runs under a timeout, with a progress heartbeat
//!    (`+WPI` every ack-wait/3, so a live long job is never redelivered) and a cancellation token;
//! 4. the outcome is published (`job.succeeded`; `job.failed` + `job.retry_scheduled` + the next
//!    attempt's `run` command; or `job.failed` + `job.dead_lettered`; or `job.cancelled`), and only
//!    then is the command acknowledged.
//!
//! A crash anywhere means the command is redelivered after the ack wait and the attempt runs
//! again. Every event carries a deterministic `Nats-Msg-Id` (job, attempt, step), and all
//! terminal events share one, so the re-run, or a paused "zombie" worker that wakes up late,
//! adds no duplicate to the log: each job gets exactly one terminal event.
//!
//! Concurrency is bounded by a semaphore shared by every kind: a process takes only as many
//! waiting commands as it has free slots, so a busy worker stops pulling and the backlog waits in
//! JetStream, not in memory. A kind with nothing waiting long-polls for its next command without
//! holding a slot, so idle kinds never starve busy ones.

mod audit;
mod canceller;
pub mod handler;
mod push;

pub use push::PushSettings;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus::jetstream::{self, AckKind};
use bus::transition::JobEnvelope;
use bus::Bus;
use chrono::Utc;
use events::command::RunJob;
use events::lifecycle::{Attempt, AttemptOutcome, Start};
use events::{streams, Command, Envelope, JobId, JobKind, RetryPolicy, TraceParent};
use futures::StreamExt;
use rand::Rng;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::supervisor::Supervisor;
use handler::{JobContext, JobError, Progress, Registry};

/// CloudEvents `source` of events published by workers.
pub const SOURCE: &str = "/conveyor/worker";

/// The most commands one pull asks for.
const MAX_PULL: usize = 256;
/// How long a pull waits for commands before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// The longest a no-wait fetch may take to be answered.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Tuning of a worker process.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Jobs run at once by this process.
    pub concurrency: usize,
    /// Consumer ack wait: a job silent this long is redelivered. Heartbeats go every third of it.
    pub ack_wait: Duration,
    /// Delay before a failed attempt's retry: doubling per attempt, capped, with jitter.
    pub retry: RetryPolicy,
    /// Results larger than this (JSON bytes) go to the object store instead of the event.
    pub inline_result_limit: usize,
    /// How long shutdown waits for running jobs before handing them back.
    pub shutdown_grace: Duration,
    /// This process's name in `job.started`.
    pub worker_id: String,
    /// Deliver the push kinds of the kind registry too (`None`: only the registry's handlers).
    pub push: Option<PushSettings>,
    /// Stand by to be the deployment's scheduler (`None`: never; it needs the database too).
    pub scheduler: Option<crate::scheduler::SchedulerSettings>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 64,
            ack_wait: Duration::from_secs(30),
            retry: RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(600)),
            inline_result_limit: 16 * 1024,
            shutdown_grace: Duration::from_secs(25),
            worker_id: format!("worker-{}", std::process::id()),
            push: None,
            scheduler: Some(crate::scheduler::SchedulerSettings::default()),
        }
    }
}

/// A worker process: serves the kinds of its [`Registry`].
#[derive(Debug)]
pub struct Worker {
    bus: Bus,
    registry: Registry,
    settings: WorkerSettings,
    db: Option<PgPool>,
}

struct Shared {
    bus: Bus,
    registry: Registry,
    settings: WorkerSettings,
    db: Option<PgPool>,
    cancels: jetstream::Store,
    /// The two streams, for direct gets (fetched once: a handle is its name).
    events: jetstream::Stream,
    commands: jetstream::Stream,
    /// Cancellation tokens of the jobs running in this process. A std mutex: held only for a
    /// map operation, never across an await.
    running: Mutex<HashMap<JobId, CancellationToken>>,
    /// Fires when the grace period is over: running jobs are handed back, not finished.
    hard_stop: CancellationToken,
}

impl Worker {
    /// A worker over `bus`, running `registry`'s handlers. `db` is handed to handlers that need
    /// the read models (`report.job_stats`).
    pub fn new(bus: Bus, registry: Registry, settings: WorkerSettings, db: Option<PgPool>) -> Self {
        Self {
            bus,
            registry,
            settings,
            db,
        }
    }

    /// Runs until `shutdown` fires, then stops pulling, lets running jobs finish within the grace
    /// period, hands back the rest and returns.
    pub async fn run(self, shutdown: CancellationToken) -> crate::Result<()> {
        let kinds = self.registry.kinds();
        self.bus.provision_streams().await?;
        self.bus
            .provision_worker_consumers(&kinds, self.settings.ack_wait)
            .await?;
        for kind in &kinds {
            let schema = self.registry.get(kind).and_then(|h| h.schema());
            self.bus.register_kind(kind, schema.as_ref()).await?;
        }
        let shared = Arc::new(Shared {
            cancels: self.bus.cancels().await?,
            events: self.bus.events_stream().await?,
            commands: self.bus.commands_stream().await?,
            bus: self.bus,
            registry: self.registry,
            settings: self.settings,
            db: self.db,
            running: Mutex::new(HashMap::new()),
            hard_stop: CancellationToken::new(),
        });
        let slots = Arc::new(Semaphore::new(shared.settings.concurrency.max(1)));
        let jobs = TaskTracker::new();
        // One loop failing stops the others; the worker's own supervisor decides what follows.
        let mut loops = Supervisor::new(shutdown.clone());
        for kind in &kinds {
            let handler = shared.registry.get(kind).expect("a registered kind");
            loops.spawn(
                &format!("pull loop of {kind}"),
                pull_loop(
                    shared.clone(),
                    kind.clone(),
                    handler,
                    slots.clone(),
                    jobs.clone(),
                    shutdown.clone(),
                ),
            );
        }
        if let Some(push) = shared.settings.push.clone() {
            loops.spawn(
                "push kinds",
                push::serve_push_kinds(
                    shared.clone(),
                    push,
                    slots.clone(),
                    jobs.clone(),
                    shutdown.clone(),
                ),
            );
        }
        loops.spawn(
            "canceller",
            canceller::canceller_loop(shared.clone(), shutdown.clone()),
        );
        loops.spawn(
            "submissions audit",
            audit::audit_loop(shared.clone(), shutdown.clone()),
        );
        {
            let (shared, shutdown) = (shared.clone(), shutdown.clone());
            let mut specs: Vec<_> = kinds
                .iter()
                .map(|k| streams::worker_consumer(shared.bus.ns(), k, shared.settings.ack_wait))
                .collect();
            specs.push(streams::canceller_consumer(
                shared.bus.ns(),
                shared.settings.ack_wait,
            ));
            specs.push(streams::submissions_audit_consumer(shared.bus.ns()));
            loops.spawn("consumer metrics", async move {
                let bus = shared.bus.clone();
                bus.report_consumers(specs, Duration::from_secs(5), shutdown.cancelled())
                    .await;
                Ok(())
            });
        }
        loops.spawn(
            "cancel listener",
            canceller::cancel_listener(shared.clone(), shutdown.clone()),
        );
        match (shared.settings.scheduler.clone(), shared.db.clone()) {
            (Some(settings), Some(db)) => loops.spawn(
                "scheduler",
                crate::scheduler::run(shared.bus.clone(), db, settings, shutdown.clone()),
            ),
            (Some(_), None) => tracing::warn!(
                "this worker has no database, so it cannot stand for scheduler: jobs start only while a worker with one (`conveyor worker`) runs"
            ),
            (None, _) => {}
        }
        tracing::info!(kinds = ?kinds, concurrency = shared.settings.concurrency, "worker running");

        // The grace period runs from the shutdown signal, while the pull loops wind down.
        let grace = {
            let (shared, shutdown, jobs) = (shared.clone(), shutdown.clone(), jobs.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                if tokio::time::timeout(shared.settings.shutdown_grace, jobs.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        remaining_jobs = jobs.len(),
                        "grace period over: handing running jobs back"
                    );
                    shared.hard_stop.cancel();
                }
            })
        };
        // The loops end by themselves once they stop pulling: none is cut short. The running
        // jobs are what the grace period above is for.
        let result = loops
            .run(Duration::MAX)
            .await
            .map_err(|failed| failed.error);
        jobs.close();
        jobs.wait().await;
        grace.abort();
        // Acks and hand-backs are buffered by the client: send them before the process exits,
        // or the server would wait out the ack wait before redelivering.
        if let Err(e) = shared.bus.flush().await {
            tracing::warn!(error = %e, "acknowledgements not flushed");
        }
        result
    }
}

/// Feeds `kind`'s commands to the process's slots. Slots are shared by every kind, and only a
/// command that is already here holds one: with a free slot the loop takes what is waiting
/// (no-wait fetch, up to the free slots); with nothing waiting it long-polls for the next command
/// holding no slot, so kinds without work never keep the slots from kinds with a backlog, however
/// few slots and many kinds there are.
async fn pull_loop(
    shared: Arc<Shared>,
    kind: JobKind,
    handler: Arc<dyn handler::Handler>,
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    shutdown: CancellationToken,
) -> crate::Result<()> {
    let spec = streams::worker_consumer(shared.bus.ns(), &kind, shared.settings.ack_wait);
    let consumer = shared.bus.pull_consumer(&spec).await?;
    // How long a command that arrived while every slot was busy waits here for one before it is
    // handed back for another process to run (it is not heartbeated meanwhile).
    let hold = (shared.settings.ack_wait / 4).min(Duration::from_secs(1));
    while !shutdown.is_cancelled() {
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.cancelled() => break,
        };
        let mut permits = vec![first];
        while permits.len() < MAX_PULL {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let waiting = consumer
            .fetch()
            .max_messages(permits.len())
            .messages()
            .await;
        let taken = match waiting {
            // A no-wait fetch is answered at once; bounded all the same, since an answer lost
            // with a server that went away (no expiry, so no client-side timer) would otherwise
            // hold these slots for ever. Whatever comes after is redelivered after the ack wait.
            Ok(batch) => tokio::time::timeout(
                FETCH_TIMEOUT,
                start_all(&shared, &handler, batch, &mut permits, &jobs, &shutdown),
            )
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(kind = %kind, "fetch not answered; asking again");
                0
            }),
            Err(e) => {
                tracing::warn!(kind = %kind, error = %e, "pull failed; retrying");
                drop(permits);
                if !pause(&shutdown).await {
                    break;
                }
                continue;
            }
        };
        drop(permits);
        if taken > 0 {
            continue;
        }
        // Nothing waiting: wait for the next command without holding a slot.
        let next = consumer
            .batch()
            .max_messages(1)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut next = match next {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(kind = %kind, error = %e, "pull failed; retrying");
                if !pause(&shutdown).await {
                    break;
                }
                continue;
            }
        };
        // Not cut short by shutdown: the request stays with the server until it expires, and a
        // command it delivered to nobody would wait out the ack wait. It is handed back below.
        let msg = match next.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(kind = %kind, error = %e, "pull ended");
                continue;
            }
            None => continue,
        };
        let permit = tokio::select! {
            p = tokio::time::timeout(hold, slots.clone().acquire_owned()) => p.ok(),
            _ = shutdown.cancelled() => None,
        };
        match permit {
            Some(p) => {
                jobs.spawn(process(
                    shared.clone(),
                    msg,
                    handler.clone(),
                    p.expect("the semaphore is never closed"),
                ));
            }
            None => {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
            }
        }
    }
    Ok(())
}

/// Waits a second before asking the server again; `false` if shutdown came first.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(1)) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Starts every command of `batch`, each on one of `permits`; returns how many came.
async fn start_all(
    shared: &Arc<Shared>,
    handler: &Arc<dyn handler::Handler>,
    mut batch: jetstream::Batch,
    permits: &mut Vec<OwnedSemaphorePermit>,
    jobs: &TaskTracker,
    shutdown: &CancellationToken,
) -> usize {
    let mut received = 0;
    while let Some(next) = batch.next().await {
        let msg = match next {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "pull ended");
                break;
            }
        };
        received += 1;
        match permits.pop() {
            Some(permit) if !shutdown.is_cancelled() => {
                jobs.spawn(process(shared.clone(), msg, handler.clone(), permit));
            }
            // Stopping, or more than asked (the server never sends that): give it straight
            // back so another worker takes it now.
            _ => {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
            }
        }
    }
    received
}

async fn process(
    shared: Arc<Shared>,
    msg: jetstream::Message,
    handler: Arc<dyn handler::Handler>,
    _slot: OwnedSemaphorePermit,
) {
    let cmd = match bus::decode_command(msg.headers.as_ref(), &msg.payload) {
        Ok(cmd) => cmd,
        Err(e) => {
            tracing::warn!(subject = %msg.subject, reason = %e, "poison command terminated");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let Command::Run(run) = cmd.payload.clone() else {
        tracing::warn!(subject = %msg.subject, "not a run command; terminated");
        let _ = msg.ack_with(AckKind::Term).await;
        return;
    };
    let span = tracing::info_span!("job", otel.kind = "consumer", job_id = %cmd.job,
        tenant = %cmd.tenant, kind = %cmd.kind, attempt = run.attempt,
        trace_id = tracing::field::Empty);
    // The attempt continues the trace of whoever queued it; what it publishes carries its own.
    let trace = bus::trace::continue_trace(&span, cmd.traceparent.as_ref());
    async {
        if let Err(e) = execute(&shared, &msg, &cmd, &trace, run, handler).await {
            // The outcome could not be published: hand the command back; the retry is
            // idempotent because every event has a deterministic message id.
            tracing::warn!(error = %e, "attempt outcome not published; command handed back");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
    .instrument(span)
    .await
}

/// Whether the job carries a cancel marker.
async fn cancel_requested(shared: &Shared, job: JobId) -> bool {
    bus::attempt::cancel_marked(&shared.cancels, job).await
}

/// How a run of the handler ended.
enum Ran {
    Returned(Result<Value, JobError>),
    TimedOut,
    /// The grace period of a shutdown ran out: the command goes back to the queue.
    HandedBack,
}

/// Leases a `run` command: asks the lifecycle whether to start, runs the handler, asks what
/// follows, publishes it and only then acknowledges the command.
async fn execute(
    shared: &Shared,
    msg: &jetstream::Message,
    cmd: &Envelope<Command>,
    trace: &TraceParent,
    run: RunJob,
    handler: Arc<dyn handler::Handler>,
) -> Result<(), bus::Error> {
    let attempt = Attempt::new(cmd.job, run);
    // The attempt's events continue the attempt's span.
    let to = JobEnvelope {
        trace: Some(trace.clone()),
        ..JobEnvelope::of(SOURCE, cmd)
    };
    let cancelled = cancel_requested(shared, cmd.job).await;
    let redelivered = msg.info().map(|i| i.delivered > 1).unwrap_or(false);
    let now = Utc::now();
    let started = match attempt.start(now, cancelled, &shared.settings.worker_id) {
        Start::NotDue(wait) => {
            let _ = msg
                .ack_with(AckKind::Nak(Some(wait.min(bus::consume::MAX_HAND_BACK))))
                .await;
            return Ok(());
        }
        _ if redelivered
            && shared
                .bus
                .job_ended(&shared.events, &cmd.tenant, cmd.job)
                .await =>
        {
            tracing::info!("redelivered command of a job that already ended; acknowledged");
            let _ = msg.ack().await;
            return Ok(());
        }
        Start::Cancelled(transition) => {
            shared.bus.publish_transition(&to, transition).await?;
            let _ = msg.ack().await;
            return Ok(());
        }
        Start::Started(transition) => transition,
    };
    if let Some(rate) = &attempt.run().scheduling.rate_limit {
        let taken = shared
            .bus
            .take_start(&cmd.tenant, rate, cmd.job, attempt.run().attempt, now)
            .await?;
        if let Some(back) = taken {
            // Its key started its limit within the period: back until a start frees up.
            let _ = msg.ack_with(AckKind::Nak(Some(back))).await;
            return Ok(());
        }
    }
    shared.bus.publish_transition(&to, started).await?;

    let began = Instant::now();
    let ran = run_attempt(shared, msg, &to, attempt.run(), handler).await;
    let elapsed = began.elapsed();
    record_metrics(&cmd.kind, &ran, elapsed);
    let outcome = match ran {
        Ran::HandedBack => {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return Ok(());
        }
        Ran::TimedOut => AttemptOutcome::TimedOut,
        Ran::Returned(Ok(result)) => {
            let (result, result_ref) = shared
                .bus
                .store_result(cmd.job, result, shared.settings.inline_result_limit)
                .await?;
            AttemptOutcome::Succeeded { result, result_ref }
        }
        Ran::Returned(Err(error)) => error.into(),
    };
    let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let jitter = rand::rng().random_range(0.0..1.0);
    let next = attempt.conclude(
        outcome,
        duration_ms,
        &shared.settings.retry,
        Utc::now(),
        jitter,
    );
    shared.bus.publish_transition(&to, next).await?;
    let _ = msg.ack().await;
    Ok(())
}

/// Runs the handler under the attempt's timeout, with a heartbeat and a cancellation token that
/// the cancel broadcast (or the heartbeat's marker check) fires; the shutdown's hard stop hands
/// the attempt back. A panic is a retryable error.
async fn run_attempt(
    shared: &Shared,
    msg: &jetstream::Message,
    to: &JobEnvelope,
    run: &RunJob,
    handler: Arc<dyn handler::Handler>,
) -> Ran {
    let job = to.job;
    let token = CancellationToken::new();
    shared
        .running
        .lock()
        .expect("running map poisoned")
        .insert(job, token.clone());
    let ctx = JobContext {
        id: job,
        tenant: to.tenant.clone(),
        kind: to.kind.clone(),
        payload: run.payload.clone(),
        attempt: run.attempt,
        max_attempts: run.max_attempts,
        cancel: token.clone(),
        progress: Progress {
            bus: shared.bus.clone(),
            to: to.clone(),
            attempt: run.attempt,
            step: Default::default(),
        },
        db: shared.db.clone(),
        upstream: run.upstream.as_deref().cloned(),
        round: run.round,
        children: Default::default(),
    };
    let running = metrics::gauge!("conveyor_jobs_running", "kind" => to.kind.to_string());
    running.increment(1.0);
    let mut task = tokio::spawn(async move { handler.run(ctx).await }.in_current_span());
    let heartbeat = heartbeat(shared, msg, job, &token);
    tokio::pin!(heartbeat);
    let ran = tokio::select! {
        joined = &mut task => Ran::Returned(joined.unwrap_or_else(|e| {
            Err(JobError::retryable(format!("handler panicked: {}", panic_message(e))))
        })),
        _ = tokio::time::sleep(Duration::from_millis(run.timeout_ms)) => Ran::TimedOut,
        _ = &mut heartbeat => unreachable!("the heartbeat never ends"),
        _ = shared.hard_stop.cancelled() => Ran::HandedBack,
    };
    shared
        .running
        .lock()
        .expect("running map poisoned")
        .remove(&job);
    if !matches!(ran, Ran::Returned(_)) {
        token.cancel();
        task.abort();
    }
    running.decrement(1.0);
    ran
}

/// Counts the attempt by kind and outcome, records its duration, and logs its end.
fn record_metrics(kind: &JobKind, ran: &Ran, elapsed: Duration) {
    let outcome = match ran {
        Ran::Returned(Ok(_)) => "succeeded",
        Ran::Returned(Err(JobError::Cancelled)) => "cancelled",
        Ran::Returned(Err(JobError::WaitForChildren)) => "waiting_for_children",
        Ran::Returned(Err(_)) => "failed",
        Ran::TimedOut => "timed_out",
        Ran::HandedBack => "handed_back",
    };
    let kind = kind.to_string();
    metrics::counter!("conveyor_job_attempts_total", "kind" => kind.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("conveyor_job_duration_seconds", "kind" => kind)
        .record(elapsed.as_secs_f64());
    let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    if matches!(outcome, "succeeded" | "waiting_for_children") {
        tracing::debug!(outcome, duration_ms, "attempt ended");
    } else {
        tracing::info!(outcome, duration_ms, "attempt ended");
    }
}

/// Keeps a running job's command alive (`+WPI`) and polls its cancellation marker, in case the
/// cancel broadcast was missed. Never returns.
async fn heartbeat(
    shared: &Shared,
    msg: &jetstream::Message,
    job: JobId,
    token: &CancellationToken,
) {
    let every = (shared.settings.ack_wait / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = msg.ack_with(AckKind::Progress).await {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
        if cancel_requested(shared, job).await {
            token.cancel();
        }
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => crate::supervisor::panic_message(p.as_ref()),
        Err(e) => e.to_string(),
    }
}

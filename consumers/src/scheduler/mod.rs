//! The scheduler: decides which waiting job of each kind starts next, and releases it to the
//! workers.
//!
//! Every `run` command (a submission's, a retry's, a re-drive's) is published on the kind's
//! *wait* subject. The active scheduler holds all of them unacknowledged through one durable
//! consumer, weighs them ([`queue`]: due time, pauses, concurrency keys, priority, the tenants'
//! fair share), and releases the chosen ones to the kind's *run* subject, where the workers (Rust
//! workers, the API's lease service for workers in other languages, push kinds) take them as
//! before. A command is acknowledged on the wait subject only after its release is stored, and
//! the release carries a deterministic id, so a crash between the two releases nothing twice.
//!
//! It keeps the workers busy but never far ahead: per kind it releases only while fewer than
//! [`SchedulerSettings::window`] released commands wait for a worker to take them, so a job
//! submitted later with a higher priority, or by a tenant with a smaller backlog, overtakes all
//! but that window.
//!
//! It learns that an attempt ended (freeing its concurrency-key slot) from the attempt-end events
//! (`failed`, `succeeded`, `cancelled`, `dead_lettered`), and checks every
//! [`RECONCILE_EVERY`] that the released commands it counts as under way are still in the
//! stream (a command is removed only once its attempt's outcome is stored).
//!
//! It also fires the schedules' ticks (`ticks.rs`): each due tick's job is submitted like the
//! API submits one, with an id derived from the schedule and the tick.
//!
//! One scheduler is active per deployment, the others stand by ([`crate::leadership`]); it runs
//! inside every worker process. Its state is the stream's: a scheduler taking over recreates the
//! consumer (so every waiting command is delivered to it at once), counts the released commands
//! still in the stream as attempts under way, and reads the pauses from their bucket.

mod gates;
pub mod queue;
mod ticks;

use std::time::Duration;

use bus::jetstream::{AckKind, DeliverPolicy};
use bus::Bus;
use chrono::Utc;
use events::{subjects::msg_id, Command, JobId};
use futures::{StreamExt, TryStreamExt};
use queue::{Queues, Running, Waiting};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::leadership::{self, Role};

/// The scheduler's leadership lock (`"convschd"`).
pub const LEADER_LOCK: i64 = 0x636f_6e76_7363_6864;

const ROLE: Role = Role {
    lock: LEADER_LOCK,
    name: "scheduler",
};

/// How often the active scheduler releases what became possible (arrivals, ended attempts, due
/// jobs).
const ROUND: Duration = Duration::from_millis(10);

/// How often released attempts are checked against the stream.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// The most released attempts checked at once (the oldest first), so a check never holds up
/// releases for long.
const RECONCILE_MOST: usize = 200;

/// A waiting command held this long may have been released before, its acknowledgement lost,
/// by a scheduler that has since gone, or its job cancelled while held: before it is held again,
/// the log is checked for its attempt's start and its job's end (a release or a cancel repeated
/// past the duplicate window would be stored again).
const LONG_HELD: Duration = Duration::from_secs(4 * 60);

/// How often waiting jobs are told why they wait (`job.waiting`), and the most told at once: the
/// cost of telling stays small beside the releases, however long the lines.
const TELL_EVERY: Duration = Duration::from_secs(1);
const TELL_MOST: usize = 500;

/// How long a job waits behind a higher priority or other tenants' turns before it is told so
/// (a gate is told at once).
const TELL_AFTER: Duration = Duration::from_secs(1);

/// How often the jobs waiting for other jobs' ends are checked against the read model, and the
/// most checked at once (each check goes on from where the last one stopped, so every held job
/// is checked in turn).
const GATES: Duration = Duration::from_millis(250);
const GATES_MOST: usize = 2000;

/// How many concurrency keys the metrics show (the busiest).
const KEY_METRICS: usize = 20;

/// How often the schedules are checked for due ticks.
const TICKS: Duration = Duration::from_millis(200);

/// How long a scheduler taking over waits between taking the consumer and counting the attempts
/// under way: longer than a round of a scheduler that lost its lock and has not noticed, which
/// checks the consumer is still its own before it releases anything.
const FENCE: Duration = Duration::from_secs(1);

/// The most waiting commands one pull asks for.
const BATCH: usize = 1024;

/// The smallest window: what keeps workers fed between two rounds when they take few.
const MIN_WINDOW: u64 = 16;

/// Tuning of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// Per kind, the most released commands that may wait for a worker to take them. Within it,
    /// the window follows the rate workers take the kind's jobs (what they take in a tenth of a
    /// second, at least 16), so a slow kind has few jobs already handed out.
    pub window: u64,
}

/// How fast the workers of a kind take its released commands, to size its window.
#[derive(Debug, Clone, Copy)]
struct Pace {
    at: std::time::Instant,
    taken: u64,
    /// Deliveries per second, smoothed.
    rate: f64,
}

impl Pace {
    /// Updates the rate with a new reading and returns the window it calls for.
    fn window(&mut self, taken: u64, max: u64) -> u64 {
        let now = std::time::Instant::now();
        let secs = now.duration_since(self.at).as_secs_f64();
        if secs >= 0.05 {
            let rate = taken.saturating_sub(self.taken) as f64 / secs;
            self.rate = if rate > self.rate {
                rate
            } else {
                0.8 * self.rate + 0.2 * rate
            };
            self.at = now;
            self.taken = taken;
        }
        ((self.rate * 0.1) as u64).clamp(MIN_WINDOW.min(max), max)
    }
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self { window: 256 }
    }
}

/// Runs the scheduler until `shutdown`: stands by until this process holds the leadership lock,
/// then schedules until it loses it or fails (then stands by again).
pub async fn run(
    bus: Bus,
    db: PgPool,
    settings: SchedulerSettings,
    shutdown: CancellationToken,
) -> crate::Result<()> {
    let mut failures = 0;
    loop {
        let Some(mut lock) = ROLE.lead(&db, &shutdown).await else {
            return Ok(());
        };
        let term = shutdown.child_token();
        let began = std::time::Instant::now();
        let result = tokio::select! {
            r = schedule(&bus, &db, &settings, &term) => r,
            () = leadership::watch(&mut lock) => Ok(()),
        };
        term.cancel();
        ROLE.resign(lock).await;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        // A term that lasted is a fresh start: only failures in a row back off further.
        failures = if began.elapsed() > Duration::from_secs(60) {
            1
        } else {
            failures + 1
        };
        let wait = events::retry::SERVICE_RETRY.delay(failures);
        match result {
            Ok(()) => tracing::warn!("scheduler lost its leadership lock; standing by"),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "scheduler failed; standing by")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// What the active scheduler does until `term`.
async fn schedule(
    bus: &Bus,
    db: &PgPool,
    settings: &SchedulerSettings,
    term: &CancellationToken,
) -> crate::Result<()> {
    let mut queues = Queues::default();
    // Attempt ends from now on first, then the consumer (which fences off an earlier scheduler,
    // see `release`), then, once a round of that one would be over, the attempts under way: an
    // attempt that ends in between is both counted and seen ending.
    let (mut ends, _) = bus::ordered::ordered(
        bus.events_stream().await?,
        bus.ns().attempt_end_events(),
        DeliverPolicy::New,
    )
    .await?;
    let consumer = bus.fresh_scheduler_consumer().await?;
    tokio::select! {
        () = tokio::time::sleep(FENCE) => {}
        () = term.cancelled() => return Ok(()),
    }
    let now = Utc::now();
    for cmd in bus.released_commands().await? {
        if let Command::Run(run) = &cmd.payload {
            queues.adopt(
                cmd.job,
                Running {
                    kind: cmd.kind.clone(),
                    tenant: cmd.tenant.clone(),
                    attempt: run.attempt,
                    key: Queues::key_of(&cmd.tenant, run.scheduling.concurrency.as_ref()),
                    released_at: now,
                },
            );
        }
    }
    let pause_store = bus.pauses().await?;
    let mut pauses = pause_store
        .watch_with_history(">")
        .await
        .map_err(bus::Error::bucket)?;
    // The pauses in force before the first round (the watch brings them too, but maybe later).
    let mut pause_keys = Pauses::default();
    let keys: Vec<String> = match pause_store.keys().await {
        Ok(keys) => keys.try_collect().await.map_err(bus::Error::bucket)?,
        Err(e) => return Err(bus::Error::bucket(e).into()),
    };
    for key in keys {
        pause_keys.set(&key, true);
    }
    queues.set_pauses(pause_keys.in_force());
    let mut share_changes = bus
        .shares()
        .await?
        .watch_with_history(">")
        .await
        .map_err(bus::Error::bucket)?;
    let mut schedule_changes = bus
        .schedules()
        .await?
        .watch_with_history(">")
        .await
        .map_err(bus::Error::bucket)?;
    // Cancels requested from now on: a held job ends at once rather than when released. (One
    // requested before it was held, or while no scheduler was active, ends when a worker takes
    // it, as every cancel before a start does.)
    let mut cancels = bus
        .cancels()
        .await?
        .watch(">")
        .await
        .map_err(bus::Error::bucket)?;
    let mut schedules = ticks::Schedules::default();
    let mut tick = tokio::time::interval(TICKS);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut arrivals = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(bus::Error::consumer)?;
    tracing::info!(
        under_way = queues.running(),
        "scheduler is active: receiving the waiting jobs"
    );
    let mut round = tokio::time::interval(ROUND);
    round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gate_cursor = None;
    let mut gating = tokio::time::interval(GATES);
    gating.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut telling = tokio::time::interval(TELL_EVERY);
    telling.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown_keys = Vec::new();
    let commands = bus.commands_stream().await?;
    let events = bus.events_stream().await?;
    let mut paces = std::collections::HashMap::new();
    // Whether anything came that a round may release (an arrival, an end, a pause lifted), and
    // how many rounds released nothing since: with nothing new, a round goes every tenth tick
    // (workers taking released jobs is the one change that comes unannounced).
    let (mut changed, mut quiet) = (true, 0u32);
    loop {
        tokio::select! {
            biased;
            () = term.cancelled() => return Ok(()),
            msg = arrivals.next() => {
                let msg = match msg {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => return Err(bus::Error::consumer(e).into()),
                    None => return Err(bus::Error::Ended("the scheduler's consumer").into()),
                };
                arrive(bus, (&commands, &events), &mut queues, msg).await?;
                changed = true;
            }
            end = ends.next() => match end {
                Some(Ok(msg)) => {
                    attempt_ended(bus, &mut queues, &msg);
                    changed = true;
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(bus::Error::Ended("the attempt-end events").into()),
            },
            change = pauses.next() => match change {
                Some(Ok(entry)) => {
                    pause_keys.set(&entry.key, entry.operation == bus::jetstream::KvOperation::Put);
                    queues.set_pauses(pause_keys.in_force());
                    changed = true;
                }
                Some(Err(e)) => return Err(bus::Error::bucket(e).into()),
                None => return Err(bus::Error::Ended("the pauses' watch").into()),
            },
            change = share_changes.next() => match change {
                Some(Ok(entry)) => {
                    if let Ok(tenant) = events::Tenant::parse(&entry.key) {
                        let share = (entry.operation == bus::jetstream::KvOperation::Put)
                            .then(|| serde_json::from_slice::<events::pause::TenantShare>(&entry.value).ok())
                            .flatten()
                            .map(|s| queue::Share { weight: s.weight, max_running: s.max_running })
                            .unwrap_or_default();
                        queues.set_share(tenant, share);
                        changed = true;
                    }
                }
                Some(Err(e)) => return Err(bus::Error::bucket(e).into()),
                None => return Err(bus::Error::Ended("the shares' watch").into()),
            },
            cancel = cancels.next() => match cancel {
                Some(Ok(entry)) if entry.operation == bus::jetstream::KvOperation::Put => {
                    let held = entry.key.parse::<uuid::Uuid>().ok().and_then(|id| queues.withdraw(JobId(id)));
                    if let Some(job) = held {
                        if !bus.holds_scheduler_consumer(&consumer).await? {
                            tracing::warn!("another scheduler took over; this one stops");
                            return Ok(());
                        }
                        end_held(bus, &commands, &events, job, None).await?;
                        changed = true;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(bus::Error::bucket(e).into()),
                None => return Err(bus::Error::Ended("the cancels' watch").into()),
            },
            change = schedule_changes.next() => match change {
                Some(Ok(entry)) => schedules.apply(&entry),
                Some(Err(e)) => return Err(bus::Error::bucket(e).into()),
                None => return Err(bus::Error::Ended("the schedules' watch").into()),
            },
            _ = tick.tick(), if !schedules.is_empty() => {
                if !bus.holds_scheduler_consumer(&consumer).await? {
                    tracing::warn!("another scheduler took over; this one stops");
                    return Ok(());
                }
                schedules.fire(bus).await?;
            }
            _ = round.tick() => {
                quiet = if changed { 0 } else { quiet + 1 };
                if queues.wants_round(Utc::now()) && quiet % 10 == 0 {
                    changed = false;
                    if !bus.holds_scheduler_consumer(&consumer).await? {
                        tracing::warn!("another scheduler took over; this one stops");
                        return Ok(());
                    }
                    if release(bus, settings, &mut queues, &mut paces).await? > 0 {
                        changed = true;
                    }
                }
            }
            _ = reconcile.tick() => {
                let before = Utc::now() - chrono::Duration::from_std(RECONCILE_EVERY).expect("short");
                for (job, kind) in queues.running_before(before, RECONCILE_MOST) {
                    if bus::last_message(&commands, bus.ns().run_command_of(&kind, job)).await?.is_none() {
                        queues.ended(job, None);
                    } else {
                        queues.still_running(job, Utc::now());
                    }
                }
                for (reason, n) in queues.waiting_by_reason() {
                    metrics::gauge!("conveyor_scheduler_waiting", "reason" => reason).set(n as f64);
                }
                metrics::gauge!("conveyor_scheduler_under_way").set(queues.running() as f64);
                shown_keys = show_keys(&queues, shown_keys);
            }
            _ = gating.tick() => {
                let (blocked, next) = queues.blocked(gate_cursor, GATES_MOST);
                gate_cursor = next;
                if blocked.is_empty() {
                    continue;
                }
                // The read model out of reach holds these jobs a little longer, never the term.
                let verdicts = match gates::check(db, &blocked).await {
                    Ok(verdicts) => verdicts,
                    Err(e) => {
                        tracing::warn!(error = %e, "scheduler: could not check what waiting jobs wait for");
                        continue;
                    }
                };
                if verdicts.is_empty() {
                    continue;
                }
                if !bus.holds_scheduler_consumer(&consumer).await? {
                    tracing::warn!("another scheduler took over; this one stops");
                    return Ok(());
                }
                for verdict in verdicts {
                    match verdict {
                        gates::Verdict::Go(job, upstream) => {
                            if let Some(body) = queues.body(job).and_then(|b| told(b, upstream)) {
                                queues.unblock(job, body, Utc::now());
                            }
                        }
                        gates::Verdict::Abandon(job, why) => {
                            if let Some(held) = queues.withdraw(job) {
                                end_held(bus, &commands, &events, held, Some(why)).await?;
                            }
                        }
                    }
                }
                changed = true;
            }
            _ = telling.tick() => {
                let after = chrono::Duration::from_std(TELL_AFTER).expect("short");
                let notices = queues.untold(Utc::now(), after, TELL_MOST);
                if !notices.is_empty() {
                    if !bus.holds_scheduler_consumer(&consumer).await? {
                        tracing::warn!("another scheduler took over; this one stops");
                        return Ok(());
                    }
                    // What a job is told is news, not state: a failure to tell costs a line in
                    // its timeline, never the term.
                    if let Err(e) = tell(bus, notices).await {
                        tracing::warn!(error = %e, "scheduler: could not tell waiting jobs why they wait");
                    }
                }
            }
        }
    }
}

/// Takes a waiting command into the queues (or acknowledges one released already).
async fn arrive(
    bus: &Bus,
    (commands, events): (&bus::jetstream::Stream, &bus::jetstream::Stream),
    queues: &mut Queues,
    msg: bus::jetstream::Message,
) -> crate::Result<()> {
    let Some(reply) = msg.reply.as_ref().map(|r| r.to_string()) else {
        return Ok(());
    };
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default();
    let cmd = match bus::decode_command(msg.headers.as_ref(), &msg.payload) {
        Ok(cmd) => cmd,
        Err(e) => {
            tracing::error!(subject = %msg.subject, error = %e, "scheduler: undecodable run command dropped");
            bus.acknowledge(&reply, AckKind::Term).await?;
            return Ok(());
        }
    };
    let Command::Run(run) = &cmd.payload else {
        tracing::error!(subject = %msg.subject, "scheduler: a command other than run on a wait subject dropped");
        bus.acknowledge(&reply, AckKind::Term).await?;
        return Ok(());
    };
    // Released as stored, unless it came in binary mode (its attributes in headers, which a
    // release does not copy): then as structured JSON.
    let body = if bus::decode::is_binary(msg.headers.as_ref()) {
        bytes::Bytes::from(cmd.to_json())
    } else {
        msg.payload.clone()
    };
    let waiting = Waiting {
        job: cmd.job,
        tenant: cmd.tenant.clone(),
        kind: cmd.kind.clone(),
        attempt: run.attempt,
        generation: run.generation,
        priority: run.scheduling.priority,
        concurrency: run.scheduling.concurrency.clone(),
        rate_limit: run.scheduling.rate_limit.clone(),
        due: run.run_at,
        seq,
        body,
        reply: reply.clone(),
        arrived: Utc::now(),
        told: Vec::new(),
        workflow: run.waits().then(|| run.workflow.clone()),
    };
    if bus::schedule::age(&msg).is_some_and(|age| age > LONG_HELD)
        && (bus
            .attempt_begun(events, &cmd.tenant, cmd.job, run.attempt)
            .await?
            || bus.job_ended(events, &cmd.tenant, cmd.job).await)
    {
        tracing::info!(job_id = %cmd.job, attempt = run.attempt, "scheduler: a waiting command whose attempt already started, or whose job ended, is dropped");
        bus.acknowledge(&reply, AckKind::Ack).await?;
        return Ok(());
    }
    // A job that waits for other jobs may be held long: one cancelled while no scheduler
    // watched (a takeover) ends now rather than when what it waits for has ended.
    if waiting.workflow.is_some()
        && bus::attempt::cancel_marked(&bus.cancels().await?, cmd.job).await
    {
        return end_held(bus, commands, events, waiting, None).await;
    }
    if let Some(done) = queues.add(waiting, Utc::now()) {
        bus.acknowledge(&done, AckKind::Ack).await?;
    }
    Ok(())
}

/// The command `body` telling the handler how what it waited for ended (`None`: it no longer
/// decodes, and stays held). Should that make it too large for the stream, the lists of members
/// and children and the results are left out (their counts and `result_url`s stay).
fn told(body: &bytes::Bytes, mut upstream: events::job::Upstream) -> Option<bytes::Bytes> {
    let mut cmd = match bus::decode_command(None, body) {
        Ok(cmd) => cmd,
        Err(e) => {
            tracing::error!(error = %e, "scheduler: a held command no longer decodes");
            return None;
        }
    };
    let limit = usize::try_from(events::streams::MAX_MESSAGE_BYTES).unwrap_or(usize::MAX) * 3 / 4;
    for slim in [false, true] {
        if slim {
            for group in [&mut upstream.members, &mut upstream.children] {
                if let Some(g) = group.as_mut() {
                    g.jobs = None;
                }
            }
            for dep in &mut upstream.dependencies {
                if dep.result.take().is_some() {
                    dep.result_url = Some(format!("/v1/jobs/{}/result", dep.id));
                }
            }
        }
        let Command::Run(run) = &mut cmd.payload else {
            return None;
        };
        run.upstream = Some(Box::new(upstream.clone()));
        let json = cmd.to_json();
        if json.len() <= limit || slim {
            return Some(bytes::Bytes::from(json));
        }
    }
    None
}

/// Ends a held job, as a worker taking it would (`job.cancelled`, under the job's one terminal
/// id), then acknowledges its command: its cancel was requested, or (`why`) a job it depended on
/// did not succeed.
async fn end_held(
    bus: &Bus,
    commands: &bus::jetstream::Stream,
    events: &bus::jetstream::Stream,
    job: Waiting,
    why: Option<String>,
) -> crate::Result<()> {
    // A held command can be one already released (its acknowledgement lost with a scheduler
    // that has since gone, the release repeated under its id): then a worker has the job, or had
    // it, and the worker ends it; a `job.cancelled` from here would take the place of the
    // outcome of an attempt under way.
    let handed_out = bus::last_message(commands, bus.ns().run_command_of(&job.kind, job.job))
        .await?
        .is_some()
        || bus
            .attempt_begun(events, &job.tenant, job.job, job.attempt)
            .await?;
    if handed_out {
        bus.acknowledge(&job.reply, AckKind::Ack).await?;
        return Ok(());
    }
    let cmd = match bus::decode_command(None, &job.body) {
        Ok(cmd) => cmd,
        Err(e) => {
            tracing::error!(job_id = %job.job, error = %e, "scheduler: a held command no longer decodes");
            return Ok(());
        }
    };
    let Command::Run(run) = &cmd.payload else {
        return Ok(());
    };
    let attempt = events::lifecycle::Attempt::new(cmd.job, run.clone());
    let to = bus::transition::JobEnvelope::of(ticks::SOURCE, &cmd);
    match why {
        Some(why) => {
            tracing::info!(job_id = %job.job, reason = %why, "scheduler: a job whose dependency did not succeed is cancelled");
            bus.publish_transition(&to, attempt.abandon(Utc::now(), why))
                .await?;
        }
        None => {
            if let events::lifecycle::Start::Cancelled(t) = attempt.start(Utc::now(), true, "") {
                bus.publish_transition(&to, t).await?;
            }
            tracing::info!(job_id = %job.job, "scheduler: a held job was cancelled");
        }
    }
    bus.acknowledge(&job.reply, AckKind::Ack).await?;
    Ok(())
}

/// Publishes each notice as its job's `job.waiting` (one id per attempt and reason: told again by
/// a scheduler taking over, it is stored once within the duplicate window).
async fn tell(bus: &Bus, notices: Vec<queue::Notice>) -> crate::Result<()> {
    let mut acks = Vec::with_capacity(notices.len());
    for n in notices {
        let ev = events::Envelope::new(
            ticks::SOURCE,
            n.job,
            n.tenant,
            n.kind,
            events::JobEvent::Waiting(events::job::Waiting {
                attempt: n.attempt,
                reason: n.reason,
                key: n.key,
            }),
        );
        let id = msg_id::waiting(n.job, n.attempt, n.reason.as_str());
        acks.push(
            bus.send(bus.ns().event_subject(&ev), ev.to_json(), &id)
                .await?,
        );
        metrics::counter!("conveyor_scheduler_told_total", "reason" => n.reason.as_str())
            .increment(1);
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// Sets the gauges of the busiest concurrency keys (and zeroes those no longer among them).
/// Returns the keys shown.
fn show_keys(queues: &Queues, before: Vec<(String, String)>) -> Vec<(String, String)> {
    let loads = queues.busiest_keys(KEY_METRICS);
    let shown: Vec<(String, String)> = loads
        .iter()
        .map(|l| (l.tenant.to_string(), l.key.clone()))
        .collect();
    for (tenant, key) in before.into_iter().filter(|k| !shown.contains(k)) {
        metrics::gauge!("conveyor_scheduler_key_running", "tenant" => tenant.clone(), "key" => key.clone()).set(0.0);
        metrics::gauge!("conveyor_scheduler_key_waiting", "tenant" => tenant, "key" => key)
            .set(0.0);
    }
    for l in loads {
        let (tenant, key) = (l.tenant.to_string(), l.key);
        metrics::gauge!("conveyor_scheduler_key_running", "tenant" => tenant.clone(), "key" => key.clone())
            .set(f64::from(l.running));
        metrics::gauge!("conveyor_scheduler_key_waiting", "tenant" => tenant, "key" => key)
            .set(l.waiting as f64);
    }
    shown
}

/// Frees the slot of the attempt an attempt-end event ended.
fn attempt_ended(bus: &Bus, queues: &mut Queues, msg: &bus::jetstream::Message) {
    let Some((_, job, _)) = events::subjects::parse_event_subject(bus.ns(), &msg.subject) else {
        return;
    };
    let Ok(job) = job.parse::<uuid::Uuid>().map(JobId) else {
        return;
    };
    // Most ends are of jobs it tracks; the others are not worth decoding.
    if !queues.is_running(job) {
        return;
    }
    let attempt = match bus::decode_event(msg.headers.as_ref(), &msg.payload) {
        Ok(ev) => match ev.payload {
            events::JobEvent::Failed(f) => Some(f.attempt),
            events::JobEvent::Succeeded(s) => Some(s.attempt),
            events::JobEvent::DeadLettered(d) => Some(d.attempt),
            events::JobEvent::Cancelled(c) => c.attempt,
            events::JobEvent::Suspended(w) => Some(w.attempt),
            _ => None,
        },
        Err(_) => None,
    };
    queues.ended(job, attempt);
}

/// The pause keys in force, as the pauses bucket holds them.
#[derive(Debug, Default)]
struct Pauses(std::collections::HashSet<String>);

impl Pauses {
    fn set(&mut self, key: &str, on: bool) {
        if on {
            self.0.insert(key.to_owned());
        } else {
            self.0.remove(key);
        }
    }

    /// What they hold: `(kind, None)` for every tenant, `(kind, Some(tenant))` for one (paused
    /// by the tenant, by an operator, or both).
    fn in_force(&self) -> std::collections::HashSet<(events::JobKind, Option<events::Tenant>)> {
        self.0
            .iter()
            .filter_map(|k| events::pause::parse(k))
            .map(|(kind, tenant, _)| (kind, tenant))
            .collect()
    }
}

/// One round: releases, per kind, what may start, up to the window.
async fn release(
    bus: &Bus,
    settings: &SchedulerSettings,
    queues: &mut Queues,
    paces: &mut std::collections::HashMap<events::JobKind, Pace>,
) -> crate::Result<usize> {
    let now = Utc::now();
    // A round ends well within the fence (see `FENCE`): the next one checks it again.
    let deadline = std::time::Instant::now() + FENCE / 2;
    let mut released = 0;
    queues.promote_due(now);
    for kind in queues.ready_kinds() {
        if std::time::Instant::now() > deadline {
            break;
        }
        // No worker has made the kind's consumer yet: nothing would take a release.
        let Some(flow) = bus.released_flow(&kind).await? else {
            continue;
        };
        let pace = paces.entry(kind.clone()).or_insert(Pace {
            at: std::time::Instant::now(),
            taken: flow.taken,
            rate: 0.0,
        });
        let budget = pace
            .window(flow.taken, settings.window)
            .saturating_sub(flow.waiting);
        let mut picked = Vec::new();
        while (picked.len() as u64) < budget {
            match queues.pick(&kind, now) {
                Some(job) => picked.push(job),
                None => break,
            }
        }
        if picked.is_empty() {
            continue;
        }
        let mut acks = Vec::with_capacity(picked.len());
        for job in &picked {
            let id = msg_id::released(job.job, job.attempt, job.generation);
            acks.push(
                bus.release(&job.kind, job.job, job.body.to_vec(), &id)
                    .await,
            );
        }
        for (job, ack) in picked.into_iter().zip(acks) {
            let stored = match ack {
                Ok(pending) => pending.await,
                Err(e) => Err(e),
            };
            match stored {
                Ok(_) => {
                    released += 1;
                    bus.acknowledge(&job.reply, AckKind::Ack).await?;
                    metrics::counter!("conveyor_scheduler_released_total", "kind" => kind.to_string())
                        .increment(1);
                }
                Err(e) => {
                    queues.unpick(job);
                    return Err(e.into());
                }
            }
        }
    }
    Ok(released)
}

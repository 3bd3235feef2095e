//! What must hold once the faults stop and the system settles.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use events::{Envelope, JobEvent};
use futures::StreamExt;
use serde_json::Value;

use crate::faults::Roles;
use crate::load::{Accepted, Expect, Receiver};

/// Each invariant's name and its violations (empty: it holds).
pub(crate) type Report = Vec<(&'static str, Vec<String>)>;

const TERMINAL: [&str; 3] = ["succeeded", "failed", "cancelled"];

pub(crate) async fn check(
    roles: &Roles,
    accepted: &[Accepted],
    contract: Vec<String>,
    receiver: &Receiver,
) -> Report {
    let env = &roles.env;
    let db = env.db().await;
    let ids: Vec<uuid::Uuid> = accepted.iter().map(|a| a.id.parse().unwrap()).collect();

    // Settle: every accepted job terminal (or give up after 3 minutes and report what is not),
    // then the projections at the end of the log.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let statuses = loop {
        let rows: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM jobs WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&db)
                .await
                .expect("read jobs");
        let done = rows
            .iter()
            .filter(|(_, s)| TERMINAL.contains(&s.as_str()))
            .count();
        if done == ids.len() || tokio::time::Instant::now() > deadline {
            break rows
                .into_iter()
                .map(|(id, s)| (id.to_string(), s))
                .collect::<HashMap<_, _>>();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    env.settle().await;
    let mut report: Report = vec![(
        "the API kept its contract (idempotent repeats, statuses)",
        contract,
    )];

    let mut v = Vec::new();
    for a in accepted {
        match statuses.get(&a.id).map(String::as_str) {
            None => v.push(format!(
                "job {} was accepted but is not in the read model",
                a.id
            )),
            Some(s) => {
                let ok = match a.expect {
                    Expect::Succeeded => s == "succeeded",
                    Expect::Failed => s == "failed",
                    Expect::CancelledOrSucceeded => s == "cancelled" || s == "succeeded",
                    Expect::Cancelled => s == "cancelled",
                };
                if !ok {
                    v.push(format!("job {} ended {s}, expected {:?}", a.id, a.expect));
                }
            }
        }
    }
    report.push((
        "every accepted job is terminal with its expected outcome",
        v,
    ));

    let unfinished: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, status FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'cancelled')",
    )
    .fetch_all(&db)
    .await
    .expect("read jobs");
    report.push((
        "no job in the read model is left unfinished",
        unfinished
            .iter()
            .map(|(id, s)| format!("job {id} is {s}"))
            .collect(),
    ));

    // The log, read whole.
    let log = read_log(env).await;
    let readable: BTreeSet<i64> = log.iter().map(|(seq, _)| *seq).collect();
    let mut terminals: BTreeMap<String, usize> = BTreeMap::new();
    for (_, ev) in &log {
        if ev.payload.is_terminal() {
            *terminals.entry(ev.job.to_string()).or_default() += 1;
        }
    }
    let all_jobs: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_all(&db)
        .await
        .expect("read jobs");
    let mut v = Vec::new();
    for id in &all_jobs {
        let n = terminals.get(&id.to_string()).copied().unwrap_or(0);
        if n != 1 {
            v.push(format!("job {id} has {n} terminal events in the log"));
        }
    }
    report.push(("each job has exactly one terminal event in the log", v));
    report.push((
        "no concurrency key ever ran more jobs at once than its limit",
        key_overlaps(&log),
    ));
    report.push((
        "the schedule submitted one job per tick, none missing",
        schedule_ticks(&log),
    ));
    report.push((
        "each batch callback and dependent job started once, only after its conditions held",
        workflows(&log),
    ));

    let rows: Vec<i64> = sqlx::query_scalar("SELECT seq FROM job_events ORDER BY seq")
        .fetch_all(&db)
        .await
        .expect("read job_events");
    let rows_set: BTreeSet<i64> = rows.iter().copied().collect();
    let mut v = Vec::new();
    if rows.len() != rows_set.len() {
        v.push(format!("{} duplicate rows", rows.len() - rows_set.len()));
    }
    v.extend(
        readable
            .difference(&rows_set)
            .take(20)
            .map(|s| format!("event {s} of the log has no row")),
    );
    v.extend(
        rows_set
            .difference(&readable)
            .take(20)
            .map(|s| format!("row {s} is not a readable event of the log")),
    );
    report.push(("job_events holds each readable event of the log once", v));

    let (stats, recount) = env.job_stats_and_recount().await;
    report.push((
        "job_stats equals a recount of jobs",
        if stats == recount {
            Vec::new()
        } else {
            vec![format!("job_stats {stats:?} but jobs count {recount:?}")]
        },
    ));

    report.push((
        "each ended job with a webhook got a signed delivery, and only those",
        webhooks(roles, accepted, &statuses, receiver).await,
    ));

    let before = env.read_models().await;
    env.run(&["replay", "jobs"]).await;
    let after = env.read_models().await;
    let mut v = Vec::new();
    for ((table, b), a) in ["jobs", "job_events", "job_stats"]
        .iter()
        .zip(&before)
        .zip(&after)
    {
        if a != b {
            let differing = b.iter().zip(a).filter(|(x, y)| x != y).count();
            v.push(format!(
                "{table}: {} rows live, {} rebuilt, {differing} differ",
                b.len(),
                a.len()
            ));
        }
    }
    report.push(("a rebuild from the log equals the live read models", v));
    report
}

/// Every attempt of a job with a concurrency key runs from its `job.started` to its `job.failed`
/// or the job's terminal event; in log order, never more of a key's attempts open at once than
/// its limit.
fn key_overlaps(log: &[(i64, Envelope<JobEvent>)]) -> Vec<String> {
    let mut keys: HashMap<String, (String, u32)> = HashMap::new();
    let mut open: HashMap<String, u32> = HashMap::new();
    let mut running: HashMap<String, u32> = HashMap::new();
    let mut v = Vec::new();
    for (seq, ev) in log {
        let job = ev.job.to_string();
        match &ev.payload {
            JobEvent::Submitted(s) => {
                if let Some(c) = &s.scheduling.concurrency {
                    keys.insert(job, (c.key.clone(), c.limit));
                }
            }
            JobEvent::Started(_) => {
                let Some((key, limit)) = keys.get(&job) else {
                    continue;
                };
                // A repeated `started` (published again without its id) opens nothing new.
                if open.insert(job.clone(), 1).is_none() {
                    let n = running.entry(key.clone()).or_default();
                    *n += 1;
                    if *n > *limit {
                        v.push(format!(
                            "{n} jobs of key {key} (limit {limit}) ran at once at seq {seq}"
                        ));
                    }
                }
            }
            e if matches!(e, JobEvent::Failed(_)) || e.is_terminal() => {
                if let (Some((key, _)), Some(_)) = (keys.get(&job), open.remove(&job)) {
                    *running.entry(key.clone()).or_default() -= 1;
                }
            }
            _ => {}
        }
    }
    v
}

/// The id of the run's schedule.
pub(crate) const SCHEDULE: &str = "chaos-tick";

/// The schedule's ticks, from the `job.submitted` events that name them: each tick once (a
/// `job.submitted` repeated without its message id would be another job, with another id, so
/// jobs are counted per tick), and consecutive ticks exactly a second apart.
fn schedule_ticks(log: &[(i64, Envelope<JobEvent>)]) -> Vec<String> {
    let mut ticks: BTreeMap<chrono::DateTime<chrono::Utc>, BTreeSet<String>> = BTreeMap::new();
    for (_, ev) in log {
        if let JobEvent::Submitted(s) = &ev.payload {
            if let Some(from) = s.schedule.as_ref().filter(|f| f.id == SCHEDULE) {
                ticks
                    .entry(from.tick)
                    .or_default()
                    .insert(ev.job.to_string());
            }
        }
    }
    let mut v = Vec::new();
    if ticks.len() < 10 {
        v.push(format!("only {} ticks in the whole run", ticks.len()));
    }
    for (tick, jobs) in &ticks {
        if jobs.len() != 1 {
            v.push(format!("tick {tick} has {} jobs", jobs.len()));
        }
    }
    let at: Vec<_> = ticks.keys().collect();
    for pair in at.windows(2) {
        if (*pair[1] - *pair[0]).num_milliseconds() != 1000 {
            v.push(format!("ticks missing between {} and {}", pair[0], pair[1]));
        }
    }
    v
}

/// Dependent jobs, batch callbacks and waits for children, from the log: a dependent's first
/// start comes after every dependency's terminal event, and only if each succeeded (else it is
/// cancelled unrun); a callback's, after its batch's seal and every member's terminal event, and
/// its result counts them as the log does; a parent's next attempt, after every child submitted
/// before its wait ended. (That each runs to one outcome is the terminal-event invariant's.)
fn workflows(log: &[(i64, Envelope<JobEvent>)]) -> Vec<String> {
    use events::job::Workflow;
    let mut workflow: HashMap<String, Workflow> = HashMap::new();
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    let mut ends: HashMap<String, (i64, &'static str)> = HashMap::new();
    // Each start's sequence and attempt (a fault may store a `job.started` twice).
    let mut starts: HashMap<String, Vec<(i64, u32)>> = HashMap::new();
    let mut sealed: HashMap<String, i64> = HashMap::new();
    let mut results: HashMap<String, Value> = HashMap::new();
    // Each parent's children (with their submission's sequence), and each wait for them.
    let mut children: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    let mut suspends: Vec<(String, i64, u32)> = Vec::new();
    for (seq, ev) in log {
        let job = ev.job.to_string();
        match &ev.payload {
            JobEvent::Suspended(w) => suspends.push((job, *seq, w.attempt)),
            JobEvent::Submitted(s) => {
                if let Some(parent) = s.workflow.parent {
                    children
                        .entry(parent.to_string())
                        .or_default()
                        .push((*seq, job.clone()));
                }
                if let Some(batch) = s.workflow.batch {
                    members
                        .entry(batch.to_string())
                        .or_default()
                        .push(job.clone());
                }
                if s.workflow.waits() {
                    workflow.insert(job, s.workflow.clone());
                }
            }
            JobEvent::Started(s) => starts.entry(job).or_default().push((*seq, s.attempt)),
            JobEvent::Sealed(_) => {
                sealed.entry(job).or_insert(*seq);
            }
            JobEvent::Succeeded(s) => {
                ends.insert(job.clone(), (*seq, "succeeded"));
                if let Some(r) = &s.result {
                    results.insert(job, r.clone());
                }
            }
            JobEvent::DeadLettered(_) => {
                ends.insert(job, (*seq, "failed"));
            }
            JobEvent::Cancelled(_) => {
                ends.insert(job, (*seq, "cancelled"));
            }
            _ => {}
        }
    }
    let mut v = Vec::new();
    // A wait for children: the next attempt starts only after every child submitted before the
    // wait has ended.
    for (job, at, attempt) in &suspends {
        let Some(&(resumed, _)) = starts
            .get(job)
            .and_then(|s| s.iter().find(|(_, a)| *a == attempt + 1))
        else {
            continue;
        };
        for (submitted, child) in children.get(job).into_iter().flatten() {
            if submitted > at {
                continue;
            }
            match ends.get(child) {
                Some((end, _)) if *end < resumed => {}
                other => v.push(format!(
                    "job {job} resumed at {resumed} though child {child} ended {other:?}"
                )),
            }
        }
    }
    for (job, w) in &workflow {
        let started = starts.get(job).cloned().unwrap_or_default();
        let deps_ok = w.depends_on.iter().all(|d| {
            ends.get(&d.to_string())
                .is_some_and(|(_, s)| *s == "succeeded")
        });
        let Some(&(first, _)) = started.first() else {
            if deps_ok && !w.is_batch {
                v.push(format!(
                    "job {job} never started though its dependencies succeeded"
                ));
            }
            continue;
        };
        for dep in &w.depends_on {
            match ends.get(&dep.to_string()) {
                Some((at, "succeeded")) if *at < first => {}
                other => v.push(format!(
                    "job {job} started at {first} though dependency {dep} ended {other:?}"
                )),
            }
        }
        if w.is_batch {
            if sealed.get(job).is_none_or(|at| *at >= first) {
                v.push(format!(
                    "callback {job} started at {first} before its batch was sealed"
                ));
            }
            let of = members.get(job).cloned().unwrap_or_default();
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            for m in &of {
                match ends.get(m) {
                    Some((at, status)) if *at < first => *counts.entry(status).or_default() += 1,
                    other => v.push(format!(
                        "callback {job} started at {first} though member {m} ended {other:?}"
                    )),
                }
            }
            if let Some(result) = results.get(job) {
                let n = |k: &str| counts.get(k).copied().unwrap_or(0);
                let want = serde_json::json!({ "total": of.len(), "succeeded": n("succeeded"),
                                               "failed": n("failed"), "cancelled": n("cancelled") });
                if *result != want {
                    v.push(format!("callback {job} saw {result}, the log has {want}"));
                }
            }
        }
    }
    v
}

/// `(seq, event)` of every event of the log conveyor can read (poison left out).
async fn read_log(env: &testkit::Env) -> Vec<(i64, Envelope<JobEvent>)> {
    let js = env.js().await;
    let name = format!("{}_EVENTS", env.ns.to_uppercase());
    let mut stream = js.get_stream(&name).await.expect("EVENTS");
    let last = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("read EVENTS");
    let mut out = Vec::new();
    while let Some(msg) = messages.next().await {
        let msg: jetstream::Message = msg.expect("a message");
        let seq = msg.info().expect("JetStream message").stream_sequence;
        if let Ok(ev) = bus::decode_event(msg.headers.as_ref(), &msg.payload) {
            out.push((seq as i64, ev));
        }
        if seq >= last {
            break;
        }
    }
    out
}

/// Waits for the deliveries (up to a minute), then checks them.
async fn webhooks(
    roles: &Roles,
    accepted: &[Accepted],
    statuses: &HashMap<String, String>,
    receiver: &Receiver,
) -> Vec<String> {
    let with_hook: HashMap<&str, &str> = accepted
        .iter()
        .filter(|a| a.webhook)
        .filter_map(|a| statuses.get(&a.id).map(|s| (a.id.as_str(), s.as_str())))
        .collect();
    let api = testkit::Api::new(
        &roles.api_urls[0],
        &roles.env.token("acme", "jobs:write jobs:read"),
    );
    let (status, body) = api.get("/v1/webhooks/secret").await;
    assert_eq!(status, 200, "webhook secret: {body}");
    let secret = body["secret"].as_str().expect("a secret").to_owned();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut delivered = self::delivered(receiver, &secret);
    while tokio::time::Instant::now() < deadline
        && !with_hook.keys().all(|id| delivered.contains_key(*id))
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        delivered = self::delivered(receiver, &secret);
    }
    let mut v = Vec::new();
    for (id, status) in &with_hook {
        let want = match *status {
            "succeeded" => "succeeded",
            "failed" => "dead_lettered",
            _ => "cancelled",
        };
        match delivered.get(*id) {
            None => v.push(format!(
                "job {id} ({status}) got no correctly signed delivery"
            )),
            Some(ty) if !ty.ends_with(want) => {
                v.push(format!("job {id} is {status} but its delivery was {ty}"))
            }
            Some(_) => {}
        }
    }
    // Any job with a webhook may be delivered, also one whose submission answer the client lost.
    let ended_with_hook: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE webhook_url IS NOT NULL AND status IN ('succeeded', 'failed', 'cancelled')",
    )
    .fetch_all(&roles.env.db().await)
    .await
    .expect("read jobs");
    let ended_with_hook: std::collections::HashSet<String> =
        ended_with_hook.iter().map(|id| id.to_string()).collect();
    for d in receiver.deliveries.lock().unwrap().iter() {
        let job = serde_json::from_slice::<Value>(&d.body)
            .ok()
            .and_then(|ce| ce["subject"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if !ended_with_hook.contains(&job) {
            v.push(format!(
                "a delivery {} came for job {job:?}, which did not end with a webhook",
                d.id
            ));
        }
    }
    v
}

/// The job and CloudEvent type of each correctly signed delivery answered 2xx.
fn delivered(receiver: &Receiver, secret: &str) -> HashMap<String, String> {
    let mut ok = HashMap::new();
    for d in receiver.deliveries.lock().unwrap().iter() {
        if d.answered >= 300 {
            continue;
        }
        let ts: i64 = d.timestamp.parse().unwrap_or(0);
        if events::webhooks::verify(secret, &d.id, &d.timestamp, &d.signature, &d.body, ts).is_err()
        {
            continue;
        }
        if let Ok(ce) = serde_json::from_slice::<Value>(&d.body) {
            let job = ce["subject"].as_str().unwrap_or_default().to_owned();
            let ty = ce["type"].as_str().unwrap_or_default().to_owned();
            ok.insert(job, ty);
        }
    }
    ok
}

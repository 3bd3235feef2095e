//! The read models as a pure fold: `jobs` (current state), `job_events` (timeline) and
//! `job_stats` (counts per tenant, kind and status), plus the SQL that writes a folded batch.
//! The tables, their row type ([`JobRow`]) and the reads are the `readmodel` crate's.
//!
//! A batch is folded in memory (rows of the affected jobs are loaded once, events applied in
//! stream order), then written with one statement per table. Terminal states are sticky: a late
//! event from a stale attempt never moves a job out of `succeeded`, `failed` or `cancelled`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use events::{Envelope, JobEvent, JobStatus};
use readmodel::JobRow;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// An event with its EVENTS stream sequence and its CloudEvent JSON (as received, when it came
/// in structured mode: it is stored as is, never re-encoded).
#[derive(Debug, Clone)]
pub(crate) struct Sequenced {
    pub(crate) seq: i64,
    pub(crate) ev: Envelope<JobEvent>,
    pub(crate) json: bytes::Bytes,
}

impl Sequenced {
    /// `ev` at `seq`, its JSON encoded here.
    #[cfg(test)]
    pub(crate) fn new(seq: i64, ev: Envelope<JobEvent>) -> Self {
        let json = ev.to_json().into();
        Self { seq, ev, json }
    }
}

/// One row of `job_events`.
#[derive(Debug, Clone)]
pub(crate) struct EventRow {
    seq: i64,
    job_id: Uuid,
    tenant: String,
    ty: &'static str,
    time: DateTime<Utc>,
    /// The CloudEvent, JSON.
    event: bytes::Bytes,
}

impl EventRow {
    /// Appends the row in `COPY … (FORMAT text)` form: tab-separated, backslash-escaped.
    fn write_copy_line(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(
            out,
            "{}\t{}\t{}\t{}\t{}\t",
            self.seq,
            self.job_id,
            self.tenant,
            self.ty,
            self.time
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
        for &b in self.event.iter() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                _ => out.push(b),
            }
        }
        out.push(b'\n');
    }
}

/// A change to one `job_stats` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct StatsDelta {
    tenant: String,
    kind: String,
    status: JobStatus,
    count: i64,
    total_duration_ms: i64,
}

/// The run time a job in a terminal status contributes to `job_stats` (0 otherwise).
fn run_ms(row: &JobRow) -> i64 {
    match (row.started_at, row.finished_at) {
        (Some(s), Some(f)) if row.status.is_terminal() => (f - s).num_milliseconds(),
        _ => 0,
    }
}

/// Applies one event to a job's row (`None`: the job is not known yet). Returns the new row.
pub fn apply(row: Option<JobRow>, seq: i64, ev: &Envelope<JobEvent>) -> Option<JobRow> {
    let mut row = match (&ev.payload, row) {
        (JobEvent::Submitted(s), None) => return Some(JobRow::submitted(seq, ev, s)),
        // Events of a job whose submission we never saw only go to the timeline.
        (_, None) => return None,
        (_, Some(row)) => row,
    };
    // Terminal states are sticky, except that a re-drive brings a failed job back.
    let redrive = matches!(ev.payload, JobEvent::Redriven(_)) && row.status == JobStatus::Failed;
    if (row.status.is_terminal() && !redrive) || seq <= row.last_seq {
        return Some(row);
    }
    let attempt = |a: u32| i32::try_from(a).unwrap_or(i32::MAX);
    match &ev.payload {
        JobEvent::Submitted(_) | JobEvent::CancelRequested(_) => {}
        JobEvent::Sealed(_) => {
            row.sealed_at.get_or_insert(ev.time);
        }
        JobEvent::Suspended(w) => {
            // The attempt under way waits for the job's children; the next one is queued.
            if attempt(w.attempt) >= row.attempt && row.status == JobStatus::Running {
                row.status = JobStatus::Queued;
                row.max_attempts = attempt(w.max_attempts);
                row.suspended_attempt = Some(attempt(w.attempt));
                row.progress = None;
            }
        }
        JobEvent::Started(s) => {
            if attempt(s.attempt) >= row.attempt {
                row.attempt = attempt(s.attempt);
                row.status = JobStatus::Running;
                row.started_at.get_or_insert(ev.time);
                row.progress = None;
                row.waiting = None;
            }
        }
        JobEvent::Waiting(w) => {
            // Only news of the attempt still to start (`attempt` is the latest started).
            if attempt(w.attempt) > row.attempt && row.status != JobStatus::Running {
                let mut why = serde_json::to_value(w).expect("serialises");
                why["since"] = json!(ev.time);
                row.waiting = Some(why);
            }
        }
        JobEvent::Progressed(p) => {
            if attempt(p.attempt) >= row.attempt {
                row.progress =
                    Some(json!({ "current": p.current, "total": p.total, "message": p.message }));
            }
        }
        JobEvent::Failed(f) => {
            if attempt(f.attempt) >= row.attempt {
                row.error = Some(
                    json!({ "class": f.error.class, "message": f.error.message, "attempt": f.attempt }),
                );
            }
        }
        JobEvent::RetryScheduled(r) => {
            if attempt(r.next_attempt) > row.attempt {
                row.status = JobStatus::RetryScheduled;
                row.run_at = Some(r.run_at);
            }
        }
        JobEvent::Succeeded(s) => {
            row.status = JobStatus::Succeeded;
            row.attempt = attempt(s.attempt);
            row.result = s.result.clone();
            row.result_ref = s
                .result_ref
                .as_ref()
                .map(|r| serde_json::to_value(r).expect("serialises"));
            row.error = None;
            row.finished_at = Some(ev.time);
        }
        JobEvent::DeadLettered(d) => {
            row.status = JobStatus::Failed;
            row.attempt = attempt(d.attempt);
            row.error = Some(json!({ "class": d.error.class, "message": d.error.message,
                                     "attempt": d.attempt, "reason": d.reason }));
            row.finished_at = Some(ev.time);
        }
        JobEvent::Cancelled(_) => {
            row.status = JobStatus::Cancelled;
            row.finished_at = Some(ev.time);
        }
        JobEvent::Redriven(r) => {
            row.status = JobStatus::Queued;
            row.max_attempts = attempt(r.max_attempts);
            row.error = None;
            row.progress = None;
            row.finished_at = None;
            row.run_at = None;
            row.waiting = None;
        }
    }
    if row.status.is_terminal() {
        row.waiting = None;
    }
    row.updated_at = ev.time;
    row.last_seq = seq;
    Some(row)
}

/// The effect of a batch on the three read models.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) jobs: Vec<JobRow>,
    pub(crate) events: Vec<EventRow>,
    pub(crate) stats: Vec<StatsDelta>,
    /// Jobs that reached a terminal status in this batch (for metrics).
    pub(crate) finished: Vec<Finished>,
}

/// A job that reached a terminal status.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Finished {
    pub(crate) kind: String,
    pub(crate) status: JobStatus,
    /// From submission to the terminal event.
    pub(crate) latency: std::time::Duration,
}

/// Folds `events` (in stream order) over the rows `before` (the affected jobs' current rows).
/// `jobs_after` and `events_after` are the checkpoints: events at or below them are skipped.
pub(crate) fn fold(
    before: HashMap<Uuid, JobRow>,
    events: &[Sequenced],
    jobs_after: i64,
    events_after: i64,
) -> Batch {
    let mut batch = Batch::default();
    let mut rows: HashMap<Uuid, Option<JobRow>> = HashMap::new();
    let mut order = Vec::new();
    for Sequenced { seq, ev, json } in events {
        if *seq > events_after {
            batch.events.push(EventRow {
                seq: *seq,
                job_id: ev.job.0,
                tenant: ev.tenant.to_string(),
                ty: ev.payload.name(),
                time: ev.time,
                event: json.clone(),
            });
        }
        if *seq > jobs_after {
            let slot = rows.entry(ev.job.0).or_insert_with(|| {
                order.push(ev.job.0);
                before.get(&ev.job.0).cloned()
            });
            *slot = apply(slot.take(), *seq, ev);
        }
    }
    let mut stats: HashMap<(String, String, JobStatus), (i64, i64)> = HashMap::new();
    for id in order {
        let Some(after) = rows.remove(&id).flatten() else {
            continue;
        };
        let prior = before.get(&id);
        if after.status.is_terminal() && !prior.is_some_and(|p| p.status.is_terminal()) {
            batch.finished.push(Finished {
                kind: after.kind.clone(),
                status: after.status,
                latency: after
                    .finished_at
                    .and_then(|f| (f - after.created_at).to_std().ok())
                    .unwrap_or_default(),
            });
        }
        if prior.map(|p| p.status) != Some(after.status) {
            if let Some(prior) = prior {
                // Leaving a status takes back what entering it added (a re-drive leaves `failed`).
                let e = stats
                    .entry((prior.tenant.clone(), prior.kind.clone(), prior.status))
                    .or_default();
                e.0 -= 1;
                e.1 -= run_ms(prior);
            }
            let e = stats
                .entry((after.tenant.clone(), after.kind.clone(), after.status))
                .or_default();
            e.0 += 1;
            e.1 += run_ms(&after);
        }
        if prior != Some(&after) {
            batch.jobs.push(after);
        }
    }
    batch.stats = stats
        .into_iter()
        .filter(|(_, (count, ms))| *count != 0 || *ms != 0)
        .map(
            |((tenant, kind, status), (count, total_duration_ms))| StatsDelta {
                tenant,
                kind,
                status,
                count,
                total_duration_ms,
            },
        )
        .collect();
    batch.stats.sort_by(|a, b| {
        (&a.tenant, &a.kind, a.status.as_str()).cmp(&(&b.tenant, &b.kind, b.status.as_str()))
    });
    batch
}

/// Writes a folded batch into the read models in `schema`: one statement per table.
pub(crate) async fn write(
    tx: &mut Transaction<'_, Postgres>,
    schema: &str,
    batch: &Batch,
) -> sqlx::Result<()> {
    use sqlx::types::Json;
    if !batch.jobs.is_empty() {
        // One array per column, sent in binary: several times cheaper for Postgres than
        // reading the rows out of a JSON document.
        let jobs = &batch.jobs;
        let col = |f: fn(&JobRow) -> Option<Value>| jobs.iter().map(f).collect::<Vec<_>>();
        let columns = readmodel::jobs::COLUMNS;
        sqlx::query(&format!(
            "INSERT INTO {schema}.jobs ({columns})
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[],
               $6::int4[], $7::int8[], $8::jsonb[], $9::jsonb[], $10::jsonb[], $11::jsonb[],
               $12::jsonb[], $13::text[], $14::timestamptz[], $15::text[], $16::timestamptz[],
               $17::timestamptz[], $18::timestamptz[], $19::timestamptz[], $20::int8[], $21::int4[],
               $22::jsonb[], $23::uuid[], $24::jsonb[], $25::bool[], $26::timestamptz[],
               $27::uuid[], $28::int4[])
             ON CONFLICT (id) DO UPDATE SET
               status = EXCLUDED.status, attempt = EXCLUDED.attempt, max_attempts = EXCLUDED.max_attempts,
               progress = EXCLUDED.progress,
               result = EXCLUDED.result, result_ref = EXCLUDED.result_ref, error = EXCLUDED.error,
               run_at = EXCLUDED.run_at, started_at = EXCLUDED.started_at,
               finished_at = EXCLUDED.finished_at, updated_at = EXCLUDED.updated_at,
               last_seq = EXCLUDED.last_seq, waiting = EXCLUDED.waiting,
               sealed_at = EXCLUDED.sealed_at, suspended_attempt = EXCLUDED.suspended_attempt"
        ))
        .bind(jobs.iter().map(|j| j.id).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.tenant.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.status.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.attempt).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.timeout_ms).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| Json(&j.payload)).collect::<Vec<_>>())
        .bind(col(|j| j.progress.clone()))
        .bind(col(|j| j.result.clone()))
        .bind(col(|j| j.result_ref.clone()))
        .bind(col(|j| j.error.clone()))
        .bind(jobs.iter().map(|j| j.webhook_url.as_deref()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.run_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.trace_id.as_deref()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.created_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.started_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.finished_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.updated_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.last_seq).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.priority).collect::<Vec<_>>())
        .bind(col(|j| j.waiting.clone()))
        .bind(jobs.iter().map(|j| j.batch).collect::<Vec<_>>())
        .bind(col(|j| j.depends_on.clone()))
        .bind(jobs.iter().map(|j| j.is_batch).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.sealed_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.parent).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.suspended_attempt).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !batch.events.is_empty() {
        // COPY: about half the cost of inserting the same rows from a JSON document. No
        // conflict can arise: rows at or below the checkpoint were filtered out by the fold,
        // and the checkpoint moves in this same transaction.
        let mut data = Vec::with_capacity(batch.events.len() * 768);
        for row in &batch.events {
            row.write_copy_line(&mut data);
        }
        let mut copy = tx
            .copy_in_raw(&format!(
                "COPY {schema}.job_events (seq, job_id, tenant, type, time, event) FROM STDIN"
            ))
            .await?;
        copy.send(data).await?;
        copy.finish().await?;
    }
    if !batch.stats.is_empty() {
        sqlx::query(&format!(
            "INSERT INTO {schema}.job_stats AS s (tenant, kind, status, count, total_duration_ms)
             SELECT tenant, kind, status, count, total_duration_ms
             FROM jsonb_populate_recordset(NULL::{schema}.job_stats, $1)
             ON CONFLICT (tenant, kind, status) DO UPDATE SET
               count = s.count + EXCLUDED.count,
               total_duration_ms = s.total_duration_ms + EXCLUDED.total_duration_ms"
        ))
        .bind(Json(&batch.stats))
        .execute(&mut **tx)
        .await?;
        // A row that went back to nothing is removed, so the table is the same however the
        // events were batched (a rebuild must equal the live model row for row).
        sqlx::query(&format!(
            "DELETE FROM {schema}.job_stats s
             USING jsonb_populate_recordset(NULL::{schema}.job_stats, $1) d
             WHERE s.tenant = d.tenant AND s.kind = d.kind AND s.status = d.status
               AND s.count = 0 AND s.total_duration_ms = 0"
        ))
        .bind(Json(&batch.stats))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::job::*;
    use events::{JobId, JobKind, Tenant};

    fn ev(job: JobId, payload: JobEvent) -> Envelope<JobEvent> {
        Envelope::new(
            "/t",
            job,
            Tenant::parse("acme").unwrap(),
            JobKind::parse("sleep").unwrap(),
            payload,
        )
    }

    fn submitted(job: JobId) -> Envelope<JobEvent> {
        ev(
            job,
            JobEvent::Submitted(Submitted {
                payload: Value::Null,
                max_attempts: 3,
                timeout_ms: 1000,
                run_at: None,
                webhook: None,
                scheduling: Default::default(),
                schedule: None,
                workflow: Default::default(),
            }),
        )
    }

    fn started(job: JobId, attempt: u32) -> Envelope<JobEvent> {
        ev(
            job,
            JobEvent::Started(Started {
                attempt,
                worker: "w".into(),
            }),
        )
    }

    fn succeeded(job: JobId, attempt: u32) -> Envelope<JobEvent> {
        ev(
            job,
            JobEvent::Succeeded(Succeeded {
                attempt,
                result: Some(json!(1)),
                result_ref: None,
                duration_ms: 1,
            }),
        )
    }

    fn waiting(job: JobId, attempt: u32, reason: WaitReason) -> Envelope<JobEvent> {
        ev(
            job,
            JobEvent::Waiting(Waiting {
                attempt,
                reason,
                key: Some("acct".into()),
            }),
        )
    }

    #[test]
    fn a_batch_and_its_members_carry_their_workflow_and_the_seal_sticks() {
        let (batch, dep) = (JobId::new(), JobId::new());
        let mut callback = submitted(batch);
        if let JobEvent::Submitted(s) = &mut callback.payload {
            s.workflow.is_batch = true;
            s.workflow.depends_on = vec![dep];
        }
        let row = apply(None, 1, &callback).unwrap();
        assert!(row.is_batch);
        assert_eq!(row.depends_on, Some(json!([dep])));
        assert_eq!(row.sealed_at, None);
        let seal = ev(batch, JobEvent::Sealed(Sealed {}));
        let row = apply(Some(row), 2, &seal).unwrap();
        let at = row.sealed_at.expect("sealed");
        assert_eq!(row.status, JobStatus::Queued, "a seal moves no status");
        // Sealed twice (a repeat past the duplicate window): the first time stands.
        let again = ev(batch, JobEvent::Sealed(Sealed {}));
        assert_eq!(apply(Some(row), 3, &again).unwrap().sealed_at, Some(at));

        let mut member = submitted(JobId::new());
        if let JobEvent::Submitted(s) = &mut member.payload {
            s.workflow.batch = Some(batch);
        }
        let row = apply(None, 4, &member).unwrap();
        assert_eq!(
            (row.batch, row.is_batch, row.depends_on),
            (Some(batch.0), false, None)
        );
    }

    #[test]
    fn why_a_job_waits_lasts_until_its_attempt_starts() {
        let job = JobId::new();
        let row = |events: &[Envelope<JobEvent>]| {
            let mut row = None;
            for (seq, ev) in events.iter().enumerate() {
                row = apply(row, seq as i64 + 1, ev);
            }
            row.expect("a row")
        };
        let told = waiting(job, 1, WaitReason::ConcurrencyKey);
        let held = row(&[submitted(job), told.clone()]);
        assert_eq!(
            held.status,
            JobStatus::Queued,
            "waiting never moves the status"
        );
        let why = held.waiting.expect("why it waits");
        assert_eq!(
            (why["reason"].as_str(), why["key"].as_str()),
            (Some("concurrency_key"), Some("acct"))
        );
        assert_eq!(why["since"], json!(told.time));
        assert_eq!(
            row(&[submitted(job), told.clone(), started(job, 1)]).waiting,
            None
        );
        // A late `waiting` of the attempt under way, or of an earlier one, is old news.
        let late = row(&[submitted(job), started(job, 1), told.clone()]);
        assert_eq!((late.status, late.waiting), (JobStatus::Running, None));
        assert_eq!(
            row(&[submitted(job), told, succeeded(job, 1)]).waiting,
            None
        );
    }

    #[test]
    fn a_job_runs_to_success_and_counts_once() {
        let job = JobId::new();
        let events = vec![
            Sequenced::new(1, submitted(job)),
            Sequenced::new(2, started(job, 1)),
            Sequenced::new(3, succeeded(job, 1)),
        ];
        let batch = fold(HashMap::new(), &events, 0, 0);
        assert_eq!(batch.events.len(), 3);
        assert_eq!(batch.jobs.len(), 1);
        assert_eq!(batch.jobs[0].status, JobStatus::Succeeded);
        assert_eq!(batch.jobs[0].last_seq, 3);
        assert_eq!(batch.stats.len(), 1);
        assert_eq!(
            (batch.stats[0].status, batch.stats[0].count),
            (JobStatus::Succeeded, 1)
        );
    }

    #[test]
    fn batches_move_counts_between_statuses() {
        let job = JobId::new();
        let first = fold(HashMap::new(), &[Sequenced::new(1, submitted(job))], 0, 0);
        let before: HashMap<_, _> = first.jobs.into_iter().map(|r| (r.id, r)).collect();
        let second = fold(before, &[Sequenced::new(2, started(job, 1))], 1, 1);
        let counts: Vec<_> = second.stats.iter().map(|s| (s.status, s.count)).collect();
        assert_eq!(
            counts,
            vec![(JobStatus::Queued, -1), (JobStatus::Running, 1)]
        );
    }

    #[test]
    fn replayed_events_at_or_below_the_checkpoint_are_skipped() {
        let job = JobId::new();
        let events = vec![
            Sequenced::new(1, submitted(job)),
            Sequenced::new(2, started(job, 1)),
        ];
        let batch = fold(HashMap::new(), &events, 2, 2);
        assert!(batch.events.is_empty() && batch.jobs.is_empty() && batch.stats.is_empty());
    }

    #[test]
    fn terminal_states_are_sticky_and_stale_attempts_ignored() {
        let job = JobId::new();
        let events = vec![
            Sequenced::new(1, submitted(job)),
            Sequenced::new(2, started(job, 2)),
            Sequenced::new(3, started(job, 1)),
            Sequenced::new(4, succeeded(job, 2)),
            Sequenced::new(
                5,
                ev(
                    job,
                    JobEvent::Cancelled(Cancelled {
                        attempt: Some(1),
                        reason: None,
                    }),
                ),
            ),
        ];
        let batch = fold(HashMap::new(), &events, 0, 0);
        assert_eq!(batch.jobs[0].status, JobStatus::Succeeded);
        assert_eq!(batch.jobs[0].attempt, 2);
        assert_eq!(batch.events.len(), 5, "the timeline keeps every event");
    }

    #[test]
    fn a_redrive_brings_a_failed_job_back_and_counts_move() {
        let job = JobId::new();
        let dead = ev(
            job,
            JobEvent::DeadLettered(DeadLettered {
                attempt: 3,
                reason: "attempts exhausted".into(),
                error: ErrorInfo {
                    class: ErrorClass::Retryable,
                    message: "x".into(),
                },
            }),
        );
        let first = fold(
            HashMap::new(),
            &[
                Sequenced::new(1, submitted(job)),
                Sequenced::new(2, started(job, 3)),
                Sequenced::new(3, dead),
            ],
            0,
            0,
        );
        assert_eq!(first.jobs[0].status, JobStatus::Failed);
        let before: HashMap<_, _> = first.jobs.into_iter().map(|r| (r.id, r)).collect();
        let redriven = ev(
            job,
            JobEvent::Redriven(Redriven {
                generation: 1,
                next_attempt: 4,
                max_attempts: 6,
            }),
        );
        let batch = fold(
            before,
            &[
                Sequenced::new(4, redriven),
                Sequenced::new(5, started(job, 4)),
                Sequenced::new(6, succeeded(job, 4)),
            ],
            3,
            3,
        );
        let row = &batch.jobs[0];
        assert_eq!(
            (row.status, row.attempt, row.max_attempts),
            (JobStatus::Succeeded, 4, 6)
        );
        assert!(row.error.is_none());
        let counts: Vec<_> = batch.stats.iter().map(|s| (s.status, s.count)).collect();
        assert_eq!(
            counts,
            vec![(JobStatus::Failed, -1), (JobStatus::Succeeded, 1)]
        );
    }

    #[test]
    fn events_of_unknown_jobs_only_reach_the_timeline() {
        let job = JobId::new();
        let batch = fold(HashMap::new(), &[Sequenced::new(7, started(job, 1))], 0, 0);
        assert_eq!(batch.events.len(), 1);
        assert!(batch.jobs.is_empty() && batch.stats.is_empty());
    }
}

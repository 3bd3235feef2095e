//! Schedules' ticks: the active scheduler submits each due tick's job, then records the tick in
//! the schedule's entry (compare-and-set, so an edit made meanwhile through the API wins and is
//! read again). A tick's job id derives from the schedule and the tick, and its `job.submitted`
//! and first `run` command carry ids from it, so a tick submitted twice (a crash before it was
//! recorded, a scheduler that lost its lock racing the new one) is one job.

use std::collections::HashMap;

use bus::transition::JobEnvelope;
use bus::Bus;
use chrono::Utc;
use events::job::FromSchedule;
use events::schedule::Schedule;
use events::{lifecycle, JobKind};

/// CloudEvents `source` of the jobs schedules submit.
pub(super) const SOURCE: &str = "/conveyor/scheduler";

/// The schedules as the bucket holds them: key → (schedule, revision).
#[derive(Debug, Default)]
pub(super) struct Schedules(HashMap<String, (Schedule, u64)>);

impl Schedules {
    /// Applies a change of the schedules bucket.
    pub(super) fn apply(&mut self, entry: &bus::jetstream::KvEntry) {
        if entry.operation != bus::jetstream::KvOperation::Put {
            self.0.remove(&entry.key);
            return;
        }
        match serde_json::from_slice::<Schedule>(&entry.value) {
            Ok(s) => {
                self.0.insert(entry.key.clone(), (s, entry.revision));
            }
            Err(e) => {
                tracing::error!(key = %entry.key, error = %e, "an unreadable schedule is left alone");
                self.0.remove(&entry.key);
            }
        }
    }

    /// Whether there are none.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Submits the jobs of every due tick and records the ticks.
    pub(super) async fn fire(&mut self, bus: &Bus) -> crate::Result<()> {
        let now = Utc::now();
        let store = bus.schedules().await?;
        for (key, (schedule, revision)) in self.0.iter_mut() {
            let due = schedule.due(now);
            let Some(last_tick) = due.last_tick else {
                continue;
            };
            let Ok(kind) = JobKind::parse(&schedule.kind) else {
                continue;
            };
            for tick in &due.fire {
                let job = schedule.job_id(*tick);
                let mut submitted = schedule.job.clone();
                submitted.schedule = Some(FromSchedule {
                    id: schedule.id.clone(),
                    tick: *tick,
                });
                let to = JobEnvelope {
                    source: SOURCE,
                    job,
                    tenant: schedule.tenant.clone(),
                    kind: kind.clone(),
                    trace: None,
                };
                bus.publish_transition(&to, lifecycle::submit(job, submitted, now))
                    .await?;
                metrics::counter!("conveyor_schedule_ticks_total").increment(1);
                tracing::debug!(schedule = %key, %tick, job_id = %job, "schedule tick submitted");
            }
            let recorded = Schedule {
                last_tick: Some(last_tick),
                ..schedule.clone()
            };
            let value = serde_json::to_vec(&recorded).expect("a schedule serialises");
            if bus::put_if(&store, key, value.into(), Some(*revision)).await? {
                // The watch brings the new revision; until then this one is current.
                *schedule = recorded;
            }
        }
        Ok(())
    }
}

//! Schedules: a job submitted at every tick of a cron expression (in a time zone) or of a fixed
//! interval. The schedules bucket holds each one, with the last tick it has acted on; the active
//! scheduler submits each tick's job with an id derived from the schedule and the tick, so a tick
//! submitted twice (a crash between submitting and recording it, two schedulers racing) is one
//! job.

use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, Tenant};
use crate::job::Submitted;

/// Ticks later than this are missed ticks: [`CatchUp`] decides what they get. Later ones are
/// fired, each one, so a scheduler taking over (or restarting) loses no tick.
pub const GRACE: Duration = Duration::from_secs(60);

/// The shortest interval.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// The longest interval.
pub const MAX_EVERY: Duration = Duration::from_secs(366 * 86_400);

/// When a schedule ticks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// A cron expression (5 fields, or 6 with seconds first) read in an IANA time zone.
    Cron {
        /// The expression, e.g. `0 30 2 * * *`.
        cron: String,
        /// The time zone, e.g. `Europe/Paris`.
        timezone: String,
    },
    /// Every `every_ms`, counted from `anchor`.
    Every {
        /// The interval.
        every_ms: u64,
        /// The first tick is one interval after it.
        anchor: DateTime<Utc>,
    },
}

/// What ticks missed by more than [`GRACE`] (everything was down) get.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// None: the schedule goes on from its next tick.
    #[default]
    Skip,
    /// One job, for the latest missed tick.
    Once,
}

/// A schedule, as the bucket holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Its name, unique per tenant.
    pub id: String,
    /// Whose jobs it submits.
    pub tenant: Tenant,
    /// Their kind.
    pub kind: String,
    /// When it ticks.
    pub timing: Timing,
    /// What missed ticks get.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// The job each tick submits (`run_at` unset).
    pub job: Submitted,
    /// Paused: no tick fires; resuming goes on from the next tick.
    #[serde(default)]
    pub paused: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The last tick it acted on (fired, or skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tick: Option<DateTime<Utc>>,
}

/// Why a timing is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimingError {
    /// Not a cron expression.
    #[error("`cron` is not a cron expression ({0}): use 5 fields, or 6 with seconds first, e.g. `0 30 2 * * *`")]
    Cron(String),
    /// Not an IANA time zone.
    #[error("`timezone` {0:?} is not an IANA time zone name, e.g. `Europe/Paris` or `UTC`")]
    TimeZone(String),
    /// A bad interval.
    #[error("`every` must be a duration from 1s to 366d, e.g. `30s` or `1h 30m`")]
    Every,
    /// A cron expression with no tick to come (`0 0 30 2 *`: February 30th).
    #[error("`cron` {0:?} never ticks")]
    Never(String),
}

impl Timing {
    /// A cron timing, checked.
    pub fn cron(cron: &str, timezone: &str) -> Result<Self, TimingError> {
        parse_cron(cron)?;
        parse_tz(timezone)?;
        let timing = Self::Cron {
            cron: cron.trim().to_owned(),
            timezone: timezone.to_owned(),
        };
        timing
            .next_after(Utc::now())
            .ok_or_else(|| TimingError::Never(cron.to_owned()))?;
        Ok(timing)
    }

    /// An interval timing (`every`: `30s`, `1h 30m`), anchored now.
    pub fn every(every: &str, anchor: DateTime<Utc>) -> Result<Self, TimingError> {
        let every = humantime::parse_duration(every).map_err(|_| TimingError::Every)?;
        if !(MIN_EVERY..=MAX_EVERY).contains(&every) {
            return Err(TimingError::Every);
        }
        Ok(Self::Every {
            every_ms: every.as_millis() as u64,
            anchor,
        })
    }

    /// The first tick after `after` (`None`: none comes, or the timing no longer parses).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Every { every_ms, anchor } => {
                let every = *every_ms as i64;
                let since = (after - *anchor).num_milliseconds();
                let n = if since < 0 { 1 } else { since / every + 1 };
                Some(*anchor + chrono::Duration::milliseconds(n * every))
            }
            Self::Cron { cron, timezone } => {
                let (cron, tz) = (parse_cron(cron).ok()?, parse_tz(timezone).ok()?);
                let next = cron
                    .find_next_occurrence(&after.with_timezone(&tz), false)
                    .ok()?;
                Some(next.with_timezone(&Utc))
            }
        }
    }

    /// The last tick at or before `at`, if one is after `floor`.
    fn last_at_or_before(&self, at: DateTime<Utc>, floor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let last = match self {
            Self::Every { every_ms, anchor } => {
                let since = (at - *anchor).num_milliseconds();
                if since < *every_ms as i64 {
                    return None;
                }
                let n = since / *every_ms as i64;
                *anchor + chrono::Duration::milliseconds(n * *every_ms as i64)
            }
            Self::Cron { cron, timezone } => {
                let (cron, tz) = (parse_cron(cron).ok()?, parse_tz(timezone).ok()?);
                cron.find_previous_occurrence(&at.with_timezone(&tz), true)
                    .ok()?
                    .with_timezone(&Utc)
            }
        };
        (last > floor).then_some(last)
    }
}

fn parse_cron(cron: &str) -> Result<croner::Cron, TimingError> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(cron)
        .map_err(|e| TimingError::Cron(e.to_string()))
}

fn parse_tz(timezone: &str) -> Result<chrono_tz::Tz, TimingError> {
    timezone
        .parse::<chrono_tz::Tz>()
        .map_err(|_| TimingError::TimeZone(timezone.to_owned()))
}

/// What a schedule does at `now`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// The ticks whose jobs to submit, in order.
    pub fire: Vec<DateTime<Utc>>,
    /// The last tick acted on, once they are submitted (`None`: nothing to record).
    pub last_tick: Option<DateTime<Utc>>,
}

impl Schedule {
    /// Where its ticks start: after the last one acted on, or after its creation.
    fn since(&self) -> DateTime<Utc> {
        self.last_tick.unwrap_or(self.created_at)
    }

    /// Its next tick.
    pub fn next_tick(&self) -> Option<DateTime<Utc>> {
        self.timing.next_after(self.since())
    }

    /// What is due at `now`: every tick up to [`GRACE`] late, and for older missed ticks what
    /// [`CatchUp`] says.
    pub fn due(&self, now: DateTime<Utc>) -> Due {
        if self.paused {
            return Due::default();
        }
        let since = self.since();
        let Some(latest) = self.timing.last_at_or_before(now, since) else {
            return Due::default();
        };
        let grace = chrono::Duration::from_std(GRACE).expect("short");
        let recent_from = since.max(now - grace);
        let mut fire = Vec::new();
        if let Some(stale) = self.timing.last_at_or_before(recent_from, since) {
            if self.catch_up == CatchUp::Once {
                fire.push(stale);
            }
        }
        let mut tick = self.timing.next_after(recent_from);
        while let Some(t) = tick.filter(|t| *t <= latest) {
            fire.push(t);
            tick = self.timing.next_after(t);
        }
        Due {
            fire,
            last_tick: Some(latest),
        }
    }

    /// The id of the job of `tick`: time-ordered like every job id (its timestamp is the
    /// tick's), the rest from the tenant, the schedule and the tick.
    pub fn job_id(&self, tick: DateTime<Utc>) -> JobId {
        JobId::derived(
            tick.timestamp_millis().max(0) as u64,
            &format!("{}/{}/{}", self.tenant, self.id, tick.to_rfc3339()),
        )
    }

    /// Its key in the schedules bucket.
    pub fn key(tenant: &Tenant, id: &str) -> String {
        format!("{tenant}.{id}")
    }
}

/// Whether `id` may name a schedule: 1 to 128 letters, digits, `-` and `_`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(timing: Timing, catch_up: CatchUp, created: DateTime<Utc>) -> Schedule {
        Schedule {
            id: "nightly".into(),
            tenant: Tenant::parse("acme").unwrap(),
            kind: "noop".into(),
            timing,
            catch_up,
            job: Submitted {
                payload: serde_json::Value::Null,
                max_attempts: 3,
                timeout_ms: 1000,
                run_at: None,
                webhook: None,
                scheduling: Default::default(),
                schedule: None,
                workflow: Default::default(),
            },
            paused: false,
            created_at: created,
            last_tick: None,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn every_fires_each_tick_up_to_now_and_ids_are_per_tick() {
        let t0 = at("2026-01-01T00:00:00.500Z");
        let s = schedule(Timing::every("1s", t0).unwrap(), CatchUp::Skip, t0);
        let due = s.due(at("2026-01-01T00:00:03.600Z"));
        assert_eq!(
            due.fire,
            [
                at("2026-01-01T00:00:01.500Z"),
                at("2026-01-01T00:00:02.500Z"),
                at("2026-01-01T00:00:03.500Z")
            ]
        );
        assert_eq!(due.last_tick, Some(at("2026-01-01T00:00:03.500Z")));
        let ids: std::collections::HashSet<_> = due.fire.iter().map(|t| s.job_id(*t)).collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(s.job_id(due.fire[0]), s.job_id(due.fire[0]));
        let recorded = Schedule {
            last_tick: due.last_tick,
            ..s
        };
        assert_eq!(recorded.due(at("2026-01-01T00:00:03.900Z")), Due::default());
    }

    #[test]
    fn cron_reads_its_time_zone_and_seconds() {
        let created = at("2026-03-01T00:00:00Z");
        let s = schedule(
            Timing::cron("0 30 2 * * *", "Europe/Paris").unwrap(),
            CatchUp::Skip,
            created,
        );
        // 02:30 in Paris is 01:30 UTC in winter.
        assert_eq!(s.next_tick(), Some(at("2026-03-01T01:30:00Z")));
        assert!(Timing::cron("not cron", "UTC").is_err());
        assert_eq!(
            Timing::cron("0 0 30 2 *", "UTC"),
            Err(TimingError::Never("0 0 30 2 *".into()))
        );
        assert!(Timing::cron("* * * * *", "Mars/Olympus").is_err());
    }

    #[test]
    fn missed_ticks_are_skipped_or_run_once() {
        let t0 = at("2026-01-01T00:00:00Z");
        let every = Timing::every("10m", t0).unwrap();
        let later = at("2026-01-01T05:00:30Z");
        // The tick 30 s late fires either way; the 29 older ones are skipped, or run once.
        let skip = schedule(every.clone(), CatchUp::Skip, t0).due(later);
        assert_eq!(skip.fire, [at("2026-01-01T05:00:00Z")]);
        assert_eq!(skip.last_tick, Some(at("2026-01-01T05:00:00Z")));
        let once = schedule(every, CatchUp::Once, t0).due(later);
        assert_eq!(
            once.fire,
            [at("2026-01-01T04:50:00Z"), at("2026-01-01T05:00:00Z")]
        );
    }
}

//! Per-tenant limits and process-wide load shedding: what keeps one noisy tenant from starving
//! the others, and an overloaded process from growing memory instead of saying no.
//!
//! - **Submission rate**: a token bucket per tenant (GCRA, `governor`); over it, `429` with the
//!   time until a token is free as `Retry-After`.
//! - **Active jobs**: a cap on a tenant's queued, running and retry-scheduled jobs. The count
//!   comes from the read model (`job_stats`), read at most once a second per tenant, plus what
//!   this process accepted since; so it is exact up to the projector's lag. While Postgres is
//!   unreachable the last count is used (submissions never need Postgres).
//! - **Live streams**: SSE and WebSocket subscriptions per tenant and in all, per process.
//! - **Requests in flight**: a process-wide bound on requests being handled; over it, `503`
//!   with `Retry-After`, at once.
//!
//! All limits are per API process: with N processes behind a load balancer, a tenant gets up to
//! N times the rate. Zero turns a limit off.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::Tenant;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The configured limits. Zero means unlimited.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Submissions per second per tenant (a job of a batch counts as one).
    pub submit_rate: u32,
    /// Submissions a tenant may make at once above its rate.
    pub submit_burst: u32,
    /// Queued, running and retry-scheduled jobs per tenant.
    pub max_active_jobs: u64,
    /// Open SSE and WebSocket streams per tenant.
    pub max_streams_per_tenant: usize,
    /// Open SSE and WebSocket streams in all.
    pub max_streams: usize,
    /// Requests being handled at once (live streams count only while they start).
    pub max_inflight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            submit_rate: 500,
            submit_burst: 1000,
            max_active_jobs: 100_000,
            max_streams_per_tenant: 256,
            max_streams: 10_000,
            max_inflight: 2048,
        }
    }
}

/// How long a tenant's active-jobs count is used before it is read again.
const ACTIVE_TTL: Duration = Duration::from_secs(1);
/// How long reading it may take before the last count is used.
const ACTIVE_QUERY_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Default, Clone, Copy)]
struct ActiveCount {
    /// From the read model, as of `read_at`.
    projected: i64,
    /// Accepted by this process since.
    accepted_since: i64,
    read_at: Option<Instant>,
    /// A request is reading it now: the others go on with the last count.
    reading: bool,
}

/// The limits in force, with their state.
pub(crate) struct Guard {
    limits: Limits,
    rate: Option<DefaultKeyedRateLimiter<Tenant>>,
    active: Mutex<HashMap<Tenant, ActiveCount>>,
    streams: Arc<Mutex<StreamCounts>>,
    inflight: Arc<Semaphore>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct StreamCounts {
    total: usize,
    per_tenant: HashMap<Tenant, usize>,
}

/// An open live stream; counted until dropped.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    tenant: Tenant,
    transport: &'static str,
    counts: Arc<Mutex<StreamCounts>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().expect("stream counts poisoned");
        c.total -= 1;
        if let Some(n) = c.per_tenant.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                c.per_tenant.remove(&self.tenant);
            }
        }
        metrics::gauge!("conveyor_live_subscribers", "transport" => self.transport).decrement(1.0);
    }
}

fn too_many(detail: String, wait: Duration) -> ApiError {
    metrics::counter!("conveyor_rejected_requests_total", "reason" => "rate_limit").increment(1);
    ApiError::TooManyRequests {
        detail,
        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
    }
}

impl Guard {
    pub(crate) fn new(limits: Limits) -> Self {
        let rate = NonZeroU32::new(limits.submit_rate).map(|rate| {
            let burst = NonZeroU32::new(limits.submit_burst.max(limits.submit_rate))
                .expect("burst is at least the rate");
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            inflight: Arc::new(Semaphore::new(if limits.max_inflight == 0 {
                Semaphore::MAX_PERMITS
            } else {
                limits.max_inflight
            })),
            limits,
            rate,
            active: Mutex::default(),
            streams: Arc::default(),
        }
    }

    /// Takes `n` submissions from the tenant's bucket, or says when to come back.
    pub(crate) fn check_rate(&self, tenant: &Tenant, n: u32) -> Result<(), ApiError> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        let n = NonZeroU32::new(n.max(1)).expect("at least one");
        match rate.check_key_n(tenant, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(too_many(
                format!(
                    "too many submissions for tenant `{tenant}` (limit {} per second)",
                    self.limits.submit_rate
                ),
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
            Err(_) => Err(ApiError::TooManyRequests {
                detail: format!(
                    "a batch of {n} is larger than tenant `{tenant}` may submit at once ({})",
                    self.limits.submit_burst
                ),
                retry_after_secs: 1,
            }),
        }
    }

    /// Reserves `n` more active jobs for the tenant, or refuses with 429.
    pub(crate) async fn reserve_active(
        &self,
        db: &PgPool,
        tenant: &Tenant,
        n: u64,
    ) -> Result<(), ApiError> {
        let max = self.limits.max_active_jobs;
        if max == 0 {
            return Ok(());
        }
        let read_now = {
            let mut active = self.active.lock().expect("active counts poisoned");
            let c = active.entry(tenant.clone()).or_default();
            let stale = c.read_at.is_none_or(|t| t.elapsed() >= ACTIVE_TTL);
            let read_now = stale && !c.reading;
            c.reading |= read_now;
            read_now
        };
        if read_now {
            let read = tokio::time::timeout(
                ACTIVE_QUERY_TIMEOUT,
                readmodel::stats::active_jobs(db, tenant),
            )
            .await;
            let mut active = self.active.lock().expect("active counts poisoned");
            let c = active.entry(tenant.clone()).or_default();
            c.reading = false;
            c.read_at = Some(Instant::now());
            // Postgres slow or down: go on with the last count, and read again later.
            if let Ok(Ok(projected)) = read {
                c.projected = projected;
                c.accepted_since = 0;
            }
        }
        let mut active = self.active.lock().expect("active counts poisoned");
        let c = active.entry(tenant.clone()).or_default();
        let now = u64::try_from(c.projected + c.accepted_since).unwrap_or(0);
        if now + n > max {
            metrics::counter!("conveyor_rejected_requests_total", "reason" => "active_jobs")
                .increment(1);
            return Err(ApiError::TooManyRequests {
                detail: format!(
                    "tenant `{tenant}` has {now} jobs queued or running, the most it may have is {max}; submit more as they finish"
                ),
                retry_after_secs: 2,
            });
        }
        c.accepted_since += i64::try_from(n).unwrap_or(i64::MAX);
        Ok(())
    }

    /// Gives back a reservation whose jobs were not accepted after all.
    pub(crate) fn release_active(&self, tenant: &Tenant, n: u64) {
        let mut active = self.active.lock().expect("active counts poisoned");
        if let Some(c) = active.get_mut(tenant) {
            c.accepted_since -= i64::try_from(n).unwrap_or(0);
        }
    }

    /// A slot for a live stream of `tenant` (`transport`: `sse` or `websocket`), or 429.
    pub(crate) fn open_stream(
        &self,
        tenant: &Tenant,
        transport: &'static str,
    ) -> Result<StreamSlot, ApiError> {
        let mut c = self.streams.lock().expect("stream counts poisoned");
        let mine = c.per_tenant.get(tenant).copied().unwrap_or(0);
        let (per_tenant, total) = (self.limits.max_streams_per_tenant, self.limits.max_streams);
        if per_tenant > 0 && mine >= per_tenant {
            metrics::counter!("conveyor_rejected_requests_total", "reason" => "streams")
                .increment(1);
            return Err(ApiError::TooManyRequests {
                detail: format!(
                    "tenant `{tenant}` has {mine} live streams open on this server, the most it may have"
                ),
                retry_after_secs: 5,
            });
        }
        if total > 0 && c.total >= total {
            metrics::counter!("conveyor_rejected_requests_total", "reason" => "streams")
                .increment(1);
            return Err(ApiError::Overloaded(
                "this server has as many live streams open as it takes".into(),
            ));
        }
        c.total += 1;
        *c.per_tenant.entry(tenant.clone()).or_default() += 1;
        metrics::gauge!("conveyor_live_subscribers", "transport" => transport).increment(1.0);
        Ok(StreamSlot {
            tenant: tenant.clone(),
            transport,
            counts: self.streams.clone(),
        })
    }

    /// A slot for a request in flight, or `None` when the process is at its bound.
    pub(crate) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.inflight.clone().try_acquire_owned().ok()
    }

    /// Forgets idle tenants' rate state (keeps memory bounded by active tenants).
    pub(crate) fn housekeeping(&self) {
        if let Some(rate) = &self.rate {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
        let mut active = self.active.lock().expect("active counts poisoned");
        active.retain(|_, c| {
            c.read_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(t: &str) -> Tenant {
        Tenant::parse(t).unwrap()
    }

    #[test]
    fn the_rate_is_per_tenant() {
        let g = Guard::new(Limits {
            submit_rate: 1,
            submit_burst: 3,
            ..Limits::default()
        });
        for _ in 0..3 {
            g.check_rate(&tenant("a"), 1).unwrap();
        }
        match g.check_rate(&tenant("a"), 1) {
            Err(ApiError::TooManyRequests {
                retry_after_secs, ..
            }) => assert_eq!(retry_after_secs, 1),
            other => panic!("{other:?}"),
        }
        g.check_rate(&tenant("b"), 3)
            .expect("another tenant has its own bucket");
        assert!(
            g.check_rate(&tenant("c"), 4).is_err(),
            "larger than the burst"
        );
    }

    #[test]
    fn stream_slots_are_counted_until_dropped() {
        let g = Guard::new(Limits {
            max_streams_per_tenant: 2,
            max_streams: 3,
            ..Limits::default()
        });
        let a1 = g.open_stream(&tenant("a"), "sse").unwrap();
        let _a2 = g.open_stream(&tenant("a"), "sse").unwrap();
        assert!(matches!(
            g.open_stream(&tenant("a"), "sse"),
            Err(ApiError::TooManyRequests { .. })
        ));
        let _b1 = g.open_stream(&tenant("b"), "sse").unwrap();
        assert!(matches!(
            g.open_stream(&tenant("c"), "sse"),
            Err(ApiError::Overloaded(_))
        ));
        drop(a1);
        g.open_stream(&tenant("a"), "sse")
            .expect("a slot was freed");
    }
}

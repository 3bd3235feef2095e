//! Retry delays. One policy serves every place that tries again: a job's next attempt, a webhook
//! delivery, and the loops that reconnect to NATS or Postgres after a failure.

use std::time::Duration;

/// The waits while a service comes (back) up: NATS or Postgres at a role's start, a JetStream
/// leader being elected while streams are provisioned.
pub const SERVICE_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(250), Duration::from_secs(5));

/// Exponential backoff: the `n`-th retry waits `base * 2^(n-1)`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl RetryPolicy {
    /// A policy doubling from `base` up to `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The delay before retry `n` (1-based; 0 counts as 1).
    pub fn delay(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// [`RetryPolicy::delay`] moved to a point of its upper half picked by `jitter` (in `[0, 1)`,
    /// a random number from the caller), so that retries of many jobs failing together spread
    /// out while the policy itself stays deterministic.
    pub fn jittered(&self, n: u32, jitter: f64) -> Duration {
        let d = self.delay(n);
        d / 2 + d.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    }

    /// The delays of a loop that retries a failing call: `delay(1)`, `delay(2)`, …
    pub fn backoff(self) -> Backoff {
        Backoff {
            policy: self,
            retries: 0,
        }
    }
}

/// The delays of one run of retries (see [`RetryPolicy::backoff`]).
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    retries: u32,
}

impl Backoff {
    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        self.retries = self.retries.saturating_add(1);
        self.policy.delay(self.retries)
    }

    /// Starts over from the first delay (after a success).
    pub fn reset(&mut self) {
        self.retries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_and_caps() {
        let p = RetryPolicy::new(100 * MS, 1000 * MS);
        let delays: Vec<_> = (0..7).map(|n| p.delay(n)).collect();
        assert_eq!(
            delays,
            [100, 100, 200, 400, 800, 1000, 1000].map(|ms| ms * MS)
        );
        assert_eq!(p.delay(u32::MAX), 1000 * MS);
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let p = RetryPolicy::new(100 * MS, 1000 * MS);
        assert_eq!(p.jittered(3, 0.0), 200 * MS);
        assert_eq!(p.jittered(3, 0.5), 300 * MS);
        assert!(p.jittered(3, 0.999) < 400 * MS);
        assert_eq!(p.jittered(3, 7.0), 400 * MS);
    }

    #[test]
    fn backoff_runs_and_resets() {
        let mut b = RetryPolicy::new(250 * MS, 1000 * MS).backoff();
        let run: Vec<_> = (0..4).map(|_| b.next_delay()).collect();
        assert_eq!(run, [250, 500, 1000, 1000].map(|ms| ms * MS));
        b.reset();
        assert_eq!(b.next_delay(), 250 * MS);
    }
}

//! The backoff of work retried in the background (removals a platform refused): a delay
//! that doubles per failed attempt up to a bound, drawn from its upper half (jitter). Depends
//! on nothing in the crate but `util`, so that `config` can hold one without depending on
//! `service`.

use std::time::Duration;

use crate::util::{now_millis, random_fraction};

/// Backoff of background removals: `initial`, doubling per failed attempt up to `max`, each
/// delay drawn uniformly from its upper half (jitter).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// `initial` unless configured (`[server] retry_initial_ms`).
    pub const DEFAULT_INITIAL: Duration = Duration::from_secs(1);
    /// `max` unless configured (`[server] retry_max_ms`).
    pub const DEFAULT_MAX: Duration = Duration::from_secs(60);

    /// The delay before the attempt after `failures` failed ones.
    pub fn delay(&self, failures: u32) -> Duration {
        let doubled = self
            .initial
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        doubled.min(self.max).mul_f64(0.5 + 0.5 * random_fraction())
    }

    /// When the attempt after `failures` failed ones is due, in ms since the Unix epoch (now
    /// plus [`delay`](RetryPolicy::delay)).
    pub fn next_at(&self, failures: u32) -> i64 {
        now_millis() + self.delay(failures).as_millis() as i64
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: RetryPolicy::DEFAULT_INITIAL,
            max: RetryPolicy::DEFAULT_MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_attempt_is_due_after_the_delay_of_its_failures() {
        let p = RetryPolicy {
            initial: Duration::from_millis(1000),
            max: Duration::from_millis(8000),
        };
        let before = now_millis();
        let at = p.next_at(3);
        let after = now_millis();
        assert!(
            at >= before + 2000 && at <= after + 4000,
            "{at} not 2-4 s after {before}"
        );
    }
}

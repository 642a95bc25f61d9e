//! What the turn loop needs from the outside world, injected so that it
//! never touches a real clock, a timer or a runtime: [`Clock`], [`Sleep`],
//! and the [`AbortSignal`] that cancels a turn.

use std::time::Duration;

pub use dispatch_protocol::abort::{AbortSignal, Aborted};
use dispatch_protocol::BoxFuture;

/// Milliseconds since some fixed point (for durations only).
pub trait Clock: Send + Sync {
    /// Now, in milliseconds.
    fn now_ms(&self) -> u64;
}

/// The real [`Clock`]: milliseconds since it was made, from the monotonic
/// `std::time::Instant` (no I/O, no runtime). Tests inject fakes instead.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock(std::time::Instant);

impl MonotonicClock {
    /// A clock starting now.
    pub fn start() -> Self {
        MonotonicClock(std::time::Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Waits (the retry backoff). A runtime's timer in production, a fake that
/// returns at once in tests.
pub trait Sleep: Send + Sync {
    /// Resolve after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<()>;
}

/// The retry schedule for retryable provider errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before retry N (0-based); its length is the most retries.
    pub delays: Vec<Duration>,
    /// The most time all retries of one step may wait in total.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    /// 1 s, 2 s, 4 s, 8 s, 16 s; at most 60 s of waiting per step.
    fn default() -> Self {
        RetryPolicy {
            delays: [1, 2, 4, 8, 16].into_iter().map(Duration::from_secs).collect(),
            budget: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        RetryPolicy { delays: Vec::new(), budget: Duration::ZERO }
    }

    /// The wait before retry `attempt`, honouring a server's `Retry-After`
    /// (the longer of the two), or `None` when the schedule or the budget
    /// (given what was `spent` already) is exhausted.
    pub fn delay_for(
        &self,
        attempt: usize,
        retry_after: Option<Duration>,
        spent: Duration,
    ) -> Option<Duration> {
        let scheduled = *self.delays.get(attempt)?;
        let delay = retry_after.map_or(scheduled, |ra| ra.max(scheduled));
        (spent + delay <= self.budget).then_some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule_honours_retry_after_and_the_budget() {
        let p = RetryPolicy {
            delays: vec![Duration::from_secs(1), Duration::from_secs(2)],
            budget: Duration::from_secs(10),
        };
        assert_eq!(p.delay_for(0, None, Duration::ZERO), Some(Duration::from_secs(1)));
        assert_eq!(
            p.delay_for(0, Some(Duration::from_secs(5)), Duration::ZERO),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            p.delay_for(1, Some(Duration::from_millis(10)), Duration::ZERO),
            Some(Duration::from_secs(2))
        );
        assert_eq!(p.delay_for(2, None, Duration::ZERO), None, "schedule exhausted");
        assert_eq!(p.delay_for(1, None, Duration::from_secs(9)), None, "budget exhausted");
        assert_eq!(RetryPolicy::none().delay_for(0, None, Duration::ZERO), None);
    }
}

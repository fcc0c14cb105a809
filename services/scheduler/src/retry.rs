//! The failure policy: when a failed task runs again, and when a worker has
//! failed a job often enough to be kept away from it.

use std::time::Duration;

use crate::task_state::TaskEvent;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts a task gets before it fails for good.
    pub max_attempts: u32,
    /// Delay before the second attempt; it doubles with each further one.
    pub base_delay: Duration,
    /// Cap on the delay.
    pub max_delay: Duration,
    /// Failed attempts of one job's tasks after which a worker is blocklisted for the job.
    pub blocklist_after: u32,
    /// How long an attempt a previous leader dispatched waits for its worker
    /// to reconnect and confirm it before it is lost and requeued. Workers
    /// keep rendering through a failover; this is their time to come back.
    pub reclaim_window: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(300),
            blocklist_after: 3,
            reclaim_window: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// What the task's `failures`-th failed attempt (counted from 1) leads
    /// to, and after what delay. `jitter` is a random number in [0, 1),
    /// given by the caller so that the policy stays a pure function.
    pub fn on_failure(&self, failures: u32, jitter: f64) -> (TaskEvent, Option<Duration>) {
        if failures >= self.max_attempts {
            return (TaskEvent::FailFinally, None);
        }
        (
            TaskEvent::FailAndRetry,
            Some(self.delay_after(failures, jitter)),
        )
    }

    /// Whether a worker with `failures` failed attempts of a job is blocklisted for it.
    pub fn blocklists(&self, failures: u32) -> bool {
        failures >= self.blocklist_after
    }

    /// Exponential backoff with "full jitter" in its upper half, so that many
    /// tasks failing together do not all come back at the same instant.
    fn delay_after(&self, attempt: u32, jitter: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let nominal = self
            .base_delay
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        nominal.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_until_the_last_attempt() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.on_failure(1, 0.5).0, TaskEvent::FailAndRetry);
        assert_eq!(policy.on_failure(2, 0.5).0, TaskEvent::FailAndRetry);
        assert_eq!(policy.on_failure(3, 0.5), (TaskEvent::FailFinally, None));
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let policy = RetryPolicy {
            max_attempts: 100,
            ..RetryPolicy::default()
        };
        let first = policy.on_failure(1, 0.99).1.unwrap();
        let third = policy.on_failure(3, 0.0).1.unwrap();
        assert!(first <= Duration::from_secs(2) && first >= Duration::from_secs(1));
        assert!(third >= Duration::from_secs(4), "{third:?}");
        assert!(policy.on_failure(60, 0.99).1.unwrap() <= policy.max_delay);
    }

    #[test]
    fn jitter_spreads_the_upper_half_of_the_delay() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.on_failure(1, 0.0).1, Some(Duration::from_secs(1)));
        assert_eq!(policy.on_failure(1, 1.0).1, Some(Duration::from_secs(2)));
        assert_eq!(policy.on_failure(2, 0.5).1, Some(Duration::from_secs(3)));
    }
}

//! When a failed delivery is tried again, without I/O: exponential backoff
//! from `base`, capped at `max_delay`, with jitter passed in (so tests pick
//! it), and no further attempt past the delivery's give-up time.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The wait after the first failed attempt.
    pub base: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
    /// How long after it is made a delivery is retried before it fails.
    pub give_up_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(5),
            max_delay: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

impl Backoff {
    /// The wait after `attempts` failed attempts (1 for the first), with
    /// `jitter` in [0, 1): between half and all of `base * 2^(attempts-1)`
    /// (capped), so receivers recovering from an outage are not hit by
    /// every delivery at once.
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        let exponent = attempts.saturating_sub(1).min(30);
        let full = self
            .base
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// The next attempt's time after `attempts` failed ones at `now`, or
    /// `None` when it would fall after `give_up_at`: the delivery fails.
    pub fn next_attempt(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        give_up_at: chrono::DateTime<chrono::Utc>,
        attempts: u32,
        jitter: f64,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let delay = chrono::Duration::from_std(self.delay(attempts, jitter)).ok()?;
        let next = now + delay;
        (next <= give_up_at).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Backoff {
        Backoff {
            base: Duration::from_secs(5),
            max_delay: Duration::from_secs(60),
            give_up_after: Duration::from_secs(300),
        }
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let b = policy();
        let full: Vec<u64> = (1..=6).map(|n| b.delay(n, 1.0).as_secs()).collect();
        assert_eq!(full, [5, 10, 20, 40, 60, 60]);
        // Without jitter's upper half, half the wait.
        assert_eq!(b.delay(2, 0.0), Duration::from_secs(5));
        assert_eq!(b.delay(u32::MAX, 0.5), Duration::from_secs(45));
    }

    #[test]
    fn gives_up_past_the_window() {
        let b = policy();
        let start = chrono::DateTime::from_timestamp(1_000_000, 0).expect("a time");
        let give_up = start + chrono::Duration::seconds(300);
        assert_eq!(
            b.next_attempt(start, give_up, 1, 1.0),
            Some(start + chrono::Duration::seconds(5))
        );
        let late = start + chrono::Duration::seconds(290);
        assert_eq!(b.next_attempt(late, give_up, 5, 0.0), None);
    }
}

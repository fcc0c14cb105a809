//! Per-token rate limits (GCRA through `governor`), reported the way the
//! IETF RateLimit header fields draft describes.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderValue};
use uuid::Uuid;

type Keyed =
    RateLimiter<Uuid, DefaultKeyedStateStore<Uuid>, DefaultClock, StateInformationMiddleware>;

pub struct TokenRateLimiter {
    limiter: Keyed,
    clock: DefaultClock,
    per_second: u32,
    burst: u32,
}

/// The outcome of one check.
pub enum Verdict {
    Allowed { remaining: u32 },
    Limited { retry_after: Duration },
}

impl TokenRateLimiter {
    /// `per_second` calls a second on average, with bursts of up to `burst`.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self {
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            clock: DefaultClock::default(),
            per_second: per_second.get(),
            burst: burst.get(),
        }
    }

    pub fn check(&self, token: Uuid) -> Verdict {
        match self.limiter.check_key(&token) {
            Ok(snapshot) => Verdict::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Verdict::Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// Forgets tokens idle long enough to be back at full burst; called
    /// periodically so the key table stays bounded by the active tokens.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds
    /// until the full burst is available again).
    pub fn headers(&self, verdict: &Verdict, headers: &mut HeaderMap) {
        let (remaining, reset) = match verdict {
            Verdict::Allowed { remaining } => {
                let used = self.burst.saturating_sub(*remaining);
                (*remaining, u64::from(used.div_ceil(self.per_second)))
            }
            Verdict::Limited { retry_after } => (0, seconds_ceil(*retry_after)),
        };
        headers.insert("ratelimit-limit", HeaderValue::from(self.burst));
        headers.insert("ratelimit-remaining", HeaderValue::from(remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(reset));
        if let Verdict::Limited { retry_after } = verdict {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(seconds_ceil(*retry_after)),
            );
        }
    }
}

/// Whole seconds, rounded up and at least 1, as Retry-After wants them.
pub(crate) fn seconds_ceil(duration: Duration) -> u64 {
    duration.as_secs_f64().ceil().max(1.0) as u64
}

//! Notices a renderer that stopped printing: hung on a network path, a
//! licence server or a deadlock, it would otherwise hold its slot until the
//! task's maximum run time, if it has one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Fires when no output line arrived for the assignment's `stall_seconds`;
/// never fires when that is 0.
pub struct StallTimer {
    limit: Option<Duration>,
    sleep: Pin<Box<Sleep>>,
}

impl StallTimer {
    pub fn new(stall_seconds: u32) -> Self {
        let limit = (stall_seconds > 0).then(|| Duration::from_secs(stall_seconds.into()));
        let first = limit.unwrap_or(Duration::ZERO);
        Self {
            limit,
            sleep: Box::pin(tokio::time::sleep(first)),
        }
    }

    /// Output arrived: the renderer gets a full `stall_seconds` again.
    pub fn reset(&mut self) {
        if let Some(limit) = self.limit {
            self.sleep.as_mut().reset(Instant::now() + limit);
        }
    }

    /// Completes once the renderer has been silent for too long.
    pub fn expired(&mut self) -> Expired<'_> {
        Expired { timer: self }
    }
}

/// The future returned by [`StallTimer::expired`].
pub struct Expired<'a> {
    timer: &'a mut StallTimer,
}

impl Future for Expired<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.timer.limit.is_none() {
            return Poll::Pending;
        }
        self.timer.sleep.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn zero_means_never() {
        let mut timer = StallTimer::new(0);
        let fired = tokio::time::timeout(Duration::from_millis(50), timer.expired()).await;
        assert!(fired.is_err());
    }
}

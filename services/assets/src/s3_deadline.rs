//! Deadlines for the store calls that move bytes.
//!
//! The SDK bounds connecting, not answering. A store that takes a request
//! and never answers it holds the upload or download, and whoever waits on
//! it, for ever: CI saw it once, when Garage took part 511 of a 4 GiB
//! upload and did not answer in the next 80 minutes. So each call moving
//! bytes gets a deadline from the bytes it moves, at a rate far below any
//! working store, and is tried again when the deadline passes. Every call
//! here is idempotent (a part, a range, a whole object at its content
//! key), so trying again is safe.

use std::future::Future;
use std::time::Duration;

use crate::error::Error;

/// What any call may take, however few bytes it moves: a round trip to a
/// store under load, with room to spare.
const FLOOR: Duration = Duration::from_secs(30);
/// Bytes per second below which a transfer counts as stalled: far below
/// a store on the same network (hundreds of MiB/s) or a WAN to AWS.
const SLOWEST_BYTES_PER_SECOND: u64 = 1024 * 1024;
/// Tries of a call that passes its deadline before the caller is told.
/// Errors the store answers with are the SDK's to retry, not these.
const ATTEMPTS: u32 = 3;

/// How long a call moving `bytes` may take before it is given up.
pub fn deadline(bytes: u64) -> Duration {
    FLOOR + Duration::from_secs(bytes / SLOWEST_BYTES_PER_SECOND)
}

/// What any one try of any store call may take: above the deadline of the
/// largest part a streamed upload sends, so it only ever catches calls
/// with no deadline of their own (a HEAD, a list, completing an upload).
pub fn backstop() -> Duration {
    deadline(crate::part_plan::part_bytes(crate::part_plan::MAX_PARTS) as u64) + FLOOR
}

/// Runs `call` (which moves `bytes`) until one try finishes within its
/// deadline, at most [`ATTEMPTS`] times; a try that finishes with an error
/// ends it there.
pub async fn within_deadline<T, F, Fut>(
    operation: &'static str,
    bytes: u64,
    mut call: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let limit = deadline(bytes);
    for attempt in 1..=ATTEMPTS {
        match tokio::time::timeout(limit, call()).await {
            Ok(finished) => return finished,
            Err(_) => {
                tracing::warn!(
                    operation,
                    bytes,
                    attempt,
                    limit_secs = limit.as_secs(),
                    "the store did not answer in time; trying again"
                );
            }
        }
    }
    Err(Error::S3 {
        operation,
        message: format!(
            "the store did not answer within {} s, {ATTEMPTS} times",
            limit.as_secs()
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn deadlines_grow_with_the_bytes_moved() {
        assert_eq!(deadline(0), FLOOR);
        assert_eq!(deadline(8 * 1024 * 1024), FLOOR + Duration::from_secs(8));
        // The largest part a streamed upload sends (512 MiB).
        assert_eq!(
            deadline(512 * 1024 * 1024),
            FLOOR + Duration::from_secs(512)
        );
    }

    #[test]
    fn the_backstop_spares_every_call_with_a_deadline_of_its_own() {
        let largest_part = crate::part_plan::part_bytes(crate::part_plan::MAX_PARTS) as u64;
        assert!(backstop() > deadline(largest_part));
        assert!(backstop() > deadline(crate::s3_read::RANGE_BYTES));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_never_answered_is_tried_again_and_then_named_in_the_error() {
        let tries = AtomicU32::new(0);
        let outcome: Result<(), Error> = within_deadline("upload part", 0, || {
            tries.fetch_add(1, Ordering::SeqCst);
            std::future::pending()
        })
        .await;
        assert_eq!(tries.load(Ordering::SeqCst), ATTEMPTS);
        let message = outcome.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("upload part") && message.contains("did not answer"),
            "{message}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_try_gives_way_to_one_that_answers() {
        let tries = AtomicU32::new(0);
        let outcome = within_deadline("get object range", 1024, || {
            let this = tries.fetch_add(1, Ordering::SeqCst);
            async move {
                if this == 0 {
                    std::future::pending::<()>().await;
                }
                Ok(this)
            }
        })
        .await;
        assert_eq!(outcome.ok(), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_the_store_answered_is_not_tried_again() {
        let tries = AtomicU32::new(0);
        let outcome: Result<(), Error> = within_deadline("put object", 0, || {
            tries.fetch_add(1, Ordering::SeqCst);
            async {
                Err(Error::S3 {
                    operation: "put object",
                    message: "access denied".into(),
                })
            }
        })
        .await;
        assert!(outcome.is_err());
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{LocalFarmError, Result};
use crate::log_tail::TAIL_LINES;
use crate::process::ServiceProcess;

/// Pause between two checks of a condition.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Polls `ready` until it holds, failing early if `process` dies and with
/// [`LocalFarmError::NotReady`] once `timeout` has passed.
pub(crate) async fn wait_ready<F, Fut>(
    process: &mut ServiceProcess,
    what: &str,
    timeout: Duration,
    mut ready: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if ready().await {
            return Ok(());
        }
        process.check_running()?;
        if Instant::now() >= deadline {
            return Err(LocalFarmError::NotReady {
                name: process.name().to_owned(),
                what: what.to_owned(),
                waited: timeout,
                log: process.log_path().to_path_buf(),
                tail: process.log_tail(TAIL_LINES),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

//! The supervise stage, written once for every kind of [`Action`] (Kiln's
//! own commands, warm Blender frames, OpenJD session actions): reads its
//! lines into a [`LineSink`], and stops it when the task is cancelled (at
//! once, or after a grace to wind down), runs past its deadline (its own
//! timeout or the job's run time, whichever comes first), stays silent too
//! long, or breaks one of the sandbox's limits (memory and disk sampled
//! here; the kernel's own cgroup events read too). One loop, so that a
//! limit or a cancel means the same whichever way a step runs.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::sandbox::LimitHit;
use crate::sandbox::usage::{LimitSampler, SAMPLE_EVERY};
use crate::stall::StallTimer;
use crate::task::run::{Action, ActionEnd, ActionEvent};

/// How long to keep reading a killed action's output (lines already in its
/// pipes belong in its log).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the lines of a supervised action go.
pub trait LineSink: Send {
    fn line(&mut self, line: String) -> impl Future<Output = ()> + Send;
}

/// The limits an action runs under.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules {
    /// The action's own time limit (an OpenJD action's `timeout`), apart
    /// from the job's run time: it is reported as the action's.
    pub timeout: Option<Duration>,
    /// The job's maximum run time per task; 0 for none.
    pub max_run_seconds: u32,
    /// 0 for none.
    pub stall_seconds: u32,
}

impl Rules {
    /// When the action is killed for running too long, and the limit that
    /// says why: the sooner of its own timeout and the job's run time (its
    /// own on a tie).
    fn deadline(&self) -> Option<(Duration, Limit)> {
        let own = self.timeout.map(|timeout| {
            let seconds = timeout.as_secs();
            (timeout, Limit::Timeout { seconds })
        });
        let job = (self.max_run_seconds > 0).then(|| {
            let seconds = self.max_run_seconds;
            (
                Duration::from_secs(seconds.into()),
                Limit::RunTime { seconds },
            )
        });
        match (own, job) {
            (Some(own), Some(job)) if job.0 < own.0 => Some(job),
            (Some(own), _) => Some(own),
            (None, job) => job,
        }
    }
}

/// A limit that got an action killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The action's own timeout; its message wants the action's name first.
    Timeout {
        seconds: u64,
    },
    RunTime {
        seconds: u32,
    },
    Stall {
        seconds: u32,
    },
    Sandbox(LimitHit),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Timeout { seconds } => write!(f, "exceeded its timeout of {seconds} s"),
            Limit::RunTime { seconds } => write!(f, "exceeded maximum run time of {seconds} s"),
            Limit::Stall { seconds } => write!(f, "stalled: no output for {seconds} s"),
            Limit::Sandbox(hit) => write!(f, "{hit}"),
        }
    }
}

/// How supervision ended.
#[derive(Debug)]
pub enum Supervised {
    /// The action ended on its own.
    Ended(ActionEnd),
    /// It was killed for breaking a limit.
    Killed(Limit),
    /// The task was cancelled and the action stopped: nothing to report.
    Cancelled,
}

/// Follows `action` to its end, feeding its lines to `sink`.
pub async fn supervise(
    action: &mut dyn Action,
    rules: Rules,
    cancel: &CancellationToken,
    sink: &mut impl LineSink,
) -> Supervised {
    if let Some(note) = action.note() {
        sink.line(note).await;
    }
    let deadline = async {
        match rules.deadline() {
            Some((after, limit)) => {
                tokio::time::sleep(after).await;
                limit
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut stall = StallTimer::new(rules.stall_seconds);
    let mut sampling = tokio::time::interval(SAMPLE_EVERY);
    sampling.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sampler = LimitSampler::default();
    let killed = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                stop_cancelled(action, sink).await;
                return Supervised::Cancelled;
            }
            limit = &mut deadline => {
                tracing::warn!(%limit, "action ran too long; killing it");
                break limit;
            }
            _ = stall.expired() => {
                tracing::warn!(stall_seconds = rules.stall_seconds, "action stalled; killing it");
                break Limit::Stall { seconds: rules.stall_seconds };
            }
            _ = sampling.tick() => {
                if let Some(hit) = over_limit(action, &mut sampler).await {
                    tracing::warn!(limit = %hit, "action broke a limit; killing it");
                    // Killed whole at once (its cgroup), even a sandbox the
                    // action shares with others: it is over its limits.
                    if let Some(sandbox) = action.sandbox() {
                        sandbox.kill();
                    }
                    break Limit::Sandbox(hit);
                }
            }
            event = action.next() => match event {
                ActionEvent::Line(line) => {
                    stall.reset();
                    sink.line(line).await;
                }
                ActionEvent::Ended(end) => return Supervised::Ended(end),
            },
        }
    };
    action.kill().await;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, follow(action, sink)).await;
    Supervised::Killed(killed)
}

/// Stops a cancelled action: killed at once, or first asked to end and
/// given its grace to wind down, its lines still read meanwhile.
async fn stop_cancelled(action: &mut dyn Action, sink: &mut impl LineSink) {
    if let Some(grace) = action.cancel_grace() {
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "asking the cancelled action to end"
        );
        action.terminate();
        if tokio::time::timeout(grace, follow(action, sink))
            .await
            .is_err()
        {
            tracing::info!("the cancelled action outlived its grace; killing it");
        }
    }
    action.kill().await;
}

/// Feeds the action's lines to `sink` until it ends.
async fn follow(action: &mut dyn Action, sink: &mut impl LineSink) {
    while let ActionEvent::Line(line) = action.next().await {
        sink.line(line).await;
    }
}

/// The limit the action's sandbox is over, if any.
async fn over_limit(action: &dyn Action, sampler: &mut LimitSampler) -> Option<LimitHit> {
    let sandbox = action.sandbox()?;
    let outputs = action.outputs().outputs.path();
    sampler
        .over_limit(sandbox, action.memory_probe(), outputs)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(timeout: Option<u64>, max_run_seconds: u32) -> Rules {
        Rules {
            timeout: timeout.map(Duration::from_secs),
            max_run_seconds,
            stall_seconds: 0,
        }
    }

    #[test]
    fn the_sooner_deadline_names_its_limit() {
        assert_eq!(rules(None, 0).deadline(), None);
        assert_eq!(
            rules(Some(5), 0).deadline(),
            Some((Duration::from_secs(5), Limit::Timeout { seconds: 5 }))
        );
        assert_eq!(
            rules(None, 7).deadline(),
            Some((Duration::from_secs(7), Limit::RunTime { seconds: 7 }))
        );
        assert_eq!(
            rules(Some(9), 7).deadline(),
            Some((Duration::from_secs(7), Limit::RunTime { seconds: 7 }))
        );
        // On a tie the action's own timeout is the one it broke.
        assert_eq!(
            rules(Some(7), 7).deadline(),
            Some((Duration::from_secs(7), Limit::Timeout { seconds: 7 }))
        );
    }

    #[test]
    fn limits_keep_their_messages() {
        assert_eq!(
            Limit::Timeout { seconds: 3 }.to_string(),
            "exceeded its timeout of 3 s"
        );
        assert_eq!(
            Limit::RunTime { seconds: 60 }.to_string(),
            "exceeded maximum run time of 60 s"
        );
        assert_eq!(
            Limit::Stall { seconds: 600 }.to_string(),
            "stalled: no output for 600 s"
        );
    }
}

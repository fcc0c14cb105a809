//! The supervise stage, written once for every kind of [`Action`]: reads
//! its lines into a [`LineSink`], and kills it when the task is cancelled,
//! runs past its deadline, stays silent too long, or breaks one of the
//! sandbox's limits (memory and disk sampled here; the kernel's own
//! cgroup events read too).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::sandbox::LimitHit;
use crate::sandbox::usage::{LimitSampler, SAMPLE_EVERY};
use crate::stall::StallTimer;
use crate::task::run::{Action, ActionEnd, ActionEvent};

/// Where the lines of a supervised action go.
pub trait LineSink: Send {
    fn line(&mut self, line: String) -> impl Future<Output = ()> + Send;
}

/// The assignment's own limits.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// 0 for none.
    pub max_run_seconds: u32,
    /// 0 for none.
    pub stall_seconds: u32,
}

/// A limit that got an action killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    RunTime { seconds: u32 },
    Stall { seconds: u32 },
    Sandbox(LimitHit),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
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
    /// The task was cancelled and the action killed: nothing to report.
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
    let deadline = run_deadline(rules.max_run_seconds);
    tokio::pin!(deadline);
    let mut stall = StallTimer::new(rules.stall_seconds);
    let mut sampling = tokio::time::interval(SAMPLE_EVERY);
    sampling.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sampler = LimitSampler::default();
    let killed = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                action.kill().await;
                return Supervised::Cancelled;
            }
            _ = &mut deadline => {
                tracing::warn!(max_run_seconds = rules.max_run_seconds, "task ran too long; killing it");
                break Limit::RunTime { seconds: rules.max_run_seconds };
            }
            _ = stall.expired() => {
                tracing::warn!(stall_seconds = rules.stall_seconds, "task stalled; killing it");
                break Limit::Stall { seconds: rules.stall_seconds };
            }
            _ = sampling.tick() => {
                if let Some(hit) = over_limit(action, &mut sampler).await {
                    tracing::warn!(limit = %hit, "task broke a limit; killing it");
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
    Supervised::Killed(killed)
}

/// The limit the action's sandbox is over, if any.
async fn over_limit(action: &dyn Action, sampler: &mut LimitSampler) -> Option<LimitHit> {
    let sandbox = action.sandbox()?;
    let outputs = action.outputs().outputs.path();
    sampler
        .over_limit(sandbox, action.memory_probe(), outputs)
        .await
}

/// Never completes when `max_run_seconds` is 0.
async fn run_deadline(max_run_seconds: u32) {
    match max_run_seconds {
        0 => std::future::pending().await,
        limit => tokio::time::sleep(Duration::from_secs(limit.into())).await,
    }
}

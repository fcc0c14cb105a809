//! The supervise stage, written once for every kind of [`Action`]: reads
//! its lines into a [`LineSink`], and kills it when the task is cancelled,
//! runs past its deadline, stays silent too long, or breaks one of the
//! sandbox's limits (memory and disk sampled here; the kernel's own
//! cgroup events read too).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::sandbox::usage;
use crate::sandbox::{LimitHit, Usage};
use crate::stall::StallTimer;
use crate::task::run::{Action, ActionEnd, ActionEvent};

/// How often memory (and the kernel's limit events) is sampled.
const MEMORY_EVERY: Duration = Duration::from_millis(500);
/// How often the task's disk is measured (a directory walk).
const DISK_EVERY: Duration = Duration::from_secs(2);

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
    let mut sampling = tokio::time::interval(MEMORY_EVERY);
    sampling.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut disk_due = Instant::now() + DISK_EVERY;
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
                if let Some(hit) = over_limit(action, &mut disk_due).await {
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

/// The limit the action's sandbox is over, if any: the kernel's own
/// report first, then memory, then (every few seconds) disk and outputs.
async fn over_limit(action: &dyn Action, disk_due: &mut Instant) -> Option<LimitHit> {
    let sandbox = action.sandbox()?;
    if let Some(hit) = sandbox.kernel_hit() {
        return Some(hit);
    }
    let limits = sandbox.limits();
    let mut usage = Usage::default();
    if let Some(probe) = action.memory_probe() {
        usage.memory_bytes = tokio::task::spawn_blocking(move || probe.sample())
            .await
            .unwrap_or(0);
    }
    if Instant::now() >= *disk_due {
        *disk_due = Instant::now() + DISK_EVERY;
        let dirs = sandbox.writable_dirs();
        let outputs = action.outputs().outputs.path().to_path_buf();
        if let Ok(disk) = tokio::task::spawn_blocking(move || usage::measure(&dirs, &outputs)).await
        {
            usage.disk_bytes = if disk.truncated { u64::MAX } else { disk.total };
            usage.output_bytes = disk.outputs;
        }
    }
    limits.exceeded_by(&usage)
}

/// Never completes when `max_run_seconds` is 0.
async fn run_deadline(max_run_seconds: u32) {
    match max_run_seconds {
        0 => std::future::pending().await,
        limit => tokio::time::sleep(Duration::from_secs(limit.into())).await,
    }
}

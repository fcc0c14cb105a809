//! The core's gauges as a snapshot: the dispatch loop publishes it as
//! metrics (`scheduler_metrics.rs`); the core touches no global state.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::core::Core;
use crate::job_state::TaskCounts;

/// A task's expected run time before any of its step has finished.
pub const DEFAULT_TASK_SECONDS: f64 = 60.0;
/// How long a worker must have had nothing to do to count as idle.
pub const IDLE_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// Tasks of unfinished jobs, by state.
    pub tasks: TaskCounts,
    /// Tasks that could be dispatched now if a worker were free.
    pub queue_depth: usize,
    /// Workers with an open session.
    pub workers: usize,
    /// Workers idle for IDLE_AFTER while nothing runnable waits.
    pub idle_workers: usize,
    /// Per renderer: runnable work's expected run time over the slots of
    /// the workers that have it (every renderer a worker offers is listed).
    pub queue_wait_seconds: HashMap<String, f64>,
}

impl Core {
    /// The gauges now: the task counts walk every job; the queue's wait and
    /// depth come from the estimate admission keeps (`queue_estimate.rs`),
    /// built afresh after each tick, when the dispatch loop asks.
    pub fn gauges(&mut self, now: Instant) -> Gauges {
        let mut counts = TaskCounts::default();
        for job in self.jobs.values() {
            add_counts(&mut counts, &job.counts);
        }
        let estimate = self.estimate();
        let (queue_wait_seconds, depth) = (estimate.waits(), estimate.ready());
        let idle_workers = if depth > 0 {
            0
        } else {
            self.workers
                .values()
                .filter(|w| {
                    w.idle_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= IDLE_AFTER)
                })
                .count()
        };
        Gauges {
            tasks: counts,
            queue_depth: depth,
            workers: self.workers.len(),
            idle_workers,
            queue_wait_seconds,
        }
    }
}

fn add_counts(total: &mut TaskCounts, job: &TaskCounts) {
    total.total += job.total;
    total.waiting += job.waiting;
    total.in_flight += job.in_flight;
    total.succeeded += job.succeeded;
    total.failed += job.failed;
    total.cancelled += job.cancelled;
}

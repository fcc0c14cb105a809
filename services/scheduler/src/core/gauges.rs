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
    /// The gauges now; O(jobs × steps + workers).
    pub fn gauges(&self, now: Instant) -> Gauges {
        let mut counts = TaskCounts::default();
        for job in self.jobs.values() {
            add_counts(&mut counts, &job.counts);
        }
        let (queue_wait_seconds, depth) = self.queue_work();
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

    /// Per renderer, the estimated queue wait in seconds (see
    /// [`Gauges::queue_wait_seconds`]); admission control decides by it.
    pub fn queue_wait_seconds(&self) -> HashMap<String, f64> {
        self.queue_work().0
    }

    /// The queue wait per renderer, and the tasks that could be dispatched now.
    fn queue_work(&self) -> (HashMap<String, f64>, usize) {
        let mut work: HashMap<&str, f64> = HashMap::new();
        let mut depth = 0usize;
        for job in self.jobs.values() {
            if !job.is_dispatchable() {
                continue;
            }
            for (s, step) in job.steps.iter().enumerate() {
                if step.ready.is_empty() || !job.step_unblocked(s) {
                    continue;
                }
                depth += step.ready.len();
                let each = step.mean_run_seconds.unwrap_or(DEFAULT_TASK_SECONDS);
                *work.entry(step.command.as_str()).or_default() += each * step.ready.len() as f64;
            }
        }
        for worker in self.workers.values() {
            for renderer in &worker.capabilities.renderers {
                work.entry(renderer.name.as_str()).or_default();
            }
        }
        let waits = work
            .into_iter()
            .map(|(renderer, seconds)| {
                let slots = self.slots_for(renderer);
                (renderer.to_owned(), seconds / slots.max(1) as f64)
            })
            .collect();
        (waits, depth)
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

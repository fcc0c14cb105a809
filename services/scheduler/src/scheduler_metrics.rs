//! The scheduler's metrics, exported at `/metrics` by the ops endpoint. The
//! gauges are refreshed from the dispatch core on its tick; the histograms
//! are recorded where things happen.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::core::Core;
use crate::job_state::TaskCounts;

pub const TASKS: &str = "kiln_scheduler_tasks";
pub const QUEUE_DEPTH: &str = "kiln_scheduler_queue_depth";
pub const DISPATCH_LATENCY: &str = "kiln_scheduler_dispatch_latency_seconds";
pub const BATCH_WRITE: &str = "kiln_scheduler_batch_write_seconds";
pub const BATCH_TASKS: &str = "kiln_scheduler_batch_task_writes";
pub const EVENT_LAG: &str = "kiln_scheduler_event_lag_seconds";
pub const JOBS_FINISHED: &str = "kiln_scheduler_jobs_finished_total";
pub const WORKERS: &str = "kiln_scheduler_workers";
pub const IDLE_WORKERS: &str = "kiln_scheduler_idle_workers";
pub const QUEUE_WAIT: &str = "kiln_scheduler_estimated_queue_wait_seconds";

/// A task's expected run time before any of its step has finished.
pub const DEFAULT_TASK_SECONDS: f64 = 60.0;
/// How long a worker must have had nothing to do to count as idle.
const IDLE_AFTER: Duration = Duration::from_secs(300);

pub fn describe() {
    metrics::describe_gauge!(TASKS, "Tasks of unfinished jobs, by state");
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        "Tasks that could be dispatched now if a worker were free"
    );
    metrics::describe_histogram!(
        DISPATCH_LATENCY,
        metrics::Unit::Seconds,
        "Time from a task becoming runnable to its dispatch"
    );
    metrics::describe_histogram!(
        BATCH_WRITE,
        metrics::Unit::Seconds,
        "Time to commit one batch of state changes to Postgres"
    );
    metrics::describe_histogram!(BATCH_TASKS, "Task rows written per committed batch");
    metrics::describe_histogram!(
        EVENT_LAG,
        metrics::Unit::Seconds,
        "Time from a batch's commit to its events and assignments leaving"
    );
    metrics::describe_counter!(JOBS_FINISHED, "Jobs that reached a final state, by state");
    metrics::describe_gauge!(WORKERS, "Workers with an open session");
    metrics::describe_gauge!(
        IDLE_WORKERS,
        "Workers idle for 5 minutes while nothing runnable waits: how many a scaler may remove"
    );
    metrics::describe_gauge!(
        QUEUE_WAIT,
        metrics::Unit::Seconds,
        "Runnable work's expected run time divided by the slots of workers able to take it, by renderer"
    );
}

impl Core {
    /// Refreshes the gauges; O(jobs × steps + workers).
    pub fn publish_gauges(&self, now: Instant) {
        let mut counts = TaskCounts::default();
        let mut work: HashMap<&str, f64> = HashMap::new();
        let mut depth = 0usize;
        for job in self.jobs.values() {
            add_counts(&mut counts, &job.counts);
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
        for (state, n) in [
            ("waiting", counts.waiting),
            ("in_flight", counts.in_flight),
            ("succeeded", counts.succeeded),
            ("failed", counts.failed),
            ("cancelled", counts.cancelled),
        ] {
            metrics::gauge!(TASKS, "state" => state).set(n as f64);
        }
        metrics::gauge!(QUEUE_DEPTH).set(depth as f64);
        metrics::gauge!(WORKERS).set(self.workers.len() as f64);
        // Every renderer a worker offers gets a value, 0 when nothing waits for it.
        for worker in self.workers.values() {
            for renderer in &worker.capabilities.renderers {
                work.entry(renderer.name.as_str()).or_default();
            }
        }
        for (renderer, seconds) in work {
            let slots: usize = self
                .workers
                .values()
                .filter(|w| w.capabilities.renderers.iter().any(|r| r.name == renderer))
                .map(|w| w.slots)
                .sum();
            metrics::gauge!(QUEUE_WAIT, "renderer" => renderer.to_owned())
                .set(seconds / slots.max(1) as f64);
        }
        let idle = if depth > 0 {
            0
        } else {
            self.workers
                .values()
                .filter(|w| {
                    w.idle_since
                        .is_some_and(|t| now.duration_since(t) >= IDLE_AFTER)
                })
                .count()
        };
        metrics::gauge!(IDLE_WORKERS).set(idle as f64);
    }
}

fn add_counts(total: &mut TaskCounts, job: &TaskCounts) {
    total.waiting += job.waiting;
    total.in_flight += job.in_flight;
    total.succeeded += job.succeeded;
    total.failed += job.failed;
    total.cancelled += job.cancelled;
}

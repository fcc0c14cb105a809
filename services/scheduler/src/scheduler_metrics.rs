//! The scheduler's metrics, exported at `/metrics` by the ops endpoint. The
//! dispatch loop publishes the core's gauge snapshot on its tick and records
//! what each committed batch measured; the core itself touches no metrics.

use crate::core::batch::Observations;
use crate::core::gauges::Gauges;

pub const TASKS: &str = "kiln_scheduler_tasks";
pub const QUEUE_DEPTH: &str = "kiln_scheduler_queue_depth";
pub const DISPATCH_LATENCY: &str = "kiln_scheduler_dispatch_latency_seconds";
pub const BATCH_WRITE: &str = "kiln_scheduler_batch_write_seconds";
pub const BATCH_TASKS: &str = "kiln_scheduler_batch_task_writes";
pub const EVENT_LAG: &str = "kiln_scheduler_event_lag_seconds";
pub const JOBS_FINISHED: &str = "kiln_scheduler_jobs_finished_total";
pub const JOBS_DELETED: &str = "kiln_scheduler_jobs_deleted_total";
pub const WORKERS: &str = "kiln_scheduler_workers";
pub const IDLE_WORKERS: &str = "kiln_scheduler_idle_workers";
pub const QUEUE_WAIT: &str = "kiln_scheduler_estimated_queue_wait_seconds";

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
    metrics::describe_counter!(
        JOBS_DELETED,
        "Finished jobs deleted after the retention (--delete-finished-jobs-after-seconds)"
    );
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

/// Publishes the core's gauges.
pub fn publish(gauges: &Gauges) {
    let counts = &gauges.tasks;
    for (state, n) in [
        ("waiting", counts.waiting),
        ("in_flight", counts.in_flight),
        ("succeeded", counts.succeeded),
        ("failed", counts.failed),
        ("cancelled", counts.cancelled),
    ] {
        metrics::gauge!(TASKS, "state" => state).set(n as f64);
    }
    metrics::gauge!(QUEUE_DEPTH).set(gauges.queue_depth as f64);
    metrics::gauge!(WORKERS).set(gauges.workers as f64);
    for (renderer, seconds) in &gauges.queue_wait_seconds {
        metrics::gauge!(QUEUE_WAIT, "renderer" => renderer.clone()).set(*seconds);
    }
    metrics::gauge!(IDLE_WORKERS).set(gauges.idle_workers as f64);
}

/// Records what a committed batch measured.
pub fn record(observations: &Observations) {
    for seconds in &observations.dispatch_latencies {
        metrics::histogram!(DISPATCH_LATENCY).record(*seconds);
    }
    for state in &observations.jobs_finished {
        metrics::counter!(JOBS_FINISHED, "state" => state.as_str()).increment(1);
    }
}

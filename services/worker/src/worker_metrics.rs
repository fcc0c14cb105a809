//! The worker's metrics: tasks it ran and how long they took, and the host's
//! CPU and memory use.

use std::time::Duration;

pub const JOBS_PROCESSED: &str = "jobs_processed_total";
pub const JOB_DURATION: &str = "job_duration_seconds";
pub const CPU_USAGE: &str = "worker_cpu_usage_percent";
pub const MEMORY_USAGE: &str = "worker_memory_usage_bytes";
pub const TASKS_RUNNING: &str = "worker_tasks_running";
pub const ACCEPTING: &str = "worker_accepting_tasks";

/// How a task run ended, as the `status` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    Failed,
    /// Cancelled by the scheduler (a user cancelled its job).
    Cancelled,
    /// Given back unfinished: the worker was draining or its session ended.
    HandedBack,
}

impl RunStatus {
    fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::HandedBack => "handed_back",
        }
    }
}

pub fn describe() {
    metrics::describe_counter!(
        JOBS_PROCESSED,
        "Task runs this worker finished, by renderer (job_type) and how they ended (status)"
    );
    metrics::describe_histogram!(
        JOB_DURATION,
        metrics::Unit::Seconds,
        "How long this worker's task runs took, by renderer (job_type)"
    );
    metrics::describe_gauge!(CPU_USAGE, "CPU use of the whole host, 0 to 100");
    metrics::describe_gauge!(
        MEMORY_USAGE,
        metrics::Unit::Bytes,
        "Memory in use on the whole host"
    );
    metrics::describe_gauge!(TASKS_RUNNING, "Tasks this worker is running");
    metrics::describe_gauge!(
        ACCEPTING,
        "1 while this worker takes new tasks; 0 while it drains or is not ready"
    );
    crate::input_cache::describe();
}

/// Counts one finished task run of `job_type` (the renderer it ran).
pub fn task_finished(job_type: &str, status: RunStatus, took: Duration) {
    let job_type = job_type.to_owned();
    metrics::counter!(JOBS_PROCESSED, "job_type" => job_type.clone(), "status" => status.label())
        .increment(1);
    metrics::histogram!(JOB_DURATION, "job_type" => job_type).record(took.as_secs_f64());
}

//! Why a task is not running, from the same rules the pick order applies:
//! what a dashboard shows next to a task that waits.

use uuid::Uuid;

use crate::core::Core;
use crate::core::pick_order::{blocklisted, worker_fits_step};
use crate::task_state::TaskState;

/// The first reason, in the order the pick order checks them, that a
/// waiting task is not dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Its job is paused.
    JobPaused,
    /// Admission control holds its job back, for this reason.
    Held(String),
    /// Its job waits for these jobs to succeed.
    ForJobs(Vec<Uuid>),
    /// Its step waits for these steps to succeed.
    ForSteps(Vec<String>),
    /// A failed attempt's backoff has not run out.
    RetryBackoff,
    /// Its owner has as many tasks in flight as its share cap allows.
    OwnerAtCap { running: u64, cap: u64 },
    /// No connected worker matches its step (host requirements, renderer).
    NoMatchingWorker,
    /// Every connected worker that matches is blocklisted for its job.
    Blocklisted,
    /// Workers that could take it are busy: it waits its turn.
    WorkersBusy,
}

impl Core {
    /// Why the task waits, or `None` if it does not (in flight, finished,
    /// or no longer in memory).
    pub fn why_waiting(&self, task_id: Uuid) -> Option<Waiting> {
        let task = self.tasks.get(&task_id)?;
        if !matches!(task.state, TaskState::Pending | TaskState::WaitingRetry) {
            return None;
        }
        let job = self.jobs.get(&task.job_id)?;
        if job.paused {
            return Some(Waiting::JobPaused);
        }
        if let Some(reason) = &job.held {
            return Some(Waiting::Held(reason.clone()));
        }
        if !job.waiting_on.is_empty() {
            let mut jobs: Vec<Uuid> = job.waiting_on.iter().copied().collect();
            jobs.sort();
            return Some(Waiting::ForJobs(jobs));
        }
        let step = job.steps.get(task.step)?;
        let unfinished: Vec<String> = step
            .depends_on
            .iter()
            .filter_map(|&d| job.steps.get(d))
            .filter(|d| d.succeeded < d.total)
            .map(|d| d.name.clone())
            .collect();
        if !unfinished.is_empty() {
            return Some(Waiting::ForSteps(unfinished));
        }
        // A retry is queued again once its backoff runs out (still waiting_retry).
        if task.state == TaskState::WaitingRetry && !step.ready.contains(&task_id) {
            return Some(Waiting::RetryBackoff);
        }
        if let Some(cap) = self.shares.cap_of(&job.owner)
            && self.shares.at_cap(&job.owner)
        {
            return Some(Waiting::OwnerAtCap {
                running: self.shares.in_flight(&job.owner),
                cap,
            });
        }
        let matching: Vec<&String> = self
            .workers
            .iter()
            .filter(|(_, w)| worker_fits_step(job, task.step, w))
            .map(|(id, _)| id)
            .collect();
        if matching.is_empty() {
            return Some(Waiting::NoMatchingWorker);
        }
        if matching.iter().all(|id| blocklisted(job, id, &self.policy)) {
            return Some(Waiting::Blocklisted);
        }
        Some(Waiting::WorkersBusy)
    }
}

//! Which task a free worker gets: the order of dispatch.
//!
//! 1. A GPU worker first looks only at steps that need a GPU, and takes
//!    CPU-only work only when no GPU work it can run waits.
//! 2. Higher job priority first.
//! 3. Within a priority, the owner with the smallest share of the farm
//!    (tasks in flight divided by the owner's weight), and among equal
//!    shares the owner served least recently, so one user's huge job does
//!    not starve another's small one even on a single worker.
//! 4. Then submission order, then step order, then task order.

use std::cmp::Ordering;

use uuid::Uuid;

use crate::core::{Core, JobEntry, WorkerEntry};
use crate::task_state::TaskEvent;

/// A job a worker could take a task from, with what orders it.
struct Candidate {
    job_id: Uuid,
    priority: i32,
    share: f64,
    last_served: u64,
    seq: u64,
}

impl Core {
    /// Hands out tasks to free workers until no free worker can take one.
    pub fn dispatch_round(&mut self) {
        if !self.dispatch_wanted {
            return;
        }
        self.dispatch_wanted = false;
        let free: Vec<String> = self.free_workers.iter().cloned().collect();
        for worker_id in free {
            while self
                .workers
                .get(&worker_id)
                .is_some_and(WorkerEntry::has_free_slot)
            {
                let Some(task_id) = self.pick_for(&worker_id) else {
                    break;
                };
                self.assign(task_id, &worker_id);
            }
            if !self
                .workers
                .get(&worker_id)
                .is_some_and(WorkerEntry::has_free_slot)
            {
                self.free_workers.remove(&worker_id);
            }
        }
    }

    fn pick_for(&mut self, worker_id: &str) -> Option<Uuid> {
        let worker = self.workers.get(worker_id)?;
        let has_gpu = worker.capabilities.gpus > 0;
        if has_gpu && let Some(task) = self.pick(worker_id, true) {
            return Some(task);
        }
        self.pick(worker_id, false)
    }

    fn pick(&mut self, worker_id: &str, gpu_only: bool) -> Option<Uuid> {
        let mut candidates = self.candidates(worker_id, gpu_only);
        candidates.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.share.partial_cmp(&b.share).unwrap_or(Ordering::Equal))
                .then(a.last_served.cmp(&b.last_served))
                .then(a.seq.cmp(&b.seq))
        });
        for candidate in candidates {
            if let Some(task) = self.take_from(candidate.job_id, worker_id, gpu_only) {
                return Some(task);
            }
        }
        None
    }

    fn candidates(&self, worker_id: &str, gpu_only: bool) -> Vec<Candidate> {
        let Some(worker) = self.workers.get(worker_id) else {
            return Vec::new();
        };
        self.jobs
            .values()
            .filter(|job| job.is_dispatchable() && !self.blocklisted(job, worker_id))
            .filter(|job| runnable_step(job, worker, gpu_only).is_some())
            .map(|job| Candidate {
                job_id: job.id,
                priority: job.priority,
                share: self.owner_running.get(&job.owner).copied().unwrap_or(0) as f64
                    / self.weight_of(&job.owner),
                last_served: self.owner_served.get(&job.owner).copied().unwrap_or(0),
                seq: job.seq,
            })
            .collect()
    }

    fn blocklisted(&self, job: &JobEntry, worker_id: &str) -> bool {
        job.worker_failures
            .get(worker_id)
            .is_some_and(|&failures| self.policy.blocklists(failures))
    }

    /// Pops the first dispatchable task of the job for this worker, skipping
    /// queue entries whose task has moved on since it was queued.
    fn take_from(&mut self, job_id: Uuid, worker_id: &str, gpu_only: bool) -> Option<Uuid> {
        loop {
            let worker = self.workers.get(worker_id)?;
            let job = self.jobs.get(&job_id)?;
            let step = runnable_step(job, worker, gpu_only)?;
            let task_id = self.jobs.get_mut(&job_id)?.steps[step].ready.pop_front()?;
            let dispatchable = self
                .tasks
                .get(&task_id)
                .is_some_and(|t| TaskEvent::Dispatch.next(t.state).is_some());
            if dispatchable {
                return Some(task_id);
            }
        }
    }
}

/// The first step of the job with queued tasks that the worker can run.
fn runnable_step(job: &JobEntry, worker: &WorkerEntry, gpu_only: bool) -> Option<usize> {
    (0..job.steps.len()).find(|&s| {
        let step = &job.steps[s];
        !step.ready.is_empty()
            && (!gpu_only || step.requirements.needs_gpu())
            && job.step_unblocked(s)
            && step.requirements.matches(&worker.capabilities)
            && worker_has_renderer(worker, job, s)
    })
}

/// Whether the worker could take some step of the job (its requirements and renderer).
pub(crate) fn can_run_some_step(job: &JobEntry, worker: &WorkerEntry) -> bool {
    (0..job.steps.len()).any(|s| {
        job.steps[s].requirements.matches(&worker.capabilities)
            && worker_has_renderer(worker, job, s)
    })
}

/// Steps run one command; see [`crate::matching::runs_command`].
fn worker_has_renderer(worker: &WorkerEntry, job: &JobEntry, step: usize) -> bool {
    crate::matching::runs_command(&worker.capabilities, &job.steps[step].command)
}

//! Why a task is not running, from the same rules the pick order applies
//! and the same state it reads: what a dashboard (and `kiln status`) shows
//! next to a task that waits.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::core::Core;
use crate::core::model::{AdminState, JobEntry};
use crate::core::pick_order::{
    Candidate, blocklisted, has_ready_task, order, worker_could_run_step,
};
use crate::task_state::TaskState;

/// One reason a waiting task is not dispatched. A task may wait for
/// several; [`Core::explain`] lists every one that holds, in the order the
/// pick order checks them.
#[derive(Debug, Clone, PartialEq)]
pub enum Waiting {
    /// Its job is paused.
    JobPaused,
    /// Admission control holds its job back, for this reason.
    Held(String),
    /// Its job waits for these jobs to succeed.
    ForJobs(Vec<Uuid>),
    /// Its step waits for these steps to succeed.
    ForSteps(Vec<String>),
    /// A failed attempt's backoff has not run out (until when, if known).
    RetryBackoff(Option<DateTime<Utc>>),
    /// Its owner has as many tasks in flight as its share cap allows.
    OwnerAtCap { running: u64, cap: u64 },
    /// No connected worker could run its step: these requirements (and the
    /// renderer, as "renderer NAME") are met by none of them. Empty when no
    /// worker is connected at all.
    NoMatchingWorker(Vec<String>),
    /// Connected workers that could run its step but are kept away.
    WorkersExcluded(Vec<(String, Exclusion)>),
    /// Workers could take it: it waits its turn behind the jobs ahead in
    /// the queue (or for one of them to free a slot).
    Queued(QueuePlace),
}

/// Why a worker that could run a step is kept away from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    /// It failed too many of the job's tasks.
    Blocklisted,
    /// It lacks these of the job's tags.
    MissingTags(Vec<String>),
    Disabled,
    Draining,
}

impl Exclusion {
    pub fn describe(&self) -> String {
        match self {
            Exclusion::Blocklisted => "blocklisted".into(),
            Exclusion::MissingTags(tags) => format!("missing tags: {}", tags.join(", ")),
            Exclusion::Disabled => "disabled".into(),
            Exclusion::Draining => "draining".into(),
        }
    }
}

/// A job's place among the jobs with a task ready to run, in the order of
/// dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueuePlace {
    /// 1 = served first; 0 when the job has no task ready.
    pub position: usize,
    /// Jobs with a task ready to run.
    pub length: usize,
    pub ahead_higher_priority: usize,
}

/// A waiting task of a job, explained, with how many tasks of its step wait too.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskWaiting {
    pub task_id: Uuid,
    pub step: String,
    pub index: i32,
    pub similar: usize,
    pub reasons: Vec<Waiting>,
}

impl Core {
    /// The first reason the task waits, or `None` if it does not (in
    /// flight, finished, or no longer in memory).
    pub fn why_waiting(&self, task_id: Uuid) -> Option<Waiting> {
        self.explain(task_id)?.into_iter().next()
    }

    /// Every reason the task waits, the deciding one first; `None` if it
    /// does not wait.
    pub fn explain(&self, task_id: Uuid) -> Option<Vec<Waiting>> {
        let task = self.tasks.get(&task_id)?;
        if !matches!(task.state, TaskState::Pending | TaskState::WaitingRetry) {
            return None;
        }
        let job = self.jobs.get(&task.job_id)?;
        let step = job.steps.get(task.step)?;
        let mut reasons = Vec::new();
        if job.paused {
            reasons.push(Waiting::JobPaused);
        }
        if let Some(reason) = &job.held {
            reasons.push(Waiting::Held(reason.clone()));
        }
        if !job.waiting_on.is_empty() {
            let mut jobs: Vec<Uuid> = job.waiting_on.iter().copied().collect();
            jobs.sort();
            reasons.push(Waiting::ForJobs(jobs));
        }
        let unfinished: Vec<String> = step
            .depends_on
            .iter()
            .filter_map(|&d| job.steps.get(d))
            .filter(|d| d.succeeded < d.total)
            .map(|d| d.name.clone())
            .collect();
        if !unfinished.is_empty() {
            reasons.push(Waiting::ForSteps(unfinished));
        }
        // A retry is queued again once its backoff runs out (still waiting_retry).
        if task.state == TaskState::WaitingRetry && !step.ready.contains(&task_id) {
            reasons.push(Waiting::RetryBackoff(self.retry_due(task_id)));
        }
        if let Some(cap) = self.shares.cap_of(&job.owner)
            && self.shares.at_cap(&job.owner)
        {
            reasons.push(Waiting::OwnerAtCap {
                running: self.shares.in_flight(&job.owner),
                cap,
            });
        }
        // Its turn in the queue matters only once nothing else holds it.
        let held = !reasons.is_empty();
        for reason in self.worker_reasons(job, task.step) {
            if !(held && matches!(reason, Waiting::Queued(_))) {
                reasons.push(reason);
            }
        }
        Some(reasons)
    }

    /// The job's waiting tasks explained: the first of each step, with how
    /// many more of that step wait.
    pub fn explain_job(&self, job_id: Uuid) -> Vec<TaskWaiting> {
        let Some(job) = self.jobs.get(&job_id) else {
            return Vec::new();
        };
        let mut by_step: Vec<Option<TaskWaiting>> = vec![None; job.steps.len()];
        let mut tasks: Vec<_> = job
            .task_ids
            .iter()
            .filter_map(|id| self.tasks.get(id))
            .filter(|t| matches!(t.state, TaskState::Pending | TaskState::WaitingRetry))
            .collect();
        tasks.sort_by_key(|t| (t.step, t.index));
        for task in tasks {
            let Some(slot) = by_step.get_mut(task.step) else {
                continue;
            };
            match slot {
                Some(first) => first.similar += 1,
                None => {
                    *slot = Some(TaskWaiting {
                        task_id: task.id,
                        step: job.steps[task.step].name.clone(),
                        index: task.index,
                        similar: 0,
                        reasons: self.explain(task.id).unwrap_or_default(),
                    })
                }
            }
        }
        by_step.into_iter().flatten().collect()
    }

    /// The job's place in the queue of jobs with a task ready to run.
    pub fn queue_place(&self, job_id: Uuid) -> QueuePlace {
        let mut queue: Vec<Candidate> = self
            .jobs
            .values()
            .filter(|job| job.is_dispatchable() && has_ready_task(job))
            .map(|job| Candidate::of(job, &self.shares))
            .collect();
        queue.sort_by(order);
        let Some(at) = queue.iter().position(|c| c.job_id == job_id) else {
            return QueuePlace {
                length: queue.len(),
                ..QueuePlace::default()
            };
        };
        let priority = queue[at].priority;
        QueuePlace {
            position: at + 1,
            length: queue.len(),
            ahead_higher_priority: queue[..at].iter().filter(|c| c.priority > priority).count(),
        }
    }

    /// What the connected workers say about a step of a job: none could run
    /// it (and which requirements none meets), or all that could are kept
    /// away; or some could take it, and it waits its turn (with those kept
    /// away after).
    fn worker_reasons(&self, job: &JobEntry, step: usize) -> Vec<Waiting> {
        let mut could = Vec::new();
        for (id, worker) in &self.workers {
            if worker_could_run_step(job, step, worker) {
                could.push((id, worker));
            }
        }
        if could.is_empty() {
            return vec![Waiting::NoMatchingWorker(self.unmet_by_all(job, step))];
        }
        let mut excluded = Vec::new();
        let mut available = 0;
        for (id, worker) in could {
            let exclusion = if worker.admin == AdminState::Disabled {
                Some(Exclusion::Disabled)
            } else if worker.admin == AdminState::Draining {
                Some(Exclusion::Draining)
            } else if blocklisted(job, id, &self.policy) {
                Some(Exclusion::Blocklisted)
            } else if !worker.carries(&job.tags) {
                let missing = job.tags.difference(&worker.tags).cloned().collect();
                Some(Exclusion::MissingTags(missing))
            } else {
                None
            };
            match exclusion {
                Some(exclusion) => excluded.push((id.clone(), exclusion)),
                None => available += 1,
            }
        }
        excluded.sort_by(|a, b| a.0.cmp(&b.0));
        match (available, excluded.is_empty()) {
            (0, _) => vec![Waiting::WorkersExcluded(excluded)],
            (_, true) => vec![Waiting::Queued(self.queue_place(job.id))],
            // Some could take it: those kept away are worth knowing, after
            // the queue that decides.
            (_, false) => vec![
                Waiting::Queued(self.queue_place(job.id)),
                Waiting::WorkersExcluded(excluded),
            ],
        }
    }

    /// The step's requirements that no connected worker meets, and its
    /// renderer if none has it.
    fn unmet_by_all(&self, job: &JobEntry, step: usize) -> Vec<String> {
        let step = &job.steps[step];
        let mut unmet: Option<Vec<String>> = None;
        for worker in self.workers.values() {
            let mut theirs = step.requirements.unmet(&worker.capabilities);
            if !worker.has_renderer(&step.command) {
                theirs.push(format!("renderer {}", step.command));
            }
            unmet = Some(match unmet {
                None => theirs,
                Some(so_far) => so_far.into_iter().filter(|u| theirs.contains(u)).collect(),
            });
        }
        unmet.unwrap_or_default()
    }

    /// When a task's retry backoff runs out, on the wall clock.
    fn retry_due(&self, task_id: Uuid) -> Option<DateTime<Utc>> {
        let due = self
            .retries
            .iter()
            .find(|entry| entry.0.1 == task_id)
            .map(|entry| entry.0.0)?;
        let left = due.saturating_duration_since(self.now.instant);
        Some(self.now.wall + chrono::Duration::from_std(left).unwrap_or_default())
    }
}

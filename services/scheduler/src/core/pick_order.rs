//! Which task a free worker gets: the order of dispatch, decided here and
//! nowhere else.
//!
//! 1. A GPU worker first looks only at steps that need a GPU, and takes
//!    CPU-only work only when no GPU work it can run waits.
//! 2. Higher job priority first.
//! 3. Within a priority, the owner with the smallest share of the farm
//!    (tasks in flight divided by the owner's weight), and among equal
//!    shares the owner served least recently, so one user's huge job does
//!    not starve another's small one even on a single worker. An owner
//!    with as many tasks in flight as its share cap (`RunningCaps`) gets
//!    no more until one ends, whatever its priority, even on an idle farm.
//! 4. Then submission order, then step order, then task order.
//!
//! A job is a candidate for a worker only if it is dispatchable (not
//! paused, not waiting for other jobs, not final), the worker is not
//! blocklisted for it, and some step with queued tasks is unblocked and
//! matches the worker (host requirements, renderer and the job's tags).
//! A disabled or draining worker is offered nothing (`core/assign.rs`). Plain functions
//! over the model, so `core/assign.rs` and the unit tests use the same ones.

use std::cmp::Ordering;
use std::collections::HashMap;

use uuid::Uuid;

use crate::core::model::{JobEntry, WorkerEntry};
use crate::retry::RetryPolicy;

/// How many tasks of one owner may be in flight at once (its share cap);
/// 0 means no cap.
#[derive(Debug, Clone, Default)]
pub struct RunningCaps {
    /// Every owner's cap, unless named in `per_owner`.
    pub default: u64,
    pub per_owner: HashMap<String, u64>,
}

impl RunningCaps {
    /// The owner's share cap, if it has one.
    pub fn cap_of(&self, owner: &str) -> Option<u64> {
        let cap = self.per_owner.get(owner).copied().unwrap_or(self.default);
        (cap > 0).then_some(cap)
    }
}

/// The owners' shares of the farm, for fair share, and their share caps.
#[derive(Debug, Default)]
pub struct Shares {
    weights: HashMap<String, f64>,
    caps: RunningCaps,
    /// Tasks in flight per owner.
    in_flight: HashMap<String, u64>,
    /// When each owner last got a task, as a count of dispatches.
    served: HashMap<String, u64>,
    dispatches: u64,
}

impl Shares {
    pub fn new(weights: HashMap<String, f64>, caps: RunningCaps) -> Self {
        Self {
            weights,
            caps,
            ..Self::default()
        }
    }

    /// The owner's share cap, if it has one.
    pub fn cap_of(&self, owner: &str) -> Option<u64> {
        self.caps.cap_of(owner)
    }

    /// Whether the owner has as many tasks in flight as its cap allows.
    pub fn at_cap(&self, owner: &str) -> bool {
        self.cap_of(owner)
            .is_some_and(|cap| self.in_flight(owner) >= cap)
    }

    /// The weight of an owner's share of the farm (1 unless configured).
    pub fn weight_of(&self, owner: &str) -> f64 {
        self.weights.get(owner).copied().unwrap_or(1.0).max(0.001)
    }

    pub fn in_flight(&self, owner: &str) -> u64 {
        self.in_flight.get(owner).copied().unwrap_or(0)
    }

    /// Tasks in flight over the owner's weight: smaller goes first.
    pub fn share_of(&self, owner: &str) -> f64 {
        self.in_flight(owner) as f64 / self.weight_of(owner)
    }

    pub fn last_served(&self, owner: &str) -> u64 {
        self.served.get(owner).copied().unwrap_or(0)
    }

    /// One more of the owner's tasks is in flight.
    pub fn started(&mut self, owner: &str) {
        *self.in_flight.entry(owner.to_owned()).or_default() += 1;
    }

    /// One of the owner's tasks left flight.
    pub fn stopped(&mut self, owner: &str) {
        if let Some(running) = self.in_flight.get_mut(owner) {
            *running = running.saturating_sub(1);
        }
    }

    /// The owner just got a task.
    pub fn served_now(&mut self, owner: &str) {
        self.dispatches += 1;
        self.served.insert(owner.to_owned(), self.dispatches);
    }
}

/// A job a worker could take a task from, with what orders it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub job_id: Uuid,
    pub priority: i32,
    pub share: f64,
    pub last_served: u64,
    pub submission_order: u64,
}

impl Candidate {
    pub fn of(job: &JobEntry, shares: &Shares) -> Self {
        Self {
            job_id: job.id,
            priority: job.priority,
            share: shares.share_of(&job.owner),
            last_served: shares.last_served(&job.owner),
            submission_order: job.submission_order,
        }
    }
}

/// The order of dispatch between jobs: `Less` goes first.
pub fn order(a: &Candidate, b: &Candidate) -> Ordering {
    b.priority
        .cmp(&a.priority)
        .then(a.share.partial_cmp(&b.share).unwrap_or(Ordering::Equal))
        .then(a.last_served.cmp(&b.last_served))
        .then(a.submission_order.cmp(&b.submission_order))
}

/// The jobs `worker` could take a task from now, first to serve first: the
/// rules above written plainly, against which tests check [`Lineup`].
#[cfg(test)]
pub fn candidates<'a>(
    jobs: impl Iterator<Item = &'a JobEntry>,
    worker_id: &str,
    worker: &WorkerEntry,
    shares: &Shares,
    policy: &RetryPolicy,
    gpu_only: bool,
) -> Vec<Candidate> {
    let mut candidates: Vec<Candidate> = jobs
        .filter(|job| job.is_dispatchable() && !blocklisted(job, worker_id, policy))
        .filter(|job| !shares.at_cap(&job.owner))
        .filter(|job| runnable_step(job, worker, gpu_only).is_some())
        .map(|job| Candidate::of(job, shares))
        .collect();
    candidates.sort_by(order);
    candidates
}

/// The jobs with a task ready to run, in dispatch order but for the owners'
/// shares, which move with every task handed out: grouped by priority
/// (highest first) and owner, each group in submission order. Built once
/// per pass over the free workers, so a pick looks at each group's first
/// job a worker can take rather than filtering and sorting every job
/// (at a hundred jobs, that sort was about 14 % of the leader's CPU).
///
/// [`Lineup::best`] chooses what [`candidates`] puts first, from the live
/// state; only membership and the static part of the order are fixed at
/// [`Lineup::of`]. A pass hands tasks out and never makes one ready, so no
/// job can join in the meantime (tests check every pick against
/// [`candidates`]).
#[derive(Debug, Default)]
pub struct Lineup {
    groups: Vec<Group>,
}

#[derive(Debug)]
struct Group {
    priority: i32,
    owner: String,
    /// In submission order.
    jobs: Vec<Uuid>,
    /// Jobs before this one have no task ready for any worker (none becomes
    /// ready during a pass: a step unblocks only when a report is handled).
    start: usize,
}

impl Lineup {
    /// The dispatchable jobs with a task ready now.
    pub fn of<'a>(jobs: impl Iterator<Item = &'a JobEntry>) -> Self {
        let mut ready: Vec<(i32, &str, u64, Uuid)> = jobs
            .filter(|job| job.is_dispatchable() && has_ready_task(job))
            .map(|job| {
                (
                    job.priority,
                    job.owner.as_str(),
                    job.submission_order,
                    job.id,
                )
            })
            .collect();
        ready.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)).then(a.2.cmp(&b.2)));
        let mut groups: Vec<Group> = Vec::new();
        for (priority, owner, _, id) in ready {
            match groups.last_mut() {
                Some(g) if g.priority == priority && g.owner == owner => g.jobs.push(id),
                _ => groups.push(Group {
                    priority,
                    owner: owner.to_owned(),
                    jobs: vec![id],
                    start: 0,
                }),
            }
        }
        Self { groups }
    }

    /// The job `worker` should take a task from now: the first of
    /// [`candidates`] for the same arguments.
    pub fn best(
        &mut self,
        jobs: &HashMap<Uuid, JobEntry>,
        worker_id: &str,
        worker: &WorkerEntry,
        shares: &Shares,
        policy: &RetryPolicy,
        gpu_only: bool,
    ) -> Option<Candidate> {
        let mut best: Option<Candidate> = None;
        for group in &mut self.groups {
            // Groups run from the highest priority down; a lower one never wins.
            if best.as_ref().is_some_and(|b| b.priority > group.priority) {
                break;
            }
            if shares.at_cap(&group.owner) {
                continue;
            }
            while group.jobs.get(group.start).is_some_and(|id| {
                jobs.get(id)
                    .is_none_or(|job| !job.is_dispatchable() || !has_ready_task(job))
            }) {
                group.start += 1;
            }
            let first = group.jobs[group.start..].iter().find_map(|id| {
                jobs.get(id).filter(|job| {
                    job.is_dispatchable()
                        && !blocklisted(job, worker_id, policy)
                        && runnable_step(job, worker, gpu_only).is_some()
                })
            });
            let Some(job) = first else {
                continue;
            };
            let candidate = Candidate::of(job, shares);
            if best
                .as_ref()
                .is_none_or(|b| order(&candidate, b) == Ordering::Less)
            {
                best = Some(candidate);
            }
        }
        best
    }
}

/// Whether some step of the job has a task queued and is not waiting for
/// the steps it depends on.
pub fn has_ready_task(job: &JobEntry) -> bool {
    (0..job.steps.len()).any(|s| !job.steps[s].ready.is_empty() && job.step_unblocked(s))
}

/// Whether the worker failed the job often enough to be kept away from it.
pub fn blocklisted(job: &JobEntry, worker_id: &str, policy: &RetryPolicy) -> bool {
    job.worker_failures
        .get(worker_id)
        .is_some_and(|&failures| policy.blocklists(failures))
}

/// The first step of the job with queued tasks that the worker can run.
pub fn runnable_step(job: &JobEntry, worker: &WorkerEntry, gpu_only: bool) -> Option<usize> {
    (0..job.steps.len()).find(|&s| {
        let step = &job.steps[s];
        !step.ready.is_empty()
            && (!gpu_only || step.requirements.needs_gpu())
            && job.step_unblocked(s)
            && worker_fits_step(job, s, worker)
    })
}

/// Whether the worker could take some step of the job (its requirements and renderer).
pub fn can_run_some_step(job: &JobEntry, worker: &WorkerEntry) -> bool {
    (0..job.steps.len()).any(|s| worker_fits_step(job, s, worker))
}

/// The step's host requirements match the worker, it has the step's
/// renderer, and it carries the job's tags.
pub fn worker_fits_step(job: &JobEntry, step: usize, worker: &WorkerEntry) -> bool {
    worker_could_run_step(job, step, worker) && worker.carries(&job.tags)
}

/// The step's host requirements match the worker and it has the step's
/// renderer, whatever its tags.
pub fn worker_could_run_step(job: &JobEntry, step: usize, worker: &WorkerEntry) -> bool {
    let step = &job.steps[step];
    step.requirements.matches(&worker.capabilities) && worker.has_renderer(&step.command)
}

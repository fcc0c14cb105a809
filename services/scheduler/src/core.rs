//! The leader's in-memory view of the queue: unfinished jobs, their tasks,
//! the connected workers and what each runs.
//!
//! Postgres stays the record. Every change made here goes through
//! [`Core::transition`] (tasks) or [`Core::refresh_job`] (jobs), which apply
//! the state machine and queue the matching row write in the current
//! [`Batch`]; nothing a change implies (an assignment, a cancel, an event)
//! leaves the process before that batch is committed.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use tokio::time::Instant;
use uuid::Uuid;

use crate::core_events::EventSequencer;
use crate::effects::Effect;
use crate::eta::{self, EtaBook, RunStats};
use crate::job_state::{self, JobFacts, JobState, TaskCounts};
use crate::matching::Requirements;
use crate::retry::RetryPolicy;
use crate::scene_history;
use crate::task_state::{TaskEvent, TaskState};
use crate::writer::{Batch, JobWrite, TaskWrite};

/// A dispatched task that the worker has not confirmed after this long is
/// presumed lost on the way (e.g. its outbox was full) and requeued.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long past its maximum run time the scheduler waits for the worker to
/// kill a task itself before failing it here.
pub const MAX_RUN_GRACE: Duration = Duration::from_secs(30);

/// Where a worker's session receives what the scheduler sends it.
pub type Outbox = tokio::sync::mpsc::Sender<Result<pb::SchedulerMessage, tonic::Status>>;

pub struct TaskEntry {
    pub id: Uuid,
    pub job_id: Uuid,
    pub step: usize,
    pub index: i32,
    pub state: TaskState,
    pub attempt: i32,
    pub failures: i32,
    pub worker_id: Option<String>,
    pub command: String,
    pub args: Vec<String>,
    pub frames: Vec<i64>,
    /// For a session step's task: its parameter values (serialised symbol table).
    pub task_symbols: Option<String>,
    pub dispatched_at: Option<Instant>,
    /// An attempt confirmed after a failover: its start is unknown.
    pub claimed_attempt: Option<i32>,
    /// When the task last became dispatchable, for the dispatch latency.
    pub ready_at: Option<Instant>,
}

pub struct StepEntry {
    pub name: String,
    /// The renderer every task of the step runs; only workers that have it take them.
    pub command: String,
    /// Positions of the steps this one depends on.
    pub depends_on: Vec<usize>,
    pub requirements: Requirements,
    /// The script of a step run as written (OpenJD session model), as JSON;
    /// shared by every assignment of the step.
    pub session_step: Option<std::sync::Arc<str>>,
    /// Tasks that may be dispatched now, in order. Entries whose task moved
    /// on (e.g. was cancelled) are skipped when they reach the front.
    pub ready: VecDeque<Uuid>,
    pub total: usize,
    pub succeeded: usize,
    /// Tasks that failed for good: while any has, the steps after this one cannot run.
    pub failed: usize,
    /// Recent mean run time of the step's successful attempts, for queue-wait estimates.
    pub mean_run_seconds: Option<f64>,
}

pub struct JobEntry {
    pub id: Uuid,
    pub owner: String,
    pub priority: i32,
    /// Submission order, for ties.
    pub seq: u64,
    pub state: JobState,
    pub paused: bool,
    pub max_failed_tasks: i64,
    pub max_run_seconds: u32,
    pub stall_seconds: u32,
    pub inputs: Vec<pb::TaskInput>,
    pub steps: Vec<StepEntry>,
    /// The job's unfinished tasks (and, after a reopen, the reopened ones).
    pub task_ids: Vec<Uuid>,
    pub counts: TaskCounts,
    /// Failed attempts per worker, for the blocklist.
    pub worker_failures: HashMap<String, u32>,
    /// Jobs that must succeed before this one starts.
    pub waiting_on: HashSet<Uuid>,
    /// Why the job failed, once it has.
    pub message: String,
    /// The submission's W3C trace context, passed on to every task.
    pub trace_context: HashMap<String, String>,
    pub name: String,
    /// The built-in or admin-approved template the job was made from; empty
    /// for a template the submitter wrote.
    pub template_name: String,
    /// The last sequence number given to one of the job's events.
    pub event_seq: u64,
    /// Per-frame run times of earlier jobs of the same scene, by step name:
    /// loaded with the job, handed to the ETA book when the core takes it.
    pub earlier_run_times: HashMap<String, RunStats>,
}

impl JobEntry {
    /// Whether every step `step` depends on has succeeded entirely.
    pub fn step_unblocked(&self, step: usize) -> bool {
        self.steps[step]
            .depends_on
            .iter()
            .all(|&d| self.steps[d].succeeded == self.steps[d].total)
    }

    /// Whether a step can still complete: no step before it has a task that failed for good.
    fn step_can_complete(&self, step: usize) -> bool {
        self.steps[step]
            .depends_on
            .iter()
            .all(|&d| self.steps[d].failed == 0 && self.step_can_complete(d))
    }

    fn facts(&self) -> JobFacts {
        let runnable_left = self.counts.waiting > 0
            && (0..self.steps.len()).any(|s| {
                let step = &self.steps[s];
                step.succeeded + step.failed < step.total && self.step_can_complete(s)
            });
        JobFacts {
            counts: self.counts,
            paused: self.paused,
            max_failed_tasks: self.max_failed_tasks,
            runnable_left: runnable_left || !self.waiting_on.is_empty(),
        }
    }

    pub fn is_dispatchable(&self) -> bool {
        !self.paused && self.waiting_on.is_empty() && !self.state.is_final()
    }
}

pub struct WorkerEntry {
    pub session: u64,
    pub outbox: Outbox,
    pub capabilities: pb::WorkerCapabilities,
    pub slots: usize,
    /// Attempts the worker holds.
    pub running: HashSet<(Uuid, i32)>,
    /// Since when the worker has run nothing.
    pub idle_since: Option<Instant>,
}

impl WorkerEntry {
    pub fn has_free_slot(&self) -> bool {
        self.running.len() < self.slots
    }
}

/// What a worker or the scheduler says about how an attempt ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    pub message: String,
    pub log_tail: String,
    /// The Cycles device the attempt rendered on, as the worker reported it.
    pub device: Option<String>,
    /// The attempt's last status line, as the worker reported it.
    pub status: Option<String>,
}

pub struct Core {
    pub jobs: HashMap<Uuid, JobEntry>,
    pub tasks: HashMap<Uuid, TaskEntry>,
    pub workers: HashMap<String, WorkerEntry>,
    /// Workers with at least one free slot.
    pub free_workers: BTreeSet<String>,
    /// Tasks in flight per owner, for fair share.
    pub owner_running: HashMap<String, u64>,
    pub owner_weights: HashMap<String, f64>,
    /// When each owner last got a task, as a count of dispatches.
    pub owner_served: HashMap<String, u64>,
    pub dispatches: u64,
    /// Jobs waiting for each job to succeed.
    pub dependents: HashMap<Uuid, Vec<Uuid>>,
    /// Tasks waiting out a retry backoff, soonest first.
    pub retries: BinaryHeap<Reverse<(Instant, Uuid)>>,
    pub policy: RetryPolicy,
    pub batch: Batch,
    /// Something changed that may let a task be dispatched.
    pub dispatch_wanted: bool,
    pub next_seq: u64,
    /// Jobs touched since their state was last derived.
    touched_jobs: HashSet<Uuid>,
    /// In-flight attempts a previous leader dispatched, waiting until this
    /// deadline for their worker to reconnect and confirm them.
    pub unclaimed: HashMap<Uuid, Instant>,
    /// Final states of jobs that left memory lately, for submissions that
    /// raced with the end of a job they depend on.
    pub recently_finished: HashMap<Uuid, JobState>,
    /// Numbering and throttling of job events (`core_events.rs`).
    pub events: EventSequencer,
    /// Run times for each running job's ETA.
    pub eta: EtaBook,
    /// Admin-approved templates whose tasks may use the network; every
    /// other task's sandbox has none.
    pub network_templates: HashSet<String>,
}

/// Finished jobs remembered in `recently_finished`.
const RECENTLY_FINISHED: usize = 10_000;

impl Core {
    pub fn new(policy: RetryPolicy, owner_weights: HashMap<String, f64>) -> Self {
        Self {
            jobs: HashMap::new(),
            tasks: HashMap::new(),
            workers: HashMap::new(),
            free_workers: BTreeSet::new(),
            owner_running: HashMap::new(),
            owner_weights,
            owner_served: HashMap::new(),
            dispatches: 0,
            dependents: HashMap::new(),
            retries: BinaryHeap::new(),
            policy,
            batch: Batch::default(),
            dispatch_wanted: true,
            next_seq: 0,
            touched_jobs: HashSet::new(),
            unclaimed: HashMap::new(),
            recently_finished: HashMap::new(),
            events: EventSequencer::default(),
            eta: EtaBook::default(),
            network_templates: HashSet::new(),
        }
    }

    /// Applies `event` to the current attempt of a task. Returns the new
    /// state, or `None` (and changes nothing) when the event does not apply
    /// to the task's state.
    pub fn transition(
        &mut self,
        task_id: Uuid,
        event: TaskEvent,
        outcome: Option<&Outcome>,
    ) -> Option<TaskState> {
        let task = self.tasks.get_mut(&task_id)?;
        let from = task.state;
        let to = event.next(from)?;
        let mut write = TaskWrite::new(task_id, from, task.attempt);
        match event {
            TaskEvent::Dispatch => {
                task.attempt += 1;
                task.dispatched_at = Some(Instant::now());
            }
            TaskEvent::FailAndRetry | TaskEvent::FailFinally => task.failures += 1,
            TaskEvent::Reopen => task.failures = 0,
            _ => {}
        }
        task.state = to;
        write.state = to;
        write.attempt = task.attempt;
        write.failures = task.failures;
        write.worker_id = task.worker_id.clone();
        if let Some(outcome) = outcome {
            write.exit_code = outcome.exit_code;
            write.message = Some(outcome.message.clone());
            write.log_tail = (!outcome.log_tail.is_empty()).then(|| outcome.log_tail.clone());
            write.device = outcome.device.clone();
            write.status = outcome.status.clone();
        }
        let (job_id, step, index, attempt, worker_id) = (
            task.job_id,
            task.step,
            task.index,
            task.attempt,
            task.worker_id.clone(),
        );
        if from.is_in_flight() && !to.is_in_flight() {
            self.release_slot(worker_id.as_deref(), task_id, attempt);
        }
        if to == TaskState::Succeeded {
            self.learn_run_time(task_id);
        }
        self.count_move(job_id, step, from, to);
        self.batch.tasks.push(write);
        let step_name = self.step_name(job_id, step);
        let change = pb::TaskStateChanged {
            task_id: task_id.to_string(),
            step_name,
            index: index as u32,
            state: to.to_proto() as i32,
            worker_id: worker_id.unwrap_or_default(),
            message: outcome.map(|o| o.message.clone()).unwrap_or_default(),
        };
        self.emit(job_id, Event::TaskStateChanged(change));
        self.touched_jobs.insert(job_id);
        Some(to)
    }

    fn step_name(&self, job_id: Uuid, step: usize) -> String {
        self.jobs
            .get(&job_id)
            .and_then(|j| j.steps.get(step))
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    fn release_slot(&mut self, worker_id: Option<&str>, task_id: Uuid, attempt: i32) {
        let Some(worker_id) = worker_id else { return };
        if let Some(worker) = self.workers.get_mut(worker_id)
            && worker.running.remove(&(task_id, attempt))
        {
            if worker.running.is_empty() {
                worker.idle_since = Some(Instant::now());
            }
            self.free_workers.insert(worker_id.to_owned());
            self.dispatch_wanted = true;
        }
    }

    /// Keeps the job's counts, its step's progress and the owner's share in step with a move.
    fn count_move(&mut self, job_id: Uuid, step: usize, from: TaskState, to: TaskState) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        *bucket(&mut job.counts, from) -= 1;
        *bucket(&mut job.counts, to) += 1;
        if let Some(step) = job.steps.get_mut(step) {
            step.succeeded = adjust(step.succeeded, from, to, TaskState::Succeeded);
            step.failed = adjust(step.failed, from, to, TaskState::Failed);
        }
        if from.is_in_flight() != to.is_in_flight() {
            let running = self.owner_running.entry(job.owner.clone()).or_default();
            if to.is_in_flight() {
                *running += 1;
            } else {
                *running = running.saturating_sub(1);
            }
        }
        if to == TaskState::Succeeded {
            // A finished step may unblock the steps after it.
            self.dispatch_wanted = true;
        }
    }

    /// Folds a successful attempt's run time into its step's recent mean.
    fn learn_run_time(&mut self, task_id: Uuid) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let Some(ran) = task.dispatched_at.map(|t| t.elapsed().as_secs_f64()) else {
            return;
        };
        if task.claimed_attempt == Some(task.attempt) {
            return;
        }
        self.eta
            .learn(task.job_id, task.step, ran, eta::frames_of(task));
        if let Some(step) = self
            .jobs
            .get_mut(&task.job_id)
            .and_then(|j| j.steps.get_mut(task.step))
        {
            step.mean_run_seconds = Some(match step.mean_run_seconds {
                Some(mean) => mean * 0.8 + ran * 0.2,
                None => ran,
            });
        }
    }

    /// Puts a task back in its step's queue, at the front or the back.
    pub fn make_ready(&mut self, task_id: Uuid, front: bool) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        task.ready_at = Some(Instant::now());
        if let Some(step) = self
            .jobs
            .get_mut(&task.job_id)
            .and_then(|j| j.steps.get_mut(task.step))
        {
            if front {
                step.ready.push_front(task_id);
            } else {
                step.ready.push_back(task_id);
            }
            self.dispatch_wanted = true;
        }
    }

    /// Derives the state of every job touched since the last call, writes
    /// the ones that changed, and finishes jobs that reached a final state.
    pub fn refresh_jobs(&mut self) {
        while !self.touched_jobs.is_empty() {
            let touched: Vec<Uuid> = self.touched_jobs.drain().collect();
            for job_id in touched {
                self.refresh_job(job_id);
            }
        }
    }

    pub fn touch(&mut self, job_id: Uuid) {
        self.touched_jobs.insert(job_id);
    }

    fn refresh_job(&mut self, job_id: Uuid) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let next = job_state::derive(job.state, job.facts());
        if next != job.state {
            if next == JobState::Failed && job.message.is_empty() {
                job.message = format!("{} tasks failed", job.counts.failed);
            }
            self.set_job_state(job_id, next);
        } else {
            self.emit_record(job_id, false);
        }
    }

    /// Moves a job to `state` (any state: users reopen final jobs) and writes it.
    pub fn set_job_state(&mut self, job_id: Uuid, state: JobState) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let reopened = job.state.is_final() && !state.is_final();
        job.state = state;
        tracing::info!(job_id = %job_id, state = state.as_str(), "job state changed");
        if state.is_final() {
            metrics::counter!(crate::scheduler_metrics::JOBS_FINISHED, "state" => state.as_str())
                .increment(1);
        }
        self.batch.jobs.push(JobWrite {
            id: job_id,
            state,
            priority: job.priority,
            message: job.message.clone(),
            finished: state.is_final(),
            reopened,
        });
        // A final record closes the job's sequence: the tasks it stops are cancelled before it.
        if state.is_final() {
            self.cancel_unfinished(job_id, state);
        }
        self.emit_record(job_id, true);
        self.dispatch_wanted = true;
        if state.is_final() {
            self.finish_job(job_id, state);
        }
    }

    /// A job ended: stop what still runs.
    fn cancel_unfinished(&mut self, job_id: Uuid, state: JobState) {
        let task_ids = self
            .jobs
            .get(&job_id)
            .map(|j| j.task_ids.clone())
            .unwrap_or_default();
        let reason = Outcome {
            message: format!("job {}", state.as_str()),
            ..Outcome::default()
        };
        for task_id in task_ids {
            self.cancel_task(task_id, &reason);
        }
    }

    /// A job ended: tell the jobs waiting on it, and drop it from memory
    /// (Postgres keeps the record and its events).
    fn finish_job(&mut self, job_id: Uuid, state: JobState) {
        self.release_dependents(job_id, state);
        if self.recently_finished.len() >= RECENTLY_FINISHED {
            self.recently_finished.clear();
        }
        self.recently_finished.insert(job_id, state);
        if let Some(job) = self.jobs.remove(&job_id) {
            let learnt = self.eta.close(job_id);
            // Only a whole successful run says what the scene takes.
            if state == JobState::Succeeded
                && let Some(scene) = scene_history::scene_key(&job.inputs)
            {
                self.batch
                    .scene_times
                    .extend(scene_history::writes_for(&scene, learnt));
            }
            for task_id in &job.task_ids {
                self.tasks.remove(task_id);
            }
        }
    }

    /// Cancels one task, telling its worker to stop if it runs.
    pub fn cancel_task(&mut self, task_id: Uuid, reason: &Outcome) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let in_flight = task.state.is_in_flight();
        let (worker_id, attempt) = (task.worker_id.clone(), task.attempt);
        if self
            .transition(task_id, TaskEvent::Cancel, Some(reason))
            .is_some()
            && in_flight
            && let Some(worker_id) = worker_id
        {
            self.send_cancel(&worker_id, task_id, attempt);
        }
    }

    pub fn send_cancel(&mut self, worker_id: &str, task_id: Uuid, attempt: i32) {
        if let Some(worker) = self.workers.get(worker_id) {
            self.batch.effects.push(Effect::Cancel {
                outbox: worker.outbox.clone(),
                task_id,
                attempt,
            });
        }
    }

    fn release_dependents(&mut self, job_id: Uuid, state: JobState) {
        for dependent in self.dependents.remove(&job_id).unwrap_or_default() {
            let Some(job) = self.jobs.get_mut(&dependent) else {
                continue;
            };
            job.waiting_on.remove(&job_id);
            if state != JobState::Succeeded {
                job.message = format!("job {job_id} it depends on {}", state.as_str());
                self.set_job_state(dependent, JobState::Failed);
            } else {
                self.dispatch_wanted = true;
                self.touch(dependent);
            }
        }
    }

    /// Tasks whose retry backoff has run out go back into their queues.
    pub fn release_due_retries(&mut self, now: Instant) {
        while let Some(Reverse((at, task_id))) = self.retries.peek().copied() {
            if at > now {
                break;
            }
            self.retries.pop();
            if self
                .tasks
                .get(&task_id)
                .is_some_and(|t| t.state == TaskState::WaitingRetry)
            {
                self.make_ready(task_id, true);
            }
        }
    }

    /// The weight of an owner's share of the farm (1 unless configured).
    pub fn weight_of(&self, owner: &str) -> f64 {
        self.owner_weights
            .get(owner)
            .copied()
            .unwrap_or(1.0)
            .max(0.001)
    }
}

fn bucket(counts: &mut TaskCounts, state: TaskState) -> &mut i64 {
    match state {
        TaskState::Pending | TaskState::WaitingRetry => &mut counts.waiting,
        TaskState::Dispatched | TaskState::Running => &mut counts.in_flight,
        TaskState::Succeeded => &mut counts.succeeded,
        TaskState::Failed => &mut counts.failed,
        TaskState::Cancelled => &mut counts.cancelled,
    }
}

fn adjust(count: usize, from: TaskState, to: TaskState, state: TaskState) -> usize {
    match (from == state, to == state) {
        (false, true) => count + 1,
        (true, false) => count.saturating_sub(1),
        _ => count,
    }
}

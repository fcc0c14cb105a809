//! The dispatch core: the leader's in-memory model of the queue (unfinished
//! jobs, their tasks, the connected workers and what each runs), and every
//! rule that changes it. No I/O: time and randomness come in as arguments,
//! and what the core decides comes out as data, a [`Batch`] of guarded row
//! writes and the effects to run once they are committed.
//!
//! Postgres stays the record. Every change of a task goes through
//! `Core::transition` (`transition.rs`), which applies the state machine
//! (`task_state.rs`) and queues the row write, guarded on the state and
//! attempt it leaves; nothing a change implies (an assignment, a cancel, an
//! event, an answer) leaves before that batch is committed.
//!
//! Files, from the model outwards (each `impl Core` file only extends the
//! type; the files above it know nothing of `Core`):
//! - `model.rs`: jobs, steps, tasks, workers; `batch.rs`: writes and
//!   effects; `command.rs`: what the core is told;
//! - `pick_order.rs`: the order of dispatch, fair share and share caps;
//!   `quota_policy.rs`: owners' quotas, usage and reservations as plain data;
//!   `quotas.rs`: that rule applied when a job is admitted, with reservations;
//!   `numbering.rs`: event numbering and throttling; `output_ledger.rs`:
//!   what each unfinished task recorded, so each output is announced once;
//! - `transition.rs`: task and job state changes; `assign.rs`: handing
//!   tasks to workers with room in pick order, free slots first, then the
//!   queues of workers with lookahead; `queued.rs`: a task queued on a busy
//!   worker moves to one left idle; `sessions.rs`: workers joining and
//!   leaving; `reports.rs`: what workers report; `jobs.rs`: new jobs and
//!   controls; `reclaim.rs`: attempts that outlive a session or a leader;
//!   `timeouts.rs`: retries due and attempts overdue; `emit.rs`: events;
//!   `gauges.rs`: the snapshot the loop publishes as metrics; `waiting.rs`:
//!   why a task waits, by the pick order's own rules; `fleet.rs`: every
//!   worker the farm knows and an admin's actions on them; `admission.rs`:
//!   new work held back or refused while the farm is saturated.

pub mod admission;
pub mod admission_policy;
mod assign;
pub mod batch;
pub mod command;
mod emit;
mod fleet;
pub mod gauges;
mod jobs;
pub mod model;
pub mod numbering;
pub mod output_ledger;
pub mod pick_order;
mod queue_estimate;
mod queued;
pub mod quota_policy;
pub mod quotas;
mod reclaim;
mod reports;
mod sessions;
mod timeouts;
mod transition;
pub mod waiting;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use uuid::Uuid;

use crate::core::admission_policy::AdmissionPolicy;
use crate::core::batch::{Batch, Effect};
use crate::core::command::{Command, Refusal};
use crate::core::model::{Clock, JobEntry, KnownWorker, TaskEntry, WorkerEntry};
use crate::core::numbering::EventNumbering;
use crate::core::output_ledger::OutputLedger;
use crate::core::pick_order::Shares;
use crate::core::quota_policy::QuotaSettings;
use crate::core::quota_policy::Reservations;
use crate::eta::EtaBook;
use crate::job_state::JobState;
use crate::retry::RetryPolicy;

/// A dispatched task that the worker has not confirmed after this long is
/// presumed lost on the way (e.g. its outbox was full) and requeued.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long past its maximum run time the scheduler waits for the worker to
/// kill a task itself before failing it here.
pub const MAX_RUN_GRACE: Duration = Duration::from_secs(30);
/// Tasks a worker may hold queued beyond its slots, at most, whatever it
/// asks: a queued task is one no other worker can start meanwhile.
pub const MAX_LOOKAHEAD: u32 = 4;
/// Finished jobs remembered in `recently_finished`.
const RECENTLY_FINISHED: usize = 10_000;

/// What a core starts from.
pub struct CoreSettings {
    pub policy: RetryPolicy,
    pub owner_weights: HashMap<String, f64>,
    /// What each owner may queue and run at once.
    pub quotas: QuotaSettings,
    /// The last farm position already written (0 on a new farm).
    pub farm_position: u64,
    /// Seeds the jitter of retry delays: a fixed seed makes a test repeatable.
    pub jitter_seed: u64,
    pub now: Clock,
    /// Every worker the farm has seen, as Postgres keeps them.
    pub known_workers: Vec<KnownWorker>,
    /// Admin-approved templates whose tasks may use the network; every
    /// other task's sandbox has none.
    pub network_templates: HashSet<String>,
    /// When new work is held back or refused (`admission.rs`).
    pub admission: AdmissionPolicy,
}

pub struct Core {
    jobs: HashMap<Uuid, JobEntry>,
    /// Boxed: the table keeps an eighth or more of its slots empty, and a
    /// slot holding the whole entry (about 250 bytes) would cost that much
    /// per empty slot too; with a million queued tasks that was a fifth of
    /// the scheduler's memory.
    tasks: HashMap<Uuid, Box<TaskEntry>>,
    workers: HashMap<String, WorkerEntry>,
    /// Every worker the farm has seen, connected or not, with what an
    /// admin set on it.
    known: HashMap<String, KnownWorker>,
    /// Workers draining: disabled once they run nothing.
    draining: BTreeSet<String>,
    /// Workers with room for another task: a free slot, or room in their
    /// queue (lookahead).
    free_workers: BTreeSet<String>,
    /// Tasks in flight per owner and who was served last, for fair share.
    shares: Shares,
    quotas: QuotaSettings,
    /// Room admitted submissions hold until their jobs arrive.
    reservations: Reservations,
    /// Jobs waiting for each job to succeed.
    dependents: HashMap<Uuid, Vec<Uuid>>,
    /// Tasks waiting out a retry backoff, soonest first.
    retries: BinaryHeap<Reverse<(Instant, Uuid)>>,
    policy: RetryPolicy,
    batch: Batch,
    /// Something changed that may let a task be dispatched.
    dispatch_wanted: bool,
    next_submission: u64,
    /// Jobs touched since their state was last derived.
    touched_jobs: HashSet<Uuid>,
    /// In-flight attempts a previous leader dispatched, waiting until this
    /// deadline for their worker to reconnect and confirm them.
    unclaimed: HashMap<Uuid, Instant>,
    /// Final states of jobs that left memory lately, for submissions that
    /// raced with the end of a job they depend on.
    recently_finished: HashMap<Uuid, JobState>,
    numbering: EventNumbering,
    /// Run times for each running job's ETA.
    eta: EtaBook,
    /// What each unfinished task recorded, so each output is announced once.
    outputs: OutputLedger,
    /// The time of the command being handled.
    now: Clock,
    jitter: SmallRng,
    /// Admin-approved templates whose tasks may use the network.
    network_templates: HashSet<String>,
    admission: AdmissionPolicy,
    /// The queue as admission control sees it (`queue_estimate.rs`);
    /// `None` until needed after a change it cannot follow.
    estimate: Option<queue_estimate::QueueEstimate>,
}

impl Core {
    pub fn new(settings: CoreSettings) -> Self {
        Self {
            jobs: HashMap::new(),
            tasks: HashMap::new(),
            workers: HashMap::new(),
            draining: settings
                .known_workers
                .iter()
                .filter(|w| w.admin == model::AdminState::Draining)
                .map(|w| w.id.clone())
                .collect(),
            known: settings
                .known_workers
                .into_iter()
                .map(|w| (w.id.clone(), w))
                .collect(),
            free_workers: BTreeSet::new(),
            shares: Shares::new(settings.owner_weights, settings.quotas.running.clone()),
            quotas: settings.quotas,
            reservations: Reservations::default(),
            dependents: HashMap::new(),
            retries: BinaryHeap::new(),
            policy: settings.policy,
            batch: Batch::default(),
            dispatch_wanted: true,
            next_submission: 0,
            touched_jobs: HashSet::new(),
            unclaimed: HashMap::new(),
            recently_finished: HashMap::new(),
            numbering: EventNumbering::starting_after(settings.farm_position),
            eta: EtaBook::default(),
            outputs: OutputLedger::default(),
            now: settings.now,
            jitter: SmallRng::seed_from_u64(settings.jitter_seed),
            network_templates: settings.network_templates,
            admission: settings.admission,
            estimate: None,
        }
    }

    /// Takes a job loaded from Postgres when this leader starts: its
    /// in-flight attempts wait for their workers to confirm them.
    pub fn restore(&mut self, job: JobEntry, tasks: Vec<TaskEntry>, now: Clock) {
        self.now = now;
        self.forget_estimate();
        self.add_job(job, tasks);
        self.refresh_jobs();
    }

    /// Applies a command. Only a control of a job no longer in the queue is
    /// refused; every accepted request is answered by an
    /// [`Effect::Answer`] once the batch holding its changes is committed.
    pub fn handle(&mut self, command: Command, now: Clock) -> Result<(), Refusal> {
        self.now = now;
        if !command.estimate_follows() {
            self.forget_estimate();
        }
        let result = match command {
            Command::WorkerJoined {
                worker_id,
                hostname,
                session,
                capabilities,
                held,
            } => {
                self.worker_joined(worker_id, &hostname, session, capabilities, held);
                Ok(())
            }
            Command::WorkerControl {
                request,
                worker_id,
                control,
            } => self
                .worker_control(&worker_id, control)
                .map(|()| self.batch.effects.push(Effect::Answer(request))),
            Command::WorkerLeft { worker_id, session } => {
                self.session_ended(&worker_id, session);
                Ok(())
            }
            Command::Started {
                worker_id,
                task_id,
                attempt,
            } => {
                self.started(&worker_id, task_id, attempt);
                Ok(())
            }
            Command::Progress {
                worker_id,
                task_id,
                attempt,
                fraction,
                frame,
                status,
            } => {
                self.progress(&worker_id, task_id, attempt, fraction, frame, status);
                Ok(())
            }
            Command::Finished {
                worker_id,
                task_id,
                attempt,
                report,
            } => {
                self.finished(&worker_id, task_id, attempt, report);
                Ok(())
            }
            Command::Admit {
                request,
                owner,
                tasks,
            } => self.admit(request, owner, tasks),
            Command::AddJob {
                request,
                admission,
                job,
                tasks,
            } => {
                if let Some(admission) = admission {
                    self.admitted(admission, job.id);
                }
                let job_id = job.id;
                self.add_job(*job, tasks);
                self.estimate_job_joined(job_id);
                self.batch.effects.push(Effect::Answer(request));
                Ok(())
            }
            Command::Control {
                request,
                job_id,
                control,
            } => self
                .control(job_id, control)
                .map(|()| self.batch.effects.push(Effect::Answer(request))),
            Command::LeaseLost { worker_id } => {
                self.lease_lost(&worker_id);
                Ok(())
            }
            Command::OutputStored {
                worker_id,
                task_id,
                attempt,
                output,
            } => {
                self.output_stored(&worker_id, task_id, attempt, output);
                Ok(())
            }
            Command::Undeliverable {
                worker_id,
                task_id,
                attempt,
            } => {
                self.lose(
                    &worker_id,
                    task_id,
                    attempt,
                    "the assignment never reached the worker",
                );
                Ok(())
            }
        };
        self.refresh_jobs();
        self.settle_drains();
        result
    }

    /// Periodic work: retries whose backoff ran out, unclaimed attempts past
    /// their window, attempts that outlived their limits, held-back records.
    pub fn tick(&mut self, now: Clock) {
        self.now = now;
        self.forget_estimate();
        self.release_due_retries();
        self.expire_unclaimed();
        self.expire_reservations();
        self.end_overdue_attempts();
        self.release_holds();
        self.refresh_jobs();
        self.emit_due_records();
    }

    /// Hands tasks to workers with room, in pick order, until none can take
    /// one: free slots first, then workers' queues (lookahead).
    pub fn dispatch(&mut self, now: Clock) {
        self.now = now;
        self.dispatch_round();
    }

    /// What was decided since the last call, if anything.
    pub fn take_batch(&mut self) -> Option<Batch> {
        if self.batch.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.batch))
    }

    pub fn job(&self, id: Uuid) -> Option<&JobEntry> {
        self.jobs.get(&id)
    }

    pub fn task(&self, id: Uuid) -> Option<&TaskEntry> {
        self.tasks.get(&id).map(|task| &**task)
    }

    pub fn worker(&self, id: &str) -> Option<&WorkerEntry> {
        self.workers.get(id)
    }

    pub fn jobs(&self) -> impl Iterator<Item = &JobEntry> {
        self.jobs.values()
    }

    pub fn tasks(&self) -> impl Iterator<Item = &TaskEntry> {
        self.tasks.values().map(|task| &**task)
    }

    pub fn workers(&self) -> impl Iterator<Item = (&String, &WorkerEntry)> {
        self.workers.iter()
    }

    /// Tasks in flight for an owner, as fair share counts them.
    pub fn in_flight_of(&self, owner: &str) -> u64 {
        self.shares.in_flight(owner)
    }

    /// The last farm position handed out.
    pub fn farm_position(&self) -> u64 {
        self.numbering.farm_position()
    }

    /// A random number in [0, 1) for the jitter of retry delays.
    fn jitter(&mut self) -> f64 {
        rand::Rng::random(&mut self.jitter)
    }
}

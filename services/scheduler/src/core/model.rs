//! The core's plain model: what it knows of each job, step, task and worker.
//! Data only; the rules that change it live in the other files of `core/`.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use kiln_proto::v1 as pb;
use uuid::Uuid;

use crate::core::output_ledger::RecordedOutput;
use crate::eta::RunStats;
use crate::job_state::{JobFacts, JobState, TaskCounts};
use crate::matching::Requirements;
use crate::task_state::TaskState;

/// A task and one of its attempts.
pub type Attempt = (Uuid, i32);

/// The time the core is told it is: a monotonic instant for its deadlines
/// and the wall clock for what it writes. The core never reads a clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub instant: Instant,
    pub wall: DateTime<Utc>,
}

impl Clock {
    /// The same clock `by` later.
    pub fn after(self, by: std::time::Duration) -> Clock {
        Clock {
            instant: self.instant + by,
            wall: self.wall + chrono::Duration::from_std(by).unwrap_or_default(),
        }
    }
}

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
    /// For a session step's task: its parameter values (a serialised OpenJD
    /// symbol table).
    pub task_symbols: Option<String>,
    pub dispatched_at: Option<Instant>,
    /// When the worker started the current attempt: later than its dispatch
    /// when the worker held it queued (lookahead). Run-time limits and the
    /// run times the ETA learns count from here.
    pub started_at: Option<Instant>,
    /// An attempt confirmed after a failover: its start is unknown.
    pub claimed_attempt: Option<i32>,
    /// When the task last became dispatchable, for the dispatch latency.
    pub ready_at: Option<Instant>,
}

impl TaskEntry {
    /// Frames the task counts as for the ETA: a frameless one (an encode, a check) as one.
    pub fn frame_count(&self) -> f64 {
        self.frames.len().max(1) as f64
    }
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
    pub session_step: Option<Arc<str>>,
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
    /// Order of arrival in this leader's core, for ties between equal jobs.
    /// (Not an event number: see `last_event_seq`.)
    pub submission_order: u64,
    pub state: JobState,
    pub paused: bool,
    /// Why admission control holds the job back (accepted, not yet
    /// dispatched), while it does (`admission.rs`).
    pub held: Option<String>,
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
    /// The last per-job event number (`JobEvent.seq`) given to one of the
    /// job's events.
    pub last_event_seq: u64,
    /// Per-frame run times of earlier jobs of the same scene, by step name:
    /// loaded with the job, handed to the ETA book when the core takes it.
    pub earlier_run_times: HashMap<String, RunStats>,
    /// Outputs its unfinished tasks recorded (task, path, file), as Postgres
    /// has them: loaded with the job, handed to the output ledger when the
    /// core takes it.
    pub recorded_outputs: Vec<(Uuid, String, RecordedOutput)>,
    /// Tags (pools) a worker must carry, every one, to take the job's tasks.
    pub tags: BTreeSet<String>,
    /// Paths finished tasks of the job wrote, by task: no other task may
    /// write them (`output_ledger.rs`).
    pub finished_outputs: Vec<(Uuid, String)>,
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

    pub fn facts(&self) -> JobFacts {
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
        !self.paused && self.held.is_none() && self.waiting_on.is_empty() && !self.state.is_final()
    }
}

pub struct WorkerEntry {
    /// Which of the worker's sessions this is: effects name it, so what was
    /// meant for an ended session never reaches the next one.
    pub session: u64,
    pub capabilities: pb::WorkerCapabilities,
    pub slots: usize,
    /// Tasks the worker holds queued beyond its slots, so it never waits for
    /// the scheduler between tasks (0 for a worker that does not queue).
    pub lookahead: usize,
    /// Attempts the worker holds: running, or queued until a slot frees
    /// (those are still `Dispatched`).
    pub running: HashSet<Attempt>,
    /// When one of its attempts last ended: a queued attempt can start only
    /// from then, so its start deadline counts from then (`timeouts.rs`).
    pub slot_freed_at: Option<Instant>,
    /// Since when the worker has run nothing.
    pub idle_since: Option<Instant>,
    /// Its tags (pools), as an admin set them.
    pub tags: BTreeSet<String>,
    /// Whether an admin lets it take tasks.
    pub admin: AdminState,
}

impl WorkerEntry {
    /// Whether a task given now would start at once: a free slot.
    pub fn has_free_slot(&self) -> bool {
        self.running.len() < self.slots
    }

    /// Whether it may be given another task at all, in a free slot or in
    /// its queue.
    pub fn has_room(&self) -> bool {
        self.running.len() < self.capacity()
    }

    /// Tasks it may hold at once: its slots and its queue.
    pub fn capacity(&self) -> usize {
        self.slots + self.lookahead
    }

    /// Whether the worker may be handed a new task at all.
    pub fn takes_tasks(&self) -> bool {
        self.admin == AdminState::Enabled
    }

    /// Whether it carries every tag the job needs.
    pub fn carries(&self, tags: &BTreeSet<String>) -> bool {
        tags.is_subset(&self.tags)
    }

    /// Whether the worker runs `command`: see [`crate::matching::runs_command`].
    pub fn has_renderer(&self, command: &str) -> bool {
        crate::matching::runs_command(&self.capabilities, command)
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

/// What an admin set on a worker: whether it takes tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminState {
    #[default]
    Enabled,
    /// Finishes what it runs, takes nothing new; disabled once idle.
    Draining,
    Disabled,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "enabled" => Some(AdminState::Enabled),
            "draining" => Some(AdminState::Draining),
            "disabled" => Some(AdminState::Disabled),
            _ => None,
        }
    }
}

/// Whether a known worker is connected, and if not how it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    Online,
    /// Its session ended.
    Offline,
    /// Declared dead (its etcd registration expired).
    Lost,
}

impl Connection {
    pub fn as_str(self) -> &'static str {
        match self {
            Connection::Online => "online",
            Connection::Offline => "offline",
            Connection::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "online" => Some(Connection::Online),
            "offline" => Some(Connection::Offline),
            "lost" => Some(Connection::Lost),
            _ => None,
        }
    }
}

/// A worker the farm has seen, connected or not, as Postgres keeps it
/// (`workers`): what it offered, and what an admin set on it.
#[derive(Debug, Clone)]
pub struct KnownWorker {
    pub id: String,
    pub hostname: String,
    pub capabilities: pb::WorkerCapabilities,
    pub tags: BTreeSet<String>,
    pub admin: AdminState,
    pub connection: Connection,
    /// When it joined or left last (a connected worker's own reports are
    /// fresher: the scheduler's presence map has them).
    pub last_seen: DateTime<Utc>,
}

//! What the core decided since the last flush, as data: the rows to write
//! (each task row guarded on the state and attempt the core expected), and
//! what to do once they are committed. Effects name workers, sessions and
//! requests by id; the dispatch loop holds the channels behind those ids.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kiln_proto::v1 as pb;
use uuid::Uuid;

use crate::core::model::{AdminState, Connection};
use crate::job_state::JobState;
use crate::scene_history::SceneTimesWrite;
use crate::task_state::TaskState;

/// A caller waiting for its command to be durable, as the dispatch loop numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// One task's row after a transition (or several, coalesced).
#[derive(Debug, Clone)]
pub struct TaskWrite {
    pub id: Uuid,
    pub expect_state: TaskState,
    pub expect_attempt: i32,
    pub state: TaskState,
    pub attempt: i32,
    pub failures: i32,
    pub worker_id: Option<String>,
    pub retry_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub log_tail: Option<String>,
    pub device: Option<String>,
    pub status: Option<String>,
}

impl TaskWrite {
    pub fn new(id: Uuid, expect_state: TaskState, expect_attempt: i32) -> Self {
        Self {
            id,
            expect_state,
            expect_attempt,
            state: expect_state,
            attempt: expect_attempt,
            failures: 0,
            worker_id: None,
            retry_at: None,
            exit_code: None,
            message: None,
            log_tail: None,
            device: None,
            status: None,
        }
    }

    /// Folds a later write of the same task into this one: the row ends as
    /// the later one says, guarded by what this one expected.
    pub fn absorb(&mut self, later: TaskWrite) {
        self.state = later.state;
        self.attempt = later.attempt;
        self.failures = later.failures;
        self.worker_id = later.worker_id.or(self.worker_id.take());
        self.retry_at = later.retry_at;
        self.exit_code = later.exit_code.or(self.exit_code);
        self.message = later.message.or(self.message.take());
        self.log_tail = later.log_tail.or(self.log_tail.take());
        self.device = later.device.or(self.device.take());
        self.status = later.status.or(self.status.take());
    }
}

#[derive(Debug, Clone)]
pub struct JobWrite {
    pub id: Uuid,
    pub state: JobState,
    pub priority: i32,
    pub message: String,
    pub finished: bool,
    pub reopened: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BlocklistWrite {
    Set {
        job_id: Uuid,
        worker_id: String,
        failures: i32,
        blocked: bool,
    },
    Clear {
        job_id: Uuid,
        worker_id: Option<String>,
    },
}

/// An output of a task's current attempt, from its own report or its
/// success's list; the core queues only those it has not recorded yet.
#[derive(Debug, Clone)]
pub struct OutputWrite {
    pub job_id: Uuid,
    pub task_id: Uuid,
    pub path: String,
    pub digest: String,
    pub size: i64,
    /// Empty for a step's own files; "log", "thumbnail" for the others.
    pub kind: String,
}

/// A worker's row in `workers`, whole: the last write of a worker wins.
#[derive(Debug, Clone)]
pub struct WorkerWrite {
    pub id: String,
    pub hostname: String,
    pub capabilities: pb::WorkerCapabilities,
    pub tags: Vec<String>,
    pub admin: AdminState,
    pub connection: Connection,
    pub last_seen: DateTime<Utc>,
}

/// What follows a commit, in order.
#[derive(Debug, Clone)]
pub enum Effect {
    /// An assignment goes to the worker's session.
    Deliver {
        worker_id: String,
        session: u64,
        job_id: Uuid,
        /// The task and attempt, as the core knows them (no parsing back from text).
        attempt: (Uuid, i32),
        /// Boxed: far larger than the other effects.
        assignment: Box<pb::TaskAssignment>,
        /// Steps whose outputs the task receives as inputs under `outputs/`.
        dependency_steps: Vec<String>,
    },
    /// The worker's session is told to stop an attempt.
    Cancel {
        worker_id: String,
        session: u64,
        task_id: Uuid,
        attempt: i32,
    },
    /// A job or farm event, now durable, goes to live watchers.
    Publish(Arc<pb::JobEvent>),
    /// The caller of a request learns that what it asked for is durable.
    Answer(RequestId),
    /// The core forgot this session: nothing more is sent on it, and
    /// dropping its outbox ends the stream (a live worker reconnects).
    EndSession { worker_id: String, session: u64 },
}

/// Measurements the loop records once the batch is committed (the core
/// touches no global metrics).
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// Seconds from a task becoming runnable to its dispatch, per dispatch.
    pub dispatch_latencies: Vec<f64>,
    /// Jobs that reached a final state.
    pub jobs_finished: Vec<JobState>,
}

#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub tasks: Vec<TaskWrite>,
    pub jobs: Vec<JobWrite>,
    pub blocklist: Vec<BlocklistWrite>,
    pub outputs: Vec<OutputWrite>,
    /// Job events, numbered by the core (`numbering.rs`).
    pub events: Vec<(Uuid, Arc<pb::JobEvent>)>,
    /// Farm events, numbered by the core (`numbering.rs`).
    pub farm_events: Vec<Arc<pb::JobEvent>>,
    /// Run times succeeded jobs leave for their scenes (`scene_history.rs`).
    pub scene_times: Vec<SceneTimesWrite>,
    /// Workers that joined, left, or were acted on.
    pub workers: Vec<WorkerWrite>,
    /// What to do once the writes are committed, in order.
    pub effects: Vec<Effect>,
    pub observations: Observations,
}

impl Batch {
    /// Leaves one write per task in the batch, in task id order: later
    /// writes of a task folded into its first, so the row is guarded by the
    /// state the batch found it in. Moved, not copied: the batch writer's
    /// form.
    pub fn coalesce_tasks(&mut self) {
        let mut tasks = coalesce(std::mem::take(&mut self.tasks));
        tasks.sort_unstable_by_key(|t| t.id);
        self.tasks = tasks;
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.jobs.is_empty()
            && self.blocklist.is_empty()
            && self.outputs.is_empty()
            && self.events.is_empty()
            && self.farm_events.is_empty()
            && self.scene_times.is_empty()
            && self.workers.is_empty()
            && self.effects.is_empty()
    }
}

fn coalesce(writes: Vec<TaskWrite>) -> Vec<TaskWrite> {
    let mut merged: Vec<TaskWrite> = Vec::with_capacity(writes.len());
    let mut position: HashMap<Uuid, usize> = HashMap::with_capacity(writes.len());
    for write in writes {
        match position.get(&write.id) {
            Some(&i) => merged[i].absorb(write),
            None => {
                position.insert(write.id, merged.len());
                merged.push(write);
            }
        }
    }
    merged
}

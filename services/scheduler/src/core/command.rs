//! What the core is told. Plain data: ids, numbers and the job model; the
//! gRPC services translate their messages into these, and channels to
//! workers and callers stay with the dispatch loop.

use kiln_proto::v1 as pb;
use uuid::Uuid;

use crate::core::batch::RequestId;
use crate::core::model::{Attempt, JobEntry, TaskEntry};
use crate::core::quota_policy::QuotaExceeded;

pub enum Command {
    WorkerJoined {
        worker_id: String,
        hostname: String,
        session: u64,
        capabilities: pb::WorkerCapabilities,
        /// Attempts the worker says it still holds from an earlier session.
        held: Vec<Attempt>,
    },
    WorkerLeft {
        worker_id: String,
        session: u64,
    },
    Started {
        worker_id: String,
        task_id: Uuid,
        attempt: i32,
    },
    Progress {
        worker_id: String,
        task_id: Uuid,
        attempt: i32,
        fraction: f32,
        frame: Option<i64>,
        /// The task's status line; empty when it gave none.
        status: String,
    },
    Finished {
        worker_id: String,
        task_id: Uuid,
        attempt: i32,
        report: AttemptReport,
    },
    /// Room for a job of `owner` with `tasks` tasks, reserved before its
    /// rows are written; refused with [`Refusal::Quota`] when one of the
    /// owner's quotas is full.
    Admit {
        request: RequestId,
        owner: String,
        tasks: u64,
    },
    /// A new job to schedule; answered once it is durable in the core's queue.
    AddJob {
        request: RequestId,
        /// The admission that reserved room for it, if any.
        admission: Option<RequestId>,
        job: Box<JobEntry>,
        tasks: Vec<TaskEntry>,
    },
    Control {
        request: RequestId,
        job_id: Uuid,
        control: Control,
    },
    /// The worker's etcd registration expired or was revoked.
    LeaseLost {
        worker_id: String,
    },
    /// A worker stored an output of an attempt, and says so as soon as it has.
    OutputStored {
        worker_id: String,
        task_id: Uuid,
        attempt: i32,
        output: pb::OutputStored,
    },
    /// An admin's action on a worker; answered once it is durable.
    WorkerControl {
        request: RequestId,
        worker_id: String,
        control: WorkerControl,
    },
    /// An assignment could not be handed to its worker.
    Undeliverable {
        worker_id: String,
        task_id: Uuid,
        attempt: i32,
    },
}

impl Command {
    /// Whether admission's queue estimate (`queue_estimate.rs`) stays good
    /// enough through this command until the next tick: a new job is added
    /// to it, and a report only moves work it already counts. Anything else
    /// (workers coming and going, controls) drops it.
    pub(super) fn estimate_follows(&self) -> bool {
        matches!(
            self,
            Command::AddJob { .. }
                | Command::Admit { .. }
                | Command::Started { .. }
                | Command::Progress { .. }
                | Command::Finished { .. }
                | Command::OutputStored { .. }
        )
    }
}

/// How an attempt ended, as its worker reports it.
#[derive(Debug, Clone, Default)]
pub struct AttemptReport {
    pub success: bool,
    pub exit_code: Option<i32>,
    pub message: String,
    pub log_tail: String,
    /// On success, every output the attempt stored.
    pub outputs: Vec<pb::OutputStored>,
    /// The Cycles device it rendered on, its last status line.
    pub device: String,
    pub status: String,
}

pub enum Control {
    Cancel,
    Pause,
    Resume,
    /// Reopen failed and cancelled tasks. Carries the job as Postgres has it,
    /// for a job that had already finished and left memory.
    Retry(Option<(Box<JobEntry>, Vec<TaskEntry>)>),
    SetPriority(i32),
    /// Forget a job's failed attempts of one worker (or all): the worker may
    /// take its tasks again. A finished job's rows are cleared too.
    ClearBlocklist(Option<String>),
}

/// An admin's action on a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerControl {
    /// Stop it now: its attempts go back to the queue, it takes nothing.
    Disable,
    Enable,
    /// It finishes what it runs, takes nothing new, then is disabled.
    Drain,
    SetTags(std::collections::BTreeSet<String>),
}

/// Why the core refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("job {0} has finished")]
    JobFinished(Uuid),
    #[error("no worker {0:?} has ever joined this farm")]
    UnknownWorker(String),
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
}

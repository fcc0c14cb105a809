//! What the dispatch loop receives, and the channels that stand behind the
//! ids in the core's effects: a worker session's outbox, a caller's reply.

use kiln_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::SchedulerError;
use crate::core::Core;
use crate::core::admission_policy::Admission;
use crate::core::batch::RequestId;
use crate::core::command::Command;
use crate::core::model::Attempt;

/// Where a worker's session receives what the scheduler sends it. Boxed:
/// a channel allocates its slots 32 at a time, and a message inline is
/// about 330 bytes (an assignment's strings, lists and map), which made
/// every connected worker's outbox cost 11 KiB before it carried anything;
/// with 10,000 workers, 110 MiB.
pub type Outbox = mpsc::Sender<Box<pb::SchedulerMessage>>;
/// Where a caller learns that its command is durable, or why it was refused.
pub type Reply = oneshot::Sender<Result<(), SchedulerError>>;

pub enum Inbound {
    /// A command that needs no answer (a worker's report).
    Tell(Command),
    /// A command whose caller waits until what it changed is durable.
    Ask {
        request: RequestId,
        command: Command,
        reply: Reply,
    },
    /// A question about the core's state, answered from it at once (the
    /// closure replies on its own channel).
    Query(Box<dyn FnOnce(&Core) + Send>),
    /// Lines a running task printed, as its worker sends them: kept only if
    /// the worker holds that attempt.
    Logs {
        worker_id: String,
        lines: pb::TaskLogLines,
    },
    /// A worker opened a session.
    Join {
        worker_id: String,
        hostname: String,
        session: u64,
        capabilities: pb::WorkerCapabilities,
        /// Attempts the worker says it still holds from an earlier session.
        held: Vec<Attempt>,
        outbox: Outbox,
    },
    /// Whether a new job of `owner` running `renderers` is admitted now.
    Admit {
        owner: String,
        renderers: Vec<String>,
        reply: oneshot::Sender<Admission>,
    },
}

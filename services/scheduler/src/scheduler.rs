//! The handle the gRPC services hold while this process leads: Postgres for
//! reads, the event bus for watchers, and the inbox of the dispatch loop for
//! every change. A request takes one handle (`LeaderSlot::get`) and uses it
//! throughout, so it never mixes two leaderships.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_proto::v1 as pb;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::SchedulerError;
use crate::core::admission_policy::{Admission, AdmissionPolicy};
use crate::core::batch::RequestId;
use crate::core::command::Command;
use crate::core::model::Attempt;
use crate::core::quota_policy::QuotaSettings;
use crate::core::{Core, CoreSettings};
use crate::dispatch::{self, DispatchLoop};
use crate::effects::EffectRunner;
use crate::event_bus::EventBus;
use crate::event_replay::{self, Scope};
use crate::fence::Token;
use crate::inbox::{Inbound, Outbox};
use crate::loader;
use crate::logs::LogHub;
use crate::presence::Presence;
use crate::retry::RetryPolicy;

/// Messages queued for the dispatch loop before senders wait.
const INBOX: usize = 65_536;
/// Committed batches whose actions wait to run before the writer waits.
const ACTION_QUEUE: usize = 1024;

pub struct Scheduler {
    pub db: PgPool,
    /// This leader's fencing token: every write checks it still leads.
    pub token: Token,
    pub events: Arc<EventBus>,
    /// Live log lines of running tasks, for WatchTaskLog.
    pub logs: Arc<LogHub>,
    /// When each worker last spoke, and what it last said it uses.
    pub presence: Arc<Presence>,
    inbox: mpsc::Sender<Inbound>,
    next_request: AtomicU64,
}

/// What `Scheduler::start` hands back: the handle, and the dispatch loop to run.
pub struct Started {
    pub scheduler: Arc<Scheduler>,
    pub dispatch: DispatchLoop,
}

impl Scheduler {
    /// Loads the unfinished jobs into a fresh dispatch core and starts the
    /// effects runner. The caller runs the returned dispatch loop.
    pub async fn start(
        db: PgPool,
        policy: RetryPolicy,
        owner_weights: HashMap<String, f64>,
        quotas: QuotaSettings,
        network_templates: std::collections::HashSet<String>,
        admission: AdmissionPolicy,
        token: Token,
    ) -> Result<Started, SchedulerError> {
        let (inbox, inbox_rx) = mpsc::channel(INBOX);
        let (actions, actions_rx) = mpsc::channel(ACTION_QUEUE);
        let events = Arc::new(EventBus::default());
        let farm_position = event_replay::last_position(&db, Scope::Farm).await?;
        let loading = std::time::Instant::now();
        let loaded = loader::load_unfinished(&db, token).await?;
        let known_workers = loader::load_known_workers(&db).await?;
        let (jobs, tasks) = (
            loaded.len(),
            loaded.iter().map(|job| job.tasks.len()).sum::<usize>(),
        );
        let load_ms = loading.elapsed().as_millis() as u64;
        let now = dispatch::clock();
        let mut core = Core::new(CoreSettings {
            policy,
            owner_weights,
            quotas,
            farm_position,
            jitter_seed: rand::random(),
            now,
            known_workers,
            network_templates,
            admission,
        });
        for job in loaded {
            core.restore(*job.job, job.tasks, now);
        }
        tracing::info!(
            jobs,
            tasks,
            load_ms,
            elapsed_ms = loading.elapsed().as_millis() as u64,
            "loaded unfinished jobs"
        );
        let runner = EffectRunner::new(db.clone(), events.clone(), inbox.clone());
        tokio::spawn(runner.run(actions_rx));
        let scheduler = Arc::new(Self {
            db: db.clone(),
            token,
            events,
            logs: Arc::new(LogHub::default()),
            presence: Arc::new(Presence::default()),
            inbox,
            next_request: AtomicU64::new(1),
        });
        let dispatch =
            DispatchLoop::new(core, db, token, inbox_rx, actions).with_logs(scheduler.logs.clone());
        Ok(Started {
            scheduler,
            dispatch,
        })
    }

    /// Sends a command that needs no answer (a worker's report).
    pub async fn tell(&self, command: Command) -> Result<(), SchedulerError> {
        self.send(Inbound::Tell(command)).await
    }

    /// Sends a command and waits until what it changed is durable.
    pub async fn ask(
        &self,
        command: impl FnOnce(RequestId) -> Command,
    ) -> Result<(), SchedulerError> {
        let request = RequestId(self.next_request.fetch_add(1, Ordering::Relaxed));
        let (reply, answer) = oneshot::channel();
        self.send(Inbound::Ask {
            request,
            command: command(request),
            reply,
        })
        .await?;
        answer.await.map_err(|_| SchedulerError::Stopping)?
    }

    /// Asks the core a question; the answer reflects every command the
    /// loop took before it.
    pub async fn query<R: Send + 'static>(
        &self,
        question: impl FnOnce(&Core) -> R + Send + 'static,
    ) -> Result<R, SchedulerError> {
        let (reply, answer) = oneshot::channel();
        self.send(Inbound::Query(Box::new(move |core| {
            let _ = reply.send(question(core));
        })))
        .await?;
        answer.await.map_err(|_| SchedulerError::Stopping)
    }

    /// A worker's new session: what the core sends it goes to `outbox`.
    #[allow(clippy::too_many_arguments)]
    pub async fn join(
        &self,
        worker_id: String,
        hostname: String,
        session: u64,
        capabilities: pb::WorkerCapabilities,
        held: Vec<Attempt>,
        outbox: Outbox,
    ) -> Result<(), SchedulerError> {
        self.send(Inbound::Join {
            worker_id,
            hostname,
            session,
            capabilities,
            held,
            outbox,
        })
        .await
    }

    /// Admission control's decision on a new job of `owner` running
    /// `renderers` (`core/admission.rs`).
    pub async fn admission(
        &self,
        owner: &str,
        renderers: Vec<String>,
    ) -> Result<Admission, SchedulerError> {
        let (reply, answer) = oneshot::channel();
        self.send(Inbound::Admit {
            owner: owner.to_owned(),
            renderers,
            reply,
        })
        .await?;
        answer.await.map_err(|_| SchedulerError::Stopping)
    }

    /// A worker's batch of log lines, for the dispatch loop to check against
    /// what the worker holds; dropped when the loop is busy (live lines may
    /// be: the stored log is complete).
    pub fn log_lines(&self, worker_id: String, lines: pb::TaskLogLines) {
        if self
            .inbox
            .try_send(Inbound::Logs { worker_id, lines })
            .is_err()
        {
            tracing::debug!("dropped a batch of live log lines");
        }
    }

    async fn send(&self, message: Inbound) -> Result<(), SchedulerError> {
        self.inbox
            .send(message)
            .await
            .map_err(|_| SchedulerError::Stopping)
    }
}

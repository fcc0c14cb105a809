//! The handle the gRPC services hold: Postgres for reads, the event bus for
//! watchers, and the command channel into the dispatch loop for every change.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::SchedulerError;
use crate::commands::{Command, Reply};
use crate::core::Core;
use crate::dispatch::DispatchLoop;
use crate::effects::EffectRunner;
use crate::event_log;
use crate::events::EventBus;
use crate::fence::Token;
use crate::loader;
use crate::retry::RetryPolicy;

/// Commands queued for the dispatch loop before senders wait.
const COMMAND_QUEUE: usize = 65_536;
/// Committed batches whose effects wait to run before the writer waits.
const EFFECT_QUEUE: usize = 1024;

pub struct Scheduler {
    pub db: PgPool,
    /// This leader's fencing token: every write checks it still leads.
    pub token: Token,
    pub events: Arc<EventBus>,
    /// Live log lines of running tasks, for WatchTaskLog.
    pub logs: Arc<crate::logs::LogHub>,
    commands: mpsc::Sender<Command>,
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
        network_templates: std::collections::HashSet<String>,
        token: Token,
    ) -> Result<Started, SchedulerError> {
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (effects, effect_rx) = mpsc::channel(EFFECT_QUEUE);
        let events = Arc::new(EventBus::default());
        let mut core = Core::new(policy, owner_weights);
        core.network_templates = network_templates;
        core.events.farm_seq = event_log::last_position(&db, event_log::Scope::Farm).await?;
        let loaded = loader::load_unfinished(&db, token).await?;
        tracing::info!(jobs = loaded.len(), "loaded unfinished jobs");
        for job in loaded {
            let (reply, _) = oneshot::channel();
            core.handle(Command::AddJob {
                job: job.job,
                tasks: job.tasks,
                reply,
            });
        }
        let runner = EffectRunner::new(db.clone(), events.clone(), commands.clone());
        tokio::spawn(runner.run(effect_rx));
        let scheduler = Arc::new(Self {
            db: db.clone(),
            token,
            events,
            logs: Arc::new(crate::logs::LogHub::default()),
            commands,
        });
        let dispatch = DispatchLoop {
            core,
            db,
            token,
            commands: command_rx,
            effects,
        };
        Ok(Started {
            scheduler,
            dispatch,
        })
    }

    /// Sends a command that needs no answer (a worker's report).
    pub async fn tell(&self, command: Command) -> Result<(), SchedulerError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| SchedulerError::Stopping)
    }

    /// Sends a command and waits until what it changed is durable.
    pub async fn ask(&self, command: impl FnOnce(Reply) -> Command) -> Result<(), SchedulerError> {
        let (reply, answer) = oneshot::channel();
        self.tell(command(reply)).await?;
        answer.await.map_err(|_| SchedulerError::Stopping)?
    }
}

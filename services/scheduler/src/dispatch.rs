//! The dispatch loop: one task owns the core (`core/`), feeds it what the
//! gRPC services send (`inbox.rs`), lets it hand tasks to free workers, and
//! group-commits what it decided (`batch_writer.rs`). It also holds what the
//! core only names by id: each worker session's outbox and each waiting
//! caller's reply, and turns the core's effects into actions on them once
//! their batch is committed (`effects.rs`).
//!
//! While one batch is being written, the next accumulates; so the busier the
//! farm, the more transitions each commit carries, and Postgres work per
//! task stays a fixed handful of row writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::batch_writer::{self, WriteError};
use crate::core::Core;
use crate::core::batch::{Batch, Effect, RequestId};
use crate::core::command::Command;
use crate::core::model::Clock;
use crate::effects::{Action, Recipient};
use crate::fence::Token;
use crate::inbox::{Inbound, Outbox, Reply};
use crate::logs::LogHub;
use crate::scheduler_metrics;

/// How often retries whose backoff ran out and overdue attempts are looked at.
const TICK: Duration = Duration::from_millis(250);
/// Messages taken in one turn before the loop dispatches and flushes.
const MESSAGES_PER_TURN: usize = 4096;

/// The time now, as the core is told it.
pub fn clock() -> Clock {
    Clock {
        instant: std::time::Instant::now(),
        wall: chrono::Utc::now(),
    }
}

pub struct DispatchLoop {
    core: Core,
    db: PgPool,
    token: Token,
    inbox: mpsc::Receiver<Inbound>,
    actions: mpsc::Sender<(Instant, Vec<Action>)>,
    /// Each open session's outbox, by worker and session.
    outboxes: HashMap<(String, u64), Outbox>,
    /// Callers waiting for their request's batch to commit.
    replies: HashMap<RequestId, Reply>,
    /// Where log lines of attempts their worker holds go.
    logs: Arc<LogHub>,
}

impl DispatchLoop {
    pub fn new(
        core: Core,
        db: PgPool,
        token: Token,
        inbox: mpsc::Receiver<Inbound>,
        actions: mpsc::Sender<(Instant, Vec<Action>)>,
    ) -> Self {
        Self {
            core,
            db,
            token,
            inbox,
            actions,
            outboxes: HashMap::new(),
            replies: HashMap::new(),
            logs: Arc::default(),
        }
    }

    /// Live log lines go to `logs` (by default to a hub nobody watches).
    pub fn with_logs(mut self, logs: Arc<LogHub>) -> Self {
        self.logs = logs;
        self
    }

    /// Runs until the inbox closes, or a write fails for good (rows moved by
    /// another writer, a newer leader, an error that is not transient): then
    /// this scheduler's view is wrong or cannot be made durable, and it stops
    /// rather than act on it.
    pub async fn run(mut self) -> Result<(), WriteError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flushing: Option<JoinHandle<Result<(), WriteError>>> = None;
        loop {
            tokio::select! {
                message = self.inbox.recv() => match message {
                    Some(message) => self.receive(message),
                    None => return Ok(()),
                },
                _ = tick.tick() => {
                    let now = clock();
                    self.core.tick(now);
                    scheduler_metrics::publish(&self.core.gauges(now.instant));
                }
                done = wait(&mut flushing), if flushing.is_some() => {
                    flushing = None;
                    done?;
                }
            }
            self.take_queued();
            self.core.dispatch(clock());
            if flushing.is_none()
                && let Some(mut batch) = self.core.take_batch()
            {
                let actions = self.resolve(&mut batch);
                flushing = Some(tokio::spawn(flush(
                    self.db.clone(),
                    batch,
                    actions,
                    self.token,
                    self.actions.clone(),
                )));
            }
        }
    }

    fn receive(&mut self, message: Inbound) {
        let now = clock();
        match message {
            // Reports need no answer, and the core refuses none.
            Inbound::Tell(command) => {
                let _ = self.core.handle(command, now);
            }
            Inbound::Ask {
                request,
                command,
                reply,
            } => match self.core.handle(command, now) {
                Ok(()) => {
                    self.replies.insert(request, reply);
                }
                Err(refusal) => {
                    let _ = reply.send(Err(refusal.into()));
                }
            },
            Inbound::Query(question) => question(&self.core),
            Inbound::Logs { worker_id, lines } => {
                // Only the worker holding the attempt writes into its log.
                let held = uuid::Uuid::parse_str(&lines.task_id).is_ok_and(|task_id| {
                    self.core.holds(&worker_id, task_id, lines.attempt as i32)
                });
                if held {
                    self.logs.append(lines);
                }
            }
            Inbound::Join {
                worker_id,
                hostname,
                session,
                capabilities,
                held,
                outbox,
            } => {
                self.outboxes.insert((worker_id.clone(), session), outbox);
                let joined = Command::WorkerJoined {
                    worker_id,
                    hostname,
                    session,
                    capabilities,
                    held,
                };
                let _ = self.core.handle(joined, now);
            }
            Inbound::Admit {
                owner,
                renderers,
                reply,
            } => {
                let _ = reply.send(self.core.admission(&owner, &renderers));
            }
        }
    }

    /// Takes what is already queued without waiting, so one flush covers it all.
    fn take_queued(&mut self) {
        for _ in 0..MESSAGES_PER_TURN {
            match self.inbox.try_recv() {
                Ok(message) => self.receive(message),
                Err(_) => break,
            }
        }
    }

    /// The batch's effects, taken out of it, with the outboxes and replies
    /// their ids name. (Taken, not copied: at 10,000 workers a batch holds
    /// ten thousand assignments, and this runs between two writes.)
    fn resolve(&mut self, batch: &mut Batch) -> Vec<Action> {
        let effects = std::mem::take(&mut batch.effects);
        let mut actions = Vec::with_capacity(effects.len());
        let mut lost = Vec::new();
        for effect in effects {
            match effect {
                Effect::Deliver {
                    worker_id,
                    session,
                    job_id,
                    attempt,
                    assignment,
                    dependency_steps,
                } => {
                    let key = (worker_id, session);
                    let outbox = self.outboxes.get(&key).cloned();
                    let (worker_id, _) = key;
                    match outbox {
                        Some(outbox) => actions.push(Action::Deliver {
                            to: Recipient {
                                worker_id,
                                outbox,
                                attempt,
                            },
                            job_id,
                            assignment,
                            dependency_steps,
                        }),
                        None => lost.push((worker_id, attempt)),
                    }
                }
                Effect::Cancel {
                    worker_id,
                    session,
                    task_id,
                    attempt,
                } => {
                    if let Some(outbox) = self.outboxes.get(&(worker_id, session)) {
                        actions.push(Action::Cancel {
                            outbox: outbox.clone(),
                            task_id,
                            attempt,
                        });
                    }
                }
                Effect::Publish(event) => actions.push(Action::Publish(event)),
                Effect::Answer(request) => {
                    if let Some(reply) = self.replies.remove(&request) {
                        actions.push(Action::Answer(reply));
                    }
                }
                Effect::EndSession { worker_id, session } => {
                    self.outboxes.remove(&(worker_id, session));
                }
            }
        }
        // An assignment for a session already gone: requeue it now rather
        // than after the start timeout.
        for (worker_id, (task_id, attempt)) in lost {
            let undeliverable = Command::Undeliverable {
                worker_id,
                task_id,
                attempt,
            };
            let _ = self.core.handle(undeliverable, clock());
        }
        actions
    }
}

async fn wait(flushing: &mut Option<JoinHandle<Result<(), WriteError>>>) -> Result<(), WriteError> {
    match flushing {
        Some(handle) => match handle.await {
            Ok(result) => result,
            Err(err) => {
                tracing::error!(error = %err, "the batch writer panicked");
                Err(WriteError::Panicked(err.to_string()))
            }
        },
        None => std::future::pending().await,
    }
}

async fn flush(
    db: PgPool,
    mut batch: Batch,
    actions: Vec<Action>,
    token: Token,
    to_runner: mpsc::Sender<(Instant, Vec<Action>)>,
) -> Result<(), WriteError> {
    let started = Instant::now();
    batch_writer::write_until_done(&db, &mut batch, token).await?;
    let took = started.elapsed();
    metrics::histogram!(scheduler_metrics::BATCH_WRITE).record(took.as_secs_f64());
    metrics::histogram!(scheduler_metrics::BATCH_TASKS).record(batch.tasks.len() as f64);
    scheduler_metrics::record(&batch.observations);
    tracing::debug!(
        tasks = batch.tasks.len(),
        jobs = batch.jobs.len(),
        ?took,
        "batch written"
    );
    if to_runner.send((Instant::now(), actions)).await.is_err() {
        tracing::warn!("effects runner stopped; assignments were not delivered");
    }
    Ok(())
}

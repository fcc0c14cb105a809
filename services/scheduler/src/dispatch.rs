//! The dispatch loop: one task owns the queue (`core.rs`), takes commands
//! from the gRPC services, hands tasks to free workers (`queue.rs`), and
//! group-commits what changed (`writer.rs`).
//!
//! While one batch is being written, the next accumulates; so the busier the
//! farm, the more transitions each commit carries, and Postgres work per
//! task stays a fixed handful of row writes.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::commands::Command;
use crate::core::Core;
use crate::effects::Effect;
use crate::fence::Token;
use crate::writer::{self, Batch, WriteError};

/// How often retries whose backoff ran out and overdue attempts are looked at.
const TICK: Duration = Duration::from_millis(250);
/// Commands taken in one turn before the loop dispatches and flushes.
const COMMANDS_PER_TURN: usize = 4096;

pub struct DispatchLoop {
    pub core: Core,
    pub db: PgPool,
    pub token: Token,
    pub commands: mpsc::Receiver<Command>,
    pub effects: mpsc::Sender<(Instant, Vec<Effect>)>,
}

impl DispatchLoop {
    /// Runs until the command channel closes, or a write finds rows moved by
    /// another writer: then this scheduler's view is wrong, and it stops
    /// rather than act on it.
    pub async fn run(mut self) -> Result<(), WriteError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flushing: Option<JoinHandle<Result<(), WriteError>>> = None;
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.core.handle(command),
                    None => return Ok(()),
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.core.on_tick(now);
                    self.core.emit_due_records(now);
                }
                done = wait(&mut flushing), if flushing.is_some() => {
                    flushing = None;
                    done?;
                }
            }
            self.take_queued_commands();
            self.core.dispatch_round();
            if flushing.is_none() && !self.core.batch.is_empty() {
                let batch = std::mem::take(&mut self.core.batch);
                flushing = Some(tokio::spawn(flush(
                    self.db.clone(),
                    batch,
                    self.token,
                    self.effects.clone(),
                )));
            }
        }
    }

    /// Takes what is already queued without waiting, so one flush covers it all.
    fn take_queued_commands(&mut self) {
        for _ in 0..COMMANDS_PER_TURN {
            match self.commands.try_recv() {
                Ok(command) => self.core.handle(command),
                Err(_) => break,
            }
        }
    }
}

async fn wait(flushing: &mut Option<JoinHandle<Result<(), WriteError>>>) -> Result<(), WriteError> {
    match flushing {
        Some(handle) => match handle.await {
            Ok(result) => result,
            Err(err) => {
                tracing::error!(error = %err, "the batch writer panicked");
                Err(WriteError::Conflict(0))
            }
        },
        None => std::future::pending().await,
    }
}

async fn flush(
    db: PgPool,
    batch: Batch,
    token: Token,
    effects: mpsc::Sender<(Instant, Vec<Effect>)>,
) -> Result<(), WriteError> {
    let started = Instant::now();
    writer::write_until_done(&db, &batch, token).await?;
    let took = started.elapsed();
    metrics::histogram!(crate::scheduler_metrics::BATCH_WRITE).record(took.as_secs_f64());
    metrics::histogram!(crate::scheduler_metrics::BATCH_TASKS).record(batch.tasks.len() as f64);
    tracing::debug!(
        tasks = batch.tasks.len(),
        jobs = batch.jobs.len(),
        effects = batch.effects.len(),
        ?took,
        "batch written"
    );
    if effects.send((Instant::now(), batch.effects)).await.is_err() {
        tracing::warn!("effects runner stopped; assignments were not delivered");
    }
    Ok(())
}

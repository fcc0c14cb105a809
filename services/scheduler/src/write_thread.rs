//! The batch writer's own thread: a single-threaded tokio runtime with its
//! own Postgres connections, which writes the dispatch loop's batches one
//! at a time and hands each committed batch's actions to the effect runner.
//!
//! Why a thread: the write is the dispatch loop's critical path (the next
//! batch waits for it), and on the service's shared runtime it queued
//! behind the gRPC work of thousands of worker sessions. At 10,000 workers
//! a spawned write waited about 75 ms to start, and each of its round trips
//! waited again, on a 450 ms cycle. Here nothing else runs, and its
//! connections are polled by its own reactor.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::batch_writer::{self, WriteError};
use crate::core::batch::Batch;
use crate::effects::Action;
use crate::fence::Token;
use crate::scheduler_metrics;

/// One batch at a time is written; the loop waits for its answer first.
const QUEUE: usize = 1;
/// Connections of the writer's own pool: one in use, one to replace it.
const CONNECTIONS: u32 = 2;

struct Flush {
    batch: Batch,
    actions: Vec<Action>,
    token: Token,
    done: oneshot::Sender<Result<(), WriteError>>,
}

/// The handle the dispatch loop writes through. Dropping it ends the thread
/// once the write in progress, if any, is done.
pub struct WriteThread {
    flushes: mpsc::Sender<Flush>,
}

impl WriteThread {
    /// Starts the thread, with a pool connecting as `db` does.
    pub fn start(
        db: &PgPool,
        to_runner: mpsc::Sender<(Instant, Vec<Action>)>,
    ) -> std::io::Result<Self> {
        let options = db.connect_options().as_ref().clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (flushes, mut queue) = mpsc::channel::<Flush>(QUEUE);
        std::thread::Builder::new()
            .name("kiln-batch-writer".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // Lazy: its connections are made here, so this runtime's
                    // reactor polls them.
                    let pool = PgPoolOptions::new()
                        .max_connections(CONNECTIONS)
                        .acquire_timeout(Duration::from_secs(5))
                        .connect_lazy_with(options);
                    while let Some(flush) = queue.recv().await {
                        let result =
                            write(&pool, flush.batch, flush.actions, flush.token, &to_runner).await;
                        let _ = flush.done.send(result);
                    }
                    pool.close().await;
                });
            })?;
        Ok(Self { flushes })
    }

    /// Writes the batch, then passes its actions on; the answer says
    /// whether it was written.
    pub fn write(
        &self,
        batch: Batch,
        actions: Vec<Action>,
        token: Token,
    ) -> oneshot::Receiver<Result<(), WriteError>> {
        let (done, answer) = oneshot::channel();
        let flush = Flush {
            batch,
            actions,
            token,
            done,
        };
        // The loop waits for each answer before the next write, so the
        // queue has room; if the thread is gone, `answer` says so.
        if let Err(err) = self.flushes.try_send(flush) {
            tracing::error!(error = %err, "the batch writer's thread is gone");
        }
        answer
    }
}

/// What the loop makes of a write's answer.
pub fn answered(
    answer: Result<Result<(), WriteError>, oneshot::error::RecvError>,
) -> Result<(), WriteError> {
    answer.unwrap_or_else(|_| {
        Err(WriteError::Panicked(
            "the batch writer's thread ended".to_owned(),
        ))
    })
}

async fn write(
    db: &PgPool,
    mut batch: Batch,
    actions: Vec<Action>,
    token: Token,
    to_runner: &mpsc::Sender<(Instant, Vec<Action>)>,
) -> Result<(), WriteError> {
    let started = Instant::now();
    batch_writer::write_until_done(db, &mut batch, token).await?;
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

//! Kiln's scheduler.
//!
//! - `task_state.rs`: the task state machine, as data
//! - `dispatch.rs`: the dispatch loop
//! - `retry.rs`: the failure policy (retries, blocklist)
//! - `queue.rs`: the order of dispatch (priority, fair share, GPU preference)
//! - `matching.rs`: host requirements against worker capabilities
//! - `core.rs`: the leader's in-memory queue; `commands.rs`: what changes it
//! - `writer.rs`: batched durable writes; `effects.rs`: what follows a commit
//! - `core_events.rs`: job events numbered and queued with the writes that
//!   caused them; `output_ledger.rs`: the outputs each unfinished task
//!   recorded, so each is announced once; `event_log.rs`: replaying events
//!   for watchers; `eta.rs`: ETAs
//! - `logs.rs`: live task logs for watchers
//! - `loader.rs`: the queue rebuilt from Postgres
//! - `liveness.rs`: workers whose etcd lease expired are dead
//! - `leader.rs` / `fence.rs`: one leader elected in etcd, fenced in Postgres
//! - `job_state.rs`: a job's state derived from its tasks
//! - `store.rs`: jobs in Postgres (creation and reads)
//! - `worker_service.rs` / `job_service.rs`: the gRPC services
//! - `references.rs`: which stored files jobs still need (for the assets collector)

pub mod commands;
pub mod config;
pub mod core;
pub mod core_events;
pub mod dispatch;
pub mod effects;
mod error;
pub mod eta;
pub mod event_log;
pub mod events;
pub mod fence;
pub mod job_service;
pub mod job_state;
pub mod leader;
pub mod liveness;
pub mod loader;
pub mod logs;
pub mod matching;
#[cfg(test)]
mod output_events_tests;
pub mod output_ledger;
pub mod queue;
mod reclaim;
pub mod references;
pub mod retry;
mod scene_history;
pub mod scheduler;
pub mod scheduler_metrics;
pub mod standby;
pub mod store;
pub mod task_log;
pub mod task_state;
pub mod worker_service;
pub mod writer;

use std::time::Duration;

pub use error::SchedulerError;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// Connects to Postgres, waiting up to `patience` for it to come up, and
/// applies the migrations. The scheduler's `main` holds the farm-wide etcd
/// lock `scheduler-migrations` meanwhile (and sqlx takes Postgres's advisory
/// lock too), so replicas starting together apply them once.
pub async fn connect_database(
    url: &str,
    max_connections: u32,
    patience: Duration,
) -> Result<PgPool, SchedulerError> {
    let deadline = tokio::time::Instant::now() + patience;
    let pool = loop {
        let attempt = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await;
        match attempt {
            Ok(pool) => break pool,
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %err, "waiting for postgres");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => return Err(err.into()),
        }
    };
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

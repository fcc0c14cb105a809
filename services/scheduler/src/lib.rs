//! Kiln's scheduler. Modules depend one way, from the core outwards
//! (`tests/module_cycles.rs` checks it):
//!
//! 1. Rules, no I/O: `task_state.rs` (the task state machine, as data),
//!    `job_state.rs` (a job's state from its tasks), `retry.rs` (the failure
//!    policy), `matching.rs` (host requirements against workers), `eta.rs`
//!    (run-time statistics to an ETA), `scene_history.rs` (what earlier
//!    jobs of a scene took), `tags.rs` (pool names), `timestamps.rs`,
//!    `event_blocks.rs` (the event log's stored form: a batch's events of
//!    one job packed into one row, and read back in seq or farm order).
//! 2. `core/`: the dispatch core, the leader's queue as a model with private
//!    fields; commands in, a batch of guarded writes and effects out. The
//!    order of dispatch is decided in `core/pick_order.rs`.
//! 3. Postgres: `batch_writer.rs` (the core's batches, guarded and fenced),
//!    `inserts.rs` (a submitted job's rows), `queries.rs`
//!    (reads), `loader.rs` (core entries from Postgres), `event_replay.rs`
//!    (written events read back), `fence.rs` (the leader's fencing token).
//! 4. `inbox.rs` / `dispatch.rs` / `effects.rs`: the loop that owns the core,
//!    commits its batches, and runs their effects on worker sessions,
//!    callers and the live `event_bus.rs`; `scheduler_metrics.rs`.
//! 5. `scheduler.rs`: a leader's handle; `leader.rs`: the election;
//!    `dead_leader.rs`: a standby ends a crashed leader's lease at once;
//!    `liveness.rs`: workers whose etcd lease expired; `presence.rs`: when
//!    each worker last spoke and what it uses; `retention.rs`: finished
//!    jobs deleted after the farm's retention.
//! 6. Services: `job_service.rs` (gRPC), `submit.rs` (submission),
//!    `watch.rs` (WatchJob/WatchFarm), `task_log.rs` / `logs.rs` (live task
//!    logs), `worker_service.rs` (worker sessions; `live_sessions.rs`: one
//!    process per worker id), `references.rs` (which stored files jobs
//!    still need, for the assets collector), `farm_service.rs` (workers
//!    listed and acted on), `history.rs` (task attempts and timelines read
//!    back from the event log), `webhooks/` (registrations, the API, and
//!    the leader's delivery loop).

pub mod batch_writer;
pub mod config;
pub mod core;
pub mod dead_leader;
pub mod dispatch;
pub mod effects;
mod error;
pub mod eta;
pub mod event_blocks;
pub mod event_bus;
pub mod event_replay;
pub mod farm_service;
pub mod fence;
pub mod history;
pub mod idempotency;
pub mod inbox;
pub mod inserts;
pub mod job_service;
pub mod job_state;
pub mod leader;
pub mod live_sessions;
pub mod liveness;
pub mod loader;
pub mod logs;
pub mod matching;
pub mod presence;
pub mod queries;
pub mod references;
pub mod retention;
pub mod retry;
pub mod scene_history;
pub mod scheduler;
pub mod scheduler_metrics;
pub mod standby;
pub mod stream_quota;
pub mod submit;
pub mod tags;
pub mod task_log;
pub mod task_state;
pub mod timestamps;
pub mod watch;
pub mod webhooks;
pub mod worker_service;

use std::time::Duration;

pub use error::SchedulerError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// Connects to Postgres, waiting up to `patience` for it to come up, and
/// applies the migrations. The scheduler's `main` holds the farm-wide etcd
/// lock `scheduler-migrations` meanwhile (and sqlx takes Postgres's advisory
/// lock too), so replicas starting together apply them once.
///
/// Postgres ends any session of this pool that sits idle inside a
/// transaction for `abandoned_transaction` ([`fence::abandoned_after`]): a
/// leader frozen mid-write would otherwise hold its share lock on the fence
/// until it thawed, and the next leader's claim would wait on it that long.
pub async fn connect_database(
    url: &str,
    max_connections: u32,
    patience: Duration,
    abandoned_transaction: Duration,
) -> Result<PgPool, SchedulerError> {
    let options: PgConnectOptions = url.parse()?;
    let idle_ms = abandoned_transaction.as_millis().max(1).to_string();
    // No JIT: the scheduler's statements are short, and a batch's UPDATE
    // crossed the JIT's cost threshold, paying ~13 ms of compilation on
    // every batch to save nothing.
    let options = options.options([
        ("idle_in_transaction_session_timeout", idle_ms.as_str()),
        ("jit", "off"),
    ]);
    let deadline = tokio::time::Instant::now() + patience;
    let pool = loop {
        let attempt = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
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

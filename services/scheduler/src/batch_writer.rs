//! The core's batches, made durable: everything the dispatch core changed
//! since the last flush is written in one transaction of a few multi-row
//! statements, however many tasks it covers. The rows are guarded on the
//! state and attempt the core expected, so a write can never move a task
//! that another writer moved. (The only other write is a submitted job's
//! rows: `inserts.rs`.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_proto::v1 as pb;
use prost::Message;
use sqlx::PgPool;
use uuid::Uuid;

use crate::core::batch::{Batch, BlocklistWrite, JobWrite, OutputWrite, TaskWrite, WorkerWrite};
use crate::event_blocks::{self, Block};
use crate::fence::{self, FenceError, Token};
use crate::scene_history;

/// First pause before writing a batch again after a transient error.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest pause between attempts.
const MAX_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Postgres refused the batch for a reason that retrying cannot mend (a
    /// value or constraint it rejects, a schema that does not match): the
    /// core's view cannot be made durable, so this scheduler stops leading.
    #[error("postgres refused the batch: {0}")]
    Refused(sqlx::Error),
    /// Rows were not where this scheduler believed: someone else wrote them.
    #[error("{0} task rows were not in the state this scheduler expected")]
    Conflict(usize),
    /// Another scheduler leads now.
    #[error("{0}")]
    Fenced(String),
    /// The task writing the batch panicked: what was written is unknown.
    #[error("the batch writer panicked: {0}")]
    Panicked(String),
    /// Transient: retried by [`write_until_done`], never returned by it.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<FenceError> for WriteError {
    fn from(err: FenceError) -> Self {
        match err {
            FenceError::Database(err) => Self::Database(err),
            superseded => Self::Fenced(superseded.to_string()),
        }
    }
}

/// Whether an error may go away if the same batch is written again: the
/// connection failed (Postgres restarting, a network cut, the pool unable to
/// connect in time), or Postgres aborted the transaction for a
/// serialization failure or a deadlock.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 40001 serialization failure, 40P01
            // deadlock; 57P01-57P03 the server shutting down or starting;
            // 53300 too many connections; 25P03 the session was ended for
            // sitting idle in its transaction (`fence::abandoned_after`):
            // written again, the batch's fence check says whether this
            // process still leads, and the log says why it stops if not.
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300" | "25P03"
                )
        }),
        _ => false,
    }
}

/// Writes a batch, retrying with jittered backoff while the error is
/// transient. Any other error is returned at once: the dispatch loop then
/// stops and this scheduler stops leading, as it does on a fencing conflict,
/// rather than stall all dispatch behind a write that can never succeed.
pub async fn write_until_done(
    db: &PgPool,
    batch: &mut Batch,
    token: Token,
) -> Result<(), WriteError> {
    batch.coalesce_tasks();
    let mut nominal = FIRST_RETRY;
    loop {
        match write(db, batch, token).await {
            Ok(()) => return Ok(()),
            Err(WriteError::Database(err)) if is_transient(&err) => {
                // Jitter in the upper half, so replicas coming back together
                // do not hammer Postgres in step.
                let delay = nominal.mul_f64(rand::random_range(0.5..=1.0));
                tracing::warn!(error = %err, retry_in = ?delay, "cannot write task states; retrying");
                tokio::time::sleep(delay).await;
                nominal = (nominal * 2).min(MAX_RETRY);
            }
            Err(WriteError::Database(err)) => {
                tracing::error!(error = %err, tasks = batch.tasks.len(), "postgres refused a batch; this scheduler stops leading");
                return Err(WriteError::Refused(err));
            }
            Err(other) => return Err(other),
        }
    }
}

async fn write(db: &PgPool, batch: &Batch, token: Token) -> Result<(), WriteError> {
    let mut tx = db.begin().await?;
    fence::check(&mut tx, token).await?;
    // Coalesced, and in key order: Postgres's probes of the primary key for
    // one batch walk its pages in order instead of at random.
    let tasks = &batch.tasks;
    if !tasks.is_empty() {
        let written = write_tasks(&mut tx, tasks).await?;
        if written != tasks.len() as u64 {
            return Err(WriteError::Conflict(tasks.len() - written as usize));
        }
    }
    if !batch.jobs.is_empty() {
        write_jobs(&mut tx, &batch.jobs).await?;
    }
    for write in &batch.blocklist {
        write_blocklist(&mut tx, write).await?;
    }
    if !batch.outputs.is_empty() {
        write_outputs(&mut tx, &batch.outputs).await?;
    }
    if !batch.events.is_empty() {
        write_events(&mut tx, &batch.events).await?;
    }
    if !batch.farm_events.is_empty() {
        write_farm_events(&mut tx, &batch.farm_events).await?;
    }
    scene_history::write(&mut tx, &batch.scene_times).await?;
    if !batch.workers.is_empty() {
        write_workers(&mut tx, &batch.workers).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn write_tasks(tx: &mut sqlx::PgConnection, tasks: &[TaskWrite]) -> Result<u64, sqlx::Error> {
    let (lean, full): (Vec<&TaskWrite>, Vec<&TaskWrite>) = tasks.iter().partition(|t| is_lean(t));
    let mut written = 0;
    if !lean.is_empty() {
        written += write_lean_tasks(tx, &lean).await?;
    }
    if !full.is_empty() {
        written += write_full_tasks(tx, &full).await?;
    }
    Ok(written)
}

/// Whether the write changes only what most transitions change (state,
/// attempt, failures, worker, and an outcome's exit code and message): a
/// batch's dispatches and successes, nearly all its rows. Those go in a
/// statement with 9 columns instead of 13, which Postgres unpacks and
/// applies about a fifth faster.
fn is_lean(write: &TaskWrite) -> bool {
    write.retry_at.is_none()
        && write.log_tail.is_none()
        && write.device.is_none()
        && write.status.is_none()
}

async fn write_lean_tasks(
    tx: &mut sqlx::PgConnection,
    tasks: &[&TaskWrite],
) -> Result<u64, sqlx::Error> {
    // The same as `write_full_tasks` for writes with no retry time, log
    // tail, device or status.
    let query = sqlx::query(
        "UPDATE tasks t SET state = w.state, attempt = w.attempt, failures = w.failures,
                worker_id = COALESCE(w.worker_id, t.worker_id), retry_at = NULL,
                exit_code = CASE WHEN w.state = 'dispatched' THEN NULL ELSE COALESCE(w.exit_code, t.exit_code) END,
                message = COALESCE(w.message, t.message),
                device = CASE WHEN w.state = 'dispatched' THEN '' ELSE t.device END,
                status = CASE WHEN w.state = 'dispatched' THEN '' ELSE t.status END,
                updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::text[], $5::int[], $6::int[], $7::text[],
                     $8::int[], $9::text[])
              AS w(id, expect_state, expect_attempt, state, attempt, failures, worker_id,
                   exit_code, message)
         WHERE t.id = w.id AND t.state = w.expect_state AND t.attempt = w.expect_attempt",
    );
    let result = bind_guard_and_state(query, tasks)
        .bind(tasks.iter().map(|t| t.exit_code).collect::<Vec<_>>())
        .bind(texts(tasks, |t| t.message.as_deref()))
        .execute(&mut *tx)
        .await?;
    Ok(result.rows_affected())
}

async fn write_full_tasks(
    tx: &mut sqlx::PgConnection,
    tasks: &[&TaskWrite],
) -> Result<u64, sqlx::Error> {
    let query = sqlx::query(
        "UPDATE tasks t SET state = w.state, attempt = w.attempt, failures = w.failures,
                worker_id = COALESCE(w.worker_id, t.worker_id), retry_at = w.retry_at,
                exit_code = CASE WHEN w.state = 'dispatched' THEN NULL ELSE COALESCE(w.exit_code, t.exit_code) END,
                message = COALESCE(w.message, t.message), log_tail = COALESCE(w.log_tail, t.log_tail),
                device = CASE WHEN w.state = 'dispatched' THEN '' ELSE COALESCE(w.device, t.device) END,
                status = CASE WHEN w.state = 'dispatched' THEN '' ELSE COALESCE(w.status, t.status) END,
                updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::text[], $5::int[], $6::int[], $7::text[],
                     $8::timestamptz[], $9::int[], $10::text[], $11::text[], $12::text[], $13::text[])
              AS w(id, expect_state, expect_attempt, state, attempt, failures, worker_id, retry_at,
                   exit_code, message, log_tail, device, status)
         WHERE t.id = w.id AND t.state = w.expect_state AND t.attempt = w.expect_attempt",
    );
    let result = bind_guard_and_state(query, tasks)
        .bind(tasks.iter().map(|t| t.retry_at).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.exit_code).collect::<Vec<_>>())
        .bind(texts(tasks, |t| t.message.as_deref()))
        .bind(texts(tasks, |t| t.log_tail.as_deref()))
        .bind(texts(tasks, |t| t.device.as_deref()))
        .bind(texts(tasks, |t| t.status.as_deref()))
        .execute(&mut *tx)
        .await?;
    Ok(result.rows_affected())
}

/// One optional text column of the task writes, borrowed.
fn texts<'a>(
    tasks: &[&'a TaskWrite],
    column: fn(&'a TaskWrite) -> Option<&'a str>,
) -> Vec<Option<&'a str>> {
    tasks.iter().map(|t| column(t)).collect()
}

/// Binds $1 to $7 of both task statements: the row's guard (id, expected
/// state and attempt), then its new state, attempt, failures and worker.
fn bind_guard_and_state<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    tasks: &'q [&TaskWrite],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(tasks.iter().map(|t| t.id).collect::<Vec<_>>())
        .bind(
            tasks
                .iter()
                .map(|t| t.expect_state.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(tasks.iter().map(|t| t.expect_attempt).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.state.as_str()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.attempt).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.failures).collect::<Vec<_>>())
        .bind(
            tasks
                .iter()
                .map(|t| t.worker_id.as_deref())
                .collect::<Vec<_>>(),
        )
}

async fn write_jobs(tx: &mut sqlx::PgConnection, jobs: &[JobWrite]) -> Result<(), sqlx::Error> {
    // Later writes of one job win: keep only the last of each.
    let mut last: HashMap<Uuid, &JobWrite> = HashMap::new();
    for job in jobs {
        last.insert(job.id, job);
    }
    let jobs: Vec<&JobWrite> = last.into_values().collect();
    sqlx::query(
        "UPDATE jobs j SET state = w.state, priority = w.priority,
                message = CASE WHEN w.message = '' AND NOT w.reopened THEN j.message ELSE w.message END,
                finished_at = CASE WHEN w.finished THEN COALESCE(j.finished_at, now())
                                   WHEN w.reopened THEN NULL ELSE j.finished_at END
         FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::text[], $5::bool[], $6::bool[])
              AS w(id, state, priority, message, finished, reopened)
         WHERE j.id = w.id",
    )
    .bind(jobs.iter().map(|j| j.id).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.state.as_str()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.priority).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.message.clone()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.finished).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.reopened).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One row per job of the batch (`event_blocks.rs`), not one per event: the
/// event log was more than half the rows a batch wrote.
async fn write_events(
    tx: &mut sqlx::PgConnection,
    events: &[(Uuid, Arc<pb::JobEvent>)],
) -> Result<(), sqlx::Error> {
    let blocks = event_blocks::pack(events);
    let column = |f: fn(&Block) -> i64| blocks.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO job_events
             (job_id, first_seq, last_seq, batch_first, first_farm_seq, last_farm_seq, payload)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                              $6::bigint[], $7::bytea[])",
    )
    .bind(blocks.iter().map(|b| b.job_id).collect::<Vec<_>>())
    .bind(column(|b| b.first_seq))
    .bind(column(|b| b.last_seq))
    .bind(column(|b| b.batch_first))
    .bind(column(|b| b.first_farm_seq))
    .bind(column(|b| b.last_farm_seq))
    .bind(
        blocks
            .iter()
            .map(|b| b.payload.as_slice())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Farm events are few (workers come and go), so pruning the week-old ones
/// as new ones arrive keeps the table bounded without a sweeper.
async fn write_farm_events(
    tx: &mut sqlx::PgConnection,
    events: &[Arc<pb::JobEvent>],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO farm_events (farm_seq, payload)
         SELECT * FROM UNNEST($1::bigint[], $2::bytea[])",
    )
    .bind(events.iter().map(|e| e.farm_seq as i64).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.encode_to_vec()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM farm_events WHERE created_at < now() - interval '7 days'")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn write_blocklist(
    tx: &mut sqlx::PgConnection,
    write: &BlocklistWrite,
) -> Result<(), sqlx::Error> {
    match write {
        BlocklistWrite::Set {
            job_id,
            worker_id,
            failures,
            blocked,
        } => {
            sqlx::query(
                "INSERT INTO blocklist (job_id, worker_id, failures, blocked) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (job_id, worker_id) DO UPDATE SET failures = $3, blocked = $4",
            )
            .bind(job_id)
            .bind(worker_id)
            .bind(failures)
            .bind(blocked)
            .execute(&mut *tx)
            .await?;
        }
        BlocklistWrite::Clear { job_id, worker_id } => {
            sqlx::query(
                "DELETE FROM blocklist WHERE job_id = $1 AND ($2::text IS NULL OR worker_id = $2)",
            )
            .bind(job_id)
            .bind(worker_id.as_deref())
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

/// Records outputs (the last write of a path wins), as one statement; rows
/// that already hold the same file are not rewritten.
async fn write_outputs(
    tx: &mut sqlx::PgConnection,
    outputs: &[OutputWrite],
) -> Result<(), sqlx::Error> {
    // One statement may not update a row twice: keep each path's last write.
    let mut last: HashMap<(Uuid, &str), &OutputWrite> = HashMap::with_capacity(outputs.len());
    for output in outputs {
        last.insert((output.job_id, output.path.as_str()), output);
    }
    let rows: Vec<&OutputWrite> = last.into_values().collect();
    sqlx::query(
        "INSERT INTO outputs (job_id, path, digest, size, task_id, kind)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::uuid[], $6::text[])
         ON CONFLICT (job_id, path) DO UPDATE SET digest = EXCLUDED.digest,
             size = EXCLUDED.size, task_id = EXCLUDED.task_id, kind = EXCLUDED.kind,
             created_at = now()
         WHERE (outputs.digest, outputs.size, outputs.task_id, outputs.kind)
               IS DISTINCT FROM (EXCLUDED.digest, EXCLUDED.size, EXCLUDED.task_id, EXCLUDED.kind)",
    )
    .bind(rows.iter().map(|o| o.job_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|o| o.path.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|o| o.digest.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|o| o.size).collect::<Vec<_>>())
    .bind(rows.iter().map(|o| o.task_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|o| o.kind.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Upserts worker rows whole (the last write of each worker wins), as one
/// statement.
async fn write_workers(
    tx: &mut sqlx::PgConnection,
    workers: &[WorkerWrite],
) -> Result<(), sqlx::Error> {
    let mut last: HashMap<&str, &WorkerWrite> = HashMap::with_capacity(workers.len());
    for worker in workers {
        last.insert(worker.id.as_str(), worker);
    }
    let rows: Vec<&WorkerWrite> = last.into_values().collect();
    // Tags travel as one comma-joined text per row: UNNEST cannot take an
    // array of arrays of different lengths, and a tag holds no comma.
    sqlx::query(
        "INSERT INTO workers (id, hostname, capabilities, tags, admin_state, connection, last_seen)
         SELECT w.id, w.hostname, w.capabilities,
                CASE WHEN w.tags = '' THEN '{}'::text[] ELSE string_to_array(w.tags, ',') END,
                w.admin_state, w.connection, w.last_seen
         FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[],
                     $7::timestamptz[])
              AS w(id, hostname, capabilities, tags, admin_state, connection, last_seen)
         ON CONFLICT (id) DO UPDATE SET hostname = EXCLUDED.hostname,
             capabilities = EXCLUDED.capabilities, tags = EXCLUDED.tags,
             admin_state = EXCLUDED.admin_state, connection = EXCLUDED.connection,
             last_seen = EXCLUDED.last_seen",
    )
    .bind(rows.iter().map(|w| w.id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|w| w.hostname.clone()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|w| w.capabilities.encode_to_vec())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|w| w.tags.join(",")).collect::<Vec<_>>())
    .bind(rows.iter().map(|w| w.admin.as_str()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|w| w.connection.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|w| w.last_seen).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

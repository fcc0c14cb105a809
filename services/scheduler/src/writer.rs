//! Durable writes, batched: everything the dispatch core changed since the
//! last flush is written in one transaction of a few multi-row statements,
//! however many tasks it covers. The rows are guarded on the state and
//! attempt the core expected, so a write can never move a task that another
//! writer moved.

use std::collections::HashMap;
use std::time::Duration;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use kiln_proto::v1 as pb;
use prost::Message;
use sqlx::PgPool;
use uuid::Uuid;

use crate::effects::Effect;
use crate::fence::{self, FenceError, Token};
use crate::job_state::JobState;
use crate::scene_history::{self, SceneTimesWrite};
use crate::task_state::TaskState;

/// One task's row after a transition (or several, coalesced).
#[derive(Debug, Clone)]
pub struct TaskWrite {
    pub id: Uuid,
    pub expect_state: TaskState,
    pub expect_attempt: i32,
    pub state: TaskState,
    pub attempt: i32,
    pub failures: i32,
    pub worker_id: Option<String>,
    pub retry_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub log_tail: Option<String>,
    pub device: Option<String>,
    pub status: Option<String>,
}

impl TaskWrite {
    pub fn new(id: Uuid, expect_state: TaskState, expect_attempt: i32) -> Self {
        Self {
            id,
            expect_state,
            expect_attempt,
            state: expect_state,
            attempt: expect_attempt,
            failures: 0,
            worker_id: None,
            retry_at: None,
            exit_code: None,
            message: None,
            log_tail: None,
            device: None,
            status: None,
        }
    }

    /// Folds a later write of the same task into this one: the row ends as
    /// the later one says, guarded by what this one expected.
    fn absorb(&mut self, later: TaskWrite) {
        self.state = later.state;
        self.attempt = later.attempt;
        self.failures = later.failures;
        self.worker_id = later.worker_id.or(self.worker_id.take());
        self.retry_at = later.retry_at;
        self.exit_code = later.exit_code.or(self.exit_code);
        self.message = later.message.or(self.message.take());
        self.log_tail = later.log_tail.or(self.log_tail.take());
        self.device = later.device.or(self.device.take());
        self.status = later.status.or(self.status.take());
    }
}

#[derive(Debug, Clone)]
pub struct JobWrite {
    pub id: Uuid,
    pub state: JobState,
    pub priority: i32,
    pub message: String,
    pub finished: bool,
    pub reopened: bool,
}

#[derive(Debug, Clone)]
pub enum BlocklistWrite {
    Set {
        job_id: Uuid,
        worker_id: String,
        failures: i32,
        blocked: bool,
    },
    Clear {
        job_id: Uuid,
        worker_id: Option<String>,
    },
}

/// An output a successful attempt stored, recorded with its success.
#[derive(Debug, Clone)]
pub struct OutputWrite {
    pub job_id: Uuid,
    pub task_id: Uuid,
    pub path: String,
    pub digest: String,
    pub size: i64,
    /// Empty for a step's own files; "log", "thumbnail" for the others.
    pub kind: String,
}

#[derive(Default)]
pub struct Batch {
    pub tasks: Vec<TaskWrite>,
    pub jobs: Vec<JobWrite>,
    pub blocklist: Vec<BlocklistWrite>,
    pub outputs: Vec<OutputWrite>,
    /// Job events, numbered by the core (`core_events.rs`).
    pub events: Vec<(Uuid, Arc<pb::JobEvent>)>,
    /// Farm events, numbered by the core (`core_events.rs`).
    pub farm_events: Vec<Arc<pb::JobEvent>>,
    /// Run times succeeded jobs leave for their scenes (`scene_history.rs`).
    pub scene_times: Vec<SceneTimesWrite>,
    /// What to do once the writes are committed, in order.
    pub effects: Vec<Effect>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.jobs.is_empty()
            && self.blocklist.is_empty()
            && self.outputs.is_empty()
            && self.events.is_empty()
            && self.farm_events.is_empty()
            && self.scene_times.is_empty()
            && self.effects.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Rows were not where this scheduler believed: someone else wrote them.
    #[error("{0} task rows were not in the state this scheduler expected")]
    Conflict(usize),
    /// Another scheduler leads now.
    #[error("{0}")]
    Fenced(String),
}

impl From<FenceError> for WriteError {
    fn from(err: FenceError) -> Self {
        match err {
            FenceError::Database(err) => Self::Database(err),
            superseded => Self::Fenced(superseded.to_string()),
        }
    }
}

/// Writes a batch, retrying while Postgres is unreachable.
pub async fn write_until_done(db: &PgPool, batch: &Batch, token: Token) -> Result<(), WriteError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match write(db, batch, token).await {
            Ok(()) => return Ok(()),
            Err(WriteError::Database(err)) => {
                tracing::warn!(error = %err, retry_in = ?delay, "cannot write task states; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(conflict) => return Err(conflict),
        }
    }
}

async fn write(db: &PgPool, batch: &Batch, token: Token) -> Result<(), WriteError> {
    let mut tx = db.begin().await?;
    fence::check(&mut tx, token).await?;
    let tasks = coalesce(&batch.tasks);
    if !tasks.is_empty() {
        let written = write_tasks(&mut tx, &tasks).await?;
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
    tx.commit().await?;
    Ok(())
}

fn coalesce(writes: &[TaskWrite]) -> Vec<TaskWrite> {
    let mut merged: Vec<TaskWrite> = Vec::with_capacity(writes.len());
    let mut position: HashMap<Uuid, usize> = HashMap::with_capacity(writes.len());
    for write in writes {
        match position.get(&write.id) {
            Some(&i) => merged[i].absorb(write.clone()),
            None => {
                position.insert(write.id, merged.len());
                merged.push(write.clone());
            }
        }
    }
    merged
}

async fn write_tasks(tx: &mut sqlx::PgConnection, tasks: &[TaskWrite]) -> Result<u64, sqlx::Error> {
    let column = |f: fn(&TaskWrite) -> String| tasks.iter().map(f).collect::<Vec<_>>();
    let result = sqlx::query(
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
    )
    .bind(tasks.iter().map(|t| t.id).collect::<Vec<_>>())
    .bind(column(|t| t.expect_state.as_str().to_owned()))
    .bind(tasks.iter().map(|t| t.expect_attempt).collect::<Vec<_>>())
    .bind(column(|t| t.state.as_str().to_owned()))
    .bind(tasks.iter().map(|t| t.attempt).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.failures).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.worker_id.clone()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.retry_at).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.exit_code).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.message.clone()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.log_tail.clone()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.device.clone()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.status.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(result.rows_affected())
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

async fn write_events(
    tx: &mut sqlx::PgConnection,
    events: &[(Uuid, Arc<pb::JobEvent>)],
) -> Result<(), sqlx::Error> {
    let job_ids: Vec<Uuid> = events.iter().map(|(id, _)| *id).collect();
    sqlx::query(
        "INSERT INTO job_events (job_id, seq, farm_seq, payload)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bytea[])",
    )
    .bind(job_ids)
    .bind(events.iter().map(|(_, e)| e.seq as i64).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|(_, e)| e.farm_seq as i64)
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|(_, e)| e.encode_to_vec())
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
            crate::store::clear_blocklist(&mut *tx, *job_id, worker_id.as_deref()).await?;
        }
    }
    Ok(())
}

/// Records outputs (the last write of a path wins), as one statement; rows
/// already as the success lists them are not rewritten.
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
             size = EXCLUDED.size, task_id = EXCLUDED.task_id, kind = EXCLUDED.kind
         -- Most were recorded as their reports arrived: leave those rows be.
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

//! Questions about jobs, answered from Postgres: the record, its tasks,
//! outputs and logs. Read-only; the dispatch core's changes are written by
//! `batch_writer.rs`, a submission's rows by `inserts.rs`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use kiln_proto::v1 as pb;
use sqlx::PgPool;
use uuid::Uuid;

use crate::job_state::JobState;
use crate::task_state::TaskState;
use crate::timestamps::timestamp;

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    name: String,
    owner: String,
    state: String,
    priority: i32,
    template_name: String,
    parameters: serde_json::Value,
    inputs: serde_json::Value,
    message: String,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    depends_on_jobs: Vec<Uuid>,
    max_failed_tasks: i32,
    max_run_seconds: i32,
    stall_seconds: i32,
    tags: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct StepCountRow {
    job_id: Uuid,
    name: String,
    depends_on: Vec<String>,
    state: Option<String>,
    count: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: Uuid,
    job_id: Uuid,
    step_name: String,
    index: i32,
    state: String,
    attempt: i32,
    worker_id: Option<String>,
    frames: Vec<i64>,
    exit_code: Option<i32>,
    message: String,
    log_tail: String,
    retry_at: Option<DateTime<Utc>>,
    device: String,
    status: String,
}

pub fn inputs_from_json(value: &serde_json::Value) -> Vec<pb::JobInput> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            Some(pb::JobInput {
                path: v.get("path")?.as_str()?.to_owned(),
                digest: v.get("digest")?.as_str()?.to_owned(),
            })
        })
        .collect()
}

pub async fn job_state(
    db: impl sqlx::PgExecutor<'_>,
    job_id: Uuid,
) -> Result<Option<JobState>, sqlx::Error> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(job_id)
        .fetch_optional(db)
        .await?;
    Ok(state.as_deref().and_then(JobState::parse))
}

/// A job's state and, once it finished, how long ago; `None` if there is
/// no such job.
pub async fn job_state_and_age(
    db: impl sqlx::PgExecutor<'_>,
    job_id: Uuid,
) -> Result<Option<(JobState, Option<std::time::Duration>)>, sqlx::Error> {
    let row: Option<(String, Option<f64>)> = sqlx::query_as(
        "SELECT state, EXTRACT(EPOCH FROM now() - finished_at)::float8 FROM jobs WHERE id = $1",
    )
    .bind(job_id)
    .fetch_optional(db)
    .await?;
    Ok(row.and_then(|(state, age)| {
        let age = age.map(|secs| std::time::Duration::from_secs_f64(secs.max(0.0)));
        JobState::parse(&state).map(|state| (state, age))
    }))
}

/// The jobs `job_id` depends on that no longer exist (deleted after the
/// farm's retention, `retention.rs`).
pub async fn deleted_dependencies(
    db: impl sqlx::PgExecutor<'_>,
    job_id: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT d FROM jobs j, unnest(j.depends_on_jobs) AS d
         WHERE j.id = $1 AND NOT EXISTS (SELECT 1 FROM jobs WHERE id = d)",
    )
    .bind(job_id)
    .fetch_all(db)
    .await
}

/// The state of a task of a job, or `None` if the job has no such task.
pub async fn task_state(
    db: &PgPool,
    job_id: Uuid,
    task_id: Uuid,
) -> Result<Option<TaskState>, sqlx::Error> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM tasks WHERE id = $1 AND job_id = $2")
            .bind(task_id)
            .bind(job_id)
            .fetch_optional(db)
            .await?;
    Ok(state.as_deref().and_then(TaskState::parse))
}

/// Where a task's last stored log is.
pub async fn task_log(
    db: &PgPool,
    job_id: Uuid,
    task_id: Uuid,
) -> Result<Option<pb::TaskLog>, sqlx::Error> {
    let row: Option<(String, String, i64)> = sqlx::query_as(
        "SELECT path, digest, size FROM outputs
         WHERE job_id = $1 AND task_id = $2 AND kind = 'log' ORDER BY created_at DESC LIMIT 1",
    )
    .bind(job_id)
    .bind(task_id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(path, digest, size)| pb::TaskLog {
        task_id: task_id.to_string(),
        digest,
        size: size as u64,
        path,
    }))
}

/// A query for the columns of `jobs` that make up a [`pb::Job`]; a macro
/// because sqlx takes only literal SQL.
macro_rules! select_jobs {
    ($rest:literal) => {
        concat!(
            "SELECT id, name, owner, state, priority, template_name, parameters, inputs, message, ",
            "created_at, finished_at, depends_on_jobs, max_failed_tasks, max_run_seconds, stall_seconds, tags ",
            "FROM jobs ",
            $rest
        )
    };
}

/// What `owner` stored under the idempotency key `key` within the retention.
pub async fn remembered_submission(
    db: &PgPool,
    owner: &str,
    key: &str,
) -> Result<Option<crate::idempotency::Remembered>, sqlx::Error> {
    let row: Option<(String, Uuid)> = sqlx::query_as(
        "SELECT fingerprint, job_id FROM submit_requests
         WHERE owner = $1 AND request_id = $2 AND created_at > now() - make_interval(hours => $3)",
    )
    .bind(owner)
    .bind(key)
    .bind(crate::idempotency::RETENTION_HOURS)
    .fetch_optional(db)
    .await?;
    Ok(
        row.map(|(fingerprint, job_id)| crate::idempotency::Remembered {
            fingerprint,
            job_id,
        }),
    )
}

pub async fn get_job(db: &PgPool, job_id: Uuid) -> Result<Option<pb::Job>, sqlx::Error> {
    let rows: Vec<JobRow> = sqlx::query_as(select_jobs!("WHERE id = $1"))
        .bind(job_id)
        .fetch_all(db)
        .await?;
    Ok(with_steps(db, rows).await?.pop())
}

/// Which jobs a listing shows; every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub owner: Option<String>,
    pub states: Vec<JobState>,
    /// A case-insensitive substring of the name.
    pub name_contains: Option<String>,
    pub submitted_after: Option<DateTime<Utc>>,
    pub submitted_before: Option<DateTime<Utc>>,
}

impl JobFilter {
    /// The filters in a fixed form (states as a set, the name folded to
    /// lower case as the filter ignores case), for page tokens.
    pub fn fingerprint(&self) -> String {
        let mut states: Vec<&str> = self.states.iter().map(|s| s.as_str()).collect();
        states.sort_unstable();
        states.dedup();
        let name = self.name_contains.as_deref().unwrap_or("").to_lowercase();
        let micros =
            |t: Option<DateTime<Utc>>| t.map_or(i64::MIN, |t| t.timestamp_micros()).to_be_bytes();
        kiln_service::paging::fingerprint(&[
            self.owner.as_deref().unwrap_or("").as_bytes(),
            states.join(",").as_bytes(),
            name.as_bytes(),
            &micros(self.submitted_after),
            &micros(self.submitted_before),
        ])
    }
}

/// Where a page of jobs starts: after the job created at `.0` with id `.1`
/// (newest first).
pub type JobPosition = (DateTime<Utc>, Uuid);

/// The newest jobs that pass the filter (newest first; ties by id), after
/// `after` when given; at most `limit`.
pub async fn list_jobs(
    db: &PgPool,
    filter: &JobFilter,
    limit: i64,
    after: Option<JobPosition>,
) -> Result<Vec<pb::Job>, sqlx::Error> {
    let states: Vec<&str> = filter.states.iter().map(|s| s.as_str()).collect();
    let pattern = filter.name_contains.as_deref().map(like_pattern);
    let rows: Vec<JobRow> = sqlx::query_as(select_jobs!(
        "WHERE ($2::text IS NULL OR owner = $2)
           AND (cardinality($3::text[]) = 0 OR state = ANY($3))
           AND ($4::text IS NULL OR name ILIKE $4 ESCAPE '\\')
           AND ($5::timestamptz IS NULL OR created_at >= $5)
           AND ($6::timestamptz IS NULL OR created_at < $6)
           AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8))
         ORDER BY created_at DESC, id DESC LIMIT $1"
    ))
    .bind(limit)
    .bind(filter.owner.as_deref())
    .bind(&states)
    .bind(pattern)
    .bind(filter.submitted_after)
    .bind(filter.submitted_before)
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id))
    .fetch_all(db)
    .await?;
    with_steps(db, rows).await
}

/// `%text%` for ILIKE, with the pattern's own special characters escaped.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Adds steps and task counts to job rows: one query however many jobs.
async fn with_steps(db: &PgPool, rows: Vec<JobRow>) -> Result<Vec<pb::Job>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let step_rows: Vec<StepCountRow> = sqlx::query_as(
        "SELECT s.job_id, s.name, s.depends_on, t.state, count(t.id) AS count
         FROM steps s LEFT JOIN tasks t ON t.job_id = s.job_id AND t.step_name = s.name
         WHERE s.job_id = ANY($1)
         GROUP BY s.job_id, s.name, s.position, s.depends_on, t.state ORDER BY s.job_id, s.position",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    let mut steps_by_job: HashMap<Uuid, Vec<StepCountRow>> = HashMap::new();
    for step in step_rows {
        steps_by_job.entry(step.job_id).or_default().push(step);
    }
    let blocked: Vec<(Uuid, String, i32)> = sqlx::query_as(
        "SELECT job_id, worker_id, failures FROM blocklist WHERE job_id = ANY($1) AND blocked
         ORDER BY worker_id",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    let mut blocked_by_job: HashMap<Uuid, Vec<pb::BlockedWorker>> = HashMap::new();
    for (job_id, worker_id, failures) in blocked {
        blocked_by_job
            .entry(job_id)
            .or_default()
            .push(pb::BlockedWorker {
                worker_id,
                failures: failures.max(0) as u32,
            });
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let steps = steps_by_job.remove(&row.id).unwrap_or_default();
            let blocklist = blocked_by_job.remove(&row.id).unwrap_or_default();
            pb::Job {
                blocklist,
                ..job_to_proto(row, steps)
            }
        })
        .collect())
}

fn job_to_proto(row: JobRow, step_rows: Vec<StepCountRow>) -> pb::Job {
    let mut job = pb::Job {
        id: row.id.to_string(),
        name: row.name,
        owner: row.owner,
        state: JobState::parse(&row.state)
            .map(JobState::to_proto)
            .unwrap_or_default() as i32,
        priority: row.priority as u32,
        template_name: row.template_name,
        parameters: serde_json::from_value(row.parameters).unwrap_or_default(),
        inputs: inputs_from_json(&row.inputs),
        message: row.message,
        created_at: Some(timestamp(row.created_at)),
        finished_at: row.finished_at.map(timestamp),
        depends_on_jobs: row.depends_on_jobs.iter().map(Uuid::to_string).collect(),
        max_failed_tasks: row.max_failed_tasks.max(0) as u32,
        max_run_seconds: row.max_run_seconds.max(0) as u32,
        stall_seconds: row.stall_seconds.max(0) as u32,
        tags: row.tags,
        ..Default::default()
    };
    for step_row in step_rows {
        if job.steps.last().map(|s| &s.name) != Some(&step_row.name) {
            job.steps.push(pb::Step {
                name: step_row.name.clone(),
                depends_on: step_row.depends_on.clone(),
                ..Default::default()
            });
        }
        let n = step_row.count.unwrap_or(0) as u32;
        let Some(step) = job.steps.last_mut() else {
            continue;
        };
        step.tasks_total += n;
        job.tasks_total += n;
        match step_row.state.as_deref().and_then(TaskState::parse) {
            Some(TaskState::Succeeded) => {
                step.tasks_succeeded += n;
                job.tasks_succeeded += n;
            }
            Some(TaskState::Failed) => job.tasks_failed += n,
            Some(TaskState::Dispatched | TaskState::Running) => job.tasks_running += n,
            _ => {}
        }
    }
    job
}

/// One task of a job.
pub async fn get_task(
    db: &PgPool,
    job_id: Uuid,
    task_id: Uuid,
) -> Result<Option<pb::Task>, sqlx::Error> {
    let row: Option<TaskRow> = sqlx::query_as(
        "SELECT id, job_id, step_name, index, state, attempt, worker_id, frames, exit_code, message, log_tail, retry_at,
                device, status
         FROM tasks WHERE id = $1 AND job_id = $2",
    )
    .bind(task_id)
    .bind(job_id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(task_to_proto))
}

/// Where a page of tasks starts: after the task of index `.1` in the step
/// at position `.0`.
pub type TaskPosition = (i32, i32);

/// A job's tasks in step and index order, after `after` if given; at most
/// `limit`. Each comes with its step's position, for the next page's token.
pub async fn list_tasks(
    db: &PgPool,
    job_id: Uuid,
    limit: i64,
    after: Option<TaskPosition>,
) -> Result<Vec<(TaskPosition, pb::Task)>, sqlx::Error> {
    let rows: Vec<PositionedTaskRow> = sqlx::query_as(
        "SELECT s.position, t.id, t.job_id, t.step_name, t.index, t.state, t.attempt, t.worker_id, t.frames, t.exit_code, t.message, t.log_tail, t.retry_at,
                t.device, t.status
         FROM tasks t JOIN steps s ON s.job_id = t.job_id AND s.name = t.step_name
         WHERE t.job_id = $1 AND ($3::integer IS NULL OR (s.position, t.index) > ($3, $4))
         ORDER BY s.position, t.index LIMIT $2",
    )
    .bind(job_id)
    .bind(limit)
    .bind(after.map(|(position, _)| position))
    .bind(after.map(|(_, index)| index))
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|PositionedTaskRow { position, task }| ((position, task.index), task_to_proto(task)))
        .collect())
}

fn task_to_proto(r: TaskRow) -> pb::Task {
    pb::Task {
        id: r.id.to_string(),
        job_id: r.job_id.to_string(),
        step_name: r.step_name,
        index: r.index as u32,
        state: TaskState::parse(&r.state)
            .map(TaskState::to_proto)
            .unwrap_or_default() as i32,
        attempts: r.attempt as u32,
        worker_id: r.worker_id.unwrap_or_default(),
        frames: r.frames,
        exit_code: r.exit_code,
        message: r.message,
        log_tail: r.log_tail,
        retry_at: r.retry_at.map(timestamp),
        device: r.device,
        status: r.status,
    }
}

#[derive(sqlx::FromRow)]
struct PositionedTaskRow {
    position: i32,
    #[sqlx(flatten)]
    task: TaskRow,
}

/// Which of a job's outputs to list.
#[derive(Debug, Default)]
pub struct OutputFilter<'a> {
    /// Only the output at exactly this path.
    pub path: Option<&'a str>,
    /// Only outputs of this kind.
    pub kind: Option<&'a str>,
    /// Only outputs with a path after this one (the previous page's last).
    pub after: Option<&'a str>,
}

/// A job's outputs in path order, as `filter` says; at most `limit`.
pub async fn list_outputs(
    db: &PgPool,
    job_id: Uuid,
    filter: OutputFilter<'_>,
    limit: i64,
) -> Result<Vec<pb::JobOutput>, sqlx::Error> {
    let rows: Vec<(String, String, i64, Uuid, String)> = sqlx::query_as(
        "SELECT path, digest, size, task_id, kind FROM outputs
         WHERE job_id = $1 AND ($2::text IS NULL OR path = $2) AND ($3::text IS NULL OR kind = $3)
           AND ($4::text IS NULL OR path > $4)
         ORDER BY path LIMIT $5",
    )
    .bind(job_id)
    .bind(filter.path)
    .bind(filter.kind)
    .bind(filter.after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(path, digest, size, task_id, kind)| pb::JobOutput {
            path,
            digest,
            size: size as u64,
            task_id: task_id.to_string(),
            kind,
        })
        .collect())
}

/// Outputs of the steps `step_names` of a job: the inputs of a step that
/// depends on them. Each comes with whether the step that made it ran as
/// written (OpenJD session model): those are named by their place in the
/// session's working directory, Kiln command lines' by their place under
/// `outputs/`.
pub async fn outputs_of_steps(
    db: &PgPool,
    job_id: Uuid,
    step_names: &[String],
) -> Result<Vec<(String, String, bool)>, sqlx::Error> {
    if step_names.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT o.path, o.digest, s.session_step IS NOT NULL FROM outputs o
         JOIN tasks t ON t.id = o.task_id
         JOIN steps s ON s.job_id = t.job_id AND s.name = t.step_name
         WHERE o.job_id = $1 AND t.step_name = ANY($2) AND o.kind = '' ORDER BY o.path",
    )
    .bind(job_id)
    .bind(step_names)
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> JobFilter {
        JobFilter {
            owner: Some("alice".into()),
            states: vec![JobState::Running, JobState::Pending],
            name_contains: Some("shot".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_filter_fingerprint_ignores_state_order_and_name_case() {
        let mut same = filter();
        same.states.reverse();
        same.name_contains = Some("SHOT".into());
        assert_eq!(filter().fingerprint(), same.fingerprint());
    }

    #[test]
    fn every_filter_changes_the_fingerprint() {
        let base = filter().fingerprint();
        let others = [
            JobFilter {
                owner: Some("bob".into()),
                ..filter()
            },
            JobFilter {
                states: vec![JobState::Running],
                ..filter()
            },
            JobFilter {
                name_contains: None,
                ..filter()
            },
            JobFilter {
                submitted_after: DateTime::from_timestamp(1_780_000_000, 0),
                ..filter()
            },
            JobFilter {
                submitted_before: DateTime::from_timestamp(1_780_000_000, 0),
                ..filter()
            },
        ];
        for other in others {
            assert_ne!(other.fingerprint(), base, "{other:?}");
        }
    }
}

//! The rows written outside the dispatch core's batches: a submitted job
//! (its job, steps and tasks, in one transaction), after a fence check like
//! every write. (Outputs go through the core, with their events.)

use std::collections::HashMap;

use kiln_jobmodel::JobPlan;
use kiln_proto::v1 as pb;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::SchedulerError;
use crate::fence::{self, Token};
use crate::idempotency::{IdempotencyKey, RETENTION_HOURS};
use crate::job_state::JobState;
use crate::task_state::TaskState;

/// What a submission stores besides the plan.
pub struct NewJob<'a> {
    pub name: &'a str,
    pub owner: &'a str,
    pub priority: i32,
    pub template_name: &'a str,
    pub template_document: &'a str,
    pub parameters: &'a HashMap<String, String>,
    pub inputs: &'a [pb::JobInput],
    pub depends_on_jobs: &'a [Uuid],
    pub max_failed_tasks: i32,
    pub max_run_seconds: i32,
    pub stall_seconds: i32,
    pub trace_context: &'a HashMap<String, String>,
    /// The submission's idempotency key, remembered with the job.
    pub idempotency: Option<&'a IdempotencyKey>,
    pub tags: &'a [String],
}

/// A stored job's id and its tasks' ids, step by step in plan order.
pub struct CreatedJob {
    pub id: Uuid,
    pub task_ids: Vec<Vec<Uuid>>,
}

/// Stores a job with all its steps and tasks in one transaction.
pub async fn insert_job(
    db: &PgPool,
    token: Token,
    job: NewJob<'_>,
    plan: &JobPlan,
) -> Result<CreatedJob, SchedulerError> {
    let id = Uuid::new_v4();
    let mut tx = db.begin().await?;
    fence::check(&mut tx, token).await?;
    sqlx::query(
        "INSERT INTO jobs (id, name, state, priority, template_name, template_document, parameters, inputs, owner,
                           depends_on_jobs, max_failed_tasks, max_run_seconds, stall_seconds, trace_context, tags)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(id)
    .bind(job.name)
    .bind(JobState::Pending.as_str())
    .bind(job.priority)
    .bind(job.template_name)
    .bind(job.template_document)
    .bind(serde_json::to_value(job.parameters).unwrap_or_default())
    .bind(inputs_to_json(job.inputs))
    .bind(job.owner)
    .bind(job.depends_on_jobs)
    .bind(job.max_failed_tasks)
    .bind(job.max_run_seconds)
    .bind(job.stall_seconds)
    .bind(serde_json::to_value(job.trace_context).unwrap_or_default())
    .bind(job.tags)
    .execute(&mut *tx)
    .await?;
    if let Some(key) = job.idempotency {
        remember_key(&mut tx, job.owner, key, id).await?;
    }
    let mut task_ids = Vec::with_capacity(plan.steps.len());
    for (position, step) in plan.steps.iter().enumerate() {
        task_ids.push(insert_step(&mut tx, id, position as i32, step).await?);
    }
    // Its `submitted` webhooks commit with it (a submission is no job event).
    let record = pb::Job {
        id: id.to_string(),
        name: job.name.to_owned(),
        state: pb::JobState::Pending as i32,
        priority: job.priority.max(0) as u32,
        template_name: job.template_name.to_owned(),
        parameters: job.parameters.clone(),
        tasks_total: plan.task_count() as u32,
        owner: job.owner.to_owned(),
        inputs: job.inputs.to_vec(),
        depends_on_jobs: job.depends_on_jobs.iter().map(Uuid::to_string).collect(),
        created_at: Some(crate::timestamps::timestamp(chrono::Utc::now())),
        ..Default::default()
    };
    crate::webhooks::fanout::enqueue_submitted(&mut tx, &record).await?;
    tx.commit().await?;
    Ok(CreatedJob { id, task_ids })
}

/// Stores `owner`'s `key` for the job `id`, after pruning expired keys (so
/// the table holds about a day of keyed submissions). A concurrent
/// submission with the same key that committed first makes this fail with a
/// unique violation ([`is_key_taken`]), and the whole job is rolled back.
async fn remember_key(
    tx: &mut Transaction<'_, Postgres>,
    owner: &str,
    key: &IdempotencyKey,
    id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM submit_requests WHERE created_at < now() - make_interval(hours => $1)",
    )
    .bind(RETENTION_HOURS)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO submit_requests (owner, request_id, fingerprint, job_id) VALUES ($1, $2, $3, $4)",
    )
    .bind(owner)
    .bind(key.key())
    .bind(key.fingerprint())
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether `err` is another submission having stored the same key first.
pub fn is_key_taken(err: &SchedulerError) -> bool {
    match err {
        SchedulerError::Database(sqlx::Error::Database(db)) => {
            db.is_unique_violation() && db.constraint() == Some("submit_requests_pkey")
        }
        _ => false,
    }
}

async fn insert_step(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    position: i32,
    step: &kiln_jobmodel::StepPlan,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query("INSERT INTO steps (job_id, name, position, depends_on, host_requirements, session_step) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(job_id)
        .bind(&step.name)
        .bind(position)
        .bind(&step.depends_on)
        .bind(step.host_requirements.as_ref().and_then(|h| serde_json::to_value(h).ok()))
        .bind(step.session.as_ref().map(kiln_jobmodel::SessionStep::to_json))
        .execute(&mut **tx)
        .await?;
    // One multi-row insert per step: a 10,000-frame job is one round trip, not 10,000.
    // Each task's args and frames travel as JSON text because Postgres arrays of
    // arrays must be rectangular, and UNNEST would flatten them.
    let count = step.tasks.len();
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
    let indexes: Vec<i32> = (0..count as i32).collect();
    let commands: Vec<&str> = step.tasks.iter().map(|t| t.command.as_str()).collect();
    let args: Vec<String> = step
        .tasks
        .iter()
        .map(|t| serde_json::to_string(&t.args).unwrap_or_default())
        .collect();
    let frames: Vec<String> = step
        .tasks
        .iter()
        .map(|t| serde_json::to_string(&t.frames).unwrap_or_default())
        .collect();
    let symbols: Vec<Option<&str>> = step.tasks.iter().map(|t| t.symbols.as_deref()).collect();
    sqlx::query(
        "INSERT INTO tasks (id, job_id, step_name, index, state, command, args, frames, task_symbols)
         SELECT id, $2, $3, index, $4, command,
                ARRAY(SELECT jsonb_array_elements_text(args::jsonb)),
                ARRAY(SELECT jsonb_array_elements_text(frames::jsonb)::bigint), task_symbols
         FROM UNNEST($1::uuid[], $5::int[], $6::text[], $7::text[], $8::text[], $9::text[])
              AS t(id, index, command, args, frames, task_symbols)",
    )
    .bind(&ids)
    .bind(job_id)
    .bind(&step.name)
    .bind(TaskState::Pending.as_str())
    .bind(&indexes)
    .bind(&commands)
    .bind(&args)
    .bind(&frames)
    .bind(&symbols)
    .execute(&mut **tx)
    .await?;
    Ok(ids)
}

fn inputs_to_json(inputs: &[pb::JobInput]) -> serde_json::Value {
    serde_json::Value::Array(
        inputs
            .iter()
            .map(|i| serde_json::json!({"path": i.path, "digest": i.digest}))
            .collect(),
    )
}

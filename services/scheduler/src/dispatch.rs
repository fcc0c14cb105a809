//! The dispatch loop: matches pending tasks to workers with free slots.
//!
//! It wakes when something may have changed (a submission, a finished task,
//! a worker joining) and on a short tick (for retries whose backoff ran out),
//! claims tasks for each free worker in one statement per worker, and sends
//! the assignments down the workers' streams.

use std::sync::Arc;
use std::time::Duration;

use kiln_proto::v1 as pb;
use uuid::Uuid;

use crate::scheduler::Scheduler;
use crate::task_state::{self, Outcome, TaskEvent, TaskState};
use crate::workers::FreeWorker;
use crate::{SchedulerError, store};

/// Longest a retry whose backoff has run out waits for a dispatch.
const TICK: Duration = Duration::from_secs(1);

#[derive(sqlx::FromRow)]
struct ClaimedTask {
    id: Uuid,
    job_id: Uuid,
    step_name: String,
    index: i32,
    attempt: i32,
    command: String,
    args: Vec<String>,
    frames: Vec<i64>,
    inputs: serde_json::Value,
    depends_on: Vec<String>,
}

pub async fn run(scheduler: Arc<Scheduler>) {
    loop {
        if let Err(err) = dispatch_once(&scheduler).await {
            tracing::warn!(error = %err, "dispatch failed; retrying");
        }
        let _ = tokio::time::timeout(TICK, scheduler.dispatch_wanted.notified()).await;
    }
}

async fn dispatch_once(scheduler: &Scheduler) -> Result<(), SchedulerError> {
    for worker in scheduler.workers.free_workers() {
        let claimed = claim(scheduler, &worker).await?;
        for task in claimed {
            send_assignment(scheduler, &worker, task).await?;
        }
    }
    Ok(())
}

/// Claims up to `free_slots` runnable tasks for one worker: highest job
/// priority first, then oldest job, then step order and task order. A task
/// is runnable when every step its step depends on has succeeded entirely.
async fn claim(
    scheduler: &Scheduler,
    worker: &FreeWorker,
) -> Result<Vec<ClaimedTask>, SchedulerError> {
    let rule = TaskEvent::Dispatch.rule();
    let claimed = sqlx::query_as(
        "WITH ready AS (
             SELECT t.id FROM tasks t
             JOIN jobs j ON j.id = t.job_id
             JOIN steps s ON s.job_id = t.job_id AND s.name = t.step_name
             WHERE t.state = ANY($1) AND j.state IN ('pending', 'running')
               AND (t.retry_at IS NULL OR t.retry_at <= now())
               AND t.command = ANY($2)
               AND NOT EXISTS (
                   SELECT 1 FROM tasks d
                   WHERE d.job_id = t.job_id AND d.step_name = ANY(s.depends_on) AND d.state <> $3)
             ORDER BY j.priority DESC, j.created_at, s.position, t.index
             LIMIT $4
             FOR UPDATE OF t SKIP LOCKED)
         UPDATE tasks t SET state = $5, attempt = t.attempt + 1, worker_id = $6, updated_at = now(),
                exit_code = NULL, retry_at = NULL
         FROM ready, jobs j, steps s
         WHERE t.id = ready.id AND j.id = t.job_id AND s.job_id = t.job_id AND s.name = t.step_name
         RETURNING t.id, t.job_id, t.step_name, t.index, t.attempt, t.command, t.args, t.frames, j.inputs, s.depends_on",
    )
    .bind(rule.from_strs())
    .bind(&worker.renderers)
    .bind(TaskState::Succeeded.as_str())
    .bind(worker.free_slots as i64)
    .bind(rule.to.as_str())
    .bind(&worker.worker_id)
    .fetch_all(&scheduler.db)
    .await?;
    Ok(claimed)
}

async fn send_assignment(
    scheduler: &Scheduler,
    worker: &FreeWorker,
    task: ClaimedTask,
) -> Result<(), SchedulerError> {
    let key = (task.id, task.attempt);
    let assignment = assignment_for(scheduler, &task).await?;
    let delivered = scheduler
        .workers
        .assign(&worker.worker_id, worker.session, key, task.job_id)
        && worker.outbox.send(Ok(assignment)).await.is_ok();
    if !delivered {
        // The worker left between the claim and the send: give the task back.
        scheduler.workers.release(&worker.worker_id, key);
        let outcome = Outcome {
            message: "worker left before the task reached it".into(),
            ..Default::default()
        };
        if let Some(requeued) = task_state::apply(
            &scheduler.db,
            task.id,
            task.attempt,
            TaskEvent::Lose,
            &outcome,
            None,
        )
        .await?
        {
            scheduler.after_transition(&requeued).await?;
        }
        return Ok(());
    }
    tracing::info!(task_id = %task.id, attempt = task.attempt, worker_id = %worker.worker_id, step = %task.step_name, "dispatched");
    let transitioned = task_state::TransitionedTask {
        id: task.id,
        job_id: task.job_id,
        step_name: task.step_name,
        index: task.index,
        attempt: task.attempt,
        worker_id: Some(worker.worker_id.clone()),
        state: TaskState::Dispatched.as_str().to_owned(),
    };
    scheduler.after_transition(&transitioned).await
}

/// The job's inputs, plus the outputs of the steps this task's step depends
/// on, placed under `outputs/` as they were when produced.
async fn assignment_for(
    scheduler: &Scheduler,
    task: &ClaimedTask,
) -> Result<pb::SchedulerMessage, SchedulerError> {
    let mut inputs: Vec<pb::TaskInput> = store::inputs_from_json(&task.inputs)
        .into_iter()
        .map(|i| pb::TaskInput {
            path: i.path,
            digest: i.digest,
        })
        .collect();
    for (path, digest) in
        store::outputs_of_steps(&scheduler.db, task.job_id, &task.depends_on).await?
    {
        inputs.push(pb::TaskInput {
            path: format!("outputs/{path}"),
            digest,
        });
    }
    let assignment = pb::TaskAssignment {
        task_id: task.id.to_string(),
        job_id: task.job_id.to_string(),
        attempt: task.attempt as u32,
        step_name: task.step_name.clone(),
        command: task.command.clone(),
        args: task.args.clone(),
        inputs,
        frames: task.frames.clone(),
        max_run_seconds: 0,
        stall_seconds: 0,
    };
    Ok(pb::SchedulerMessage {
        message: Some(pb::scheduler_message::Message::Assignment(assignment)),
    })
}

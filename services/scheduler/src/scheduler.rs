//! What happens around a task changing state: job state, events, slots,
//! cancellations. Services and the dispatch loop call in here.

use std::sync::Arc;

use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::events::EventBus;
use crate::job_state::JobState;
use crate::retry::RetryPolicy;
use crate::task_state::{self, Outcome, TaskEvent, TransitionedTask};
use crate::workers::WorkerRegistry;
use crate::{SchedulerError, store};

pub struct Scheduler {
    pub db: PgPool,
    pub workers: WorkerRegistry,
    pub events: EventBus,
    pub retry: RetryPolicy,
    /// Woken whenever there may be new work or a newly free worker.
    pub dispatch_wanted: Notify,
}

impl Scheduler {
    pub fn new(db: PgPool, retry: RetryPolicy) -> Arc<Self> {
        Arc::new(Self {
            db,
            workers: WorkerRegistry::default(),
            events: EventBus::default(),
            retry,
            dispatch_wanted: Notify::new(),
        })
    }

    /// Publishes a task's new state and moves its job along.
    pub async fn after_transition(&self, task: &TransitionedTask) -> Result<(), SchedulerError> {
        self.events.publish(
            task.job_id,
            Event::TaskStateChanged(pb::TaskStateChanged {
                task_id: task.id.to_string(),
                step_name: task.step_name.clone(),
                index: task.index as u32,
                state: crate::task_state::TaskState::parse(&task.state)
                    .map(|s| s.to_proto())
                    .unwrap_or_default() as i32,
                worker_id: task.worker_id.clone().unwrap_or_default(),
                message: String::new(),
            }),
        );
        match store::refresh_job_state(&self.db, task.job_id).await? {
            Some(state) => self.after_job_state(task.job_id, state).await?,
            // The job's counts moved even if its state did not.
            None => self.publish_job(task.job_id).await,
        }
        Ok(())
    }

    async fn after_job_state(&self, job_id: Uuid, state: JobState) -> Result<(), SchedulerError> {
        tracing::info!(job_id = %job_id, state = state.as_str(), "job state changed");
        if matches!(state, JobState::Failed | JobState::Cancelled) {
            let message = format!("job {}", state.as_str());
            let stopped =
                task_state::apply_to_job(&self.db, job_id, TaskEvent::Cancel, &message).await?;
            self.stop_on_workers(&stopped).await;
        }
        self.publish_job(job_id).await;
        self.dispatch_wanted.notify_one();
        Ok(())
    }

    /// Sends the job's current record to its watchers.
    pub async fn publish_job(&self, job_id: Uuid) {
        match store::get_job(&self.db, job_id).await {
            Ok(Some(job)) => self.events.publish(job_id, Event::JobChanged(job)),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(job_id = %job_id, error = %err, "cannot read job for watchers")
            }
        }
    }

    /// Tells the workers running these attempts to stop, and frees their slots.
    async fn stop_on_workers(&self, tasks: &[TransitionedTask]) {
        for task in tasks {
            let Some(worker_id) = &task.worker_id else {
                continue;
            };
            self.workers.release(worker_id, (task.id, task.attempt));
            if let Some(outbox) = self.workers.outbox(worker_id) {
                let cancel = pb::CancelTask {
                    task_id: task.id.to_string(),
                    attempt: task.attempt as u32,
                };
                let message = pb::SchedulerMessage {
                    message: Some(pb::scheduler_message::Message::Cancel(cancel)),
                };
                if outbox.send(Ok(message)).await.is_err() {
                    tracing::debug!(
                        worker_id,
                        "worker went away before it could be told to cancel"
                    );
                }
            }
        }
    }

    /// A worker reports the end of an attempt.
    pub async fn record_result(
        &self,
        worker_id: &str,
        result: pb::TaskResult,
    ) -> Result<(), SchedulerError> {
        let task_id = parse_task_id(&result.task_id)?;
        let attempt = result.attempt as i32;
        self.workers.release(worker_id, (task_id, attempt));
        self.dispatch_wanted.notify_one();
        let outcome = Outcome {
            exit_code: result.exit_code,
            message: result.message,
            log_tail: result.log_tail,
        };
        let (event, delay) = if result.success {
            (TaskEvent::Succeed, None)
        } else {
            self.retry.on_failure(result.attempt)
        };
        let Some(task) =
            task_state::apply(&self.db, task_id, attempt, event, &outcome, delay).await?
        else {
            tracing::info!(task_id = %task_id, attempt, worker_id, "ignored a report for a superseded attempt");
            return Ok(());
        };
        tracing::info!(task_id = %task_id, attempt, worker_id, state = task.state, "task finished an attempt");
        // A retry waiting out its backoff is picked up by the dispatch loop's periodic tick.
        self.after_transition(&task).await
    }

    pub async fn record_started(
        &self,
        worker_id: &str,
        started: pb::TaskStarted,
    ) -> Result<(), SchedulerError> {
        let task_id = parse_task_id(&started.task_id)?;
        let outcome = Outcome::default();
        if let Some(task) = task_state::apply(
            &self.db,
            task_id,
            started.attempt as i32,
            TaskEvent::Start,
            &outcome,
            None,
        )
        .await?
        {
            tracing::debug!(task_id = %task_id, worker_id, "task started");
            self.after_transition(&task).await?;
        }
        Ok(())
    }

    pub async fn record_output(&self, output: pb::OutputStored) -> Result<(), SchedulerError> {
        let task_id = parse_task_id(&output.task_id)?;
        if let Some(job_id) =
            store::record_output(&self.db, task_id, output.attempt as i32, &output).await?
        {
            let job_output = pb::JobOutput {
                path: output.path,
                digest: output.digest,
                size: output.size,
                task_id: output.task_id,
            };
            self.events.publish(
                job_id,
                Event::OutputAdded(pb::OutputAdded {
                    output: Some(job_output),
                }),
            );
        }
        Ok(())
    }

    /// Progress is frequent and disposable: it goes to watchers from memory,
    /// never through Postgres, and only for attempts the worker still holds.
    pub fn record_progress(
        &self,
        worker_id: &str,
        progress: pb::TaskProgressReport,
    ) -> Result<(), SchedulerError> {
        let task_id = parse_task_id(&progress.task_id)?;
        let attempt = (task_id, progress.attempt as i32);
        if let Some(job_id) = self.workers.job_of(worker_id, attempt) {
            let event = pb::TaskProgress {
                task_id: progress.task_id,
                fraction: progress.fraction,
                frame: progress.frame,
            };
            self.events.publish(job_id, Event::TaskProgress(event));
        }
        Ok(())
    }

    /// A worker's session ended: whatever it was running goes back to the queue.
    pub async fn worker_gone(&self, worker_id: &str) -> Result<(), SchedulerError> {
        let requeued = task_state::apply_to_worker(&self.db, worker_id, TaskEvent::Lose).await?;
        if !requeued.is_empty() {
            tracing::warn!(
                worker_id,
                tasks = requeued.len(),
                "requeued the tasks of a departed worker"
            );
        }
        for task in &requeued {
            self.after_transition(task).await?;
        }
        self.dispatch_wanted.notify_one();
        Ok(())
    }

    pub async fn cancel_job(&self, job_id: Uuid) -> Result<(), SchedulerError> {
        let Some(state) = store::job_state(&self.db, job_id).await? else {
            return Err(SchedulerError::JobNotFound(job_id.to_string()));
        };
        if state.is_final() {
            return Ok(());
        }
        if let Some(cancelled) = store::set_job_state(
            &self.db,
            job_id,
            state,
            JobState::Cancelled,
            "cancelled by user",
        )
        .await?
        {
            self.after_job_state(job_id, cancelled).await?;
        }
        Ok(())
    }
}

pub fn parse_task_id(text: &str) -> Result<Uuid, SchedulerError> {
    Uuid::parse_str(text)
        .map_err(|_| SchedulerError::InvalidArgument(format!("task id {text:?} is not a UUID")))
}

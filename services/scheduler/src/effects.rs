//! What happens once a batch is durable: assignments and cancels go to the
//! workers, events go to watchers, waiting callers get their answer. The
//! core's effects name sessions and requests by id; the dispatch loop turns
//! them into these actions on the channels behind the ids. Actions run in
//! order on one task, separate from the dispatch loop, so a slow watcher or
//! a dependency lookup never holds up dispatch.

use std::sync::Arc;

use kiln_proto::v1 as pb;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use crate::core::command::Command;
use crate::event_bus::EventBus;
use crate::inbox::{Inbound, Outbox, Reply};
use crate::queries;

pub enum Action {
    Deliver {
        to: Recipient,
        job_id: Uuid,
        assignment: Box<pb::TaskAssignment>,
        /// Steps whose outputs the task receives as inputs under `outputs/`.
        dependency_steps: Vec<String>,
    },
    Cancel {
        outbox: Outbox,
        task_id: Uuid,
        attempt: i32,
    },
    /// A job event, now durable, goes to live watchers.
    Publish(Arc<pb::JobEvent>),
    Answer(Reply),
}

/// Where an assignment goes, and which attempt it is.
pub struct Recipient {
    pub worker_id: String,
    pub outbox: Outbox,
    pub attempt: (Uuid, i32),
}

pub struct EffectRunner {
    db: PgPool,
    events: Arc<EventBus>,
    /// Back into the dispatch loop, for assignments that could not be delivered.
    inbox: mpsc::Sender<Inbound>,
}

impl EffectRunner {
    pub fn new(db: PgPool, events: Arc<EventBus>, inbox: mpsc::Sender<Inbound>) -> Self {
        Self { db, events, inbox }
    }

    /// Applies committed batches' actions in commit order.
    pub async fn run(mut self, mut batches: mpsc::Receiver<(Instant, Vec<Action>)>) {
        while let Some((committed, effects)) = batches.recv().await {
            metrics::histogram!(crate::scheduler_metrics::EVENT_LAG)
                .record(committed.elapsed().as_secs_f64());
            for effect in effects {
                self.apply(effect).await;
            }
        }
    }

    async fn apply(&mut self, action: Action) {
        match action {
            Action::Deliver {
                to,
                job_id,
                assignment,
                dependency_steps,
            } => {
                self.deliver(to, job_id, *assignment, &dependency_steps)
                    .await
            }
            Action::Cancel {
                outbox,
                task_id,
                attempt,
            } => {
                let cancel = pb::CancelTask {
                    task_id: task_id.to_string(),
                    attempt: attempt as u32,
                };
                let message = pb::SchedulerMessage {
                    message: Some(pb::scheduler_message::Message::Cancel(cancel)),
                };
                if outbox.try_send(Box::new(message)).is_err() {
                    tracing::debug!(task_id = %task_id, "worker gone before it could be told to cancel");
                }
            }
            Action::Publish(event) => self.events.publish(event),
            Action::Answer(reply) => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    async fn deliver(
        &self,
        to: Recipient,
        job_id: Uuid,
        mut assignment: pb::TaskAssignment,
        dependency_steps: &[String],
    ) {
        if !dependency_steps.is_empty() {
            match self.dependency_outputs(job_id, dependency_steps).await {
                Ok(inputs) => assignment.inputs.extend(inputs),
                Err(err) => {
                    tracing::warn!(error = %err, task_id = %to.attempt.0, "cannot list the outputs a task needs");
                    return self.undeliverable(to);
                }
            }
        }
        tracing::debug!(task_id = %to.attempt.0, attempt = to.attempt.1, worker_id = %to.worker_id, "dispatched");
        let message = pb::SchedulerMessage {
            message: Some(pb::scheduler_message::Message::Assignment(assignment)),
        };
        if to.outbox.try_send(Box::new(message)).is_err() {
            self.undeliverable(to);
        }
    }

    async fn dependency_outputs(
        &self,
        job_id: Uuid,
        steps: &[String],
    ) -> Result<Vec<pb::TaskInput>, sqlx::Error> {
        let outputs = queries::outputs_of_steps(&self.db, job_id, steps).await?;
        Ok(outputs
            .into_iter()
            .map(|(path, digest, as_written)| pb::TaskInput {
                path: if as_written {
                    path
                } else {
                    format!("outputs/{path}")
                },
                digest,
            })
            .collect())
    }

    fn undeliverable(&self, to: Recipient) {
        let (task_id, attempt) = to.attempt;
        let command = Command::Undeliverable {
            worker_id: to.worker_id,
            task_id,
            attempt,
        };
        // If the core is too busy to hear it now, the start timeout requeues the task.
        if self.inbox.try_send(Inbound::Tell(command)).is_err() {
            tracing::warn!(task_id = %task_id, "could not report an undelivered assignment");
        }
    }
}

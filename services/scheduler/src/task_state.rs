//! The task state machine, written as data.
//!
//! Every change of a task's state goes through [`TaskEvent::rule`]: the
//! states it may leave from and the state it leads to. The SQL that applies
//! an event (here and in `dispatch.rs`) takes both from that table and
//! guards on the current state and attempt, so a late or duplicate report
//! can never move a task backwards or count twice.

use kiln_proto::v1::TaskState as ProtoTaskState;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Dispatched,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Dispatched => "dispatched",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Dispatched,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn to_proto(self) -> ProtoTaskState {
        match self {
            Self::Pending => ProtoTaskState::Pending,
            Self::Dispatched => ProtoTaskState::Dispatched,
            Self::Running => ProtoTaskState::Running,
            Self::Succeeded => ProtoTaskState::Succeeded,
            Self::Failed => ProtoTaskState::Failed,
            Self::Cancelled => ProtoTaskState::Cancelled,
        }
    }
}

/// Something that happens to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEvent {
    /// Handed to a worker.
    Dispatch,
    /// The worker started it.
    Start,
    /// It finished and produced everything expected.
    Succeed,
    /// It failed, and the retry policy allows another attempt.
    FailAndRetry,
    /// It failed for the last time.
    FailFinally,
    /// Its worker went away before it finished.
    Lose,
    /// A user cancelled it (or its job).
    Cancel,
}

/// One row of the state machine: an event, the states it applies in, and the state it leads to.
pub struct Rule {
    pub from: &'static [TaskState],
    pub to: TaskState,
}

use TaskState::*;

const IN_FLIGHT: &[TaskState] = &[Dispatched, Running];

impl TaskEvent {
    pub const fn rule(self) -> Rule {
        match self {
            Self::Dispatch => Rule {
                from: &[Pending],
                to: Dispatched,
            },
            Self::Start => Rule {
                from: &[Dispatched],
                to: Running,
            },
            Self::Succeed => Rule {
                from: IN_FLIGHT,
                to: Succeeded,
            },
            Self::FailAndRetry => Rule {
                from: IN_FLIGHT,
                to: Pending,
            },
            Self::FailFinally => Rule {
                from: IN_FLIGHT,
                to: Failed,
            },
            Self::Lose => Rule {
                from: IN_FLIGHT,
                to: Pending,
            },
            Self::Cancel => Rule {
                from: &[Pending, Dispatched, Running],
                to: Cancelled,
            },
        }
    }
}

impl Rule {
    pub fn from_strs(&self) -> Vec<String> {
        self.from.iter().map(|s| s.as_str().to_owned()).collect()
    }
}

/// What a worker's report (or the scheduler) says about one attempt of a task.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    pub message: String,
    pub log_tail: String,
}

/// A task as it is after a transition.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TransitionedTask {
    pub id: Uuid,
    pub job_id: Uuid,
    pub step_name: String,
    pub index: i32,
    pub attempt: i32,
    pub worker_id: Option<String>,
    pub state: String,
}

/// Applies `event` to one attempt of a task. Returns `None` when the task is
/// not in a state the event applies to, or has moved on to another attempt:
/// the report is stale and changes nothing.
pub async fn apply(
    db: impl sqlx::PgExecutor<'_>,
    task_id: Uuid,
    attempt: i32,
    event: TaskEvent,
    outcome: &Outcome,
    retry_delay: Option<std::time::Duration>,
) -> Result<Option<TransitionedTask>, sqlx::Error> {
    let rule = event.rule();
    sqlx::query_as(
        "UPDATE tasks SET state = $1, updated_at = now(),
                exit_code = COALESCE($4, exit_code),
                message = CASE WHEN $5 = '' THEN message ELSE $5 END,
                log_tail = CASE WHEN $6 = '' THEN log_tail ELSE $6 END,
                retry_at = CASE WHEN $7::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $7) END
         WHERE id = $2 AND attempt = $3 AND state = ANY($8)
         RETURNING id, job_id, step_name, index, attempt, worker_id, state",
    )
    .bind(rule.to.as_str())
    .bind(task_id)
    .bind(attempt)
    .bind(outcome.exit_code)
    .bind(&outcome.message)
    .bind(&outcome.log_tail)
    .bind(retry_delay.map(|d| d.as_secs_f64()))
    .bind(rule.from_strs())
    .fetch_optional(db)
    .await
}

/// Applies `event` to every in-flight task of `worker_id` (its session ended).
pub async fn apply_to_worker(
    db: impl sqlx::PgExecutor<'_>,
    worker_id: &str,
    event: TaskEvent,
) -> Result<Vec<TransitionedTask>, sqlx::Error> {
    let rule = event.rule();
    sqlx::query_as(
        "UPDATE tasks SET state = $1, updated_at = now(), message = 'worker ' || $2 || ' went away'
         WHERE worker_id = $2 AND state = ANY($3)
         RETURNING id, job_id, step_name, index, attempt, worker_id, state",
    )
    .bind(rule.to.as_str())
    .bind(worker_id)
    .bind(rule.from_strs())
    .fetch_all(db)
    .await
}

/// Applies `event` to every task of a job in a state it applies to.
pub async fn apply_to_job(
    db: impl sqlx::PgExecutor<'_>,
    job_id: Uuid,
    event: TaskEvent,
    message: &str,
) -> Result<Vec<TransitionedTask>, sqlx::Error> {
    let rule = event.rule();
    sqlx::query_as(
        "UPDATE tasks SET state = $1, updated_at = now(), message = $3
         WHERE job_id = $2 AND state = ANY($4)
         RETURNING id, job_id, step_name, index, attempt, worker_id, state",
    )
    .bind(rule.to.as_str())
    .bind(job_id)
    .bind(message)
    .bind(rule.from_strs())
    .fetch_all(db)
    .await
}

/// Applies `event` to every task in flight anywhere: used at start-up, when
/// no worker can yet be connected to this scheduler.
pub async fn apply_to_all_in_flight(
    db: impl sqlx::PgExecutor<'_>,
    event: TaskEvent,
) -> Result<u64, sqlx::Error> {
    let rule = event.rule();
    let result =
        sqlx::query("UPDATE tasks SET state = $1, updated_at = now() WHERE state = ANY($2)")
            .bind(rule.to.as_str())
            .bind(rule.from_strs())
            .execute(db)
            .await?;
    Ok(result.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_tasks_never_move() {
        let events = [
            TaskEvent::Dispatch,
            TaskEvent::Start,
            TaskEvent::Succeed,
            TaskEvent::FailAndRetry,
            TaskEvent::FailFinally,
            TaskEvent::Lose,
            TaskEvent::Cancel,
        ];
        for event in events {
            let rule = event.rule();
            for terminal in [Succeeded, Failed, Cancelled] {
                assert!(
                    !rule.from.contains(&terminal),
                    "{event:?} must not leave {terminal:?}"
                );
            }
        }
    }

    #[test]
    fn state_names_round_trip() {
        for state in [Pending, Dispatched, Running, Succeeded, Failed, Cancelled] {
            assert_eq!(TaskState::parse(state.as_str()), Some(state));
        }
    }
}

//! What the passing of time does: retries whose backoff ran out go back to
//! their queues; attempts never confirmed, or running past their limit, end.

use std::cmp::Reverse;
use std::time::Duration;

use crate::core::model::Outcome;
use crate::core::{Core, MAX_RUN_GRACE, START_TIMEOUT};
use crate::task_state::TaskState;

impl Core {
    /// Tasks whose retry backoff has run out go back into their queues.
    pub(super) fn release_due_retries(&mut self) {
        let now = self.now.instant;
        while let Some(Reverse((at, task_id))) = self.retries.peek().copied() {
            if at > now {
                break;
            }
            self.retries.pop();
            if self
                .tasks
                .get(&task_id)
                .is_some_and(|t| t.state == TaskState::WaitingRetry)
            {
                self.make_ready(task_id, true);
            }
        }
    }

    /// A dispatched attempt its worker never confirmed is lost; one past its
    /// job's maximum run time (and a grace for the worker to kill it) fails.
    pub(super) fn end_overdue_attempts(&mut self) {
        let now = self.now.instant;
        let mut overdue = Vec::new();
        for (worker_id, worker) in &self.workers {
            for &(task_id, attempt) in &worker.running {
                let Some(task) = self.tasks.get(&task_id) else {
                    continue;
                };
                let Some(since) = task.dispatched_at else {
                    continue;
                };
                let max_run = self.jobs.get(&task.job_id).map_or(0, |j| j.max_run_seconds);
                let age = now.saturating_duration_since(since);
                if task.state == TaskState::Dispatched && age > START_TIMEOUT {
                    overdue.push((worker_id.clone(), task_id, attempt, false));
                } else if max_run > 0
                    && age > Duration::from_secs(u64::from(max_run)) + MAX_RUN_GRACE
                {
                    overdue.push((worker_id.clone(), task_id, attempt, true));
                }
            }
        }
        for (worker_id, task_id, attempt, ran_too_long) in overdue {
            if ran_too_long {
                self.send_cancel(&worker_id, task_id, attempt);
                let outcome = Outcome {
                    message: "ran past its maximum run time".into(),
                    ..Outcome::default()
                };
                self.fail_attempt(&worker_id, task_id, &outcome);
            } else {
                self.lose(
                    &worker_id,
                    task_id,
                    attempt,
                    "the worker never confirmed it started",
                );
            }
        }
    }
}

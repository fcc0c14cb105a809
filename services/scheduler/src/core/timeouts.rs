//! What the passing of time does: retries whose backoff ran out go back to
//! their queues; attempts never confirmed, or running past their limit, end.

use std::cmp::Reverse;
use std::time::Duration;

use crate::core::model::{Attempt, Outcome, WorkerEntry};
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
            for (task_id, attempt) in self.unconfirmed(worker) {
                overdue.push((worker_id.clone(), task_id, attempt, false));
            }
            for &(task_id, attempt) in &worker.running {
                let Some(task) = self.tasks.get(&task_id) else {
                    continue;
                };
                let Some(since) = task.started_at.or(task.dispatched_at) else {
                    continue;
                };
                if task.state != TaskState::Running {
                    continue;
                }
                let max_run = self.jobs.get(&task.job_id).map_or(0, |j| j.max_run_seconds);
                let age = now.saturating_duration_since(since);
                if max_run > 0 && age > Duration::from_secs(u64::from(max_run)) + MAX_RUN_GRACE {
                    overdue.push((worker_id.clone(), task_id, attempt, true));
                }
            }
        }
        for (worker_id, task_id, attempt, ran_too_long) in overdue {
            // Either way the worker may still hold the attempt (running, or
            // queued): it must not run it, or not on.
            self.send_cancel(&worker_id, task_id, attempt);
            if ran_too_long {
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

    /// The worker's dispatched attempts that should have started by now and
    /// were never confirmed. A worker with lookahead holds some queued, not
    /// started, for as long as its slots are busy: only as many as it has
    /// slots without a started attempt are expected to start, the oldest
    /// first (it starts them in the order given), and each no earlier than
    /// its dispatch or the moment a slot last freed, whichever is later.
    fn unconfirmed(&self, worker: &WorkerEntry) -> Vec<Attempt> {
        let mut started = 0;
        let mut waiting = Vec::new();
        for &(task_id, attempt) in &worker.running {
            let Some(task) = self.tasks.get(&task_id) else {
                continue;
            };
            match task.state {
                TaskState::Running => started += 1,
                TaskState::Dispatched => {
                    if let Some(at) = task.dispatched_at {
                        waiting.push((at, (task_id, attempt)));
                    }
                }
                _ => {}
            }
        }
        waiting.sort();
        let now = self.now.instant;
        waiting
            .into_iter()
            .take(worker.slots.saturating_sub(started))
            .filter(|(at, _)| {
                let since = worker.slot_freed_at.map_or(*at, |freed| freed.max(*at));
                now.saturating_duration_since(since) > START_TIMEOUT
            })
            .map(|(_, attempt)| attempt)
            .collect()
    }
}

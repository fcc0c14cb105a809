//! Task and job state changes. Every task change goes through
//! `Core::transition`, which applies the state machine, keeps the counts and
//! shares in step, and queues the guarded row write and the event; every
//! job change goes through `Core::set_job_state`.

use std::cmp::Reverse;

use chrono::{DateTime, Utc};
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use uuid::Uuid;

use crate::core::batch::{Effect, JobWrite, TaskWrite};
use crate::core::model::Outcome;
use crate::core::{Core, RECENTLY_FINISHED};
use crate::job_state::{self, JobState, TaskCounts};
use crate::scene_history;
use crate::task_state::{TaskEvent, TaskState};

impl Core {
    /// Applies `event` to the current attempt of a task. Returns the new
    /// state, or `None` (and changes nothing) when the event does not apply
    /// to the task's state.
    pub(super) fn transition(
        &mut self,
        task_id: Uuid,
        event: TaskEvent,
        outcome: Option<&Outcome>,
    ) -> Option<TaskState> {
        self.transition_until(task_id, event, outcome, None)
    }

    /// [`Core::transition`], with the time a retry is due written with the row.
    pub(super) fn transition_until(
        &mut self,
        task_id: Uuid,
        event: TaskEvent,
        outcome: Option<&Outcome>,
        retry_at: Option<DateTime<Utc>>,
    ) -> Option<TaskState> {
        let now = self.now.instant;
        let task = self.tasks.get_mut(&task_id)?;
        let from = task.state;
        let to = event.next(from)?;
        let mut write = TaskWrite::new(task_id, from, task.attempt);
        match event {
            TaskEvent::Dispatch => {
                task.attempt += 1;
                task.dispatched_at = Some(now);
                task.started_at = None;
            }
            TaskEvent::Start => task.started_at = Some(now),
            TaskEvent::FailAndRetry | TaskEvent::FailFinally => task.failures += 1,
            TaskEvent::Reopen => task.failures = 0,
            _ => {}
        }
        task.state = to;
        write.state = to;
        write.attempt = task.attempt;
        write.failures = task.failures;
        write.worker_id = task.worker_id.clone();
        write.retry_at = retry_at;
        if let Some(outcome) = outcome {
            write.exit_code = outcome.exit_code;
            write.message = Some(outcome.message.clone());
            write.log_tail = (!outcome.log_tail.is_empty()).then(|| outcome.log_tail.clone());
            write.device = outcome.device.clone();
            write.status = outcome.status.clone();
        }
        let (job_id, step, index, attempt, worker_id) = (
            task.job_id,
            task.step,
            task.index,
            task.attempt,
            task.worker_id.clone(),
        );
        if from.is_in_flight() && !to.is_in_flight() {
            self.release_slot(worker_id.as_deref(), task_id, attempt);
        }
        if to == TaskState::Succeeded {
            self.learn_run_time(task_id);
            self.outputs.forget(task_id);
        }
        self.count_move(job_id, step, from, to);
        self.batch.tasks.push(write);
        let step_name = self.step_name(job_id, step);
        let change = pb::TaskStateChanged {
            task_id: task_id.to_string(),
            step_name,
            index: index as u32,
            state: to.to_proto() as i32,
            worker_id: worker_id.unwrap_or_default(),
            message: outcome.map(|o| o.message.clone()).unwrap_or_default(),
            attempt: attempt.max(0) as u32,
        };
        self.emit(job_id, Event::TaskStateChanged(change));
        self.touched_jobs.insert(job_id);
        Some(to)
    }

    fn step_name(&self, job_id: Uuid, step: usize) -> String {
        self.jobs
            .get(&job_id)
            .and_then(|j| j.steps.get(step))
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    fn release_slot(&mut self, worker_id: Option<&str>, task_id: Uuid, attempt: i32) {
        let Some(worker_id) = worker_id else { return };
        if let Some(worker) = self.workers.get_mut(worker_id)
            && worker.running.remove(&(task_id, attempt))
        {
            if worker.running.is_empty() {
                worker.idle_since = Some(self.now.instant);
            }
            worker.slot_freed_at = Some(self.now.instant);
            self.free_workers.insert(worker_id.to_owned());
            self.dispatch_wanted = true;
        }
    }

    /// Keeps the job's counts, its step's progress and the owner's share in step with a move.
    fn count_move(&mut self, job_id: Uuid, step: usize, from: TaskState, to: TaskState) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        *bucket(&mut job.counts, from) -= 1;
        *bucket(&mut job.counts, to) += 1;
        if let Some(step) = job.steps.get_mut(step) {
            step.succeeded = adjust(step.succeeded, from, to, TaskState::Succeeded);
            step.failed = adjust(step.failed, from, to, TaskState::Failed);
        }
        if from.is_in_flight() != to.is_in_flight() {
            if to.is_in_flight() {
                self.shares.started(&job.owner);
            } else {
                self.shares.stopped(&job.owner);
            }
        }
        if to == TaskState::Succeeded {
            // A finished step may unblock the steps after it.
            self.dispatch_wanted = true;
        }
    }

    /// Folds a successful attempt's run time into its step's recent mean.
    fn learn_run_time(&mut self, task_id: Uuid) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let Some(ran) = task
            .started_at
            .or(task.dispatched_at)
            .map(|t| self.now.instant.saturating_duration_since(t).as_secs_f64())
        else {
            return;
        };
        if task.claimed_attempt == Some(task.attempt) {
            return;
        }
        self.eta
            .learn(task.job_id, task.step, ran, task.frame_count());
        if let Some(step) = self
            .jobs
            .get_mut(&task.job_id)
            .and_then(|j| j.steps.get_mut(task.step))
        {
            step.mean_run_seconds = Some(match step.mean_run_seconds {
                Some(mean) => mean * 0.8 + ran * 0.2,
                None => ran,
            });
        }
    }

    /// Puts a task back in its step's queue, at the front or the back.
    pub(super) fn make_ready(&mut self, task_id: Uuid, front: bool) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        task.ready_at = Some(self.now.instant);
        if let Some(step) = self
            .jobs
            .get_mut(&task.job_id)
            .and_then(|j| j.steps.get_mut(task.step))
        {
            if front {
                step.ready.push_front(task_id);
            } else {
                step.ready.push_back(task_id);
            }
            self.dispatch_wanted = true;
        }
    }

    /// Derives the state of every job touched since the last call, writes
    /// the ones that changed, and finishes jobs that reached a final state.
    pub(super) fn refresh_jobs(&mut self) {
        while !self.touched_jobs.is_empty() {
            let touched: Vec<Uuid> = self.touched_jobs.drain().collect();
            for job_id in touched {
                self.refresh_job(job_id);
            }
        }
    }

    pub(super) fn touch(&mut self, job_id: Uuid) {
        self.touched_jobs.insert(job_id);
    }

    fn refresh_job(&mut self, job_id: Uuid) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let next = job_state::derive(job.state, job.facts());
        if next != job.state {
            if next == JobState::Failed && job.message.is_empty() {
                job.message = format!("{} tasks failed", job.counts.failed);
            }
            self.set_job_state(job_id, next);
        } else {
            self.emit_record(job_id, false);
        }
    }

    /// Moves a job to `state` (any state: users reopen final jobs) and writes it.
    pub(super) fn set_job_state(&mut self, job_id: Uuid, state: JobState) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let reopened = job.state.is_final() && !state.is_final();
        job.state = state;
        tracing::info!(job_id = %job_id, state = state.as_str(), "job state changed");
        if state.is_final() {
            self.batch.observations.jobs_finished.push(state);
        }
        self.batch.jobs.push(JobWrite {
            id: job_id,
            state,
            priority: job.priority,
            message: job.message.clone(),
            finished: state.is_final(),
            reopened,
        });
        // A final record closes the job's sequence: the tasks it stops are cancelled before it.
        if state.is_final() {
            self.cancel_unfinished(job_id, state);
        }
        self.emit_record(job_id, true);
        self.dispatch_wanted = true;
        if state.is_final() {
            self.finish_job(job_id, state);
        }
    }

    /// A job ended: stop what still runs.
    fn cancel_unfinished(&mut self, job_id: Uuid, state: JobState) {
        let mut task_ids = self
            .jobs
            .get(&job_id)
            .map(|j| j.task_ids.clone())
            .unwrap_or_default();
        // Cancels reach a worker in order: those of tasks it holds queued go
        // first, or the slot a running task's cancel frees would start a
        // queued one about to be cancelled.
        task_ids.sort_by_key(|id| self.tasks.get(id).map(|t| t.state) == Some(TaskState::Running));
        let reason = Outcome {
            message: format!("job {}", state.as_str()),
            ..Outcome::default()
        };
        for task_id in task_ids {
            self.cancel_task(task_id, &reason);
        }
    }

    /// A job ended: tell the jobs waiting on it, and drop it from memory
    /// (Postgres keeps the record and its events).
    fn finish_job(&mut self, job_id: Uuid, state: JobState) {
        self.release_dependents(job_id, state);
        if self.recently_finished.len() >= RECENTLY_FINISHED {
            self.recently_finished.clear();
        }
        self.recently_finished.insert(job_id, state);
        if let Some(job) = self.jobs.remove(&job_id) {
            let learnt = self.eta.close(job_id);
            // Only a whole successful run says what the scene takes.
            if state == JobState::Succeeded
                && let Some(scene) = scene_history::scene_key(&job.inputs)
            {
                self.batch
                    .scene_times
                    .extend(scene_history::writes_for(&scene, learnt));
            }
            for task_id in &job.task_ids {
                self.tasks.remove(task_id);
                self.outputs.forget(*task_id);
            }
            self.outputs.forget_job(job_id);
        }
    }

    /// Cancels one task, telling its worker to stop if it runs.
    pub(super) fn cancel_task(&mut self, task_id: Uuid, reason: &Outcome) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let in_flight = task.state.is_in_flight();
        let (worker_id, attempt) = (task.worker_id.clone(), task.attempt);
        if self
            .transition(task_id, TaskEvent::Cancel, Some(reason))
            .is_some()
            && in_flight
            && let Some(worker_id) = worker_id
        {
            self.send_cancel(&worker_id, task_id, attempt);
        }
    }

    /// Tells a worker's current session to stop an attempt.
    pub(super) fn send_cancel(&mut self, worker_id: &str, task_id: Uuid, attempt: i32) {
        if let Some(worker) = self.workers.get(worker_id) {
            self.batch.effects.push(Effect::Cancel {
                worker_id: worker_id.to_owned(),
                session: worker.session,
                task_id,
                attempt,
            });
        }
    }

    fn release_dependents(&mut self, job_id: Uuid, state: JobState) {
        for dependent in self.dependents.remove(&job_id).unwrap_or_default() {
            let Some(job) = self.jobs.get_mut(&dependent) else {
                continue;
            };
            job.waiting_on.remove(&job_id);
            if state != JobState::Succeeded {
                job.message = format!("job {job_id} it depends on {}", state.as_str());
                self.set_job_state(dependent, JobState::Failed);
            } else {
                self.dispatch_wanted = true;
                self.touch(dependent);
            }
        }
    }

    /// Queues a task's next attempt after its backoff.
    pub(super) fn retry_later(&mut self, task_id: Uuid, at: std::time::Instant) {
        self.retries.push(Reverse((at, task_id)));
    }
}

fn bucket(counts: &mut TaskCounts, state: TaskState) -> &mut i64 {
    match state {
        TaskState::Pending | TaskState::WaitingRetry => &mut counts.waiting,
        TaskState::Dispatched | TaskState::Running => &mut counts.in_flight,
        TaskState::Succeeded => &mut counts.succeeded,
        TaskState::Failed => &mut counts.failed,
        TaskState::Cancelled => &mut counts.cancelled,
    }
}

fn adjust(count: usize, from: TaskState, to: TaskState, state: TaskState) -> usize {
    match (from == state, to == state) {
        (false, true) => count + 1,
        (true, false) => count.saturating_sub(1),
        _ => count,
    }
}

//! Jobs entering the queue, and users' controls of them.

use std::mem;

use uuid::Uuid;

use crate::core::Core;
use crate::core::batch::{BlocklistWrite, JobWrite};
use crate::core::command::{Control, Refusal};
use crate::core::model::{JobEntry, Outcome, TaskEntry};
use crate::eta::StepShape;
use crate::job_state::JobState;
use crate::task_state::{TaskEvent, TaskState};

impl Core {
    pub(super) fn add_job(&mut self, mut job: JobEntry, tasks: Vec<TaskEntry>) {
        job.submission_order = self.next_submission;
        self.next_submission += 1;
        let job_id = job.id;
        let mut failed_dependency = None;
        for dependency in job.waiting_on.clone() {
            if self.jobs.contains_key(&dependency) {
                self.dependents.entry(dependency).or_default().push(job_id);
                continue;
            }
            // It finished since the submission looked at it.
            match self.recently_finished.get(&dependency) {
                Some(JobState::Succeeded) => {
                    job.waiting_on.remove(&dependency);
                }
                state => failed_dependency = Some((dependency, state.copied())),
            }
        }
        for task in &tasks {
            if task.state.is_in_flight() {
                self.shares.started(&job.owner);
                // Dispatched by a previous leader: its worker may still run it.
                let deadline = self.now.instant + self.policy.reclaim_window;
                self.unclaimed.insert(task.id, deadline);
            }
        }
        // What a previous leader recorded for these tasks was announced then.
        for (task_id, path, recorded) in mem::take(&mut job.recorded_outputs) {
            self.outputs.record(job_id, task_id, &path, recorded);
        }
        for (task_id, path) in mem::take(&mut job.finished_outputs) {
            self.outputs.claim(job_id, task_id, &path);
        }
        let earlier = mem::take(&mut job.earlier_run_times);
        let shapes = job
            .steps
            .iter()
            .enumerate()
            .map(|(position, step)| StepShape {
                name: step.name.clone(),
                task_frames: tasks
                    .iter()
                    .filter(|t| t.step == position)
                    .map(TaskEntry::frame_count)
                    .collect(),
            })
            .collect();
        self.eta.open(job_id, shapes, &earlier);
        self.jobs.insert(job_id, job);
        // A new leader adds a million tasks here: grown one doubling at a
        // time, the map rehashed every task it held, repeatedly.
        self.tasks.reserve(tasks.len());
        for task in tasks {
            let (id, state) = (task.id, task.state);
            self.tasks.insert(id, Box::new(task));
            if let Some(job) = self.jobs.get_mut(&job_id) {
                job.task_ids.push(id);
            }
            match state {
                TaskState::Pending => self.make_ready(id, false),
                TaskState::WaitingRetry => self.retry_later(id, self.now.instant),
                _ => {}
            }
        }
        self.dispatch_wanted = true;
        self.touch(job_id);
        if self.jobs.get(&job_id).is_some_and(|job| job.held.is_some()) {
            // Its record says why it waits, from the start.
            self.emit_record(job_id, true);
        }
        if let Some((dependency, state)) = failed_dependency {
            if let Some(job) = self.jobs.get_mut(&job_id) {
                let state = state.map_or("finished without succeeding", JobState::as_str);
                job.message = format!("job {dependency} it depends on {state}");
            }
            self.set_job_state(job_id, JobState::Failed);
        }
    }

    pub(super) fn control(&mut self, job_id: Uuid, control: Control) -> Result<(), Refusal> {
        if let Control::Retry(Some((job, tasks))) = control {
            if !self.jobs.contains_key(&job_id) {
                self.add_job(*job, tasks);
            }
            return self.control(job_id, Control::Retry(None));
        }
        if let Control::ClearBlocklist(worker_id) = &control
            && !self.jobs.contains_key(&job_id)
        {
            // A finished job is not in the queue: its rows are all there is.
            self.batch.blocklist.push(BlocklistWrite::Clear {
                job_id,
                worker_id: worker_id.clone(),
            });
            return Ok(());
        }
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return Err(Refusal::JobFinished(job_id));
        };
        match control {
            Control::Cancel => {
                job.message = "cancelled by user".into();
                self.set_job_state(job_id, JobState::Cancelled);
            }
            Control::Pause => {
                job.paused = true;
                self.touch(job_id);
                // What runs may finish; what only waits in a worker's queue
                // has not started, and a paused job starts nothing.
                self.unqueue_job(job_id);
            }
            Control::Resume => {
                job.paused = false;
                self.touch(job_id);
            }
            Control::SetPriority(priority) => {
                job.priority = priority;
                let state = job.state;
                self.batch.jobs.push(JobWrite {
                    id: job_id,
                    state,
                    priority,
                    message: job.message.clone(),
                    finished: false,
                    reopened: false,
                });
                self.dispatch_wanted = true;
            }
            Control::ClearBlocklist(worker) => {
                match &worker {
                    Some(w) => {
                        job.worker_failures.remove(w);
                    }
                    None => job.worker_failures.clear(),
                }
                self.batch.blocklist.push(BlocklistWrite::Clear {
                    job_id,
                    worker_id: worker,
                });
                self.dispatch_wanted = true;
            }
            Control::Retry(_) => self.reopen(job_id),
        }
        Ok(())
    }

    /// Puts a job's failed and cancelled tasks back in the queue.
    fn reopen(&mut self, job_id: Uuid) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.message.clear();
        let task_ids = job.task_ids.clone();
        let was = job.state;
        let reason = Outcome {
            message: "retried by user".into(),
            ..Outcome::default()
        };
        for task_id in task_ids {
            if self
                .transition(task_id, TaskEvent::Reopen, Some(&reason))
                .is_some()
            {
                self.make_ready(task_id, false);
            }
        }
        if was.is_final() {
            self.set_job_state(job_id, JobState::Running);
        }
        self.touch(job_id);
    }
}

//! Events the core produces. Each gets its job's next event number and the
//! farm's next position (`numbering.rs`) and is queued in the current batch:
//! written in the same transaction as the change that caused it, and
//! published only after that commit.

use std::sync::Arc;

use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use uuid::Uuid;

use crate::core::Core;
use crate::core::batch::Effect;
use crate::core::model::JobEntry;
use crate::core::pick_order::can_run_some_step;
use crate::eta::StepLeft;
use crate::timestamps::timestamp;

impl Core {
    /// Numbers `event`, queues its write in the current batch and its
    /// publication after the commit. Events of jobs no longer in memory
    /// (finished) are dropped: their sequence is closed.
    pub(super) fn emit(&mut self, job_id: Uuid, event: Event) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.last_event_seq += 1;
        let event = Arc::new(pb::JobEvent {
            job_id: job_id.to_string(),
            seq: job.last_event_seq,
            farm_seq: self.numbering.next_farm_position(),
            event: Some(event),
            at: Some(timestamp(self.now.wall)),
        });
        self.batch.events.push((job_id, event.clone()));
        self.batch.effects.push(Effect::Publish(event));
    }

    /// Numbers a farm event (one of no job): the next farm position, written
    /// and published like a job's.
    fn emit_farm(&mut self, event: Event) {
        let event = Arc::new(pb::JobEvent {
            job_id: String::new(),
            seq: 0,
            farm_seq: self.numbering.next_farm_position(),
            event: Some(event),
            at: Some(timestamp(self.now.wall)),
        });
        self.batch.farm_events.push(event.clone());
        self.batch.effects.push(Effect::Publish(event));
    }

    /// A worker joined, left or was lost.
    pub(super) fn emit_worker(
        &mut self,
        worker_id: &str,
        change: pb::WorkerChange,
        message: String,
    ) {
        self.emit_farm(Event::WorkerChanged(pb::WorkerChanged {
            worker_id: worker_id.to_owned(),
            change: change as i32,
            message,
        }));
    }

    /// A running task's progress, when numbering says it is worth an event.
    pub(super) fn emit_progress(
        &mut self,
        job_id: Uuid,
        task_id: Uuid,
        progress: pb::TaskProgress,
    ) {
        if self
            .numbering
            .progress_due(task_id, progress.frame, &progress.status, self.now.instant)
        {
            self.emit(job_id, Event::TaskProgress(progress));
        }
    }

    /// The job's record after it changed: always when its state changed,
    /// otherwise when numbering says it is due (the rest comes on a tick).
    pub(super) fn emit_record(&mut self, job_id: Uuid, state_changed: bool) {
        if !self
            .numbering
            .record_due(job_id, state_changed, self.now.instant)
        {
            return;
        }
        let Some(record) = self.jobs.get(&job_id).map(|job| self.job_record(job)) else {
            return;
        };
        self.emit(job_id, Event::JobChanged(record));
    }

    /// Sends the records that were held back while their jobs' counts moved.
    pub(super) fn emit_due_records(&mut self) {
        for job_id in self.numbering.take_due_records(self.now.instant) {
            if self.jobs.contains_key(&job_id) {
                self.emit_record(job_id, true);
            }
        }
    }

    /// The job's record as the core knows it: state, counts, steps, limits
    /// and ETA. (A watch's opening record, read from Postgres, has the rest.)
    fn job_record(&self, job: &JobEntry) -> pb::Job {
        let steps = job
            .steps
            .iter()
            .map(|step| pb::Step {
                name: step.name.clone(),
                depends_on: step
                    .depends_on
                    .iter()
                    .filter_map(|&d| job.steps.get(d).map(|s| s.name.clone()))
                    .collect(),
                tasks_total: step.total as u32,
                tasks_succeeded: step.succeeded as u32,
            })
            .collect();
        let finished_at = job.state.is_final().then(|| timestamp(self.now.wall));
        pb::Job {
            id: job.id.to_string(),
            name: job.name.clone(),
            state: job.state.to_proto() as i32,
            priority: job.priority as u32,
            owner: job.owner.clone(),
            steps,
            tasks_total: job.counts.total as u32,
            tasks_succeeded: job.counts.succeeded as u32,
            tasks_failed: job.counts.failed as u32,
            tasks_running: job.counts.in_flight as u32,
            message: job.message.clone(),
            max_failed_tasks: job.max_failed_tasks as u32,
            max_run_seconds: job.max_run_seconds,
            stall_seconds: job.stall_seconds,
            finished_at,
            eta: self.eta_of(job),
            tags: job.tags.iter().cloned().collect(),
            held_reason: job.held.clone().unwrap_or_default(),
            ..pb::Job::default()
        }
    }

    /// The job's ETA from the numbers the ETA book needs: what is left and
    /// running per step, and the slots of the workers that could help.
    fn eta_of(&self, job: &JobEntry) -> Option<pb::Eta> {
        if job.state.is_final() {
            return None;
        }
        let mut now: Vec<StepLeft> = job
            .steps
            .iter()
            .map(|s| StepLeft {
                left: s.total.saturating_sub(s.succeeded + s.failed),
                running: 0,
            })
            .collect();
        for task in job.task_ids.iter().filter_map(|id| self.tasks.get(id)) {
            if task.state.is_in_flight()
                && let Some(step) = now.get_mut(task.step)
            {
                step.running += 1;
            }
        }
        let farm_slots = self
            .workers
            .values()
            .filter(|w| can_run_some_step(job, w))
            .map(|w| w.slots)
            .sum();
        self.eta.estimate(job.id, &now, farm_slots, self.now.wall)
    }
}

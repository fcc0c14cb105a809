//! Handing tasks to workers with room, in the order `pick_order.rs`
//! decides: free slots first, then the queues of workers that hold tasks
//! ahead (lookahead).

use kiln_proto::v1 as pb;
use uuid::Uuid;

use crate::core::Core;
use crate::core::batch::Effect;
use crate::core::model::WorkerEntry;
use crate::core::pick_order::{Lineup, runnable_step};
use crate::task_state::TaskEvent;

impl Core {
    /// Hands out tasks until no worker with room can take one: first into
    /// free slots, then into the queues of workers with lookahead. Every
    /// free slot on the farm has been offered every task it could take
    /// before any task is queued behind a busy worker: a task queued on a
    /// busy worker while another sits idle would wait for no reason.
    pub(super) fn dispatch_round(&mut self) {
        if !self.dispatch_wanted {
            return;
        }
        self.dispatch_wanted = false;
        self.fill(WorkerEntry::has_free_slot);
        self.unqueue_for_idle_workers();
        self.fill(WorkerEntry::has_room);
        let full: Vec<String> = self
            .free_workers
            .iter()
            .filter(|id| !self.workers.get(*id).is_some_and(WorkerEntry::has_room))
            .cloned()
            .collect();
        for worker_id in full {
            self.free_workers.remove(&worker_id);
        }
    }

    /// Gives each worker with room tasks while `open` holds for it and a
    /// task for it is left.
    fn fill(&mut self, open: fn(&WorkerEntry) -> bool) {
        if self.free_workers.is_empty() {
            return;
        }
        let candidates: Vec<String> = self.free_workers.iter().cloned().collect();
        let mut lineup = Lineup::of(self.jobs.values());
        for worker_id in candidates {
            while self.workers.get(&worker_id).is_some_and(open) {
                let Some(task_id) = self.pick_for(&mut lineup, &worker_id) else {
                    break;
                };
                self.assign(task_id, &worker_id);
            }
        }
    }

    /// The task `worker_id` should take next, from the jobs in `lineup`
    /// (which must hold every job with a task ready now).
    pub(super) fn pick_for(&mut self, lineup: &mut Lineup, worker_id: &str) -> Option<Uuid> {
        let worker = self.workers.get(worker_id)?;
        if !worker.takes_tasks() {
            return None;
        }
        let has_gpu = worker.capabilities.gpus > 0;
        if has_gpu && let Some(task) = self.pick(lineup, worker_id, true) {
            return Some(task);
        }
        self.pick(lineup, worker_id, false)
    }

    fn pick(&mut self, lineup: &mut Lineup, worker_id: &str, gpu_only: bool) -> Option<Uuid> {
        loop {
            let worker = self.workers.get(worker_id)?;
            let best = lineup.best(
                &self.jobs,
                worker_id,
                worker,
                &self.shares,
                &self.policy,
                gpu_only,
            );
            #[cfg(test)]
            self.check_pick(worker_id, gpu_only, best.as_ref());
            // A job whose queue held only tasks that had moved on has none
            // left now, so the next look skips it.
            if let Some(task) = self.take_from(best?.job_id, worker_id, gpu_only) {
                return Some(task);
            }
        }
    }

    /// The lineup's choice is the one the pick order's rules make, from the
    /// whole model.
    #[cfg(test)]
    fn check_pick(
        &self,
        worker_id: &str,
        gpu_only: bool,
        best: Option<&crate::core::pick_order::Candidate>,
    ) {
        let Some(worker) = self.workers.get(worker_id) else {
            return;
        };
        let expected = crate::core::pick_order::candidates(
            self.jobs.values(),
            worker_id,
            worker,
            &self.shares,
            &self.policy,
            gpu_only,
        );
        assert_eq!(best, expected.first(), "lineup and pick order disagree");
    }

    /// Pops the first dispatchable task of the job for this worker, skipping
    /// queue entries whose task has moved on since it was queued.
    fn take_from(&mut self, job_id: Uuid, worker_id: &str, gpu_only: bool) -> Option<Uuid> {
        loop {
            let worker = self.workers.get(worker_id)?;
            let job = self.jobs.get(&job_id)?;
            let step = runnable_step(job, worker, gpu_only)?;
            let task_id = self.jobs.get_mut(&job_id)?.steps[step].ready.pop_front()?;
            let dispatchable = self
                .tasks
                .get(&task_id)
                .is_some_and(|t| TaskEvent::Dispatch.next(t.state).is_some());
            if dispatchable {
                self.estimate_task_left(job_id, step);
                return Some(task_id);
            }
        }
    }

    /// Marks a picked task dispatched to a worker; the assignment leaves once that is durable.
    pub(super) fn assign(&mut self, task_id: Uuid, worker_id: &str) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        task.worker_id = Some(worker_id.to_owned());
        if self
            .transition(task_id, TaskEvent::Dispatch, None)
            .is_none()
        {
            return;
        }
        let now = self.now.instant;
        let (Some(task), Some(worker)) =
            (self.tasks.get(&task_id), self.workers.get_mut(worker_id))
        else {
            return;
        };
        worker.running.insert((task_id, task.attempt));
        worker.idle_since = None;
        let session = worker.session;
        if let Some(ready_at) = task.ready_at {
            self.batch
                .observations
                .dispatch_latencies
                .push(now.saturating_duration_since(ready_at).as_secs_f64());
        }
        let Some(job) = self.jobs.get(&task.job_id) else {
            return;
        };
        self.shares.served_now(&job.owner);
        tracing::debug!(task_id = %task_id, job_id = %job.id, owner = %job.owner, worker_id, "assigned");
        let step = &job.steps[task.step];
        let assignment = Box::new(pb::TaskAssignment {
            task_id: task_id.to_string(),
            job_id: job.id.to_string(),
            attempt: task.attempt as u32,
            step_name: step.name.clone(),
            command: task.command.clone(),
            args: task.args.clone(),
            inputs: job.inputs.clone(),
            frames: task.frames.clone(),
            max_run_seconds: job.max_run_seconds,
            stall_seconds: job.stall_seconds,
            trace_context: job.trace_context.clone(),
            owner: job.owner.clone(),
            allow_network: !job.template_name.is_empty()
                && self.network_templates.contains(&job.template_name),
            session_step: step.session_step.as_deref().unwrap_or_default().to_owned(),
            task_symbols: task.task_symbols.clone().unwrap_or_default(),
        });
        let dependency_steps = step
            .depends_on
            .iter()
            .map(|&d| job.steps[d].name.clone())
            .collect();
        let attempt = (task_id, task.attempt);
        self.batch.effects.push(Effect::Deliver {
            worker_id: worker_id.to_owned(),
            session,
            job_id: job.id,
            attempt,
            assignment,
            dependency_steps,
        });
    }
}

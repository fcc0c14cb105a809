//! Tasks a worker holds queued beyond its slots (its lookahead), so the next
//! task is already there when a slot frees. A queued task must never wait
//! behind a busy worker while another worker that could run it sits idle:
//! `assign.rs` fills free slots before it queues anything, and when a
//! worker has a free slot and nothing left to take (a worker joined, or the
//! queue ran dry at the end of a job), a task queued elsewhere is handed
//! back and given to it. Pausing a job or draining a worker takes queued
//! tasks back too: a paused job and a draining worker start nothing new.

use uuid::Uuid;

use crate::core::Core;
use crate::core::model::{Attempt, WorkerEntry};
use crate::core::pick_order::{Lineup, blocklisted, worker_fits_step};
use crate::task_state::TaskState;

impl Core {
    /// Moves queued tasks to workers with free slots that found nothing
    /// else to take. Called after every free slot was offered every ready
    /// task: a worker still with a free slot can take none of them. Costs
    /// nothing while no worker is idle, and one pass over the workers when
    /// one is (not one per idle worker: a farm's tail may leave thousands).
    pub(super) fn unqueue_for_idle_workers(&mut self) {
        let idle: Vec<String> = self
            .free_workers
            .iter()
            .filter(|id| {
                self.workers
                    .get(*id)
                    .is_some_and(|w| w.takes_tasks() && w.has_free_slot())
            })
            .cloned()
            .collect();
        if idle.is_empty() {
            return;
        }
        let mut queued = self.queued_behind_busy_slots();
        for worker_id in idle {
            while !queued.is_empty()
                && self
                    .workers
                    .get(&worker_id)
                    .is_some_and(WorkerEntry::has_free_slot)
            {
                let Some(taker) = self.workers.get(&worker_id) else {
                    break;
                };
                let Some(position) = queued.iter().position(|(holder, (task_id, _))| {
                    holder != &worker_id && self.could_run(taker, &worker_id, *task_id)
                }) else {
                    break;
                };
                let (holder, (task_id, attempt)) = queued.remove(position);
                tracing::info!(task_id = %task_id, attempt, from = %holder, to = %worker_id, "moving a queued task to an idle worker");
                self.hand_back_queued(&holder, task_id, attempt, "another worker was idle");
                // Lost tasks go back to the front of their queue, so the
                // idle worker picks it, by the pick order's own rules.
                // The hand-back made a task ready: the lineup is taken after it.
                let mut lineup = Lineup::of(self.jobs.values());
                let Some(picked) = self.pick_for(&mut lineup, &worker_id) else {
                    break;
                };
                self.assign(picked, &worker_id);
            }
        }
    }

    /// Every attempt waiting in a worker's queue behind its busy slots, the
    /// last given first (it would start last).
    fn queued_behind_busy_slots(&self) -> Vec<(String, Attempt)> {
        let mut queued: Vec<(Option<std::time::Instant>, String, Attempt)> = Vec::new();
        for (holder_id, holder) in &self.workers {
            if holder.lookahead == 0 || holder.running.len() <= holder.slots {
                continue;
            }
            for attempt in self.waiting_behind_slots(holder) {
                let at = self.tasks.get(&attempt.0).and_then(|t| t.dispatched_at);
                queued.push((at, holder_id.clone(), attempt));
            }
        }
        queued.sort_by_key(|q| std::cmp::Reverse(q.0));
        queued
            .into_iter()
            .map(|(_, holder, attempt)| (holder, attempt))
            .collect()
    }

    /// Takes the job's tasks out of workers' queues (not those about to
    /// start in a free slot): they go back to the job's own queue.
    pub(super) fn unqueue_job(&mut self, job_id: Uuid) {
        let mut queued = Vec::new();
        for (holder_id, holder) in &self.workers {
            for (task_id, attempt) in self.waiting_behind_slots(holder) {
                if self.tasks.get(&task_id).is_some_and(|t| t.job_id == job_id) {
                    queued.push((holder_id.clone(), task_id, attempt));
                }
            }
        }
        for (holder, task_id, attempt) in queued {
            self.hand_back_queued(&holder, task_id, attempt, "its job was paused");
        }
    }

    /// Takes every task out of a draining worker's queue: it finishes what
    /// runs and starts nothing more, and what it has not started can run
    /// elsewhere now rather than after its running tasks.
    pub(super) fn unqueue_worker(&mut self, worker_id: &str) {
        let Some(worker) = self.workers.get(worker_id) else {
            return;
        };
        for (task_id, attempt) in self.waiting_behind_slots(worker) {
            self.hand_back_queued(worker_id, task_id, attempt, "its worker is draining");
        }
    }

    /// The worker drops the queued attempt (it never starts) and the task
    /// goes back to the front of its queue, lost rather than failed.
    fn hand_back_queued(&mut self, worker_id: &str, task_id: Uuid, attempt: i32, why: &str) {
        self.send_cancel(worker_id, task_id, attempt);
        self.lose(
            worker_id,
            task_id,
            attempt,
            &format!("{why} before it started"),
        );
    }

    /// The holder's dispatched attempts beyond those its free slots will
    /// start: the ones that wait for a running task to end.
    fn waiting_behind_slots(&self, holder: &WorkerEntry) -> Vec<Attempt> {
        let mut started = 0;
        let mut waiting = Vec::new();
        for &(task_id, attempt) in &holder.running {
            match self.tasks.get(&task_id) {
                Some(task) if task.state == TaskState::Running => started += 1,
                Some(task) if task.state == TaskState::Dispatched => {
                    waiting.push((task.dispatched_at, (task_id, attempt)));
                }
                _ => {}
            }
        }
        waiting.sort();
        let free = holder.slots.saturating_sub(started);
        waiting.into_iter().skip(free).map(|(_, a)| a).collect()
    }

    /// Whether the worker could be given the task, by the pick order's rules.
    fn could_run(&self, worker: &WorkerEntry, worker_id: &str, task_id: Uuid) -> bool {
        let Some(task) = self.tasks.get(&task_id) else {
            return false;
        };
        let Some(job) = self.jobs.get(&task.job_id) else {
            return false;
        };
        job.is_dispatchable()
            && !blocklisted(job, worker_id, &self.policy)
            && worker_fits_step(job, task.step, worker)
    }
}

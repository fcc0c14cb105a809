//! Workers joining and leaving: a session opens, ends, or etcd declares the
//! worker dead; what it held goes back to the queue.

use kiln_proto::v1 as pb;
use uuid::Uuid;

use crate::core::batch::Effect;
use crate::core::model::{Attempt, Connection, Outcome, WorkerEntry};
use crate::core::{Core, MAX_LOOKAHEAD};
use crate::task_state::TaskEvent;

impl Core {
    pub(super) fn worker_joined(
        &mut self,
        worker_id: String,
        hostname: &str,
        session: u64,
        capabilities: pb::WorkerCapabilities,
        held: Vec<Attempt>,
    ) {
        let reconnected = self.workers.contains_key(&worker_id);
        // What the worker's old session held and it no longer names is lost.
        let kept = self.replace_session(&worker_id, &held);
        if !reconnected {
            let offer = describe_offer(&capabilities);
            self.emit_worker(&worker_id, pb::WorkerChange::Joined, offer);
        }
        let (tags, admin) = self.remember_join(&worker_id, hostname, &capabilities);
        let slots = capabilities.slots.max(1) as usize;
        let lookahead = capabilities.lookahead.min(MAX_LOOKAHEAD) as usize;
        self.workers.insert(
            worker_id.clone(),
            WorkerEntry {
                session,
                capabilities,
                slots,
                lookahead,
                slot_freed_at: None,
                idle_since: kept.is_empty().then_some(self.now.instant),
                running: kept,
                tags,
                admin,
            },
        );
        self.reclaim(&worker_id, held);
        if self
            .workers
            .get(&worker_id)
            .is_some_and(WorkerEntry::has_room)
        {
            self.free_workers.insert(worker_id);
        }
        self.dispatch_wanted = true;
    }

    /// A session's stream ended. A later session of the same worker has
    /// already replaced it if the session numbers differ.
    pub(super) fn session_ended(&mut self, worker_id: &str, session: u64) {
        if self
            .workers
            .get(worker_id)
            .is_some_and(|w| w.session == session)
        {
            self.worker_left(worker_id);
            self.remember_departure(worker_id, Connection::Offline);
            self.emit_worker(
                worker_id,
                pb::WorkerChange::Left,
                "its session ended".into(),
            );
        }
    }

    /// Forgets a worker's session; the attempts it held are requeued.
    pub(super) fn worker_left(&mut self, worker_id: &str) {
        let Some(worker) = self.workers.get(worker_id) else {
            return;
        };
        let held: Vec<Attempt> = worker.running.iter().copied().collect();
        if !held.is_empty() {
            tracing::warn!(
                worker_id,
                tasks = held.len(),
                "requeueing the tasks of a departed worker"
            );
        }
        for (task_id, attempt) in held {
            self.lose(worker_id, task_id, attempt, "its worker went away");
        }
        if let Some(worker) = self.workers.remove(worker_id) {
            self.batch.effects.push(Effect::EndSession {
                worker_id: worker_id.to_owned(),
                session: worker.session,
            });
        }
        self.free_workers.remove(worker_id);
    }

    /// A worker etcd holds dead is dead, even if its stream looks open: its
    /// tasks are stopped and requeued, and its session is ended, so a worker
    /// that is in fact alive reconnects afresh.
    pub(super) fn lease_lost(&mut self, worker_id: &str) {
        self.release_unclaimed_of(worker_id);
        let Some(worker) = self.workers.get(worker_id) else {
            return;
        };
        let held: Vec<Attempt> = worker.running.iter().copied().collect();
        for (task_id, attempt) in held {
            self.send_cancel(worker_id, task_id, attempt);
        }
        tracing::warn!(worker_id, "worker lease lost; treating it as dead");
        self.worker_left(worker_id);
        self.remember_departure(worker_id, Connection::Lost);
        self.emit_worker(
            worker_id,
            pb::WorkerChange::Lost,
            "its etcd registration expired".into(),
        );
    }

    /// An attempt ended through no fault of the task: it goes back to the queue.
    pub(super) fn lose(&mut self, worker_id: &str, task_id: Uuid, attempt: i32, why: &str) {
        if !self.holds(worker_id, task_id, attempt) {
            return;
        }
        let outcome = Outcome {
            message: format!("attempt {attempt} on worker {worker_id} lost: {why}"),
            ..Outcome::default()
        };
        if self
            .transition(task_id, TaskEvent::Lose, Some(&outcome))
            .is_some()
        {
            self.make_ready(task_id, true);
        }
    }

    /// Whether the task's current attempt is this one, on this worker: a
    /// worker's reports count only for attempts it holds.
    pub fn holds(&self, worker_id: &str, task_id: Uuid, attempt: i32) -> bool {
        self.tasks.get(&task_id).is_some_and(|t| {
            t.attempt == attempt
                && t.worker_id.as_deref() == Some(worker_id)
                && t.state.is_in_flight()
        })
    }
}

/// "8 cores, 1 GPU, 2 slots: blender 3.4.1, ffmpeg 5.1; tasks sandboxed (rlimits)".
fn describe_offer(capabilities: &pb::WorkerCapabilities) -> String {
    let renderers: Vec<String> = capabilities
        .renderers
        .iter()
        .map(|r| format!("{} {}", r.name, r.version))
        .collect();
    let sandbox = match &capabilities.sandbox {
        Some(sandbox) if sandbox.isolated => format!("tasks sandboxed ({})", sandbox.limits),
        Some(_) => "TASKS UNSANDBOXED (--no-sandbox)".to_owned(),
        None => "no sandbox reported".to_owned(),
    };
    format!(
        "{} cores, {} GPU, {} slots: {}; {sandbox}",
        capabilities.cpu_cores,
        capabilities.gpus,
        capabilities.slots.max(1),
        renderers.join(", ")
    )
}

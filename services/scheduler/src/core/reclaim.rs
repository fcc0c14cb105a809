//! Attempts that outlive a session. A worker whose stream breaks keeps
//! rendering and, when it reconnects, names the attempts it still holds. A
//! leader that has just taken over loads what its predecessor left in flight
//! as *unclaimed*: the worker that was given such an attempt gets it back as
//! it is (nothing renders twice); an attempt a worker names but may no longer
//! run is cancelled on it; an unclaimed attempt nobody names within the
//! reclaim window is lost and requeued. A worker that reconnects without
//! naming an attempt it was given no longer runs it: that attempt is requeued
//! after a short grace, which lets the results the worker re-sends after
//! registering (an attempt that finished during the failover) land first.

use std::collections::HashSet;
use std::time::Duration;

use uuid::Uuid;

use crate::core::Core;
use crate::core::model::{Attempt, Outcome};
use crate::task_state::{TaskEvent, TaskState};

/// How long a reconnected worker's re-sent results have to arrive before the
/// attempts it did not name are requeued.
const UNNAMED_GRACE: Duration = Duration::from_secs(2);

impl Core {
    /// Ends a worker's previous session for a new one: the attempts the
    /// worker still names move to the new session, the rest are lost.
    /// Returns those kept.
    pub(super) fn replace_session(
        &mut self,
        worker_id: &str,
        held: &[Attempt],
    ) -> HashSet<Attempt> {
        let Some(old) = self.workers.get_mut(worker_id) else {
            return HashSet::new();
        };
        let kept: HashSet<Attempt> = held
            .iter()
            .copied()
            .filter(|attempt| old.running.contains(attempt))
            .collect();
        old.running.retain(|attempt| !kept.contains(attempt));
        self.worker_left(worker_id);
        kept
    }

    /// Takes back what a reconnecting worker names: unclaimed attempts it was
    /// given become its own again; any other it may no longer run is cancelled.
    pub(super) fn reclaim(&mut self, worker_id: &str, held: Vec<Attempt>) {
        for (task_id, attempt) in held {
            let own = self
                .workers
                .get(worker_id)
                .is_some_and(|w| w.running.contains(&(task_id, attempt)));
            if own {
                continue;
            }
            if self.unclaimed.contains_key(&task_id) && self.holds(worker_id, task_id, attempt) {
                self.claim(worker_id, task_id, attempt);
                continue;
            }
            // Most often an attempt whose result is already recorded; a
            // cancel for one the worker no longer runs changes nothing.
            let reassigned = self
                .tasks
                .get(&task_id)
                .is_some_and(|t| t.state.is_in_flight());
            if reassigned {
                tracing::info!(task_id = %task_id, attempt, worker_id, "worker holds an attempt that was given to another; cancelling it");
            }
            self.send_cancel(worker_id, task_id, attempt);
        }
        self.shorten_unnamed(worker_id);
    }

    /// The unclaimed attempts given to this worker that it did not name: it
    /// does not run them, so they need not wait out the reclaim window.
    fn shorten_unnamed(&mut self, worker_id: &str) {
        let soon = self.now.instant + UNNAMED_GRACE;
        for (task_id, deadline) in self.unclaimed.iter_mut() {
            let given_to_worker = self
                .tasks
                .get(task_id)
                .is_some_and(|t| t.worker_id.as_deref() == Some(worker_id));
            if given_to_worker && *deadline > soon {
                *deadline = soon;
            }
        }
    }

    fn claim(&mut self, worker_id: &str, task_id: Uuid, attempt: i32) {
        self.unclaimed.remove(&task_id);
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        // Run-time limits count from here: when it was dispatched is not
        // known, so neither is its run time, which the ETA must not learn.
        task.dispatched_at = Some(self.now.instant);
        task.started_at = Some(self.now.instant);
        task.claimed_attempt = Some(attempt);
        let dispatched = task.state == TaskState::Dispatched;
        if let Some(worker) = self.workers.get_mut(worker_id) {
            worker.running.insert((task_id, attempt));
            worker.idle_since = None;
        }
        if dispatched {
            // The worker holds it, so it has started even if that report was lost.
            self.transition(task_id, TaskEvent::Start, None);
        }
        tracing::info!(task_id = %task_id, attempt, worker_id, "worker confirmed an attempt dispatched before the failover");
    }

    /// Requeues the unclaimed attempts whose reclaim window has ended.
    pub(super) fn expire_unclaimed(&mut self) {
        if self.unclaimed.is_empty() {
            return;
        }
        let now = self.now.instant;
        let due: Vec<Uuid> = self
            .unclaimed
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(task_id, _)| *task_id)
            .collect();
        for task_id in due {
            self.lose_unclaimed(task_id, "its worker did not confirm it after the failover");
        }
    }

    /// Requeues at once the unclaimed attempts of a worker known to be dead.
    pub(super) fn release_unclaimed_of(&mut self, worker_id: &str) {
        let theirs: Vec<Uuid> = self
            .unclaimed
            .keys()
            .copied()
            .filter(|id| {
                self.tasks
                    .get(id)
                    .is_some_and(|t| t.worker_id.as_deref() == Some(worker_id))
            })
            .collect();
        for task_id in theirs {
            self.lose_unclaimed(task_id, "its worker died during the failover");
        }
    }

    fn lose_unclaimed(&mut self, task_id: Uuid, why: &str) {
        self.unclaimed.remove(&task_id);
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        if !task.state.is_in_flight() {
            return;
        }
        let outcome = Outcome {
            message: format!("attempt {} lost: {why}", task.attempt),
            ..Outcome::default()
        };
        if self
            .transition(task_id, TaskEvent::Lose, Some(&outcome))
            .is_some()
        {
            self.make_ready(task_id, true);
        }
    }
}

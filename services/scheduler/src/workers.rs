//! The workers connected to this scheduler, and what each is running.
//!
//! This is the only in-memory state the scheduler keeps, and it is rebuilt
//! from nothing when workers reconnect: everything durable is in Postgres.

use std::collections::HashMap;
use std::sync::Mutex;

use kiln_proto::v1::{SchedulerMessage, WorkerCapabilities};
use tokio::sync::mpsc;
use uuid::Uuid;

pub type Outbox = mpsc::Sender<Result<SchedulerMessage, tonic::Status>>;

/// One attempt of one task.
pub type AttemptKey = (Uuid, i32);

struct Worker {
    session: u64,
    outbox: Outbox,
    capabilities: WorkerCapabilities,
    /// Each attempt the worker holds, with its job.
    running: HashMap<AttemptKey, Uuid>,
}

/// A worker that can take more work right now.
pub struct FreeWorker {
    pub worker_id: String,
    pub session: u64,
    pub free_slots: u32,
    pub renderers: Vec<String>,
    pub outbox: Outbox,
}

#[derive(Default)]
pub struct WorkerRegistry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_session: u64,
    workers: HashMap<String, Worker>,
}

impl WorkerRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the map half-written
        // (every mutation is a single insert/remove), so poisoning is ignored.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a worker's session, replacing an older session of the same worker.
    /// Returns the new session's number.
    pub fn connect(
        &self,
        worker_id: &str,
        capabilities: WorkerCapabilities,
        outbox: Outbox,
    ) -> u64 {
        let mut inner = self.lock();
        inner.next_session += 1;
        let session = inner.next_session;
        inner.workers.insert(
            worker_id.to_owned(),
            Worker {
                session,
                outbox,
                capabilities,
                running: HashMap::new(),
            },
        );
        session
    }

    /// Removes a session; false if a newer session of the worker replaced it already.
    pub fn disconnect(&self, worker_id: &str, session: u64) -> bool {
        let mut inner = self.lock();
        match inner.workers.get(worker_id) {
            Some(worker) if worker.session == session => {
                inner.workers.remove(worker_id);
                true
            }
            _ => false,
        }
    }

    pub fn free_workers(&self) -> Vec<FreeWorker> {
        self.lock()
            .workers
            .iter()
            .filter_map(|(id, w)| {
                let slots = w.capabilities.slots.max(1);
                let free = slots.saturating_sub(w.running.len() as u32);
                (free > 0).then(|| FreeWorker {
                    worker_id: id.clone(),
                    session: w.session,
                    free_slots: free,
                    renderers: w
                        .capabilities
                        .renderers
                        .iter()
                        .map(|r| r.name.clone())
                        .collect(),
                    outbox: w.outbox.clone(),
                })
            })
            .collect()
    }

    /// Marks an attempt of `job_id` as running on a worker, if that session still exists.
    pub fn assign(&self, worker_id: &str, session: u64, attempt: AttemptKey, job_id: Uuid) -> bool {
        match self.lock().workers.get_mut(worker_id) {
            Some(worker) if worker.session == session => {
                worker.running.insert(attempt, job_id);
                true
            }
            _ => false,
        }
    }

    /// The job of an attempt the worker holds; `None` for an attempt it no longer holds.
    pub fn job_of(&self, worker_id: &str, attempt: AttemptKey) -> Option<Uuid> {
        self.lock()
            .workers
            .get(worker_id)
            .and_then(|w| w.running.get(&attempt).copied())
    }

    /// Frees the slot an attempt held.
    pub fn release(&self, worker_id: &str, attempt: AttemptKey) {
        if let Some(worker) = self.lock().workers.get_mut(worker_id) {
            worker.running.remove(&attempt);
        }
    }

    pub fn outbox(&self, worker_id: &str) -> Option<Outbox> {
        self.lock().workers.get(worker_id).map(|w| w.outbox.clone())
    }

    pub fn count(&self) -> usize {
        self.lock().workers.len()
    }
}

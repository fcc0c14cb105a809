//! Live job events for watchers, fanned out in memory after their batch
//! committed. The record is the `job_events` table (`event_replay.rs`): a
//! watcher that falls behind this bus's buffer, or connects late, reads what
//! it missed from there, so it never loses an event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use tokio::sync::broadcast;
use uuid::Uuid;

/// Events buffered for slow watchers before they must resume from Postgres.
const CAPACITY: usize = 8192;
/// Running jobs whose latest ETA is remembered for GetJob.
const ETA_MEMORY: usize = 100_000;

pub type JobNotice = Arc<pb::JobEvent>;

pub struct EventBus {
    sender: broadcast::Sender<JobNotice>,
    /// The latest ETA of each running job, from its latest record.
    etas: Mutex<HashMap<Uuid, pb::Eta>>,
    /// Why admission control holds each held job, from its latest record.
    holds: Mutex<HashMap<Uuid, String>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
            etas: Mutex::new(HashMap::new()),
            holds: Mutex::new(HashMap::new()),
        }
    }
}

impl EventBus {
    pub fn publish(&self, event: JobNotice) {
        if let Some(Event::JobChanged(job)) = &event.event {
            self.remember_eta(job);
            self.remember_hold(job);
        }
        // No receivers is normal: nobody is watching.
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobNotice> {
        self.sender.subscribe()
    }

    /// The job's latest ETA, while it runs.
    pub fn eta(&self, job_id: Uuid) -> Option<pb::Eta> {
        let etas = self.etas.lock().unwrap_or_else(|e| e.into_inner());
        etas.get(&job_id).cloned()
    }

    /// Why admission control holds the job, while it does.
    pub fn held_reason(&self, job_id: Uuid) -> String {
        let holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        holds.get(&job_id).cloned().unwrap_or_default()
    }

    fn remember_hold(&self, job: &pb::Job) {
        let Ok(id) = Uuid::parse_str(&job.id) else {
            return;
        };
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        if job.held_reason.is_empty() {
            holds.remove(&id);
            return;
        }
        // Holds are few and short-lived; the bound only guards memory.
        if holds.len() >= ETA_MEMORY {
            holds.clear();
        }
        holds.insert(id, job.held_reason.clone());
    }

    fn remember_eta(&self, job: &pb::Job) {
        let Ok(id) = Uuid::parse_str(&job.id) else {
            return;
        };
        let mut etas = self.etas.lock().unwrap_or_else(|e| e.into_inner());
        match &job.eta {
            Some(eta) => {
                if etas.len() >= ETA_MEMORY {
                    etas.clear();
                }
                etas.insert(id, *eta);
            }
            None => {
                etas.remove(&id);
            }
        }
    }
}

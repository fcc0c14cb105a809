//! Live job events for watchers, fanned out in memory.
//!
//! Events are a notification channel, not the record: a watcher that falls
//! behind (or connects late) re-reads the job from Postgres, so it can miss
//! intermediate progress but never the job's state.

use kiln_proto::v1::job_event::Event;
use tokio::sync::broadcast;
use uuid::Uuid;

/// Events buffered for slow watchers before they must re-read the job.
const CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
pub struct JobNotice {
    pub job_id: Uuid,
    pub event: Event,
}

pub struct EventBus {
    sender: broadcast::Sender<JobNotice>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
        }
    }
}

impl EventBus {
    pub fn publish(&self, job_id: Uuid, event: Event) {
        // No receivers is normal: nobody is watching.
        let _ = self.sender.send(JobNotice { job_id, event });
    }

    pub fn has_watchers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobNotice> {
        self.sender.subscribe()
    }
}

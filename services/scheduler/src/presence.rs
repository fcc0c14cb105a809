//! When each connected worker last spoke, and the resource use its last
//! heartbeat reported: memory only, kept beside the core (every message of
//! every worker touches it, and none of it is dispatch state).

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use kiln_proto::v1 as pb;

/// Workers remembered at most; a farm larger than this loses the oldest
/// presence entries (the workers themselves are unaffected).
const MAX_WORKERS: usize = 100_000;

#[derive(Debug, Clone)]
pub struct Seen {
    pub at: DateTime<Utc>,
    pub usage: Option<pb::ResourceUsage>,
}

#[derive(Default)]
pub struct Presence {
    seen: Mutex<HashMap<String, Seen>>,
}

impl Presence {
    /// The worker said something now; a heartbeat also says what it uses.
    pub fn heard(&self, worker_id: &str, usage: Option<pb::ResourceUsage>) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.len() >= MAX_WORKERS && !seen.contains_key(worker_id) {
            let oldest = seen
                .iter()
                .min_by_key(|(_, s)| s.at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                seen.remove(&oldest);
            }
        }
        let entry = seen.entry(worker_id.to_owned()).or_insert(Seen {
            at: Utc::now(),
            usage: None,
        });
        entry.at = Utc::now();
        if usage.is_some() {
            entry.usage = usage;
        }
    }

    pub fn of(&self, worker_id: &str) -> Option<Seen> {
        self.seen.lock().ok()?.get(worker_id).cloned()
    }

    /// The worker's session ended: its usage is no longer current.
    pub fn forget_usage(&self, worker_id: &str) {
        if let Ok(mut seen) = self.seen.lock()
            && let Some(entry) = seen.get_mut(worker_id)
        {
            entry.usage = None;
        }
    }
}

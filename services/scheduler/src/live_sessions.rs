//! Which worker ids have a live session, and which process holds each: a
//! worker presents a random key made when its process started, so a second
//! process under a live worker id (a misconfigured clone, or a worker
//! trying to take over another's id and with it that worker's tasks) is
//! refused, while the same process reconnecting after its stream broke
//! replaces its old session.

use std::collections::HashMap;

use kiln_service::internal_auth::Secret;

/// Why a session is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefusal {
    #[error(
        "worker id {0:?} has a live session from another worker process; each worker needs its own id (a stale session ends within 15 s of silence)"
    )]
    IdInUse(String),
    #[error("instance_key must be 16 to 256 characters")]
    BadKey,
}

/// Longest instance key accepted.
const MAX_KEY: usize = 256;

struct Live {
    key: Secret,
    session: u64,
}

#[derive(Default)]
pub struct LiveSessions {
    by_worker: HashMap<String, Live>,
}

impl LiveSessions {
    /// Claims `worker_id` for `session` of the process holding `key`.
    pub fn claim(
        &mut self,
        worker_id: &str,
        key: &str,
        session: u64,
    ) -> Result<(), SessionRefusal> {
        if key.len() > MAX_KEY {
            return Err(SessionRefusal::BadKey);
        }
        let key = Secret::new(key, "instance_key").map_err(|_| SessionRefusal::BadKey)?;
        if let Some(live) = self.by_worker.get(worker_id)
            && !live.key.same_as(&key)
        {
            return Err(SessionRefusal::IdInUse(worker_id.to_owned()));
        }
        self.by_worker
            .insert(worker_id.to_owned(), Live { key, session });
        Ok(())
    }

    /// The session ended; a later session of the same process may already
    /// have replaced it, and keeps the id.
    pub fn release(&mut self, worker_id: &str, session: u64) {
        if self
            .by_worker
            .get(worker_id)
            .is_some_and(|live| live.session == session)
        {
            self.by_worker.remove(worker_id);
        }
    }

    pub fn len(&self) -> usize {
        self.by_worker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_worker.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123";
    const OTHER: &str = "fedcba9876543210fedc";

    #[test]
    fn a_second_process_under_a_live_id_is_refused() {
        let mut live = LiveSessions::default();
        assert_eq!(live.claim("w", KEY, 1), Ok(()));
        assert_eq!(
            live.claim("w", OTHER, 2),
            Err(SessionRefusal::IdInUse("w".into()))
        );
        // Other ids are free to join.
        assert_eq!(live.claim("v", OTHER, 3), Ok(()));
        assert_eq!(live.len(), 2);
    }

    #[test]
    fn the_same_process_reconnecting_replaces_its_session() {
        let mut live = LiveSessions::default();
        assert_eq!(live.claim("w", KEY, 1), Ok(()));
        assert_eq!(live.claim("w", KEY, 2), Ok(()));
        // The old session's end does not free the id the new one holds.
        live.release("w", 1);
        assert_eq!(
            live.claim("w", OTHER, 3),
            Err(SessionRefusal::IdInUse("w".into()))
        );
        live.release("w", 2);
        assert!(live.is_empty());
        assert_eq!(
            live.claim("w", OTHER, 4),
            Ok(()),
            "a dead session frees the id"
        );
    }

    #[test]
    fn keys_are_secrets_of_bounded_length() {
        let mut live = LiveSessions::default();
        assert_eq!(live.claim("w", "", 1), Err(SessionRefusal::BadKey));
        assert_eq!(live.claim("w", "short", 1), Err(SessionRefusal::BadKey));
        assert_eq!(
            live.claim("w", &"k".repeat(MAX_KEY + 1), 1),
            Err(SessionRefusal::BadKey)
        );
    }
}

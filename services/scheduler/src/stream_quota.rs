//! How many watch streams (job events, farm events, task logs) each owner
//! holds open. Every gateway forwards its watches to the leading
//! scheduler, so counting here bounds an owner over all gateways at once.
//! A stream holds a [`StreamPermit`] for its life; dropping the stream
//! (the client went away, the watch ended) gives it back.

use kiln_service::keyed_permits::{KeyedPermits, Permit};

/// One open stream of an owner.
pub type StreamPermit = Permit<String>;

/// Open streams per owner, and the most each may hold.
#[derive(Clone)]
pub struct StreamQuota {
    permits: KeyedPermits<String>,
}

impl StreamQuota {
    /// At most `limit` streams per owner; 0 means no limit.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: KeyedPermits::new(limit),
        }
    }

    /// A permit for one more stream of `owner`, or the refusal naming the quota.
    pub fn open(&self, owner: &str) -> Result<StreamPermit, String> {
        self.permits.acquire(&owner.to_owned()).map_err(|held| {
            format!(
                "quota max-streams-per-owner: {owner} has {held} watch streams open, the limit is {}; close one first",
                self.permits.limit()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_quota_and_the_owner() {
        let quota = StreamQuota::new(1);
        let _open = quota.open("alice");
        let refused = quota.open("alice").err().unwrap_or_default();
        assert!(
            refused.starts_with("quota max-streams-per-owner: alice has 1"),
            "{refused}"
        );
    }
}

//! Digests clients were recently told are stored.
//!
//! A client that learns from Stat or FindMissing that a file is stored skips
//! uploading it and submits its job moments later. Until that job exists,
//! nothing references the file, so the collector spares every digest seen
//! here within its grace period.

use std::time::Duration;

use moka::sync::Cache;

use crate::digest::Digest;

/// Digests remembered at most; past this the least recently touched go first
/// (their objects' own age still protects uploads made within the grace).
const CAPACITY: u64 = 1_000_000;

#[derive(Clone)]
pub struct Recent(Cache<Digest, ()>);

impl Recent {
    pub fn new(grace: Duration) -> Self {
        Self(
            Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(grace.max(Duration::from_secs(1)))
                .build(),
        )
    }

    pub fn touch(&self, digest: &Digest) {
        self.0.insert(digest.clone(), ());
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.0.contains_key(digest)
    }
}

//! The collector: deletes stored objects no job needs any more.
//!
//! An object is kept while any unfinished job (pending, running, paused,
//! ...) names it as an input or output, for `retain_finished` after a job
//! that names it finished, while it is younger than `grace` (a scene
//! uploaded but not yet submitted), and while any holder had it confirmed
//! within `grace` (its hold marker, see `markers.rs`, which every replica
//! sees). Everything else is deleted.
//!
//! One replica collects at a time, under the etcd lock [`LOCK_NAME`]. It
//! lists the references and the store once to pick candidates, then works
//! in batches: it claims a batch (so confirmations from now on answer "not
//! stored"), asks the scheduler again about exactly those digests, and for
//! each reads its holds just before deleting it. A job submitted after the
//! candidates were picked is seen by that second question, and a client
//! told "stored" after it by its hold (see `access.rs`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kiln_discovery::{Discovery, LockGuard};
use tokio::time::Instant;

use crate::backend::{Backend, StoredObject};
use crate::digest::Digest;
use crate::error::Error;
use crate::markers::{self, CLAIM_EXPIRY, Markers};
use crate::references::SchedulerLink;

/// The etcd lock collectors take.
pub const LOCK_NAME: &str = "assets-collector";
/// TTL of the lock's lease: a dead collector frees it this fast.
const LOCK_TTL_SECONDS: i64 = 15;
/// How long a replica waits for another's collection before skipping its turn.
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// Candidates held per round; the rest wait for the next round.
const MAX_CANDIDATES: usize = 100_000;
/// Objects claimed, re-checked and deleted together.
const BATCH: usize = 1_000;
/// Objects of a batch checked and deleted at once.
const DELETE_CONCURRENCY: usize = 8;
/// A claim older than this is not acted on any more: confirmations start
/// ignoring it at [`CLAIM_EXPIRY`], and this leaves room for clock skew.
const CLAIM_DEADLINE: Duration = Duration::from_secs(CLAIM_EXPIRY.as_secs() / 2);

#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    /// Time between collections.
    pub interval: Duration,
    /// Objects younger than this, or confirmed to a client within it, stay.
    pub grace: Duration,
    /// Finished jobs keep their inputs and outputs this long.
    pub retain_finished: Duration,
}

/// What one collection did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Collected {
    pub objects: u64,
    pub bytes: u64,
}

/// Why a candidate was kept after all, or that it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delete,
    /// A job submitted since the candidates were picked names it.
    Referenced,
    /// Confirmed to a holder within the grace period.
    RecentlyHeld,
    /// The batch took so long that its claim may be ignored by now.
    ClaimTooOld,
}

/// The last decision about one claimed candidate.
pub fn verdict(
    referenced: bool,
    newest_hold: Option<SystemTime>,
    now: SystemTime,
    grace: Duration,
    claimed_for: Duration,
) -> Verdict {
    if referenced {
        Verdict::Referenced
    } else if newest_hold.is_some_and(|put| markers::younger_than(put, now, grace)) {
        Verdict::RecentlyHeld
    } else if claimed_for >= CLAIM_DEADLINE {
        Verdict::ClaimTooOld
    } else {
        Verdict::Delete
    }
}

/// Whether a listed object may be a candidate at all: older than the
/// grace and named by no job the first listing of references saw.
pub fn is_candidate(
    object: &StoredObject,
    referenced: &HashSet<String>,
    now: SystemTime,
    grace: Duration,
) -> bool {
    !markers::younger_than(object.modified, now, grace)
        && !referenced.contains(object.digest.as_str())
}

pub struct Collector<B> {
    backend: Arc<B>,
    markers: Markers<B>,
    /// Where the collection lock is taken.
    discovery: Discovery,
    scheduler: Arc<SchedulerLink>,
    policy: RetentionPolicy,
}

impl<B: Backend> Collector<B> {
    pub fn new(
        backend: Arc<B>,
        discovery: Discovery,
        scheduler: Arc<SchedulerLink>,
        policy: RetentionPolicy,
    ) -> Self {
        Self {
            markers: Markers::new(backend.clone()),
            backend,
            discovery,
            scheduler,
            policy,
        }
    }

    /// Collects every `interval`, forever.
    pub async fn run(self) {
        let mut ticks = tokio::time::interval(self.policy.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.collect_once().await {
                Ok(Some(done)) => {
                    metrics::counter!(crate::counters::COLLECTIONS).increment(1);
                    tracing::info!(
                        objects = done.objects,
                        bytes = done.bytes,
                        "collection done"
                    )
                }
                Ok(None) => tracing::debug!("another replica is collecting"),
                Err(err) => tracing::warn!(error = %err, "collection failed"),
            }
        }
    }

    /// One collection under the lock; `None` if another replica holds it.
    pub async fn collect_once(&self) -> Result<Option<Collected>, Error> {
        let Some(lock) = self
            .discovery
            .try_lock(LOCK_NAME, LOCK_TTL_SECONDS, LOCK_WAIT)
            .await?
        else {
            return Ok(None);
        };
        let result = self.collect_locked(&lock).await;
        lock.release().await;
        result.map(Some)
    }

    async fn collect_locked(&self, lock: &LockGuard) -> Result<Collected, Error> {
        self.clear_expired_claims().await?;
        let referenced = self.referenced(Vec::new()).await?;
        let candidates = self.candidates(&referenced).await?;
        drop(referenced);
        let mut done = Collected::default();
        for batch in candidates.chunks(BATCH) {
            if lock.is_lost() {
                tracing::warn!("collector lock lost; stopping");
                break;
            }
            let collected = self.collect_batch(lock, batch).await?;
            done.objects += collected.objects;
            done.bytes += collected.bytes;
        }
        Ok(done)
    }

    /// Claims the batch, re-reads its references, and deletes what is
    /// still unneeded; every claim is released again.
    async fn collect_batch(
        &self,
        lock: &LockGuard,
        batch: &[StoredObject],
    ) -> Result<Collected, Error> {
        let claimed_at = Instant::now();
        let result = match self.claim_all(batch).await {
            Ok(()) => self.delete_unneeded(lock, batch, claimed_at).await,
            Err(err) => Err(err),
        };
        for chunk in batch.chunks(DELETE_CONCURRENCY) {
            let releases = chunk.iter().map(|object| self.unclaim(&object.digest));
            futures::future::join_all(releases).await;
        }
        result
    }

    async fn claim_all(&self, batch: &[StoredObject]) -> Result<(), Error> {
        for chunk in batch.chunks(DELETE_CONCURRENCY) {
            let claims = chunk
                .iter()
                .map(|object| self.markers.claim(&object.digest));
            futures::future::try_join_all(claims).await?;
        }
        Ok(())
    }

    async fn unclaim(&self, digest: &Digest) {
        if let Err(err) = self.markers.unclaim(digest).await {
            // It expires by itself; the next collection clears it.
            tracing::warn!(digest = %digest, error = %err, "cannot release claim");
        }
    }

    async fn delete_unneeded(
        &self,
        lock: &LockGuard,
        batch: &[StoredObject],
        claimed_at: Instant,
    ) -> Result<Collected, Error> {
        let digests = batch.iter().map(|o| o.digest.to_string()).collect();
        let referenced = self.referenced(digests).await?;
        let mut done = Collected::default();
        for chunk in batch.chunks(DELETE_CONCURRENCY) {
            let deletions = chunk.iter().map(|object| {
                let referenced = referenced.contains(object.digest.as_str());
                self.delete_if_unneeded(lock, object, referenced, claimed_at)
            });
            for size in futures::future::try_join_all(deletions)
                .await?
                .into_iter()
                .flatten()
            {
                done.objects += 1;
                done.bytes += size;
            }
        }
        Ok(done)
    }

    /// Deletes one claimed object unless its last check keeps it; its size if deleted.
    async fn delete_if_unneeded(
        &self,
        lock: &LockGuard,
        object: &StoredObject,
        referenced: bool,
        claimed_at: Instant,
    ) -> Result<Option<u64>, Error> {
        let newest_hold = self.markers.newest_hold(&object.digest).await?;
        let verdict = verdict(
            referenced,
            newest_hold,
            SystemTime::now(),
            self.policy.grace,
            claimed_at.elapsed(),
        );
        if verdict != Verdict::Delete || lock.is_lost() {
            tracing::debug!(digest = %object.digest, ?verdict, "kept");
            return Ok(None);
        }
        self.backend.delete(&object.digest).await?;
        // After the object: a hold without its object is harmless (it is
        // dropped when seen), an object whose holds are gone is not.
        self.markers.drop_holds(&object.digest).await?;
        tracing::info!(digest = %object.digest, size = object.size, "deleted unreferenced object");
        metrics::counter!(crate::counters::COLLECTED).increment(1);
        metrics::counter!(crate::counters::COLLECTED_BYTES).increment(object.size);
        Ok(Some(object.size))
    }

    /// Removes claims a collector that died left behind.
    async fn clear_expired_claims(&self) -> Result<(), Error> {
        let now = SystemTime::now();
        for (digest, put) in self.markers.claims().await? {
            if !markers::younger_than(put, now, CLAIM_EXPIRY) {
                tracing::info!(digest = %digest, "clearing an expired collection claim");
                self.markers.unclaim(&digest).await?;
            }
        }
        Ok(())
    }

    /// Stored objects that nothing referenced and that are past the grace.
    async fn candidates(&self, referenced: &HashSet<String>) -> Result<Vec<StoredObject>, Error> {
        let now = SystemTime::now();
        let mut candidates = Vec::new();
        let mut page = None;
        loop {
            let (objects, next) = self.backend.list_page(page).await?;
            candidates.extend(
                objects
                    .into_iter()
                    .filter(|object| is_candidate(object, referenced, now, self.policy.grace)),
            );
            if candidates.len() >= MAX_CANDIDATES {
                candidates.truncate(MAX_CANDIDATES);
                return Ok(candidates);
            }
            match next {
                Some(token) => page = Some(token),
                None => return Ok(candidates),
            }
        }
    }

    /// Digests live or recently finished jobs name; of `only` when it is not empty.
    async fn referenced(&self, only: Vec<String>) -> Result<HashSet<String>, Error> {
        self.scheduler
            .referenced(self.policy.retain_finished, only)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(100);

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn object(modified: SystemTime) -> Result<StoredObject, Error> {
        Ok(StoredObject {
            digest: Digest::parse(&"a".repeat(64))?,
            size: 1,
            modified,
        })
    }

    #[test]
    fn candidates_are_old_and_unreferenced() -> Result<(), Error> {
        let now = at(10_000);
        let none = HashSet::new();
        assert!(is_candidate(&object(at(9_000))?, &none, now, GRACE));
        assert!(!is_candidate(&object(at(9_950))?, &none, now, GRACE));
        let named: HashSet<String> = ["a".repeat(64)].into();
        assert!(!is_candidate(&object(at(9_000))?, &named, now, GRACE));
        Ok(())
    }

    #[test]
    fn the_last_check_spares_new_references_and_recent_holds() {
        let now = at(10_000);
        let quick = Duration::from_secs(1);
        assert_eq!(verdict(false, None, now, GRACE, quick), Verdict::Delete);
        assert_eq!(
            verdict(false, Some(at(5_000)), now, GRACE, quick),
            Verdict::Delete,
            "holds older than the grace keep nothing"
        );
        assert_eq!(verdict(true, None, now, GRACE, quick), Verdict::Referenced);
        assert_eq!(
            verdict(false, Some(at(9_990)), now, GRACE, quick),
            Verdict::RecentlyHeld
        );
        assert_eq!(
            verdict(false, None, now, GRACE, CLAIM_DEADLINE),
            Verdict::ClaimTooOld,
            "a claim confirmations may already ignore protects nothing"
        );
    }
}

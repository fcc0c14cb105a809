//! What each caller may see of the store, and confirmations that keep what
//! a client was told is stored safe from the collector.
//!
//! A user sees an object only if they hold it: they uploaded it (their
//! upload proves they have the content: it is hashed on the way in), a
//! worker stored it as an output of their job, or it was confirmed to them
//! before. A file stored before holds were recorded is theirs too if one
//! of their jobs names it (the scheduler says; the hold is recorded then).
//! Admins and other Kiln services see every object. To anyone
//! else an object is simply not stored: Stat and FindMissing say so,
//! Download and PresignDownload answer NOT_FOUND, and an upload of it is
//! accepted, checked, and stored once (deduplicated) with a new holder.
//!
//! A confirmation ("stored", from Stat, FindMissing or Upload) first
//! re-dates the caller's hold, then checks for a collector's claim, then
//! checks the object. The collector claims an object first, then reads its
//! holds, and deletes only if none is recent. So either the collector sees
//! the fresh hold and spares the object, or the confirmation sees the
//! claim (or the object gone) and answers "not stored": a client is never
//! told "stored" about an object that is then collected within the grace.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::backend::Backend;
use crate::caller::{Caller, Holder};
use crate::digest::Digest;
use crate::error::Error;
use crate::markers::{self, Markers};
use crate::references::SchedulerLink;

/// Backend lookups one request runs at once.
const CONCURRENCY: usize = 32;
/// How long an upload waits for the collector to finish with its object.
const CLAIM_PATIENCE: Duration = Duration::from_secs(5);
const CLAIM_POLL: Duration = Duration::from_millis(100);

pub struct Access<B> {
    backend: Arc<B>,
    markers: Markers<B>,
    grace: Duration,
    /// Asked which files a user's jobs name, for files no hold records.
    scheduler: Option<Arc<SchedulerLink>>,
}

impl<B: Backend> Access<B> {
    /// `grace`: how long a confirmation protects an object (see
    /// [`markers::needs_refresh`]).
    pub fn new(backend: Arc<B>, grace: Duration) -> Self {
        Self {
            markers: Markers::new(backend.clone()),
            backend,
            grace,
            scheduler: None,
        }
    }

    /// Lets users reach files stored before holds were recorded, when their
    /// jobs name them.
    pub fn with_scheduler(mut self, scheduler: Arc<SchedulerLink>) -> Self {
        self.scheduler = Some(scheduler);
        self
    }

    /// Whether `caller` may read `digest` now.
    pub async fn may_read(&self, caller: &Caller, digest: &Digest) -> Result<bool, Error> {
        if caller.sees_everything() {
            return Ok(true);
        }
        let holder = caller.holder();
        if self.markers.held_since(digest, &holder).await?.is_some() {
            return Ok(true);
        }
        let mut held = [false];
        self.adopt_from_jobs(caller, &holder, std::slice::from_ref(digest), &mut held)
            .await?;
        Ok(held[0])
    }

    /// The size of each of `digests` as `caller` sees it (None: not
    /// stored, or not theirs), each one reported stored confirmed to them.
    pub async fn confirm(
        &self,
        caller: &Caller,
        digests: Vec<Digest>,
    ) -> Result<Vec<Option<u64>>, Error> {
        let holder = caller.holder();
        let sees_everything = caller.sees_everything();
        let mut held = Vec::with_capacity(digests.len());
        for chunk in digests.chunks(CONCURRENCY) {
            let checks = chunk
                .iter()
                .map(|digest| self.hold_if_visible(digest, &holder, sees_everything));
            held.extend(futures::future::try_join_all(checks).await?);
        }
        self.adopt_from_jobs(caller, &holder, &digests, &mut held)
            .await?;
        if !held.contains(&true) {
            return Ok(vec![None; digests.len()]);
        }
        let claimed = self.markers.live_claims(SystemTime::now()).await?;
        let mut sizes = Vec::with_capacity(digests.len());
        for (chunk, held) in digests.chunks(CONCURRENCY).zip(held.chunks(CONCURRENCY)) {
            let lookups = chunk.iter().zip(held).map(|(digest, &held)| {
                self.size_if_held(digest, &holder, held && !claimed.contains(digest))
            });
            sizes.extend(futures::future::try_join_all(lookups).await?);
        }
        Ok(sizes)
    }

    async fn size_if_held(
        &self,
        digest: &Digest,
        holder: &Holder,
        held: bool,
    ) -> Result<Option<u64>, Error> {
        if held {
            self.stored_size(digest, holder).await
        } else {
            Ok(None)
        }
    }

    /// Records as held the digests not `held` yet that a job of the caller
    /// names and that are stored: files stored before holds were recorded.
    /// If the scheduler cannot answer, they stay not held (the user can
    /// upload them again).
    async fn adopt_from_jobs(
        &self,
        caller: &Caller,
        holder: &Holder,
        digests: &[Digest],
        held: &mut [bool],
    ) -> Result<(), Error> {
        let (Some(scheduler), Caller::Owner { name, admin: false }) = (&self.scheduler, caller)
        else {
            return Ok(());
        };
        let unknown: Vec<String> = digests
            .iter()
            .zip(held.iter())
            .filter(|(_, held)| !**held)
            .map(|(digest, _)| digest.to_string())
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let owned = match scheduler.owned(name, unknown).await {
            Ok(owned) => owned,
            Err(err) => {
                tracing::warn!(error = %err, "cannot ask which files a user's jobs name");
                return Ok(());
            }
        };
        for (digest, held) in digests.iter().zip(held.iter_mut()) {
            if owned.contains(digest.as_str()) && self.backend.stat(digest).await?.is_some() {
                tracing::info!(digest = %digest, "recording a hold a job of its owner implies");
                self.markers.hold(digest, holder).await?;
                *held = true;
            }
        }
        Ok(())
    }

    /// Step one of a confirmation: re-dates the holder's hold (or, for
    /// callers who see everything, makes one if the object is stored);
    /// whether it holds the object now.
    async fn hold_if_visible(
        &self,
        digest: &Digest,
        holder: &Holder,
        sees_everything: bool,
    ) -> Result<bool, Error> {
        match self.markers.held_since(digest, holder).await? {
            Some(put) if !markers::needs_refresh(put, SystemTime::now(), self.grace) => {
                return Ok(true);
            }
            Some(_) => {}
            None if !sees_everything => return Ok(false),
            None => {
                if self.backend.stat(digest).await?.is_none() {
                    return Ok(false);
                }
            }
        }
        self.markers.hold(digest, holder).await?;
        Ok(true)
    }

    /// The object's size; a hold on an object that is gone is dropped.
    async fn stored_size(&self, digest: &Digest, holder: &Holder) -> Result<Option<u64>, Error> {
        let size = self.backend.stat(digest).await?;
        if size.is_none() {
            self.markers.drop_hold(digest, holder).await?;
        }
        Ok(size)
    }

    /// Waits (briefly) until the collector is not deleting `digest`, so an
    /// upload of it is not deleted under it; fails if it takes too long.
    pub async fn wait_unclaimed(&self, digest: &Digest) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + CLAIM_PATIENCE;
        while self
            .markers
            .live_claims(SystemTime::now())
            .await?
            .contains(digest)
        {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Collecting(digest.to_string()));
            }
            tokio::time::sleep(CLAIM_POLL).await;
        }
        Ok(())
    }

    /// The last step of an upload, once the object is stored: `caller`
    /// holds it from now on. Fails (UNAVAILABLE, worth retrying) if the
    /// collector took the object meanwhile.
    pub async fn uploaded(&self, caller: &Caller, digest: &Digest) -> Result<(), Error> {
        let holder = caller.holder();
        self.markers.hold(digest, &holder).await?;
        let claimed = self
            .markers
            .live_claims(SystemTime::now())
            .await?
            .contains(digest);
        if claimed || self.stored_size(digest, &holder).await?.is_none() {
            return Err(Error::Collecting(digest.to_string()));
        }
        Ok(())
    }
}

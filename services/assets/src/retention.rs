//! The collector: deletes stored objects no job needs any more.
//!
//! An object is kept while any unfinished job (pending, running, paused,
//! ...) names it as an input or output, for `retain_finished` after a job
//! that names it finished, while it is younger than `grace` (a scene
//! uploaded but not yet submitted), and while a client was told within
//! `grace` that it is stored. Everything else is deleted.
//!
//! One replica collects at a time, under the etcd lock [`LOCK_NAME`]. The
//! references are read twice, before listing and again just before
//! deleting, so a job submitted while the listing ran is seen.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kiln_asset_client::CallCredentials;
use kiln_discovery::{Discovery, LockGuard, service};
use kiln_proto::v1::ListReferencedDigestsRequest;
use kiln_proto::v1::asset_references_client::AssetReferencesClient;
use kiln_tls::ClientTls;
use tonic::transport::Channel;

use crate::backend::{Backend, StoredObject};
use crate::error::Error;
use crate::recent::Recent;

/// The etcd lock collectors take.
pub const LOCK_NAME: &str = "assets-collector";
/// TTL of the lock's lease: a dead collector frees it this fast.
const LOCK_TTL_SECONDS: i64 = 15;
/// How long a replica waits for another's collection before skipping its turn.
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// Candidates held per round; the rest wait for the next round.
const MAX_CANDIDATES: usize = 100_000;
/// Digests of live jobs held in memory at most (about 100 bytes each).
const MAX_REFERENCES: usize = 5_000_000;

#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    /// Time between collections.
    pub interval: Duration,
    /// Objects younger than this, or recently confirmed to a client, stay.
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

/// How the collector reaches the leading scheduler.
#[derive(Clone)]
pub struct SchedulerLink {
    pub discovery: Discovery,
    /// TLS (and this service's certificate) on a TLS farm.
    pub tls: ClientTls,
    /// The farm's service token: the scheduler answers only farm services.
    pub credentials: CallCredentials,
}

pub struct Collector<B> {
    backend: Arc<B>,
    discovery: Discovery,
    /// How to dial the scheduler: TLS (and this service's certificate) on a TLS farm.
    scheduler_tls: ClientTls,
    scheduler_credentials: CallCredentials,
    recent: Recent,
    policy: RetentionPolicy,
}

impl<B: Backend> Collector<B> {
    pub fn new(
        backend: Arc<B>,
        scheduler: SchedulerLink,
        recent: Recent,
        policy: RetentionPolicy,
    ) -> Self {
        Self {
            backend,
            discovery: scheduler.discovery,
            scheduler_tls: scheduler.tls,
            scheduler_credentials: scheduler.credentials,
            recent,
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
        let scheduler = self.scheduler().await?;
        let referenced = self.referenced(&scheduler).await?;
        let candidates = self.candidates(&referenced).await?;
        if candidates.is_empty() {
            return Ok(Collected::default());
        }
        // Jobs submitted while we listed reference objects we just picked.
        let referenced = self.referenced(&scheduler).await?;
        let mut done = Collected::default();
        for object in candidates {
            if referenced.contains(object.digest.as_str()) || self.recent.contains(&object.digest) {
                continue;
            }
            if lock.is_lost() {
                tracing::warn!("collector lock lost; stopping");
                break;
            }
            self.backend.delete(&object.digest).await?;
            tracing::info!(digest = %object.digest, size = object.size, "deleted unreferenced object");
            metrics::counter!(crate::counters::COLLECTED).increment(1);
            metrics::counter!(crate::counters::COLLECTED_BYTES).increment(object.size);
            done.objects += 1;
            done.bytes += object.size;
        }
        Ok(done)
    }

    /// Stored objects that nothing references and that are past the grace.
    async fn candidates(&self, referenced: &HashSet<String>) -> Result<Vec<StoredObject>, Error> {
        let cutoff = SystemTime::now()
            .checked_sub(self.policy.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut candidates = Vec::new();
        let mut page = None;
        loop {
            let (objects, next) = self.backend.list_page(page).await?;
            candidates.extend(objects.into_iter().filter(|object| {
                object.modified < cutoff
                    && !referenced.contains(object.digest.as_str())
                    && !self.recent.contains(&object.digest)
            }));
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

    /// A connection to the leading scheduler, for one collection.
    async fn scheduler(&self) -> Result<Channel, Error> {
        let endpoint = self
            .discovery
            .find_one(service::SCHEDULER, Duration::from_secs(5))
            .await?;
        self.scheduler_tls
            .endpoint(&endpoint.grpc_uri())
            .map_err(|err| Error::Scheduler(err.to_string()))?
            .connect()
            .await
            .map_err(|err| Error::Scheduler(err.to_string()))
    }

    /// Digests live or recently finished jobs name, from the leading scheduler.
    async fn referenced(&self, scheduler: &Channel) -> Result<HashSet<String>, Error> {
        let request = ListReferencedDigestsRequest {
            finished_within_seconds: self.policy.retain_finished.as_secs(),
        };
        let mut batches = AssetReferencesClient::with_interceptor(
            scheduler.clone(),
            self.scheduler_credentials.clone(),
        )
        .list_referenced_digests(request)
        .await
        .map_err(|status| Error::Scheduler(status.message().to_owned()))?
        .into_inner();
        let mut referenced = HashSet::new();
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|status| Error::Scheduler(status.message().to_owned()))?;
            referenced.extend(batch.digests);
            if referenced.len() > MAX_REFERENCES {
                // Collecting with a partial view could delete what a job needs.
                return Err(Error::Scheduler(format!(
                    "more than {MAX_REFERENCES} referenced digests; not collecting"
                )));
            }
        }
        Ok(referenced)
    }
}

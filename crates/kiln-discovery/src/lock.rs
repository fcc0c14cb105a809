//! Farm-wide mutual exclusion through etcd's lock service.
//!
//! A lock is held under an etcd lease that this process keeps alive, so a
//! holder that crashes or loses etcd releases it within the lease's TTL and
//! nobody waits forever. Use it for work that two replicas must never do at
//! once (garbage collection, schema migrations):
//!
//! ```no_run
//! # async fn demo(discovery: &kiln_discovery::Discovery) -> Result<(), kiln_discovery::DiscoveryError> {
//! use std::time::Duration;
//! // Wait at most 2 s for the lock; None means another replica holds it.
//! if let Some(guard) = discovery.try_lock("assets-gc", 10, Duration::from_secs(2)).await? {
//!     // ... do the work, checking `guard.is_lost()` before each step that
//!     // must not overlap with another holder ...
//!     guard.release().await;
//! }
//! # Ok(()) }
//! ```
//!
//! Guarantee and limit: while `is_lost()` is false, etcd considered the
//! lease alive at the last refresh (a third of the TTL ago at most). A
//! process frozen for longer than the TTL may still believe it holds the
//! lock, so check `is_lost()` right before each irreversible step and keep
//! steps shorter than the TTL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Client, LockOptions};
use tokio::task::JoinHandle;

use crate::{Discovery, DiscoveryError};

/// Lease of a migration lock: a migrator that crashes frees it this soon.
const MIGRATION_LOCK_TTL: i64 = 30;

impl Discovery {
    /// Takes the farm-wide lock under which `service` migrates its Postgres
    /// schema, so replicas starting together migrate one at a time.
    pub async fn lock_migrations(&self, service: &str) -> Result<LockGuard, DiscoveryError> {
        self.lock(&format!("{service}-migrations"), MIGRATION_LOCK_TTL)
            .await
    }

    /// Takes the farm-wide lock `name`, waiting as long as another process
    /// holds it. `ttl_seconds` (at least 2) bounds how long the lock outlives
    /// this process if it dies. The key lives under `{prefix}/locks/{name}`.
    pub async fn lock(&self, name: &str, ttl_seconds: i64) -> Result<LockGuard, DiscoveryError> {
        let ttl = ttl_seconds.max(2);
        let mut client = self.client();
        let lease = client.lease_grant(ttl, None).await?.id();
        let key = self.lock_key(name);
        let acquired = client
            .lock(key.as_str(), Some(LockOptions::new().with_lease(lease)))
            .await;
        match acquired {
            Ok(response) => Ok(LockGuard::start(
                client,
                response.key().to_vec(),
                lease,
                ttl,
            )),
            Err(err) => {
                revoke(&mut client, lease).await;
                Err(err.into())
            }
        }
    }

    /// [`Discovery::lock`], giving up after `wait`: `Ok(None)` if another
    /// process still holds the lock then.
    pub async fn try_lock(
        &self,
        name: &str,
        ttl_seconds: i64,
        wait: Duration,
    ) -> Result<Option<LockGuard>, DiscoveryError> {
        let ttl = ttl_seconds.max(2);
        let mut client = self.client();
        let lease = client.lease_grant(ttl, None).await?.id();
        let key = self.lock_key(name);
        let options = LockOptions::new().with_lease(lease);
        let mut locker = client.clone();
        match tokio::time::timeout(wait, locker.lock(key.as_str(), Some(options))).await {
            Ok(Ok(response)) => Ok(Some(LockGuard::start(
                client,
                response.key().to_vec(),
                lease,
                ttl,
            ))),
            // Our waiting key is attached to the lease: revoking it leaves the queue.
            Ok(Err(err)) => {
                revoke(&mut client, lease).await;
                Err(err.into())
            }
            Err(_) => {
                revoke(&mut client, lease).await;
                Ok(None)
            }
        }
    }

    fn lock_key(&self, name: &str) -> String {
        format!("{}/locks/{name}", self.prefix())
    }
}

/// A held lock. Dropping it stops refreshing the lease (the lock then frees
/// itself within the TTL); [`LockGuard::release`] frees it at once.
pub struct LockGuard {
    client: Client,
    key: Vec<u8>,
    lease: i64,
    lost: Arc<AtomicBool>,
    keeper: JoinHandle<()>,
}

impl LockGuard {
    fn start(client: Client, key: Vec<u8>, lease: i64, ttl: i64) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let keeper = tokio::spawn(keep_lease(client.clone(), lease, ttl, lost.clone()));
        Self {
            client,
            key,
            lease,
            lost,
            keeper,
        }
    }

    /// True once the lease could not be refreshed: another process may now
    /// hold the lock, so stop the protected work.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Unlocks and ends the lease now.
    pub async fn release(self) {
        self.keeper.abort();
        let mut client = self.client.clone();
        if let Err(err) = client.unlock(self.key.clone()).await {
            tracing::warn!(error = %err, "cannot unlock etcd lock");
        }
        revoke(&mut client, self.lease).await;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Refreshes the lease at a third of its TTL until it cannot, then marks the
/// lock lost.
async fn keep_lease(client: Client, lease: i64, ttl: i64, lost: Arc<AtomicBool>) {
    let period = Duration::from_millis((ttl as u64 * 1000) / 3);
    if let Err(err) = crate::keep_alive(&client, lease, period).await {
        tracing::warn!(error = %err, lease, "lock lease refresh failed");
    }
    tracing::warn!(lease, "lock lease lost");
    lost.store(true, Ordering::Release);
}

async fn revoke(client: &mut Client, lease: i64) {
    if let Err(err) = client.lease_revoke(lease).await {
        tracing::warn!(error = %err, lease, "cannot revoke lock lease");
    }
}

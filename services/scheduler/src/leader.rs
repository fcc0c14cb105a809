//! Leader election: any number of schedulers run, one leads. Each campaigns
//! in an etcd election under a lease of its own; the winner claims the
//! Postgres fence with its leadership's revision (`fence.rs`), loads the
//! queue, lists itself in etcd as *the* scheduler, and dispatches until it
//! loses its lease, finds itself fenced off, or is told to stop (then it
//! resigns at once so a standby takes over). A standby serves gRPC but
//! answers UNAVAILABLE, and is not listed, so workers and gateways find only
//! the leader.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{Client, LeaderKey, ResignOptions};
use kiln_discovery::{Discovery, Endpoint, Registration, service};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::SchedulerError;
use crate::core::quota_policy::QuotaSettings;
use crate::fence::{self, Token};
use crate::retry::RetryPolicy;
use crate::scheduler::Scheduler;

/// The scheduler that leads, if this process does.
pub struct LeaderSlot {
    current: RwLock<Option<Arc<Scheduler>>>,
    /// Whether this process leads, for readiness and gRPC health.
    leading: watch::Sender<bool>,
}

impl Default for LeaderSlot {
    fn default() -> Self {
        Self {
            current: RwLock::default(),
            leading: watch::Sender::new(false),
        }
    }
}

impl LeaderSlot {
    /// Whether this process leads, now and as it changes.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    pub fn get(&self) -> Result<Arc<Scheduler>, SchedulerError> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| SchedulerError::NotLeader("this scheduler is a standby".into()))
    }

    fn set(&self, scheduler: Option<Arc<Scheduler>>) {
        let leading = scheduler.is_some();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = scheduler;
        self.leading.send_replace(leading);
    }
}

/// What leading needs besides the election.
pub struct Leading {
    pub db: PgPool,
    pub discovery: Discovery,
    pub slot: Arc<LeaderSlot>,
    pub policy: RetryPolicy,
    pub owner_weights: HashMap<String, f64>,
    /// What each owner may queue and run at once.
    pub quotas: QuotaSettings,
    /// Templates whose tasks may use the network.
    pub network_templates: std::collections::HashSet<String>,
    /// When new work is held back or refused while the farm is saturated.
    pub admission: crate::core::admission_policy::AdmissionPolicy,
    /// How webhooks are delivered while this process leads.
    pub webhooks: crate::webhooks::Settings,
    /// How this process is listed in etcd while it leads.
    pub endpoint: Endpoint,
    /// Seconds of the election lease: how long a crashed leader holds on.
    pub lease_ttl: i64,
    /// How long finished jobs are kept before the leader deletes them.
    pub retention: crate::retention::JobRetention,
}

enum Stop {
    Shutdown,
    Lost(String),
}

/// Campaigns, leads, and campaigns again after losing, until shutdown.
pub async fn run(leading: Leading) {
    let shutdown = shutdown_requested();
    // Ends a crashed leader's lease rather than waiting it out, whenever
    // this process does not lead. It outlives each campaign: with a lease
    // longer than the etcd client's timeout a campaign call gives up every
    // few seconds and starts again, and the watch must have seen the leader
    // listening before it may judge it gone.
    let _watch = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
        crate::dead_leader::end_crashed_leaders(
            leading.discovery.clone(),
            election_name(&leading.discovery),
            leading.endpoint.instance.clone(),
            leading.slot.leading(),
        ),
    ));
    loop {
        let mut lost = shutdown.clone();
        let campaign = tokio::select! {
            campaign = campaign(&leading) => campaign,
            _ = lost.changed() => return,
        };
        let (key, lease) = match campaign {
            Ok(won) => won,
            Err(err) => {
                tracing::warn!(error = %err, "cannot campaign for leadership; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let outcome = lead(&leading, &key, lease.lost.clone(), shutdown.clone()).await;
        leading.slot.set(None);
        resign(leading.discovery.client(), key).await;
        lease.stop();
        match outcome {
            Stop::Shutdown => return,
            Stop::Lost(why) => tracing::warn!(reason = %why, "stepped down; campaigning again"),
        }
    }
}

fn shutdown_requested() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        kiln_service::shutdown_signal().await;
        let _ = tx.send(true);
    });
    rx
}

/// The etcd election the scheduler replicas campaign in.
fn election_name(discovery: &Discovery) -> String {
    format!("{}/election/scheduler", discovery.prefix())
}

/// Pause between refreshes of a leadership lease that etcd did not confirm.
const LEASE_RETRY: Duration = Duration::from_millis(200);

/// A lease kept alive in the background; `lost` turns true once etcd
/// says it has ended or cannot be reached for longer than it lasts.
struct KeptLease {
    id: i64,
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl KeptLease {
    fn stop(self) {
        self.keeper.abort();
    }

    /// Stops refreshing the lease and ends it at once, which deletes the
    /// election key a failed campaign left behind. Left to run out instead,
    /// that key stayed ahead of this replica's next one; with a lease longer
    /// than the etcd client's request timeout, every later campaign timed
    /// out queued behind the previous one's key, and no replica led until
    /// the timings happened to line up. Best effort: etcd may be down.
    async fn revoke(self, mut client: Client) {
        let id = self.id;
        self.stop();
        match tokio::time::timeout(REVOKE_TIMEOUT, client.lease_revoke(id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "cannot revoke a campaign's lease; it runs out")
            }
            Err(_) => tracing::debug!("revoking a campaign's lease timed out; it runs out"),
        }
    }
}

/// How long a failed campaign waits for etcd to end its lease.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(1);

async fn campaign(leading: &Leading) -> Result<(LeaderKey, KeptLease), etcd_client::Error> {
    let mut client = leading.discovery.client();
    let lease = keep_lease(client.clone(), leading.lease_ttl).await?;
    let name = election_name(&leading.discovery);
    tracing::info!(instance = %leading.endpoint.instance, "campaigning for leadership");
    let won = client
        .campaign(name, leading.endpoint.instance.clone(), lease.id)
        .await;
    match won {
        Ok(response) => match response.leader() {
            Some(key) => Ok((key.clone(), lease)),
            None => {
                lease.revoke(client).await;
                Err(etcd_client::Error::InvalidArgs(
                    "campaign returned no leader key".into(),
                ))
            }
        },
        Err(err) => {
            lease.revoke(client).await;
            Err(err)
        }
    }
}

async fn keep_lease(mut client: Client, ttl: i64) -> Result<KeptLease, etcd_client::Error> {
    let id = client.lease_grant(ttl, None).await?.id();
    let (lost_tx, lost) = watch::channel(false);
    let keeper = tokio::spawn(async move {
        let period = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
        let expires = Duration::from_secs(ttl.max(1) as u64);
        // When the last refresh that etcd confirmed was sent: the lease
        // lasts at least `expires` from then.
        let mut refreshed_at = tokio::time::Instant::now();
        let mut wait = period;
        loop {
            tokio::time::sleep(wait).await;
            let left = expires.saturating_sub(refreshed_at.elapsed());
            if left.is_zero() {
                break;
            }
            let sent = tokio::time::Instant::now();
            // An etcd that hangs (frozen, partitioned) must not hold the
            // keeper past the lease's end, so each round trip has a deadline.
            match tokio::time::timeout(period.min(left), refresh(&mut client, id)).await {
                Ok(Ok(true)) => {
                    refreshed_at = sent;
                    wait = period;
                }
                Ok(Ok(false)) => break,
                Ok(Err(_)) | Err(_) => {
                    // A short etcd outage is ridden out by retrying quickly.
                    tracing::warn!("cannot refresh the leadership lease; retrying");
                    wait = LEASE_RETRY;
                }
            }
        }
        // Safety first: without a live lease this process must not act as leader.
        let _ = lost_tx.send(true);
    });
    Ok(KeptLease { id, lost, keeper })
}

/// One keep-alive round trip; false when etcd says the lease is gone.
async fn refresh(client: &mut Client, id: i64) -> Result<bool, etcd_client::Error> {
    let (mut keeper, mut responses) = client.lease_keep_alive(id).await?;
    keeper.keep_alive().await?;
    match responses.message().await? {
        Some(response) => Ok(response.ttl() > 0),
        None => Ok(false),
    }
}

async fn lead(
    leading: &Leading,
    key: &LeaderKey,
    mut lease_lost: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> Stop {
    let token = Token(key.rev());
    if let Err(err) = fence::claim(&leading.db, token).await {
        return Stop::Lost(format!("cannot claim the fence: {err}"));
    }
    let started = match Scheduler::start(
        leading.db.clone(),
        leading.policy,
        leading.owner_weights.clone(),
        leading.quotas.clone(),
        leading.network_templates.clone(),
        leading.admission,
        token,
    )
    .await
    {
        Ok(started) => started,
        Err(err) => return Stop::Lost(format!("cannot load the queue: {err}")),
    };
    let scheduler = started.scheduler;
    leading.slot.set(Some(scheduler.clone()));
    let listing = match list_as_leader(leading).await {
        Ok(listing) => listing,
        Err(err) => return Stop::Lost(format!("cannot list this scheduler in etcd: {err}")),
    };
    tracing::info!(token = token.0, instance = %leading.endpoint.instance, "leading");
    let webhooks = tokio::spawn(crate::webhooks::runner::run(
        leading.db.clone(),
        token,
        leading.webhooks.clone(),
    ));
    let liveness = tokio::spawn(crate::liveness::watch_worker_leases(
        leading.discovery.clone(),
        scheduler,
    ));
    let retention = tokio::spawn(crate::retention::run(leading.db.clone(), leading.retention));
    let stop = tokio::select! {
        stopped = started.dispatch.run() => Stop::Lost(match stopped {
            Ok(()) => "dispatch loop ended".to_owned(),
            Err(err) => format!("dispatch loop stopped: {err}"),
        }),
        _ = lease_lost.wait_for(|lost| *lost) => Stop::Lost("leadership lease lost".into()),
        _ = shutdown.wait_for(|stop| *stop) => Stop::Shutdown,
    };
    retention.abort();
    liveness.abort();
    webhooks.abort();
    listing.revoke().await;
    stop
}

/// Lists this process as the scheduler, and removes listings of earlier
/// leaders whose leases have not run out yet, so nobody dials a dead one.
async fn list_as_leader(leading: &Leading) -> Result<Registration, kiln_discovery::DiscoveryError> {
    let discovery = &leading.discovery;
    for stale in discovery.find(service::SCHEDULER).await? {
        if stale.instance != leading.endpoint.instance {
            discovery
                .remove(service::SCHEDULER, &stale.instance)
                .await?;
        }
    }
    discovery
        .register(service::SCHEDULER, leading.endpoint.clone())
        .await
}

async fn resign(mut client: Client, key: LeaderKey) {
    let options = ResignOptions::new().with_leader(key);
    if let Err(err) = client.resign(Some(options)).await {
        tracing::debug!(error = %err, "resigning leadership failed; the lease ends it");
    }
}

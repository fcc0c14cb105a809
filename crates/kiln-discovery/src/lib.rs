//! Service discovery through etcd.
//!
//! Each service instance writes one key, `{prefix}/services/{service}/{instance}`,
//! whose value is a JSON [`Endpoint`], under a lease it keeps alive. When the
//! process dies the lease expires and the key disappears, so a lookup only
//! ever returns live instances (give or take the lease TTL).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

mod lock;
pub use lock::LockGuard;

/// Pause before looking again after a failed lookup.
const LOOKUP_RETRY: Duration = Duration::from_millis(200);
/// Pause before following a service's listings again after the watch broke.
const WATCH_RETRY: Duration = Duration::from_secs(1);
/// Changes a listings watch holds for a consumer that is busy.
const LISTING_CHANGES_BUFFERED: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("no {service} instance registered in etcd after {waited:?}")]
    NotFound { service: String, waited: Duration },
    #[error("malformed endpoint in etcd: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// The service names Kiln registers under.
pub mod service {
    pub const GATEWAY: &str = "gateway";
    pub const SCHEDULER: &str = "scheduler";
    pub const ASSETS: &str = "assets";
    pub const WORKER: &str = "worker";
}

/// How to reach etcd; shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct DiscoveryArgs {
    /// etcd endpoints, comma-separated
    #[arg(
        long = "etcd",
        env = "KILN_ETCD",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix under which this farm's keys live, so farms can share an etcd
    #[arg(long, env = "KILN_ETCD_PREFIX", default_value = "/kiln")]
    pub etcd_prefix: String,
    /// Seconds a registration outlives its process
    #[arg(long, env = "KILN_LEASE_TTL", default_value_t = 10)]
    pub lease_ttl: i64,
    /// Host name peers should use to reach this process, when it listens on
    /// 0.0.0.0 (e.g. the service name under docker compose); default: the bound address
    #[arg(long, env = "KILN_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// etcd user, when etcd has authentication on
    #[arg(long, env = "KILN_ETCD_USER", requires = "etcd_password")]
    pub etcd_user: Option<String>,
    /// The etcd user's password; prefer the environment variable, since other users can read
    /// command lines
    #[arg(long, env = "KILN_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<EtcdPassword>,
}

/// An etcd password: never shown in logs or debug output.
#[derive(Clone)]
pub struct EtcdPassword(String);

impl EtcdPassword {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for EtcdPassword {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl std::fmt::Debug for EtcdPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdPassword(<redacted>)")
    }
}

/// How to connect to etcd: `options`, with the user and password of
/// `user` (name and password) when etcd has authentication on; the token
/// is renewed whenever etcd reports it expired.
pub fn connect_options(
    options: etcd_client::ConnectOptions,
    user: Option<(&str, &str)>,
) -> etcd_client::ConnectOptions {
    match user {
        Some((name, password)) => options
            .with_user(name, password)
            .with_auto_token_refresh(true),
        None => options,
    }
}

/// Where one service instance listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Unique name of the instance.
    pub instance: String,
    /// gRPC address as `host:port`.
    pub grpc: String,
    /// HTTP address as `host:port`, for services that serve HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// HTTP ops endpoint (`/metrics`, `/healthz`, `/readyz`) as `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<String>,
    /// The instance serves TLS on its gRPC (and HTTP) address: dial `https`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

impl Endpoint {
    fn scheme(&self) -> &'static str {
        match self.tls {
            true => "https",
            false => "http",
        }
    }

    /// `http://host:port`, or `https://` when the instance serves TLS.
    pub fn grpc_uri(&self) -> String {
        format!("{}://{}", self.scheme(), self.grpc)
    }

    /// The HTTP address as a URL with the instance's scheme, if it serves HTTP.
    pub fn http_url(&self) -> Option<String> {
        let http = self.http.as_deref()?;
        Some(format!("{}://{http}", self.scheme()))
    }
}

/// A change in the instances listed under a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListingChange {
    /// An instance was listed, or its listing changed (e.g. a new address).
    Listed(Endpoint),
    /// An instance's listing disappeared: revoked, or its lease ran out.
    Unlisted(String),
}

#[derive(Clone)]
pub struct Discovery {
    client: Client,
    prefix: String,
    lease_ttl: i64,
    advertise_host: Option<String>,
}

impl Discovery {
    /// The address peers should dial for a listener bound to `bound`.
    pub fn advertised_address(&self, bound: std::net::SocketAddr) -> String {
        match &self.advertise_host {
            Some(host) => format!("{host}:{}", bound.port()),
            None => bound.to_string(),
        }
    }

    /// Connects to etcd, retrying for up to `patience` while it starts.
    pub async fn connect(args: &DiscoveryArgs, patience: Duration) -> Result<Self, DiscoveryError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match Self::try_connect(args).await {
                Ok(discovery) => return Ok(discovery),
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %err, "etcd not reachable yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn try_connect(args: &DiscoveryArgs) -> Result<Self, DiscoveryError> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        let user = args
            .etcd_user
            .as_deref()
            .zip(args.etcd_password.as_ref().map(EtcdPassword::expose));
        let options = connect_options(options, user);
        let mut client = Client::connect(&args.etcd_endpoints, Some(options)).await?;
        client.status().await?;
        Ok(Self {
            client,
            prefix: args.etcd_prefix.trim_end_matches('/').to_owned(),
            lease_ttl: args.lease_ttl.max(2),
            advertise_host: args.advertise_host.clone(),
        })
    }

    /// The underlying client, for elections and locks.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The farm's key prefix, without a trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn service_prefix(&self, service: &str) -> String {
        format!("{}/services/{}/", self.prefix, service)
    }

    /// Registers `endpoint` under `service` and keeps it registered until the
    /// returned [`Registration`] is dropped or revoked.
    pub async fn register(
        &self,
        service: &str,
        endpoint: Endpoint,
    ) -> Result<Registration, DiscoveryError> {
        let key = format!("{}{}", self.service_prefix(service), endpoint.instance);
        let value = serde_json::to_string(&endpoint)?;
        let lease = put_with_lease(&self.client, &key, &value, self.lease_ttl).await?;
        tracing::info!(service, instance = %endpoint.instance, grpc = %endpoint.grpc, "registered in etcd");
        let lease = Arc::new(AtomicI64::new(lease));
        let keeper = tokio::spawn(keep_registered(
            self.client.clone(),
            key,
            value,
            self.lease_ttl,
            lease.clone(),
        ));
        Ok(Registration {
            client: self.client.clone(),
            keeper,
            lease,
        })
    }

    /// Sends the instance name of every registration of `service` that
    /// disappears (revoked, or its lease ran out) until `removed` is closed.
    /// A broken watch is re-established; removals while it was down are missed.
    pub async fn watch_removals(&self, service: &str, removed: tokio::sync::mpsc::Sender<String>) {
        let prefix = self.service_prefix(service);
        while !removed.is_closed() {
            if let Err(err) = self.forward_removals(&prefix, &removed).await {
                tracing::warn!(error = %err, service, "etcd watch broke; watching again");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn forward_removals(
        &self,
        prefix: &str,
        removed: &tokio::sync::mpsc::Sender<String>,
    ) -> Result<(), DiscoveryError> {
        let mut client = self.client.clone();
        let mut stream = client
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await?;
        while let Some(response) = stream.message().await? {
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                if event.event_type() != EventType::Delete {
                    continue;
                }
                let instance = String::from_utf8_lossy(kv.key())
                    .trim_start_matches(prefix)
                    .to_owned();
                if removed.send(instance).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Follows every instance listed under `service`: first one
    /// [`ListingChange::Listed`] for each instance listed now, then each
    /// change as etcd reports it, until the receiver is dropped. A broken
    /// watch is re-established from a fresh listing, and whatever changed
    /// meanwhile is sent as the difference, so the receiver's view never
    /// stays wrong. Malformed listings are skipped with a warning.
    pub fn watch_listings(&self, service: &str) -> mpsc::Receiver<ListingChange> {
        let (changes, received) = mpsc::channel(LISTING_CHANGES_BUFFERED);
        let discovery = self.clone();
        let service = service.to_owned();
        tokio::spawn(async move {
            let mut known = HashMap::new();
            while !changes.is_closed() {
                if let Err(err) = discovery
                    .follow_listings(&service, &mut known, &changes)
                    .await
                {
                    tracing::warn!(error = %err, service, "etcd watch of listings broke; watching again");
                }
                tokio::select! {
                    _ = changes.closed() => return,
                    _ = tokio::time::sleep(WATCH_RETRY) => {}
                }
            }
        });
        received
    }

    /// Sends what differs between `known` and the listings now, then every
    /// change after them; returns when the watch ends or the receiver is gone.
    async fn follow_listings(
        &self,
        service: &str,
        known: &mut HashMap<String, Endpoint>,
        changes: &mpsc::Sender<ListingChange>,
    ) -> Result<(), DiscoveryError> {
        let prefix = self.service_prefix(service);
        let mut client = self.client.clone();
        let listed = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = listed.header().map_or(0, |h| h.revision());
        let now: HashMap<String, Endpoint> = listed
            .kvs()
            .iter()
            .filter_map(|kv| parse_listing(&prefix, kv.key(), kv.value()))
            .collect();
        let gone: Vec<String> = known
            .keys()
            .filter(|instance| !now.contains_key(*instance))
            .cloned()
            .collect();
        for instance in gone {
            known.remove(&instance);
            if changes
                .send(ListingChange::Unlisted(instance))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        for (instance, endpoint) in now {
            if !note_listed(known, instance, &endpoint) {
                continue;
            }
            if changes.send(ListingChange::Listed(endpoint)).await.is_err() {
                return Ok(());
            }
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = client.watch(prefix.as_str(), Some(options)).await?;
        loop {
            let response = tokio::select! {
                _ = changes.closed() => return Ok(()),
                response = stream.message() => response?,
            };
            let Some(response) = response else {
                return Ok(());
            };
            if response.canceled() {
                // E.g. the revision was compacted away: list afresh.
                return Ok(());
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let change = match event.event_type() {
                    EventType::Put => {
                        let Some((instance, endpoint)) =
                            parse_listing(&prefix, kv.key(), kv.value())
                        else {
                            continue;
                        };
                        if !note_listed(known, instance, &endpoint) {
                            continue;
                        }
                        ListingChange::Listed(endpoint)
                    }
                    EventType::Delete => {
                        let instance = String::from_utf8_lossy(kv.key())
                            .trim_start_matches(prefix.as_str())
                            .to_owned();
                        if known.remove(&instance).is_none() {
                            continue;
                        }
                        ListingChange::Unlisted(instance)
                    }
                };
                if changes.send(change).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// Removes another instance's registration, e.g. that of a scheduler
    /// which no longer leads but whose lease has not run out yet.
    pub async fn remove(&self, service: &str, instance: &str) -> Result<(), DiscoveryError> {
        let key = format!("{}{}", self.service_prefix(service), instance);
        self.client.clone().delete(key, None).await?;
        Ok(())
    }

    /// Every live instance of `service`.
    pub async fn find(&self, service: &str) -> Result<Vec<Endpoint>, DiscoveryError> {
        Ok(self.find_at(service).await?.0)
    }

    /// Every live instance of `service`, and the etcd revision it was read at.
    async fn find_at(&self, service: &str) -> Result<(Vec<Endpoint>, i64), DiscoveryError> {
        let mut client = self.client.clone();
        let response = client
            .get(
                self.service_prefix(service),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let endpoints = response
            .kvs()
            .iter()
            .map(|kv| serde_json::from_slice(kv.value()).map_err(DiscoveryError::from))
            .collect::<Result<_, _>>()?;
        Ok((endpoints, revision))
    }

    /// Returns once anything under `service` changes after `revision`, or after `patience`.
    async fn wait_for_change(&self, service: &str, revision: i64, patience: Duration) {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut client = self.client.clone();
        let watched = async {
            let mut stream = client
                .watch(self.service_prefix(service), Some(options))
                .await?;
            // The first response only confirms the watch; wait for one with events.
            while let Some(response) = stream.message().await? {
                if !response.events().is_empty() {
                    break;
                }
            }
            Ok::<(), DiscoveryError>(())
        };
        // A change or the patience running out both mean: look again now.
        if let Ok(Err(err)) = tokio::time::timeout(patience, watched).await {
            tracing::debug!(error = %err, service, "watch failed; looking again shortly");
            tokio::time::sleep(LOOKUP_RETRY.min(patience)).await;
        }
    }

    /// One live instance of `service`, chosen at random, waiting up to `patience` for one to appear.
    pub async fn find_one(
        &self,
        service: &str,
        patience: Duration,
    ) -> Result<Endpoint, DiscoveryError> {
        let started = tokio::time::Instant::now();
        loop {
            let left = patience.saturating_sub(started.elapsed());
            match self.find_at(service).await {
                Ok((mut endpoints, _)) if !endpoints.is_empty() => {
                    let pick = rand::random_range(0..endpoints.len());
                    return Ok(endpoints.swap_remove(pick));
                }
                _ if left.is_zero() => {
                    return Err(DiscoveryError::NotFound {
                        service: service.to_owned(),
                        waited: patience,
                    });
                }
                // Woken by the registration itself, not by polling: a new
                // leader is dialled the moment it lists itself.
                Ok((_, revision)) => self.wait_for_change(service, revision, left).await,
                Err(err) => {
                    tracing::debug!(error = %err, service, "lookup failed");
                    tokio::time::sleep(LOOKUP_RETRY.min(left)).await;
                }
            }
        }
    }
}

/// The instance named by a listing's key and its endpoint (named as the
/// key names it, which is what a deletion names), or `None` (with a
/// warning) for a value that is not an endpoint.
fn parse_listing(prefix: &str, key: &[u8], value: &[u8]) -> Option<(String, Endpoint)> {
    let instance = String::from_utf8_lossy(key)
        .trim_start_matches(prefix)
        .to_owned();
    match serde_json::from_slice::<Endpoint>(value) {
        Ok(endpoint) => Some((
            instance.clone(),
            Endpoint {
                instance,
                ..endpoint
            },
        )),
        Err(err) => {
            tracing::warn!(error = %err, instance, "skipping a malformed listing in etcd");
            None
        }
    }
}

/// Remembers `endpoint` as `instance`'s listing; false if it was already.
fn note_listed(
    known: &mut HashMap<String, Endpoint>,
    instance: String,
    endpoint: &Endpoint,
) -> bool {
    if known.get(&instance) == Some(endpoint) {
        return false;
    }
    known.insert(instance, endpoint.clone());
    true
}

async fn put_with_lease(
    client: &Client,
    key: &str,
    value: &str,
    ttl: i64,
) -> Result<i64, DiscoveryError> {
    let mut client = client.clone();
    let lease = client.lease_grant(ttl, None).await?.id();
    client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await?;
    Ok(lease)
}

/// Refreshes the lease at a third of its TTL; if the lease is lost (etcd
/// outage longer than the TTL), registers again once etcd answers.
async fn keep_registered(
    client: Client,
    key: String,
    value: String,
    ttl: i64,
    lease: Arc<AtomicI64>,
) {
    let period = Duration::from_millis((ttl as u64 * 1000) / 3);
    loop {
        if let Err(err) = keep_alive(&client, lease.load(Ordering::Relaxed), period).await {
            tracing::warn!(error = %err, key, "lost etcd lease; registering again");
        }
        loop {
            tokio::time::sleep(period).await;
            match put_with_lease(&client, &key, &value, ttl).await {
                Ok(new_lease) => {
                    // Shared with the Registration, so revoke() removes the current key.
                    lease.store(new_lease, Ordering::Relaxed);
                    break;
                }
                Err(err) => tracing::warn!(error = %err, key, "cannot register in etcd yet"),
            }
        }
    }
}

async fn keep_alive(client: &Client, lease: i64, period: Duration) -> Result<(), DiscoveryError> {
    let mut client = client.clone();
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
    loop {
        keeper.keep_alive().await?;
        match responses.message().await? {
            Some(response) if response.ttl() > 0 => {}
            _ => return Ok(()),
        }
        tokio::time::sleep(period).await;
    }
}

/// A live registration; dropping it stops refreshing the lease, and
/// [`Registration::revoke`] removes the key at once.
pub struct Registration {
    client: Client,
    keeper: JoinHandle<()>,
    lease: Arc<AtomicI64>,
}

impl Registration {
    /// Removes the registration now rather than when the lease runs out.
    pub async fn revoke(self) {
        self.keeper.abort();
        let mut client = self.client.clone();
        if let Err(err) = client
            .lease_revoke(self.lease.load(Ordering::Relaxed))
            .await
        {
            tracing::warn!(error = %err, "cannot revoke etcd lease");
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

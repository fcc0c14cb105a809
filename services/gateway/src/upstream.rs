//! Channels to the internal services, found through etcd.
//!
//! A channel is looked up once and reused; when a call on it fails as
//! unavailable the lookup is dropped, so the next call finds the service's
//! current address (a restarted scheduler registers a new port).

use std::sync::Mutex;
use std::time::Duration;

use kiln_discovery::{Discovery, service};
use kiln_proto::v1::asset_service_client::AssetServiceClient;
use kiln_proto::v1::farm_service_client::FarmServiceClient;
use kiln_proto::v1::job_service_client::JobServiceClient;
use tonic::Status;
use tonic::transport::Channel;

/// How long a request waits for a service to be registered.
const LOOKUP_PATIENCE: Duration = Duration::from_secs(5);
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

pub struct Upstreams {
    discovery: Discovery,
    tls: kiln_tls::ClientTls,
    scheduler: Mutex<Option<Channel>>,
    assets: Mutex<Option<Channel>>,
}

impl Upstreams {
    /// Upstreams found through `discovery`, dialled with `tls` when they serve TLS.
    pub fn new(discovery: Discovery, tls: kiln_tls::ClientTls) -> Self {
        Self {
            discovery,
            tls,
            scheduler: Mutex::new(None),
            assets: Mutex::new(None),
        }
    }

    pub async fn jobs(&self) -> Result<JobServiceClient<Channel>, Status> {
        let channel = self.channel(service::SCHEDULER, &self.scheduler).await?;
        Ok(JobServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub async fn farm(&self) -> Result<FarmServiceClient<Channel>, Status> {
        let channel = self.channel(service::SCHEDULER, &self.scheduler).await?;
        Ok(FarmServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub async fn assets(&self) -> Result<AssetServiceClient<Channel>, Status> {
        let channel = self.channel(service::ASSETS, &self.assets).await?;
        Ok(AssetServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub async fn asset_client(&self) -> Result<kiln_asset_client::AssetClient, Status> {
        let channel = self.channel(service::ASSETS, &self.assets).await?;
        Ok(kiln_asset_client::AssetClient::new(channel))
    }

    /// Forgets cached channels after an upstream failed, so the next call looks again.
    pub fn note_failure(&self, status: &Status) {
        if matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown
        ) {
            for slot in [&self.scheduler, &self.assets] {
                if let Ok(mut cached) = slot.lock() {
                    *cached = None;
                }
            }
        }
    }

    async fn channel(&self, name: &str, slot: &Mutex<Option<Channel>>) -> Result<Channel, Status> {
        if let Some(channel) = slot.lock().ok().and_then(|c| c.clone()) {
            return Ok(channel);
        }
        let endpoint = self
            .discovery
            .find_one(name, LOOKUP_PATIENCE)
            .await
            .map_err(|e| Status::unavailable(format!("{name} service: {e}")))?;
        let channel = self
            .tls
            .endpoint(&endpoint.grpc_uri())
            .map_err(|e| Status::internal(format!("{name} service: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            // Unanswered pings drop a connection to a frozen instance, so
            // calls fail over instead of hanging.
            .http2_keep_alive_interval(Duration::from_secs(3))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .connect_lazy();
        if let Ok(mut cached) = slot.lock() {
            *cached = Some(channel.clone());
        }
        Ok(channel)
    }
}

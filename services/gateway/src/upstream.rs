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
use tonic::metadata::AsciiMetadataValue;
use tonic::metadata::errors::InvalidMetadataValue;
use tonic::transport::Channel;

/// How long a request waits for a service to be registered.
const LOOKUP_PATIENCE: Duration = Duration::from_secs(5);
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

pub struct Upstreams {
    discovery: Discovery,
    tls: kiln_tls::ClientTls,
    /// The farm's service token: the internal services trust the user a
    /// call names only when it comes with this.
    service_token: AsciiMetadataValue,
    scheduler: Mutex<Option<Channel>>,
    assets: Mutex<Option<Channel>>,
}

impl Upstreams {
    /// Upstreams found through `discovery`, dialled with `tls` when they
    /// serve TLS, and called with the farm's `service_token`.
    pub fn new(
        discovery: Discovery,
        tls: kiln_tls::ClientTls,
        service_token: &str,
    ) -> Result<Self, InvalidMetadataValue> {
        Ok(Self {
            discovery,
            tls,
            service_token: service_token.trim().parse()?,
            scheduler: Mutex::new(None),
            assets: Mutex::new(None),
        })
    }

    /// What every call to an internal service carries.
    pub fn service_token(&self) -> &AsciiMetadataValue {
        &self.service_token
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
        let credentials = kiln_asset_client::CallCredentials::service(
            self.service_token.to_str().unwrap_or_default(),
        )
        .map_err(|err| Status::internal(err.to_string()))?;
        Ok(kiln_asset_client::AssetClient::with_credentials(
            channel,
            credentials,
        ))
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

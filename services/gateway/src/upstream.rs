//! The internal services the gateway calls, through the mesh: each a
//! balanced channel over every live replica listed in etcd (`kiln-mesh`).

use kiln_discovery::service;
use kiln_mesh::{Mesh, MeshChannel};
use kiln_proto::v1::asset_service_client::AssetServiceClient;
use kiln_proto::v1::farm_service_client::FarmServiceClient;
use kiln_proto::v1::job_service_client::JobServiceClient;
use kiln_proto::v1::webhook_service_client::WebhookServiceClient;
use tonic::Status;
use tonic::metadata::AsciiMetadataValue;
use tonic::metadata::errors::InvalidMetadataValue;

const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

pub struct Upstreams {
    /// The farm's service token: the internal services trust the user a
    /// call names only when it comes with this.
    service_token: AsciiMetadataValue,
    scheduler: MeshChannel,
    assets: MeshChannel,
}

impl Upstreams {
    /// Channels to the scheduler (the leader: standbys do not list
    /// themselves) and to every assets replica, called with the farm's
    /// `service_token`.
    pub fn new(mesh: &Mesh, service_token: &str) -> Result<Self, InvalidMetadataValue> {
        Ok(Self {
            service_token: service_token.trim().parse()?,
            scheduler: mesh.channel(service::SCHEDULER),
            assets: mesh.channel(service::ASSETS),
        })
    }

    /// What every call to an internal service carries.
    pub fn service_token(&self) -> &AsciiMetadataValue {
        &self.service_token
    }

    pub async fn jobs(&self) -> Result<JobServiceClient<MeshChannel>, Status> {
        Ok(JobServiceClient::new(self.scheduler.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Webhooks live in the scheduler (the leader).
    pub async fn webhooks(&self) -> Result<WebhookServiceClient<MeshChannel>, Status> {
        Ok(WebhookServiceClient::new(self.scheduler.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub async fn farm(&self) -> Result<FarmServiceClient<MeshChannel>, Status> {
        Ok(FarmServiceClient::new(self.scheduler.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub async fn assets(&self) -> Result<AssetServiceClient<MeshChannel>, Status> {
        Ok(AssetServiceClient::new(self.assets.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub async fn asset_client(&self) -> Result<kiln_asset_client::AssetClient, Status> {
        let credentials = kiln_asset_client::CallCredentials::service(
            self.service_token.to_str().unwrap_or_default(),
        )
        .map_err(|err| Status::internal(err.to_string()))?;
        Ok(kiln_asset_client::AssetClient::with_credentials(
            self.assets.clone(),
            credentials,
        ))
    }
}

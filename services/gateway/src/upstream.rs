//! The internal services the gateway calls, through the mesh: each a
//! balanced channel over every live replica listed in etcd (`kiln-mesh`).

use kiln_discovery::service;
use kiln_mesh::{Mesh, MeshChannel};
use kiln_proto::v1::asset_service_client::AssetServiceClient;
use kiln_proto::v1::job_service_client::JobServiceClient;
use tonic::Status;

const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

pub struct Upstreams {
    scheduler: MeshChannel,
    assets: MeshChannel,
}

impl Upstreams {
    /// Channels to the scheduler (the leader: standbys do not list
    /// themselves) and to every assets replica.
    pub fn new(mesh: &Mesh) -> Self {
        Self {
            scheduler: mesh.channel(service::SCHEDULER),
            assets: mesh.channel(service::ASSETS),
        }
    }

    pub async fn jobs(&self) -> Result<JobServiceClient<MeshChannel>, Status> {
        Ok(JobServiceClient::new(self.scheduler.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub async fn assets(&self) -> Result<AssetServiceClient<MeshChannel>, Status> {
        Ok(AssetServiceClient::new(self.assets.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub async fn asset_client(&self) -> Result<kiln_asset_client::AssetClient, Status> {
        Ok(kiln_asset_client::AssetClient::new(self.assets.clone()))
    }
}

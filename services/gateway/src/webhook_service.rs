//! `kiln.v1.WebhookService` at the gateway: authorized like every call
//! (`PublicApi::pass`) and forwarded to the scheduler, which keeps webhooks
//! and shows each user only their own. Registering, deleting and resuming
//! need the submitter role; a farm-wide webhook needs an admin.

use kiln_mesh::MeshChannel;
use kiln_proto::v1 as pb;
use kiln_proto::v1::webhook_service_client::WebhookServiceClient;
use tonic::{Request, Response, Status};

use crate::auth::{self, Role};
use crate::grpc::{PublicApi, refuse_nul};

type Webhooks = WebhookServiceClient<MeshChannel>;

#[tonic::async_trait]
impl pb::webhook_service_server::WebhookService for PublicApi {
    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::CreateWebhookResponse>, Status> {
        let message = request.get_ref();
        refuse_nul("url", &message.url)?;
        if message.farm_wide && !auth::principal(&request)?.is_admin() {
            return Err(Status::permission_denied(
                "farm_wide: only admins may register farm-wide webhooks",
            ));
        }
        self.pass(
            request,
            Role::Submitter,
            |mut hooks: Webhooks, r| async move { hooks.create_webhook(r).await },
        )
        .await
    }

    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        self.pass(request, Role::Viewer, |mut hooks: Webhooks, r| async move {
            hooks.list_webhooks(r).await
        })
        .await
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        self.pass(
            request,
            Role::Submitter,
            |mut hooks: Webhooks, r| async move { hooks.delete_webhook(r).await },
        )
        .await
    }

    async fn resume_webhook(
        &self,
        request: Request<pb::ResumeWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        self.pass(
            request,
            Role::Submitter,
            |mut hooks: Webhooks, r| async move { hooks.resume_webhook(r).await },
        )
        .await
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        self.pass(request, Role::Viewer, |mut hooks: Webhooks, r| async move {
            hooks.list_deliveries(r).await
        })
        .await
    }
}

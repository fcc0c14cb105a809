//! The public gRPC API: each call is passed to the internal service that owns it.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kiln_proto::v1 as pb;
use tonic::{Request, Response, Status, Streaming};

use crate::upstream::Upstreams;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone)]
pub struct PublicApi {
    upstreams: Arc<Upstreams>,
}

impl PublicApi {
    pub fn new(upstreams: Arc<Upstreams>) -> Self {
        Self { upstreams }
    }

    /// Runs `call`, dropping cached upstream channels if the upstream was unreachable.
    fn observe<T>(&self, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &result {
            self.upstreams.note_failure(status);
        }
        result
    }
}

/// Carries the caller's trace context on to the upstream.
fn forward<T>(request: Request<T>) -> Request<T> {
    let mut outgoing = Request::new(request.into_inner());
    if let Ok(with_context) = kiln_telemetry::propagation::inject_context(Request::new(())) {
        *outgoing.metadata_mut() = with_context.metadata().clone();
    }
    outgoing
}

#[tonic::async_trait]
impl pb::job_service_server::JobService for PublicApi {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let result = self
            .upstreams
            .jobs()
            .await?
            .submit_job(forward(request))
            .await;
        self.observe(result)
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let result = self.upstreams.jobs().await?.get_job(forward(request)).await;
        self.observe(result)
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let result = self
            .upstreams
            .jobs()
            .await?
            .list_jobs(forward(request))
            .await;
        self.observe(result)
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let result = self
            .upstreams
            .jobs()
            .await?
            .cancel_job(forward(request))
            .await;
        self.observe(result)
    }

    type WatchJobStream = BoxStream<pb::JobEvent>;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let result = self
            .upstreams
            .jobs()
            .await?
            .watch_job(forward(request))
            .await;
        let events = self.observe(result)?.into_inner();
        Ok(Response::new(Box::pin(events)))
    }

    async fn list_outputs(
        &self,
        request: Request<pb::ListOutputsRequest>,
    ) -> Result<Response<pb::ListOutputsResponse>, Status> {
        let result = self
            .upstreams
            .jobs()
            .await?
            .list_outputs(forward(request))
            .await;
        self.observe(result)
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let result = self
            .upstreams
            .jobs()
            .await?
            .list_tasks(forward(request))
            .await;
        self.observe(result)
    }

    async fn pause_job(
        &self,
        request: Request<pb::PauseJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let result = self
            .upstreams
            .jobs()
            .await?
            .pause_job(forward(request))
            .await;
        self.observe(result)
    }
    async fn resume_job(
        &self,
        request: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let result = self
            .upstreams
            .jobs()
            .await?
            .resume_job(forward(request))
            .await;
        self.observe(result)
    }
    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let result = self
            .upstreams
            .jobs()
            .await?
            .retry_job(forward(request))
            .await;
        self.observe(result)
    }
    async fn set_job_priority(
        &self,
        request: Request<pb::SetJobPriorityRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let result = self
            .upstreams
            .jobs()
            .await?
            .set_job_priority(forward(request))
            .await;
        self.observe(result)
    }
    async fn clear_blocklist(
        &self,
        request: Request<pb::ClearBlocklistRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let result = self
            .upstreams
            .jobs()
            .await?
            .clear_blocklist(forward(request))
            .await;
        self.observe(result)
    }
}

#[tonic::async_trait]
impl pb::asset_service_server::AssetService for PublicApi {
    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::AssetInfo>, Status> {
        // Chunks pass straight through: the gateway never holds a whole file.
        let chunks = request
            .into_inner()
            .take_while(|chunk| futures::future::ready(chunk.is_ok()))
            .filter_map(|chunk| futures::future::ready(chunk.ok()));
        let result = self
            .upstreams
            .assets()
            .await?
            .upload(forward(Request::new(chunks)))
            .await;
        self.observe(result)
    }

    type DownloadStream = BoxStream<pb::DownloadChunk>;

    async fn download(
        &self,
        request: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let result = self
            .upstreams
            .assets()
            .await?
            .download(forward(request))
            .await;
        let chunks = self.observe(result)?.into_inner();
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn stat(
        &self,
        request: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        let result = self.upstreams.assets().await?.stat(forward(request)).await;
        self.observe(result)
    }
}

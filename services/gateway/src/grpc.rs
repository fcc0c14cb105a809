//! The public gRPC API: each call is checked against its caller (role, and
//! for non-admins the job's owner) and passed to the internal service that
//! owns it, with the caller's name as `kiln-owner` metadata.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kiln_proto::v1 as pb;
use kiln_proto::v1::asset_service_client::AssetServiceClient;
use kiln_service::cancel::BodyFailed;
use moka::sync::Cache;
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{self, Principal, Role};
use crate::upstream::Upstreams;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Metadata the scheduler and the assets service read the caller's name
/// from (they trust the gateway).
pub const OWNER_METADATA: &str = kiln_asset_client::OWNER_METADATA;
/// Metadata with the caller's role: admins see every tenant's files.
pub const ROLE_METADATA: &str = kiln_asset_client::ROLE_METADATA;
/// Job owners remembered, so checking a caller's access rarely costs a call;
/// a job's owner never changes, so entries never go stale.
const OWNER_CACHE_CAPACITY: u64 = 100_000;

#[derive(Clone)]
pub struct PublicApi {
    upstreams: Arc<Upstreams>,
    owners: Cache<String, String>,
}

impl PublicApi {
    pub fn new(upstreams: Arc<Upstreams>) -> Self {
        Self {
            upstreams,
            owners: Cache::new(OWNER_CACHE_CAPACITY),
        }
    }

    /// Drops cached upstream channels if the upstream was unreachable.
    fn observe<T>(&self, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &result {
            self.upstreams.note_failure(status);
        }
        result
    }

    /// Checks the caller's role; returns the assets service and the request
    /// ready to forward to it on the caller's behalf.
    async fn to_assets<T>(
        &self,
        request: Request<T>,
        role: Role,
    ) -> Result<(AssetServiceClient<Channel>, Request<T>), Status> {
        let caller = auth::principal(&request)?;
        caller.require(role)?;
        let assets = self.upstreams.assets().await?;
        Ok((assets, forward(&caller, request.into_inner())?))
    }

    /// Fails unless `caller` has `role` and may reach job `job_id`.
    async fn authorize_job(
        &self,
        caller: &Principal,
        job_id: &str,
        role: Role,
    ) -> Result<(), Status> {
        caller.require(role)?;
        if caller.is_admin() {
            return Ok(());
        }
        let owner = match self.owners.get(job_id) {
            Some(owner) => owner,
            None => self.fetch_job(caller, job_id).await?.owner,
        };
        caller.may_access(&owner, job_id)
    }

    async fn fetch_job(&self, caller: &Principal, job_id: &str) -> Result<pb::Job, Status> {
        let request = pb::GetJobRequest {
            job_id: job_id.to_owned(),
        };
        let result = self
            .upstreams
            .jobs()
            .await?
            .get_job(forward(caller, request)?)
            .await;
        let job = self.observe(result)?.into_inner();
        self.owners.insert(job.id.clone(), job.owner.clone());
        Ok(job)
    }
}

/// An upstream request for `message` carrying the caller's trace context,
/// name and role; nothing the client sent as metadata is passed on.
fn forward<T>(caller: &Principal, message: T) -> Result<Request<T>, Status> {
    let mut outgoing = Request::new(message);
    if let Ok(with_context) = kiln_telemetry::propagation::inject_context(Request::new(())) {
        *outgoing.metadata_mut() = with_context.metadata().clone();
    }
    let owner = MetadataValue::try_from(caller.name.as_str())
        .map_err(|_| Status::internal("token name is not valid metadata"))?;
    outgoing.metadata_mut().insert(OWNER_METADATA, owner);
    outgoing.metadata_mut().insert(
        ROLE_METADATA,
        MetadataValue::from_static(caller.role.as_str()),
    );
    Ok(outgoing)
}

/// A client's upload chunks, ending in an error instead of cleanly if the
/// client cut the upload off: tonic reports a client's RST_STREAM(CANCEL)
/// as a clean end of the stream, which would tell the assets service the
/// file is complete and get it stored truncated. `cut_off` says whether the
/// request body failed.
fn upload_pass_through(
    chunks: Streaming<pb::UploadChunk>,
    cut_off: BodyFailed,
) -> impl Stream<Item = Result<pb::UploadChunk, Status>> + Send + 'static {
    let end = futures::stream::once(async move {
        cut_off
            .get()
            .then(|| Err(Status::cancelled("upload cancelled by the client")))
    })
    .filter_map(futures::future::ready);
    chunks.chain(end)
}

/// Postgres text cannot hold NUL, and no name or path needs one: refused
/// here with the field's name rather than failing deep in the scheduler.
fn refuse_nul(field: &str, value: &str) -> Result<(), Status> {
    if value.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "{field}: contains a NUL byte"
        )));
    }
    Ok(())
}

fn check_submission(message: &pb::SubmitJobRequest) -> Result<(), Status> {
    refuse_nul("name", &message.name)?;
    if let Some(template) = &message.template {
        let (field, text) = match template {
            pb::submit_job_request::Template::BuiltinTemplate(name) => ("builtin_template", name),
            pb::submit_job_request::Template::TemplateDocument(doc) => ("template_document", doc),
        };
        refuse_nul(field, text)?;
    }
    for (key, value) in &message.parameters {
        refuse_nul("parameters", key)?;
        refuse_nul(&format!("parameters.{key}"), value)?;
    }
    for (index, input) in message.inputs.iter().enumerate() {
        refuse_nul(&format!("inputs[{index}].path"), &input.path)?;
        refuse_nul(&format!("inputs[{index}].digest"), &input.digest)?;
    }
    Ok(())
}

/// Generates a job-scoped unary call: authorise, forward, observe.
macro_rules! job_call {
    ($method:ident, $request:ty, $response:ty, $role:expr) => {
        async fn $method(&self, request: Request<$request>) -> Result<Response<$response>, Status> {
            let caller = auth::principal(&request)?;
            let message = request.into_inner();
            self.0
                .authorize_job(&caller, &message.job_id, $role)
                .await?;
            let result = self
                .0
                .upstreams
                .jobs()
                .await?
                .$method(forward(&caller, message)?)
                .await;
            self.0.observe(result)
        }
    };
}

/// Job-scoped unary calls, as inherent methods: `async_trait` cannot see
/// into macro invocations, so the trait methods below delegate to these.
struct JobCalls<'a>(&'a PublicApi);

impl JobCalls<'_> {
    job_call!(cancel_job, pb::CancelJobRequest, pb::Job, Role::Submitter);
    job_call!(
        list_outputs,
        pb::ListOutputsRequest,
        pb::ListOutputsResponse,
        Role::Viewer
    );
    job_call!(
        list_tasks,
        pb::ListTasksRequest,
        pb::ListTasksResponse,
        Role::Viewer
    );
    job_call!(pause_job, pb::PauseJobRequest, pb::Job, Role::Submitter);
    job_call!(resume_job, pb::ResumeJobRequest, pb::Job, Role::Submitter);
    job_call!(retry_job, pb::RetryJobRequest, pb::Job, Role::Submitter);
    job_call!(
        set_job_priority,
        pb::SetJobPriorityRequest,
        pb::Job,
        Role::Submitter
    );
    job_call!(
        clear_blocklist,
        pb::ClearBlocklistRequest,
        pb::Job,
        Role::Submitter
    );
    job_call!(
        get_task_log,
        pb::GetTaskLogRequest,
        pb::TaskLog,
        Role::Viewer
    );
}

/// A trait method delegating to [`JobCalls`]; expands to a plain `async fn`
/// that `async_trait` rewrites.
macro_rules! delegate {
    ($method:ident, $request:ty, $response:ty) => {
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            request: Request<$request>,
        ) -> Pin<
            Box<
                dyn std::future::Future<Output = Result<Response<$response>, Status>>
                    + Send
                    + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { JobCalls(self).$method(request).await })
        }
    };
}

#[tonic::async_trait]
impl pb::job_service_server::JobService for PublicApi {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = auth::principal(&request)?;
        caller.require(Role::Submitter)?;
        let message = request.into_inner();
        check_submission(&message)?;
        for dependency in &message.depends_on_jobs {
            self.authorize_job(&caller, dependency, Role::Submitter)
                .await
                .map_err(|status| {
                    Status::new(
                        status.code(),
                        format!("depends_on_jobs: {}", status.message()),
                    )
                })?;
        }
        let result = self
            .upstreams
            .jobs()
            .await?
            .submit_job(forward(&caller, message)?)
            .await;
        let job = self.observe(result)?;
        self.owners
            .insert(job.get_ref().id.clone(), job.get_ref().owner.clone());
        Ok(job)
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = auth::principal(&request)?;
        caller.require(Role::Viewer)?;
        let job = self.fetch_job(&caller, &request.get_ref().job_id).await?;
        caller.may_access(&job.owner, &job.id)?;
        Ok(Response::new(job))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = auth::principal(&request)?;
        caller.require(Role::Viewer)?;
        let mut message = request.into_inner();
        refuse_nul("owner", &message.owner)?;
        if !caller.is_admin() {
            if message.owner.is_empty() {
                message.owner = caller.name.clone();
            } else if message.owner != caller.name {
                return Err(Status::permission_denied(
                    "owner: only admins may list other users' jobs",
                ));
            }
        }
        let result = self
            .upstreams
            .jobs()
            .await?
            .list_jobs(forward(&caller, message)?)
            .await;
        self.observe(result)
    }

    delegate!(cancel_job, pb::CancelJobRequest, pb::Job);
    delegate!(
        list_outputs,
        pb::ListOutputsRequest,
        pb::ListOutputsResponse
    );
    delegate!(list_tasks, pb::ListTasksRequest, pb::ListTasksResponse);
    delegate!(get_task_log, pb::GetTaskLogRequest, pb::TaskLog);
    delegate!(pause_job, pb::PauseJobRequest, pb::Job);
    delegate!(resume_job, pb::ResumeJobRequest, pb::Job);
    delegate!(retry_job, pb::RetryJobRequest, pb::Job);
    delegate!(set_job_priority, pb::SetJobPriorityRequest, pb::Job);
    fn clear_blocklist<'life0, 'async_trait>(
        &'life0 self,
        request: Request<pb::ClearBlocklistRequest>,
    ) -> Pin<
        Box<
            dyn std::future::Future<Output = Result<Response<pb::Job>, Status>>
                + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            refuse_nul("worker_id", &request.get_ref().worker_id)?;
            JobCalls(self).clear_blocklist(request).await
        })
    }

    type WatchJobStream = BoxStream<pb::JobEvent>;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = auth::principal(&request)?;
        let message = request.into_inner();
        self.authorize_job(&caller, &message.job_id, Role::Viewer)
            .await?;
        let result = self
            .upstreams
            .jobs()
            .await?
            .watch_job(forward(&caller, message)?)
            .await;
        let events = self.observe(result)?.into_inner();
        Ok(Response::new(Box::pin(events)))
    }

    type WatchFarmStream = BoxStream<pb::JobEvent>;

    /// Every job's events: admins only, as they show every owner's jobs.
    async fn watch_farm(
        &self,
        request: Request<pb::WatchFarmRequest>,
    ) -> Result<Response<Self::WatchFarmStream>, Status> {
        let caller = auth::principal(&request)?;
        caller.require(Role::Admin)?;
        let result = self
            .upstreams
            .jobs()
            .await?
            .watch_farm(forward(&caller, request.into_inner())?)
            .await;
        let events = self.observe(result)?.into_inner();
        Ok(Response::new(Box::pin(events)))
    }

    type WatchTaskLogStream = BoxStream<pb::TaskLogLines>;

    async fn watch_task_log(
        &self,
        request: Request<pb::WatchTaskLogRequest>,
    ) -> Result<Response<Self::WatchTaskLogStream>, Status> {
        let caller = auth::principal(&request)?;
        let message = request.into_inner();
        self.authorize_job(&caller, &message.job_id, Role::Viewer)
            .await?;
        let result = self
            .upstreams
            .jobs()
            .await?
            .watch_task_log(forward(&caller, message)?)
            .await;
        let lines = self.observe(result)?.into_inner();
        Ok(Response::new(Box::pin(lines)))
    }
}

/// Every asset call is forwarded as the caller: the assets service answers
/// as the caller sees the store (their own files; all of them for admins).
#[tonic::async_trait]
impl pb::asset_service_server::AssetService for PublicApi {
    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::AssetInfo>, Status> {
        let caller = auth::principal(&request)?;
        caller.require(Role::Submitter)?;
        let cut_off = request
            .extensions()
            .get::<BodyFailed>()
            .cloned()
            .unwrap_or_default();
        // Chunks pass straight through: the gateway never holds a whole file.
        let chunks = upload_pass_through(request.into_inner(), cut_off);
        let (failed_tx, failed_rx) = oneshot::channel();
        let chunks = kiln_asset_client::stall_on_error(chunks, failed_tx);
        let mut assets = self.upstreams.assets().await?;
        let upload = assets.upload(forward(&caller, chunks)?);
        // Biased so that a client's failure always wins: returning drops the
        // upstream call, which resets its stream, and the assets service
        // keeps what it received for the client to resume.
        tokio::select! {
            biased;
            Ok(status) = failed_rx => Err(status),
            result = upload => self.observe(result),
        }
    }

    type DownloadStream = BoxStream<pb::DownloadChunk>;

    async fn download(
        &self,
        request: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let (mut assets, request) = self.to_assets(request, Role::Viewer).await?;
        let result = assets.download(request).await;
        let chunks = self.observe(result)?.into_inner();
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn stat(
        &self,
        request: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        let (mut assets, request) = self.to_assets(request, Role::Viewer).await?;
        let result = assets.stat(request).await;
        self.observe(result)
    }

    async fn find_missing(
        &self,
        request: Request<pb::FindMissingRequest>,
    ) -> Result<Response<pb::FindMissingResponse>, Status> {
        let (mut assets, request) = self.to_assets(request, Role::Viewer).await?;
        let result = assets.find_missing(request).await;
        self.observe(result)
    }

    async fn upload_offset(
        &self,
        request: Request<pb::UploadOffsetRequest>,
    ) -> Result<Response<pb::UploadOffsetResponse>, Status> {
        let (mut assets, request) = self.to_assets(request, Role::Submitter).await?;
        let result = assets.upload_offset(request).await;
        self.observe(result)
    }

    async fn presign_download(
        &self,
        request: Request<pb::PresignDownloadRequest>,
    ) -> Result<Response<pb::PresignDownloadResponse>, Status> {
        let (mut assets, request) = self.to_assets(request, Role::Viewer).await?;
        let result = assets.presign_download(request).await;
        self.observe(result)
    }
}

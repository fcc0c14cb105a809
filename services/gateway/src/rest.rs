//! REST/JSON under `/v1`. Bodies are the gRPC messages in their proto3 JSON
//! form (the same generated types), so REST and gRPC cannot drift apart.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::TryStreamExt;
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_service_server::JobService;
use tonic::{Code, Request, Status};

use crate::grpc::PublicApi;
use crate::upstream::Upstreams;

#[derive(Clone)]
pub struct RestState {
    pub api: PublicApi,
    pub upstreams: Arc<Upstreams>,
    pub max_upload_bytes: usize,
}

pub fn router(state: RestState, max_json_bytes: usize, timeout: Duration) -> Router {
    let json_routes = Router::new()
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/status", get(job_status))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/tasks", get(list_tasks))
        .route("/v1/jobs/{id}/outputs", get(list_outputs))
        .layer(DefaultBodyLimit::max(max_json_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            timeout,
        ));
    let streaming_routes = Router::new()
        .route("/v1/jobs/{id}/outputs/{*path}", get(download_output))
        .route("/v1/assets", post(upload_asset))
        .route("/v1/assets/{digest}", get(download_asset))
        .layer(DefaultBodyLimit::max(state.max_upload_bytes));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(json_routes)
        .merge(streaming_routes)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(state)
}

/// A JSON error body: `{"error": {"code": "...", "message": "..."}}`.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        let (http, code) = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => {
                (StatusCode::BAD_REQUEST, "invalid_argument")
            }
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            Code::FailedPrecondition => (StatusCode::CONFLICT, "failed_precondition"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
            Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Code::DataLoss => (StatusCode::BAD_REQUEST, "data_loss"),
            _ => (StatusCode::BAD_GATEWAY, "upstream_error"),
        };
        Self::new(http, code, status.message())
    }
}

impl From<kiln_asset_client::AssetClientError> for ApiError {
    fn from(err: kiln_asset_client::AssetClientError) -> Self {
        Status::from(err).into()
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "invalid_json"
        };
        Self::new(status, code, rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn submit_job(
    State(state): State<RestState>,
    body: Result<Json<pb::SubmitJobRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(request) = body?;
    let job = state
        .api
        .submit_job(Request::new(request))
        .await?
        .into_inner();
    let location = format!("/v1/jobs/{}", job.id);
    let mut response = (StatusCode::ACCEPTED, Json(job)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

async fn list_jobs(State(state): State<RestState>) -> ApiResult<Json<pb::ListJobsResponse>> {
    Ok(Json(
        state
            .api
            .list_jobs(Request::new(pb::ListJobsRequest::default()))
            .await?
            .into_inner(),
    ))
}

async fn get_job(
    State(state): State<RestState>,
    Path(id): Path<String>,
) -> ApiResult<Json<pb::Job>> {
    Ok(Json(
        state
            .api
            .get_job(Request::new(pb::GetJobRequest { job_id: id }))
            .await?
            .into_inner(),
    ))
}

/// 202 with Retry-After while the job runs, 200 once it has finished.
async fn job_status(State(state): State<RestState>, Path(id): Path<String>) -> ApiResult<Response> {
    let job = state
        .api
        .get_job(Request::new(pb::GetJobRequest { job_id: id }))
        .await?
        .into_inner();
    let finished = matches!(
        pb::JobState::try_from(job.state),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    );
    if finished {
        return Ok((StatusCode::OK, Json(job)).into_response());
    }
    Ok((
        StatusCode::ACCEPTED,
        [(header::RETRY_AFTER, "2")],
        Json(job),
    )
        .into_response())
}

async fn cancel_job(
    State(state): State<RestState>,
    Path(id): Path<String>,
) -> ApiResult<Json<pb::Job>> {
    Ok(Json(
        state
            .api
            .cancel_job(Request::new(pb::CancelJobRequest { job_id: id }))
            .await?
            .into_inner(),
    ))
}

async fn list_tasks(
    State(state): State<RestState>,
    Path(id): Path<String>,
) -> ApiResult<Json<pb::ListTasksResponse>> {
    Ok(Json(
        state
            .api
            .list_tasks(Request::new(pb::ListTasksRequest { job_id: id }))
            .await?
            .into_inner(),
    ))
}

async fn list_outputs(
    State(state): State<RestState>,
    Path(id): Path<String>,
) -> ApiResult<Json<pb::ListOutputsResponse>> {
    Ok(Json(
        state
            .api
            .list_outputs(Request::new(pb::ListOutputsRequest { job_id: id }))
            .await?
            .into_inner(),
    ))
}

async fn download_output(
    State(state): State<RestState>,
    Path((id, path)): Path<(String, String)>,
) -> ApiResult<Response> {
    let outputs = state
        .api
        .list_outputs(Request::new(pb::ListOutputsRequest { job_id: id.clone() }))
        .await?;
    let Some(output) = outputs
        .into_inner()
        .outputs
        .into_iter()
        .find(|o| o.path == path)
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {id} has no output {path:?}"),
        ));
    };
    stream_asset(
        &state,
        &output.digest,
        Some(output.size),
        content_type(&path),
    )
    .await
}

async fn download_asset(
    State(state): State<RestState>,
    Path(digest): Path<String>,
) -> ApiResult<Response> {
    stream_asset(&state, &digest, None, "application/octet-stream").await
}

async fn stream_asset(
    state: &RestState,
    digest: &str,
    size: Option<u64>,
    mime: &'static str,
) -> ApiResult<Response> {
    let chunks = state
        .upstreams
        .asset_client()
        .await?
        .download_stream(digest)
        .await?;
    let body = Body::from_stream(chunks.map_err(std::io::Error::other));
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    if let Some(size) = size {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    Ok(response)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("exr") => "image/x-exr",
        Some("mp4") => "video/mp4",
        Some("txt" | "log") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Streams the request body to the asset service; answers with its digest and size.
async fn upload_asset(State(state): State<RestState>, body: Body) -> ApiResult<Response> {
    let chunks = body.into_data_stream().map_err(std::io::Error::other);
    let info = state
        .upstreams
        .asset_client()
        .await?
        .upload_stream(None, chunks)
        .await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

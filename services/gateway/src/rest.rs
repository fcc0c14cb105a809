//! REST/JSON under `/v1`. Bodies are the gRPC messages in their proto3 JSON
//! form (the same generated types, through pbjson), and every handler calls
//! the same [`PublicApi`] as gRPC does, so the two cannot drift apart: not in
//! shape, not in checks.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_service_server::JobService;
use kiln_proto::v1::token_service_server::TokenService;
use serde::Deserialize;
use tonic::{Code, Request, Status};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use crate::auth::{Principal, Role};
use crate::grpc::PublicApi;
use crate::openapi::Errors;
use crate::ranges::Answer;
use crate::rest_farm;
use crate::token_service::TokenApi;

#[derive(Clone)]
pub struct RestState {
    pub api: PublicApi,
    pub tokens: TokenApi,
    /// The dashboard's login: the token store and its sessions.
    pub dashboard: crate::dashboard::Dashboard,
}

/// The REST routes and their OpenAPI operations, registered together: each
/// handler's `#[utoipa::path]` gives both its route and its documentation,
/// so a new endpoint is added in one place. (`openapi.rs` builds the
/// document from this same table.)
///
/// Routes answering JSON, each quick: these get the request timeout and the
/// JSON body limit.
pub fn json_routes() -> OpenApiRouter<RestState> {
    OpenApiRouter::new()
        .routes(routes!(submit_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(job_status))
        .routes(routes!(cancel_job))
        .routes(routes!(pause_job))
        .routes(routes!(resume_job))
        .routes(routes!(retry_job))
        .routes(routes!(set_priority))
        // An alias kept for clients written before PUT was documented.
        .route("/v1/jobs/{id}/priority", axum::routing::post(set_priority))
        .routes(routes!(clear_blocklist))
        .routes(routes!(list_tasks))
        .routes(routes!(list_outputs))
        .routes(routes!(stat_asset))
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(
            crate::webhooks_rest::create_webhook,
            crate::webhooks_rest::list_webhooks
        ))
        .routes(routes!(crate::webhooks_rest::delete_webhook))
        .routes(routes!(crate::webhooks_rest::resume_webhook))
        .routes(routes!(crate::webhooks_rest::list_deliveries))
        .routes(routes!(rest_farm::list_workers))
        .routes(routes!(rest_farm::get_worker))
        .routes(routes!(rest_farm::disable_worker))
        .routes(routes!(rest_farm::enable_worker))
        .routes(routes!(rest_farm::drain_worker))
        .routes(routes!(rest_farm::set_worker_tags))
        .routes(routes!(rest_farm::explain_waiting))
        .routes(routes!(rest_farm::task_history))
        .routes(routes!(rest_farm::timeline))
        .routes(routes!(openapi))
}

/// Routes whose bodies stream (uploads, downloads, watches): no timeout, and
/// the upload size limit instead of the JSON one.
pub fn streaming_routes() -> OpenApiRouter<RestState> {
    OpenApiRouter::new()
        .routes(routes!(crate::sse::job_events))
        .routes(rest_of_path(routes!(download_output), "path"))
        .routes(routes!(upload_asset))
        .routes(routes!(download_asset))
        .routes(routes!(crate::sse::farm_events))
        .routes(routes!(crate::sse::task_log))
        .routes(routes!(crate::sse::task_log_live))
        .routes(routes!(crate::sse::contact_sheet))
}

/// Registers `routes` with its last parameter `param` taking the rest of
/// the path (axum's `{*param}`: an output's path has slashes). OpenAPI has
/// no such parameter, so the document keeps `{param}` (`openapi.rs`).
fn rest_of_path(
    routes: UtoipaMethodRouter<RestState>,
    param: &str,
) -> UtoipaMethodRouter<RestState> {
    let (schemas, mut paths, method_router) = routes;
    let (plain, rest) = (format!("{{{param}}}"), format!("{{*{param}}}"));
    paths.paths = std::mem::take(&mut paths.paths)
        .into_iter()
        .map(|(path, item)| (path.replace(&plain, &rest), item))
        .collect();
    (schemas, paths, method_router)
}

/// An error answer: an RFC 9457 problem document (`application/problem+json`)
/// with Kiln's stable `code` as an extension member, and, for clients
/// written before it, the same in the older `{"error": {"code", "message"}}`.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds to wait before asking again, sent as `Retry-After`.
    retry_after: Option<u32>,
    /// The fields a refused request got wrong (a gRPC status's BadRequest),
    /// sent as `invalid_params` like RFC 9457's example.
    invalid_params: Vec<kiln_proto::status::FieldViolation>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            invalid_params: Vec::new(),
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The HTTP status the error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
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
            Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "unimplemented"),
            Code::DataLoss => (StatusCode::BAD_REQUEST, "data_loss"),
            _ => (StatusCode::BAD_GATEWAY, "upstream_error"),
        };
        let retry_after = status
            .metadata()
            .get(kiln_proto::metadata::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        Self {
            retry_after,
            invalid_params: kiln_proto::status::field_violations(&status),
            ..Self::new(http, code, status.message())
        }
    }
}

impl From<kiln_asset_client::AssetClientError> for ApiError {
    fn from(err: kiln_asset_client::AssetClientError) -> Self {
        Status::from(err).into()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_json",
        };
        // 422 is axum's choice for well-formed JSON of the wrong shape; to a
        // client both are a bad request.
        let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        Self::new(status, code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    }
}

/// The media type of error bodies (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            // No page per problem: `code` tells them apart, and "about:blank"
            // says the title is the status's own.
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.message,
            "code": self.code,
            "error": {"code": self.code, "message": self.message},
        });
        if !self.invalid_params.is_empty() {
            let params: Vec<_> = self
                .invalid_params
                .iter()
                .map(|v| serde_json::json!({"name": v.field, "reason": v.description}))
                .collect();
            body["invalid_params"] = serde_json::Value::Array(params);
        }
        let mut response = (self.status, Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;
pub(crate) type JsonBody<T> = Result<Json<T>, JsonRejection>;

/// A gRPC request for `message` made by `caller`.
pub(crate) fn call<T>(caller: &Principal, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(caller.clone());
    request
}

/// The header that makes `POST /v1/jobs` idempotent (the IETF draft's name).
const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn job_response(status: StatusCode, job: pb::Job) -> Response {
    (status, Json(job)).into_response()
}

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", operation_id = "SubmitJob",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes the submission safe to retry: a repeat with the same key (and the same body) \
            within a day answers with the job the first one made; a reuse with another body is refused \
            with 409. 1-255 printable ASCII characters, e.g. a UUID; the body's `requestId` is the same.")),
    request_body(content = ref("#/components/schemas/SubmitJobRequest")),
    responses(
        (status = 202, description = "Accepted; the job runs in the background",
         body = ref("#/components/schemas/Job"),
         headers(("Location" = String, description = "The job's URL"))),
        Errors))]
pub(crate) async fn submit_job(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    headers: HeaderMap,
    body: JsonBody<pb::SubmitJobRequest>,
) -> ApiResult<Response> {
    let Json(mut request) = body?;
    if let Some(key) = headers.get(IDEMPOTENCY_KEY) {
        let key = key.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "Idempotency-Key: only printable ASCII characters are allowed",
            )
        })?;
        if !request.request_id.is_empty() && request.request_id != key {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "Idempotency-Key: differs from the body's requestId",
            ));
        }
        request.request_id = key.to_owned();
    }
    let job = state
        .api
        .submit_job(call(&caller, request))
        .await?
        .into_inner();
    let location = format!("/v1/jobs/{}", job.id);
    let mut response = job_response(StatusCode::ACCEPTED, job);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListJobsQuery {
    /// Jobs per page (AIP-158); 0 or absent means `limit`, or 100. Capped at 1000.
    #[serde(rename = "pageSize", alias = "page_size")]
    page_size: Option<u32>,
    /// A previous page's `nextPageToken`, with the same filters.
    #[serde(rename = "pageToken", alias = "page_token")]
    page_token: Option<String>,
    /// Same as `pageSize` (kept for older clients).
    limit: Option<u32>,
    /// Only jobs of this owner (non-admins: only their own name).
    owner: Option<String>,
    /// Only jobs in these states, comma-separated: pending, running, paused,
    /// succeeded, failed, cancelled.
    state: Option<String>,
    /// Only jobs whose name contains this (case-insensitive).
    name: Option<String>,
    /// Only jobs submitted at or after this time (RFC 3339).
    #[serde(rename = "submittedAfter", alias = "submitted_after")]
    submitted_after: Option<String>,
    /// Only jobs submitted before this time (RFC 3339).
    #[serde(rename = "submittedBefore", alias = "submitted_before")]
    submitted_before: Option<String>,
}

/// `pending,running` as job states, or a 400 naming the unknown one.
fn job_states(text: &str) -> ApiResult<Vec<i32>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            pb::JobState::from_str_name(&format!("JOB_STATE_{}", name.to_ascii_uppercase()))
                .filter(|s| *s != pb::JobState::Unspecified)
                .map(|s| s as i32)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_argument",
                        format!(
                            "state: {name:?} is not one of pending, running, paused, succeeded, failed, cancelled"
                        ),
                    )
                })
        })
        .collect()
}

/// A page of a list (AIP-158).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// At most this many items (0 or absent: the list's default, which is also its most).
    #[serde(alias = "page_size")]
    pub(crate) page_size: Option<u32>,
    /// The `nextPageToken` of the previous page; absent for the first.
    #[serde(alias = "page_token")]
    pub(crate) page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", operation_id = "ListJobs",
    params(ListJobsQuery),
    responses(
        (status = 200, description = "A page of jobs, newest first", body = ref("#/components/schemas/ListJobsResponse")),
        Errors))]
pub(crate) async fn list_jobs(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    query: Result<Query<ListJobsQuery>, QueryRejection>,
) -> ApiResult<Json<pb::ListJobsResponse>> {
    let Query(query) = query?;
    let request = pb::ListJobsRequest {
        limit: query.limit.unwrap_or(0),
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
        owner: query.owner.unwrap_or_default(),
        states: job_states(query.state.as_deref().unwrap_or(""))?,
        name_contains: query.name.unwrap_or_default(),
        submitted_after: query
            .submitted_after
            .as_deref()
            .map(|t| rest_farm::rfc3339("submittedAfter", t))
            .transpose()?,
        submitted_before: query
            .submitted_before
            .as_deref()
            .map(|t| rest_farm::rfc3339("submittedBefore", t))
            .transpose()?,
    };
    Ok(Json(
        state
            .api
            .list_jobs(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "GetJob",
    params(("id" = String, Path, description = "The job's UUID")),
    responses(
        (status = 200, description = "The job", body = ref("#/components/schemas/Job")),
        Errors))]
pub(crate) async fn get_job(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<pb::Job>> {
    let request = pb::GetJobRequest { job_id: id };
    Ok(Json(
        state
            .api
            .get_job(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

/// Seconds a client polling a running job's status should wait.
const STATUS_RETRY_AFTER: &str = "2";

#[utoipa::path(get, path = "/v1/jobs/{id}/status", tag = "jobs", operation_id = "GetJobStatus",
    params(("id" = String, Path, description = "The job's UUID")),
    responses(
        (status = 200, description = "The job has finished", body = ref("#/components/schemas/Job")),
        (status = 202, description = "The job is still pending, running or paused",
         body = ref("#/components/schemas/Job"),
         headers(("Retry-After" = String, description = "Seconds to wait before asking again"))),
        Errors))]
pub(crate) async fn job_status(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let request = pb::GetJobRequest { job_id: id };
    let job = state
        .api
        .get_job(call(&caller, request))
        .await?
        .into_inner();
    let finished = matches!(
        pb::JobState::try_from(job.state),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    );
    if finished {
        return Ok(job_response(StatusCode::OK, job));
    }
    let mut response = job_response(StatusCode::ACCEPTED, job);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(STATUS_RETRY_AFTER),
    );
    Ok(response)
}

/// A `POST /v1/jobs/{id}/<action>` handler calling `method` with `request`.
macro_rules! job_action {
    ($handler:ident, $method:ident, $request:ident, $path:literal, $op:literal, $what:literal) => {
        #[utoipa::path(post, path = $path, tag = "jobs", operation_id = $op,
                    params(("id" = String, Path, description = "The job's UUID")),
                    responses(
                        (status = 200, description = $what, body = ref("#/components/schemas/Job")),
                        Errors))]
        pub(crate) async fn $handler(
            State(state): State<RestState>,
            Extension(caller): Extension<Principal>,
            Path(id): Path<String>,
        ) -> ApiResult<Json<pb::Job>> {
            let request = pb::$request { job_id: id };
            Ok(Json(
                state
                    .api
                    .$method(call(&caller, request))
                    .await?
                    .into_inner(),
            ))
        }
    };
}

job_action!(
    cancel_job,
    cancel_job,
    CancelJobRequest,
    "/v1/jobs/{id}/cancel",
    "CancelJob",
    "Cancelled: pending tasks never start, running ones are killed"
);
job_action!(
    pause_job,
    pause_job,
    PauseJobRequest,
    "/v1/jobs/{id}/pause",
    "PauseJob",
    "Paused: no new task starts"
);
job_action!(
    resume_job,
    resume_job,
    ResumeJobRequest,
    "/v1/jobs/{id}/resume",
    "ResumeJob",
    "Resumed"
);
job_action!(
    retry_job,
    retry_job,
    RetryJobRequest,
    "/v1/jobs/{id}/retry",
    "RetryJob",
    "Unfinished tasks are queued again"
);

#[utoipa::path(put, path = "/v1/jobs/{id}/priority", tag = "jobs", operation_id = "SetJobPriority",
    params(("id" = String, Path, description = "The job's UUID")),
    request_body(content = ref("#/components/schemas/SetJobPriorityRequest"),
        description = "`jobId` may be left out; if given it must match the path"),
    responses(
        (status = 200, description = "The job with its new priority", body = ref("#/components/schemas/Job")),
        Errors))]
pub(crate) async fn set_priority(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    body: JsonBody<pb::SetJobPriorityRequest>,
) -> ApiResult<Json<pb::Job>> {
    let Json(mut request) = body?;
    if !request.job_id.is_empty() && request.job_id != id {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "jobId: differs from the job in the path",
        ));
    }
    request.job_id = id;
    Ok(Json(
        state
            .api
            .set_job_priority(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct BlocklistQuery {
    /// The worker to clear; absent clears every worker blocklisted for the job.
    #[serde(alias = "worker_id")]
    worker_id: Option<String>,
}

#[utoipa::path(delete, path = "/v1/jobs/{id}/blocklist", tag = "jobs", operation_id = "ClearBlocklist",
    params(("id" = String, Path, description = "The job's UUID"), BlocklistQuery),
    responses(
        (status = 200, description = "The job with its blocklist cleared", body = ref("#/components/schemas/Job")),
        Errors))]
pub(crate) async fn clear_blocklist(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    query: Result<Query<BlocklistQuery>, QueryRejection>,
) -> ApiResult<Json<pb::Job>> {
    let Query(query) = query?;
    let request = pb::ClearBlocklistRequest {
        job_id: id,
        worker_id: query.worker_id.unwrap_or_default(),
    };
    Ok(Json(
        state
            .api
            .clear_blocklist(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/tasks", tag = "jobs", operation_id = "ListTasks",
    params(("id" = String, Path, description = "The job's UUID"), PageQuery),
    responses(
        (status = 200, description = "The job's tasks with their logs' tails", body = ref("#/components/schemas/ListTasksResponse")),
        Errors))]
pub(crate) async fn list_tasks(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Json<pb::ListTasksResponse>> {
    let Query(page) = query?;
    let request = pb::ListTasksRequest {
        job_id: id,
        page_size: page.page_size.unwrap_or(0),
        page_token: page.page_token.unwrap_or_default(),
    };
    Ok(Json(
        state
            .api
            .list_tasks(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/outputs", tag = "jobs", operation_id = "ListOutputs",
    params(("id" = String, Path, description = "The job's UUID"), PageQuery),
    responses(
        (status = 200, description = "Files the job has produced so far", body = ref("#/components/schemas/ListOutputsResponse")),
        Errors))]
pub(crate) async fn list_outputs(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Json<pb::ListOutputsResponse>> {
    let Query(page) = query?;
    let request = pb::ListOutputsRequest {
        job_id: id,
        page_size: page.page_size.unwrap_or(0),
        page_token: page.page_token.unwrap_or_default(),
        ..Default::default()
    };
    Ok(Json(
        state
            .api
            .list_outputs(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

/// `GET /v1/jobs/{id}/events` as newline-delimited JSON (`sse::job_events`
/// serves SSE on the same route).
pub(crate) async fn watch_job(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let request = pb::WatchJobRequest {
        job_id: id,
        after_seq: None,
    };
    let events = state
        .api
        .watch_job(call(&caller, request))
        .await?
        .into_inner();
    let lines = events.map(|event| {
        let event = event.map_err(std::io::Error::other)?;
        let mut line = serde_json::to_vec(&event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        Ok::<_, std::io::Error>(line)
    });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

#[utoipa::path(get, path = "/v1/jobs/{id}/outputs/{path}", tag = "jobs", operation_id = "DownloadOutput",
    params(("id" = String, Path, description = "The job's UUID"),
           ("path" = String, Path, description = "The output's path, e.g. frames/frame_0001.png"),
           DownloadHeaders),
    responses(
        (status = 200, description = "The file's bytes (its content type follows its name)",
         content_type = "application/octet-stream", body = Vec<u8>, headers(
            ("ETag" = String, description = "The file's SHA-256 in quotes"),
            ("Accept-Ranges" = String, description = "bytes"))),
        (status = 206, description = "The requested byte range", content_type = "application/octet-stream", body = Vec<u8>,
         headers(("Content-Range" = String, description = "bytes START-END/SIZE"))),
        (status = 304, description = "If-None-Match names the file's ETag: the client's copy is current"),
        (status = 416, description = "The Range lies outside the file", content_type = "application/problem+json",
         body = ref("#/components/schemas/Error")),
        Errors))]
pub(crate) async fn download_output(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path((id, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let request = pb::ListOutputsRequest {
        job_id: id.clone(),
        path: path.clone(),
        ..Default::default()
    };
    let outputs = state.api.list_outputs(call(&caller, request)).await?;
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
    let file = Download {
        digest: &output.digest,
        size: Some(output.size),
        mime: content_type(&path),
        cache: NO_CACHE,
    };
    serve_file(&state, &caller, file, &headers).await
}

#[utoipa::path(get, path = "/v1/assets/{digest}", tag = "assets", operation_id = "Download",
    params(("digest" = String, Path, description = "SHA-256 of the content, 64 lowercase hex characters"),
           DownloadHeaders),
    responses(
        (status = 200, description = "The file's bytes; cacheable for good (immutable)",
         content_type = "application/octet-stream", body = Vec<u8>, headers(
            ("ETag" = String, description = "The digest in quotes"),
            ("Accept-Ranges" = String, description = "bytes"))),
        (status = 206, description = "The requested byte range", content_type = "application/octet-stream", body = Vec<u8>,
         headers(("Content-Range" = String, description = "bytes START-END/SIZE"))),
        (status = 304, description = "If-None-Match names the digest: the client's copy is current"),
        (status = 416, description = "The Range lies outside the file", content_type = "application/problem+json",
         body = ref("#/components/schemas/Error")),
        Errors))]
pub(crate) async fn download_asset(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let file = Download {
        digest: &digest,
        size: None,
        mime: "application/octet-stream",
        cache: IMMUTABLE,
    };
    serve_file(&state, &caller, file, &headers).await
}

#[utoipa::path(get, path = "/v1/assets/{digest}/stat", tag = "assets", operation_id = "Stat",
    params(("digest" = String, Path, description = "SHA-256 of the content, 64 lowercase hex characters")),
    responses(
        (status = 200, description = "Whether the file is stored, and its size", body = ref("#/components/schemas/StatResponse")),
        Errors))]
pub(crate) async fn stat_asset(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(digest): Path<String>,
) -> ApiResult<Json<pb::StatResponse>> {
    use kiln_proto::v1::asset_service_server::AssetService;
    let request = pb::StatRequest { digest };
    Ok(Json(
        state.api.stat(call(&caller, request)).await?.into_inner(),
    ))
}

/// Streams a stored file to `caller`, through the same authorization step
/// as a gRPC download.
pub(crate) async fn stream_asset(
    state: &RestState,
    caller: &Principal,
    digest: &str,
    size: Option<u64>,
    mime: &'static str,
) -> ApiResult<Response> {
    let file = Download {
        digest,
        size,
        mime,
        cache: NO_CACHE,
    };
    serve_file(state, caller, file, &HeaderMap::new()).await
}

/// The request headers downloads honour (documentation only: `serve_file`
/// reads them from the request).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct DownloadHeaders {
    /// One byte range, e.g. `bytes=1048576-` to resume; answered with 206
    /// (several ranges: the whole file).
    #[param(rename = "Range")]
    range: Option<String>,
    /// The ETag of the copy the client has; answered with 304 when current.
    #[param(rename = "If-None-Match")]
    if_none_match: Option<String>,
}

/// For URLs naming content by digest: a cache may keep it for good (but
/// privately: it is one tenant's).
const IMMUTABLE: &str = "private, max-age=31536000, immutable";
/// For URLs naming a file by path: revalidate (cheap: 304 by ETag).
const NO_CACHE: &str = "private, no-cache";

/// A stored file to answer with.
pub(crate) struct Download<'a> {
    digest: &'a str,
    /// Its size, when the caller knows it; else it is asked of the store.
    size: Option<u64>,
    mime: &'static str,
    cache: &'static str,
}

/// Answers a GET of a stored file: 304 for a current copy (`If-None-Match`
/// with the digest as ETag), 206 for a `Range`, 416 for a range outside it,
/// else all of it; each with `ETag`, `Accept-Ranges` and `Cache-Control`.
pub(crate) async fn serve_file(
    state: &RestState,
    caller: &Principal,
    file: Download<'_>,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let assets = state.api.asset_client(caller, Role::Viewer).await?;
    // Asked even for a 304, so a file the caller may not read is a 404 however asked.
    let size = match file.size {
        Some(size) => size,
        None => assets.stat(file.digest).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("asset {} is not stored", file.digest),
            )
        })?,
    };
    let etag = crate::ranges::etag(file.digest);
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let conditions = crate::ranges::Conditions {
        if_none_match: text(header::IF_NONE_MATCH),
        range: text(header::RANGE),
        if_range: text(header::IF_RANGE),
    };
    let (status, body, length, content_range) = match conditions.answer(&etag, size) {
        Answer::NotModified => (StatusCode::NOT_MODIFIED, Body::empty(), None, None),
        Answer::Unsatisfiable => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("Range: outside the file's {size} bytes"),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
        Answer::Full => {
            let chunks = assets.download_stream(file.digest).await?;
            let body = Body::from_stream(chunks.map_err(std::io::Error::other));
            (StatusCode::OK, body, Some(size), None)
        }
        Answer::Partial { start, end } => {
            let length = end - start + 1;
            let chunks = assets.download_range(file.digest, start, length).await?;
            let body = Body::from_stream(chunks.map_err(std::io::Error::other));
            let range = format!("bytes {start}-{end}/{size}");
            (StatusCode::PARTIAL_CONTENT, body, Some(length), Some(range))
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if status != StatusCode::NOT_MODIFIED {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(file.mime));
    }
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    if let Some(range) = content_range.and_then(|r| HeaderValue::from_str(&r).ok()) {
        headers.insert(header::CONTENT_RANGE, range);
    }
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(file.cache));
    Ok(response)
}

pub(crate) fn content_type(path: &str) -> &'static str {
    let extension = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match extension.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("exr") => "image/x-exr",
        Some("tif" | "tiff") => "image/tiff",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("mp4") => "video/mp4",
        Some("mov") => "video/quicktime",
        Some("webm") => "video/webm",
        Some("mkv") => "video/x-matroska",
        Some("wav") => "audio/wav",
        Some("json") => "application/json",
        Some("txt" | "log") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[utoipa::path(post, path = "/v1/assets", tag = "assets", operation_id = "Upload",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The file's bytes, streamed"),
    responses(
        (status = 201, description = "Stored; its digest and size", body = ref("#/components/schemas/AssetInfo")),
        Errors))]
pub(crate) async fn upload_asset(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    body: Body,
) -> ApiResult<Response> {
    let assets = state.api.asset_client(&caller, Role::Submitter).await?;
    let chunks = body.into_data_stream().map_err(std::io::Error::other);
    let info = assets.upload_stream(None, chunks).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", operation_id = "CreateToken",
    request_body(content = ref("#/components/schemas/CreateTokenRequest")),
    responses(
        (status = 201, description = "The token and its secret, shown only this once",
         body = ref("#/components/schemas/CreateTokenResponse")),
        Errors))]
pub(crate) async fn create_token(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    body: JsonBody<pb::CreateTokenRequest>,
) -> ApiResult<Response> {
    let Json(request) = body?;
    let created = state
        .tokens
        .create_token(call(&caller, request))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct ListTokensQuery {
    /// Include revoked tokens.
    #[serde(alias = "include_revoked")]
    include_revoked: Option<bool>,
    /// At most this many tokens a page (AIP-158; 0 or absent: 1000, the most).
    #[serde(alias = "page_size")]
    page_size: Option<u32>,
    /// The `nextPageToken` of the previous page.
    #[serde(alias = "page_token")]
    page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", operation_id = "ListTokens",
    params(ListTokensQuery),
    responses(
        (status = 200, description = "Tokens, newest first, without secrets", body = ref("#/components/schemas/ListTokensResponse")),
        Errors))]
pub(crate) async fn list_tokens(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    query: Result<Query<ListTokensQuery>, QueryRejection>,
) -> ApiResult<Json<pb::ListTokensResponse>> {
    let Query(query) = query?;
    let request = pb::ListTokensRequest {
        include_revoked: query.include_revoked.unwrap_or(false),
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
    };
    Ok(Json(
        state
            .tokens
            .list_tokens(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", operation_id = "RevokeToken",
    params(("id" = String, Path, description = "The token's UUID")),
    responses(
        (status = 200, description = "The revoked token", body = ref("#/components/schemas/Token")),
        Errors))]
pub(crate) async fn revoke_token(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<pb::Token>> {
    let request = pb::RevokeTokenRequest { token_id: id };
    Ok(Json(
        state
            .tokens
            .revoke_token(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

#[utoipa::path(get, path = "/openapi.json", tag = "meta", operation_id = "OpenApi",
    responses((status = 200, description = "This document", body = Object), Errors))]
pub(crate) async fn openapi(Extension(caller): Extension<Principal>) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    Ok(Json(crate::openapi::document()).into_response())
}

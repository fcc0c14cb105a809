//! REST for farm management and the questions a dashboard asks: workers and
//! an admin's actions on them, why a job's tasks wait, a task's attempts, a
//! timeline of task runs. Same shapes and checks as gRPC (`PublicApi`).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use kiln_proto::v1 as pb;
use kiln_proto::v1::farm_service_server::FarmService;
use kiln_proto::v1::job_service_server::JobService;
use serde::Deserialize;

use crate::auth::Principal;
use crate::openapi::Errors;
use crate::rest::{ApiError, ApiResult, RestState, call};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListWorkersQuery {
    /// At most this many workers; 0 or absent means 1000. Capped at 10000.
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/workers", tag = "workers", operation_id = "ListWorkers",
    params(ListWorkersQuery),
    responses(
        (status = 200, description = "Workers by id: connected ones, and those gone within a day",
         body = ref("#/components/schemas/ListWorkersResponse")),
        Errors))]
pub(crate) async fn list_workers(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    query: Result<Query<ListWorkersQuery>, QueryRejection>,
) -> ApiResult<Json<pb::ListWorkersResponse>> {
    let Query(query) = query?;
    let request = pb::ListWorkersRequest {
        limit: query.limit.unwrap_or(0),
    };
    Ok(Json(
        state
            .api
            .list_workers(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

#[utoipa::path(get, path = "/v1/workers/{id}", tag = "workers", operation_id = "GetWorker",
    params(("id" = String, Path, description = "The worker's id")),
    responses(
        (status = 200, description = "The worker", body = ref("#/components/schemas/Worker")),
        Errors))]
pub(crate) async fn get_worker(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<pb::Worker>> {
    let request = pb::GetWorkerRequest { worker_id: id };
    Ok(Json(
        state
            .api
            .get_worker(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

/// A `POST /v1/workers/{id}/<action>` handler calling `method` (admins only).
macro_rules! worker_action {
    ($handler:ident, $method:ident, $path:literal, $op:literal, $what:literal) => {
        #[utoipa::path(post, path = $path, tag = "workers", operation_id = $op,
                    params(("id" = String, Path, description = "The worker's id")),
                    responses(
                        (status = 200, description = $what, body = ref("#/components/schemas/Worker")),
                        Errors))]
        pub(crate) async fn $handler(
            State(state): State<RestState>,
            Extension(caller): Extension<Principal>,
            Path(id): Path<String>,
        ) -> ApiResult<Json<pb::Worker>> {
            let request = pb::WorkerActionRequest { worker_id: id };
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

worker_action!(
    disable_worker,
    disable_worker,
    "/v1/workers/{id}/disable",
    "DisableWorker",
    "Disabled: its running tasks go back to the queue; it takes none until enabled"
);
worker_action!(
    enable_worker,
    enable_worker,
    "/v1/workers/{id}/enable",
    "EnableWorker",
    "Enabled: it takes tasks again"
);
worker_action!(
    drain_worker,
    drain_worker,
    "/v1/workers/{id}/drain",
    "DrainWorker",
    "Draining: it finishes its tasks, takes no new ones, then is disabled"
);

#[utoipa::path(put, path = "/v1/workers/{id}/tags", tag = "workers", operation_id = "SetWorkerTags",
    params(("id" = String, Path, description = "The worker's id")),
    request_body(content = ref("#/components/schemas/SetWorkerTagsRequest"),
        description = "`workerId` may be left out; if given it must match the path"),
    responses(
        (status = 200, description = "The worker with its new tags", body = ref("#/components/schemas/Worker")),
        Errors))]
pub(crate) async fn set_worker_tags(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Json<pb::SetWorkerTagsRequest>, JsonRejection>,
) -> ApiResult<Json<pb::Worker>> {
    let Json(mut request) = body?;
    if !request.worker_id.is_empty() && request.worker_id != id {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "workerId: differs from the worker in the path",
        ));
    }
    request.worker_id = id;
    Ok(Json(
        state
            .api
            .set_worker_tags(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct WaitingQuery {
    /// One task's UUID; absent explains the job (the first waiting task of each step).
    #[serde(alias = "task_id")]
    task_id: Option<String>,
}

#[utoipa::path(get, path = "/v1/jobs/{id}/waiting", tag = "jobs", operation_id = "ExplainWaiting",
    params(("id" = String, Path, description = "The job's UUID"), WaitingQuery),
    responses(
        (status = 200, description = "Why its tasks are not running, every cause named",
         body = ref("#/components/schemas/ExplainWaitingResponse")),
        Errors))]
pub(crate) async fn explain_waiting(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    query: Result<Query<WaitingQuery>, QueryRejection>,
) -> ApiResult<Json<pb::ExplainWaitingResponse>> {
    let Query(query) = query?;
    let request = pb::ExplainWaitingRequest {
        job_id: id,
        task_id: query.task_id.unwrap_or_default(),
    };
    Ok(Json(
        state
            .api
            .explain_waiting(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/tasks/{task}", tag = "jobs", operation_id = "GetTaskHistory",
    params(("id" = String, Path, description = "The job's UUID"),
           ("task" = String, Path, description = "The task's UUID")),
    responses(
        (status = 200, description = "The task and its attempts: worker, times, outcome",
         body = ref("#/components/schemas/TaskHistory")),
        Errors))]
pub(crate) async fn task_history(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path((id, task)): Path<(String, String)>,
) -> ApiResult<Json<pb::TaskHistory>> {
    let request = pb::GetTaskHistoryRequest {
        job_id: id,
        task_id: task,
    };
    Ok(Json(
        state
            .api
            .get_task_history(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TimelineQuery {
    /// Runs that ended after this time (RFC 3339) or still run; absent means the last hour.
    since: Option<String>,
    /// At most this many runs, newest first; 0 or absent means 2000. Capped at 10000.
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/timeline", tag = "jobs", operation_id = "ListTaskSpans",
    params(TimelineQuery),
    responses(
        (status = 200, description = "Task runs per worker (a non-admin's own jobs only), and the farm position to watch from",
         body = ref("#/components/schemas/ListTaskSpansResponse")),
        Errors))]
pub(crate) async fn timeline(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> ApiResult<Json<pb::ListTaskSpansResponse>> {
    let Query(query) = query?;
    let request = pb::ListTaskSpansRequest {
        since: query
            .since
            .as_deref()
            .map(|t| rfc3339("since", t))
            .transpose()?,
        limit: query.limit.unwrap_or(0),
        owner: String::new(),
    };
    Ok(Json(
        state
            .api
            .list_task_spans(call(&caller, request))
            .await?
            .into_inner(),
    ))
}

/// An RFC 3339 time from a query parameter, or a 400 naming it.
pub(crate) fn rfc3339(field: &str, text: &str) -> ApiResult<pbjson_types::Timestamp> {
    let at = chrono::DateTime::parse_from_rfc3339(text).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("{field}: {text:?} is not an RFC 3339 time (e.g. 2026-05-01T12:00:00Z)"),
        )
    })?;
    Ok(pbjson_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    })
}

//! Live REST: Server-Sent Events for the job and farm watches (resumable
//! through `Last-Event-ID`, the event's sequence number), a task's stored
//! log and its live tail, and a contact sheet of a job's frame thumbnails.
//! Every handler goes through the same [`PublicApi`](crate::grpc::PublicApi)
//! checks as gRPC.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt, TryStreamExt};
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use kiln_proto::v1::job_service_server::JobService;

use crate::auth::{Principal, Role};
use crate::rest::{ApiError, ApiResult, RestState, call, stream_asset};

/// Keep-alive comments on idle event streams, so proxies keep them open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Thumbnails on one contact sheet, at most.
const SHEET_MAX_FRAMES: usize = 100;
/// Largest thumbnail read for a contact sheet, in bytes.
const SHEET_MAX_THUMBNAIL: usize = 4 * 1024 * 1024;

/// `Last-Event-ID` as a sequence number; absent or unreadable means a fresh watch.
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Where a watch starts when the client cannot set `Last-Event-ID` (a
/// browser's first `EventSource` request): `?after=N`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AfterQuery {
    /// Resume after this position; `Last-Event-ID`, when sent, wins.
    after: Option<u64>,
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
        || headers.contains_key("last-event-id")
}

/// One job event as SSE: `id` is the sequence number (absent on a watch's
/// opening record), `event` names the kind, `data` is the proto3 JSON.
fn sse_event(event: &pb::JobEvent, farm: bool) -> SseEvent {
    let kind = match &event.event {
        Some(Event::JobChanged(_)) => "job_changed",
        Some(Event::TaskStateChanged(_)) => "task_state_changed",
        Some(Event::TaskProgress(_)) => "task_progress",
        Some(Event::OutputAdded(_)) => "output_added",
        Some(Event::WorkerChanged(_)) => "worker_changed",
        None => "unknown",
    };
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    let mut sse = SseEvent::default().event(kind).data(data);
    let id = if farm { event.farm_seq } else { event.seq };
    if id > 0 {
        sse = sse.id(id.to_string());
    }
    sse
}

/// An upstream stream of events as SSE; a broken upstream ends the
/// response, and the browser's EventSource resumes with `Last-Event-ID`.
fn to_sse(
    events: impl Stream<Item = Result<pb::JobEvent, tonic::Status>> + Send + 'static,
    farm: bool,
) -> Response {
    let events = events
        .take_while(|event| futures::future::ready(event.is_ok()))
        .filter_map(move |event| async move { event.ok().map(|e| sse_event(&e, farm)) })
        .map(Ok::<_, Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// `GET /v1/jobs/{id}/events`: SSE when the client asks for
/// `text/event-stream` (or resumes with `Last-Event-ID`), newline-delimited
/// JSON otherwise.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", operation_id = "WatchJob",
    params(("id" = String, Path, description = "The job's UUID")),
    responses(
        (status = 200, description = "JobEvent messages as newline-delimited JSON until the job ends",
         content_type = "application/x-ndjson", body = String),
        crate::openapi::Errors))]
pub(crate) async fn job_events(
    state: State<RestState>,
    caller: Extension<Principal>,
    id: Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if !wants_sse(&headers) {
        return crate::rest::watch_job(state, caller, id).await;
    }
    let request = pb::WatchJobRequest {
        job_id: id.0,
        after_seq: last_event_id(&headers),
    };
    let events = state
        .api
        .watch_job(call(&caller, request))
        .await?
        .into_inner();
    Ok(to_sse(events, false))
}

#[utoipa::path(get, path = "/v1/events", tag = "jobs", operation_id = "WatchFarm",
    params(("Last-Event-ID" = Option<u64>, Header, description = "Resume after this farm-wide position"),
           AfterQuery),
    responses(
        (status = 200, description = "Every job's events (a non-admin's own jobs only) and the workers joining, leaving and being acted on, as Server-Sent Events",
         content_type = "text/event-stream", body = String),
        crate::openapi::Errors))]
pub(crate) async fn farm_events(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    headers: HeaderMap,
    query: Result<Query<AfterQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query?;
    let after = query.after;
    let request = pb::WatchFarmRequest {
        after_farm_seq: last_event_id(&headers).or(after),
    };
    let events = state
        .api
        .watch_farm(call(&caller, request))
        .await?
        .into_inner();
    Ok(to_sse(events, true))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/tasks/{task}/log", tag = "jobs", operation_id = "GetTaskLog",
    params(("id" = String, Path, description = "The job's UUID"),
           ("task" = String, Path, description = "The task's UUID")),
    responses(
        (status = 200, description = "The task's last stored log", content_type = "text/plain", body = String),
        crate::openapi::Errors))]
pub(crate) async fn task_log(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path((id, task)): Path<(String, String)>,
) -> ApiResult<Response> {
    let request = pb::GetTaskLogRequest {
        job_id: id,
        task_id: task,
    };
    let log = state
        .api
        .get_task_log(call(&caller, request))
        .await?
        .into_inner();
    stream_asset(
        &state,
        &caller,
        &log.digest,
        Some(log.size),
        "text/plain; charset=utf-8",
    )
    .await
}

#[utoipa::path(get, path = "/v1/jobs/{id}/tasks/{task}/log/live", tag = "jobs", operation_id = "WatchTaskLog",
    params(("id" = String, Path, description = "The job's UUID"),
           ("task" = String, Path, description = "The task's UUID")),
    responses(
        (status = 200, description = "The running task's recent log lines, then new ones as they are printed, until it ends",
         content_type = "text/plain", body = String),
        crate::openapi::Errors))]
pub(crate) async fn task_log_live(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path((id, task)): Path<(String, String)>,
) -> ApiResult<Response> {
    let request = pb::WatchTaskLogRequest {
        job_id: id,
        task_id: task,
    };
    let batches = state
        .api
        .watch_task_log(call(&caller, request))
        .await?
        .into_inner();
    let text = batches.map_ok(|batch| {
        let mut text = batch.lines.join("\n");
        text.push('\n');
        text
    });
    let mut response = Response::new(Body::from_stream(text.map_err(std::io::Error::other)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

#[utoipa::path(get, path = "/v1/jobs/{id}/contact-sheet", tag = "jobs", operation_id = "ContactSheet",
    params(("id" = String, Path, description = "The job's UUID")),
    responses(
        (status = 200, description = "A PNG grid of the job's frame thumbnails, in path order (at most 100)",
         content_type = "image/png", body = Vec<u8>),
        crate::openapi::Errors))]
pub(crate) async fn contact_sheet(
    State(state): State<RestState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let request = pb::ListOutputsRequest {
        job_id: id.clone(),
        kind: "thumbnail".to_owned(),
        page_size: SHEET_MAX_FRAMES as u32,
        ..Default::default()
    };
    let outputs = state
        .api
        .list_outputs(call(&caller, request))
        .await?
        .into_inner()
        .outputs;
    let thumbnails: Vec<pb::JobOutput> = outputs
        .into_iter()
        .filter(|o| o.kind == "thumbnail")
        .take(SHEET_MAX_FRAMES)
        .collect();
    if thumbnails.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {id} has no frame thumbnails yet"),
        ));
    }
    let internal = |e: crate::contact_sheet::SheetError| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    };
    let _turn = crate::contact_sheet::turn().await.map_err(internal)?;
    let assets = state.api.asset_client(&caller, Role::Viewer).await?;
    let mut images = Vec::with_capacity(thumbnails.len());
    for thumbnail in thumbnails {
        let bytes = read_small(&assets, &thumbnail.digest).await?;
        images.push((thumbnail.path, bytes));
    }
    let png = crate::contact_sheet::compose(images)
        .await
        .map_err(internal)?;
    let mut response = Response::new(Body::from(png));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    Ok(response)
}

async fn read_small(assets: &kiln_asset_client::AssetClient, digest: &str) -> ApiResult<Vec<u8>> {
    let mut chunks = assets.download_stream(digest).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        bytes.extend_from_slice(&chunk?);
        if bytes.len() > SHEET_MAX_THUMBNAIL {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_argument",
                format!("thumbnail {digest} is too large for a contact sheet"),
            ));
        }
    }
    Ok(bytes)
}

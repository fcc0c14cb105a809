//! A bound on the streams one token holds open through this gateway:
//! watches (SSE and gRPC), uploads and downloads. A stream's permit lives
//! in its response body, so it is given back when the body ends or the
//! client goes away, whichever comes first. (The scheduler bounds each
//! owner's watches over every gateway as well: `--max-streams-per-owner`.)

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http_body_util::BodyExt;
use kiln_service::keyed_permits::KeyedPermits;
use tonic::Status;
use uuid::Uuid;

use crate::auth::Principal;
use crate::guard::Protocol;
use crate::rest::ApiError;

/// gRPC methods whose request or response is a stream.
pub const GRPC_STREAMS: &[&str] = &[
    "/kiln.v1.JobService/WatchJob",
    "/kiln.v1.JobService/WatchFarm",
    "/kiln.v1.JobService/WatchTaskLog",
    "/kiln.v1.AssetService/Upload",
    "/kiln.v1.AssetService/Download",
];

/// Open streams per token, for one protocol's routes (the count is shared).
pub struct StreamLimit {
    pub protocol: Protocol,
    pub permits: KeyedPermits<Uuid>,
}

/// Holds a permit of the caller's token for the life of the response, or
/// refuses the stream with 429 / RESOURCE_EXHAUSTED. On gRPC only the
/// methods in [`GRPC_STREAMS`] count; on REST every route this is layered on.
pub async fn hold(State(limit): State<Arc<StreamLimit>>, request: Request, next: Next) -> Response {
    if limit.protocol == Protocol::Grpc && !GRPC_STREAMS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let Some(token) = request.extensions().get::<Principal>().map(|p| p.token_id) else {
        return next.run(request).await;
    };
    let permit = match limit.permits.acquire(&token) {
        Ok(permit) => permit,
        Err(held) => return limit.refuse(held),
    };
    let response = next.run(request).await;
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _held = &permit;
            frame
        }))
    })
}

impl StreamLimit {
    fn refuse(&self, held: usize) -> Response {
        let message = format!(
            "quota max-streams-per-token: this token has {held} streams open through this gateway, the limit is {}; close one first",
            self.permits.limit()
        );
        match self.protocol {
            Protocol::Rest => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "resource_exhausted", message)
                    .into_response()
            }
            Protocol::Grpc => Status::resource_exhausted(message).into_http::<Body>(),
        }
    }
}

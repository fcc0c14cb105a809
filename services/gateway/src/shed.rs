//! The gateway's own bounded queue, one each for REST and gRPC: at most
//! `serving` requests are served at once, at most `max_waiting` wait their
//! turn, and any beyond that are refused at once (503, or UNAVAILABLE for
//! gRPC, with `Retry-After`), so that under overload the gateway answers
//! quickly instead of letting every request's latency grow without bound.
//! The calls it makes upstream have bounded queues of their own
//! (`kiln-mesh`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tokio::sync::Semaphore;

use crate::guard::Protocol;
use crate::rest::ApiError;

/// Seconds a refused caller is told to wait.
const RETRY_AFTER_SECONDS: u32 = 1;

pub struct EdgeQueue {
    protocol: Protocol,
    serving: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl EdgeQueue {
    pub fn new(protocol: Protocol, serving: usize, max_waiting: usize) -> Self {
        Self {
            protocol,
            serving: Arc::new(Semaphore::new(serving)),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    fn refuse(&self) -> Response {
        metrics::counter!("kiln_gateway_shed_total", "protocol" => match self.protocol {
            Protocol::Rest => "rest",
            Protocol::Grpc => "grpc",
        })
        .increment(1);
        let message = "the gateway is overloaded; try again shortly";
        match self.protocol {
            Protocol::Rest => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
                    .retry_after(RETRY_AFTER_SECONDS)
                    .into_response()
            }
            Protocol::Grpc => {
                let mut status = tonic::Status::unavailable(message);
                status.metadata_mut().insert(
                    kiln_proto::metadata::RETRY_AFTER,
                    tonic::metadata::MetadataValue::from(RETRY_AFTER_SECONDS),
                );
                status.into_http::<axum::body::Body>()
            }
        }
    }
}

/// Leaves the waiting count however the wait ends (the caller may go away).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves the request when its turn comes, or refuses it if the queue is full.
pub async fn admit(State(queue): State<Arc<EdgeQueue>>, request: Request, next: Next) -> Response {
    let permit = match queue.serving.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            if queue.waiting.fetch_add(1, Ordering::AcqRel) >= queue.max_waiting {
                queue.waiting.fetch_sub(1, Ordering::AcqRel);
                return queue.refuse();
            }
            let _waiting = Waiting(&queue.waiting);
            match queue.serving.clone().acquire_owned().await {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => return queue.refuse(),
            }
        }
    };
    let response = next.run(request).await;
    drop(permit);
    response
}

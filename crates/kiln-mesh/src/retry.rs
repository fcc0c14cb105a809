//! Retries: an idempotent call (`methods.rs`) that a replica did not answer
//! (its connection failed, or it said UNAVAILABLE in its response head) is
//! sent again, to the replica the balancer picks then, under a budget
//! (tower's [`TpsBudget`]: retries may add at most a fifth to an upstream's
//! calls, beyond a small floor), so a sick upstream is not hammered. Calls
//! the mesh refused itself (a full queue, no replica at all) are not
//! retried, and neither is an answer whose body has begun: what the caller
//! got stays what it got.
//!
//! To be sent again a request must be kept: [`Replay`] reads the (small,
//! single-message) body of an idempotent call into memory first.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use tonic::Code;
use tonic::body::Body;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service};

use crate::BoxError;
use crate::methods;
use crate::metrics::{BALANCER_RETRIES, code_of_head};

/// The largest request body kept for sending again: a gRPC message of
/// Kiln's (8 MiB at most) and its framing.
const MAX_REPLAYED_BYTES: usize = 8 * 1024 * 1024 + 5;

/// The body of an idempotent request, kept so it can be sent again.
#[derive(Debug, Clone)]
struct Replayable(Bytes);

/// Keeps the body of each idempotent request (see the module's documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayLayer;

impl<S> Layer<S> for ReplayLayer {
    type Service = Replay<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Replay { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Replay<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for Replay<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if !methods::policy(request.uri().path()).idempotent {
            return Box::pin(self.inner.call(request));
        }
        // The clone is not ready; the one polled ready serves this call.
        let fresh = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, fresh);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = Limited::new(body, MAX_REPLAYED_BYTES)
                .collect()
                .await
                .map_err(|error| -> BoxError {
                    Box::new(tonic::Status::resource_exhausted(format!(
                        "request body could not be kept for a retry: {error}"
                    )))
                })?
                .to_bytes();
            let mut request = Request::from_parts(parts, Body::new(Full::new(bytes.clone())));
            request.extensions_mut().insert(Replayable(bytes));
            ready.call(request).await
        })
    }
}

/// When a call is sent again; shared by every clone of one upstream's stack.
#[derive(Clone)]
pub struct RetryPolicy {
    upstream: &'static str,
    budget: Arc<TpsBudget>,
}

impl RetryPolicy {
    pub fn new(upstream: &'static str) -> Self {
        Self {
            upstream,
            // Retries within 10 s may add a fifth to the calls made, and at
            // least 10 a second are allowed so a quiet caller can retry.
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
        }
    }
}

/// Whether the replica failed to take the call (rather than answering it).
fn unanswered(result: &Result<Response<Body>, BoxError>) -> bool {
    match result {
        Ok(response) => code_of_head(response.headers()) == Some(Code::Unavailable),
        // The mesh's own refusals are statuses; anything else is the
        // connection to the replica failing.
        Err(error) => !error.is::<tonic::Status>(),
    }
}

impl tower::retry::Policy<Request<Body>, Response<Body>, BoxError> for RetryPolicy {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        request: &mut Request<Body>,
        result: &mut Result<Response<Body>, BoxError>,
    ) -> Option<Self::Future> {
        if !unanswered(result) || request.extensions().get::<Replayable>().is_none() {
            self.budget.deposit();
            return None;
        }
        if !self.budget.withdraw() {
            tracing::debug!(upstream = self.upstream, path = %request.uri().path(), "retry budget spent; not retrying");
            return None;
        }
        metrics::counter!(BALANCER_RETRIES, "upstream" => self.upstream).increment(1);
        tracing::debug!(upstream = self.upstream, path = %request.uri().path(), "sending a call again");
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, request: &Request<Body>) -> Option<Request<Body>> {
        let Replayable(bytes) = request.extensions().get::<Replayable>()?.clone();
        let mut copy = Request::new(Body::new(Full::new(bytes)));
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unanswered_calls_count_for_a_retry() {
        let unavailable = tonic::Status::unavailable("shutting down").into_http::<Body>();
        assert!(unanswered(&Ok(unavailable)));
        let not_found = tonic::Status::not_found("no such digest").into_http::<Body>();
        assert!(!unanswered(&Ok(not_found)));
        let refused: BoxError = Box::new(tonic::Status::unavailable("queue full"));
        assert!(
            !unanswered(&Err(refused)),
            "the mesh's own refusal is final"
        );
        let broken: BoxError = "connection reset".into();
        assert!(unanswered(&Err(broken)));
    }
}

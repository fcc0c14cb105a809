//! Tells a cancelled upload from a finished one.
//!
//! tonic reports a client's RST_STREAM(CANCEL) on a request stream as a
//! clean end of the stream, which would make a cancelled upload look
//! complete and get stored truncated. This wrapper watches the raw request
//! body instead and records any error it ends with, where the handler can
//! read it from the request extensions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::server::NamedService;

/// Set once the request body has failed, e.g. because the client cancelled.
#[derive(Debug, Clone, Default)]
pub struct BodyFailed(Arc<AtomicBool>);

impl BodyFailed {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Wraps a gRPC service so that each request carries a [`BodyFailed`].
#[derive(Debug, Clone)]
pub struct DetectCancel<S>(pub S);

impl<S> tower::Service<http::Request<Body>> for DetectCancel<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let failed = BodyFailed::default();
        let flag = failed.0.clone();
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(failed);
        let body = body.map_err(move |status| {
            flag.store(true, Ordering::Release);
            status
        });
        self.0
            .call(http::Request::from_parts(parts, Body::new(body)))
    }
}

impl<S: NamedService> NamedService for DetectCancel<S> {
    const NAME: &'static str = S::NAME;
}

//! How long a call waits for a replica that can take it. The balancer is
//! not ready while no replica is listed (a scheduler failing over) or all
//! are ejected; calls wait for one in the bounded queue, and once none has
//! been ready for the patience, the queue is emptied with UNAVAILABLE
//! rather than left to wait for the callers' deadlines.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use tokio::time::Sleep;
use tower::Service;

use crate::BoxError;

pub struct Patience<S> {
    inner: S,
    upstream: &'static str,
    patience: Duration,
    /// Running while the inner service is not ready.
    waiting: Option<Pin<Box<Sleep>>>,
    /// The patience ran out: the next call fails.
    out_of_patience: bool,
}

impl<S> Patience<S> {
    pub fn new(inner: S, upstream: &'static str, patience: Duration) -> Self {
        Self {
            inner,
            upstream,
            patience,
            waiting: None,
            out_of_patience: false,
        }
    }
}

impl<S, Request> Service<Request> for Patience<S>
where
    S: Service<Request, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(result) => {
                self.waiting = None;
                self.out_of_patience = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let patience = self.patience;
                let waiting = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(patience)));
                if waiting.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.out_of_patience = true;
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if std::mem::take(&mut self.out_of_patience) {
            let status = tonic::Status::unavailable(format!(
                "no replica of the {} service could take the call within {} s",
                self.upstream,
                self.patience.as_secs()
            ));
            return futures::future::ready(Err(Box::new(status) as BoxError)).boxed();
        }
        self.inner.call(request).boxed()
    }
}

//! One replica of an upstream, as the balancer sees it: a lazily connected
//! channel whose calls are watched for outlier detection (`outlier.rs`), not
//! ready while ejected, and probed back in by a task of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use http::{Request, Response};
use kiln_discovery::Endpoint;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Code;
use tonic::body::Body;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tower::Service;

use crate::BoxError;
use crate::deadline::{self, CallDeadline, GRPC_TIMEOUT};
use crate::methods::{self, PROMPT_ANSWER};
use crate::metrics::{BALANCER_EJECTED, BALANCER_EJECTIONS, BALANCER_REQUESTS, code_of_head};
use crate::outlier::{EjectionBudget, Health, Outcome};
use crate::settings::Settings;

/// How long a probe of an ejected replica may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Builds the endpoint of each replica an upstream lists.
pub struct EndpointFactory {
    pub upstream: &'static str,
    pub tls: kiln_tls::ClientTls,
    pub settings: Settings,
    pub budget: Arc<EjectionBudget>,
}

impl EndpointFactory {
    /// The endpoint of `listing`; it connects on first use.
    pub fn build(&self, listing: &Endpoint) -> Result<EndpointService, kiln_tls::TlsError> {
        let channel = self
            .tls
            .endpoint(&listing.grpc_uri())?
            .connect_timeout(self.settings.connect_timeout)
            // Unanswered pings drop the connection to a frozen replica, so its
            // calls fail (and are retried elsewhere) instead of hanging. Only
            // while calls are open: thousands of idle workers ping nobody.
            .http2_keep_alive_interval(self.settings.keep_alive)
            .keep_alive_timeout(self.settings.keep_alive)
            .keep_alive_while_idle(false)
            .initial_stream_window_size(crate::http2::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(crate::http2::CONNECTION_WINDOW_BYTES)
            .max_frame_size(crate::http2::MAX_FRAME_BYTES)
            .connect_lazy();
        let shared = Arc::new(Shared {
            upstream: self.upstream,
            instance: listing.instance.clone(),
            health: Mutex::new(Health::new(self.settings.outlier)),
            ready_again: AtomicWaker::new(),
            ejected: Notify::new(),
            budget: self.budget.clone(),
        });
        let endpoints = self.budget.endpoint_added();
        metrics::gauge!(crate::metrics::BALANCER_ENDPOINTS, "upstream" => self.upstream)
            .set(endpoints as f64);
        metrics::gauge!(BALANCER_EJECTED, "upstream" => self.upstream, "endpoint" => listing.instance.clone())
            .set(0.0);
        let stop = CancellationToken::new();
        tokio::spawn(probe_when_ejected(
            shared.clone(),
            channel.clone(),
            stop.clone(),
        ));
        tracing::info!(upstream = self.upstream, endpoint = %listing.instance, addr = %listing.grpc, "replica listed");
        Ok(EndpointService {
            channel,
            shared,
            _stop_probing: stop.drop_guard(),
        })
    }
}

/// What the endpoint, its calls and its probe share.
struct Shared {
    upstream: &'static str,
    instance: String,
    health: Mutex<Health>,
    /// The balancer waiting for this replica to be readmitted.
    ready_again: AtomicWaker,
    /// Wakes the probe task when the replica is ejected.
    ejected: Notify,
    budget: Arc<EjectionBudget>,
}

impl Shared {
    fn is_ejected(&self) -> bool {
        self.health.lock().map(|h| h.is_ejected()).unwrap_or(false)
    }

    fn ejected_until(&self) -> Option<Instant> {
        self.health.lock().ok().and_then(|h| h.ejected_until())
    }

    fn record(&self, outcome: Outcome, why: &'static str) {
        let ejected = match self.health.lock() {
            Ok(mut health) => health.record(outcome, Instant::now(), &self.budget),
            Err(_) => false,
        };
        if ejected {
            tracing::warn!(upstream = self.upstream, endpoint = %self.instance, why, "replica ejected");
            metrics::counter!(BALANCER_EJECTIONS, "upstream" => self.upstream, "endpoint" => self.instance.clone())
                .increment(1);
            metrics::gauge!(BALANCER_EJECTED, "upstream" => self.upstream, "endpoint" => self.instance.clone())
                .set(1.0);
            self.ejected.notify_one();
        }
    }
}

/// Waits for the replica to be ejected, then probes it at the end of each
/// ejection until it passes; until `stop`.
async fn probe_when_ejected(shared: Arc<Shared>, channel: Channel, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.ejected.notified() => {}
        }
        while let Some(until) = shared.ejected_until() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(until) => {}
            }
            let serving = probe(channel.clone()).await;
            let Ok(mut health) = shared.health.lock() else {
                return;
            };
            if serving {
                health.probe_passed(&shared.budget);
                drop(health);
                tracing::info!(upstream = shared.upstream, endpoint = %shared.instance, "replica readmitted");
                metrics::gauge!(BALANCER_EJECTED, "upstream" => shared.upstream, "endpoint" => shared.instance.clone())
                    .set(0.0);
                shared.ready_again.wake();
            } else {
                health.probe_failed(Instant::now());
            }
        }
    }
}

/// Whether the replica answers its health check SERVING, promptly.
async fn probe(channel: Channel) -> bool {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let mut client = HealthClient::new(channel);
    match tokio::time::timeout(PROBE_TIMEOUT, client.check(request)).await {
        Ok(Ok(response)) => response.into_inner().status == ServingStatus::Serving as i32,
        _ => false,
    }
}

/// One replica: see the module's documentation.
pub struct EndpointService {
    channel: Channel,
    shared: Arc<Shared>,
    _stop_probing: DropGuard,
}

impl Drop for EndpointService {
    fn drop(&mut self) {
        if let Ok(mut health) = self.shared.health.lock() {
            health.forget(&self.shared.budget);
        }
        let endpoints = self.shared.budget.endpoint_removed();
        metrics::gauge!(crate::metrics::BALANCER_ENDPOINTS, "upstream" => self.shared.upstream)
            .set(endpoints as f64);
        metrics::gauge!(BALANCER_EJECTED, "upstream" => self.shared.upstream, "endpoint" => self.shared.instance.clone())
            .set(0.0);
        tracing::info!(upstream = self.shared.upstream, endpoint = %self.shared.instance, "replica gone");
    }
}

impl Service<Request<Body>> for EndpointService {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ObservedCall;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.shared.is_ejected() {
            self.shared.ready_again.register(cx.waker());
            if self.shared.is_ejected() {
                return Poll::Pending;
            }
        }
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let prompt = methods::policy(request.uri().path()).prompt;
        if let Some(CallDeadline(deadline)) = request.extensions().get::<CallDeadline>().copied() {
            let left = deadline.saturating_duration_since(Instant::now());
            request
                .headers_mut()
                .insert(GRPC_TIMEOUT, deadline::encode(left));
        }
        metrics::counter!(BALANCER_REQUESTS, "upstream" => self.shared.upstream, "endpoint" => self.shared.instance.clone())
            .increment(1);
        ObservedCall {
            call: self.channel.call(request),
            shared: self.shared.clone(),
            slow: prompt.then(|| Box::pin(tokio::time::sleep(PROMPT_ANSWER))),
        }
    }
}

/// A call to one replica, whose outcome feeds the replica's health.
pub struct ObservedCall {
    call: tonic::transport::channel::ResponseFuture,
    shared: Arc<Shared>,
    /// Runs out when a prompt call has waited too long for its answer.
    slow: Option<Pin<Box<Sleep>>>,
}

impl Future for ObservedCall {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match Pin::new(&mut this.call).poll(cx) {
            Poll::Ready(Ok(response)) => {
                let outcome = match code_of_head(response.headers()) {
                    Some(Code::Unavailable) => Outcome::Failed,
                    _ => Outcome::Answered,
                };
                this.shared.record(outcome, "it answered unavailable");
                Poll::Ready(Ok(response))
            }
            Poll::Ready(Err(error)) => {
                this.shared
                    .record(Outcome::Unreachable, "its connection failed");
                Poll::Ready(Err(error.into()))
            }
            Poll::Pending => {
                if let Some(slow) = this.slow.as_mut()
                    && slow.as_mut().poll(cx).is_ready()
                {
                    this.slow = None;
                    this.shared
                        .record(Outcome::Failed, "it left a prompt call unanswered");
                }
                Poll::Pending
            }
        }
    }
}

//! The client stack of every internal link, composed here and nowhere
//! else. From the caller inwards, in the order a call meets them:
//!
//! 1. metrics: rate, errors and duration as the caller sees them
//!    (`kiln_grpc_client_*`);
//! 2. deadline: the caller's deadline, inherited from the call being
//!    served, enforced here and passed on (`deadline.rs`);
//! 3. replay and retry: idempotent calls a replica did not answer are sent
//!    again, under a budget (`retry.rs`);
//! 4. shedding: a call that finds the queue full fails at once with
//!    UNAVAILABLE and a `retry-after`, instead of waiting without bound;
//! 5. the bounded queue (a buffer of `max_queued`) in front of at most
//!    `max_in_flight` calls in flight to the upstream;
//! 6. patience: calls do not wait forever for a replica (`patience.rs`);
//! 7. the balancer: power of two choices by peak-EWMA latency over every
//!    replica the upstream lists in etcd (`replicas.rs`), each of which is
//!    ejected while it fails or hangs (`endpoint.rs`, `outlier.rs`).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tonic::body::Body;
use tower::ServiceBuilder;
use tower::balance::p2c::Balance;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::util::BoxCloneSyncService;

use crate::BoxError;
use crate::deadline::ClientDeadlineLayer;
use crate::endpoint::EndpointFactory;
use crate::metrics::{BALANCER_SHED, ClientMetricsLayer};
use crate::outlier::EjectionBudget;
use crate::patience::Patience;
use crate::replicas::Replicas;
use crate::retry::{ReplayLayer, RetryPolicy};
use crate::settings::Settings;

/// A new replica's latency until its first answers are measured.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast peak-EWMA forgets a slow answer.
const RTT_DECAY: Duration = Duration::from_secs(10);

pub(crate) type BoxedStack = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// The stack for `upstream`, over the replicas `listings` reports.
pub(crate) fn balanced(
    upstream: &'static str,
    listings: tokio::sync::mpsc::Receiver<kiln_discovery::ListingChange>,
    tls: kiln_tls::ClientTls,
    settings: Settings,
) -> BoxedStack {
    let replicas = Replicas::new(
        listings,
        EndpointFactory {
            upstream,
            tls,
            settings,
            budget: Arc::new(EjectionBudget::default()),
        },
    );
    let balancer = Balance::new(PeakEwmaDiscover::new(
        replicas,
        DEFAULT_RTT,
        RTT_DECAY,
        CompleteOnResponse::default(),
    ));
    let retry_after = settings.retry_after_seconds;
    let stack = ServiceBuilder::new()
        .layer(ClientMetricsLayer::new(upstream))
        .layer(ClientDeadlineLayer)
        .layer(ReplayLayer)
        .retry(RetryPolicy::new(upstream))
        .map_err(move |error: BoxError| shed_as_status(upstream, retry_after, error))
        .load_shed()
        .buffer(settings.max_queued)
        .concurrency_limit(settings.max_in_flight)
        .service(Patience::new(balancer, upstream, settings.patience));
    BoxCloneSyncService::new(stack)
}

/// A call refused because the queue was full becomes UNAVAILABLE with a
/// `retry-after`, which callers (and the gateway's) pass on.
fn shed_as_status(upstream: &'static str, retry_after: u32, error: BoxError) -> BoxError {
    if !error.is::<tower::load_shed::error::Overloaded>() {
        return error;
    }
    metrics::counter!(BALANCER_SHED, "upstream" => upstream).increment(1);
    let mut status = tonic::Status::unavailable(format!(
        "too many calls are waiting for the {upstream} service; try again shortly"
    ));
    status.metadata_mut().insert(
        kiln_proto::metadata::RETRY_AFTER,
        tonic::metadata::MetadataValue::from(retry_after),
    );
    Box::new(status)
}

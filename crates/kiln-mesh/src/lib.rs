//! The request path of every Kiln service, in one crate: how a service
//! calls another, and what a served call passes through.
//!
//! A client of an internal service is a [`MeshChannel`] from
//! [`Mesh::channel`]: it balances over every live replica the service lists
//! in etcd, follows the listings as replicas come and go, ejects a replica
//! that fails or hangs, retries idempotent calls under a budget, carries
//! the caller's deadline, sheds load from a bounded queue, and measures
//! every call. The layers are composed in one place, `stack.rs`, in the
//! order they apply. A server gets the matching layers from
//! [`server_layer`] (`kiln-service` applies them to every gRPC server).

pub mod deadline;
mod endpoint;
pub mod http2;
pub mod methods;
pub mod metrics;
pub mod outlier;
mod patience;
mod replicas;
mod retry;
mod settings;
mod stack;

use std::task::{Context, Poll};

use http::{Request, Response};
use kiln_discovery::Discovery;
use tonic::body::Body;
use tower::Service;
use tower::layer::util::{Identity, Stack};

pub use settings::{MeshArgs, Settings};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How this process reaches the farm's internal services.
#[derive(Clone)]
pub struct Mesh {
    discovery: Discovery,
    tls: kiln_tls::ClientTls,
    settings: Settings,
}

impl Mesh {
    /// Services found through `discovery`, dialled with `tls` when they
    /// serve TLS.
    pub fn new(discovery: Discovery, tls: kiln_tls::ClientTls, settings: Settings) -> Self {
        metrics::describe();
        Self {
            discovery,
            tls,
            settings,
        }
    }

    /// A channel to every live replica of `upstream` (a
    /// [`kiln_discovery::service`] name), following its listings in etcd
    /// for as long as the channel (or a clone) lives. Must be called
    /// within a tokio runtime.
    pub fn channel(&self, upstream: &'static str) -> MeshChannel {
        let listings = self.discovery.watch_listings(upstream);
        MeshChannel {
            inner: stack::balanced(upstream, listings, self.tls.clone(), self.settings),
        }
    }
}

/// A gRPC channel through the mesh (see the crate's documentation); cheap
/// to clone, and usable by any tonic client.
#[derive(Clone)]
pub struct MeshChannel {
    inner: stack::BoxedStack,
}

impl std::fmt::Debug for MeshChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshChannel")
    }
}

/// A channel to one address, outside the mesh: for a client of a public
/// endpoint (the `kiln` command talking to a gateway, a test).
impl From<tonic::transport::Channel> for MeshChannel {
    fn from(channel: tonic::transport::Channel) -> Self {
        let inner = tower::ServiceBuilder::new()
            .map_err(BoxError::from)
            .service(channel);
        Self {
            inner: tower::util::BoxCloneSyncService::new(inner),
        }
    }
}

impl Service<Request<Body>> for MeshChannel {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = <stack::BoxedStack as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        self.inner.call(request)
    }
}

/// The layers every gRPC server applies to the calls it serves, outermost
/// first: `kiln_grpc_server_*` metrics, then the caller's deadline (kept
/// for the calls made on its behalf, and answered DEADLINE_EXCEEDED).
pub type ServerLayer =
    Stack<deadline::ServerDeadlineLayer, Stack<metrics::ServerMetricsLayer, Identity>>;

pub fn server_layer() -> ServerLayer {
    metrics::describe();
    tower::ServiceBuilder::new()
        .layer(metrics::ServerMetricsLayer)
        .layer(deadline::ServerDeadlineLayer)
        .into_inner()
}

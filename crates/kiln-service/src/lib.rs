//! What every Kiln gRPC service does the same way: bind a listener (port 0
//! by default, so tests and `kiln dev` never race for ports), serve gRPC
//! health and reflection beside its own services, register the bound
//! address in etcd, and shut down gracefully on SIGTERM or Ctrl-C; and the
//! HTTP ops endpoint ([`ops`]) with its readiness [`checks`].

pub mod cancel;
pub mod checks;
pub mod internal_auth;
pub mod keyed_permits;
pub mod ops;
pub mod paging;

use std::net::SocketAddr;

use kiln_discovery::{Discovery, Endpoint, Registration};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::ServerTlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Discovery(#[from] kiln_discovery::DiscoveryError),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error(transparent)]
    Tls(#[from] kiln_tls::TlsError),
}

pub use checks::{CheckResult, Checks, Readiness};
pub use ops::{OpsArgs, OpsServer};

/// Binds `addr`; port 0 picks a free port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServiceError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServiceError::Bind { addr, source })
}

/// A unique instance name: the service name, the host, and a short random suffix.
pub fn instance_name(service: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{service}-{host}-{}", &suffix[..8])
}

/// Adds health and reflection to `routes`; every service named in
/// `serving` is reported SERVING.
pub async fn with_standard_services(
    routes: Routes,
    serving: &[&str],
) -> Result<Routes, ServiceError> {
    let (routes, health) = with_health(routes, serving).await?;
    health.set_serving(true).await;
    Ok(routes)
}

/// Adds health and reflection to `routes`, reporting the services named in
/// `serving` (and the server as a whole, `""`) NOT_SERVING until the
/// returned [`Health`] says otherwise: for a service that serves only at
/// times (a standby scheduler).
pub async fn with_health(
    routes: Routes,
    serving: &[&str],
) -> Result<(Routes, Health), ServiceError> {
    let (reporter, service) = tonic_health::server::health_reporter();
    let health = Health {
        reporter,
        names: std::iter::once("")
            .chain(serving.iter().copied())
            .map(str::to_owned)
            .collect(),
    };
    health.set_serving(false).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kiln_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    Ok((routes.add_service(service).add_service(reflection), health))
}

/// What `grpc.health.v1` answers for a server's services.
#[derive(Clone)]
pub struct Health {
    reporter: tonic_health::server::HealthReporter,
    names: Vec<String>,
}

impl Health {
    /// Reports every service SERVING, or NOT_SERVING.
    pub async fn set_serving(&self, serving: bool) {
        let status = match serving {
            true => tonic_health::ServingStatus::Serving,
            false => tonic_health::ServingStatus::NotServing,
        };
        for name in &self.names {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// Serves `routes` on `listener` until SIGTERM/Ctrl-C, registered in etcd
/// as `service` for as long as it serves.
pub async fn serve(
    service: &str,
    listener: TcpListener,
    routes: Routes,
    discovery: &Discovery,
    http_addr: Option<String>,
) -> Result<(), ServiceError> {
    let listing = Listing {
        http: http_addr,
        ..Listing::default()
    };
    serve_listed(service, listener, routes, discovery, listing).await
}

/// What a service lists in etcd besides its gRPC address.
#[derive(Default)]
pub struct Listing<'a> {
    /// Address of the service's own HTTP API (the gateway's REST), as peers reach it.
    pub http: Option<String>,
    /// The service's ops endpoint: listed, and marked not ready once shutdown starts.
    pub ops: Option<&'a OpsServer>,
    /// Serve TLS (listed in etcd, so clients dial `https`); see [`kiln_tls::TlsSettings::grpc_server`].
    pub tls: Option<ServerTlsConfig>,
}

/// [`serve`], listing `listing` in etcd beside the gRPC address.
pub async fn serve_listed(
    service: &str,
    listener: TcpListener,
    routes: Routes,
    discovery: &Discovery,
    listing: Listing<'_>,
) -> Result<(), ServiceError> {
    let local = listener.local_addr().map_err(|source| ServiceError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let endpoint = Endpoint {
        instance: instance_name(service),
        grpc: discovery.advertised_address(local),
        http: listing.http,
        ops: listing
            .ops
            .map(|ops| discovery.advertised_address(ops.local_addr())),
        tls: listing.tls.is_some(),
    };
    let registration = discovery.register(service, endpoint).await?;
    tracing::info!(service, addr = %local, tls = listing.tls.is_some(), "serving grpc");
    let result = serve_unlisted_tls(listener, routes, listing.ops, listing.tls).await;
    deregister(registration).await;
    result
}

/// Serves `routes` on `listener` until SIGTERM/Ctrl-C without listing it in
/// etcd: for a service that lists itself only at times (a scheduler lists
/// itself while it leads).
pub async fn serve_unlisted(
    listener: TcpListener,
    routes: Routes,
    ops: Option<&OpsServer>,
) -> Result<(), ServiceError> {
    serve_unlisted_tls(listener, routes, ops, None).await
}

/// [`serve_unlisted`], serving TLS with `tls`.
pub async fn serve_unlisted_tls(
    listener: TcpListener,
    routes: Routes,
    ops: Option<&OpsServer>,
    tls: Option<ServerTlsConfig>,
) -> Result<(), ServiceError> {
    let shutdown = async move {
        shutdown_signal().await;
        if let Some(ops) = ops {
            ops.set_draining();
        }
    };
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(kiln_mesh::http2::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(kiln_mesh::http2::CONNECTION_WINDOW_BYTES)
        .max_frame_size(kiln_mesh::http2::MAX_FRAME_BYTES);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let result = builder
        .trace_fn(kiln_telemetry::propagation::server_span)
        // Per-call metrics and the caller's deadline, for every service alike.
        .layer(kiln_mesh::server_layer())
        .add_routes(routes)
        // TCP_NODELAY: tonic sets it only on listeners it binds itself. Without
        // it, Nagle held HTTP/2's small frames back for the peer's delayed ACK,
        // and a gateway whose scheduler link was not kept busy by its own
        // traffic answered in 46 ms instead of 16 (two gateways together
        // served a third of one's requests per second).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await;
    Ok(result?)
}

async fn deregister(registration: Registration) {
    registration.revoke().await;
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

//! Serves the REST application, over TLS when the gateway has a certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::TcpListener;

/// The client's address, as the listener accepted its connection; handlers
/// and middleware find it as `ConnectInfo<PeerAddr>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, kiln_tls::TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, kiln_tls::TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// Serves `app` on `listener` until SIGTERM/Ctrl-C; TLS with `tls`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<kiln_tls::rustls::ServerConfig>>,
) -> std::io::Result<()> {
    match tls {
        Some(config) => {
            axum::serve(
                kiln_tls::TlsListener::new(listener, config)?,
                app.into_make_service_with_connect_info::<PeerAddr>(),
            )
            .with_graceful_shutdown(kiln_service::shutdown_signal())
            .await
        }
        None => {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<PeerAddr>(),
            )
            .with_graceful_shutdown(kiln_service::shutdown_signal())
            .await
        }
    }
}

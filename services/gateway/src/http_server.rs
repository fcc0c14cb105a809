//! Serves the REST application, over TLS when the gateway has a certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};

/// The plain listener, with TCP_NODELAY on each connection it accepts: a
/// response written in more than one piece must not wait for the client's
/// delayed ACK (Nagle). (axum's `tap_io` would do, but its own
/// `Connected` impl for it leaves no room for [`PeerAddr`]'s.)
pub struct NoDelayListener(TcpListener);

impl Listener for NoDelayListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, peer) = Listener::accept(&mut self.0).await;
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        (tcp, peer)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// The client's address, as the listener accepted its connection; handlers
/// and middleware find it as `ConnectInfo<PeerAddr>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, NoDelayListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, NoDelayListener>) -> Self {
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
                NoDelayListener(listener),
                app.into_make_service_with_connect_info::<PeerAddr>(),
            )
            .with_graceful_shutdown(kiln_service::shutdown_signal())
            .await
        }
    }
}

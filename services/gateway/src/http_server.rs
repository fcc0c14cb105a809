//! Serves the REST application, over TLS when the gateway has a certificate.

use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

/// Serves `app` on `listener` until SIGTERM/Ctrl-C; TLS with `tls`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<kiln_tls::rustls::ServerConfig>>,
) -> std::io::Result<()> {
    match tls {
        Some(config) => {
            axum::serve(kiln_tls::TlsListener::new(listener, config)?, app)
                .with_graceful_shutdown(kiln_service::shutdown_signal())
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(kiln_service::shutdown_signal())
                .await
        }
    }
}

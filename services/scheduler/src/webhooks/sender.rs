//! One HTTP attempt of a delivery: resolve the host, check every address
//! against the policy, connect to a checked address (pinned: no second
//! lookup), TLS for https (the system's roots, SNI the host), POST the body
//! with the Standard Webhooks headers, and take the status. Redirects are
//! not followed (a 3xx is a failure): a redirect could lead anywhere.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::webhooks::address_policy::{AddressError, AddressPolicy, Target};

/// Bytes of a receiver's answer read (and dropped) before the connection closes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: SocketAddr, reason: String },
    #[error("tls: {0}")]
    Tls(String),
    #[error("http: {0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// What one attempt sends besides the body.
pub struct Signed<'a> {
    pub id: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
}

#[derive(Clone)]
pub struct Sender {
    policy: AddressPolicy,
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl Sender {
    pub fn new(policy: AddressPolicy, timeout: Duration) -> Self {
        kiln_tls::install_provider();
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::debug!(error = %error, "a system root certificate could not be read");
        }
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!("no system root certificates: https webhooks will fail");
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            policy,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout,
        }
    }

    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// One attempt; the receiver's HTTP status, whatever it is.
    pub async fn send(&self, url: &str, signed: Signed<'_>, body: Bytes) -> Result<u16, SendError> {
        let target = self.policy.target(url)?;
        tokio::time::timeout(self.timeout, self.attempt(&target, signed, body))
            .await
            .map_err(|_| SendError::Timeout(self.timeout))?
    }

    async fn attempt(
        &self,
        target: &Target,
        signed: Signed<'_>,
        body: Bytes,
    ) -> Result<u16, SendError> {
        let addresses = self.resolve(target).await?;
        let stream = connect(&addresses).await?;
        if target.https {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|err| SendError::Tls(err.to_string()))?;
            let stream = self
                .tls
                .connect(name, stream)
                .await
                .map_err(|err| SendError::Tls(err.to_string()))?;
            post(stream, target, signed, body).await
        } else {
            post(stream, target, signed, body).await
        }
    }

    /// The addresses the host stands for now, each checked; refused when
    /// any is forbidden (a name resolving to both a public and a private
    /// address is a classic DNS-rebinding setup).
    pub async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, SendError> {
        let addresses: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, target.port)],
            Err(_) => tokio::net::lookup_host((target.host.as_str(), target.port))
                .await
                .map_err(|err| SendError::Resolve {
                    host: target.host.clone(),
                    reason: err.to_string(),
                })?
                .collect(),
        };
        if addresses.is_empty() {
            return Err(SendError::Resolve {
                host: target.host.clone(),
                reason: "no addresses".into(),
            });
        }
        for address in &addresses {
            self.policy.check(target, address.ip())?;
        }
        Ok(addresses)
    }
}

/// The first of `addresses` that accepts a connection.
async fn connect(addresses: &[SocketAddr]) -> Result<TcpStream, SendError> {
    let mut last = None;
    for &address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(err) => {
                last = Some(SendError::Connect {
                    address,
                    reason: err.to_string(),
                })
            }
        }
    }
    Err(last.unwrap_or(SendError::Http("no address to connect to".into())))
}

async fn post<S>(
    stream: S,
    target: &Target,
    signed: Signed<'_>,
    body: Bytes,
) -> Result<u16, SendError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| SendError::Http(err.to_string()))?;
    let driver = tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "webhook connection ended");
        }
    });
    let path = match target.url.query() {
        Some(query) => format!("{}?{query}", target.url.path()),
        None => target.url.path().to_owned(),
    };
    let host = match target.url.port() {
        Some(port) => format!("{}:{port}", target.url.host_str().unwrap_or(&target.host)),
        None => target.url.host_str().unwrap_or(&target.host).to_owned(),
    };
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("kiln-webhooks/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", signed.id)
        .header("webhook-timestamp", signed.timestamp.to_string())
        .header("webhook-signature", signed.signature)
        .body(Full::new(body))
        .map_err(|err| SendError::Http(err.to_string()))?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|err| SendError::Http(err.to_string()));
    let result = match answer {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read a little of the answer so the receiver is not cut off
            // mid-write; the rest is dropped with the connection.
            let _ = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await;
            Ok(status)
        }
        Err(err) => Err(err),
    };
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A receiver on loopback answering `status` once; gives back what it read.
    async fn receiver(status: u16) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!(
            "http://127.0.0.1:{}/hook?x=1",
            listener.local_addr().expect("addr").port()
        );
        let served = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut read = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers and the short body arrive together or soon after.
            while !String::from_utf8_lossy(&read).contains("\"ok\":true") {
                let n = stream.read(&mut chunk).await.expect("read");
                if n == 0 {
                    break;
                }
                read.extend_from_slice(&chunk[..n]);
            }
            let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            stream.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&read).into_owned()
        });
        (url, served)
    }

    fn signed() -> Signed<'static> {
        Signed {
            id: "msg_1",
            timestamp: 1_700_000_000,
            signature: "v1,abc",
        }
    }

    #[tokio::test]
    async fn posts_signed_to_an_allowed_host_and_reports_the_status() {
        let (url, served) = receiver(503).await;
        let sender = Sender::new(
            AddressPolicy::new(["127.0.0.1".to_owned()]),
            Duration::from_secs(5),
        );
        let status = sender
            .send(&url, signed(), Bytes::from_static(br#"{"ok":true}"#))
            .await
            .expect("an answer");
        assert_eq!(status, 503);
        let request = served.await.expect("served").to_ascii_lowercase();
        assert!(request.starts_with("post /hook?x=1 http/1.1"), "{request}");
        assert!(request.contains("webhook-id: msg_1"), "{request}");
        assert!(
            request.contains("webhook-timestamp: 1700000000"),
            "{request}"
        );
        assert!(request.contains("webhook-signature: v1,abc"), "{request}");
        assert!(
            request.contains("content-type: application/json"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn refuses_loopback_by_default_without_connecting() {
        let sender = Sender::new(AddressPolicy::default(), Duration::from_secs(5));
        let refused = sender
            .send("http://127.0.0.1:9/", signed(), Bytes::new())
            .await
            .expect_err("refused");
        assert!(matches!(refused, SendError::Address(_)), "{refused}");
        let target = AddressPolicy::default()
            .target("http://localhost:9/")
            .expect("a name passes until resolved");
        assert!(matches!(
            sender.resolve(&target).await,
            Err(SendError::Address(_))
        ));
    }
}

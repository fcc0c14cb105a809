//! A sick store: a TCP proxy in front of Garage that passes everything on,
//! except that it swallows one request. The first request whose bytes carry
//! a marker (say `partNumber=2&`, one part of a multipart upload) is read
//! and dropped, and never answered; nothing more on that connection reaches
//! Garage. That is how a store that hangs looks to its client: connected,
//! written to, silent. Other connections keep working.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes read from the client at a time.
const READ_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct SwallowingProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    marker: &'static [u8],
    /// Where the store listens (`host:port`); set once, before any service
    /// connects ([`SwallowingProxy::forward_to`]).
    target: OnceLock<String>,
    swallowed: AtomicBool,
}

impl SwallowingProxy {
    /// Listens on 127.0.0.1 for as long as the test's runtime runs.
    pub async fn listen(marker: &'static [u8]) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            marker,
            target: OnceLock::new(),
            swallowed: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        tokio::spawn(async move {
            // Ends with the test's runtime.
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, accepting.clone()));
            }
        });
        Ok(Self { addr, shared })
    }

    /// Sends what it passes on to the store at `endpoint`
    /// (`http://host:port`), and returns its own endpoint to use instead:
    /// the shape [`kiln_localfarm::FarmBuilder::s3_front`] takes.
    pub fn forward_to(&self, endpoint: &str) -> String {
        let target = endpoint.trim_start_matches("http://").trim_end_matches('/');
        let _ = self.shared.target.set(target.to_owned());
        format!("http://{}", self.addr)
    }

    /// Whether the marked request came, and was swallowed.
    pub fn swallowed(&self) -> bool {
        self.shared.swallowed.load(Ordering::SeqCst)
    }
}

async fn relay(mut client: TcpStream, shared: Arc<Shared>) {
    let Some(target) = shared.target.get() else {
        return;
    };
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let (mut from_store, mut to_store) = upstream.into_split();
    let (mut from_client, mut to_client) = client.split();
    // Set once this connection's marked request is swallowed: from then on
    // the client must see silence, not even the store closing.
    let silent = AtomicBool::new(false);
    let answers = async {
        let _ = tokio::io::copy(&mut from_store, &mut to_client).await;
        if !silent.load(Ordering::SeqCst) {
            let _ = to_client.shutdown().await;
        }
    };
    let requests = async {
        let mut buffer = vec![0u8; READ_BYTES];
        // The last bytes of the previous read, so a marker split across two
        // reads is still seen.
        let mut carry: Vec<u8> = Vec::new();
        // Ends when the client closes the connection (or it fails).
        while let Ok(read) = from_client.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            if silent.load(Ordering::SeqCst) {
                continue;
            }
            let bytes = &buffer[..read];
            let mut window = std::mem::take(&mut carry);
            window.extend_from_slice(bytes);
            if contains(&window, shared.marker) && !shared.swallowed.swap(true, Ordering::SeqCst) {
                // This request, and any after it on this connection, never
                // reach the store.
                silent.store(true, Ordering::SeqCst);
                continue;
            }
            let keep = shared.marker.len().saturating_sub(1).min(window.len());
            carry = window[window.len() - keep..].to_vec();
            if to_store.write_all(bytes).await.is_err() {
                break;
            }
        }
        let _ = to_store.shutdown().await;
    };
    tokio::join!(answers, requests);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

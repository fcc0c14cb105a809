//! A whole download, checked against its digest as it goes out.
//!
//! The hashing runs in a task of its own, beside the one sending: SHA-256
//! of a chunk costs about as much as sending it, and done in line each
//! chunk waited for both. The stream still ends cleanly only once every
//! byte sent has hashed to the digest.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::digest::Digest;
use crate::error::Error;

/// Chunks sent but not yet hashed, at most: if hashing falls behind, sending
/// waits (memory stays bounded).
const UNHASHED_CHUNKS: usize = 4;

/// Passes `chunks` on while hashing them; if the stored bytes do not hash to
/// `digest` (the store corrupted them), the stream ends with DATA_LOSS
/// instead of a clean end, so no client takes them for the file.
pub fn verified(
    digest: Digest,
    chunks: impl Stream<Item = Result<Bytes, Status>> + Send + 'static,
) -> impl Stream<Item = Result<Bytes, Status>> + Send + 'static {
    let (to_hash, mut hashing) = mpsc::channel::<Bytes>(UNHASHED_CHUNKS);
    let hashed: JoinHandle<Digest> = tokio::spawn(async move {
        let mut hasher = Sha256::new();
        while let Some(chunk) = hashing.recv().await {
            hasher.update(&chunk);
        }
        Digest::from_hasher(hasher)
    });
    struct Sending<S> {
        chunks: S,
        to_hash: mpsc::Sender<Bytes>,
        hashed: JoinHandle<Digest>,
        digest: Digest,
    }
    let state = Some(Sending {
        chunks: Box::pin(chunks),
        to_hash,
        hashed,
        digest,
    });
    futures::stream::unfold(state, |state| async move {
        let mut sending = state?;
        match sending.chunks.next().await {
            Some(Ok(data)) => {
                if sending.to_hash.send(data.clone()).await.is_err() {
                    // The hashing task is gone (it panicked): nothing sent
                    // from here on could be vouched for.
                    sending.hashed.abort();
                    return Some((Err(Status::internal("download: hashing stopped")), None));
                }
                metrics::counter!(crate::counters::BYTES_SENT).increment(data.len() as u64);
                Some((Ok(data), Some(sending)))
            }
            Some(Err(status)) => {
                sending.hashed.abort();
                Some((Err(status), None))
            }
            None => {
                let Sending {
                    to_hash,
                    hashed,
                    digest,
                    ..
                } = sending;
                drop(to_hash);
                let actual = match hashed.await {
                    Ok(actual) => actual,
                    Err(err) => {
                        return Some((
                            Err(Status::internal(format!("download: hashing failed: {err}"))),
                            None,
                        ));
                    }
                };
                if actual == digest {
                    return None;
                }
                metrics::counter!(crate::counters::CORRUPT).increment(1);
                let err = Error::Corrupt {
                    digest: digest.to_string(),
                    actual: actual.to_string(),
                };
                Some((Err(Status::from(err)), None))
            }
        }
    })
}

//! Turns a byte source into the request stream of an Upload call.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt, stream};
use kiln_proto::v1::UploadChunk;
use tokio::sync::oneshot;

use crate::CHUNK_SIZE;

/// The chunks to send: a first, empty chunk carrying `expected_digest` (so
/// the digest travels even when the source is empty), then the source in
/// pieces of at most [`CHUNK_SIZE`].
///
/// When the source fails, the error goes to `failed` and the stream stalls
/// instead of ending: a clean end would make the service store the truncated
/// content. The caller then drops the call, which resets the HTTP/2 stream.
pub(crate) fn chunks<S>(
    expected_digest: Option<String>,
    offset: u64,
    source: S,
    failed: oneshot::Sender<std::io::Error>,
) -> impl Stream<Item = UploadChunk> + Send + 'static
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let header = UploadChunk {
        expected_digest: expected_digest.unwrap_or_default(),
        data: Bytes::new(),
        offset,
    };
    let data = coalesce(source)
        .flat_map(|item| stream::iter(split(item)))
        .map_ok(|data| UploadChunk {
            expected_digest: String::new(),
            data,
            offset: 0,
        });
    stream::once(async move { header }).chain(stall_on_error(data, failed))
}

/// The items of `items` up to its first error, which goes to `failed`;
/// from then on the stream stalls instead of ending.
///
/// For request streams of uploads: a clean end tells the service the file
/// is complete, so a failed source must never end the stream. Whoever
/// holds the call watches `failed` and drops the call, which resets the
/// HTTP/2 stream; the service then keeps what it received for resuming.
pub fn stall_on_error<T, E, S>(
    items: S,
    failed: oneshot::Sender<E>,
) -> impl Stream<Item = T> + Send + 'static
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let mut failed = Some(failed);
    items.then(move |item| {
        let failed = if item.is_err() { failed.take() } else { None };
        async move {
            match item {
                Ok(item) => item,
                Err(err) => {
                    if let Some(failed) = failed {
                        let _ = failed.send(err);
                    }
                    std::future::pending().await
                }
            }
        }
    })
}

/// Joins small items of `source` into pieces of at least [`CHUNK_SIZE`]
/// (the last may be shorter): an HTTP request body arrives in pieces of a
/// few KiB, and sending each as its own message costs more per byte than
/// the one copy joining them. Bytes before an error still go out first.
fn coalesce<S>(source: S) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    struct State<S> {
        source: std::pin::Pin<Box<S>>,
        pending: BytesMut,
        failed: Option<std::io::Error>,
        done: bool,
    }
    let state = State {
        source: Box::pin(source),
        pending: BytesMut::new(),
        failed: None,
        done: false,
    };
    stream::unfold(state, |mut state| async move {
        if let Some(err) = state.failed.take() {
            state.done = true;
            return Some((Err(err), state));
        }
        if state.done {
            return None;
        }
        loop {
            match state.source.next().await {
                Some(Ok(data)) if state.pending.is_empty() && data.len() >= CHUNK_SIZE => {
                    return Some((Ok(data), state));
                }
                Some(Ok(data)) => {
                    state.pending.extend_from_slice(&data);
                    if state.pending.len() >= CHUNK_SIZE {
                        let joined = state.pending.split().freeze();
                        return Some((Ok(joined), state));
                    }
                }
                Some(Err(err)) if state.pending.is_empty() => {
                    state.done = true;
                    return Some((Err(err), state));
                }
                Some(Err(err)) => {
                    state.failed = Some(err);
                    let joined = state.pending.split().freeze();
                    return Some((Ok(joined), state));
                }
                None => {
                    state.done = true;
                    if state.pending.is_empty() {
                        return None;
                    }
                    let joined = state.pending.split().freeze();
                    return Some((Ok(joined), state));
                }
            }
        }
    })
}

/// Splits one source item into pieces of at most [`CHUNK_SIZE`], without copying.
fn split(item: Result<Bytes, std::io::Error>) -> Vec<Result<Bytes, std::io::Error>> {
    match item {
        Ok(mut data) => {
            let mut pieces = Vec::with_capacity(data.len().div_ceil(CHUNK_SIZE));
            while data.len() > CHUNK_SIZE {
                pieces.push(Ok(data.split_to(CHUNK_SIZE)));
            }
            if !data.is_empty() {
                pieces.push(Ok(data));
            }
            pieces
        }
        Err(err) => vec![Err(err)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_large_items_without_losing_bytes() {
        let data = Bytes::from(vec![7u8; CHUNK_SIZE * 2 + 5]);
        let pieces: Vec<Bytes> = split(Ok(data))
            .into_iter()
            .map(|p| p.unwrap_or_default())
            .collect();
        assert_eq!(
            pieces.iter().map(Bytes::len).collect::<Vec<_>>(),
            [CHUNK_SIZE, CHUNK_SIZE, 5]
        );
    }

    #[tokio::test]
    async fn joins_small_items_and_keeps_bytes_before_an_error() {
        let small = Bytes::from(vec![1u8; CHUNK_SIZE / 4 + 1]);
        let piece = small.clone();
        let source = stream::iter(
            std::iter::repeat_with(move || Ok(piece.clone()))
                .take(5)
                .chain([Err(std::io::Error::other("cut"))]),
        );
        let joined: Vec<Result<Bytes, std::io::Error>> = coalesce(source).collect().await;
        let sizes: Vec<Option<usize>> = joined
            .iter()
            .map(|item| item.as_ref().ok().map(Bytes::len))
            .collect();
        assert_eq!(
            sizes,
            [Some(4 * small.len()), Some(small.len()), None],
            "four items make a piece, the fifth goes out before the error"
        );
    }

    #[test]
    fn drops_empty_items() {
        assert!(split(Ok(Bytes::new())).is_empty());
    }

    #[tokio::test]
    async fn first_chunk_carries_the_digest() {
        let (tx, _rx) = oneshot::channel();
        let source = stream::iter([Ok(Bytes::from_static(b"abc"))]);
        let sent: Vec<UploadChunk> = chunks(Some("d".repeat(64)), 0, source, tx).collect().await;
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].expected_digest, "d".repeat(64));
        assert!(sent[0].data.is_empty());
        assert_eq!(sent[1].expected_digest, "");
        assert_eq!(&sent[1].data[..], b"abc");
    }

    #[tokio::test]
    async fn source_errors_are_reported_and_never_end_the_stream() {
        let (tx, rx) = oneshot::channel();
        let source = stream::iter([
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::other("disk gone")),
        ]);
        let mut sent = Box::pin(chunks(None, 0, source, tx));
        assert!(sent.next().await.is_some());
        assert!(sent.next().await.is_some());
        let stalled = tokio::time::timeout(std::time::Duration::from_millis(50), sent.next()).await;
        assert!(
            stalled.is_err(),
            "stream must stall, not end, after a source error"
        );
        assert_eq!(
            rx.await.map(|e| e.to_string()).ok().as_deref(),
            Some("disk gone")
        );
    }
}

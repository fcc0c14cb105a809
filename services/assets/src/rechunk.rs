//! Cuts a stored file's pieces, as the store hands them over, into the
//! chunks a download sends, copying as little as it can.
//!
//! A store's pieces come in any size: an S3 body arrives in the sizes the
//! socket read them, often a few KiB, and a ranged read is 8 MiB. Sent as
//! they are, small pieces cost a gRPC message each, and large ones break
//! the contract's largest chunk. So small pieces are gathered (one copy)
//! until a chunk is worth sending, and large ones are only sliced: a
//! slice of `Bytes` shares the piece's memory instead of copying it. On a
//! 2 GiB download this took two of the four copies of every byte out of
//! the asset service (BENCHMARKS.md, "Assets").
//!
//! The asset client's uploads do the same with their own pair,
//! `coalesce` and `split` in `kiln-asset-client/src/upload.rs` (which also
//! sends what it gathered before an error); one of the two should go.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

/// Gathers pieces into chunks of at least `min` bytes (but the last) and at
/// most `max`.
#[derive(Debug)]
pub struct Rechunker {
    min: usize,
    max: usize,
    gathered: BytesMut,
}

impl Rechunker {
    /// `min` must be at most `max`.
    pub fn new(min: usize, max: usize) -> Self {
        debug_assert!(0 < min && min <= max);
        Self {
            min,
            max,
            gathered: BytesMut::new(),
        }
    }

    /// Takes the next piece; puts the chunks now ready on `ready`.
    pub fn push(&mut self, mut piece: Bytes, ready: &mut VecDeque<Bytes>) {
        if piece.len() < self.min {
            self.gathered.extend_from_slice(&piece);
            // Gathered bytes can pass `max` when `min` is near it: what is
            // past the chunks sent waits for the next piece.
            while self.gathered.len() >= self.min {
                let take = self.gathered.len().min(self.max);
                ready.push_back(self.gathered.split_to(take).freeze());
            }
            return;
        }
        // Large enough to go on its own: what was gathered before it goes
        // first (a short chunk, but its bytes are not copied twice).
        if !self.gathered.is_empty() {
            ready.push_back(self.gathered.split().freeze());
        }
        while piece.len() > self.max {
            ready.push_back(piece.split_to(self.max));
        }
        ready.push_back(piece);
    }

    /// What is left once the last piece is in.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.gathered.is_empty()).then(|| self.gathered.split().freeze())
    }
}

/// `pieces` as chunks of `min` to `max` bytes (see [`Rechunker`]); an error
/// ends the stream after it is passed on.
pub fn rechunk<E: Send + 'static>(
    pieces: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
    min: usize,
    max: usize,
) -> impl Stream<Item = Result<Bytes, E>> + Send + 'static {
    struct State<S> {
        pieces: S,
        chunker: Rechunker,
        ready: VecDeque<Bytes>,
        ended: bool,
    }
    let state = State {
        pieces: Box::pin(pieces),
        chunker: Rechunker::new(min, max),
        ready: VecDeque::new(),
        ended: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        // Bounded: each pass either hands a chunk on, ends, or takes one
        // more piece from a stream that ends.
        loop {
            if let Some(chunk) = state.ready.pop_front() {
                return Some((Ok(chunk), state));
            }
            if state.ended {
                return None;
            }
            match state.pieces.next().await {
                Some(Ok(piece)) => state.chunker.push(piece, &mut state.ready),
                Some(Err(err)) => {
                    state.ended = true;
                    state.ready.clear();
                    return Some((Err(err), state));
                }
                None => {
                    state.ended = true;
                    state.ready.extend(state.chunker.finish());
                }
            }
        }
    })
}

/// The first `length` bytes of `chunks` (all of them when `length` is
/// `u64::MAX`). Once they are out, or after an error, `chunks` is dropped
/// without being asked for more: a ranged read stops fetching.
pub fn limit<E: Send + 'static>(
    chunks: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
    length: u64,
) -> impl Stream<Item = Result<Bytes, E>> + Send + 'static {
    futures::stream::unfold(Some((Box::pin(chunks), length)), |state| async move {
        let (mut chunks, left) = state.filter(|(_, left)| *left > 0)?;
        match chunks.next().await? {
            Ok(mut chunk) => {
                if chunk.len() as u64 > left {
                    // Fits: `left` is less than a chunk's length, a usize.
                    chunk.truncate(left as usize);
                }
                let left = left - chunk.len() as u64;
                Some((Ok(chunk), Some((chunks, left))))
            }
            Err(err) => Some((Err(err), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(min: usize, max: usize, pieces: &[usize]) -> Vec<usize> {
        let mut chunker = Rechunker::new(min, max);
        let mut ready = VecDeque::new();
        for &size in pieces {
            chunker.push(Bytes::from(vec![7; size]), &mut ready);
        }
        ready.extend(chunker.finish());
        ready.iter().map(Bytes::len).collect()
    }

    #[test]
    fn small_pieces_are_gathered_to_the_minimum() {
        assert_eq!(chunks(10, 100, &[4, 4, 4, 4, 4, 4]), [12, 12]);
        assert_eq!(chunks(10, 100, &[4, 4, 4, 1]), [12, 1]);
    }

    #[test]
    fn gathered_chunks_stay_under_the_maximum_when_it_is_the_minimum() {
        assert_eq!(chunks(10, 10, &[6, 6, 6]), [10, 8]);
        assert_eq!(chunks(10, 10, &[9, 9, 9, 9]), [10, 10, 10, 6]);
    }

    #[test]
    fn large_pieces_are_sliced_to_the_maximum() {
        assert_eq!(chunks(10, 100, &[250]), [100, 100, 50]);
        assert_eq!(chunks(10, 100, &[100]), [100]);
    }

    #[test]
    fn a_large_piece_sends_what_was_gathered_first() {
        assert_eq!(chunks(10, 100, &[3, 40, 5]), [3, 40, 5]);
    }

    #[test]
    fn nothing_in_nothing_out() {
        assert_eq!(chunks(10, 100, &[]), Vec::<usize>::new());
        assert_eq!(chunks(10, 100, &[0, 0]), Vec::<usize>::new());
    }

    #[test]
    fn bytes_come_out_in_order_and_whole() {
        let mut chunker = Rechunker::new(64, 256);
        let mut ready = VecDeque::new();
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut at = 0;
        for size in [1, 7, 300, 2, 90, 1000, 5, 5, 5, 600].into_iter().cycle() {
            if at == content.len() {
                break;
            }
            let end = (at + size).min(content.len());
            chunker.push(Bytes::copy_from_slice(&content[at..end]), &mut ready);
            at = end;
        }
        ready.extend(chunker.finish());
        assert!(
            ready
                .iter()
                .all(|chunk| !chunk.is_empty() && chunk.len() <= 256)
        );
        assert_eq!(Vec::from(ready).concat(), content);
    }

    #[tokio::test]
    async fn an_error_is_passed_on_and_ends_the_stream() {
        let pieces = futures::stream::iter([
            Ok(Bytes::from_static(b"ab")),
            Err("store failed"),
            Ok(Bytes::from_static(b"cd")),
        ]);
        let out: Vec<_> = rechunk(pieces, 10, 100).collect().await;
        assert_eq!(out, [Err("store failed")]);
    }

    #[tokio::test]
    async fn limit_stops_at_the_length() {
        let pieces = futures::stream::iter(
            [b"abcd", b"efgh", b"ijkl"].map(|p| Ok::<_, ()>(Bytes::from_static(p))),
        );
        let out: Vec<_> = limit(pieces, 6).collect().await;
        assert_eq!(
            out,
            [
                Ok(Bytes::from_static(b"abcd")),
                Ok(Bytes::from_static(b"ef"))
            ]
        );
        let pieces = futures::stream::iter([Ok::<_, ()>(Bytes::from_static(b"abcd"))]);
        let out: Vec<_> = limit(pieces, u64::MAX).collect().await;
        assert_eq!(out, [Ok(Bytes::from_static(b"abcd"))]);
    }
}

//! A `DownloadChunk` framed around its bytes instead of copied.
//!
//! tonic's encoder writes every message it sends into a buffer of its own,
//! so each byte of a download was copied once more before the kernel copied
//! it to the socket: perf put that copy at a quarter of the asset service's
//! CPU on a 2 GiB download, more than hashing it (BENCHMARKS.md, "Assets").
//! A `DownloadChunk` on the wire is a few bytes (the gRPC prefix, then the
//! key and length of its one field) followed by its data as they are. Sent
//! as two HTTP/2 DATA frames, the prefix and then the data, which h2 writes
//! with `writev` from the data's own memory, the peer reads the very bytes
//! tonic's encoder would have sent.
//!
//! The receiving side has the same copy: tonic's decoder gathers a
//! response's bytes into its own buffer before it cuts messages out of it.
//! [`ChunkReader`] cuts a `DownloadChunk`'s data out of the body's own
//! pieces instead; only the few bytes before each chunk's data are copied.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{
    WireType, decode_varint, encode_key, encode_varint, encoded_len_varint, key_len,
};

use crate::v1::DownloadChunk;

/// `DownloadChunk.data`'s field number (`proto/kiln/v1/assets.proto`).
const DATA_FIELD: u32 = 1;
/// The gRPC prefix: a compressed flag, then the message's length (big-endian).
const GRPC_PREFIX_BYTES: usize = 5;

/// What goes on the wire before `len` bytes of data to make them one
/// uncompressed gRPC `DownloadChunk` message.
pub fn download_chunk_prefix(len: usize) -> Bytes {
    // proto3 leaves an empty `bytes` field out, as prost's encoder does.
    let field = if len == 0 {
        0
    } else {
        key_len(DATA_FIELD) + encoded_len_varint(len as u64)
    };
    let mut prefix = BytesMut::with_capacity(GRPC_PREFIX_BYTES + field);
    prefix.put_u8(0);
    // A chunk is at most a few MiB: its message length fits the prefix's u32.
    prefix.put_u32(u32::try_from(field + len).unwrap_or(u32::MAX));
    if len > 0 {
        encode_key(DATA_FIELD, WireType::LengthDelimited, &mut prefix);
        encode_varint(len as u64, &mut prefix);
    }
    prefix.freeze()
}

/// The key byte of `DownloadChunk.data`: field 1, length-delimited.
const DATA_KEY: u8 = 0x0a;
/// Most bytes a data field's key and length take before its data.
const MAX_FIELD_HEAD: usize = 1 + 10;

/// Why a response body is not a stream of `DownloadChunk` messages.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("a message is compressed, and none was asked for")]
    Compressed,
    #[error("a message of {len} bytes is larger than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("a message is not a DownloadChunk: {0}")]
    Malformed(String),
    #[error("the response ended inside a message")]
    CutShort,
}

/// Reads `DownloadChunk` messages out of a gRPC response body's pieces and
/// hands on their data, sliced out of the pieces rather than copied.
///
/// A message laid out as this module sends one (its data field alone,
/// which is also how prost encodes it) streams through; any other layout
/// (fields a newer server adds, say) is gathered whole, up to the largest
/// message allowed, and decoded by prost.
#[derive(Debug)]
pub struct ChunkReader {
    max_message: usize,
    state: State,
    /// The bytes of the current message read so far but not handed on: its
    /// prefix and field head, or all of it on the gathering path.
    held: BytesMut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a message's prefix and the head of its field.
    Head,
    /// Handing on `left` more bytes of a message's data as they come.
    Data { left: usize },
    /// Gathering a whole message of `len` bytes for prost.
    Whole { len: usize },
}

impl ChunkReader {
    /// A reader refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            state: State::Head,
            held: BytesMut::new(),
        }
    }

    /// Takes the body's next piece; puts the data it completes on `out`.
    /// After an error the reader is of no further use.
    pub fn push(&mut self, mut piece: Bytes, out: &mut VecDeque<Bytes>) -> Result<(), ChunkError> {
        // Bounded: each pass takes at least one byte of the piece, or ends
        // a message (whose bytes were all taken before).
        while !piece.is_empty() || self.message_complete() {
            match self.state {
                State::Data { left } => {
                    let take = left.min(piece.len());
                    out.push_back(piece.split_to(take));
                    self.state = match left - take {
                        0 => State::Head,
                        left => State::Data { left },
                    };
                }
                State::Whole { len } => {
                    let take = (len - self.held.len()).min(piece.len());
                    self.held.extend_from_slice(&piece.split_to(take));
                    if self.held.len() == len {
                        let message = DownloadChunk::decode(self.held.split().freeze())
                            .map_err(|err| ChunkError::Malformed(err.to_string()))?;
                        out.extend((!message.data.is_empty()).then_some(message.data));
                        self.state = State::Head;
                    }
                }
                State::Head => {
                    // A byte at a time, and at most 16: not one byte of
                    // data past the field's head is copied.
                    self.held.put_u8(piece.get_u8());
                    if self.head_ready()? {
                        self.read_head(out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the body may end here: not inside a message.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Head && self.held.is_empty()
    }

    /// The current message's length, once its prefix is in.
    fn message_len(&self) -> Result<Option<usize>, ChunkError> {
        if self.held.len() < GRPC_PREFIX_BYTES {
            return Ok(None);
        }
        if self.held[0] != 0 {
            return Err(ChunkError::Compressed);
        }
        let len = u32::from_be_bytes([self.held[1], self.held[2], self.held[3], self.held[4]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.max_message {
            return Err(ChunkError::TooLarge {
                len,
                max: self.max_message,
            });
        }
        Ok(Some(len))
    }

    /// Whether enough of the message is in to tell how to read the rest:
    /// its prefix and either its data field's key and length, or a first
    /// byte that is not that key, or all of a message that short.
    fn head_ready(&self) -> Result<bool, ChunkError> {
        let Some(len) = self.message_len()? else {
            return Ok(false);
        };
        let body = &self.held[GRPC_PREFIX_BYTES..];
        Ok(body.len() == len.min(MAX_FIELD_HEAD)
            || match body.split_first() {
                None => false,
                Some((&DATA_KEY, length)) => length.iter().any(|byte| byte & 0x80 == 0),
                Some(_) => true,
            })
    }

    /// Whether a message with nothing left to read is waiting to be ended.
    fn message_complete(&self) -> bool {
        matches!(self.state, State::Whole { len } if self.held.len() == len)
    }

    /// With the prefix and the field's head in: streams the data if the
    /// message is its data field alone, else gathers it whole.
    fn read_head(&mut self, out: &mut VecDeque<Bytes>) -> Result<(), ChunkError> {
        let len = self.message_len()?.unwrap_or(0);
        let mut body = self.held.split().freeze();
        body.advance(GRPC_PREFIX_BYTES);
        if len == 0 {
            // An empty message: a chunk of no bytes.
            return Ok(());
        }
        let mut head = &body[..];
        let data_len = match head.first() {
            Some(&DATA_KEY) => {
                head = &head[1..];
                decode_varint(&mut head).ok()
            }
            _ => None,
        };
        let field_head = body.len() - head.len();
        match data_len.and_then(|n| usize::try_from(n).ok()) {
            Some(n) if field_head.checked_add(n) == Some(len) => {
                let data = body.split_off(field_head);
                let left = n - data.len();
                out.extend((!data.is_empty()).then_some(data));
                self.state = match left {
                    0 => State::Head,
                    left => State::Data { left },
                };
            }
            _ => {
                self.held.extend_from_slice(&body);
                self.state = State::Whole { len };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_data_are_the_message_prost_would_send() {
        for len in [0, 1, 127, 128, 16_383, 16_384, 1024 * 1024] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let message = DownloadChunk {
                data: Bytes::from(data.clone()),
            }
            .encode_to_vec();
            let mut expected = vec![0];
            expected.extend_from_slice(&(message.len() as u32).to_be_bytes());
            expected.extend_from_slice(&message);

            let mut framed = download_chunk_prefix(len).to_vec();
            framed.extend_from_slice(&data);
            assert_eq!(framed, expected, "a chunk of {len} bytes");
        }
    }

    /// `messages` as tonic's encoder would send them, one after another.
    fn wire(messages: &[DownloadChunk]) -> Vec<u8> {
        let mut wire = Vec::new();
        for message in messages {
            let body = message.encode_to_vec();
            wire.push(0);
            wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
            wire.extend_from_slice(&body);
        }
        wire
    }

    fn read(pieces: impl IntoIterator<Item = Vec<u8>>) -> Result<(Vec<u8>, bool), ChunkError> {
        let mut reader = ChunkReader::new(4 * 1024 * 1024);
        let mut out = VecDeque::new();
        for piece in pieces {
            reader.push(Bytes::from(piece), &mut out)?;
        }
        Ok((Vec::from(out).concat(), reader.at_boundary()))
    }

    fn chunk(len: usize, seed: usize) -> DownloadChunk {
        DownloadChunk {
            data: (0..len).map(|i| ((i + seed) % 251) as u8).collect(),
        }
    }

    #[test]
    fn data_comes_out_whole_however_the_body_is_cut() {
        let messages = [
            chunk(300, 1),
            chunk(0, 0),
            chunk(1, 2),
            chunk(70_000, 3),
            chunk(5, 4),
        ];
        let wire = wire(&messages);
        let expected: Vec<u8> = messages.iter().flat_map(|m| m.data.to_vec()).collect();
        for cut in [1, 2, 3, 5, 6, 7, 11, 64, 299, 4096, 65_536, wire.len()] {
            let pieces = wire.chunks(cut).map(<[u8]>::to_vec);
            assert_eq!(
                read(pieces),
                Ok((expected.clone(), true)),
                "pieces of {cut}"
            );
        }
    }

    #[test]
    fn data_that_arrives_in_one_piece_is_not_copied() {
        let data = Bytes::from(vec![9u8; 1024 * 1024]);
        let mut reader = ChunkReader::new(4 * 1024 * 1024);
        let mut out = VecDeque::new();
        reader
            .push(download_chunk_prefix(data.len()), &mut out)
            .expect("a prefix");
        reader.push(data.clone(), &mut out).expect("data");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ptr(), data.as_ptr(), "the piece's own memory");
        assert!(reader.at_boundary());
    }

    #[test]
    fn other_layouts_are_decoded_whole() {
        // Field 1 sent twice (the last wins) and an unknown field 7: both
        // legal protobuf that the streaming path must not misread.
        let mut body = Vec::new();
        for (key, value) in [(0x0a, &b"old"[..]), (0x3a, b"unknown"), (0x0a, b"new")] {
            body.push(key);
            body.push(value.len() as u8);
            body.extend_from_slice(value);
        }
        let mut wire = vec![0];
        wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
        wire.extend_from_slice(&body);
        for cut in [1, 3, 7, wire.len()] {
            let pieces = wire.chunks(cut).map(<[u8]>::to_vec);
            assert_eq!(read(pieces), Ok((b"new".to_vec(), true)), "pieces of {cut}");
        }
    }

    #[test]
    fn a_body_cut_inside_a_message_is_not_at_a_boundary() {
        let wire = wire(&[chunk(100, 0)]);
        for end in [1, 5, 6, 50, wire.len() - 1] {
            let (_, boundary) = read([wire[..end].to_vec()]).expect("no error yet");
            assert!(!boundary, "cut at {end}");
        }
    }

    #[test]
    fn hostile_prefixes_are_refused() {
        let mut reader = ChunkReader::new(1024);
        let mut out = VecDeque::new();
        let too_large = Bytes::from_static(&[0, 0, 0, 4, 1, DATA_KEY]);
        assert_eq!(
            reader.push(too_large, &mut out),
            Err(ChunkError::TooLarge {
                len: 1025,
                max: 1024
            })
        );
        let mut reader = ChunkReader::new(1024);
        let compressed = Bytes::from_static(&[1, 0, 0, 0, 3, DATA_KEY, 1, 7]);
        assert_eq!(
            reader.push(compressed, &mut out),
            Err(ChunkError::Compressed)
        );
        let mut reader = ChunkReader::new(1024);
        // A field claiming more data than its message holds.
        let lying = Bytes::from_static(&[0, 0, 0, 0, 3, DATA_KEY, 100, 7]);
        assert!(matches!(
            reader.push(lying, &mut out),
            Err(ChunkError::Malformed(_))
        ));
    }
}

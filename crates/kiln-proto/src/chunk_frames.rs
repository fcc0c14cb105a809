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

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

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

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::v1::DownloadChunk;

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
}

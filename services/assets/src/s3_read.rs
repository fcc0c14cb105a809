//! Reads an object as the pieces its GET bodies arrive in. A large object
//! is read as several ranged GETs at once, handed on in order: one GET
//! stream runs at the speed of one connection and one store-side reader
//! (about half of what `aws s3 cp`, which also reads in parallel ranges,
//! gets from the same store). Memory stays bounded by the ranges in flight.
//!
//! A range's body is kept as the pieces it arrived in, not joined into one
//! buffer: joining copied every byte once more, into 8 MiB of fresh memory
//! per range.

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;

use crate::backend::ObjectReader;
use crate::error::Error;
use crate::part_plan;
use crate::s3::s3_error;
use crate::s3_deadline::{deadline, within_deadline};

/// Size of each ranged GET.
pub const RANGE_BYTES: u64 = 8 * 1024 * 1024;
/// Ranged GETs in flight for one read.
const RANGES_IN_FLIGHT: usize = 4;

/// The bytes of `key` from `offset` to its `size`, in parallel ranges.
pub fn ranged(client: &Client, bucket: &str, key: &str, offset: u64, size: u64) -> ObjectReader {
    let (client, bucket, key) = (client.clone(), bucket.to_owned(), key.to_owned());
    let ranges = futures::stream::iter(part_plan::ranges(offset, size, RANGE_BYTES))
        .map(move |(first, last)| {
            let request = client
                .get_object()
                .bucket(&bucket)
                .key(&key)
                .range(format!("bytes={first}-{last}"));
            async move {
                let pieces = within_deadline("get object range", last - first + 1, || async {
                    let object = request
                        .clone()
                        .send()
                        .await
                        .map_err(|err| s3_error("get object range", err))?;
                    let body = object.body.collect().await.map_err(|err| Error::S3 {
                        operation: "get object range",
                        message: err.to_string(),
                    })?;
                    Ok(body.into_segments().collect::<Vec<_>>())
                })
                .await
                .map_err(|err| std::io::Error::other(err.to_string()))?;
                let received: usize = pieces.iter().map(|piece| piece.len()).sum();
                if received as u64 != last - first + 1 {
                    return Err(std::io::Error::other(format!(
                        "range {first}-{last} answered with {received} bytes"
                    )));
                }
                Ok(futures::stream::iter(pieces.into_iter().map(Ok)))
            }
        })
        .buffered(RANGES_IN_FLIGHT)
        .flat_map(|range| match range {
            Ok(pieces) => pieces.left_stream(),
            Err(err) => futures::stream::once(async { Err(err) }).right_stream(),
        });
    Box::pin(ranges)
}

/// A whole GET body's pieces as they arrive. A body that stops arriving
/// (no piece within [`deadline`] of the last) ends with an error rather
/// than holding its download for ever.
pub fn pieces(body: ByteStream) -> ObjectReader {
    Box::pin(futures::stream::unfold(Some(body), |body| async move {
        let mut body = body?;
        match tokio::time::timeout(deadline(0), body.next()).await {
            Ok(piece) => Some((piece?.map_err(std::io::Error::other), Some(body))),
            Err(_) => Some((
                Err(std::io::Error::other(format!(
                    "the store sent no bytes for {} s",
                    deadline(0).as_secs()
                ))),
                None,
            )),
        }
    }))
}

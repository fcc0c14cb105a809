//! The Download call made beside the generated client, so that the bytes
//! it receives are not copied on their way in.
//!
//! tonic's decoder gathers a response into a buffer of its own before it
//! cuts messages out of it: one more copy of every byte a gateway passes
//! on or a worker writes to disk. This call sends what the generated
//! client sends (over the same channel, so credentials, deadlines,
//! balancing and metrics apply alike) and reads the response's pieces with
//! [`ChunkReader`], which slices each chunk out of them. It ends as tonic
//! would: with the status in the trailers (or alone, when the call failed
//! before its first chunk), and with an error for a response that stops
//! without one.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use kiln_proto::chunk_frames::{ChunkError, ChunkReader};
use kiln_proto::v1::DownloadRequest;
use prost::Message;
use tonic::{Code, Status};
use tower::{Service, ServiceExt};

use crate::AssetClientError;

/// The call's path, as the generated client names it.
const PATH: &str = "/kiln.v1.AssetService/Download";

/// Calls Download on `channel`; the chunks, or the status the call failed with
/// before its first.
pub(crate) async fn download<S, B>(
    mut channel: S,
    request: DownloadRequest,
    max_message: usize,
) -> Result<Chunks, AssetClientError>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Error: Into<tonic::codegen::StdError>,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    let mut message = BytesMut::with_capacity(5 + request.encoded_len());
    message.put_u8(0);
    // A digest and two numbers: far below u32::MAX.
    message.put_u32(u32::try_from(request.encoded_len()).unwrap_or(u32::MAX));
    request
        .encode(&mut message)
        .map_err(|err| Status::internal(format!("download: encoding the request: {err}")))?;
    let request = http::Request::builder()
        .method(http::Method::POST)
        .version(http::Version::HTTP_2)
        .uri(PATH)
        .header(TE, HeaderValue::from_static("trailers"))
        .header(CONTENT_TYPE, HeaderValue::from_static("application/grpc"))
        .body(tonic::body::Body::new(http_body_util::Full::new(
            message.freeze(),
        )))
        .map_err(|err| Status::internal(format!("download: building the request: {err}")))?;
    let channel = channel
        .ready()
        .await
        .map_err(|err| Status::from_error(err.into()))?;
    let response = channel
        .call(request)
        .await
        .map_err(|err| Status::from_error(err.into()))?;
    let (parts, body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        // Trailers-only: the call failed before its first chunk (or ended
        // with nothing to send).
        return match status.code() {
            Code::Ok => Ok(Box::pin(futures::stream::empty()) as Chunks),
            _ => Err(status.into()),
        };
    }
    Ok(Reading::stream(Reading {
        body: Some(body),
        http_status: parts.status,
        reader: ChunkReader::new(max_message),
        ready: VecDeque::new(),
    }))
}

/// A response being read.
struct Reading<B> {
    /// None once the response has ended.
    body: Option<B>,
    http_status: StatusCode,
    reader: ChunkReader,
    ready: VecDeque<Bytes>,
}

/// The chunks of a download, as they arrive.
pub(crate) type Chunks =
    std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, AssetClientError>> + Send>>;

impl<B> Reading<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    fn stream(self) -> Chunks {
        Box::pin(futures::stream::unfold(self, |mut reading| async move {
            let item = reading.next().await?;
            if item.is_err() {
                // Nothing after an error: data read before it in the same
                // frame is dropped, not handed on after the error.
                reading.body = None;
                reading.ready.clear();
            }
            Some((item.map_err(AssetClientError::from), reading))
        }))
    }

    /// The next chunk, the status the call ended with, or None after a
    /// clean end (or after an error was given).
    async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        // Bounded by the response: each pass hands on a chunk, ends, or
        // reads one more frame of a body that ends.
        loop {
            if let Some(data) = self.ready.pop_front() {
                return Some(Ok(data));
            }
            let body = self.body.as_mut()?;
            let frame = match body.frame().await {
                Some(Ok(frame)) => frame,
                Some(Err(err)) => return Some(Err(Status::from_error(err.into()))),
                None => return Some(Err(ended_without_status(self.http_status))),
            };
            let trailers = match frame.into_data() {
                Ok(data) => {
                    if let Err(err) = self.reader.push(data, &mut self.ready) {
                        // As tonic's decoder says it: a message over the
                        // bound is OUT_OF_RANGE, anything else INTERNAL.
                        let code = match err {
                            ChunkError::TooLarge { .. } => Code::OutOfRange,
                            _ => Code::Internal,
                        };
                        return Some(Err(Status::new(code, format!("download: {err}"))));
                    }
                    continue;
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => trailers,
                    // Neither data nor trailers: nothing a gRPC peer sends.
                    Err(_) => continue,
                },
            };
            self.body = None;
            return ended(&trailers, self.http_status, self.reader.at_boundary());
        }
    }
}

/// What a response's trailers say of how it ended.
fn ended(
    trailers: &HeaderMap,
    http_status: StatusCode,
    at_boundary: bool,
) -> Option<Result<Bytes, Status>> {
    match Status::from_header_map(trailers) {
        Some(status) if status.code() != Code::Ok => Some(Err(status)),
        Some(_) if at_boundary => None,
        Some(_) => Some(Err(Status::internal(
            "download: the response ended inside a message",
        ))),
        None => Some(Err(ended_without_status(http_status))),
    }
}

/// A response that stopped without a gRPC status: as tonic reads it, from
/// the HTTP status (gRPC's HTTP mapping) or as a protocol error.
fn ended_without_status(http_status: StatusCode) -> Status {
    let code = match http_status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(
        code,
        format!("download: the response ended without a status (HTTP {http_status})"),
    )
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures::StreamExt;
    use http_body::Frame;
    use kiln_proto::chunk_frames::download_chunk_prefix;

    use super::*;

    fn trailers(status: Status) -> Frame<Bytes> {
        let mut map = HeaderMap::new();
        status.add_header(&mut map).expect("a valid status");
        Frame::trailers(map)
    }

    /// What a response made of `frames` reads as: its chunks, then how it ended.
    async fn read(frames: Vec<Frame<Bytes>>) -> (Vec<Bytes>, Option<Code>) {
        let body = http_body_util::StreamBody::new(futures::stream::iter(
            frames.into_iter().map(Ok::<_, Infallible>),
        ));
        let reading = Reading {
            body: Some(body),
            http_status: StatusCode::OK,
            reader: ChunkReader::new(1024 * 1024),
            ready: VecDeque::new(),
        };
        let items: Vec<_> = reading.stream().collect().await;
        let mut chunks = Vec::new();
        let mut ended = None;
        for item in items {
            assert!(ended.is_none(), "nothing comes after an error");
            match item {
                Ok(chunk) => chunks.push(chunk),
                Err(err) => ended = Some(err.code()),
            }
        }
        (chunks, ended)
    }

    fn message(data: &'static [u8]) -> [Frame<Bytes>; 2] {
        [
            Frame::data(download_chunk_prefix(data.len())),
            Frame::data(Bytes::from_static(data)),
        ]
    }

    #[tokio::test]
    async fn chunks_then_a_clean_end() {
        let mut frames: Vec<_> = message(b"abc").into_iter().chain(message(b"de")).collect();
        frames.push(trailers(Status::ok("")));
        assert_eq!(
            read(frames).await,
            (
                vec![Bytes::from_static(b"abc"), Bytes::from_static(b"de")],
                None
            )
        );
    }

    #[tokio::test]
    async fn the_status_in_the_trailers_ends_the_chunks() {
        let mut frames: Vec<_> = message(b"abc").into();
        frames.push(trailers(Status::data_loss("corrupt")));
        assert_eq!(
            read(frames).await,
            (vec![Bytes::from_static(b"abc")], Some(Code::DataLoss))
        );
    }

    #[tokio::test]
    async fn a_response_that_stops_without_a_status_is_an_error() {
        let frames: Vec<_> = message(b"abc").into();
        assert_eq!(
            read(frames).await,
            (vec![Bytes::from_static(b"abc")], Some(Code::Unknown))
        );
    }

    #[tokio::test]
    async fn a_bad_message_after_a_good_one_in_the_same_frame_ends_the_chunks() {
        // One frame: a whole 3-byte message, then the prefix of one over
        // the reader's 1 MiB bound.
        let mut frame = download_chunk_prefix(3).to_vec();
        frame.extend_from_slice(b"abc");
        frame.extend_from_slice(&[0, 0, 0x20, 0, 0, 0x0a]);
        let frames = vec![Frame::data(Bytes::from(frame)), trailers(Status::ok(""))];
        let (chunks, ended) = read(frames).await;
        assert_eq!(ended, Some(Code::OutOfRange));
        assert!(chunks.is_empty(), "nothing is handed on around the error");
    }

    #[tokio::test]
    async fn a_clean_status_inside_a_message_is_an_error() {
        let frames = vec![
            Frame::data(download_chunk_prefix(10)),
            Frame::data(Bytes::from_static(b"abc")),
            trailers(Status::ok("")),
        ];
        assert_eq!(
            read(frames).await,
            (vec![Bytes::from_static(b"abc")], Some(Code::Internal))
        );
    }
}

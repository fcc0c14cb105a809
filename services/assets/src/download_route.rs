//! `Download` answered beside the generated server, so that the bytes it
//! sends are not copied on their way out.
//!
//! tonic's encoder copies each message into a buffer of its own before
//! h2 writes it; for a download that copy cost more than hashing the
//! bytes (`kiln_proto::chunk_frames`). This route reads the request with
//! tonic's own decoder and asks [`AssetsService::download_chunks`], as the
//! generated handler does, but sends each chunk as its gRPC prefix followed
//! by the chunk's own memory. Every other call goes to the generated server
//! untouched. What a client sees is the same: the same messages, and the
//! same status at the end (in trailers, or alone when the call fails before
//! its first chunk).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use kiln_proto::chunk_frames::download_chunk_prefix;
use kiln_proto::codec::LeanCodec;
use kiln_proto::v1::DownloadRequest;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::server::NamedService;

use crate::backend::Backend;
use crate::caller::Caller;
use crate::service::{AssetsService, ByteChunks};

/// The route this answers; the rest go to the generated server.
const PATH: &str = "/kiln.v1.AssetService/Download";
/// Largest request accepted: a digest and two numbers take well under this.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The generated server `inner`, with `Download` answered by `service`
/// without copying its bytes.
pub struct DownloadRoute<S, B> {
    inner: S,
    service: Arc<AssetsService<B>>,
}

impl<S, B> DownloadRoute<S, B> {
    pub fn new(inner: S, service: Arc<AssetsService<B>>) -> Self {
        Self { inner, service }
    }
}

impl<S: Clone, B> Clone for DownloadRoute<S, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            service: self.service.clone(),
        }
    }
}

impl<S, B> tower::Service<http::Request<Body>> for DownloadRoute<S, B>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
    B: Backend,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != PATH {
            return Box::pin(self.inner.call(request));
        }
        let service = self.service.clone();
        Box::pin(async move {
            Ok(match open(&service, request).await {
                Ok(chunks) => respond(chunks),
                Err(status) => status.into_http(),
            })
        })
    }
}

impl<S: NamedService, B> NamedService for DownloadRoute<S, B> {
    const NAME: &'static str = S::NAME;
}

/// The request's one message and caller, and what it downloads.
async fn open<B: Backend>(
    service: &AssetsService<B>,
    request: http::Request<Body>,
) -> Result<ByteChunks, Status> {
    let (parts, body) = request.into_parts();
    let caller = Caller::from_metadata(&tonic::metadata::MetadataMap::from_headers(parts.headers))?;
    // No compression accepted, as the generated server is set up: a
    // compressed message fails here with tonic's own error.
    let decoder = LeanCodec::<(), DownloadRequest>::default().decoder();
    let mut messages = Streaming::new_request(decoder, body, None, Some(MAX_REQUEST_BYTES));
    let message = messages
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("download: the request carried no message"))?;
    service.download_chunks(&caller, message).await
}

/// A gRPC response sending `chunks` as `DownloadChunk` messages, and its
/// status in trailers once they end.
fn respond(chunks: ByteChunks) -> http::Response<Body> {
    // Each step sends one chunk's frames, or the trailers that end the call.
    let frames = futures::stream::unfold(Some(chunks), |chunks| async move {
        let mut chunks = chunks?;
        Some(match chunks.next().await {
            Some(Ok(data)) => {
                let prefix = Frame::data(download_chunk_prefix(data.len()));
                let data = (!data.is_empty()).then(|| Frame::data(data));
                (std::iter::once(prefix).chain(data).collect(), Some(chunks))
            }
            Some(Err(status)) => (vec![Frame::trailers(trailers(&status))], None),
            None => (vec![Frame::trailers(trailers(&Status::ok("")))], None),
        })
    })
    .flat_map(|frames: Vec<Frame<Bytes>>| {
        futures::stream::iter(frames.into_iter().map(Ok::<_, Infallible>))
    });
    let mut response = http::Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// `status` as gRPC trailers.
fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only a message that cannot be a header value fails; the code alone
        // still tells the client what happened.
        map.insert("grpc-status", HeaderValue::from(status.code() as i32));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body's data frames and trailers.
    async fn frames_of(response: http::Response<Body>) -> (Vec<Bytes>, Option<HeaderMap>) {
        use http_body_util::BodyExt;
        let mut body = response.into_body();
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("the body does not fail");
            match frame.into_data() {
                Ok(bytes) => data.push(bytes),
                Err(frame) => {
                    assert!(trailers.is_none(), "one set of trailers");
                    trailers = frame.into_trailers().ok();
                }
            }
        }
        (data, trailers)
    }

    fn chunks(items: Vec<Result<Bytes, Status>>) -> ByteChunks {
        Box::pin(futures::stream::iter(items))
    }

    /// The messages in `bytes`, read as tonic's client reads them.
    async fn decode(bytes: Vec<Bytes>) -> Vec<Bytes> {
        let body = http_body_util::StreamBody::new(futures::stream::iter(
            bytes
                .into_iter()
                .map(|b| Ok::<_, Infallible>(Frame::data(b))),
        ));
        let decoder = LeanCodec::<(), kiln_proto::v1::DownloadChunk>::default().decoder();
        let mut messages = Streaming::new_request(decoder, body, None, None);
        let mut out = Vec::new();
        while let Some(message) = messages.message().await.expect("decodes") {
            out.push(message.data);
        }
        out
    }

    #[tokio::test]
    async fn chunks_arrive_as_the_messages_they_were() {
        let sent = vec![
            Bytes::from(vec![1u8; 1024 * 1024]),
            Bytes::from_static(b"x"),
            Bytes::new(),
            Bytes::from(vec![2u8; 300]),
        ];
        let response = respond(chunks(sent.iter().cloned().map(Ok).collect()));
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let (data, trailers) = frames_of(response).await;
        let trailers = trailers.expect("a clean end sends trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(decode(data).await, sent);
    }

    #[tokio::test]
    async fn a_failure_ends_the_call_with_its_status_and_nothing_after() {
        let response = respond(chunks(vec![
            Ok(Bytes::from_static(b"first")),
            Err(Status::data_loss("the store corrupted it")),
            Ok(Bytes::from_static(b"never sent")),
        ]));
        let (data, trailers) = frames_of(response).await;
        let trailers = trailers.expect("a failure is sent as trailers");
        let status = Status::from_header_map(&trailers).expect("a status");
        assert_eq!(status.code(), tonic::Code::DataLoss);
        assert_eq!(status.message(), "the store corrupted it");
        assert_eq!(decode(data).await, [Bytes::from_static(b"first")]);
    }
}

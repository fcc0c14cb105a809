//! Rate, errors and duration of every call, per service and method, on
//! both ends of every link: `kiln_grpc_client_*` in the caller (labelled
//! with the `upstream` it calls), `kiln_grpc_server_*` in the callee, and
//! `kiln_http_server_*` for REST. A call is counted when it ends, with its
//! gRPC status `code` (a stream ends with its trailers; one the caller
//! drops counts as CANCELLED), and its duration runs until then.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use metrics::SharedString;
use prost::Message;
use tonic::Code;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::BoxError;
use crate::methods::split_path;

pub const GRPC_CLIENT_REQUESTS: &str = "kiln_grpc_client_requests_total";
pub const GRPC_CLIENT_DURATION: &str = "kiln_grpc_client_request_duration_seconds";
pub const GRPC_SERVER_REQUESTS: &str = "kiln_grpc_server_requests_total";
pub const GRPC_SERVER_DURATION: &str = "kiln_grpc_server_request_duration_seconds";
pub const HTTP_SERVER_REQUESTS: &str = "kiln_http_server_requests_total";
pub const HTTP_SERVER_DURATION: &str = "kiln_http_server_request_duration_seconds";
/// Calls each replica was sent (attempts, retries included), by the caller.
pub const BALANCER_REQUESTS: &str = "kiln_balancer_endpoint_requests_total";
/// 1 while a replica is ejected, else 0.
pub const BALANCER_EJECTED: &str = "kiln_balancer_endpoint_ejected";
/// Replicas of an upstream the caller knows of.
pub const BALANCER_ENDPOINTS: &str = "kiln_balancer_endpoints";
pub const BALANCER_EJECTIONS: &str = "kiln_balancer_ejections_total";
pub const BALANCER_RETRIES: &str = "kiln_balancer_retries_total";
/// Calls refused at once because the queue in front of the upstream was full.
pub const BALANCER_SHED: &str = "kiln_balancer_shed_total";

/// Describes every metric above to the recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        GRPC_CLIENT_REQUESTS,
        "gRPC calls this process made, by upstream, service, method and status code"
    );
    describe_histogram!(
        GRPC_CLIENT_DURATION,
        Unit::Seconds,
        "gRPC calls this process made, from the call to its status"
    );
    describe_counter!(
        GRPC_SERVER_REQUESTS,
        "gRPC calls this process served, by service, method and status code"
    );
    describe_histogram!(
        GRPC_SERVER_DURATION,
        Unit::Seconds,
        "gRPC calls this process served, from the request to its status"
    );
    describe_counter!(
        HTTP_SERVER_REQUESTS,
        "HTTP requests this process served, by route, method and status"
    );
    describe_histogram!(
        HTTP_SERVER_DURATION,
        Unit::Seconds,
        "HTTP requests this process served, until the response head"
    );
    describe_counter!(
        BALANCER_REQUESTS,
        "Calls sent to each replica, retries included"
    );
    describe_gauge!(BALANCER_EJECTED, "1 while the replica is ejected, else 0");
    describe_gauge!(
        BALANCER_ENDPOINTS,
        "Replicas of the upstream listed in etcd"
    );
    describe_counter!(BALANCER_EJECTIONS, "Times a replica was ejected");
    describe_counter!(BALANCER_RETRIES, "Calls sent again to another replica");
    describe_counter!(
        BALANCER_SHED,
        "Calls refused because the queue in front of the upstream was full"
    );
}

/// The code of a finished call, as a label.
fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The gRPC code an error of the stack amounts to, as tonic's client will
/// report it.
pub fn code_of_error(error: &BoxError) -> Code {
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
        return status.code();
    }
    Code::Unavailable
}

/// The code in a response head (a trailers-only answer), if any.
pub fn code_of_head(headers: &HeaderMap) -> Option<Code> {
    headers
        .get(tonic::Status::GRPC_STATUS)
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// Labels of one call, decided when it starts.
#[derive(Clone)]
struct CallLabels {
    counter: &'static str,
    histogram: &'static str,
    labels: Vec<(&'static str, SharedString)>,
    started: Instant,
}

impl CallLabels {
    fn record(self, code: Code) {
        let mut labels: Vec<metrics::Label> = self
            .labels
            .iter()
            .map(|(key, value)| metrics::Label::new(*key, value.clone()))
            .collect();
        metrics::histogram!(self.histogram, labels.clone())
            .record(self.started.elapsed().as_secs_f64());
        labels.push(metrics::Label::new("code", code_label(code)));
        metrics::counter!(self.counter, labels).increment(1);
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the call ends.
    struct ObservedBody {
        #[pin]
        inner: Body,
        labels: Option<CallLabels>,
        head: Option<Code>,
    }

    impl PinnedDrop for ObservedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(labels) = this.labels.take() {
                labels.record(this.head.unwrap_or(Code::Cancelled));
            }
        }
    }
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|trailers| code_of_head(trailers).unwrap_or(Code::Unknown)),
            Poll::Ready(Some(Err(status))) => Some(status.code()),
            // A stream that ends without trailers ended as its head said,
            // or, without a status anywhere, as gRPC calls it: unknown.
            Poll::Ready(None) => Some(this.head.unwrap_or(Code::Unknown)),
            Poll::Pending => None,
        };
        // Only once the call ended: taking the labels on an earlier frame
        // would lose the call (every call was lost that way once).
        if let Some(code) = ended
            && let Some(labels) = this.labels.take()
        {
            labels.record(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps a response so its call is recorded when it ends.
fn observe(response: Response<Body>, labels: CallLabels) -> Response<Body> {
    let head = code_of_head(response.headers());
    response.map(|inner| {
        Body::new(ObservedBody {
            inner,
            labels: Some(labels),
            head,
        })
    })
}

/// `kiln_grpc_client_*` for the calls to one upstream.
#[derive(Debug, Clone, Copy)]
pub struct ClientMetricsLayer {
    upstream: &'static str,
}

impl ClientMetricsLayer {
    pub fn new(upstream: &'static str) -> Self {
        Self { upstream }
    }
}

impl<S> Layer<S> for ClientMetricsLayer {
    type Service = ClientMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientMetrics {
            inner,
            upstream: self.upstream,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientMetrics<S> {
    inner: S,
    upstream: &'static str,
}

impl<S> Service<Request<Body>> for ClientMetrics<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let (service, method) = split_path(request.uri().path()).unwrap_or(("unknown", "unknown"));
        let labels = CallLabels {
            counter: GRPC_CLIENT_REQUESTS,
            histogram: GRPC_CLIENT_DURATION,
            labels: vec![
                ("upstream", SharedString::const_str(self.upstream)),
                ("service", SharedString::from(service.to_owned())),
                ("method", SharedString::from(method.to_owned())),
            ],
            started: Instant::now(),
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            match call.await {
                Ok(response) => Ok(observe(response, labels)),
                Err(error) => {
                    labels.record(code_of_error(&error));
                    Err(error)
                }
            }
        })
    }
}

/// Every method a Kiln server serves, so that what a caller puts in a path
/// never becomes a label of its own.
fn known_methods() -> &'static HashSet<String> {
    static KNOWN: OnceLock<HashSet<String>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let mut known = HashSet::new();
        for encoded in [
            kiln_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
                continue;
            };
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        known.insert(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        known
    })
}

/// `kiln_grpc_server_*` for every call a server serves.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerMetricsLayer;

impl<S> Layer<S> for ServerMetricsLayer {
    type Service = ServerMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ServerMetrics<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ServerMetrics<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = match split_path(path) {
            Some(parts) if known_methods().contains(path) => parts,
            _ => ("unknown", "unknown"),
        };
        let labels = CallLabels {
            counter: GRPC_SERVER_REQUESTS,
            histogram: GRPC_SERVER_DURATION,
            labels: vec![
                ("service", SharedString::from(service.to_owned())),
                ("method", SharedString::from(method.to_owned())),
            ],
            started: Instant::now(),
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            match result {
                Ok(response) => Ok(observe(response, labels)),
                Err(error) => {
                    labels.record(Code::Internal);
                    Err(error)
                }
            }
        })
    }
}

/// `kiln_http_server_*`, as axum middleware: the route is the pattern it
/// matched (`/v1/jobs/{id}`), never the path a caller sent.
pub async fn http_server(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method: &'static str = match *request.method() {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_SERVER_DURATION, "route" => route.clone(), "method" => method)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(HTTP_SERVER_REQUESTS, "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A served unary call: one message, then trailers with `code`.
    fn answering(
        code: &'static str,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = std::convert::Infallible,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(move |_request: Request<Body>| async move {
            let mut trailers = HeaderMap::new();
            trailers.insert(
                tonic::Status::GRPC_STATUS,
                http::HeaderValue::from_static(code),
            );
            let frames: Vec<Result<Frame<Bytes>, tonic::Status>> = vec![
                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
            Ok::<_, std::convert::Infallible>(Response::new(Body::new(body)))
        })
    }

    fn request(path: &str) -> Request<Body> {
        Request::builder()
            .uri(format!("http://replica{path}"))
            .body(Body::empty())
            .expect("a request")
    }

    /// Serves `request` through the server layer and reads the whole answer,
    /// as hyper would, with `recorder` as the process's recorder.
    fn serve(
        recorder: &metrics_exporter_prometheus::PrometheusRecorder,
        code: &'static str,
        path: &str,
    ) {
        use http_body_util::BodyExt;
        metrics::with_local_recorder(recorder, || {
            futures::executor::block_on(async {
                let mut service = ServerMetricsLayer.layer(answering(code));
                let response = service.call(request(path)).await.expect("served");
                response
                    .into_body()
                    .collect()
                    .await
                    .expect("the whole body");
            })
        });
    }

    #[test]
    fn served_calls_are_counted_by_method_and_code() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        serve(&recorder, "0", "/kiln.v1.JobService/SubmitJob");
        serve(&recorder, "0", "/kiln.v1.JobService/SubmitJob");
        serve(&recorder, "5", "/kiln.v1.JobService/GetJob");
        let text = handle.render();
        assert!(
            text.contains(
                r#"kiln_grpc_server_requests_total{service="kiln.v1.JobService",method="SubmitJob",code="OK"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"kiln_grpc_server_requests_total{service="kiln.v1.JobService",method="GetJob",code="NOT_FOUND"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("kiln_grpc_server_request_duration_seconds_count{service=\"kiln.v1.JobService\",method=\"SubmitJob\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn only_methods_of_kiln_and_health_are_known() {
        let known = known_methods();
        assert!(known.contains("/kiln.v1.JobService/SubmitJob"));
        assert!(known.contains("/kiln.v1.AssetService/Upload"));
        assert!(known.contains("/grpc.health.v1.Health/Check"));
        assert!(!known.contains("/kiln.v1.JobService/Nope"));
    }
}

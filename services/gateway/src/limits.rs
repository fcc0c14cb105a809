//! Every limit of the gateway, composed as tower layers in one place, in the
//! order they apply: REST's request metrics (gRPC's are every server's,
//! `kiln-mesh`), the guard (header size, token looked up within the peer's
//! allowance, per-token rate), then the bounded queue that sheds load
//! (`shed.rs`), then streams per token, body sizes and timeouts, for REST
//! and for gRPC.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::StatusCode;
use kiln_service::keyed_permits::KeyedPermits;
use tonic::Status;
use uuid::Uuid;

use crate::config::LimitArgs;
use crate::guard::{self, Guard, Protocol};
use crate::lookup_limit::LookupLimiter;
use crate::rate_limit::TokenRateLimiter;
use crate::rest::{self, ApiError, RestState};
use crate::sessions::SessionStore;
use crate::shed::{self, EdgeQueue};
use crate::stream_limit::{self, StreamLimit};
use crate::tokens::TokenStore;

/// How often idle tokens are dropped from the rate limiter's table.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

/// The limits shared by REST and gRPC; one rate limiter, so a token's
/// allowance covers both.
pub struct Limits {
    args: LimitArgs,
    store: TokenStore,
    limiter: Arc<TokenRateLimiter>,
    lookups: Arc<LookupLimiter>,
    /// Open streams per token, REST and gRPC together.
    streams: KeyedPermits<Uuid>,
}

impl Limits {
    pub fn new(args: &LimitArgs, store: TokenStore) -> Self {
        let per_second = NonZeroU32::new(args.rate_limit_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(args.rate_limit_burst).unwrap_or(NonZeroU32::MIN);
        let limiter = Arc::new(TokenRateLimiter::new(per_second, burst));
        let lookups = Arc::new(LookupLimiter::new(
            NonZeroU32::new(args.max_token_lookups_per_peer).unwrap_or(NonZeroU32::MIN),
            NonZeroU32::new(args.token_lookup_burst).unwrap_or(NonZeroU32::MIN),
            args.max_concurrent_token_lookups as usize,
        ));
        let (idle, idle_peers) = (Arc::downgrade(&limiter), Arc::downgrade(&lookups));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FORGET_IDLE_EVERY);
            loop {
                tick.tick().await;
                match (idle.upgrade(), idle_peers.upgrade()) {
                    (Some(limiter), Some(lookups)) => {
                        limiter.forget_idle();
                        lookups.forget_idle();
                    }
                    _ => return,
                }
            }
        });
        Self {
            args: args.clone(),
            store,
            limiter,
            lookups,
            streams: KeyedPermits::new(args.max_streams_per_token),
        }
    }

    pub fn max_grpc_message_bytes(&self) -> usize {
        self.args.max_grpc_message_bytes
    }

    /// The allowance of token lookups per peer, shared with the dashboard's
    /// login (which checks a pasted token outside the guard).
    pub fn lookups(&self) -> Arc<LookupLimiter> {
        self.lookups.clone()
    }

    fn guard(&self, protocol: Protocol) -> Arc<Guard> {
        Arc::new(Guard {
            protocol,
            store: self.store.clone(),
            sessions: (protocol == Protocol::Rest).then(|| SessionStore::new(&self.store)),
            limiter: self.limiter.clone(),
            lookups: self.lookups.clone(),
            max_header_bytes: self.args.max_header_bytes,
        })
    }

    fn streams(&self, protocol: Protocol) -> Arc<StreamLimit> {
        Arc::new(StreamLimit {
            protocol,
            permits: self.streams.clone(),
        })
    }

    /// The REST application with its limits.
    pub fn rest(&self, state: RestState) -> Router {
        let timeout = Duration::from_secs(self.args.request_timeout_seconds);
        let json = rest::json_routes()
            .layer(DefaultBodyLimit::max(self.args.max_json_bytes))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::GATEWAY_TIMEOUT,
                timeout,
            ));
        let streaming = rest::streaming_routes()
            .layer(DefaultBodyLimit::disable())
            .layer(tower_http::limit::RequestBodyLimitLayer::new(
                self.args.max_upload_bytes,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.streams(Protocol::Rest),
                stream_limit::hold,
            ));
        let routes: Router<RestState> = json.merge(streaming).into();
        // The dashboard's pages and login: small bodies, quick answers.
        let pages = crate::dashboard::routes()
            .layer(DefaultBodyLimit::max(self.args.max_json_bytes))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::GATEWAY_TIMEOUT,
                timeout,
            ));
        Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .merge(routes)
            .merge(pages)
            .fallback(|| async { ApiError::not_found() })
            .with_state(state)
            .layer(axum::middleware::from_fn_with_state(
                self.queue(Protocol::Rest),
                shed::admit,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.guard(Protocol::Rest),
                guard::check,
            ))
            .layer(axum::middleware::from_fn(kiln_mesh::metrics::http_server))
    }

    /// The gRPC services with their limits (message sizes are set on each service).
    pub fn grpc(&self, routes: tonic::service::Routes) -> tonic::service::Routes {
        let timeout = Duration::from_secs(self.args.request_timeout_seconds);
        let router = routes
            .into_axum_router()
            .layer(axum::middleware::from_fn_with_state(timeout, grpc_deadline))
            .layer(axum::middleware::from_fn(malformed_is_invalid_argument))
            .layer(axum::middleware::from_fn_with_state(
                self.streams(Protocol::Grpc),
                stream_limit::hold,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.queue(Protocol::Grpc),
                shed::admit,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.guard(Protocol::Grpc),
                guard::check,
            ));
        tonic::service::Routes::from(router)
    }

    /// The bounded queue for one protocol (each has its own).
    fn queue(&self, protocol: Protocol) -> Arc<EdgeQueue> {
        Arc::new(EdgeQueue::new(
            protocol,
            self.args.max_concurrent_requests as usize,
            self.args.max_queued_requests as usize,
        ))
    }
}

/// How tonic's prost codec begins the message of a request it cannot decode.
const DECODE_FAILURE: &str = "failed to decode Protobuf message";

/// tonic answers a request message it cannot decode with INTERNAL (gRPC's
/// convention); at Kiln's edge bad input is INVALID_ARGUMENT, so clients and
/// alerts do not take a caller's garbage for the gateway's own failure.
async fn malformed_is_invalid_argument(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() == tonic::Code::Internal && status.message().starts_with(DECODE_FAILURE) {
        let headers = response.headers_mut();
        headers.remove(Status::GRPC_STATUS);
        headers.remove(Status::GRPC_MESSAGE);
        if let Err(error) = Status::invalid_argument(status.message()).add_header(headers) {
            tracing::warn!(%error, "cannot rewrite a decode failure");
        }
    }
    response
}

/// Calls whose request is a stream: an upload takes as long as its bytes do.
const CLIENT_STREAMING: &[&str] = &["/kiln.v1.AssetService/Upload"];

/// Answers DEADLINE_EXCEEDED when a call has not started answering within
/// `limit`. Only the wait for the response head counts, so a server stream
/// (a watch, a download) may then run as long as it likes.
async fn grpc_deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    if CLIENT_STREAMING.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let path = request.uri().path().to_owned();
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(path, limit_seconds = limit.as_secs(), "grpc call timed out");
            Status::deadline_exceeded(format!(
                "the gateway gave up after {} s (--request-timeout-seconds)",
                limit.as_secs()
            ))
            .into_http::<axum::body::Body>()
        }
    }
}

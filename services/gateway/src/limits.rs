//! Every limit of the gateway, composed as tower layers in one place: the
//! guard (header size, token, per-token rate), body sizes, timeouts and
//! concurrency, for REST and for gRPC.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::StatusCode;
use tonic::Status;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::config::LimitArgs;
use crate::guard::{self, Guard, Protocol};
use crate::rate_limit::TokenRateLimiter;
use crate::rest::{self, ApiError, RestState};
use crate::sessions::SessionStore;
use crate::tokens::TokenStore;

/// How often idle tokens are dropped from the rate limiter's table.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

/// The limits shared by REST and gRPC; one rate limiter, so a token's
/// allowance covers both.
pub struct Limits {
    args: LimitArgs,
    store: TokenStore,
    limiter: Arc<TokenRateLimiter>,
}

impl Limits {
    pub fn new(args: &LimitArgs, store: TokenStore) -> Self {
        let per_second = NonZeroU32::new(args.rate_limit_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(args.rate_limit_burst).unwrap_or(NonZeroU32::MIN);
        let limiter = Arc::new(TokenRateLimiter::new(per_second, burst));
        let idle = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FORGET_IDLE_EVERY);
            loop {
                tick.tick().await;
                match idle.upgrade() {
                    Some(limiter) => limiter.forget_idle(),
                    None => return,
                }
            }
        });
        Self {
            args: args.clone(),
            store,
            limiter,
        }
    }

    pub fn max_grpc_message_bytes(&self) -> usize {
        self.args.max_grpc_message_bytes
    }

    fn guard(&self, protocol: Protocol) -> Arc<Guard> {
        Arc::new(Guard {
            protocol,
            store: self.store.clone(),
            sessions: (protocol == Protocol::Rest).then(|| SessionStore::new(&self.store)),
            limiter: self.limiter.clone(),
            max_header_bytes: self.args.max_header_bytes,
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
                self.guard(Protocol::Rest),
                guard::check,
            ))
            .layer(GlobalConcurrencyLimitLayer::new(self.concurrency()))
    }

    /// The gRPC services with their limits (message sizes are set on each service).
    pub fn grpc(&self, routes: tonic::service::Routes) -> tonic::service::Routes {
        let timeout = Duration::from_secs(self.args.request_timeout_seconds);
        let router = routes
            .into_axum_router()
            .layer(axum::middleware::from_fn_with_state(timeout, grpc_deadline))
            .layer(axum::middleware::from_fn(malformed_is_invalid_argument))
            .layer(axum::middleware::from_fn_with_state(
                self.guard(Protocol::Grpc),
                guard::check,
            ))
            .layer(GlobalConcurrencyLimitLayer::new(self.concurrency()));
        tonic::service::Routes::from(router)
    }

    fn concurrency(&self) -> usize {
        self.args.max_concurrent_requests as usize
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

//! The gate every request passes: header size, bearer token, rate limit.
//!
//! One middleware serves REST and gRPC alike; only how a refusal is written
//! differs (a JSON error, or a gRPC status in trailers-only form). It runs
//! before the concurrency limit, so what it refuses never takes a slot real
//! users wait for, and a token the cache does not know is looked up only
//! within the caller's allowance (`lookup_limit.rs`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tonic::Status;

use crate::lookup_limit::{LookupLimiter, LookupRefusal, peer_of};
use crate::rate_limit::{TokenRateLimiter, Verdict};
use crate::rest::ApiError;
use crate::tokens::TokenStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Rest,
    Grpc,
}

pub struct Guard {
    pub protocol: Protocol,
    pub store: TokenStore,
    pub limiter: Arc<TokenRateLimiter>,
    pub lookups: Arc<LookupLimiter>,
    pub max_header_bytes: usize,
}

enum Refusal {
    HeadersTooLarge(usize),
    Unauthenticated(&'static str),
    Unavailable,
    RateLimited(Verdict),
    /// The peer used its allowance of token lookups.
    TooManyLookups(Duration),
    /// Every token lookup slot stayed busy.
    LookupsBusy,
}

/// Checks the request and puts its [`crate::auth::Principal`] into its extensions.
pub async fn check(State(guard): State<Arc<Guard>>, mut request: Request, next: Next) -> Response {
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let size = header_bytes(request.headers());
    if size > guard.max_header_bytes {
        return guard.refuse(Refusal::HeadersTooLarge(guard.max_header_bytes));
    }
    let Some(secret) = bearer(request.headers()) else {
        return guard.refuse(Refusal::Unauthenticated(
            "a bearer token is required (header authorization: Bearer <token>)",
        ));
    };
    let known = match guard.store.cached(secret) {
        Some(known) => known,
        None => {
            // Only Postgres can tell: within the peer's allowance, a few at a time.
            let peer = peer_of(&request);
            let _slot = match guard.lookups.admit(peer).await {
                Ok(slot) => slot,
                Err(LookupRefusal::PeerExhausted(wait)) => {
                    tracing::debug!(%peer, "too many token lookups");
                    return guard.refuse(Refusal::TooManyLookups(wait));
                }
                Err(LookupRefusal::Busy) => return guard.refuse(Refusal::LookupsBusy),
            };
            match guard.store.look_up(secret).await {
                Ok(known) => known,
                Err(err) => {
                    tracing::error!(error = %err, "cannot check a token");
                    return guard.refuse(Refusal::Unavailable);
                }
            }
        }
    };
    let Some(principal) = known else {
        return guard.refuse(Refusal::Unauthenticated("unknown or revoked token"));
    };
    let verdict = guard.limiter.check(principal.token_id);
    if matches!(verdict, Verdict::Limited { .. }) {
        tracing::debug!(token = %principal.name, "rate limited");
        return guard.refuse(Refusal::RateLimited(verdict));
    }
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    guard.limiter.headers(&verdict, response.headers_mut());
    response
}

impl Guard {
    fn refuse(&self, refusal: Refusal) -> Response {
        let mut response = match self.protocol {
            Protocol::Rest => rest_refusal(&refusal),
            Protocol::Grpc => grpc_refusal(&refusal),
        };
        match &refusal {
            Refusal::Unauthenticated(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Refusal::RateLimited(verdict) => self.limiter.headers(verdict, response.headers_mut()),
            Refusal::TooManyLookups(wait) => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs().max(1)),
                );
            }
            Refusal::HeadersTooLarge(_) | Refusal::Unavailable | Refusal::LookupsBusy => {}
        }
        response
    }
}

fn rest_refusal(refusal: &Refusal) -> Response {
    match refusal {
        Refusal::HeadersTooLarge(limit) => ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request headers exceed {limit} bytes"),
        ),
        Refusal::Unauthenticated(why) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", *why)
        }
        Refusal::Unavailable => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the token store is unavailable",
        ),
        Refusal::RateLimited(verdict) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many requests for this token; retry in {}",
                wait_text(verdict)
            ),
        ),
        Refusal::TooManyLookups(wait) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "resource_exhausted",
            lookups_text(*wait),
        ),
        Refusal::LookupsBusy => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", LOOKUPS_BUSY)
        }
    }
    .into_response()
}

fn grpc_refusal(refusal: &Refusal) -> Response {
    let status = match refusal {
        Refusal::HeadersTooLarge(limit) => {
            Status::invalid_argument(format!("request metadata exceeds {limit} bytes"))
        }
        Refusal::Unauthenticated(why) => Status::unauthenticated(*why),
        Refusal::Unavailable => Status::unavailable("the token store is unavailable"),
        Refusal::RateLimited(verdict) => Status::resource_exhausted(format!(
            "too many requests for this token; retry in {}",
            wait_text(verdict)
        )),
        Refusal::TooManyLookups(wait) => Status::resource_exhausted(lookups_text(*wait)),
        Refusal::LookupsBusy => Status::unavailable(LOOKUPS_BUSY),
    };
    status.into_http::<axum::body::Body>()
}

const LOOKUPS_BUSY: &str = "too many token lookups at once; retry shortly";

fn lookups_text(wait: Duration) -> String {
    format!(
        "quota max-token-lookups-per-peer: too many requests with tokens this gateway does not know from this address; retry in {} ms",
        wait.as_millis()
    )
}

fn wait_text(verdict: &Verdict) -> String {
    let wait = match verdict {
        Verdict::Limited { retry_after } => *retry_after,
        Verdict::Allowed { .. } => Duration::ZERO,
    };
    format!("{} ms", wait.as_millis())
}

/// Health checks answer without a token, so orchestrators need none.
fn is_public(path: &str) -> bool {
    path == "/healthz" || path.starts_with("/grpc.health.v1.Health/")
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    let secret = secret.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty()).then_some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_never_empty() {
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer kiln_abc")])),
            Some("kiln_abc")
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer  kiln_abc ")])),
            Some("kiln_abc")
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "Basic dXNlcg==")])),
            None
        );
        assert_eq!(bearer(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(bearer(&headers(&[])), None);
    }

    #[test]
    fn only_health_checks_are_public() {
        assert!(is_public("/healthz"));
        assert!(is_public("/grpc.health.v1.Health/Check"));
        assert!(!is_public("/v1/jobs"));
        assert!(!is_public("/openapi.json"));
        assert!(!is_public(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
    }
}

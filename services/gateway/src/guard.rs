//! The gate every request passes: header size, bearer token, rate limit.
//!
//! One middleware serves REST and gRPC alike; only how a refusal is written
//! differs (a JSON error, or a gRPC status in trailers-only form). It runs
//! before the concurrency limit, so what it refuses never takes a slot real
//! users wait for, and a token the cache does not know is looked up only
//! within the caller's allowance (`lookup_limit.rs`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use kiln_proto::status::resource_exhausted;
use tokio::sync::SemaphorePermit;
use tonic::Status;

use crate::auth::Principal;
use crate::dashboard;
use crate::lookup_limit::{LookupLimiter, LookupRefusal, peer_of};
use crate::rate_limit::{TokenRateLimiter, Verdict};
use crate::rest::ApiError;
use crate::sessions::{Session, SessionStore};
use crate::tokens::TokenStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Rest,
    Grpc,
}

pub struct Guard {
    pub protocol: Protocol,
    pub store: TokenStore,
    /// Dashboard sessions (REST only): a cookie instead of a bearer token,
    /// with a CSRF secret every state-changing call must echo.
    pub sessions: Option<SessionStore>,
    pub limiter: Arc<TokenRateLimiter>,
    pub lookups: Arc<LookupLimiter>,
    pub max_header_bytes: usize,
}

enum Refusal {
    HeadersTooLarge(usize),
    Unauthenticated(&'static str),
    /// A cookie-authenticated change without the session's CSRF secret, or
    /// from another origin.
    Forgery(&'static str),
    /// A dashboard page asked for without a session: go and log in.
    LogIn,
    Unavailable,
    RateLimited(Verdict),
    /// The peer used its allowance of token lookups.
    TooManyLookups(Duration),
    /// Every token lookup slot stayed busy.
    LookupsBusy,
}

/// Checks the request and puts its [`crate::auth::Principal`] into its extensions.
pub async fn check(State(guard): State<Arc<Guard>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if is_public(path) || (guard.sessions.is_some() && dashboard::is_public(path)) {
        return next.run(request).await;
    }
    let size = header_bytes(request.headers());
    if size > guard.max_header_bytes {
        return guard.refuse(Refusal::HeadersTooLarge(guard.max_header_bytes));
    }
    let page = guard.sessions.is_some() && dashboard::is_page(path);
    let peer = peer_of(&request);
    let mut csrf = None;
    let principal = match (bearer(request.headers()), &guard.sessions) {
        (Some(secret), _) => match guard.token(peer, secret).await {
            Ok(principal) => principal,
            Err(refusal) => return guard.refuse(refusal),
        },
        (None, Some(sessions)) => match dashboard::session_cookie(request.headers()) {
            Some(secret) => match guard.session(peer, sessions, secret).await {
                Ok(Some(session)) => {
                    if let Err(why) = dashboard::check_forgery(&request, &session) {
                        return guard.refuse(Refusal::Forgery(why));
                    }
                    csrf = Some(dashboard::Csrf(session.csrf));
                    session.principal
                }
                Ok(None) if page => return guard.refuse(Refusal::LogIn),
                Ok(None) => {
                    return guard.refuse(Refusal::Unauthenticated(
                        "the session has ended; log in again",
                    ));
                }
                Err(refusal) => return guard.refuse(refusal),
            },
            None if page => return guard.refuse(Refusal::LogIn),
            None => {
                return guard.refuse(Refusal::Unauthenticated(
                    "a bearer token is required (header authorization: Bearer <token>)",
                ));
            }
        },
        (None, None) => {
            return guard.refuse(Refusal::Unauthenticated(
                "a bearer token is required (header authorization: Bearer <token>)",
            ));
        }
    };
    let verdict = guard.limiter.check(principal.token_id);
    if matches!(verdict, Verdict::Limited { .. }) {
        tracing::debug!(token = %principal.name, "rate limited");
        return guard.refuse(Refusal::RateLimited(verdict));
    }
    request.extensions_mut().insert(principal);
    if let Some(csrf) = csrf {
        request.extensions_mut().insert(csrf);
    }
    let mut response = next.run(request).await;
    guard.limiter.headers(&verdict, response.headers_mut());
    response
}

impl Guard {
    /// The live token a bearer secret stands for: from the cache, or from
    /// Postgres within the peer's allowance of lookups.
    async fn token(&self, peer: IpAddr, secret: &str) -> Result<Principal, Refusal> {
        let known = match self.store.cached(secret) {
            Some(known) => known,
            None => {
                let _slot = self.lookup_slot(peer).await?;
                self.store.look_up(secret).await.map_err(|err| {
                    tracing::error!(error = %err, "cannot check a token");
                    Refusal::Unavailable
                })?
            }
        };
        known.ok_or(Refusal::Unauthenticated("unknown or revoked token"))
    }

    /// The live session a cookie secret names, if any, under the same
    /// allowance of lookups as tokens: a flood of made-up cookies reaches
    /// Postgres no faster than one of made-up tokens.
    async fn session(
        &self,
        peer: IpAddr,
        sessions: &SessionStore,
        secret: &str,
    ) -> Result<Option<Session>, Refusal> {
        if let Some(known) = sessions.cached(secret) {
            return Ok(known);
        }
        let _slot = self.lookup_slot(peer).await?;
        sessions.look_up(secret).await.map_err(|err| {
            tracing::error!(error = %err, "cannot check a session");
            Refusal::Unavailable
        })
    }

    /// A slot to ask Postgres about a secret: within the peer's allowance,
    /// a few at a time.
    async fn lookup_slot(&self, peer: IpAddr) -> Result<SemaphorePermit<'_>, Refusal> {
        self.lookups
            .admit(peer)
            .await
            .map_err(|refusal| match refusal {
                LookupRefusal::PeerExhausted(wait) => {
                    tracing::debug!(%peer, "too many token lookups");
                    Refusal::TooManyLookups(wait)
                }
                LookupRefusal::Busy => Refusal::LookupsBusy,
            })
    }

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
            Refusal::HeadersTooLarge(_)
            | Refusal::Unavailable
            | Refusal::LookupsBusy
            | Refusal::Forgery(_)
            | Refusal::LogIn => {}
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
        Refusal::Forgery(why) => ApiError::new(StatusCode::FORBIDDEN, "csrf", *why),
        Refusal::LogIn => return dashboard::to_login(),
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
        Refusal::Forgery(why) => Status::permission_denied(*why),
        Refusal::LogIn => Status::unauthenticated("log in"),
        Refusal::Unavailable => Status::unavailable("the token store is unavailable"),
        // RetryInfo gives the same delay as the REST answer's Retry-After.
        Refusal::RateLimited(verdict) => resource_exhausted(
            format!(
                "too many requests for this token; retry in {}",
                wait_text(verdict)
            ),
            match verdict {
                Verdict::Limited { retry_after } => Some(retry_seconds(*retry_after)),
                Verdict::Allowed { .. } => None,
            },
        ),
        Refusal::TooManyLookups(wait) => resource_exhausted(
            lookups_text(*wait),
            Some(u32::try_from(wait.as_secs().max(1)).unwrap_or(u32::MAX)),
        ),
        Refusal::LookupsBusy => Status::unavailable(LOOKUPS_BUSY),
    };
    status.into_http::<axum::body::Body>()
}

/// Whole seconds as Retry-After gives them, within a u32.
fn retry_seconds(wait: Duration) -> u32 {
    u32::try_from(crate::rate_limit::seconds_ceil(wait)).unwrap_or(u32::MAX)
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

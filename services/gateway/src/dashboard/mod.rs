//! The web dashboard, served by the gateway at `/` on its REST port:
//! server-rendered HTML (`pages.rs`, `html.rs`) with one small vanilla
//! script and one stylesheet embedded in the binary (`assets/`), so the
//! project needs no Node toolchain to build and the page fetches nothing
//! from the internet (its Content-Security-Policy allows only this origin).
//! Everything live comes from the REST API's SSE streams.
//!
//! Login: the user pastes a token once; it is exchanged for a session
//! cookie (`HttpOnly`, `SameSite=Strict`, `Secure` under TLS), because
//! `EventSource` cannot send an `Authorization` header. The guard
//! (`guard.rs`) accepts the cookie on every REST route, and refuses a
//! state-changing call made with it unless it carries the session's CSRF
//! secret (header `x-csrf-token`, which pages read from a `<meta>` tag) and
//! comes from this origin.

mod html;
mod pages;

use axum::Router;
use std::sync::Arc;

use axum::extract::{Extension, Form, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::lookup_limit::{LookupLimiter, peer_of};
use crate::rest::RestState;
use crate::sessions::{SESSION_HOURS, Session, SessionStore};
use crate::tokens::TokenStore;

/// The cookie holding a session's secret.
pub const COOKIE: &str = "kiln_session";
/// The header a cookie-authenticated change must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

const SCRIPT: &str = include_str!("assets/kiln.js");
const STYLE: &str = include_str!("assets/kiln.css");
const ICON: &str = include_str!("assets/favicon.svg");

/// What the login needs: tokens to check, sessions to open.
#[derive(Clone)]
pub struct Dashboard {
    tokens: TokenStore,
    sessions: SessionStore,
    /// The guard's allowance of token lookups per peer: the login form is
    /// no way around it to guess tokens.
    lookups: Arc<LookupLimiter>,
    /// Cookies are marked `Secure` when the gateway serves TLS.
    secure: bool,
}

impl Dashboard {
    pub fn new(tokens: &TokenStore, secure: bool, lookups: Arc<LookupLimiter>) -> Self {
        Self {
            tokens: tokens.clone(),
            sessions: SessionStore::new(tokens),
            lookups,
            secure,
        }
    }

    /// The live token a pasted secret stands for; `Ok(None)` for none, and
    /// an error when the peer used its allowance of lookups.
    async fn check_token(
        &self,
        peer: std::net::IpAddr,
        secret: &str,
    ) -> Result<Option<Principal>, LoginRefusal> {
        if let Some(known) = self.tokens.cached(secret) {
            return Ok(known);
        }
        let _slot = self
            .lookups
            .admit(peer)
            .await
            .map_err(|_| LoginRefusal::TooManyAttempts)?;
        Ok(self.tokens.look_up(secret).await?)
    }
}

/// Why a login could not check its token.
enum LoginRefusal {
    TooManyAttempts,
    Store(GatewayError),
}

impl From<GatewayError> for LoginRefusal {
    fn from(err: GatewayError) -> Self {
        Self::Store(err)
    }
}

/// The session's CSRF secret, put in a request's extensions by the guard
/// when a session cookie authenticated it.
#[derive(Debug, Clone)]
pub struct Csrf(pub String);

pub fn routes() -> Router<RestState> {
    Router::new()
        .route("/", get(pages::jobs))
        .route("/jobs/{id}", get(pages::job))
        .route("/workers", get(pages::workers))
        .route("/timeline", get(pages::timeline))
        .route("/submit", get(pages::submit))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/static/kiln.js", get(|| asset(SCRIPT, "text/javascript")))
        .route("/static/kiln.css", get(|| asset(STYLE, "text/css")))
        .route("/favicon.ico", get(|| asset(ICON, "image/svg+xml")))
}

/// Paths served without a session: the login and the embedded assets.
pub fn is_public(path: &str) -> bool {
    matches!(path, "/login" | "/favicon.ico") || path.starts_with("/static/")
}

/// Pages that send a visitor without a session to the login.
pub fn is_page(path: &str) -> bool {
    matches!(path, "/" | "/workers" | "/timeline" | "/submit")
        || path
            .strip_prefix("/jobs/")
            .is_some_and(|id| !id.contains('/'))
}

/// A redirect to the login page.
pub fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

/// The session secret a request's cookie carries.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// Refuses a cookie-authenticated change that does not echo the session's
/// CSRF secret, or that a page of another origin sent.
pub fn check_forgery(request: &Request, session: &Session) -> Result<(), &'static str> {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return Ok(());
    }
    let headers = request.headers();
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_host = origin.split_once("://").map(|(_, rest)| rest);
        if origin_host.is_none() || origin_host != host {
            return Err("cross-origin request refused");
        }
    }
    let presented = headers
        .get(CSRF_HEADER)
        .map_or(&[][..], HeaderValue::as_bytes);
    if bool::from(subtle::ConstantTimeEq::ct_eq(
        presented,
        session.csrf.as_bytes(),
    )) {
        Ok(())
    } else {
        Err("a change made with a session cookie needs the session's x-csrf-token header")
    }
}

async fn asset(body: &'static str, mime: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn login_page() -> Response {
    html::login(None).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(state): State<RestState>, request: Request) -> Response {
    let peer = peer_of(&request);
    let Ok(Form(form)) = Form::<LoginForm>::from_request(request, &state).await else {
        return (StatusCode::BAD_REQUEST, html::login(Some("paste a token"))).into_response();
    };
    let dashboard = &state.dashboard;
    let principal = match dashboard.check_token(peer, form.token.trim()).await {
        Ok(Some(principal)) => principal,
        Ok(None) => {
            return (
                StatusCode::UNAUTHORIZED,
                html::login(Some("unknown or revoked token")),
            )
                .into_response();
        }
        Err(LoginRefusal::TooManyAttempts) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                html::login(Some("too many attempts; wait a minute and try again")),
            )
                .into_response();
        }
        Err(LoginRefusal::Store(err)) => {
            tracing::error!(error = %err, "cannot check a token at login");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                html::login(Some("the token store is unavailable; try again")),
            )
                .into_response();
        }
    };
    let (secret, _csrf) = match dashboard.sessions.open(&principal).await {
        Ok(opened) => opened,
        Err(err) => {
            tracing::error!(error = %err, "cannot open a session");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                html::login(Some("cannot open a session; try again")),
            )
                .into_response();
        }
    };
    tracing::info!(user = %principal.name, role = principal.role.as_str(), "dashboard login");
    let cookie = format!(
        "{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_HOURS * 3600,
        if dashboard.secure { "; Secure" } else { "" }
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Ends the session (a state change: the guard checked its CSRF secret).
async fn logout(State(state): State<RestState>, headers: HeaderMap) -> Response {
    if let Some(secret) = session_cookie(&headers)
        && let Err(err) = state.dashboard.sessions.close(secret).await
    {
        tracing::warn!(error = %err, "cannot end a session");
    }
    let expired = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The CSRF secret of the session a page is shown in (empty for a page
/// fetched with a bearer token, which needs none).
fn csrf_of(csrf: Option<Extension<Csrf>>) -> String {
    csrf.map(|Extension(Csrf(c))| c).unwrap_or_default()
}

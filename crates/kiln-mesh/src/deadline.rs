//! A caller's deadline, carried to every hop.
//!
//! A server reads the `grpc-timeout` its caller sent ([`ServerDeadline`]),
//! answers DEADLINE_EXCEEDED once it has passed, and keeps it as the
//! deadline of the task serving the call. Every call that task makes
//! through the mesh ([`ClientDeadline`]) inherits it (or a sooner one the
//! call sets itself), gives up on it, and sends what is left of it as its
//! own `grpc-timeout`, written by the endpoint right before the request
//! leaves, so time spent queued in this process is not given twice.

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use tokio::time::Instant;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::BoxError;

/// The gRPC header carrying a call's timeout.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// tonic's own timers on the same header (the server's, and the caller's
/// own if it is a tonic client) answer CANCELLED; this layer answers up to
/// this much earlier (a tenth of the timeout at most), so that the answer
/// reaches the caller before its own timer fires and it sees
/// DEADLINE_EXCEEDED as gRPC defines it.
const ANSWER_EARLY: Duration = Duration::from_millis(50);

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The deadline of the call this task serves, if its caller set one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

/// Runs `future` as part of a call that must end by `deadline`: calls it
/// makes through the mesh inherit it.
pub async fn scope<F: Future>(deadline: Instant, future: F) -> F::Output {
    DEADLINE.scope(deadline, future).await
}

/// A call's deadline, carried in its request's extensions from
/// [`ClientDeadline`] to the endpoint, which writes what is left of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallDeadline(pub Instant);

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S,
/// m, u, n).
pub fn parse(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Encodes `timeout` as a `grpc-timeout` value, in the finest unit that
/// fits 8 digits (rounded up, so a deadline is never made sooner).
pub fn encode(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let units: [(u128, &str); 6] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ];
    let (amount, unit) = units
        .iter()
        .map(|&(size, unit)| (nanos.div_ceil(size), unit))
        .find(|&(amount, _)| amount <= MAX)
        .unwrap_or((MAX, "H"));
    HeaderValue::from_str(&format!("{amount}{unit}"))
        .unwrap_or(HeaderValue::from_static("99999999H"))
}

/// The answer to a call whose deadline passed.
pub fn exceeded() -> Response<Body> {
    tonic::Status::deadline_exceeded("the call's deadline passed").into_http()
}

fn sooner(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The client side: see the module's documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientDeadlineLayer;

impl<S> Layer<S> for ClientDeadlineLayer {
    type Service = ClientDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientDeadline { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ClientDeadline<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for ClientDeadline<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let now = Instant::now();
        let own = request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(parse)
            .map(|timeout| now + timeout);
        let Some(deadline) = sooner(current(), own) else {
            return Box::pin(self.inner.call(request));
        };
        if deadline <= now {
            return Box::pin(async { Ok(exceeded()) });
        }
        request.extensions_mut().insert(CallDeadline(deadline));
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(result) => result,
                Err(_) => Ok(exceeded()),
            }
        })
    }
}

/// The server side: see the module's documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerDeadlineLayer;

impl<S> Layer<S> for ServerDeadlineLayer {
    type Service = ServerDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerDeadline { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ServerDeadline<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ServerDeadline<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(timeout) = request.headers().get(GRPC_TIMEOUT).and_then(parse) else {
            return Box::pin(self.inner.call(request));
        };
        let deadline = Instant::now() + timeout;
        let call = DEADLINE.sync_scope(deadline, || self.inner.call(request));
        let early = ANSWER_EARLY.min(timeout / 10);
        let answer_by = deadline.checked_sub(early).unwrap_or(deadline);
        Box::pin(async move {
            match tokio::time::timeout_at(answer_by, DEADLINE.scope(deadline, call)).await {
                Ok(result) => result,
                Err(_) => Ok(exceeded()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_trip_in_the_finest_unit_that_fits() {
        for timeout in [
            Duration::from_millis(1),
            Duration::from_secs(1),
            Duration::from_millis(1500),
            Duration::from_secs(3600 * 24),
        ] {
            let value = encode(timeout);
            assert_eq!(parse(&value), Some(timeout), "{value:?}");
        }
        assert_eq!(encode(Duration::from_secs(1)), "1000000u");
    }

    #[test]
    fn malformed_timeouts_are_ignored() {
        for bad in ["", "S", "10", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(parse(&HeaderValue::from_static(bad)), None, "{bad}");
        }
        assert_eq!(
            parse(&HeaderValue::from_static("3M")),
            Some(Duration::from_secs(180))
        );
    }

    #[tokio::test]
    async fn a_served_call_lends_its_deadline_to_the_calls_it_makes() {
        assert_eq!(current(), None);
        let deadline = Instant::now() + Duration::from_secs(5);
        let inside = scope(deadline, async { current() }).await;
        assert_eq!(inside, Some(deadline));
    }
}

//! The CSI caller's deadline, carried to the backend calls made on its behalf.
//!
//! A sidecar sends `grpc-timeout` with every call (its `--timeout`, 60 s in the chart).
//! [`CallerDeadlineLayer`] wraps a CSI server, turns that header into an [`Instant`] and
//! runs the handler inside a task-local scope holding it; the backend client
//! ([`crate::backend`]) reads it for every call it makes from that handler: it sends the
//! time left as the backend call's own `grpc-timeout`, and retries stop when it passes.
//! A task-local instead of a parameter: the deadline must reach every backend call of
//! every RPC, the way Go's `context.Context` does, without threading it through each one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::server::NamedService;
use tower::{Layer, Service};

tokio::task_local! {
    static CALLER_DEADLINE: Instant;
}

/// When the CSI call being served must be answered, if its caller said so.
pub fn caller_deadline() -> Option<Instant> {
    CALLER_DEADLINE.try_with(|d| *d).ok()
}

/// Runs `work` as if it served a CSI call whose caller allows `timeout` (tests, and
/// callers that are not behind the layer).
pub async fn with_timeout<F: Future>(timeout: Duration, work: F) -> F::Output {
    CALLER_DEADLINE.scope(Instant::now() + timeout, work).await
}

/// Runs `work` with `deadline` as its caller's deadline (the retry loop scopes each
/// attempt with the deadline it enforces, also when the caller sent none).
pub async fn within<F: Future>(deadline: Instant, work: F) -> F::Output {
    CALLER_DEADLINE.scope(deadline, work).await
}

/// How long of a caller's `timeout` the controller may spend before answering: a little
/// less, so that its own answer (DEADLINE_EXCEEDED with what it tried, or UNAVAILABLE)
/// reaches the caller before the caller gives up with a bare "timeout expired".
pub fn usable(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / 20).min(Duration::from_secs(1)))
}

/// Parses a `grpc-timeout` value (gRPC over HTTP/2: at most 8 ASCII digits and a unit,
/// `H` `M` `S` `m` `u` `n`). `None` for anything else: a malformed header is ignored, as
/// tonic's own server does, rather than failing the call.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Wraps a CSI server so that its handlers see their caller's deadline.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallerDeadlineLayer;

impl<S> Layer<S> for CallerDeadlineLayer {
    type Service = CallerDeadline<S>;

    fn layer(&self, inner: S) -> CallerDeadline<S> {
        CallerDeadline { inner }
    }
}

/// `CallerDeadlineLayer.layer(server)`.
pub fn with_caller_deadline<S>(server: S) -> CallerDeadline<S> {
    CallerDeadlineLayer.layer(server)
}

/// A CSI server whose handlers run in their caller's deadline scope; keeps the wrapped
/// server's name so the router routes to it as before.
#[derive(Clone, Debug)]
pub struct CallerDeadline<S> {
    inner: S,
}

impl<S: NamedService> NamedService for CallerDeadline<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for CallerDeadline<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(usable);
        // The generated server runs the handler inside this future (it does not spawn),
        // so the scope covers every backend call the handler makes.
        let call = self.inner.call(request);
        match timeout {
            Some(timeout) => Box::pin(CALLER_DEADLINE.scope(Instant::now() + timeout, call)),
            None => Box::pin(call),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_refuses_malformed_values() {
        assert_eq!(parse_grpc_timeout("60S"), Some(Duration::from_secs(60)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(
            parse_grpc_timeout("1500m"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in [
            "",
            "S",
            "123456789S",
            "10",
            "10s",
            "-1S",
            "1.5S",
            " 1S",
            "1SS",
            "10é",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_controller_answers_a_little_before_its_caller_gives_up() {
        assert_eq!(usable(Duration::from_secs(3)), Duration::from_millis(2850));
        assert_eq!(usable(Duration::from_secs(60)), Duration::from_secs(59));
        assert_eq!(usable(Duration::from_secs(600)), Duration::from_secs(599));
        assert_eq!(usable(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn the_deadline_is_seen_only_inside_its_scope() {
        assert_eq!(caller_deadline(), None);
        let seen = with_timeout(Duration::from_secs(10), async { caller_deadline() }).await;
        let left = seen
            .expect("inside the scope")
            .saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(9) && left <= Duration::from_secs(10),
            "{left:?}"
        );
        assert_eq!(caller_deadline(), None);
    }
}

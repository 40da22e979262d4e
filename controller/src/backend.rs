//! The client of the backend volume API, with the bearer token on every call.
//!
//! Calls across a failover never hang: the channel sends HTTP/2 keepalive PINGs (also
//! while idle) and drops a connection whose PING goes unanswered, which is how a request
//! already sent to a server that died is noticed (its TCP connection stays silent, no
//! RST arrives); every call has a deadline, the CSI caller's when it sent one
//! ([`crate::deadline`]); and calls idempotent by name are sent again, with bounded
//! backoff, until the new active answers or the deadline passes ([`idempotent`],
//! decisions in [`crate::retry`]).

use crate::deadline;
use crate::retry::{self, GiveUpReason, RetryPolicy, Verdict};
use common::credentials::{self, ClientTls};
use common::endpoint::Endpoint;
use proto::backend::v1::volumes_client::VolumesClient;
use std::future::Future;
use std::time::{Duration, Instant};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

/// How the channel to the backend notices a dead server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallConfig {
    /// Longest wait for a TCP (or unix) connection to be made.
    pub connect_timeout: Duration,
    /// A PING is sent after this long without frames, also with no call in flight (so
    /// a connection that died while idle is not first noticed by a call).
    pub keepalive_interval: Duration,
    /// ... and the connection is dropped when its answer takes longer than this.
    pub keepalive_timeout: Duration,
    /// One attempt's deadline when the CSI caller's leaves more (a live server that
    /// hangs, e.g. on suspended I/O, answers PINGs but never the call).
    pub call_timeout: Duration,
}

impl Default for CallConfig {
    fn default() -> Self {
        // Detection within 10 s of silence: well inside a failover (Lease expiry plus
        // takeover), and PINGs every 5 s cost nothing on one connection.
        Self {
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
            // Above any one store operation but a full clone copy; a clone that takes
            // longer is retried, finds its name busy (ABORTED) and waits for it.
            call_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Clone)]
pub struct AddToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// Sent as `grpc-timeout` when the caller's deadline leaves more, so the backend
    /// knows the bound the channel enforces.
    call_timeout: Duration,
}

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        let timeout = match deadline::caller_deadline() {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Status::deadline_exceeded(
                        "the CSI caller's deadline passed before the backend call was sent",
                    ));
                }
                left.min(self.call_timeout)
            }
            None => self.call_timeout,
        };
        // The channel cuts the call at this time too (tonic's client honours the header).
        request.set_timeout(timeout);
        Ok(request)
    }
}

pub type BackendClient = VolumesClient<InterceptedService<Channel, AddToken>>;

/// Dials the backend lazily: the first call connects, and after a failover the next
/// call reaches whichever server holds the VIP now.
pub fn connect(
    endpoint: &Endpoint,
    token: Option<&str>,
) -> Result<BackendClient, Box<dyn std::error::Error + Send + Sync>> {
    connect_with(endpoint, token, &CallConfig::default())
}

/// [`connect`] with explicit keepalive and deadline settings.
pub fn connect_with(
    endpoint: &Endpoint,
    token: Option<&str>,
    config: &CallConfig,
) -> Result<BackendClient, Box<dyn std::error::Error + Send + Sync>> {
    connect_secured(endpoint, token, None, config)
}

/// [`connect_with`] over mutual TLS: required on TCP (the backend at the VIP), none on
/// a unix socket (local mode).
pub fn connect_secured(
    endpoint: &Endpoint,
    token: Option<&str>,
    tls: Option<&ClientTls>,
    config: &CallConfig,
) -> Result<BackendClient, Box<dyn std::error::Error + Send + Sync>> {
    let role = "the backend volume API (--backend)";
    let channel = credentials::connect_lazy_with(endpoint, tls, role, |e| {
        Ok(e.connect_timeout(config.connect_timeout)
            .http2_keep_alive_interval(config.keepalive_interval)
            .keep_alive_timeout(config.keepalive_timeout)
            .keep_alive_while_idle(true)
            .timeout(config.call_timeout))
    })?;
    let header = match token {
        Some(token) => {
            let mut value: MetadataValue<_> = format!("Bearer {token}")
                .parse()
                .map_err(|_| "the backend token contains characters not allowed in a header")?;
            // Never indexed by HPACK, and Debug prints "Sensitive" instead of the token.
            value.set_sensitive(true);
            Some(value)
        }
        None => None,
    };
    Ok(VolumesClient::with_interceptor(
        channel,
        AddToken {
            header,
            call_timeout: config.call_timeout,
        },
    ))
}

/// Sends a call that is idempotent by name until it gets an answer, retrying failures
/// that can be a failover ([`retry::decide`]) within the CSI caller's deadline (or the
/// policy's budget), each retry logged. `call` makes one attempt with its own clone of
/// the client and the request.
pub async fn idempotent<Req, Res, F, Fut>(
    client: &BackendClient,
    method: &'static str,
    request: Req,
    mut call: F,
) -> Result<Response<Res>, Status>
where
    Req: Clone,
    F: FnMut(BackendClient, Req) -> Fut,
    Fut: Future<Output = Result<Response<Res>, Status>>,
{
    let policy = RetryPolicy::default();
    let started = Instant::now();
    let deadline =
        deadline::caller_deadline().unwrap_or_else(|| started + policy.budget_without_deadline);
    let mut after_ambiguous = false;
    let mut attempt = 1;
    loop {
        let status = match deadline::within(deadline, call(client.clone(), request.clone())).await {
            Ok(response) => {
                if attempt > 1 {
                    tracing::info!(method, attempt, took = ?started.elapsed(), "backend call answered after retries");
                }
                return Ok(response);
            }
            Err(status) => status,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match retry::decide(
            &policy,
            status.code(),
            attempt,
            after_ambiguous,
            left,
            jitter(),
        ) {
            Verdict::Retry { after } => {
                tracing::warn!(
                    method,
                    attempt,
                    code = ?status.code(),
                    error = status.message(),
                    retry_in = ?after,
                    time_left = ?left,
                    "backend call failed, retrying (the storage servers may be failing over)"
                );
                after_ambiguous |= retry::ambiguous(status.code());
                tokio::time::sleep(after).await;
                attempt += 1;
            }
            Verdict::GiveUp(GiveUpReason::Final) => {
                if attempt > 1 {
                    tracing::info!(method, attempt, took = ?started.elapsed(), code = ?status.code(), "backend call answered after retries");
                }
                return Err(status);
            }
            Verdict::GiveUp(reason) => {
                let took = started.elapsed();
                tracing::warn!(method, attempt, ?reason, ?took, code = ?status.code(), error = status.message(), "backend call failed, giving up");
                // tonic's client reports its own timeout as CANCELLED; to the CSI caller
                // it is a deadline.
                let code = match status.code() {
                    Code::Cancelled => Code::DeadlineExceeded,
                    code => code,
                };
                return Err(Status::new(
                    code,
                    format!(
                        "{} (after {attempt} attempts in {:.1} s)",
                        status.message(),
                        took.as_secs_f64()
                    ),
                ));
            }
        }
    }
}

/// A number in [0, 1) that differs between calls and between processes, for the backoff
/// jitter (std's per-hasher random keys; no cryptographic quality needed).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    hasher.write_u128(now.map_or(0, |d| d.as_nanos()));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

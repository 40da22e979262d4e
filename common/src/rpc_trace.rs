//! One log line per CSI call, for every CSI service of both binaries, in one place.
//!
//! [`CsiTraceLayer`] wraps a generated tonic server (`ControllerServer`, `NodeServer`,
//! `IdentityServer`). Each call runs inside a `csi` span named by its method; when the
//! request message has arrived it is decoded a second time by [`proto::redact`] and
//! recorded in the span as `request` (its `Debug`, secrets redacted), so the handler's
//! own log lines carry it too. When the handler has answered, one event reports the gRPC
//! code, the duration and, on failure, the message.
//!
//! The code is read from the response headers: tonic sends a handler's error as a
//! "trailers-only" response (status in the headers), while a success sends the message
//! and then `grpc-status: 0` in the trailers, so a response without a status header is a
//! success. Neither binary has metrics today; when one does, [`finished`] is the place.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::Instrument;

/// Requests larger than this are not kept for the log line (CSI requests are a few
/// hundred bytes; the body itself passes through untouched either way).
const MAX_LOGGED_REQUEST: usize = 64 * 1024;

/// The tower layer: `CsiTraceLayer.layer(NodeServer::new(service))`, or [`traced`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CsiTraceLayer;

impl<S> Layer<S> for CsiTraceLayer {
    type Service = CsiTrace<S>;

    fn layer(&self, inner: S) -> CsiTrace<S> {
        CsiTrace { inner }
    }
}

/// Wraps a generated server in [`CsiTraceLayer`].
pub fn traced<S>(server: S) -> CsiTrace<S> {
    CsiTraceLayer.layer(server)
}

/// A gRPC service whose calls are logged; keeps the wrapped server's name, so the router
/// routes to it as before.
#[derive(Clone, Debug)]
pub struct CsiTrace<S> {
    inner: S,
}

impl<S: NamedService> NamedService for CsiTrace<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ResBody> Service<http::Request<Body>> for CsiTrace<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let method = path.rsplit('/').next().unwrap_or_default().to_owned();
        let span = tracing::info_span!(
            "csi",
            method = %method,
            request = tracing::field::Empty
        );
        let (parts, body) = request.into_parts();
        let body = Body::new(Tap {
            inner: body,
            path,
            span: span.clone(),
            kept: Vec::new(),
            recorded: false,
        });
        // The clone that was made ready is the one that gets the call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = inner.call(http::Request::from_parts(parts, body));
        let started = Instant::now();
        Box::pin(
            async move {
                let result = call.await;
                match &result {
                    Ok(response) => finished(
                        &method,
                        Status::from_header_map(response.headers()),
                        started.elapsed(),
                    ),
                    Err(err) => tracing::warn!(
                        duration = ?started.elapsed(),
                        error = %err,
                        "CSI call failed in transport"
                    ),
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Calls that kubelet and the sidecars make on a timer: their successes are debug lines,
/// or one volume's stats every minute would bury everything else.
fn polled(method: &str) -> bool {
    matches!(
        method,
        "Probe"
            | "GetPluginInfo"
            | "GetPluginCapabilities"
            | "ControllerGetCapabilities"
            | "NodeGetCapabilities"
            | "NodeGetInfo"
            | "GetCapacity"
            | "ListVolumes"
            | "ListSnapshots"
            | "GetSnapshot"
            | "ControllerGetVolume"
            | "NodeGetVolumeStats"
    )
}

/// The one line per call (inside its span).
fn finished(method: &str, status: Option<Status>, duration: Duration) {
    let code = status.as_ref().map_or(Code::Ok, Status::code);
    match status {
        Some(status) if status.code() != Code::Ok => {
            tracing::warn!(
                ?code,
                ?duration,
                error = status.message(),
                "CSI call failed"
            );
        }
        _ if polled(method) => tracing::debug!(?code, ?duration, "CSI call done"),
        _ => tracing::info!(?code, ?duration, "CSI call done"),
    }
}

/// Passes the request body through and keeps a copy of its first gRPC message, which it
/// records in the call's span as soon as it is complete (before the handler runs).
struct Tap {
    inner: Body,
    path: String,
    span: tracing::Span,
    kept: Vec<u8>,
    recorded: bool,
}

impl Tap {
    fn keep(&mut self, data: &[u8]) {
        if self.recorded {
            return;
        }
        let room = MAX_LOGGED_REQUEST.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
        if let Some(text) = describe(&self.path, &self.kept) {
            self.span.record("request", tracing::field::display(text));
            self.recorded = true;
        }
    }

    /// At the end of the body: whatever is known, so a cut-off request says so.
    fn finish(&mut self) {
        if !self.recorded && !self.kept.is_empty() {
            let text = describe(&self.path, &self.kept)
                .unwrap_or_else(|| "<incomplete or too large to log>".to_owned());
            self.span.record("request", tracing::field::display(text));
            self.recorded = true;
        }
    }
}

/// The request as text once `bytes` (a gRPC frame: flag, 4-byte length, message) holds
/// the whole message; `None` while it does not.
fn describe(path: &str, bytes: &[u8]) -> Option<String> {
    let header: [u8; 5] = bytes.get(..5)?.try_into().ok()?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if header[0] != 0 {
        return Some("<compressed>".to_owned());
    }
    if len > MAX_LOGGED_REQUEST - 5 {
        return Some(format!("<{len} bytes, too large to log>"));
    }
    let message = bytes.get(5..5 + len)?;
    Some(match proto::redact::debug_request(path, message) {
        Some(Ok(text)) => text,
        Some(Err(err)) => format!("<undecodable: {err}>"),
        None => "<not a CSI method>".to_owned(),
    })
}

impl HttpBody for Tap {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    self.keep(&data);
                }
            }
            Poll::Ready(None) => self.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&(message.len() as u32).to_be_bytes());
        bytes.extend_from_slice(message);
        bytes
    }

    #[test]
    fn describe_waits_for_the_whole_message() {
        use prost::Message;
        let request = proto::csi::v1::DeleteVolumeRequest {
            volume_id: "v1/c/pvc-1".into(),
            secrets: [("k".to_string(), "s3cret".to_string())].into(),
        };
        let bytes = frame(&request.encode_to_vec());
        let path = "/csi.v1.Controller/DeleteVolume";
        assert_eq!(describe(path, &bytes[..3]), None);
        assert_eq!(describe(path, &bytes[..bytes.len() - 1]), None);
        let text = describe(path, &bytes).unwrap();
        assert!(text.contains("v1/c/pvc-1"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(
            describe("/grpc.health.v1.Health/Check", &frame(b"")).as_deref(),
            Some("<not a CSI method>")
        );
    }

    #[test]
    fn polled_calls_are_the_timer_driven_ones() {
        assert!(polled("NodeGetVolumeStats"));
        assert!(polled("Probe"));
        assert!(!polled("CreateVolume"));
        assert!(!polled("NodePublishVolume"));
    }
}

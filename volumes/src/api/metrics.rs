//! Request counts and latencies of the volume API, for `/metrics`: [`record`] counts
//! each call, [`register`] adds the families to the registry a server exposes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    method: &'static str,
    /// The gRPC code's name (`Ok`, `NotFound`, …).
    code: String,
}

type Latency = Family<Call, Histogram, fn() -> Histogram>;

/// One set per process: `record` is called from the request path, which has no registry
/// at hand; the families share their state with every registry they are registered in.
struct Calls {
    requests: Family<Call, Counter>,
    seconds: Family<Call, Counter<f64, AtomicU64>>,
    latency: Latency,
}

static CALLS: LazyLock<Calls> = LazyLock::new(|| Calls {
    requests: Family::default(),
    seconds: Family::default(),
    // 1 ms to ~4.4 min: from a metadata call to a full copy of a large volume.
    latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 4.0, 10))),
});

pub fn record(method: &'static str, code: tonic::Code, elapsed: Duration) {
    let call = Call {
        method,
        code: format!("{code:?}"),
    };
    CALLS.requests.get_or_create(&call).inc();
    CALLS
        .seconds
        .get_or_create(&call)
        .inc_by(elapsed.as_secs_f64());
    CALLS
        .latency
        .get_or_create(&call)
        .observe(elapsed.as_secs_f64());
}

/// Adds `hanfs_volume_api_requests_total`, `hanfs_volume_api_seconds_total` and the
/// `hanfs_volume_api_request_duration_seconds` histogram to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(
        "hanfs_volume_api_requests",
        "Volume API requests by method and gRPC code",
        CALLS.requests.clone(),
    );
    registry.register(
        "hanfs_volume_api_seconds",
        "Time spent serving volume API requests",
        CALLS.seconds.clone(),
    );
    registry.register(
        "hanfs_volume_api_request_duration_seconds",
        "Volume API request durations by method and gRPC code",
        CALLS.latency.clone(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_per_method_and_code() {
        // The counters are process-wide; no other unit test records ExpandVolume.
        record("ExpandVolume", tonic::Code::Ok, Duration::from_millis(2));
        record("ExpandVolume", tonic::Code::Ok, Duration::from_millis(3));
        record(
            "ExpandVolume",
            tonic::Code::NotFound,
            Duration::from_millis(1),
        );
        let mut registry = Registry::default();
        register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
            .expect("encoding to a String cannot fail");
        for line in [
            "# TYPE hanfs_volume_api_requests_total counter",
            r#"hanfs_volume_api_requests_total{method="ExpandVolume",code="Ok"} 2"#,
            r#"hanfs_volume_api_requests_total{method="ExpandVolume",code="NotFound"} 1"#,
            r#"hanfs_volume_api_seconds_total{method="ExpandVolume",code="Ok"} 0.005"#,
            r#"hanfs_volume_api_request_duration_seconds_bucket{method="ExpandVolume",code="Ok",le="0.004"} 2"#,
            r#"hanfs_volume_api_request_duration_seconds_count{method="ExpandVolume",code="Ok"} 2"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}

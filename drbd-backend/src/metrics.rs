//! The agent's Prometheus `/metrics`, served by axum (hyper) on a listener of its own.
//!
//! A scrape reads memory only:
//! - the agent's state (role, DRBD, Lease takeovers) from [`AgentStatus`], through the
//!   same [`admin::status_of`] the `status` command shows;
//! - the volume API's per-method counters and latency histogram
//!   (`volumes::api::metrics`);
//! - what needs the replicated filesystem (the volume count) from the last [`Sampler`]
//!   reading. A statfs or read_dir on the export blocks for as long as DRBD freezes I/O
//!   (fencing: the fence-peer handler runs with I/O suspended), so a scrape that made
//!   one would pin a runtime thread per scrape, and Prometheus retries. The sampler's
//!   own thread takes the sample; the scrape reports the last one with its age
//!   (`hanfs_fs_sample_age_seconds`) and whether it is too old
//!   (`hanfs_fs_sample_stale`): a stuck sampler shows as stale, never as a hang.

use crate::admin;
use crate::ha::agent::AgentStatus;
use crate::ha::decide::HaConfig;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A value some blocking call produces, re-taken every `every` on a thread of its own.
///
/// Lifecycle: the thread runs until the `Sampler` is dropped; it notices at its next
/// wake-up. A sample stuck in the kernel keeps that one thread (it cannot be killed);
/// no second one is started behind it, and readers are never blocked by it: the lock
/// is held only to store or copy a finished sample.
pub struct Sampler<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    last: Mutex<Option<(T, Instant)>>,
    stopped: Mutex<bool>,
    wake: Condvar,
    stale_after: Duration,
}

/// The last sample and how fresh it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading<T> {
    /// None until the first sample has finished.
    pub value: Option<T>,
    /// Since the last sample finished.
    pub age: Option<Duration>,
    /// No sample yet, or the last one is older than `stale_after`: the sampler is stuck
    /// (or slow) in its call.
    pub stale: bool,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: Clone + Send + 'static> Sampler<T> {
    /// Starts the thread; the first sample is taken at once. `stale_after` should exceed
    /// `every` plus what a healthy sample takes.
    pub fn start(
        name: &str,
        every: Duration,
        stale_after: Duration,
        mut sample: impl FnMut() -> T + Send + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            last: Mutex::new(None),
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            stale_after,
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                loop {
                    let value = sample();
                    *locked(&worker.last) = Some((value, Instant::now()));
                    let stopped = locked(&worker.stopped);
                    let (stopped, _) = worker
                        .wake
                        .wait_timeout_while(stopped, every, |stopped| !*stopped)
                        .unwrap_or_else(|p| p.into_inner());
                    if *stopped {
                        return;
                    }
                }
            })?;
        Ok(Sampler { shared })
    }

    pub fn latest(&self) -> Reading<T> {
        let last = locked(&self.shared.last).clone();
        let age = last.as_ref().map(|(_, at)| at.elapsed());
        Reading {
            stale: age.is_none_or(|age| age > self.shared.stale_after),
            value: last.map(|(value, _)| value),
            age,
        }
    }
}

impl<T> Drop for Sampler<T> {
    fn drop(&mut self) {
        *locked(&self.shared.stopped) = true;
        self.shared.wake.notify_all();
    }
}

/// A sample of the export: the number of volumes, or None while the store is closed
/// (a standby) or could not be read.
pub type ExportSample = Option<usize>;

/// Where a scrape gets its numbers. Both are called on the runtime: memory only.
pub struct Sources {
    pub config: HaConfig,
    pub status: Box<dyn Fn() -> AgentStatus + Send + Sync>,
    pub export: Box<dyn Fn() -> Reading<ExportSample> + Send + Sync>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources")
            .field("node", &self.config.node)
            .finish_non_exhaustive()
    }
}

/// The registry a metrics server exposes: the agent's metrics and the volume API's.
pub fn registry(sources: Sources) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(sources));
    volumes::api::metrics::register(&mut registry);
    registry
}

/// The Prometheus text (version 0.0.4) of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a metric.
    if let Err(e) = prometheus_text::encode(&mut text, registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    text
}

/// The agent's metrics for one status snapshot, as a scrape would show them with a
/// fresh export sample `volumes` (none: the store is not open).
pub fn metrics_text(config: &HaConfig, status: &AgentStatus, volumes: Option<usize>) -> String {
    let status = status.clone();
    encode(&registry(Sources {
        config: config.clone(),
        status: Box::new(move || status.clone()),
        export: Box::new(move || Reading {
            value: Some(volumes),
            age: Some(Duration::ZERO),
            stale: false,
        }),
    }))
}

type Node<'a> = [(&'static str, &'a str); 1];

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    node: &Node,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(family.encode_family(node)?)
}

/// `name` without `_total`: the encoder appends it.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    node: &Node,
    value: impl EncodeCounterValue,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(family.encode_family(node)?)
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = admin::status_of(&self.config, &(self.status)(), &[]);
        let node: Node = [("node", self.config.node.as_str())];
        let e = &mut encoder;
        let flag = |b: bool| i64::from(b);
        gauge(
            e,
            "hanfs_active",
            "1 if this node serves the export (Lease holder with the VIP).",
            &node,
            flag(s.vip && s.lease_holder == self.config.node),
        )?;
        gauge(
            e,
            "hanfs_drbd_primary",
            "1 if DRBD is Primary here.",
            &node,
            flag(s.drbd_role == "Primary"),
        )?;
        gauge(
            e,
            "hanfs_drbd_connected",
            "1 if the replication link is up.",
            &node,
            flag(s.connected),
        )?;
        gauge(
            e,
            "hanfs_drbd_disk_up_to_date",
            "1 if the local disk is UpToDate.",
            &node,
            flag(s.disk == "UpToDate"),
        )?;
        gauge(
            e,
            "hanfs_drbd_peer_disk_up_to_date",
            "1 if the peer's disk is UpToDate.",
            &node,
            flag(s.peer_disk == "UpToDate"),
        )?;
        counter(
            e,
            "hanfs_lease_acquisitions",
            "Times this node acquired the Lease (failovers and switchovers to it).",
            &node,
            s.acquisitions,
        )?;
        gauge(
            e,
            "hanfs_last_takeover_seconds",
            "Lease acquisition to VIP up, for the last takeover by this node.",
            &node,
            if s.last_takeover_ms < 0 {
                f64::NAN
            } else {
                s.last_takeover_ms as f64 / 1000.0
            },
        )?;
        counter(
            e,
            "hanfs_last_resorts",
            "Times this node had to freeze or reboot because it could not stand down in time.",
            &node,
            s.last_resorts,
        )?;
        let export = (self.export)();
        if let Some(Some(count)) = export.value {
            gauge(
                e,
                "hanfs_volumes",
                "Volumes on the export (from the last sample, see hanfs_fs_sample_age_seconds).",
                &node,
                count as u64,
            )?;
        }
        gauge(
            e,
            "hanfs_fs_sample_age_seconds",
            "Since the last sample of the export finished (NaN: none yet).",
            &node,
            export.age.map_or(f64::NAN, |age| age.as_secs_f64()),
        )?;
        gauge(
            e,
            "hanfs_fs_sample_stale",
            "1 if the export's sample is overdue: the sampler is stuck in the filesystem (e.g. DRBD froze I/O).",
            &node,
            flag(export.stale),
        )?;
        Ok(())
    }
}

/// `GET /metrics` over `registry`; anything else is 404.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { scrape(&registry) }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") })
}

fn scrape(registry: &Registry) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        encode(registry),
    )
        .into_response()
}

/// Serves [`router`] on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::agent::AgentHandle;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Opens a FIFO's write end, which lets every open(2) blocked on its read end return.
    struct Thaw(std::path::PathBuf);

    impl Thaw {
        fn release(&self) {
            let _ = nix::fcntl::open(
                &self.0,
                nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_NONBLOCK,
                nix::sys::stat::Mode::empty(),
            );
        }
    }

    /// However the test ends, the sampler's open returns and its thread can stop.
    impl Drop for Thaw {
        fn drop(&mut self) {
            self.release();
        }
    }

    /// `GET path` over a fresh connection, bounded: the whole exchange within `limit`.
    /// A plain blocking client on the test's thread, outside the server's runtime: a
    /// server whose workers are stuck cannot also stall the client's clock. On a
    /// timeout it thaws first, so the stuck server can be shut down after the failure.
    fn get(address: std::net::SocketAddr, path: &str, limit: Duration, thaw: &Thaw) -> String {
        use std::io::{Read, Write};
        let exchange = || -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect_timeout(&address, limit)?;
            stream.set_read_timeout(Some(limit))?;
            stream.set_write_timeout(Some(limit))?;
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        };
        exchange().unwrap_or_else(|e| {
            thaw.release();
            panic!("GET {path} got no answer within {limit:?} ({e}): the scrape blocked")
        })
    }

    #[test]
    fn every_metric_name_of_a_standby_is_there() {
        // The volume API's families show once they have a call (process-wide counters;
        // the method name is this test's own).
        volumes::api::metrics::record("MetricsTest", tonic::Code::Ok, Duration::from_millis(1));
        let config = HaConfig::with_lease("a", "b", 6000);
        let text = metrics_text(&config, &AgentHandle::default().status(), Some(3));
        for line in [
            "hanfs_active{node=\"a\"} 0",
            "hanfs_drbd_primary{node=\"a\"} 0",
            "hanfs_drbd_connected{node=\"a\"} 0",
            "hanfs_drbd_disk_up_to_date{node=\"a\"} 0",
            "hanfs_drbd_peer_disk_up_to_date{node=\"a\"} 0",
            "# TYPE hanfs_lease_acquisitions_total counter",
            "hanfs_lease_acquisitions_total{node=\"a\"} 0",
            "hanfs_last_takeover_seconds{node=\"a\"} NaN",
            "# TYPE hanfs_last_resorts_total counter",
            "hanfs_last_resorts_total{node=\"a\"} 0",
            "hanfs_volumes{node=\"a\"} 3",
            "hanfs_fs_sample_stale{node=\"a\"} 0",
            "hanfs_volume_api_requests_total{method=\"MetricsTest\",code=\"Ok\"} 1",
            "hanfs_volume_api_seconds_total{method=\"MetricsTest\",code=\"Ok\"} 0.001",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let closed = metrics_text(&config, &AgentHandle::default().status(), None);
        assert!(!closed.contains("hanfs_volumes{"), "{closed}");
    }

    #[test]
    fn a_reading_goes_stale_when_the_sample_hangs() {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let sampler = Sampler::start(
            "test-sampler",
            Duration::from_millis(10),
            Duration::from_millis(200),
            move || {
                if counted.fetch_add(1, Ordering::SeqCst) > 0 {
                    let _ = wait.recv();
                }
                5
            },
        )
        .unwrap();
        let fresh = (0..100)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(10));
                sampler.latest()
            })
            .find(|r| r.value.is_some())
            .expect("a first sample within 1 s");
        assert!(!fresh.stale, "{fresh:?}");
        std::thread::sleep(Duration::from_millis(400));
        let stuck = sampler.latest();
        assert_eq!(stuck.value, Some(5), "the last value stays readable");
        assert!(
            stuck.stale && stuck.age > Some(Duration::from_millis(200)),
            "{stuck:?}"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "no second sample behind the stuck one"
        );
        drop(release);
    }

    /// The scrape never waits for the filesystem: the sampler is blocked in a real
    /// open(2) of a FIFO nobody writes to (as a statfs blocks on a frozen DRBD device),
    /// yet `/metrics` answers at once, with the last count and the stale flag.
    #[test]
    fn the_scrape_answers_while_the_sampler_is_stuck_in_the_filesystem() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let export = dir.path().join("volumes");
        std::fs::create_dir(&export).unwrap();
        for v in ["v1", "v2", "v3"] {
            std::fs::create_dir(export.join(v)).unwrap();
        }
        let fifo = dir.path().join("frozen");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Dropped before the runtime (declared after it), so that on any failure the
        // blocked opens return and the runtime can shut down.
        let thaw = Thaw(fifo.clone());

        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let sampler = Arc::new(
            Sampler::start(
                "export-sampler",
                Duration::from_millis(20),
                Duration::from_millis(300),
                move || {
                    match counted.fetch_add(1, Ordering::SeqCst) {
                        0 => Some(std::fs::read_dir(&export).unwrap().count()),
                        // Blocks in the kernel until a writer appears.
                        1 => std::fs::File::open(&fifo).ok().map(|_| 0),
                        // After the thaw: quick, so the thread reaches its stop check.
                        _ => None,
                    }
                },
            )
            .unwrap(),
        );
        let config = HaConfig::with_lease("a", "b", 6000);
        let handle = AgentHandle::default();
        let reader = sampler.clone();
        let registry = Arc::new(registry(Sources {
            config,
            status: Box::new(move || handle.status()),
            export: Box::new(move || reader.latest()),
        }));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        let server = runtime.spawn(serve(listener, registry));

        // "Stale" also means "no sample yet": on a loaded machine the first scrape can
        // come before the first sample, so wait for stale *with* an age, the stuck case.
        let mut stale = None;
        for _ in 0..200 {
            let started = Instant::now();
            let response = get(address, "/metrics", Duration::from_secs(2), &thaw);
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "a scrape took {:?}",
                started.elapsed()
            );
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            if response.contains("hanfs_fs_sample_stale{node=\"a\"} 1")
                && !response.contains("hanfs_fs_sample_age_seconds{node=\"a\"} NaN")
            {
                stale = Some(response);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let stale = stale.expect("the stuck sampler shows as stale within 10 s");
        assert!(
            stale.contains("hanfs_volumes{node=\"a\"} 3"),
            "the last count stays: {stale}"
        );
        assert!(
            calls.load(Ordering::SeqCst) >= 2,
            "the sampler reached the FIFO"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2, "and is still in it");

        let missing = get(address, "/other", Duration::from_secs(2), &thaw);
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        server.abort();
        drop(thaw);
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

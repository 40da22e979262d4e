//! The real `hanfs-controller` binary's `grpc.health.v1`, on its CSI socket and on TCP,
//! following a real backend volume API (over a real export tree in a tempdir): SERVING
//! while the backend is up, NOT_SERVING once it is killed or hangs, SERVING again when
//! it is back.
//!
//! The backend runs on a runtime of its own; "killing" it shuts that runtime down, which
//! drops every connection at once like a dead process does (no graceful GOAWAY).

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use common::endpoint::{self, Endpoint, Listener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use volumes::store::CapacityPolicy;
use volumes::{StoreConfig, VolumeStore};

const CONTROLLER: &str = env!("CARGO_BIN_EXE_hanfs-controller");

/// A backend volume API on its own runtime; dropping the runtime kills it.
struct Backend {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Backend {
    fn start(dir: &Path) -> Backend {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let export = dir.join("export");
        let socket = dir.join("backend.sock");
        // block_on cannot run on the test's own runtime thread; a plain thread may.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                runtime.block_on(async {
                    std::fs::create_dir_all(&export).unwrap();
                    let store = VolumeStore::open(StoreConfig {
                        root: export,
                        capacity_policy: CapacityPolicy::Thin,
                        default_volume_bytes: 1 << 20,
                        default_mode: 0o777,
                        copy_hook: None,
                    })
                    .unwrap();
                    let listener = Listener::bind(&Endpoint::Unix(socket)).await.unwrap();
                    let router = tonic::transport::Server::builder().add_service(
                        volumes::api::service(Arc::new(store), Some("secret".into())),
                    );
                    tokio::spawn(endpoint::serve(router, listener, std::future::pending()));
                })
            });
        });
        Backend {
            runtime: Some(runtime),
        }
    }

    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The controller process; killed on drop, so a failing test leaves none behind.
struct Controller {
    child: Child,
    log: PathBuf,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Controller {
    fn start(dir: &Path, health_port: u16) -> Controller {
        std::fs::write(dir.join("token"), "secret\n").unwrap();
        let log = dir.join("controller.log");
        let child = Command::new(CONTROLLER)
            .arg(format!(
                "--endpoint=unix://{}",
                dir.join("csi.sock").display()
            ))
            .arg("--cluster-id=test")
            .arg(format!(
                "--backend=unix://{}",
                dir.join("backend.sock").display()
            ))
            .arg(format!(
                "--backend-token-file={}",
                dir.join("token").display()
            ))
            .arg(format!("--health-listen=tcp://127.0.0.1:{health_port}"))
            .args(["--health-interval-secs=1", "--health-timeout-secs=1"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Controller { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn health(endpoint: &Endpoint) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(endpoint::connect_lazy(endpoint).unwrap());
    let request = HealthCheckRequest {
        service: String::new(),
    };
    // A probe must answer at once, whatever the backend does.
    match tokio::time::timeout(Duration::from_secs(2), client.check(request)).await {
        Ok(response) => Ok(response?.into_inner().status()),
        Err(_) => Err(tonic::Status::deadline_exceeded(
            "health check took over 2 s",
        )),
    }
}

/// Polls every endpoint (bounded) until each answers `want`.
async fn wait_health(controller: &mut Controller, endpoints: &[Endpoint], want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for endpoint in endpoints {
        loop {
            let got = health(endpoint).await;
            if matches!(got, Ok(status) if status == want) {
                break;
            }
            if let Some(status) = controller.child.try_wait().unwrap() {
                panic!("hanfs-controller exited ({status}): {}", controller.log());
            }
            assert!(
                Instant::now() < deadline,
                "{endpoint} health is {got:?}, not {want:?}, after 20 s: {}",
                controller.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut backend = Backend::start(dir);
    let port = free_tcp_port();
    let mut controller = Controller::start(dir, port);
    let endpoints = [
        Endpoint::Unix(dir.join("csi.sock")),
        Endpoint::Tcp(format!("127.0.0.1:{port}")),
    ];

    wait_health(&mut controller, &endpoints, ServingStatus::Serving).await;

    backend.kill();
    wait_health(&mut controller, &endpoints, ServingStatus::NotServing).await;

    let mut backend = Backend::start(dir);
    wait_health(&mut controller, &endpoints, ServingStatus::Serving).await;

    // A backend that accepts connections but never answers: the kernel completes the
    // connect from the listen backlog, and nothing ever reads. The check's timeout must
    // turn it NOT_SERVING while probes keep answering at once.
    backend.kill();
    let socket = dir.join("backend.sock");
    let _ = std::fs::remove_file(&socket);
    let _black_hole = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    wait_health(&mut controller, &endpoints, ServingStatus::NotServing).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !controller.log().contains("did not answer Status within") {
        assert!(
            Instant::now() < deadline,
            "no timed-out check logged: {}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM: every server and the checker stop, and the process exits cleanly.
    send_sigterm(controller.child.id());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = controller.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no exit 15 s after SIGTERM: {}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}: {}", controller.log());
}

fn send_sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

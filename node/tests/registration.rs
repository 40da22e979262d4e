//! The real `hanfs-node` binary registering itself with kubelet: this test plays
//! kubelet's plugin watcher (a client generated from the same api.proto) on the socket
//! in a tempdir `plugins_registry`, and kubelet's gRPC liveness probe on the health
//! service (CSI socket and TCP). Local transport; nothing is mounted.
//!
//! A second test dials with grpc-go exactly as kubelet does (tests/kubelet-dial, built
//! here with `go build`): the socket path as the target, so `:authority` is a path,
//! which h2 alone rejects with PROTOCOL_ERROR.

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use common::endpoint::{Endpoint, connect_lazy};
use proto::pluginregistration::registration_client::RegistrationClient;
use proto::pluginregistration::{InfoRequest, RegistrationStatus};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const NODE: &str = env!("CARGO_BIN_EXE_hanfs-node");
const KUBELET_CSI: &str = "/var/lib/kubelet/plugins/hanfs.csi.io/csi.sock";

/// The plugin process; killed on drop, so a failing test leaves none behind.
struct Plugin {
    child: Child,
    dir: PathBuf,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Plugin {
    fn start(dir: &Path, extra: &[&str]) -> Plugin {
        std::fs::create_dir_all(dir.join("export/volumes")).unwrap();
        std::fs::create_dir_all(dir.join("pods")).unwrap();
        let log = std::fs::File::create(dir.join("node.log")).unwrap();
        let child = Command::new(NODE)
            .arg(format!(
                "--endpoint=unix://{}",
                dir.join("csi.sock").display()
            ))
            .args(["--cluster-id=test", "--node-id=node-a", "--transport=local"])
            // JSON lines, so the test can read levels and fields without ANSI colours.
            .arg("--json-logs")
            .arg(format!(
                "--local-export-root={}",
                dir.join("export").display()
            ))
            .arg(format!(
                "--allowed-target-root={}",
                dir.join("pods").display()
            ))
            .arg(format!(
                "--registration-dir={}",
                dir.join("registry").display()
            ))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Plugin {
            child,
            dir: dir.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    fn reg_socket(&self) -> PathBuf {
        self.dir.join("registry/hanfs.csi.io-reg.sock")
    }

    /// Waits (bounded) until the registration socket exists.
    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.reg_socket().exists() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("hanfs-node exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no registration socket after 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
    let mut client = HealthClient::new(connect_lazy(endpoint).unwrap());
    let response = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(response.into_inner().status())
}

/// Polls both health endpoints (bounded) until each answers `want`.
async fn wait_health(plugin: &Plugin, endpoints: &[Endpoint], want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for endpoint in endpoints {
        loop {
            let got = health(endpoint).await;
            if matches!(got, Ok(status) if status == want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{endpoint} health is {got:?}, not {want:?}, after 15 s: {}",
                plugin.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn kubelet_registers_the_plugin_and_a_failure_shows_in_health() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_tcp_port();
    let mut plugin = Plugin::start(
        dir,
        &[
            &format!("--kubelet-csi-endpoint={KUBELET_CSI}"),
            &format!("--health-listen=tcp://127.0.0.1:{port}"),
            "--health-interval-secs=1",
        ],
    );
    plugin.wait_for_socket();

    let meta = std::fs::symlink_metadata(plugin.reg_socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    let names: Vec<_> = std::fs::read_dir(dir.join("registry"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["hanfs.csi.io-reg.sock"], "no staging leftovers");

    let mut kubelet =
        RegistrationClient::new(connect_lazy(&Endpoint::Unix(plugin.reg_socket())).unwrap());
    let info = kubelet.get_info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, "hanfs.csi.io");
    assert_eq!(info.endpoint, KUBELET_CSI);
    assert_eq!(info.supported_versions, ["1.0.0"]);

    let endpoints = [
        Endpoint::Unix(dir.join("csi.sock")),
        Endpoint::Tcp(format!("127.0.0.1:{port}")),
    ];
    wait_health(&plugin, &endpoints, ServingStatus::Serving).await;

    kubelet
        .notify_registration_status(RegistrationStatus {
            plugin_registered: false,
            error: "x".into(),
        })
        .await
        .unwrap();
    wait_health(&plugin, &endpoints, ServingStatus::NotServing).await;
    let log = plugin.log();
    let logged = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|l| l["level"] == "ERROR" && l["fields"]["error"] == "x");
    assert!(
        logged,
        "the failure is logged at error level with kubelet's error: {log}"
    );

    // kubelet retries registration by itself; a later success makes the plugin healthy.
    kubelet
        .notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .unwrap();
    wait_health(&plugin, &endpoints, ServingStatus::Serving).await;

    // The check is real: without its export root the local plugin cannot serve.
    std::fs::rename(dir.join("export"), dir.join("export.away")).unwrap();
    wait_health(&plugin, &endpoints, ServingStatus::NotServing).await;
    std::fs::rename(dir.join("export.away"), dir.join("export")).unwrap();
    wait_health(&plugin, &endpoints, ServingStatus::Serving).await;

    // SIGTERM: a clean exit, and the socket goes, which deregisters the driver. Our
    // connection is closed first, as kubelet does after each call: the plugin drains
    // open connections before it exits.
    drop(kubelet);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(plugin.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = plugin.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no exit 15 s after SIGTERM: {}",
            plugin.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}: {}", plugin.log());
    assert!(!plugin.reg_socket().exists(), "registration socket removed");
}

#[tokio::test]
async fn a_file_where_the_socket_goes_is_kept_and_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("registry")).unwrap();
    let path = dir.join("registry/hanfs.csi.io-reg.sock");
    std::fs::write(&path, "not a socket").unwrap();
    let mut plugin = Plugin::start(dir, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = plugin.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "hanfs-node kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    assert!(plugin.log().contains("is not a socket"), "{}", plugin.log());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
}

/// Builds tests/kubelet-dial (a grpc-go client dialing as kubelet's plugin manager
/// does) into `out`. Needs `go` and the Go module proxy (or a filled module cache).
fn build_kubelet_dial(out: &Path) -> PathBuf {
    let bin = out.join("kubelet-dial");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kubelet-dial");
    let built = Command::new("nice")
        .args(["-n", "10", "go", "build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("running go build in {}: {err}", src.display()));
    assert!(
        built.status.success(),
        "go build of {} failed ({}): {}",
        src.display(),
        built.status,
        String::from_utf8_lossy(&built.stderr)
    );
    bin
}

#[tokio::test]
async fn grpc_go_dialing_as_kubelet_gets_info_and_registers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dial = build_kubelet_dial(dir);
    let port = free_tcp_port();
    let mut plugin = Plugin::start(
        dir,
        &[
            &format!("--kubelet-csi-endpoint={KUBELET_CSI}"),
            &format!("--health-listen=tcp://127.0.0.1:{port}"),
            "--health-interval-secs=1",
        ],
    );
    plugin.wait_for_socket();

    // The program bounds itself (10 s, as kubelet's dial + GetInfo), so this ends.
    let run = Command::new(&dial)
        .arg(plugin.reg_socket())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "kubelet's way of dialing failed ({}): {stderr}\nplugin log: {}",
        run.status,
        plugin.log()
    );
    let info: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        info,
        serde_json::json!({
            "type": "CSIPlugin",
            "name": "hanfs.csi.io",
            "endpoint": KUBELET_CSI,
            "supported_versions": ["1.0.0"],
        })
    );
    // NotifyRegistrationStatus(true) reached the service: it logged it, and health
    // (which a failed registration turns NOT_SERVING) is SERVING.
    let registered = plugin.log().lines().any(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|l| l["fields"]["message"] == "kubelet registered the driver")
    });
    assert!(registered, "no registration logged: {}", plugin.log());
    let endpoints = [Endpoint::Tcp(format!("127.0.0.1:{port}"))];
    wait_health(&plugin, &endpoints, ServingStatus::Serving).await;

    // kubelet dials again for every registration attempt: a second connection works.
    let again = Command::new(&dial)
        .arg(plugin.reg_socket())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "second dial: {}",
        String::from_utf8_lossy(&again.stderr)
    );
}

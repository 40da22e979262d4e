//! Secrets never reach a log: the three real binaries of local mode (backend with a
//! bearer token, controller, node) run at RUST_LOG=trace with every output captured,
//! a whole volume life is driven through their CSI sockets with secrets in every
//! `secrets` field CSI has (and a bad request too, whose error paths log more), and the
//! captured lines are searched for the secret values and the token: 0 hits.
//!
//! It also checks the sockets local mode serves on are 0600 (see common's socket_mode
//! test for the unprivileged-user proof).

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use common::endpoint::{self, Endpoint};
use proto::csi::v1 as csi;
use proto::csi::v1::controller_client::ControllerClient;
use proto::csi::v1::node_client::NodeClient;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HANFSCTL: &str = env!("CARGO_BIN_EXE_hanfsctl");

/// The three processes; killed, and anything mounted under the test dir lazily
/// unmounted, also when the test fails halfway.
struct Processes {
    children: Vec<(&'static str, Child)>,
    dir: PathBuf,
}

impl Processes {
    fn spawn(&mut self, name: &'static str, args: &[&str]) {
        let bin = Path::new(HANFSCTL).parent().unwrap().join(name);
        assert!(
            bin.exists(),
            "{name} is not built next to hanfsctl: run `cargo build --bins` first"
        );
        let log = |stream: &str| {
            std::fs::File::create(self.dir.join(format!("{name}.{stream}.log"))).unwrap()
        };
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(log("stdout"))
            .stderr(log("stderr"))
            .spawn()
            .unwrap();
        self.children.push((name, child));
    }

    /// SIGTERM to all, newest first, so their shutdown paths log too.
    fn stop(&mut self) {
        for (name, child) in self.children.iter_mut().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "{name} did not stop after SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for line in mounts.lines() {
            if let Some(target) = line.split(' ').nth(1)
                && target.starts_with(self.dir.to_str().unwrap())
            {
                let _ = Command::new("umount").arg("-l").arg(target).status();
            }
        }
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mount_capability() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume::default(),
        )),
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_appears_in_any_log_line_of_a_full_run() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: publishing mounts needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for sub in ["export", "mnt", "sockets"] {
        std::fs::create_dir(dir.join(sub)).unwrap();
    }
    // Distinct values per field, so a hit says which path leaked.
    let stamp = std::process::id();
    let secret = |field: &str| format!("S3CRET-{field}-{stamp}-x9q");
    let token = format!("T0KEN-{stamp}-backend-zq7");
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token).unwrap();
    let sock = |name: &str| dir.join("sockets").join(name);
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    let mut procs = Processes {
        children: Vec::new(),
        dir: dir.to_owned(),
    };
    procs.spawn(
        "hanfs-backend",
        &[
            "--export-root",
            &s(&dir.join("export")),
            "--listen",
            &format!("unix://{}", s(&sock("backend.sock"))),
            "--auth-token-file",
            &s(&token_file),
            "--capacity-policy",
            "thin",
        ],
    );
    wait_for(&sock("backend.sock"));
    procs.spawn(
        "hanfs-controller",
        &[
            "--endpoint",
            &format!("unix://{}", s(&sock("controller.sock"))),
            "--cluster-id",
            "local",
            "--backend",
            &format!("unix://{}", s(&sock("backend.sock"))),
            "--backend-token-file",
            &s(&token_file),
        ],
    );
    procs.spawn(
        "hanfs-node",
        &[
            "--endpoint",
            &format!("unix://{}", s(&sock("node.sock"))),
            "--cluster-id",
            "local",
            "--node-id",
            "local",
            "--transport",
            "local",
            "--local-export-root",
            &s(&dir.join("export")),
            "--allowed-target-root",
            &s(&dir.join("mnt")),
        ],
    );
    wait_for(&sock("controller.sock"));
    wait_for(&sock("node.sock"));
    for name in ["backend.sock", "controller.sock", "node.sock"] {
        let mode = std::fs::metadata(sock(name)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{name} is {mode:o}");
    }

    let mut controller = ControllerClient::new(
        endpoint::connect_lazy(&Endpoint::Unix(sock("controller.sock"))).unwrap(),
    );
    let mut node =
        NodeClient::new(endpoint::connect_lazy(&Endpoint::Unix(sock("node.sock"))).unwrap());
    let secrets = |field: &str| HashMap::from([("password".to_string(), secret(field))]);
    let mut sent = Vec::new();
    let mut with = |field: &str| {
        sent.push(secret(field));
        secrets(field)
    };

    let volume = controller
        .create_volume(csi::CreateVolumeRequest {
            name: "pvc-secret".into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 1 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_capability()],
            secrets: with("create"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    // A refused request runs the error paths, which log more.
    let refused = controller
        .create_volume(csi::CreateVolumeRequest {
            name: "pvc-refused".into(),
            volume_capabilities: vec![mount_capability()],
            parameters: HashMap::from([("noSuchKey".to_string(), "x".to_string())]),
            secrets: with("create-refused"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    controller
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: volume.volume_id.clone(),
            volume_capabilities: vec![mount_capability()],
            secrets: with("validate"),
            ..Default::default()
        })
        .await
        .unwrap();
    controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: volume.volume_id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 2 << 20,
                limit_bytes: 0,
            }),
            secrets: with("expand"),
            ..Default::default()
        })
        .await
        .unwrap();
    controller
        .controller_modify_volume(csi::ControllerModifyVolumeRequest {
            volume_id: volume.volume_id.clone(),
            mutable_parameters: HashMap::from([("onDelete".to_string(), "delete".to_string())]),
            secrets: with("modify"),
        })
        .await
        .unwrap();
    let snapshot = controller
        .create_snapshot(csi::CreateSnapshotRequest {
            name: "snap-secret".into(),
            source_volume_id: volume.volume_id.clone(),
            secrets: with("snapshot"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    controller
        .list_snapshots(csi::ListSnapshotsRequest {
            secrets: with("list-snapshots"),
            ..Default::default()
        })
        .await
        .unwrap();

    let staging = dir.join("mnt/staging/pvc-secret");
    let target = dir.join("mnt/pods/pvc-secret");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    node.node_stage_volume(csi::NodeStageVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: s(&staging),
        volume_capability: Some(mount_capability()),
        secrets: with("stage"),
        volume_context: volume.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    node.node_publish_volume(csi::NodePublishVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: s(&staging),
        target_path: s(&target),
        volume_capability: Some(mount_capability()),
        secrets: with("publish"),
        volume_context: volume.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    std::fs::write(target.join("data"), "hello").unwrap();
    node.node_expand_volume(csi::NodeExpandVolumeRequest {
        volume_id: volume.volume_id.clone(),
        volume_path: s(&target),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 2 << 20,
            limit_bytes: 0,
        }),
        secrets: with("node-expand"),
        ..Default::default()
    })
    .await
    .ok(); // Not every transport expands on the node; only its logging matters here.
    node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: volume.volume_id.clone(),
        target_path: s(&target),
    })
    .await
    .unwrap();
    node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
        volume_id: volume.volume_id.clone(),
        staging_target_path: s(&staging),
    })
    .await
    .unwrap();
    controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snapshot.snapshot_id.clone(),
            secrets: with("delete-snapshot"),
        })
        .await
        .unwrap();
    controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: volume.volume_id.clone(),
            secrets: with("delete"),
        })
        .await
        .unwrap();
    procs.stop();

    // Every line of every process, stdout and stderr.
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            lines.extend(text.lines().map(|l| (name.clone(), l.to_owned())));
        }
    }
    let mut needles = sent.clone();
    needles.push(token.clone());
    let hits: Vec<_> = lines
        .iter()
        .filter(|(_, line)| needles.iter().any(|n| line.contains(n.as_str())))
        .collect();
    let calls_logged = lines
        .iter()
        .filter(|(_, l)| l.contains("CSI call done") || l.contains("CSI call failed"))
        .count();
    println!(
        "{} log lines of 3 processes at trace level, {calls_logged} CSI call lines, \
         {} secrets + 1 token searched: {} hits",
        lines.len(),
        sent.len(),
        hits.len()
    );
    // The capture works and the calls were logged with their requests (the volume id
    // appears), so 0 hits means redacted, not unlogged.
    assert!(calls_logged >= 14, "only {calls_logged} CSI call lines");
    assert!(
        lines
            .iter()
            .any(|(_, l)| l.contains("pvc-secret") && l.contains("secrets")),
        "no request with its secrets field was logged at all"
    );
    assert!(hits.is_empty(), "secrets in the logs: {hits:#?}");
}

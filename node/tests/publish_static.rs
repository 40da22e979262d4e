//! Static volumes (csi-driver-nfs style PVs: any handle, `subDir` in the volume context)
//! through the node service over real gRPC, with real bind mounts in a tempdir (local
//! transport: the directory is `<export root>/<subDir>`). Needs root. The fixture lazily
//! unmounts everything below its tempdir when dropped, also when a test fails.

// Test helpers, not only #[test] fns, panic on unexpected failures.
#![allow(clippy::unwrap_used)]

use common::endpoint::{Endpoint, Listener, connect_lazy};
use common::ids::ClusterId;
use common::mountinfo;
use node::{NodeConfig, Transport};
use proto::csi::v1::node_client::NodeClient;
use proto::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode};
use proto::csi::v1::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

/// The handle a csi-driver-nfs PV would carry: `server#share#subdir`.
const HANDLE: &str = "10.0.0.100#/export#volumes/legacy-data";

/// Lazily unmounts every mount at or below its directory, deepest first.
struct UnmountGuard(PathBuf);

impl Drop for UnmountGuard {
    fn drop(&mut self) {
        for _ in 0..64 {
            let Ok(table) = mountinfo::read_self() else {
                return;
            };
            let below = mountinfo::mounts_below(&table, &self.0);
            let Some(deepest) = below.first() else { return };
            if let Err(err) = nix::mount::umount2(deepest, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cleanup: unmounting {}: {err}", deepest.display());
                return;
            }
        }
    }
}

struct Fixture {
    node: NodeClient<Channel>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// Canonical tempdir path.
    root: PathBuf,
    /// Declared before `_dir`, so mounts go before the directory is removed.
    _unmount: UnmountGuard,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let unmount = UnmountGuard(root.clone());
        std::fs::create_dir_all(root.join("export/volumes")).unwrap();
        std::fs::create_dir_all(root.join("pods")).unwrap();
        let config = NodeConfig {
            driver_name: "hanfs.csi.io".into(),
            node_id: "node-a".into(),
            cluster_id: ClusterId::parse("test").unwrap(),
            transport: Transport::Local {
                export_root: root.join("export"),
            },
            allowed_target_roots: vec![root.join("pods")],
            mount_timeout: Duration::from_secs(20),
            stats_timeout: Duration::from_secs(10),
            helper_binary: PathBuf::from(env!("CARGO_BIN_EXE_hanfs-node")),
        };
        let endpoint = Endpoint::Unix(root.join("csi.sock"));
        let listener = Listener::bind(&endpoint).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(node::run(config, listener, async {
            let _ = rx.await;
        }));
        Fixture {
            node: NodeClient::new(connect_lazy(&endpoint).unwrap()),
            shutdown: Some(tx),
            root,
            _unmount: unmount,
            _dir: dir,
        }
    }

    fn export(&self) -> PathBuf {
        self.root.join("export")
    }

    /// A directory that existed before hanfs, with one file in it.
    fn legacy_dir(&self, sub_dir: &str) -> PathBuf {
        let dir = self.export().join(sub_dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("adopted.txt"), "data from before hanfs\n").unwrap();
        dir
    }

    fn target(&self, name: &str) -> PathBuf {
        self.root.join("pods").join(name)
    }

    async fn publish(
        &mut self,
        id: &str,
        context: HashMap<String, String>,
        target: &Path,
    ) -> Result<(), tonic::Status> {
        let req = NodePublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: Some(mount_capability()),
            volume_context: context,
            ..Default::default()
        };
        self.node.node_publish_volume(req).await.map(drop)
    }

    async fn unpublish(&mut self, id: &str, target: &Path) -> Result<(), tonic::Status> {
        let req = NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.to_string_lossy().into_owned(),
        };
        self.node.node_unpublish_volume(req).await.map(drop)
    }

    async fn stats(
        &mut self,
        id: &str,
        path: &Path,
    ) -> Result<NodeGetVolumeStatsResponse, tonic::Status> {
        let req = NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path.to_string_lossy().into_owned(),
            staging_target_path: String::new(),
        };
        self.node
            .node_get_volume_stats(req)
            .await
            .map(|r| r.into_inner())
    }

    /// How many mounts there are at or below `path`.
    fn mounts_under(&self, path: &Path) -> usize {
        mountinfo::mounts_below(&mountinfo::read_self().unwrap(), path).len()
    }

    /// Asserts nothing of a refused publish is left: no mount, no target.
    fn assert_nothing_at(&self, target: &Path, what: &str) {
        assert_eq!(self.mounts_under(target), 0, "{what}: a mount was left");
        assert!(!target.exists(), "{what}: the target was left");
    }
}

fn mount_capability() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

/// The volumeAttributes of a csi-driver-nfs PV.
fn attributes(sub_dir: &str) -> HashMap<String, String> {
    [
        ("server", "10.0.0.100"),
        ("share", "/export"),
        ("subDir", sub_dir),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn assert_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code) -> String {
    match result {
        Err(status) if status.code() == code => status.message().to_owned(),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_static_pv_publishes_its_existing_directory() {
    let mut f = Fixture::new().await;
    let legacy = f.legacy_dir("volumes/legacy-data");
    let target = f.target("pod-a");

    // Duplicate and trailing slashes are normalized.
    f.publish(HANDLE, attributes("volumes//legacy-data/"), &target)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(target.join("adopted.txt")).unwrap(),
        "data from before hanfs\n"
    );
    std::fs::write(target.join("new.txt"), "written by the pod").unwrap();
    assert_eq!(
        std::fs::read_to_string(legacy.join("new.txt")).unwrap(),
        "written by the pod"
    );
    // CSI idempotency, also with the key spelled otherwise.
    let mut other_case = HashMap::new();
    other_case.insert("SubDir".to_owned(), "volumes/legacy-data".to_owned());
    f.publish(HANDLE, other_case, &target).await.unwrap();
    assert_eq!(f.mounts_under(&target), 1);

    // Another directory where this one is mounted is ALREADY_EXISTS.
    f.legacy_dir("volumes/other");
    let message = assert_code(
        f.publish(
            "10.0.0.100#/export#volumes/other",
            attributes("volumes/other"),
            &target,
        )
        .await,
        Code::AlreadyExists,
    );
    assert!(message.contains("volumes/other"), "{message}");

    // Stats get no context: the handle and a mount of the export are enough.
    let stats = f.stats(HANDLE, &target).await.unwrap();
    assert!(!stats.usage.is_empty());
    assert!(!stats.usage.is_empty());
    let plain = f.target("plain");
    std::fs::create_dir(&plain).unwrap();
    assert_code(f.stats(HANDLE, &plain).await, Code::NotFound);

    f.unpublish(HANDLE, &target).await.unwrap();
    f.assert_nothing_at(&target, "unpublish");
    assert!(legacy.join("adopted.txt").exists(), "the data stays");
}

#[tokio::test]
async fn a_static_pv_stages_once_and_publishes_per_pod() {
    let mut f = Fixture::new().await;
    f.legacy_dir("legacy");
    let staging = f.target("staging");
    std::fs::create_dir(&staging).unwrap();
    let handle = "nfs-server.example#/export#legacy#0b1c";
    let stage = NodeStageVolumeRequest {
        volume_id: handle.into(),
        staging_target_path: staging.to_string_lossy().into_owned(),
        volume_capability: Some(mount_capability()),
        volume_context: attributes("legacy"),
        ..Default::default()
    };
    f.node.node_stage_volume(stage.clone()).await.unwrap();
    f.node.node_stage_volume(stage).await.expect("again is OK");

    let pod = f.target("pod-a");
    let publish = |context| NodePublishVolumeRequest {
        volume_id: handle.into(),
        staging_target_path: staging.to_string_lossy().into_owned(),
        target_path: pod.to_string_lossy().into_owned(),
        volume_capability: Some(mount_capability()),
        readonly: true,
        volume_context: context,
        ..Default::default()
    };
    // Publishing another subDir from this staging path: it is not staged there.
    let message = assert_code(
        f.node
            .node_publish_volume(publish(attributes("elsewhere")))
            .await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("NodeStageVolume"), "{message}");
    f.assert_nothing_at(&pod, "publish from the wrong staging");

    f.node
        .node_publish_volume(publish(attributes("legacy")))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(pod.join("adopted.txt")).unwrap(),
        "data from before hanfs\n"
    );
    let err = std::fs::write(pod.join("x"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    f.unpublish(handle, &pod).await.unwrap();
    f.node
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: handle.into(),
            staging_target_path: staging.to_string_lossy().into_owned(),
        })
        .await
        .unwrap();
    assert_eq!(f.mounts_under(&staging), 0);
}

#[tokio::test]
async fn traversal_and_malformed_sub_dirs_are_invalid_and_leave_no_mount() {
    let mut f = Fixture::new().await;
    // Real directories where a traversal would land, so only the check can refuse it.
    std::fs::create_dir_all(f.root.join("etc")).unwrap();
    std::fs::create_dir_all(f.root.join("b")).unwrap();
    f.legacy_dir("a");
    let target = f.target("pod-a");
    for sub_dir in [
        "../etc",
        "a/../../b",
        "a/..",
        "/etc",
        f.root.join("etc").to_str().unwrap(),
        "",
        "/",
        "./a",
        "a,b",
        "a:b",
        "a\nb",
    ] {
        let message = assert_code(
            f.publish(HANDLE, attributes(sub_dir), &target).await,
            Code::InvalidArgument,
        );
        assert!(message.contains("subDir"), "{sub_dir:?}: {message}");
        f.assert_nothing_at(&target, sub_dir);

        let staging = f.target("staging");
        let stage = NodeStageVolumeRequest {
            volume_id: HANDLE.into(),
            staging_target_path: staging.to_string_lossy().into_owned(),
            volume_capability: Some(mount_capability()),
            volume_context: attributes(sub_dir),
            ..Default::default()
        };
        assert_code(f.node.node_stage_volume(stage).await, Code::InvalidArgument);
        f.assert_nothing_at(&staging, sub_dir);
    }
    // subDir spelled twice with different values.
    let mut twice = attributes("a");
    twice.insert("subdir".into(), "../etc".into());
    let message = assert_code(
        f.publish(HANDLE, twice, &target).await,
        Code::InvalidArgument,
    );
    assert!(message.contains("case-insensitive"), "{message}");
    f.assert_nothing_at(&target, "ambiguous subDir");
}

#[tokio::test]
async fn symlinks_out_of_the_export_are_refused() {
    let mut f = Fixture::new().await;
    let outside = f.root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "not for pods").unwrap();
    let volumes = f.export().join("volumes");
    std::os::unix::fs::symlink(&outside, volumes.join("escape")).unwrap();
    std::os::unix::fs::symlink("../../outside", volumes.join("relative-escape")).unwrap();
    // Back to the export root itself: every volume in one PV.
    std::os::unix::fs::symlink("..", volumes.join("root")).unwrap();
    let target = f.target("pod-a");
    for sub_dir in ["volumes/escape", "volumes/relative-escape", "volumes/root"] {
        let message = assert_code(
            f.publish(HANDLE, attributes(sub_dir), &target).await,
            Code::InvalidArgument,
        );
        assert!(
            message.contains("not inside the export root"),
            "{sub_dir}: {message}"
        );
        f.assert_nothing_at(&target, sub_dir);
    }
    // A symlink that stays inside is followed.
    f.legacy_dir("volumes/legacy-data");
    std::os::unix::fs::symlink("legacy-data", volumes.join("alias")).unwrap();
    f.publish(HANDLE, attributes("volumes/alias"), &target)
        .await
        .unwrap();
    assert!(target.join("adopted.txt").exists());
    f.unpublish(HANDLE, &target).await.unwrap();
}

#[tokio::test]
async fn handles_and_missing_directories() {
    let mut f = Fixture::new().await;
    let target = f.target("pod-a");
    // The directory must exist: a static PV adopts, it does not create.
    let message = assert_code(
        f.publish(HANDLE, attributes("volumes/missing"), &target)
            .await,
        Code::NotFound,
    );
    assert!(message.contains("volumes/missing"), "{message}");
    f.assert_nothing_at(&target, "missing directory");

    f.legacy_dir("volumes/legacy-data");
    // A handle shaped like a hanfs id would be misread by stats (no context there).
    let message = assert_code(
        f.publish(
            "v1/test/legacy-data",
            attributes("volumes/legacy-data"),
            &target,
        )
        .await,
        Code::InvalidArgument,
    );
    assert!(message.contains("v1/"), "{message}");
    for bad in ["with\0nul", &"x".repeat(4096)] {
        assert_code(
            f.publish(bad, attributes("volumes/legacy-data"), &target)
                .await,
            Code::InvalidArgument,
        );
        f.assert_nothing_at(&target, "bad handle");
    }
    // Without subDir a foreign handle is still not one of ours, as before.
    let mut plain = attributes("x");
    plain.remove("subDir");
    assert_code(f.publish(HANDLE, plain, &target).await, Code::NotFound);
    f.assert_nothing_at(&target, "foreign handle without subDir");
}

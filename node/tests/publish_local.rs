//! The node service over real gRPC on a unix socket, with real bind mounts in a tempdir
//! (local transport). Needs root. Every fixture lazily unmounts everything below its
//! tempdir when dropped, also when a test fails, so no mount outlives a test.

// Test helpers, not only #[test] fns, panic on unexpected failures.
#![allow(clippy::unwrap_used)]

use common::endpoint::{Endpoint, Listener, connect_lazy};
use common::ids::ClusterId;
use common::mountinfo;
use node::{NodeConfig, Transport};
use proto::csi::v1::identity_client::IdentityClient;
use proto::csi::v1::node_client::NodeClient;
use proto::csi::v1::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume, access_mode,
};
use proto::csi::v1::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

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
    identity: IdentityClient<Channel>,
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
        Self::with(|_, _| {}).await
    }

    /// A fixture whose config `tweak` may change; it gets the canonical tempdir path.
    async fn with(tweak: impl FnOnce(&Path, &mut NodeConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let unmount = UnmountGuard(root.clone());
        std::fs::create_dir_all(root.join("export/volumes")).unwrap();
        std::fs::create_dir_all(root.join("pods")).unwrap();
        let mut config = NodeConfig {
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
        tweak(&root, &mut config);
        let endpoint = Endpoint::Unix(root.join("csi.sock"));
        let listener = Listener::bind(&endpoint).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(node::run(config, listener, async {
            let _ = rx.await;
        }));
        let channel = connect_lazy(&endpoint).unwrap();
        Fixture {
            node: NodeClient::new(channel.clone()),
            identity: IdentityClient::new(channel),
            shutdown: Some(tx),
            root,
            _unmount: unmount,
            _dir: dir,
        }
    }

    /// Creates `<export>/volumes/<name>` and returns its id.
    fn volume(&self, name: &str) -> String {
        std::fs::create_dir(self.volume_dir(name)).unwrap();
        format!("v1/test/{name}")
    }

    fn volume_dir(&self, name: &str) -> PathBuf {
        self.root.join("export/volumes").join(name)
    }

    fn target(&self, name: &str) -> PathBuf {
        self.root.join("pods").join(name)
    }

    async fn publish(
        &mut self,
        id: &str,
        target: &Path,
        readonly: bool,
    ) -> Result<(), tonic::Status> {
        let req = publish_request(id, &target.to_string_lossy(), readonly);
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
        path: &str,
    ) -> Result<NodeGetVolumeStatsResponse, tonic::Status> {
        let req = NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path.into(),
            staging_target_path: String::new(),
        };
        self.node
            .node_get_volume_stats(req)
            .await
            .map(|r| r.into_inner())
    }

    fn mounts_at(&self, target: &Path) -> usize {
        mountinfo::mounts_at(&mountinfo::read_self().unwrap(), target).len()
    }
}

fn mount_capability() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn publish_request(id: &str, target: &str, readonly: bool) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.into(),
        volume_capability: Some(mount_capability()),
        readonly,
        ..Default::default()
    }
}

fn assert_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code) -> String {
    match result {
        Err(status) if status.code() == code => status.message().to_owned(),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn publish_write_stats_unpublish() {
    let mut f = Fixture::new().await;
    let id = f.volume("pvc-1");
    let target = f.target("pod-a");
    f.publish(&id, &target, false).await.unwrap();
    assert_eq!(f.mounts_at(&target), 1);

    std::fs::write(target.join("hello"), "through the mount").unwrap();
    assert_eq!(
        std::fs::read_to_string(f.volume_dir("pvc-1").join("hello")).unwrap(),
        "through the mount"
    );

    let stats = f.stats(&id, &target.to_string_lossy()).await.unwrap();
    let bytes = stats
        .usage
        .iter()
        .find(|u| u.unit == volume_usage::Unit::Bytes as i32)
        .unwrap();
    assert!(
        bytes.total > 0 && bytes.available > 0 && bytes.used > 0,
        "{bytes:?}"
    );
    let inodes = stats
        .usage
        .iter()
        .find(|u| u.unit == volume_usage::Unit::Inodes as i32)
        .unwrap();
    assert!(inodes.total > 0, "{inodes:?}");
    assert!(!stats.usage.is_empty());

    let mut expand = NodeExpandVolumeRequest {
        volume_id: id.clone(),
        volume_path: target.to_string_lossy().into_owned(),
        capacity_range: Some(CapacityRange {
            required_bytes: 5 << 30,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let expanded = f
        .node
        .node_expand_volume(expand.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expanded.capacity_bytes, 5 << 30);

    f.unpublish(&id, &target).await.unwrap();
    assert_eq!(f.mounts_at(&target), 0);
    assert!(!target.exists(), "unpublish removes the target it created");
    f.unpublish(&id, &target)
        .await
        .expect("unpublish twice is OK");
    assert!(
        f.volume_dir("pvc-1").join("hello").exists(),
        "the data stays in the volume"
    );

    expand.volume_path = target.to_string_lossy().into_owned();
    assert_code(f.node.node_expand_volume(expand).await, Code::NotFound);
}

#[tokio::test]
async fn publish_is_idempotent_and_conflicts_are_already_exists() {
    let mut f = Fixture::new().await;
    let id = f.volume("pvc-1");
    let other = f.volume("pvc-2");
    let target = f.target("pod-a");
    f.publish(&id, &target, false).await.unwrap();
    f.publish(&id, &target, false)
        .await
        .expect("same publish again is OK");
    assert_eq!(f.mounts_at(&target), 1, "no second mount stacked");

    let msg = assert_code(f.publish(&id, &target, true).await, Code::AlreadyExists);
    assert!(msg.contains("read-write"), "{msg}");
    let msg = assert_code(f.publish(&other, &target, false).await, Code::AlreadyExists);
    assert!(
        msg.contains("pvc-1") || msg.contains("not v1/test/pvc-2"),
        "{msg}"
    );
    assert_eq!(f.mounts_at(&target), 1);
}

#[tokio::test]
async fn readonly_publish_rejects_writes() {
    let mut f = Fixture::new().await;
    let id = f.volume("pvc-ro");
    std::fs::write(f.volume_dir("pvc-ro").join("data"), "old").unwrap();
    let target = f.target("pod-ro");
    f.publish(&id, &target, true).await.unwrap();

    assert_eq!(std::fs::read_to_string(target.join("data")).unwrap(), "old");
    let err = std::fs::write(target.join("new"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // Only the bind mount is read-only, not the volume.
    std::fs::write(f.volume_dir("pvc-ro").join("still-writable"), "x").unwrap();

    f.publish(&id, &target, true)
        .await
        .expect("same readonly publish again is OK");
    assert_code(f.publish(&id, &target, false).await, Code::AlreadyExists);
    f.unpublish(&id, &target).await.unwrap();
    assert!(!target.exists());
}

#[tokio::test]
async fn targets_outside_the_roots_are_invalid_and_nothing_is_created() {
    let mut f = Fixture::new().await;
    let id = f.volume("pvc-1");
    let etc_target = PathBuf::from(format!("/etc/hanfs-test-{}", std::process::id()));
    let msg = assert_code(
        f.publish(&id, &etc_target, false).await,
        Code::InvalidArgument,
    );
    assert!(
        msg.contains(&f.root.join("pods").display().to_string()),
        "names the roots: {msg}"
    );
    assert!(!etc_target.exists());

    let dotdot = format!("{}/pods/../escape", f.root.display());
    let req = publish_request(&id, &dotdot, false);
    assert_code(f.node.node_publish_volume(req).await, Code::InvalidArgument);
    assert!(!f.root.join("escape").exists());

    let req = publish_request(&id, "pods/relative", false);
    assert_code(f.node.node_publish_volume(req).await, Code::InvalidArgument);

    // A symlink inside the root pointing out of it.
    std::os::unix::fs::symlink(f.root.join("export"), f.root.join("pods/link")).unwrap();
    let escaped = f.root.join("pods/link/volumes/x");
    assert_code(f.publish(&id, &escaped, false).await, Code::InvalidArgument);
    assert!(!f.root.join("export/volumes/x").exists());

    // The unpublish side checks the same.
    assert_code(f.unpublish(&id, &etc_target).await, Code::InvalidArgument);
    assert_eq!(
        mountinfo::mounts_below(&mountinfo::read_self().unwrap(), &f.root).len(),
        0
    );
}

#[tokio::test]
async fn a_target_that_is_a_symlink_is_refused() {
    let mut f = Fixture::new().await;
    let id = f.volume("pvc-1");
    std::fs::create_dir(f.root.join("pods/real")).unwrap();
    let link = f.target("link");
    std::os::unix::fs::symlink(f.root.join("pods/real"), &link).unwrap();
    assert_code(f.publish(&id, &link, false).await, Code::InvalidArgument);
    assert_eq!(f.mounts_at(&f.root.join("pods/real")), 0);
}

#[tokio::test]
async fn missing_and_foreign_volumes_are_not_found_and_leave_no_target() {
    let mut f = Fixture::new().await;
    let target = f.target("pod-a");
    let msg = assert_code(
        f.publish("v1/test/pvc-missing", &target, false).await,
        Code::NotFound,
    );
    assert!(msg.contains("pvc-missing"), "{msg}");
    assert!(!target.exists());
    assert_code(
        f.publish("v1/other-cluster/pvc-1", &target, false).await,
        Code::NotFound,
    );
    assert_code(f.publish("not-ours", &target, false).await, Code::NotFound);
    assert_code(
        f.publish("v1/test/..", &target, false).await,
        Code::InvalidArgument,
    );
    assert!(!target.exists());
}

#[tokio::test]
async fn required_fields_and_block_access_are_invalid_arguments() {
    let mut f = Fixture::new().await;
    let id = f.volume("pvc-1");
    let target = f.target("pod-a").to_string_lossy().into_owned();

    let msg = assert_code(
        f.node
            .node_publish_volume(publish_request("", &target, false))
            .await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("volume_id"), "{msg}");
    let msg = assert_code(
        f.node
            .node_publish_volume(publish_request(&id, "", false))
            .await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("target_path"), "{msg}");
    let mut req = publish_request(&id, &target, false);
    req.volume_capability = None;
    let msg = assert_code(f.node.node_publish_volume(req).await, Code::InvalidArgument);
    assert!(msg.contains("volume_capability"), "{msg}");
    let mut req = publish_request(&id, &target, false);
    req.volume_capability = Some(VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::SingleNodeWriter as i32,
        }),
    });
    let msg = assert_code(f.node.node_publish_volume(req).await, Code::InvalidArgument);
    assert!(msg.contains("volumeMode: Filesystem"), "{msg}");
    let mut req = publish_request(&id, &target, false);
    req.volume_capability = Some(VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            mount_flags: vec!["ro,remount".into()],
            ..Default::default()
        })),
        access_mode: None,
    });
    assert_code(f.node.node_publish_volume(req).await, Code::InvalidArgument);
    assert!(!Path::new(&target).exists());

    assert_code(
        f.unpublish("", Path::new(&target)).await,
        Code::InvalidArgument,
    );
    assert_code(f.unpublish(&id, Path::new("")).await, Code::InvalidArgument);
    assert_code(f.stats("", &target).await, Code::InvalidArgument);
    assert_code(f.stats(&id, "").await, Code::InvalidArgument);
    let expand = NodeExpandVolumeRequest {
        volume_id: id.clone(),
        ..Default::default()
    };
    assert_code(
        f.node.node_expand_volume(expand).await,
        Code::InvalidArgument,
    );
    let expand = NodeExpandVolumeRequest {
        volume_path: target.clone(),
        ..Default::default()
    };
    assert_code(
        f.node.node_expand_volume(expand).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn stats_of_anything_but_a_mount_of_the_volume_is_not_found() {
    let mut f = Fixture::new().await;
    let id = f.volume("pvc-1");
    let other = f.volume("pvc-2");
    let plain = f.target("plain-dir");
    std::fs::create_dir(&plain).unwrap();
    assert_code(f.stats(&id, &plain.to_string_lossy()).await, Code::NotFound);
    assert_code(f.stats(&id, "/path/does/not/exist").await, Code::NotFound);
    assert_code(f.stats(&id, "some/path").await, Code::NotFound);
    assert_code(
        f.stats("fake-vol-id", &plain.to_string_lossy()).await,
        Code::NotFound,
    );

    let target = f.target("pod-a");
    f.publish(&id, &target, false).await.unwrap();
    assert_code(
        f.stats(&other, &target.to_string_lossy()).await,
        Code::NotFound,
    );
    assert_code(
        f.stats("v1/elsewhere/pvc-1", &target.to_string_lossy())
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn unpublish_removes_stacked_mounts_and_plain_targets() {
    let mut f = Fixture::new().await;
    let id = f.volume("pvc-1");
    let target = f.target("pod-a");
    f.publish(&id, &target, false).await.unwrap();
    // Something else stacked on top (e.g. left by a crashed earlier attempt).
    let extra = f.root.join("extra");
    std::fs::create_dir(&extra).unwrap();
    nix::mount::mount(
        Some(&extra),
        &target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    assert_eq!(f.mounts_at(&target), 2);
    f.unpublish(&id, &target).await.unwrap();
    assert_eq!(f.mounts_at(&target), 0);
    assert!(!target.exists());

    // A target directory with nothing mounted (kubelet made it, the mount never came).
    std::fs::create_dir(&target).unwrap();
    f.unpublish(&id, &target).await.unwrap();
    assert!(!target.exists());
    // A target whose parent is gone too.
    f.unpublish(&id, &f.root.join("pods/gone/mount"))
        .await
        .unwrap();
}

#[tokio::test]
async fn identity_and_node_info() {
    let mut f = Fixture::new().await;
    let info = f
        .identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "hanfs.csi.io");
    let probe = f
        .identity
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    let caps = f
        .identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap();
    // The plugin as a whole has a controller and a group controller; the node socket
    // says so too.
    assert_eq!(caps.into_inner().capabilities.len(), 3);

    let info = f
        .node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.node_id.as_str(), info.max_volumes_per_node),
        ("node-a", 0)
    );
    let caps = f
        .node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .map(|node_service_capability::Type::Rpc(rpc)| rpc.r#type)
        })
        .collect();
    use node_service_capability::rpc::Type;
    for want in [
        Type::GetVolumeStats,
        Type::SingleNodeMultiWriter,
        Type::ExpandVolume,
    ] {
        assert!(kinds.contains(&(want as i32)), "{want:?} missing");
    }
    assert!(kinds.contains(&(Type::StageUnstageVolume as i32)));
    let stage = NodeStageVolumeRequest::default();
    assert_code(f.node.node_stage_volume(stage).await, Code::InvalidArgument);

    std::fs::remove_dir_all(f.root.join("export")).unwrap();
    assert_code(
        f.identity.probe(ProbeRequest {}).await,
        Code::FailedPrecondition,
    );
}

/// A helper that runs the real one, except that `hang` (`mount` or `statfs`) never
/// returns, as on a dead NFS server.
fn hanging_helper(root: &Path, hang: &str) -> PathBuf {
    let script = root.join(format!("hang-{hang}.sh"));
    let source = root.join(format!("hang-{hang}.src"));
    let real = env!("CARGO_BIN_EXE_hanfs-node");
    std::fs::write(
        &source,
        format!("#!/bin/sh\n[ \"$2\" = {hang} ] && exec sleep 30\nexec {real} \"$@\"\n"),
    )
    .unwrap();
    // Written by another process: a file this multi-threaded test process had open for
    // writing could leak into a concurrently forked child and make exec fail (ETXTBSY).
    let status = std::process::Command::new("install")
        .args(["-m", "0755"])
        .arg(&source)
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success());
    script
}

#[tokio::test]
async fn a_hung_mount_is_killed_reported_and_leaves_no_target() {
    let mut f = Fixture::with(|root, config| {
        config.helper_binary = hanging_helper(root, "mount");
        config.mount_timeout = Duration::from_millis(300);
    })
    .await;
    let id = f.volume("pvc-1");
    let target = f.target("pod-a");
    let started = std::time::Instant::now();
    let msg = assert_code(f.publish(&id, &target, false).await, Code::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(msg.contains("killed"), "{msg}");
    assert!(!target.exists(), "the target we created is removed again");
    assert_eq!(f.mounts_at(&target), 0);
}

#[tokio::test]
async fn a_hung_statfs_is_a_bounded_error_in_stats() {
    let mut f = Fixture::with(|root, config| {
        config.helper_binary = hanging_helper(root, "statfs");
        config.stats_timeout = Duration::from_millis(300);
    })
    .await;
    let id = f.volume("pvc-1");
    let target = f.target("pod-a");
    f.publish(&id, &target, false).await.unwrap();
    let started = std::time::Instant::now();
    let msg = assert_code(
        f.stats(&id, &target.to_string_lossy()).await,
        Code::DeadlineExceeded,
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(msg.contains("killed") || msg.contains("300ms"), "{msg}");
    f.unpublish(&id, &target).await.unwrap();
}

/// The kubelet flow: stage once per node, then one bind mount per pod (read-only where
/// asked), unpublish and unstage in reverse.
#[tokio::test]
async fn stage_then_publish_per_pod_then_unstage() {
    let mut f = Fixture::new().await;
    let id = f.volume("pvc-s");
    let staging = f.target("staging-pvc-s");
    std::fs::create_dir(&staging).unwrap();
    let stage = NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.to_string_lossy().into_owned(),
        volume_capability: Some(mount_capability()),
        ..Default::default()
    };
    f.node.node_stage_volume(stage.clone()).await.unwrap();
    f.node
        .node_stage_volume(stage.clone())
        .await
        .expect("staging again is OK");
    assert_eq!(f.mounts_at(&staging), 1);

    let publish = |target: &Path, readonly: bool| NodePublishVolumeRequest {
        staging_target_path: staging.to_string_lossy().into_owned(),
        ..publish_request(&id, &target.to_string_lossy(), readonly)
    };
    let (pod_a, pod_b) = (f.target("pod-a"), f.target("pod-b"));
    f.node
        .node_publish_volume(publish(&pod_a, false))
        .await
        .unwrap();
    f.node
        .node_publish_volume(publish(&pod_b, true))
        .await
        .unwrap();
    std::fs::write(pod_a.join("shared"), "from a").unwrap();
    assert_eq!(
        std::fs::read_to_string(pod_b.join("shared")).unwrap(),
        "from a"
    );
    assert_eq!(
        std::fs::read_to_string(f.volume_dir("pvc-s").join("shared")).unwrap(),
        "from a"
    );
    let err = std::fs::write(pod_b.join("x"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let stats = f.stats(&id, &pod_b.to_string_lossy()).await.unwrap();
    assert!(!stats.usage.is_empty());

    // Another volume cannot be staged where this one is.
    let other = f.volume("pvc-other");
    let clash = NodeStageVolumeRequest {
        volume_id: other.clone(),
        ..stage.clone()
    };
    assert_code(f.node.node_stage_volume(clash).await, Code::AlreadyExists);
    // Publishing from a staging path where the volume is not staged is refused.
    let not_staged = NodePublishVolumeRequest {
        staging_target_path: f.target("nowhere").to_string_lossy().into_owned(),
        ..publish_request(&other, &f.target("pod-c").to_string_lossy(), false)
    };
    let message = assert_code(
        f.node.node_publish_volume(not_staged).await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("NodeStageVolume"), "{message}");
    assert!(!f.target("pod-c").exists());

    f.unpublish(&id, &pod_a).await.unwrap();
    f.unpublish(&id, &pod_b).await.unwrap();
    let unstage = NodeUnstageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.to_string_lossy().into_owned(),
    };
    f.node.node_unstage_volume(unstage.clone()).await.unwrap();
    f.node
        .node_unstage_volume(unstage)
        .await
        .expect("unstaging again is OK");
    assert_eq!(f.mounts_at(&staging), 0);
    assert!(staging.exists(), "the staging directory belongs to the CO");
    assert_eq!(
        std::fs::read_to_string(f.volume_dir("pvc-s").join("shared")).unwrap(),
        "from a"
    );
}

fn mount_tmpfs(source: &str, at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    nix::mount::mount(
        Some(source),
        at,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
}

fn bind(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    nix::mount::mount(
        Some(from),
        to,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
}

/// Leftover 7b, local transport: the export is the node's "server". Both exports are
/// their own tmpfs, so the volume's directory has the same root (`/volumes/pvc-1`) in
/// each and only the device tells them apart. A target (or staging path) already
/// mounted from the other export is another volume: ALREADY_EXISTS, and the mount that
/// is there stays untouched.
#[tokio::test]
async fn a_target_mounted_from_another_export_is_already_exists() {
    let mut f = Fixture::with(|root, _| {
        mount_tmpfs("hanfs-test-export", &root.join("export"));
        std::fs::create_dir(root.join("export/volumes")).unwrap();
        mount_tmpfs("hanfs-test-other-export", &root.join("other-export"));
        std::fs::create_dir_all(root.join("other-export/volumes/pvc-1")).unwrap();
    })
    .await;
    let id = f.volume("pvc-1");
    let foreign = f.root.join("other-export/volumes/pvc-1");
    std::fs::write(foreign.join("marker"), "other export").unwrap();

    let target = f.target("pod-x");
    bind(&foreign, &target);
    let message = assert_code(f.publish(&id, &target, false).await, Code::AlreadyExists);
    assert!(message.contains("is mounted there"), "{message}");
    assert_eq!(f.mounts_at(&target), 1, "nothing was mounted over it");
    assert!(
        target.join("marker").exists(),
        "the other export's mount stays"
    );

    let staging = f.target("staging-pvc-1");
    bind(&foreign, &staging);
    let stage = NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.to_string_lossy().into_owned(),
        volume_capability: Some(mount_capability()),
        ..Default::default()
    };
    assert_code(f.node.node_stage_volume(stage).await, Code::AlreadyExists);
    assert_eq!(f.mounts_at(&staging), 1);

    // The same path from the node's own export is this volume: publish again is OK.
    nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).unwrap();
    bind(&f.volume_dir("pvc-1"), &target);
    f.publish(&id, &target, false)
        .await
        .expect("already published from this export");
    assert_eq!(f.mounts_at(&target), 1);
}

/// Leftover 7b, NFS transport: the host has no NFS, so a tmpfs stands in whose source
/// reads like an NFS one; the kernel shows it in mountinfo exactly as given, as it does
/// for NFS. The comparison stage and publish make is run on that real mountinfo entry.
#[test]
fn nfs_origin_compares_server_and_export_of_a_real_mount() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let _unmount = UnmountGuard(root.clone());
    let target = root.join("target");
    mount_tmpfs("10.0.0.7:/export/volumes/pvc-1", &target);
    let table = mountinfo::read_self().unwrap();
    let mounted = mountinfo::topmost_at(&table, &target).unwrap();
    assert_eq!(mounted.source, "10.0.0.7:/export/volumes/pvc-1");
    let origin = |server: &str, share: &str| {
        node::mount_spec::NfsOrigin::new(
            &node::mount_spec::NfsLocation {
                server: server.into(),
                share: share.into(),
            },
            format!("{share}/volumes/pvc-1"),
        )
    };
    let check = |o| node::mount_spec::nfs_origin_mismatch(mounted, &o);
    assert_eq!(check(origin("10.0.0.7", "/export")), None);
    let other_server = check(origin("10.0.0.8", "/export")).expect("another server");
    assert!(other_server.contains("10.0.0.7"), "{other_server}");
    let other_export = check(origin("10.0.0.7", "/srv")).expect("another export");
    assert!(
        other_export.contains("/srv/volumes/pvc-1"),
        "{other_export}"
    );
}

impl Fixture {
    async fn volume_health(
        &mut self,
        id: &str,
        publish_path: &str,
    ) -> Result<Vec<(VolumeHealthErrorType, String)>, tonic::Status> {
        let req = NodeGetVolumeHealthRequest {
            volume_id: id.into(),
            volume_publish_path: publish_path.into(),
            staging_target_path: String::new(),
        };
        let health = self
            .node
            .node_get_volume_health(req)
            .await?
            .into_inner()
            .volume_health
            .unwrap();
        assert_eq!(health.volume_id, id);
        Ok(health
            .health_statuses
            .iter()
            .map(|e| (e.status(), e.reason.clone()))
            .collect())
    }

    async fn storage_health(&mut self) -> Vec<(StorageHealthErrorType, String, String)> {
        self.node
            .node_get_storage_health(NodeGetStorageHealthRequest::default())
            .await
            .unwrap()
            .into_inner()
            .backend_health
            .into_iter()
            .map(|b| (b.status(), b.reason.clone(), b.message.clone()))
            .collect()
    }
}

/// NodeGetVolumeHealth on real bind mounts: healthy while published; the directory
/// removed from the export behind the driver's back is INACCESSIBLE + DATA_LOSS while
/// the mount lingers; with neither mount nor directory the volume is NOT_FOUND.
#[tokio::test]
async fn volume_health_sees_a_directory_removed_behind_the_drivers_back() {
    let mut f = Fixture::new().await;
    let id = f.volume("pvc-h");
    let target = f.target("pod-h");
    f.publish(&id, &target, false).await.unwrap();
    let path = target.to_string_lossy().into_owned();
    assert_eq!(f.volume_health(&id, &path).await.unwrap(), []);
    // Without paths the node finds the mounts itself (csi-sanity calls it that way).
    assert_eq!(f.volume_health(&id, "").await.unwrap(), []);

    std::fs::remove_dir_all(f.volume_dir("pvc-h")).unwrap();
    let found = f.volume_health(&id, &path).await.unwrap();
    assert_eq!(
        found,
        [
            (
                VolumeHealthErrorType::Inaccessible,
                "VolumeDirectoryMissing".to_string()
            ),
            (
                VolumeHealthErrorType::DataLoss,
                "VolumeDirectoryMissing".to_string()
            )
        ]
    );
    assert_eq!(f.volume_health(&id, "").await.unwrap(), found);
    f.unpublish(&id, &target).await.unwrap();
    assert_code(f.volume_health(&id, "").await, Code::NotFound);
    assert_code(f.volume_health("", "").await, Code::InvalidArgument);
    assert_code(
        f.volume_health("v1/other-cluster/pvc-h", "").await,
        Code::NotFound,
    );
}

/// A mount whose statfs hangs (a dead NFS server) is INACCESSIBLE / NotResponding,
/// answered within the stats timeout, not after the hang.
#[tokio::test]
async fn volume_health_of_a_hung_mount_is_bounded() {
    let mut f = Fixture::with(|root, config| {
        config.helper_binary = hanging_helper(root, "statfs");
        config.stats_timeout = Duration::from_millis(300);
    })
    .await;
    let id = f.volume("pvc-1");
    let target = f.target("pod-a");
    f.publish(&id, &target, false).await.unwrap();
    let started = std::time::Instant::now();
    let found = f
        .volume_health(&id, &target.to_string_lossy())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        found,
        [(
            VolumeHealthErrorType::Inaccessible,
            "NotResponding".to_string()
        )]
    );
    // The storage probe statfs's the export root in the same helper: bounded too.
    let started = std::time::Instant::now();
    let storage = f.storage_health().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(storage.len(), 1, "{storage:?}");
    assert_eq!(storage[0].0, StorageHealthErrorType::StorageUnreachable);
    assert_eq!(storage[0].1, "StorageNotResponding");
    f.unpublish(&id, &target).await.unwrap();
}

/// Local mode: the storage is the export directory; gone, it is STORAGE_UNREACHABLE.
#[tokio::test]
async fn storage_health_follows_the_export() {
    let mut f = Fixture::new().await;
    assert_eq!(f.storage_health().await, []);
    std::fs::rename(f.root.join("export"), f.root.join("export.away")).unwrap();
    let down = f.storage_health().await;
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(down[0].0, StorageHealthErrorType::StorageUnreachable);
    assert!(down[0].2.contains("export"), "{}", down[0].2);
    std::fs::rename(f.root.join("export.away"), f.root.join("export")).unwrap();
    assert_eq!(f.storage_health().await, []);
}

/// NFS transport: NodeGetStorageHealth connects to the server's NFS port. A real TCP
/// listener on loopback stands for the server: up, then gone (as during a failover,
/// when nobody holds the VIP), then back.
#[tokio::test]
async fn storage_health_over_nfs_follows_the_server() {
    // The port stays bound, never listening, for the whole test: a freed port can be
    // taken by any other socket on the machine (or chosen as a connect's own source
    // port, which connects to itself), and the "down" server would answer. CI saw that.
    let (holder, port) = bound_not_listening();
    let listener = listen_on(port);
    let mut f = Fixture::with(|_, config| {
        config.transport = Transport::Nfs {
            default_server: Some("127.0.0.1".into()),
            default_share: "/export".into(),
            options: vec!["vers=4.2".into(), format!("port={port}")],
        };
        config.stats_timeout = Duration::from_secs(2);
    })
    .await;
    assert_eq!(f.storage_health().await, []);
    drop(listener);
    let started = std::time::Instant::now();
    let down = f.storage_health().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(down[0].0, StorageHealthErrorType::StorageUnreachable);
    assert!(
        down[0].2.contains(&format!("127.0.0.1:{port}")),
        "{}",
        down[0].2
    );
    // A volume not mounted here is as reachable as its server.
    let health = f.volume_health("v1/test/pvc-x", "").await.unwrap();
    assert_eq!(
        health,
        [(
            VolumeHealthErrorType::Inaccessible,
            "StorageUnreachable".to_string()
        )]
    );
    let _back = listen_on(port);
    assert_eq!(f.storage_health().await, []);
    assert_eq!(f.volume_health("v1/test/pvc-x", "").await.unwrap(), []);
    drop(holder);
}

/// A TCP socket bound to a free loopback port with SO_REUSEADDR, not listening:
/// connects to the port are refused, and no one else gets the port while it lives.
fn bound_not_listening() -> (std::os::fd::OwnedFd, u16) {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, getsockname, setsockopt, socket,
        sockopt::ReuseAddr,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, ReuseAddr, &true).unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, 0),
    )
    .unwrap();
    let port = getsockname::<SockaddrIn>(std::os::fd::AsRawFd::as_raw_fd(&fd))
        .unwrap()
        .port();
    (fd, port)
}

/// A listener on `port` beside [`bound_not_listening`]'s holder (both SO_REUSEADDR).
fn listen_on(port: u16) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, setsockopt, socket,
        sockopt::ReuseAddr,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, ReuseAddr, &true).unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, port),
    )
    .unwrap();
    listen(&fd, Backlog::new(16).unwrap()).unwrap();
    fd
}

/// Access modes on the node (CSI AccessMode; csi-sanity v5.6.0 checks RWOP): a
/// SINGLE_NODE_SINGLE_WRITER volume refuses a second target, read-only or not;
/// SINGLE_NODE_WRITER refuses a second read-write target but lets readers join;
/// SINGLE_NODE_MULTI_WRITER (Kubernetes RWO) allows many. Refusals are
/// FAILED_PRECONDITION and leave nothing mounted.
#[tokio::test]
async fn access_modes_are_enforced_per_target() {
    let mut f = Fixture::new().await;
    let request = |id: &str, target: &Path, mode: access_mode::Mode, readonly: bool| {
        NodePublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: Some(VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: Some(AccessMode { mode: mode as i32 }),
            }),
            readonly,
            ..Default::default()
        }
    };
    use access_mode::Mode;
    let rwop = f.volume("pvc-rwop");
    let (a, b) = (f.target("rwop-a"), f.target("rwop-b"));
    f.node
        .node_publish_volume(request(&rwop, &a, Mode::SingleNodeSingleWriter, false))
        .await
        .unwrap();
    f.node
        .node_publish_volume(request(&rwop, &a, Mode::SingleNodeSingleWriter, false))
        .await
        .expect("the same target again is idempotent");
    for readonly in [false, true] {
        let msg = assert_code(
            f.node
                .node_publish_volume(request(&rwop, &b, Mode::SingleNodeSingleWriter, readonly))
                .await,
            Code::FailedPrecondition,
        );
        assert!(msg.contains(&*a.to_string_lossy()), "{msg}");
        assert_eq!(f.mounts_at(&b), 0);
    }
    f.unpublish(&rwop, &a).await.unwrap();
    f.node
        .node_publish_volume(request(&rwop, &b, Mode::SingleNodeSingleWriter, false))
        .await
        .expect("free again once the first target is gone");
    f.unpublish(&rwop, &b).await.unwrap();

    let rwo = f.volume("pvc-snw");
    let (w, r, w2) = (f.target("snw-w"), f.target("snw-r"), f.target("snw-w2"));
    f.node
        .node_publish_volume(request(&rwo, &w, Mode::SingleNodeWriter, false))
        .await
        .unwrap();
    f.node
        .node_publish_volume(request(&rwo, &r, Mode::SingleNodeWriter, true))
        .await
        .expect("a reader may join the one writer");
    assert_code(
        f.node
            .node_publish_volume(request(&rwo, &w2, Mode::SingleNodeWriter, false))
            .await,
        Code::FailedPrecondition,
    );
    for t in [&w, &r] {
        f.unpublish(&rwo, t).await.unwrap();
    }

    let shared = f.volume("pvc-multi");
    let targets = [f.target("multi-1"), f.target("multi-2")];
    for t in &targets {
        f.node
            .node_publish_volume(request(&shared, t, Mode::SingleNodeMultiWriter, false))
            .await
            .unwrap();
    }
    for t in &targets {
        f.unpublish(&shared, t).await.unwrap();
    }
}

/// SELinux `context=` (kubelet adds it with CSIDriver seLinuxMount): this host has no
/// SELinux, so the label cannot be shown on a mount here; what is checked for real is
/// that a bind mount (local transport) accepts the quoted option with MCS commas and
/// mounts (a bind mount cannot relabel its source's superblock: the option is reported
/// ignored, see mount_spec's unit test for the NFS mount data it lands in), and that a
/// malformed one is refused before anything is mounted.
#[tokio::test]
async fn selinux_context_option_is_accepted_on_binds_and_malformed_ones_refused() {
    let mut f = Fixture::new().await;
    let id = f.volume("pvc-se");
    let with_flags = |target: &Path, flag: &str| NodePublishVolumeRequest {
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                mount_flags: vec![flag.into()],
                ..Default::default()
            })),
            access_mode: Some(AccessMode {
                mode: access_mode::Mode::SingleNodeMultiWriter as i32,
            }),
        }),
        ..publish_request(&id, &target.to_string_lossy(), false)
    };
    let ok = f.target("se-ok");
    f.node
        .node_publish_volume(with_flags(
            &ok,
            r#"context="system_u:object_r:container_file_t:s0:c12,c345""#,
        ))
        .await
        .unwrap();
    assert_eq!(f.mounts_at(&ok), 1);
    let bad = f.target("se-bad");
    let msg = assert_code(
        f.node
            .node_publish_volume(with_flags(&bad, r#"context="system_u:object_r:t:s0:c1,c2"#))
            .await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("SELinux"), "{msg}");
    assert_eq!(f.mounts_at(&bad), 0);
    f.unpublish(&id, &ok).await.unwrap();
}

//! The node service at a realistic mount count: N bind mounts already in the table
//! (`HANFS_SCALE_MOUNTS`, default 2,000), then publishes and unpublishes through the
//! real gRPC service, sequentially (`HANFS_SCALE_ROUNDS`, default 32) and 32 at a time,
//! each call timed. Kubelet nodes carry
//! thousands of mounts, and every publish and unpublish consults mountinfo, so its cost
//! per call must stay small there (the load run saw NodeUnpublishVolume p50 2.5 s at
//! 2,000 mounts). Prints the figures (`--nocapture`); asserts only correctness: every
//! call succeeds, each target is mounted exactly once after its publish, gone after its
//! unpublish, and the N background mounts are untouched.
//!
//! The test re-executes itself in a private mount namespace (`unshare -m`), so the N
//! mounts never show in anyone else's table and all vanish with that process, even if
//! it is killed. Needs root.

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use common::endpoint::{Endpoint, Listener, connect_lazy};
use common::ids::ClusterId;
use common::mountinfo;
use node::mount_table::MountTable;
use node::{NodeConfig, Transport};
use proto::csi::v1::node_client::NodeClient;
use proto::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode};
use proto::csi::v1::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const INNER: &str = "HANFS_MOUNT_SCALE_INNER";
const TEST: &str = "unpublish_and_publish_stay_cheap_at_thousands_of_mounts";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn unpublish_and_publish_stay_cheap_at_thousands_of_mounts() {
    if std::env::var_os(INNER).is_none() {
        // The outer half: run this very test again, alone, in a new mount namespace.
        let status = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--"])
            .arg(std::env::current_exe().unwrap())
            .args([TEST, "--exact", "--nocapture", "--test-threads", "1"])
            .env(INNER, "1")
            .status()
            .unwrap();
        assert!(
            status.success(),
            "the run in its own mount namespace failed"
        );
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(scale());
}

/// Lazily unmounts everything below its directory, so the tempdir can be removed (the
/// namespace's end would drop the mounts anyway, but not before the tempdir's removal).
struct UnmountGuard(PathBuf);

impl Drop for UnmountGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn capability() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

fn summary(label: &str, mut times: Vec<Duration>) {
    times.sort();
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!(
        "  {label:<34} n={:<4} p50 {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}",
        times.len(),
        at(0.5),
        at(0.99),
        times[times.len() - 1]
    );
}

async fn publish(node: &mut NodeClient<Channel>, id: &str, target: &Path) -> Duration {
    let t = Instant::now();
    node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability()),
        ..Default::default()
    })
    .await
    .unwrap();
    t.elapsed()
}

async fn unpublish(node: &mut NodeClient<Channel>, id: &str, target: &Path) -> Duration {
    let t = Instant::now();
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
    })
    .await
    .unwrap();
    t.elapsed()
}

/// Mounts exactly at `target` (cheap: only those lines are parsed).
fn mounts_at(target: &Path) -> usize {
    MountTable::read_self().unwrap().at(target).len()
}

fn mounts_below(dir: &Path) -> usize {
    mountinfo::mounts_below(&mountinfo::read_self().unwrap(), dir).len()
}

async fn scale() {
    let n = env_or("HANFS_SCALE_MOUNTS", 2000);
    let rounds = env_or("HANFS_SCALE_ROUNDS", 32);
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    // A mount of its own, so one lazy unmount of it takes everything below along.
    nix::mount::mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=16m"),
    )
    .unwrap();
    let _unmount = UnmountGuard(root.clone());
    let (export, pods, background) = (root.join("export"), root.join("pods"), root.join("bg"));
    for d in [&export.join("volumes"), &pods, &background] {
        std::fs::create_dir_all(d).unwrap();
    }

    // The background: N bind mounts of the export, made directly (fast), as the other
    // pods' volumes of a busy node would be.
    let t = Instant::now();
    for i in 0..n {
        let at = background.join(format!("m{i}"));
        std::fs::create_dir(&at).unwrap();
        nix::mount::mount(
            Some(&export),
            &at,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
    }
    let made = t.elapsed();
    let table_lines = std::fs::read(mountinfo::SELF_MOUNTINFO)
        .unwrap()
        .split(|b| *b == b'\n')
        .count();
    let (mut raw, mut full, mut asked) = (Vec::new(), Vec::new(), Vec::new());
    let probe = background.join(format!("m{}", n - 1));
    for _ in 0..20 {
        let t = Instant::now();
        let text = std::fs::read(mountinfo::SELF_MOUNTINFO).unwrap();
        raw.push(t.elapsed());
        assert!(!text.is_empty());
        let t = Instant::now();
        let table = mountinfo::read_self().unwrap();
        full.push(t.elapsed());
        assert!(table.len() >= n);
        // What the node does per question now: one read, only matching lines parsed.
        let t = Instant::now();
        let found = MountTable::read_self().unwrap().topmost_at(&probe);
        asked.push(t.elapsed());
        assert!(found.is_some());
    }
    println!(
        "mount scale: {n} background mounts made in {made:.1?}; mountinfo has {table_lines} lines"
    );
    summary("read mountinfo (kernel)", raw);
    summary("read + parse every line", full);
    summary("read + topmost_at (node's lookup)", asked);

    let config = NodeConfig {
        driver_name: "hanfs.csi.io".into(),
        node_id: "node-a".into(),
        cluster_id: ClusterId::parse("test").unwrap(),
        transport: Transport::Local {
            export_root: export.clone(),
        },
        allowed_target_roots: vec![pods.clone()],
        mount_timeout: Duration::from_secs(30),
        stats_timeout: Duration::from_secs(10),
        helper_binary: PathBuf::from(env!("CARGO_BIN_EXE_hanfs-node")),
    };
    let endpoint = Endpoint::Unix(root.join("csi.sock"));
    let listener = Listener::bind(&endpoint).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(node::run(config, listener, async {
        let _ = stopped.await;
    }));
    let channel = connect_lazy(&endpoint).unwrap();
    let clients = 32;
    let volumes: Vec<(String, PathBuf)> = (0..rounds.max(clients))
        .map(|i| {
            std::fs::create_dir(export.join(format!("volumes/vol-{i}"))).unwrap();
            (format!("v1/test/vol-{i}"), pods.join(format!("pod-{i}")))
        })
        .collect();

    // Sequential: one call at a time, the cost of one call at this table size.
    let mut node = NodeClient::new(channel.clone());
    let (mut published, mut unpublished) = (Vec::new(), Vec::new());
    for (id, target) in volumes.iter().take(rounds) {
        published.push(publish(&mut node, id, target).await);
        assert_eq!(mounts_at(target), 1, "{} mounted once", target.display());
        // Idempotent: a second publish finds it mounted and mounts nothing.
        publish(&mut node, id, target).await;
        assert_eq!(mounts_at(target), 1, "{} still once", target.display());
        unpublished.push(unpublish(&mut node, id, target).await);
        assert!(!target.exists(), "{} removed", target.display());
        assert_eq!(mounts_at(target), 0, "{} unmounted", target.display());
        unpublish(&mut node, id, target).await;
    }
    summary("NodePublishVolume, sequential", published);
    summary("NodeUnpublishVolume, sequential", unpublished);

    // Concurrent: 32 clients publish, then unpublish, each its own volume.
    let mut tasks = Vec::new();
    for (id, target) in volumes.iter().take(clients).cloned() {
        let mut node = NodeClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let p = publish(&mut node, &id, &target).await;
            (node, id, target, p)
        }));
    }
    let mut back = Vec::new();
    for task in tasks {
        back.push(task.await.unwrap());
    }
    assert_eq!(mounts_below(&pods), clients);
    summary(
        &format!("NodePublishVolume, {clients} at once"),
        back.iter().map(|b| b.3).collect(),
    );
    let tasks: Vec<_> = back
        .into_iter()
        .map(|(mut node, id, target, _)| {
            tokio::spawn(async move { unpublish(&mut node, &id, &target).await })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.push(task.await.unwrap());
    }
    summary(&format!("NodeUnpublishVolume, {clients} at once"), times);
    assert_eq!(mounts_below(&pods), 0, "every publish undone");
    assert_eq!(mounts_below(&background), n, "the background is untouched");

    // Connections closed first: a graceful stop waits for them.
    drop((node, channel));
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

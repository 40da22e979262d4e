//! Crash consistency at kill points (issue 13 part 3): the real `hanfs-backend` (the
//! volume API local mode runs, on a unix socket) and the real `hanfs-node` are
//! SIGKILLed at random offsets inside a call, restarted, and the same call repeated.
//! It must converge to exactly the state an uninterrupted call leaves — the export
//! tree (directories, files and their contents, records, project ids, temp and trash
//! entries) or the mount table below the test's directory — and what finished before
//! the kill (a volume's files, a snapshot) must still be there, byte for byte.
//!
//! Each operation's window is measured first (the fastest of three uninterrupted runs);
//! the kill offsets are uniform inside it, from a printed seed (`HANFS_SEED` replays
//! a run). `HANFS_KILL_POINTS` sets the kills per operation (default 40). Needs root.
//!
//! Together with `load.rs` this takes longer than the test command's budget, so both
//! are `#[ignore]`d and run with one command (binaries built first, as root):
//! `cargo build --bins && cargo test -p hanfsctl --test kill_points --test load --
//! --ignored --nocapture --test-threads 1`

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

mod support;

use proto::backend::v1 as pb;
use proto::backend::v1::volumes_client::VolumesClient;
use proto::csi::v1 as csi;
use proto::csi::v1::node_client::NodeClient;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{Proc, Rng, Scratch};
use tonic::transport::Channel;

const MIB: i64 = 1 << 20;
/// No call here takes more than a fraction of this; a hang fails the test.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

fn kill_points_per_op() -> usize {
    std::env::var("HANFS_KILL_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
}

fn connect(socket: &Path) -> Channel {
    common::endpoint::connect_lazy(&common::endpoint::Endpoint::Unix(socket.to_owned())).unwrap()
}

/// Deterministic files in `dir`: enough of them that a copy takes a few milliseconds,
/// so kills land inside it, plus a subdirectory and a symlink.
fn write_data(dir: &Path, files: usize) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..files {
        let body: Vec<u8> = (0..16 * 1024u32)
            .map(|b| (b * 7 + i as u32) as u8)
            .collect();
        let name = if i % 4 == 0 {
            format!("sub/f{i}")
        } else {
            format!("f{i}")
        };
        std::fs::write(dir.join(name), body).unwrap();
    }
    let _ = std::os::unix::fs::symlink("f1", dir.join("link"));
}

struct Backend {
    proc: Option<Proc>,
    socket: PathBuf,
    export: PathBuf,
    log: PathBuf,
}

impl Backend {
    fn start(scratch: &Scratch) -> Self {
        let mut backend = Self {
            proc: None,
            socket: scratch.path("backend.sock"),
            export: scratch.export.clone(),
            log: scratch.path("backend.log"),
        };
        backend.spawn();
        backend
    }

    fn spawn(&mut self) {
        let mut proc = Proc::spawn(
            &support::binary("hanfs-backend"),
            &[
                "--export-root".into(),
                self.export.display().to_string(),
                "--listen".into(),
                format!("unix://{}", self.socket.display()),
                "--capacity-policy".into(),
                "reserve".into(),
            ],
            &self.log,
        );
        proc.wait_for_socket(&self.socket);
        self.proc = Some(proc);
    }

    fn pid(&self) -> i32 {
        self.proc.as_ref().unwrap().pid()
    }

    /// After a SIGKILL: reap the old process, start a new one on the same export.
    fn restart(&mut self) {
        if let Some(mut old) = self.proc.take() {
            old.reap();
        }
        self.spawn();
    }

    /// A fresh client with its connection made (so a kill offset measures the call,
    /// not the dial).
    async fn client(&self) -> VolumesClient<Channel> {
        let mut client = VolumesClient::new(connect(&self.socket));
        client.status(pb::StatusRequest {}).await.unwrap();
        client
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum VolumeOp {
    Create,
    Delete,
    Snapshot,
    Clone,
    Restore,
    Expand,
    Modify,
}

const VOLUME_OPS: [VolumeOp; 7] = [
    VolumeOp::Create,
    VolumeOp::Delete,
    VolumeOp::Snapshot,
    VolumeOp::Clone,
    VolumeOp::Restore,
    VolumeOp::Expand,
    VolumeOp::Modify,
];

fn create_request(dir: &str, bytes: i64) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        dir: dir.into(),
        request_name: format!("pvc-{dir}"),
        required_bytes: bytes,
        ..Default::default()
    }
}

/// The operation under test. Every one is idempotent by name, so the repeat after a
/// restart is the very same request.
async fn run_op(op: VolumeOp, client: &mut VolumesClient<Channel>) -> Result<(), tonic::Status> {
    match op {
        VolumeOp::Create => client
            .create_volume(create_request("fresh", MIB))
            .await
            .map(drop),
        VolumeOp::Delete => client
            .delete_volume(pb::DeleteVolumeRequest {
                dir: "doomed".into(),
            })
            .await
            .map(drop),
        VolumeOp::Snapshot => client
            .create_snapshot(pb::CreateSnapshotRequest {
                name: "snap".into(),
                request_name: "snapshot-snap".into(),
                source_volume: "src".into(),
            })
            .await
            .map(drop),
        VolumeOp::Clone => client
            .create_volume(pb::CreateVolumeRequest {
                source: Some(pb::create_volume_request::Source::SourceVolume(
                    "src".into(),
                )),
                ..create_request("clone", 4 * MIB)
            })
            .await
            .map(drop),
        VolumeOp::Restore => client
            .create_volume(pb::CreateVolumeRequest {
                source: Some(pb::create_volume_request::Source::SourceSnapshot(
                    "base".into(),
                )),
                ..create_request("restored", 4 * MIB)
            })
            .await
            .map(drop),
        VolumeOp::Expand => client
            .expand_volume(pb::ExpandVolumeRequest {
                dir: "grow".into(),
                capacity_bytes: 3 * MIB,
            })
            .await
            .map(|r| assert_eq!(r.into_inner().capacity_bytes, 3 * MIB)),
        VolumeOp::Modify => client
            .modify_volume(pb::ModifyVolumeRequest {
                dir: "keep".into(),
                on_delete: pb::OnDelete::Retain as i32,
            })
            .await
            .map(|r| assert_eq!(r.into_inner().on_delete, pb::OnDelete::Retain as i32)),
    }
}

/// Puts the state back to where `op` starts from (uninterrupted calls).
async fn undo_op(op: VolumeOp, client: &mut VolumesClient<Channel>, export: &Path) {
    let delete = |dir: &'static str| pb::DeleteVolumeRequest { dir: dir.into() };
    match op {
        VolumeOp::Create => drop(client.delete_volume(delete("fresh")).await.unwrap()),
        VolumeOp::Delete => {
            client
                .create_volume(create_request("doomed", MIB))
                .await
                .unwrap();
            write_data(&export.join("volumes/doomed"), 8);
        }
        VolumeOp::Snapshot => drop(
            client
                .delete_snapshot(pb::DeleteSnapshotRequest {
                    name: "snap".into(),
                })
                .await
                .unwrap(),
        ),
        VolumeOp::Clone => drop(client.delete_volume(delete("clone")).await.unwrap()),
        VolumeOp::Restore => drop(client.delete_volume(delete("restored")).await.unwrap()),
        VolumeOp::Expand => {
            // Volumes do not shrink: make it anew at its old size, with its data.
            client.delete_volume(delete("grow")).await.unwrap();
            client
                .create_volume(create_request("grow", MIB))
                .await
                .unwrap();
            write_data(&export.join("volumes/grow"), 2);
        }
        VolumeOp::Modify => drop(
            client
                .modify_volume(pb::ModifyVolumeRequest {
                    dir: "keep".into(),
                    on_delete: pb::OnDelete::Delete as i32,
                })
                .await
                .unwrap(),
        ),
    }
}

#[derive(Default)]
struct Coverage {
    /// Kills while the call was in flight (the caller got no answer).
    in_flight: usize,
    /// Kills that came after the answer (still checked: nothing may be undone).
    after_reply: usize,
    window: Duration,
    /// The states the kills left behind, and how often each was seen.
    phases: BTreeMap<String, usize>,
}

/// The fastest of the uninterrupted runs: on a loaded machine the slow ones are the
/// noise, and a window longer than the call puts kills after its reply.
fn window_of(values: Vec<Duration>) -> Duration {
    values.into_iter().min().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long (see the module doc): cargo test -p hanfsctl --test kill_points --test load -- --ignored"]
async fn backend_killed_inside_every_volume_operation_converges_on_restart() {
    let started = Instant::now();
    let mut rng = Rng::from_env("backend kill points");
    let per_op = kill_points_per_op();
    let scratch = Scratch::new(1 << 30);
    let export = scratch.export.clone();
    let mut backend = Backend::start(&scratch);
    let mut client = backend.client().await;

    // What every operation starts from. `src` and `base` are finished work: their files
    // must survive every kill below unchanged (the tree diff includes their contents).
    client
        .create_volume(create_request("src", 4 * MIB))
        .await
        .unwrap();
    write_data(&export.join("volumes/src"), 96);
    client
        .create_snapshot(pb::CreateSnapshotRequest {
            name: "base".into(),
            request_name: "snapshot-base".into(),
            source_volume: "src".into(),
        })
        .await
        .unwrap();
    client
        .create_volume(create_request("doomed", MIB))
        .await
        .unwrap();
    write_data(&export.join("volumes/doomed"), 8);
    client
        .create_volume(create_request("grow", MIB))
        .await
        .unwrap();
    write_data(&export.join("volumes/grow"), 2);
    client
        .create_volume(create_request("keep", MIB))
        .await
        .unwrap();
    let baseline = support::tree(&export);
    assert!(
        baseline.contains_key("snapshots/base/sub/f0"),
        "the snapshot holds the data: {baseline:#?}"
    );

    let mut report: BTreeMap<VolumeOp, Coverage> = BTreeMap::new();
    for op in VOLUME_OPS {
        // The state the uninterrupted call leaves, and how long that call takes.
        let mut expected = None;
        let mut durations = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            run_op(op, &mut client).await.unwrap();
            durations.push(t.elapsed());
            let after = support::tree(&export);
            if let Some(first) = &expected {
                assert_eq!(first, &after, "{op:?} is not deterministic");
            }
            expected = Some(after);
            undo_op(op, &mut client, &export).await;
            let back = support::tree(&export);
            assert!(
                back == baseline,
                "undo of {op:?}:\n{}",
                support::diff(&baseline, &back)
            );
        }
        let expected = expected.unwrap();
        let coverage = report.entry(op).or_default();
        coverage.window = window_of(durations);

        for point in 0..per_op {
            let offset = rng.offset_within(coverage.window);
            let pid = backend.pid();
            let start = Instant::now();
            let killer = support::kill_at(pid, start + offset);
            let answer = tokio::time::timeout(CALL_TIMEOUT, run_op(op, &mut client))
                .await
                .unwrap_or_else(|_| panic!("{op:?} hung after its server was killed"));
            killer.join().unwrap();
            match answer {
                Ok(()) => coverage.after_reply += 1,
                Err(_) => coverage.in_flight += 1,
            }
            let left = support::tree(&export);
            let phase = support::phase(&baseline, &expected, &left);
            *coverage.phases.entry(phase.clone()).or_default() += 1;

            backend.restart();
            client = backend.client().await;
            let context =
                format!("{op:?} killed {offset:?} into the call (point {point}, state {phase})");
            tokio::time::timeout(CALL_TIMEOUT, run_op(op, &mut client))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{context}: the repeated call failed: {e}"));
            let now = support::tree(&export);
            assert!(
                now == expected,
                "{context}: did not converge (- expected, + found):\n{}",
                support::diff(&expected, &now)
            );
            support::project_ids_are_consistent(&export)
                .unwrap_or_else(|e| panic!("{context}: {e}"));
            undo_op(op, &mut client, &export).await;
        }
    }

    let mut total = 0;
    println!("backend kill points per operation (window = fastest uninterrupted call):");
    for (op, c) in &report {
        total += c.in_flight;
        println!(
            "  {op:<9?} window {:>8.2?}: {:>3} in flight, {:>3} after the reply; {} distinct states left:",
            c.window,
            c.in_flight,
            c.after_reply,
            c.phases.len()
        );
        for (phase, n) in &c.phases {
            println!("      {n:>3} x {phase}");
        }
    }
    println!(
        "backend: {total} in-flight kill points in {:.1?} (XFS export: {})",
        started.elapsed(),
        scratch.xfs
    );
    // Every operation must really have been interrupted, not only killed afterwards.
    for (op, c) in &report {
        assert!(
            c.in_flight >= per_op / 5,
            "{op:?}: only {} of {per_op} kills landed inside the call",
            c.in_flight
        );
    }
}

// ---- the node plugin ---------------------------------------------------------------

struct Node {
    proc: Option<Proc>,
    socket: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl Node {
    fn start(scratch: &Scratch) -> Self {
        let mut node = Self {
            proc: None,
            socket: scratch.path("node.sock"),
            args: vec![
                "--endpoint".into(),
                format!("unix://{}", scratch.path("node.sock").display()),
                "--cluster-id".into(),
                "test".into(),
                "--node-id".into(),
                "node-a".into(),
                "--transport".into(),
                "local".into(),
                "--local-export-root".into(),
                scratch.export.display().to_string(),
                "--allowed-target-root".into(),
                scratch.path("pods").display().to_string(),
                "--mount-timeout-secs".into(),
                "10".into(),
            ],
            log: scratch.path("node.log"),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let mut proc = Proc::spawn(&support::binary("hanfs-node"), &self.args, &self.log);
        proc.wait_for_socket(&self.socket);
        self.proc = Some(proc);
    }

    fn pid(&self) -> i32 {
        self.proc.as_ref().unwrap().pid()
    }

    fn restart(&mut self) {
        if let Some(mut old) = self.proc.take() {
            old.reap();
        }
        self.spawn();
    }

    async fn client(&self) -> NodeClient<Channel> {
        let mut client = NodeClient::new(connect(&self.socket));
        client
            .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
            .await
            .unwrap();
        client
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum NodeOp {
    Stage,
    Publish,
    Unpublish,
    Unstage,
}

fn capability() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

struct NodePaths {
    staging: String,
    target: String,
}

async fn run_node_op(
    op: NodeOp,
    client: &mut NodeClient<Channel>,
    paths: &NodePaths,
) -> Result<(), tonic::Status> {
    let volume_id = "v1/test/pub".to_string();
    match op {
        NodeOp::Stage => client
            .node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id,
                staging_target_path: paths.staging.clone(),
                volume_capability: Some(capability()),
                ..Default::default()
            })
            .await
            .map(drop),
        NodeOp::Publish => client
            .node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id,
                staging_target_path: paths.staging.clone(),
                target_path: paths.target.clone(),
                volume_capability: Some(capability()),
                ..Default::default()
            })
            .await
            .map(drop),
        NodeOp::Unpublish => client
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id,
                target_path: paths.target.clone(),
            })
            .await
            .map(drop),
        NodeOp::Unstage => client
            .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id,
                staging_target_path: paths.staging.clone(),
            })
            .await
            .map(drop),
    }
}

fn inverse(op: NodeOp) -> NodeOp {
    match op {
        NodeOp::Stage => NodeOp::Unstage,
        NodeOp::Unstage => NodeOp::Stage,
        NodeOp::Publish => NodeOp::Unpublish,
        NodeOp::Unpublish => NodeOp::Publish,
    }
}

/// The mount table below `pods/` plus which of its directories exist, and the helper
/// processes still alive (a kill must not leave one behind).
fn node_state(pods: &Path) -> Vec<String> {
    let mut state = support::mounts_below(Path::new("/proc/self/mountinfo"), pods);
    for dir in ["staging", "target"] {
        state.push(format!("{dir} exists: {}", pods.join(dir).exists()));
    }
    state
}

/// Waits (bounded) until no `hanfs-node helper` child of a killed node is left.
fn no_helpers_left(root: &Path, node_pid: i32) -> Result<(), String> {
    let needle = root.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let helpers: Vec<_> = support::processes_mentioning(&needle)
            .into_iter()
            .filter(|(pid, cmd)| *pid != node_pid && cmd.contains(" helper "))
            .collect();
        if helpers.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("helpers outlived their node: {helpers:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long (see the module doc): cargo test -p hanfsctl --test kill_points --test load -- --ignored"]
async fn node_killed_inside_stage_publish_unpublish_leaves_no_leaked_or_doubled_mount() {
    let started = Instant::now();
    let mut rng = Rng::from_env("node kill points");
    let per_op = kill_points_per_op();
    let scratch = Scratch::new(512 << 20);
    let pods = scratch.path("pods");
    std::fs::create_dir_all(pods.join("staging")).unwrap();
    let paths = NodePaths {
        staging: pods.join("staging").display().to_string(),
        target: pods.join("target").display().to_string(),
    };
    {
        let backend = Backend::start(&scratch);
        let mut volumes = backend.client().await;
        volumes
            .create_volume(create_request("pub", MIB))
            .await
            .unwrap();
    }
    write_data(&scratch.export.join("volumes/pub"), 2);
    let mut node = Node::start(&scratch);
    let mut client = node.client().await;

    let mut report: BTreeMap<NodeOp, Coverage> = BTreeMap::new();
    // Each operation starts from the state its predecessor leaves.
    for op in [
        NodeOp::Stage,
        NodeOp::Publish,
        NodeOp::Unpublish,
        NodeOp::Unstage,
    ] {
        let before = node_state(&pods);
        let mut durations = Vec::new();
        let mut expected = None;
        for _ in 0..3 {
            let t = Instant::now();
            run_node_op(op, &mut client, &paths).await.unwrap();
            durations.push(t.elapsed());
            expected = Some(node_state(&pods));
            run_node_op(inverse(op), &mut client, &paths).await.unwrap();
            assert_eq!(node_state(&pods), before, "undo of {op:?}");
        }
        let expected = expected.unwrap();
        let coverage = report.entry(op).or_default();
        coverage.window = window_of(durations);
        for point in 0..per_op {
            let offset = rng.offset_within(coverage.window);
            let killer = support::kill_at(node.pid(), Instant::now() + offset);
            let answer = tokio::time::timeout(CALL_TIMEOUT, run_node_op(op, &mut client, &paths))
                .await
                .unwrap_or_else(|_| panic!("{op:?} hung after the node was killed"));
            killer.join().unwrap();
            match answer {
                Ok(()) => coverage.after_reply += 1,
                Err(_) => coverage.in_flight += 1,
            }
            let old_pid = node.pid();
            let context = format!("{op:?} killed {offset:?} into the call (point {point})");
            no_helpers_left(&scratch.root, old_pid).unwrap_or_else(|e| panic!("{context}: {e}"));
            let left = node_state(&pods);
            let phase = if left == before {
                "untouched".to_string()
            } else if left == expected {
                "done".to_string()
            } else {
                left.join("; ")
            };
            *coverage.phases.entry(phase.clone()).or_default() += 1;

            node.restart();
            client = node.client().await;
            tokio::time::timeout(CALL_TIMEOUT, run_node_op(op, &mut client, &paths))
                .await
                .unwrap()
                .unwrap_or_else(|e| {
                    panic!("{context} (left: {phase}): the repeated call failed: {e}")
                });
            let now = node_state(&pods);
            assert_eq!(now, expected, "{context} (left: {phase}): did not converge");
            run_node_op(inverse(op), &mut client, &paths).await.unwrap();
            assert_eq!(node_state(&pods), before, "{context}: undo");
        }
        // The next operation starts where this one ends.
        run_node_op(op, &mut client, &paths).await.unwrap();
    }
    // Data written before any of this is still there, seen through the volume.
    assert_eq!(
        std::fs::read(scratch.export.join("volumes/pub/f1"))
            .unwrap()
            .len(),
        16 * 1024
    );
    assert_eq!(
        node_state(&pods),
        vec!["staging exists: true", "target exists: false"]
    );

    let mut total = 0;
    println!("node kill points per operation:");
    for (op, c) in &report {
        total += c.in_flight;
        println!(
            "  {op:<9?} window {:>8.2?}: {:>3} in flight, {:>3} after the reply; states left:",
            c.window, c.in_flight, c.after_reply
        );
        for (phase, n) in &c.phases {
            println!("      {n:>3} x {phase}");
        }
    }
    println!(
        "node: {total} in-flight kill points in {:.1?}",
        started.elapsed()
    );
    for (op, c) in &report {
        assert!(
            c.in_flight >= per_op / 5,
            "{op:?}: only {} of {per_op} kills landed inside the call",
            c.in_flight
        );
    }
}

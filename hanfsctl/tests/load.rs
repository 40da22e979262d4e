//! Load (issue 13 part 4): `hanfsctl local up` (the three real binaries) on an XFS
//! export, and 32 concurrent clients, each with its own connections to the real CSI
//! sockets, walk 2,000 volumes through create, NodePublishVolume, a write through the
//! mount, NodeGetVolumeStats, CreateSnapshot, DeleteSnapshot, NodeUnpublishVolume and
//! DeleteVolume. Every call must succeed (none of these may fail under the spec when
//! names are distinct), and afterwards nothing may be left: no mount, no descriptor,
//! no thread, no directory, record, temp file or project id. VmRSS/VmHWM, descriptors
//! and threads of each binary are printed before, at peak and after.
//!
//! Local mode runs in its own mount namespace (`unshare -m`), so its 2,000 bind mounts
//! never show in anyone else's mount table and all vanish with it, even if this test is
//! killed. `HANFS_LOAD_VOLUMES` / `HANFS_LOAD_CLIENTS` change the size. Needs root.

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

mod support;

use proto::csi::v1 as csi;
use proto::csi::v1::controller_client::ControllerClient;
use proto::csi::v1::node_client::NodeClient;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Scratch, Usage};
use tonic::transport::Channel;

const BINARIES: [&str; 3] = ["hanfs-backend", "hanfs-controller", "hanfs-node"];
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `hanfsctl local up` in a private mount namespace. Drop stops it with SIGTERM (its
/// binaries then stop in order), and SIGKILLs whatever is left.
struct LocalMode {
    child: Child,
    pids: BTreeMap<&'static str, i32>,
}

impl Drop for LocalMode {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.pids.values() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn children_of(parent: i32) -> BTreeMap<&'static str, i32> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Field 4 (ppid) follows the parenthesised command, which may hold spaces.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let exe = std::fs::read_link(entry.path().join("exe")).unwrap_or_default();
        let name = exe.file_name().unwrap_or_default().to_string_lossy();
        if let Some(bin) = BINARIES.iter().find(|b| name == **b) {
            found.insert(*bin, pid);
        }
    }
    found
}

fn start(dir: &Path) -> LocalMode {
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(support::HANFSCTL)
        .arg("--dir")
        .arg(dir)
        .args(["local", "up"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(
            std::fs::File::create(dir.join("local-mode.log"))
                .map(Stdio::from)
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut local = LocalMode {
        child,
        pids: BTreeMap::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("local mode is up") => break,
            Ok(_) => {}
            Err(e) => panic!("local mode did not come up: {e}"),
        }
    }
    // unshare execs hanfsctl in place, so the binaries are its children.
    local.pids = children_of(local.child.id() as i32);
    assert_eq!(
        local.pids.len(),
        3,
        "binaries of local mode: {:?}",
        local.pids
    );
    local
}

fn capability() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

/// Error counts by (method, code), and per-method latencies.
#[derive(Default)]
struct Tally {
    errors: BTreeMap<(&'static str, String), (usize, String)>,
    latencies: BTreeMap<&'static str, Vec<Duration>>,
}

type Shared = Arc<Mutex<Tally>>;

/// Runs one call with a deadline, records its latency or its error.
async fn call<T>(
    tally: &Shared,
    method: &'static str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Option<T> {
    let t = Instant::now();
    let result = tokio::time::timeout(CALL_TIMEOUT, fut).await;
    let elapsed = t.elapsed();
    let mut tally = tally.lock().unwrap();
    match result {
        Ok(Ok(response)) => {
            tally.latencies.entry(method).or_default().push(elapsed);
            Some(response.into_inner())
        }
        Ok(Err(status)) => {
            let entry = tally
                .errors
                .entry((method, format!("{:?}", status.code())))
                .or_insert((0, status.message().to_owned()));
            entry.0 += 1;
            None
        }
        Err(_) => {
            tally
                .errors
                .entry((method, "client timeout".into()))
                .or_insert((0, format!("no answer in {CALL_TIMEOUT:?}")))
                .0 += 1;
            None
        }
    }
}

struct Client {
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
}

fn client(dir: &Path) -> Client {
    let connect = |name: &str| {
        common::endpoint::connect_lazy(&common::endpoint::Endpoint::Unix(
            dir.join("sockets").join(name),
        ))
        .unwrap()
    };
    Client {
        controller: ControllerClient::new(connect("controller.sock")),
        node: NodeClient::new(connect("node.sock")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    CreatePublishStat,
    Snapshot,
    Teardown,
}

/// One client's share of one phase, volume by volume.
async fn work(
    phase: Phase,
    mut c: Client,
    volumes: Vec<usize>,
    dir: PathBuf,
    node_root: PathBuf,
    tally: Shared,
) -> Client {
    for i in volumes {
        let name = format!("load-{i:04}");
        let volume_id = format!("v1/local/{name}");
        let snapshot_id = format!("s1/local/snap-{i:04}");
        let target = dir.join("mnt").join(&name).display().to_string();
        match phase {
            Phase::CreatePublishStat => {
                let created = call(
                    &tally,
                    "CreateVolume",
                    c.controller.create_volume(csi::CreateVolumeRequest {
                        name: name.clone(),
                        capacity_range: Some(csi::CapacityRange {
                            required_bytes: 1 << 20,
                            limit_bytes: 0,
                        }),
                        volume_capabilities: vec![capability()],
                        ..Default::default()
                    }),
                )
                .await;
                let Some(created) = created else { continue };
                assert_eq!(created.volume.map(|v| v.volume_id), Some(volume_id.clone()));
                let published = call(
                    &tally,
                    "NodePublishVolume",
                    c.node.node_publish_volume(csi::NodePublishVolumeRequest {
                        volume_id: volume_id.clone(),
                        target_path: target.clone(),
                        volume_capability: Some(capability()),
                        ..Default::default()
                    }),
                )
                .await;
                if published.is_none() {
                    continue;
                }
                // Through the mount, as a pod would: the bytes land in this volume.
                let through_mount = node_root.join(target.trim_start_matches('/'));
                std::fs::write(through_mount.join("hello"), &name).unwrap();
                let stats = call(
                    &tally,
                    "NodeGetVolumeStats",
                    c.node
                        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                            volume_id: volume_id.clone(),
                            volume_path: target.clone(),
                            ..Default::default()
                        }),
                )
                .await;
                if let Some(stats) = stats {
                    assert!(!stats.usage.is_empty(), "{name}: stats without usage");
                }
            }
            Phase::Snapshot => {
                call(
                    &tally,
                    "CreateSnapshot",
                    c.controller.create_snapshot(csi::CreateSnapshotRequest {
                        name: format!("snap-{i:04}"),
                        source_volume_id: volume_id.clone(),
                        ..Default::default()
                    }),
                )
                .await;
            }
            Phase::Teardown => {
                call(
                    &tally,
                    "DeleteSnapshot",
                    c.controller.delete_snapshot(csi::DeleteSnapshotRequest {
                        snapshot_id,
                        ..Default::default()
                    }),
                )
                .await;
                call(
                    &tally,
                    "NodeUnpublishVolume",
                    c.node
                        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                            volume_id: volume_id.clone(),
                            target_path: target.clone(),
                        }),
                )
                .await;
                call(
                    &tally,
                    "DeleteVolume",
                    c.controller.delete_volume(csi::DeleteVolumeRequest {
                        volume_id,
                        ..Default::default()
                    }),
                )
                .await;
            }
        }
    }
    c
}

fn usages(local: &LocalMode) -> BTreeMap<&'static str, Usage> {
    local
        .pids
        .iter()
        .map(|(name, pid)| (*name, support::usage(*pid)))
        .collect()
}

/// Polls (bounded) until every binary's descriptors and threads are back at `before`
/// or below: closed connections and idle blocking threads go away on their own time
/// (tokio keeps an idle blocking thread for 10 s).
fn settle(
    local: &LocalMode,
    before: &BTreeMap<&'static str, Usage>,
) -> BTreeMap<&'static str, Usage> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now = usages(local);
        let settled = now.iter().all(|(name, u)| {
            let b = &before[name];
            u.fds <= b.fds && u.threads <= b.threads
        });
        if settled || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long (see the module doc): cargo test -p hanfsctl --test kill_points --test load -- --ignored"]
async fn two_thousand_volumes_by_32_clients_leak_nothing() {
    let started = Instant::now();
    let count = env_or("HANFS_LOAD_VOLUMES", 2000);
    let clients = env_or("HANFS_LOAD_CLIENTS", 32);
    let scratch = Scratch::new(8 << 30);
    let dir = scratch.root.clone();
    let local = start(&dir);
    let node_root = PathBuf::from(format!("/proc/{}/root", local.pids["hanfs-node"]));
    let node_mountinfo = PathBuf::from(format!("/proc/{}/mountinfo", local.pids["hanfs-node"]));
    let tally: Shared = Arc::default();

    // Warm-up: one volume through every call, so lazily made connections (controller
    // to backend) and first-use allocations are part of "before", not of a "leak".
    let warm = work(
        Phase::CreatePublishStat,
        client(&dir),
        vec![9999],
        dir.clone(),
        node_root.clone(),
        tally.clone(),
    )
    .await;
    let warm = work(
        Phase::Snapshot,
        warm,
        vec![9999],
        dir.clone(),
        node_root.clone(),
        tally.clone(),
    )
    .await;
    drop(
        work(
            Phase::Teardown,
            warm,
            vec![9999],
            dir.clone(),
            node_root.clone(),
            tally.clone(),
        )
        .await,
    );
    assert!(tally.lock().unwrap().errors.is_empty(), "warm-up failed");
    let mounts_before = support::mounts_below(&node_mountinfo, &dir.join("mnt"));
    assert!(mounts_before.is_empty(), "{mounts_before:?}");
    let before = settle(&local, &usages(&local));

    // Peak RSS sampled while the load runs (VmHWM is the kernel's own peak).
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let pids = local.pids.clone();
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak: BTreeMap<&'static str, Usage> = BTreeMap::new();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                for (name, pid) in &pids {
                    let u = support::usage(*pid);
                    let p = peak.entry(name).or_default();
                    p.rss_kib = p.rss_kib.max(u.rss_kib);
                    p.hwm_kib = p.hwm_kib.max(u.hwm_kib);
                    p.fds = p.fds.max(u.fds);
                    p.threads = p.threads.max(u.threads);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };

    let mut handles: Vec<Client> = (0..clients).map(|_| client(&dir)).collect();
    let mut timings = Vec::new();
    let mut mounted_at_peak = 0;
    for phase in [Phase::CreatePublishStat, Phase::Snapshot, Phase::Teardown] {
        let t = Instant::now();
        let mut tasks = Vec::new();
        for (k, c) in handles.drain(..).enumerate() {
            let share: Vec<usize> = (k..count).step_by(clients).collect();
            tasks.push(tokio::spawn(work(
                phase,
                c,
                share,
                dir.clone(),
                node_root.clone(),
                tally.clone(),
            )));
        }
        for task in tasks {
            handles.push(task.await.unwrap());
        }
        timings.push((phase, t.elapsed()));
        if phase == Phase::Snapshot {
            mounted_at_peak = support::mounts_below(&node_mountinfo, &dir.join("mnt")).len();
            let snapshots = std::fs::read_dir(scratch.export.join("snapshots"))
                .unwrap()
                .count();
            println!("at peak: {mounted_at_peak} volumes mounted, {snapshots} snapshots");
            // One sample of the data: the snapshot holds what was written through the mount.
            let sample = scratch.export.join("snapshots/snap-0007/hello");
            assert_eq!(std::fs::read_to_string(&sample).unwrap(), "load-0007");
        }
    }
    drop(handles);
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let after = settle(&local, &before);
    let mounts_after = support::mounts_below(&node_mountinfo, &dir.join("mnt"));

    let tally = tally.lock().unwrap();
    println!(
        "load: {count} volumes, {clients} clients, XFS export: {}",
        scratch.xfs
    );
    for (phase, t) in &timings {
        println!("  phase {phase:?}: {t:.1?}");
    }
    println!("  calls (ok, p50, p99, max):");
    for (method, latencies) in &tally.latencies {
        let mut sorted = latencies.clone();
        sorted.sort();
        println!(
            "    {method:<20} {:>5}  {:>9.2?} {:>9.2?} {:>9.2?}",
            sorted.len(),
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99),
            sorted.last().copied().unwrap_or_default()
        );
    }
    println!("  errors: {}", tally.errors.len());
    for ((method, code), (n, message)) in &tally.errors {
        println!("    {n} x {method} {code}: {message}");
    }
    println!(
        "  binary            VmRSS KiB before/peak/after   VmHWM KiB   fds before/peak/after   threads before/peak/after"
    );
    for name in BINARIES {
        let (b, p, a) = (&before[name], &peak[name], &after[name]);
        println!(
            "  {name:<17} {:>7} {:>7} {:>7}   {:>9}   {:>4} {:>4} {:>4}            {:>3} {:>3} {:>3}",
            b.rss_kib,
            p.rss_kib,
            a.rss_kib,
            a.hwm_kib,
            b.fds,
            p.fds,
            a.fds,
            b.threads,
            p.threads,
            a.threads
        );
    }
    println!("  total {:.1?}", started.elapsed());

    assert!(tally.errors.is_empty(), "calls failed (see above)");
    assert_eq!(
        mounted_at_peak, count,
        "every volume was mounted at the peak"
    );
    assert!(mounts_after.is_empty(), "leaked mounts: {mounts_after:?}");
    for name in BINARIES {
        let (b, a) = (&before[name], &after[name]);
        assert!(
            a.fds <= b.fds,
            "{name} leaked descriptors: {} -> {}",
            b.fds,
            a.fds
        );
        assert!(
            a.threads <= b.threads,
            "{name} leaked threads: {} -> {}",
            b.threads,
            a.threads
        );
    }
    // Nothing of 2,000 volumes and snapshots is left on disk: no directory, record,
    // temp or trash entry, and no inode carrying a project id.
    let left = support::tree(&scratch.export);
    let stray: Vec<_> = left
        .iter()
        .filter(|(path, what)| {
            let skeleton = [
                "volumes",
                "snapshots",
                "retained",
                "archived",
                ".hanfs",
                ".hanfs/meta",
                ".hanfs/meta/volumes",
                ".hanfs/meta/snapshots",
                ".hanfs/meta/groups",
                ".hanfs/tmp",
                ".hanfs/trash",
            ];
            !skeleton.contains(&path.as_str()) || !what.ends_with("proj=-")
        })
        .collect();
    assert!(stray.is_empty(), "left behind: {stray:#?}");
    let _ = usages(&local); // keep local mode alive until here
}

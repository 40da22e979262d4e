//! Measurement, not a check (ignored by default; prints figures, asserts no timing):
//! how long a writer stalls while a group snapshot of 1, 10 and 100 volumes is cut on a
//! real loop-mounted XFS (reflink=1), compared with the same writer idle and with a
//! filesystem freeze (FIFREEZE, a walk of the members as a freeze-held check would do,
//! FITHAW). One writer thread appends 4 KiB + fsync in the first volume; the figure is
//! the longest gap between two of its acknowledged fsyncs in each window.
//!
//! Run: `nice -n 10 cargo test -p volumes --test group_snapshot_stall -- --ignored --nocapture`
//! (root and mkfs.xfs, as the xfs_reflink test).

#![allow(clippy::unwrap_used)] // test helpers panic on setup failure by design
#![allow(unsafe_code)] // FIFREEZE/FITHAW ioctls on the mount point

mod support;

use common::ids::{SnapshotName, VolumeDir};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use volumes::meta::OnDelete;
use volumes::store::{CapacityPolicy, CreateVolume};
use volumes::{StoreConfig, VolumeError, VolumeStore};

/// `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)` from `<linux/fs.h>`.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// A frozen filesystem; thawed when dropped, so a panic between freeze and thaw never
/// leaves the test machine's loop mount frozen.
struct Frozen {
    dir: std::fs::File,
}

impl Frozen {
    fn freeze(mountpoint: &Path) -> std::io::Result<Self> {
        let dir = std::fs::File::open(mountpoint)?;
        // SAFETY: FIFREEZE takes an (ignored) int argument; the descriptor is open.
        if unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { dir })
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as above, FITHAW on the same open descriptor.
        if unsafe { libc::ioctl(self.dir.as_raw_fd(), FITHAW, 0) } != 0 {
            eprintln!("FITHAW failed: {}", std::io::Error::last_os_error());
        }
    }
}

/// Appends 4 KiB + fsync in a loop and records when each fsync returned.
struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, acks) = (stop.clone(), acks.clone());
            std::thread::spawn(move || {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap();
                let block = [0x5au8; 4096];
                let started = Instant::now();
                // Bounded even if the measuring thread dies: 10 minutes at most.
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(600)
                {
                    file.write_all(&block).unwrap();
                    file.sync_data().unwrap();
                    acks.lock().unwrap().push(Instant::now());
                }
            })
        };
        Self {
            stop,
            acks,
            thread: Some(thread),
        }
    }

    /// The longest gap between consecutive acks that touch [from, to] (the first ack
    /// after `to` included, so a stall spanning the window's end counts).
    fn max_gap(&self, from: Instant, to: Instant) -> (Duration, usize) {
        let acks = self.acks.lock().unwrap();
        let start = acks.partition_point(|t| *t < from).saturating_sub(1);
        let end = (acks.partition_point(|t| *t <= to) + 1).min(acks.len());
        let window = &acks[start..end];
        let gap = window
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        (gap, window.len())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn measure(volumes: usize) {
    let work = tempfile::tempdir().unwrap();
    let mount = support::mount_xfs(work.path(), 1 << 30);
    let store = VolumeStore::open(StoreConfig {
        root: mount.mountpoint.clone(),
        capacity_policy: CapacityPolicy::Thin,
        default_volume_bytes: 64 << 20,
        default_mode: 0o777,
        copy_hook: None,
    })
    .unwrap();
    let mut dirs = Vec::new();
    for i in 0..volumes {
        let dir = VolumeDir::parse(&format!("vol-{i:03}")).unwrap();
        store
            .create_volume(CreateVolume {
                dir: dir.clone(),
                request_name: dir.to_string(),
                required_bytes: 0,
                limit_bytes: 0,
                on_delete: OnDelete::Delete,
                mode: None,
                source: None,
            })
            .unwrap();
        // A little data per volume: five 256 KiB files in a subdirectory.
        let data = mount
            .mountpoint
            .join("volumes")
            .join(dir.as_str())
            .join("data");
        std::fs::create_dir(&data).unwrap();
        for f in 0..5 {
            std::fs::write(data.join(format!("f{f}")), vec![f as u8; 256 << 10]).unwrap();
        }
        dirs.push(dir);
    }
    support::run(&mut Command::new("sync"));
    let writer = Writer::start(mount.mountpoint.join("volumes/vol-000/log"));
    std::thread::sleep(Duration::from_millis(300));

    let idle_from = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let idle_to = Instant::now();
    let (idle_gap, idle_acks) = writer.max_gap(idle_from, idle_to);

    let group = SnapshotName::parse("stall").unwrap();
    let snap_from = Instant::now();
    let result = store.create_group_snapshot(&group, "stall", &dirs);
    let snap_to = Instant::now();
    std::thread::sleep(Duration::from_millis(50));
    let (snap_gap, snap_acks) = writer.max_gap(snap_from, snap_to);
    let outcome = match &result {
        Ok(info) => format!("ok after {} attempt(s)", info.meta.attempts),
        Err(VolumeError::Unsettled(m)) => format!("unsettled: {m}"),
        Err(e) => format!("error: {e}"),
    };

    // The freeze the brief proposed: held while every member's tree is walked (the
    // reflinks themselves cannot run under it: they would wait for the thaw).
    let freeze_from = Instant::now();
    {
        let _frozen = Frozen::freeze(&mount.mountpoint).unwrap();
        for dir in &dirs {
            let _ = volumes::store::group::fingerprint(
                &mount.mountpoint.join("volumes").join(dir.as_str()),
            );
        }
    }
    let freeze_to = Instant::now();
    std::thread::sleep(Duration::from_millis(50));
    let (freeze_gap, _) = writer.max_gap(freeze_from, freeze_to);
    drop(writer);
    if result.is_ok() {
        store.delete_group_snapshot(&group).unwrap();
    }
    println!(
        "group-snapshot-stall: {volumes:>3} volumes | idle: max gap {:.2} ms ({idle_acks} fsyncs/s) | group snapshot: {:.1} ms, {outcome}, writer max gap {:.2} ms ({snap_acks} fsyncs) | freeze+walk+thaw: {:.1} ms, writer max gap {:.2} ms",
        ms(idle_gap),
        ms(snap_to - snap_from),
        ms(snap_gap),
        ms(freeze_to - freeze_from),
        ms(freeze_gap),
    );
    drop(store);
    drop(mount);
}

#[test]
#[ignore = "a measurement (prints figures): run with --ignored --nocapture"]
fn writer_stall_during_group_snapshots_on_xfs() {
    for volumes in [1, 10, 100] {
        measure(volumes);
    }
}

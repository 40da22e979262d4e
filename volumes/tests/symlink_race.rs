//! A tenant races the backend's copies: while snapshots, clones, restores and usage
//! walks of its volume run through the real volume API (gRPC on a unix socket, a real
//! store), a tenant thread renames entries, changes their type and swaps files and
//! directories for symlinks pointing outside the volume, at a directory holding files
//! with a marker. The copy hook (the store's test seam, called between the decision
//! that an entry is a regular file and the opening of it) swaps that very file for a
//! symlink to the marker, so the classic stat-then-open window is hit on purpose, not
//! only by luck.
//!
//! Proved for each copy, by walking it without following anything and reading every
//! regular file: it holds tenant content only (never the marker, never a host file),
//! and not one call fails. Run on a real XFS loop mount (reflink path, needs root and
//! mkfs.xfs like `xfs_reflink.rs`) and on a plain temp directory (full-copy path).

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

mod support;

use common::endpoint::{self, Endpoint, Listener};
use proto::backend::v1 as pb;
use proto::backend::v1::volumes_client::VolumesClient;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use volumes::api;
use volumes::copy::CopyHook;
use volumes::store::CapacityPolicy;
use volumes::{StoreConfig, VolumeStore};

/// What every file outside the volume starts with; no copy may ever contain it.
const MARKER: &[u8] = b"HOST-SECRET-MARKER-5d1e0c9a";
/// What every file the tenant writes starts with.
const TENANT: &[u8] = b"tenant-data:";
/// An allocated file outside the volume, far larger than the tenant's whole tree: a
/// usage walk that followed a symlink into it would report at least this much.
const OUTSIDE_BIG: u64 = 8 << 20;
const VOLUME: &str = "pvc-live";

/// Bounds: the tenant stops at `MAX_ROUNDS`; the caller makes at least `MIN_CALLS`
/// copy calls and keeps going until the tenant has done `MIN_ROUNDS`, but never past
/// `DEADLINE`. Typical run here: a few seconds per filesystem.
const MIN_ROUNDS: u64 = 300;
const MAX_ROUNDS: u64 = 5_000;
const MIN_CALLS: u64 = 120;
const DEADLINE: Duration = Duration::from_secs(20);

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The host side: a directory outside the volume that symlinks point at.
struct Outside {
    dir: PathBuf,
    marker: PathBuf,
}

fn make_outside(dir: &Path) -> Outside {
    let dir = dir.join("host-secrets");
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    let marker = dir.join("marker");
    for path in [&marker, &dir.join("f0"), &dir.join("nested/marker")] {
        std::fs::write(path, [MARKER, b" host file\n"].concat()).unwrap();
    }
    let big = std::fs::File::create(dir.join("big")).unwrap();
    rustix::fs::fallocate(&big, rustix::fs::FallocateFlags::empty(), 0, OUTSIDE_BIG).unwrap();
    Outside { dir, marker }
}

/// What a tenant slot is turned into.
#[derive(Clone, Copy)]
enum Kind {
    File,
    Dir,
    LinkToMarker,
    LinkToOutsideDir,
    Missing,
}

/// The tenant: turns named slots of its volume into other kinds, each change made at a
/// fresh name and renamed into place (as a client over NFS would). It never writes
/// through a path that could be a symlink: new things are made at unique names, and
/// slots are only renamed or removed (`remove_dir_all` does not follow symlinks).
struct Tenant {
    volume: PathBuf,
    outside_dir: PathBuf,
    marker: PathBuf,
    counter: AtomicU64,
}

/// Slots the tenant flips. `keep/` itself is never touched, so nested slots always sit
/// in a real directory of the volume.
const SLOTS: &[&str] = &[
    "t0", "t1", "t2", "t3", "d0", "d1", "d2", "keep/n0", "keep/n1", "keep/n2", "keep/e0", "keep/e1",
];

impl Tenant {
    fn unique(&self, parent: &Path, what: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        parent.join(format!(".{what}-{n}"))
    }

    fn tenant_file(path: &Path, what: &str) -> std::io::Result<()> {
        std::fs::write(path, [TENANT, what.as_bytes(), b"\n"].concat())?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640))
    }

    fn make(&self, path: &Path, kind: Kind) -> std::io::Result<()> {
        match kind {
            Kind::File => Self::tenant_file(path, "file"),
            Kind::Dir => {
                std::fs::create_dir(path)?;
                for name in ["a", "b", "c"] {
                    Self::tenant_file(&path.join(name), name)?;
                }
                std::fs::create_dir(path.join("sub"))?;
                Self::tenant_file(&path.join("sub/deep"), "deep")?;
                std::os::unix::fs::symlink("a", path.join("rel-link"))
            }
            Kind::LinkToMarker => std::os::unix::fs::symlink(&self.marker, path),
            Kind::LinkToOutsideDir => std::os::unix::fs::symlink(&self.outside_dir, path),
            Kind::Missing => Ok(()),
        }
    }

    /// Turns `slot` into `kind`: atomically where rename(2) allows, else by moving the
    /// old thing aside first (a short window in which the slot is missing).
    fn flip(&self, slot: &str, kind: Kind) -> std::io::Result<()> {
        let path = self.volume.join(slot);
        let parent = path.parent().unwrap_or(&self.volume).to_owned();
        if let Kind::Missing = kind {
            let aside = self.unique(&parent, "gone");
            std::fs::rename(&path, &aside)?;
            return remove_any(&aside);
        }
        let fresh = self.unique(&parent, "new");
        self.make(&fresh, kind)?;
        if std::fs::rename(&fresh, &path).is_ok() {
            return Ok(());
        }
        // A directory cannot replace a non-directory (and the reverse) in one rename.
        let aside = self.unique(&parent, "gone");
        let _ = std::fs::rename(&path, &aside);
        let result = std::fs::rename(&fresh, &path);
        let _ = remove_any(&aside);
        if result.is_err() {
            let _ = remove_any(&fresh);
        }
        result
    }

    /// Renames a slot away and back, so that a listing sees a name that is gone by the
    /// time it is opened.
    fn shuffle(&self, slot: &str) -> std::io::Result<()> {
        let path = self.volume.join(slot);
        let parent = path.parent().unwrap_or(&self.volume).to_owned();
        let moved = self.unique(&parent, "moved");
        std::fs::rename(&path, &moved)?;
        std::thread::yield_now();
        std::fs::rename(&moved, &path)
    }

    fn seed(&self) {
        std::fs::create_dir(self.volume.join("keep")).unwrap();
        Self::tenant_file(&self.volume.join("keep/stable"), "stable").unwrap();
        for slot in SLOTS {
            let kind = if slot.starts_with('d') || slot.contains("/e") {
                Kind::Dir
            } else {
                Kind::File
            };
            self.make(&self.volume.join(slot), kind).unwrap();
        }
    }

    /// One round: a handful of flips and shuffles of random slots.
    fn round(&self, rng: &mut Rng, errors: &mut u64) {
        const KINDS: [Kind; 5] = [
            Kind::File,
            Kind::Dir,
            Kind::LinkToMarker,
            Kind::LinkToOutsideDir,
            Kind::Missing,
        ];
        for _ in 0..6 {
            let slot = SLOTS[rng.below(SLOTS.len() as u64) as usize];
            let result = if rng.below(4) == 0 {
                self.shuffle(slot)
            } else {
                self.flip(slot, KINDS[rng.below(KINDS.len() as u64) as usize])
            };
            // Concurrent flips (and the hook) make some of these fail: that is the race.
            if result.is_err() {
                *errors += 1;
            }
        }
    }
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// Stops the tenant thread when the test ends, also when it fails.
struct TenantThread {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(u64, u64)>>,
}

impl TenantThread {
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for TenantThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The real volume API on a unix socket of its own, over `store`.
struct Served {
    rt: tokio::runtime::Runtime,
    client: VolumesClient<tonic::transport::Channel>,
    /// Dropping the sender (also when a test fails) shuts the server down.
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), common::endpoint::EndpointError>>,
    _sockets: tempfile::TempDir,
}

impl Served {
    fn start(store: VolumeStore) -> Self {
        let sockets = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let socket = Endpoint::Unix(sockets.path().join("volumes.sock"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = rt.block_on(Listener::bind(&socket)).unwrap();
        let router =
            tonic::transport::Server::builder().add_service(api::service(Arc::new(store), None));
        let server = rt.spawn(endpoint::serve(router, listener, async {
            let _ = stopped.await;
        }));
        let client = {
            let _runtime = rt.enter();
            VolumesClient::new(endpoint::connect_lazy(&socket).unwrap())
        };
        Self {
            rt,
            client,
            stop,
            server,
            _sockets: sockets,
        }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        self.rt.block_on(self.server).unwrap().unwrap();
    }
}

#[derive(Default, Debug)]
struct CopyCheck {
    files: u64,
    dirs: u64,
    symlinks: u64,
}

/// Walks a copy without following anything; every regular file must be tenant
/// content and no directory may be the outside one.
fn check_copy(root: &Path, outside: &Outside, check: &mut CopyCheck) -> Result<(), String> {
    let outside_ino = std::fs::metadata(&outside.dir).unwrap().ino();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if meta.is_dir() {
                if meta.ino() == outside_ino {
                    return Err(format!("{} is the outside directory", path.display()));
                }
                check.dirs += 1;
                pending.push(path);
            } else if meta.is_file() {
                check.files += 1;
                let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                if data.windows(MARKER.len()).any(|w| w == MARKER) {
                    return Err(format!("{} holds the outside marker", path.display()));
                }
                // A file caught between its creation and its write (fs::write truncates,
                // then writes) is empty or holds a prefix of the tenant's bytes: a live
                // tree's real state, as `cp -a` would see it, not outside content.
                if !data.starts_with(TENANT) && !TENANT.starts_with(&data) {
                    return Err(format!(
                        "{} holds {} bytes that the tenant never wrote",
                        path.display(),
                        data.len()
                    ));
                }
            } else if meta.file_type().is_symlink() {
                // Copied as a symlink (its target text may well point outside: harmless).
                check.symlinks += 1;
            } else {
                return Err(format!("{} is a special file", path.display()));
            }
        }
    }
    Ok(())
}

fn race(root: &Path, outside: &Outside) {
    let seed = std::env::var("HANFS_RACE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let volume = root.join("volumes").join(VOLUME);
    let live = volume.clone();
    let marker = outside.marker.clone();
    let hook_swaps = Arc::new(AtomicU64::new(0));
    let hook_calls = Arc::new(AtomicU64::new(0));
    let hook: CopyHook = {
        let (hook_swaps, hook_calls) = (hook_swaps.clone(), hook_calls.clone());
        let n = AtomicU64::new(0);
        Arc::new(move |path: &Path| {
            hook_calls.fetch_add(1, Ordering::Relaxed);
            // Only the live volume is the tenant's; every third file it is about to
            // copy becomes a symlink to the marker right now.
            if !path.starts_with(&live) || !n.fetch_add(1, Ordering::Relaxed).is_multiple_of(3) {
                return;
            }
            let link = path.with_file_name(format!(
                ".hook-{}",
                hook_swaps.fetch_add(1, Ordering::Relaxed)
            ));
            if std::os::unix::fs::symlink(&marker, &link).is_ok()
                && std::fs::rename(&link, path).is_err()
            {
                let _ = std::fs::remove_file(&link);
            }
        })
    };
    let store = VolumeStore::open(StoreConfig {
        root: root.to_owned(),
        capacity_policy: CapacityPolicy::Thin,
        default_volume_bytes: 64 << 20,
        default_mode: 0o777,
        copy_hook: Some(hook),
    })
    .unwrap();
    let reflink = store.status().unwrap().reflink;

    let served = Served::start(store);
    let (rt, mut client) = (&served.rt, served.client.clone());

    rt.block_on(client.create_volume(pb::CreateVolumeRequest {
        dir: VOLUME.into(),
        request_name: VOLUME.into(),
        ..Default::default()
    }))
    .unwrap();
    let tenant = Arc::new(Tenant {
        volume: volume.clone(),
        outside_dir: outside.dir.clone(),
        marker: outside.marker.clone(),
        counter: AtomicU64::new(0),
    });
    tenant.seed();

    let stop = Arc::new(AtomicBool::new(false));
    let rounds_done = Arc::new(AtomicU64::new(0));
    let tenant_thread = TenantThread {
        stop: stop.clone(),
        handle: Some(std::thread::spawn({
            let (tenant, stop, rounds_done) = (tenant.clone(), stop.clone(), rounds_done.clone());
            move || {
                let mut rng = Rng(seed);
                let mut errors = 0;
                let mut rounds = 0;
                while rounds < MAX_ROUNDS && !stop.load(Ordering::Relaxed) {
                    tenant.round(&mut rng, &mut errors);
                    rounds += 1;
                    rounds_done.store(rounds, Ordering::Relaxed);
                }
                (rounds, errors)
            }
        })),
    };

    let started = Instant::now();
    let mut calls = 0u64;
    let mut failures: Vec<String> = Vec::new();
    let mut leaks: Vec<String> = Vec::new();
    let mut check = CopyCheck::default();
    let mut usage_max = 0i64;
    let mut copies = 0u64;
    let mut i = 0u64;
    let verify = |what: String, path: PathBuf, check: &mut CopyCheck, copies: &mut u64| {
        *copies += 1;
        check_copy(&path, outside, check).map_err(|e| format!("{what}: {e}"))
    };
    while (calls < MIN_CALLS || rounds_done.load(Ordering::Relaxed) < MIN_ROUNDS)
        && started.elapsed() < DEADLINE
        && rounds_done.load(Ordering::Relaxed) < MAX_ROUNDS
    {
        let snap = format!("snap-{i}");
        calls += 1;
        let snapshot = rt.block_on(client.create_snapshot(pb::CreateSnapshotRequest {
            name: snap.clone(),
            request_name: snap.clone(),
            source_volume: VOLUME.into(),
        }));
        match snapshot {
            Ok(_) => leaks.extend(
                verify(
                    format!("snapshot {snap}"),
                    root.join("snapshots").join(&snap),
                    &mut check,
                    &mut copies,
                )
                .err(),
            ),
            Err(s) => failures.push(format!(
                "CreateSnapshot {snap}: {:?} {}",
                s.code(),
                s.message()
            )),
        }

        let clone = format!("clone-{i}");
        calls += 1;
        let cloned = rt.block_on(client.create_volume(pb::CreateVolumeRequest {
            dir: clone.clone(),
            request_name: clone.clone(),
            source: Some(pb::create_volume_request::Source::SourceVolume(
                VOLUME.into(),
            )),
            ..Default::default()
        }));
        match cloned {
            Ok(_) => leaks.extend(
                verify(
                    format!("clone {clone}"),
                    root.join("volumes").join(&clone),
                    &mut check,
                    &mut copies,
                )
                .err(),
            ),
            Err(s) => failures.push(format!(
                "CreateVolume {clone}: {:?} {}",
                s.code(),
                s.message()
            )),
        }

        // A restore copies a snapshot (still, tenant-free) tree: the copy itself must
        // stay clean, and so must the snapshot it came from.
        if i.is_multiple_of(4) && root.join("snapshots").join(&snap).is_dir() {
            let restore = format!("restore-{i}");
            calls += 1;
            let restored = rt.block_on(client.create_volume(pb::CreateVolumeRequest {
                dir: restore.clone(),
                request_name: restore.clone(),
                source: Some(pb::create_volume_request::Source::SourceSnapshot(
                    snap.clone(),
                )),
                ..Default::default()
            }));
            match restored {
                Ok(_) => leaks.extend(
                    verify(
                        format!("restore {restore}"),
                        root.join("volumes").join(&restore),
                        &mut check,
                        &mut copies,
                    )
                    .err(),
                ),
                Err(s) => failures.push(format!(
                    "CreateVolume {restore}: {:?} {}",
                    s.code(),
                    s.message()
                )),
            }
            calls += 1;
            if let Err(s) = rt.block_on(client.delete_volume(pb::DeleteVolumeRequest {
                dir: restore.clone(),
            })) {
                failures.push(format!(
                    "DeleteVolume {restore}: {:?} {}",
                    s.code(),
                    s.message()
                ));
            }
        }

        // The usage walk of the live volume (no quota here, so it walks the tree).
        calls += 1;
        match rt.block_on(client.get_volume(pb::GetVolumeRequest { dir: VOLUME.into() })) {
            Ok(v) => {
                let used = v.into_inner().used_bytes;
                if used < 0 {
                    failures.push("GetVolume: no usage (the walk failed)".into());
                } else if used as u64 >= OUTSIDE_BIG {
                    leaks.push(format!("GetVolume: usage {used} counts the outside file"));
                }
                usage_max = usage_max.max(used);
            }
            Err(s) => failures.push(format!("GetVolume: {:?} {}", s.code(), s.message())),
        }

        // Deletes keep the export small; they are calls like any other.
        calls += 2;
        if let Err(s) =
            rt.block_on(client.delete_snapshot(pb::DeleteSnapshotRequest { name: snap.clone() }))
        {
            failures.push(format!(
                "DeleteSnapshot {snap}: {:?} {}",
                s.code(),
                s.message()
            ));
        }
        if let Err(s) =
            rt.block_on(client.delete_volume(pb::DeleteVolumeRequest { dir: clone.clone() }))
        {
            failures.push(format!(
                "DeleteVolume {clone}: {:?} {}",
                s.code(),
                s.message()
            ));
        }
        i += 1;
    }
    let elapsed = started.elapsed();
    let (rounds, tenant_errors) = tenant_thread.finish();
    served.stop();

    println!(
        "symlink race on {} (reflink: {reflink}, seed {seed}): {rounds} tenant rounds \
         ({tenant_errors} tenant ops lost a race), {calls} calls ({i} iterations, {copies} \
         copies verified: {} files read, {} dirs, {} symlinks), {} hook swaps in {} hooked \
         files, usage at most {usage_max} bytes, {} failed calls, {} leaks, {elapsed:?}",
        root.display(),
        check.files,
        check.dirs,
        check.symlinks,
        hook_swaps.load(Ordering::Relaxed),
        hook_calls.load(Ordering::Relaxed),
        failures.len(),
        leaks.len(),
    );
    assert!(
        leaks.is_empty(),
        "outside content in copies: {:#?}",
        &leaks[..leaks.len().min(10)]
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        rounds >= MIN_ROUNDS && calls >= MIN_CALLS,
        "too little race within {DEADLINE:?}: {rounds} rounds, {calls} calls"
    );
    // The race was real: copies saw the tenant's symlinks and the hook swapped files.
    assert!(check.symlinks > 0, "no copy ever met a symlink");
    assert!(
        hook_swaps.load(Ordering::Relaxed) > 0,
        "the hook never swapped a file"
    );
}

#[test]
fn live_volume_on_xfs_copies_by_reflink_without_following_the_tenants_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let outside = make_outside(dir.path());
    let mount = support::mount_xfs(dir.path(), 512 << 20);
    race(&mount.mountpoint, &outside);
}

#[test]
fn live_volume_on_a_plain_directory_copies_without_following_the_tenants_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let outside = make_outside(dir.path());
    let export = dir.path().join("export");
    std::fs::create_dir(&export).unwrap();
    race(&export, &outside);
}

/// Unmounts a small tmpfs when the test ends, also when it fails.
struct TmpfsMount(PathBuf);

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The real errors still fail the call: a copy that runs out of space answers with the
/// entry and the cause named, and leaves no snapshot, clone, record or scratch behind.
/// A volume directory that someone replaced by a symlink on the server is refused, not
/// followed.
#[test]
fn a_full_export_and_a_symlinked_volume_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let outside = make_outside(dir.path());
    let export = dir.path().join("export");
    std::fs::create_dir(&export).unwrap();
    support::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "hanfs-race-test"])
            .arg(&export),
    );
    let _mount = TmpfsMount(export.clone());
    let store = VolumeStore::open(StoreConfig {
        root: export.clone(),
        capacity_policy: CapacityPolicy::Thin,
        default_volume_bytes: 64 << 20,
        default_mode: 0o777,
        copy_hook: None,
    })
    .unwrap();
    let served = Served::start(store);
    let (rt, mut client) = (&served.rt, served.client.clone());
    let create =
        |name: &str, source: Option<pb::create_volume_request::Source>| pb::CreateVolumeRequest {
            dir: name.into(),
            request_name: name.into(),
            source,
            ..Default::default()
        };
    rt.block_on(client.create_volume(create(VOLUME, None)))
        .unwrap();
    // 2.5 MiB of 4: a second copy cannot fit.
    let big = [TENANT, &vec![b'x'; 5 << 19][..]].concat();
    std::fs::write(export.join("volumes").join(VOLUME).join("big"), &big).unwrap();
    let leftovers = |what: &str| {
        let names = |p: &Path| -> Vec<String> {
            std::fs::read_dir(p)
                .map(|d| {
                    d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut left = names(&export.join(".hanfs/tmp"));
        left.extend(names(&export.join("snapshots")));
        left.extend(names(&export.join(".hanfs/meta/snapshots")));
        left.extend(
            names(&export.join("volumes"))
                .into_iter()
                .filter(|n| n != VOLUME),
        );
        left.extend(
            names(&export.join(".hanfs/meta/volumes"))
                .into_iter()
                .filter(|n| n != &format!("{VOLUME}.json")),
        );
        assert!(left.is_empty(), "{what} left {left:?}");
    };

    let full = rt
        .block_on(client.create_snapshot(pb::CreateSnapshotRequest {
            name: "snap-full".into(),
            request_name: "snap-full".into(),
            source_volume: VOLUME.into(),
        }))
        .unwrap_err();
    println!(
        "snapshot on a full export: {:?} {}",
        full.code(),
        full.message()
    );
    assert_eq!(full.code(), tonic::Code::Internal, "{full}");
    assert!(
        full.message().contains("No space left on device") && full.message().contains("big"),
        "the message names the cause and the file: {}",
        full.message()
    );
    leftovers("the failed snapshot");
    let full = rt
        .block_on(client.create_volume(create(
            "clone-full",
            Some(pb::create_volume_request::Source::SourceVolume(
                VOLUME.into(),
            )),
        )))
        .unwrap_err();
    assert_eq!(full.code(), tonic::Code::Internal, "{full}");
    assert!(
        full.message().contains("No space left on device"),
        "{}",
        full.message()
    );
    leftovers("the failed clone");

    // Someone on the server swaps the volume's own directory for a symlink to a host
    // directory: the copy refuses to open it rather than copy the host's files.
    std::fs::remove_file(export.join("volumes").join(VOLUME).join("big")).unwrap();
    let aside = export.join("aside");
    std::fs::rename(export.join("volumes").join(VOLUME), &aside).unwrap();
    std::os::unix::fs::symlink(&outside.dir, export.join("volumes").join(VOLUME)).unwrap();
    let refused = rt
        .block_on(client.create_snapshot(pb::CreateSnapshotRequest {
            name: "snap-link".into(),
            request_name: "snap-link".into(),
            source_volume: VOLUME.into(),
        }))
        .unwrap_err();
    println!(
        "snapshot of a symlinked volume: {:?} {}",
        refused.code(),
        refused.message()
    );
    assert_ne!(refused.code(), tonic::Code::Ok);
    assert!(
        refused.message().contains("symbolic link, not a directory"),
        "{}",
        refused.message()
    );
    std::fs::remove_file(export.join("volumes").join(VOLUME)).unwrap();
    std::fs::rename(&aside, export.join("volumes").join(VOLUME)).unwrap();
    leftovers("the refused snapshot");

    served.stop();
}

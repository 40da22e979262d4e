//! Group snapshots on a real directory tree: members restorable and deleted only with
//! their group, idempotency, bad input with nothing left behind, crash leftovers
//! invisible and swept, and a write-order consistent cut while a writer runs.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failure by design

use common::ids::{SnapshotName, VolumeDir};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use volumes::copy::CopyHook;
use volumes::meta::OnDelete;
use volumes::store::{CapacityPolicy, CreateVolume, SourceRef};
use volumes::{StoreConfig, VolumeError, VolumeStore};

const MIB: i64 = 1 << 20;

fn config(root: &Path, copy_hook: Option<CopyHook>) -> StoreConfig {
    StoreConfig {
        root: root.to_owned(),
        capacity_policy: CapacityPolicy::Thin,
        default_volume_bytes: 64 * MIB,
        default_mode: 0o777,
        copy_hook,
    }
}

fn dir(name: &str) -> VolumeDir {
    VolumeDir::parse(name).unwrap()
}

fn snap(name: &str) -> SnapshotName {
    SnapshotName::parse(name).unwrap()
}

fn create(name: &str, source: Option<SourceRef>) -> CreateVolume {
    CreateVolume {
        dir: dir(name),
        request_name: name.to_string(),
        required_bytes: 0,
        limit_bytes: 0,
        on_delete: OnDelete::Delete,
        mode: None,
        source,
    }
}

fn entries(path: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Nothing of any group is on disk: no member, no record, no scratch.
fn assert_no_group_state(root: &Path) {
    assert_eq!(entries(&root.join("snapshots")), Vec::<String>::new());
    assert_eq!(
        entries(&root.join(".hanfs/meta/snapshots")),
        Vec::<String>::new()
    );
    assert_eq!(
        entries(&root.join(".hanfs/meta/groups")),
        Vec::<String>::new()
    );
    assert_eq!(entries(&root.join(".hanfs/tmp")), Vec::<String>::new());
}

#[test]
fn members_restore_are_deleted_with_their_group_and_creates_are_idempotent() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(config(root.path(), None)).unwrap();
    for (name, text) in [("pvc-a", "alpha"), ("pvc-b", "beta")] {
        store.create_volume(create(name, None)).unwrap();
        std::fs::create_dir(root.path().join("volumes").join(name).join("d")).unwrap();
        std::fs::write(root.path().join("volumes").join(name).join("d/f"), text).unwrap();
    }
    let group = snap("group-1");
    // Listed out of order: members come back sorted by volume.
    let made = store
        .create_group_snapshot(&group, "req-1", &[dir("pvc-b"), dir("pvc-a")])
        .unwrap();
    assert_eq!(made.snapshots.len(), 2);
    assert_eq!(made.snapshots[0].meta.source_volume, "pvc-a");
    assert_eq!(made.snapshots[1].meta.source_volume, "pvc-b");
    assert_eq!(made.meta.attempts, 1, "nobody wrote: the first cut holds");
    for s in &made.snapshots {
        assert_eq!(s.meta.group.as_deref(), Some("group-1"));
    }

    // Same name, same members (any order): the same group, not a second one.
    let again = store
        .create_group_snapshot(&group, "req-1", &[dir("pvc-a"), dir("pvc-b")])
        .unwrap();
    assert_eq!(again.meta, made.meta);
    // Same name, other members or another request: ALREADY_EXISTS, group unchanged.
    let err = store
        .create_group_snapshot(&group, "req-1", &[dir("pvc-a")])
        .unwrap_err();
    assert!(matches!(err, VolumeError::AlreadyExists(_)), "{err}");
    let err = store
        .create_group_snapshot(&group, "req-2", &[dir("pvc-a"), dir("pvc-b")])
        .unwrap_err();
    assert!(matches!(err, VolumeError::AlreadyExists(_)), "{err}");
    assert_eq!(store.get_group_snapshot(&group).unwrap().meta, made.meta);

    // Members are ordinary snapshots: listed, gettable, restorable.
    let (listed, _) = store.list_snapshots(0, "", None).unwrap();
    assert_eq!(listed.len(), 2);
    let member_b = made.snapshots[1].name.clone();
    assert_eq!(
        store.get_snapshot(&member_b).unwrap().meta.source_volume,
        "pvc-b"
    );
    store
        .create_volume(create(
            "restored",
            Some(SourceRef::Snapshot(member_b.clone())),
        ))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(root.path().join("volumes/restored/d/f")).unwrap(),
        "beta"
    );

    // A member alone cannot be deleted (CSI: only with its group).
    let err = store.delete_snapshot(&member_b).unwrap_err();
    assert!(matches!(err, VolumeError::FailedPrecondition(_)), "{err}");
    assert!(store.get_snapshot(&member_b).is_ok(), "still there");

    assert!(store.delete_group_snapshot(&group).unwrap());
    assert!(matches!(
        store.get_group_snapshot(&group),
        Err(VolumeError::NotFound(_))
    ));
    assert!(matches!(
        store.get_snapshot(&member_b),
        Err(VolumeError::NotFound(_))
    ));
    assert!(!store.delete_group_snapshot(&group).unwrap(), "idempotent");
    assert_no_group_state(root.path());
    // The restored volume is independent of the deleted member.
    assert_eq!(
        std::fs::read_to_string(root.path().join("volumes/restored/d/f")).unwrap(),
        "beta"
    );
}

#[test]
fn bad_requests_are_refused_and_leave_nothing_behind() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(config(root.path(), None)).unwrap();
    store.create_volume(create("pvc-a", None)).unwrap();
    let group = snap("g");

    let err = store.create_group_snapshot(&group, "r", &[]).unwrap_err();
    assert!(matches!(err, VolumeError::InvalidArgument(_)), "{err}");
    let err = store
        .create_group_snapshot(&group, "r", &[dir("pvc-a"), dir("pvc-a")])
        .unwrap_err();
    assert!(
        matches!(&err, VolumeError::InvalidArgument(m) if m.contains("twice")),
        "{err}"
    );
    // One member missing: NOT_FOUND, and no snapshot of the other member stays.
    let err = store
        .create_group_snapshot(&group, "r", &[dir("pvc-a"), dir("pvc-gone")])
        .unwrap_err();
    assert!(
        matches!(&err, VolumeError::NotFound(m) if m.contains("pvc-gone")),
        "{err}"
    );
    assert_no_group_state(root.path());
    // A group name too long for its member names.
    let long = snap(&"g".repeat(125));
    let err = store
        .create_group_snapshot(&long, "r", &[dir("pvc-a")])
        .unwrap_err();
    assert!(matches!(err, VolumeError::InvalidArgument(_)), "{err}");
    assert!(matches!(
        store.get_group_snapshot(&group),
        Err(VolumeError::NotFound(_))
    ));
    assert_no_group_state(root.path());
}

#[test]
fn a_crash_before_the_group_record_leaves_no_visible_member_and_is_swept() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(config(root.path(), None)).unwrap();
    store.create_volume(create("pvc-a", None)).unwrap();
    store.create_volume(create("pvc-b", None)).unwrap();
    let group = snap("g");
    store
        .create_group_snapshot(&group, "r", &[dir("pvc-a"), dir("pvc-b")])
        .unwrap();
    // The state a crash between the members' renames and the group record leaves:
    // remove the commit record, add a scratch build as an interrupted retry would.
    std::fs::remove_file(root.path().join(".hanfs/meta/groups/g.json")).unwrap();
    std::fs::create_dir(root.path().join(".hanfs/tmp/group-g.deadbeef")).unwrap();
    assert_eq!(entries(&root.path().join("snapshots")).len(), 2, "on disk");
    let (listed, _) = store.list_snapshots(0, "", None).unwrap();
    assert!(listed.is_empty(), "but not visible: {listed:?}");
    assert!(matches!(
        store.get_group_snapshot(&group),
        Err(VolumeError::NotFound(_))
    ));

    // The next call on that group cleans up and builds it anew.
    let made = store
        .create_group_snapshot(&group, "r", &[dir("pvc-a"), dir("pvc-b")])
        .unwrap();
    assert_eq!(made.snapshots.len(), 2);
    assert_eq!(
        entries(&root.path().join(".hanfs/tmp")),
        Vec::<String>::new()
    );

    // A restart sweeps orphans of groups nobody calls again.
    std::fs::remove_file(root.path().join(".hanfs/meta/groups/g.json")).unwrap();
    drop(store);
    let store = VolumeStore::open(config(root.path(), None)).unwrap();
    assert_no_group_state(root.path());
    assert!(store.list_snapshots(0, "", None).unwrap().0.is_empty());
}

/// Reads the counter a writer keeps in `<volume>/count`.
fn counter(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    text.trim().parse().unwrap_or(0)
}

/// A writer bumps a counter in volume A, then the same counter in volume B, over and
/// over: at every instant A == B or A == B + 1. The copy hook slows each file's copy
/// down, so a cut that copied A and then B without checking would catch B ahead of A
/// (B > A) — this test then fails. A returned group must hold the invariant; calls that
/// cannot cut consistently while the writer runs fail with Unsettled instead.
#[test]
fn the_cut_is_write_order_consistent_while_a_writer_runs() {
    let root = tempfile::tempdir().unwrap();
    let hook: CopyHook = Arc::new(|_| std::thread::sleep(std::time::Duration::from_millis(15)));
    let store = VolumeStore::open(config(root.path(), Some(hook))).unwrap();
    store.create_volume(create("vol-a", None)).unwrap();
    store.create_volume(create("vol-b", None)).unwrap();
    let a = root.path().join("volumes/vol-a/count");
    let b = root.path().join("volumes/vol-b/count");
    std::fs::write(&a, format!("{:20}\n", 0)).unwrap();
    std::fs::write(&b, format!("{:20}\n", 0)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (a, b, stop) = (a.clone(), b.clone(), stop.clone());
        std::thread::spawn(move || {
            let fa = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
            let fb = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
            let mut n: u64 = 0;
            // Bounded: at most 5 s of writes even if the test thread dies.
            let started = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed().as_secs() < 5 {
                n += 1;
                fa.write_all_at(format!("{n:20}\n").as_bytes(), 0).unwrap();
                fb.write_all_at(format!("{n:20}\n").as_bytes(), 0).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut unsettled = 0;
    let mut made = None;
    for i in 0..3 {
        let group = snap(&format!("while-writing-{i}"));
        match store.create_group_snapshot(&group, "r", &[dir("vol-a"), dir("vol-b")]) {
            Ok(info) => {
                made = Some(info);
                break;
            }
            Err(VolumeError::Unsettled(m)) => {
                assert!(m.contains("vol-a") || m.contains("vol-b"), "{m}");
                unsettled += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(
        writes > 50,
        "the writer ran during the cuts ({writes} rounds)"
    );
    // Once the writer stopped a cut settles at the first attempt.
    let quiet = store
        .create_group_snapshot(&snap("quiet"), "r", &[dir("vol-a"), dir("vol-b")])
        .unwrap();
    assert_eq!(quiet.meta.attempts, 1);
    eprintln!(
        "while writing: {unsettled} unsettled call(s), then {}",
        made.as_ref().map_or("none settled".into(), |m| format!(
            "settled after {} attempt(s)",
            m.meta.attempts
        ))
    );
    for info in made.into_iter().chain([quiet]) {
        let ca = counter(
            &root
                .path()
                .join("snapshots")
                .join(info.snapshots[0].name.as_str())
                .join("count"),
        );
        let cb = counter(
            &root
                .path()
                .join("snapshots")
                .join(info.snapshots[1].name.as_str())
                .join("count"),
        );
        assert!(
            ca == cb || ca == cb + 1,
            "group {} is not write-order consistent: A={ca} B={cb}",
            info.name
        );
    }
    // Failed calls kept nothing.
    assert_eq!(
        entries(&root.path().join(".hanfs/tmp")),
        Vec::<String>::new()
    );
}

//! The volume store on a real directory tree: idempotency, crash leftovers, snapshots,
//! clones, delete policies, capacity policy and races between calls.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failure by design

use common::ids::{SnapshotName, VolumeDir};
use std::path::Path;
use std::sync::{Arc, mpsc};
use volumes::copy::CopyHook;
use volumes::meta::{CopyMethod, OnDelete};
use volumes::store::{CapacityPolicy, CreateVolume, DeleteOutcome, SourceRef};
use volumes::{StoreConfig, VolumeError, VolumeStore};

const MIB: i64 = 1 << 20;

fn config(root: &Path) -> StoreConfig {
    StoreConfig {
        root: root.to_owned(),
        capacity_policy: CapacityPolicy::Thin,
        default_volume_bytes: 64 * MIB,
        default_mode: 0o777,
        copy_hook: None,
    }
}

fn dir(name: &str) -> VolumeDir {
    VolumeDir::parse(name).unwrap()
}

fn create(name: &str, bytes: i64) -> CreateVolume {
    CreateVolume {
        dir: dir(name),
        request_name: name.to_string(),
        required_bytes: bytes,
        limit_bytes: 0,
        on_delete: OnDelete::Delete,
        mode: None,
        source: None,
    }
}

#[test]
fn create_is_idempotent_and_conflicts_are_already_exists() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(config(root.path())).unwrap();
    let first = store.create_volume(create("pvc-a", 10 * MIB)).unwrap();
    assert_eq!(first.meta.as_ref().unwrap().capacity_bytes, 10 * MIB);
    assert!(root.path().join("volumes/pvc-a").is_dir());

    let again = store.create_volume(create("pvc-a", 10 * MIB)).unwrap();
    assert_eq!(again.meta, first.meta, "same request, same volume");

    let err = store.create_volume(create("pvc-a", 20 * MIB)).unwrap_err();
    assert!(matches!(err, VolumeError::AlreadyExists(_)), "{err}");

    let mut other_request = create("pvc-a", 10 * MIB);
    other_request.request_name = "someone-else".into();
    let err = store.create_volume(other_request).unwrap_err();
    assert!(err.to_string().contains("already belongs"), "{err}");

    let (list, next) = store.list_volumes(0, "").unwrap();
    assert_eq!(list.len(), 1);
    assert!(next.is_none());
    assert_eq!(
        store.delete_volume(&dir("pvc-a")).unwrap(),
        DeleteOutcome::Deleted
    );
    assert_eq!(
        store.delete_volume(&dir("pvc-a")).unwrap(),
        DeleteOutcome::Absent
    );
    assert!(!root.path().join("volumes/pvc-a").exists());
    assert!(matches!(
        store.get_volume(&dir("pvc-a")),
        Err(VolumeError::NotFound(_))
    ));
}

#[test]
fn bad_sizes_leave_nothing_behind() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(config(root.path())).unwrap();
    for (required, limit) in [(-1, 0), (0, -5), (10, 5), (i64::MAX, 0)] {
        let mut request = create("pvc-bad", required);
        request.limit_bytes = limit;
        assert!(store.create_volume(request).is_err(), "{required} {limit}");
    }
    assert_eq!(
        std::fs::read_dir(root.path().join("volumes"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(root.path().join(".hanfs/tmp"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(root.path().join(".hanfs/meta/volumes"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_restart_sweeps_what_interrupted_calls_left_and_keeps_volumes() {
    let root = tempfile::tempdir().unwrap();
    {
        let store = VolumeStore::open(config(root.path())).unwrap();
        store.create_volume(create("pvc-keep", MIB)).unwrap();
        std::fs::write(root.path().join("volumes/pvc-keep/data"), b"precious").unwrap();
    }
    // What a crash at various points leaves: a half-built volume, a half-removed one,
    // a record whose directory never made it, and a torn record write.
    std::fs::create_dir_all(root.path().join(".hanfs/tmp/vol-pvc-x.123/sub")).unwrap();
    std::fs::create_dir_all(root.path().join(".hanfs/trash/vol-pvc-y.456")).unwrap();
    std::fs::write(root.path().join(".hanfs/meta/volumes/pvc-x.json"), b"{}").unwrap();
    std::fs::write(
        root.path().join(".hanfs/meta/volumes/pvc-z.json.tmp-1"),
        b"{",
    )
    .unwrap();

    let store = VolumeStore::open(config(root.path())).unwrap();
    assert_eq!(
        std::fs::read_dir(root.path().join(".hanfs/tmp"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(root.path().join(".hanfs/trash"))
            .unwrap()
            .count(),
        0
    );
    let records: Vec<_> = std::fs::read_dir(root.path().join(".hanfs/meta/volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(records, vec!["pvc-keep.json"]);
    assert_eq!(
        std::fs::read(root.path().join("volumes/pvc-keep/data")).unwrap(),
        b"precious"
    );
    // The interrupted create can now be finished by its retry.
    store.create_volume(create("pvc-x", MIB)).unwrap();
}

#[test]
fn snapshots_and_clones_copy_content_and_report_how() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(config(root.path())).unwrap();
    store.create_volume(create("pvc-src", 8 * MIB)).unwrap();
    let src = root.path().join("volumes/pvc-src");
    std::fs::create_dir(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"version 1").unwrap();

    let snap = SnapshotName::parse("snap-1").unwrap();
    let info = store
        .create_snapshot(&snap, "snap-1", &dir("pvc-src"))
        .unwrap();
    assert_eq!(info.meta.size_bytes, 8 * MIB);
    let expected = if store.status().unwrap().reflink {
        CopyMethod::Reflink
    } else {
        CopyMethod::FullCopy
    };
    assert_eq!(info.meta.copy_method, expected);
    // Idempotent; a different source under the same name is a conflict.
    store
        .create_snapshot(&snap, "snap-1", &dir("pvc-src"))
        .unwrap();
    store.create_volume(create("pvc-other", MIB)).unwrap();
    assert!(matches!(
        store.create_snapshot(&snap, "snap-1", &dir("pvc-other")),
        Err(VolumeError::AlreadyExists(_))
    ));

    std::fs::write(src.join("d/f"), b"version 2").unwrap();

    let mut restore = create("pvc-restored", 0);
    restore.source = Some(SourceRef::Snapshot(snap.clone()));
    let restored = store.create_volume(restore).unwrap();
    assert_eq!(
        restored.meta.as_ref().unwrap().capacity_bytes,
        8 * MIB,
        "defaults to the snapshot's size"
    );
    assert_eq!(
        std::fs::read(root.path().join("volumes/pvc-restored/d/f")).unwrap(),
        b"version 1"
    );

    let mut clone = create("pvc-clone", 16 * MIB);
    clone.source = Some(SourceRef::Volume(dir("pvc-src")));
    store.create_volume(clone).unwrap();
    assert_eq!(
        std::fs::read(root.path().join("volumes/pvc-clone/d/f")).unwrap(),
        b"version 2"
    );

    let mut too_small = create("pvc-small", MIB);
    too_small.source = Some(SourceRef::Volume(dir("pvc-src")));
    assert!(matches!(
        store.create_volume(too_small),
        Err(VolumeError::OutOfRange(_))
    ));

    let mut missing = create("pvc-nosrc", 0);
    missing.source = Some(SourceRef::Snapshot(SnapshotName::parse("nope").unwrap()));
    assert!(matches!(
        store.create_volume(missing),
        Err(VolumeError::NotFound(_))
    ));
    assert!(matches!(
        store.create_snapshot(
            &SnapshotName::parse("s2").unwrap(),
            "s2",
            &dir("pvc-missing")
        ),
        Err(VolumeError::NotFound(_))
    ));

    let (list, _) = store.list_snapshots(0, "", Some(&dir("pvc-src"))).unwrap();
    assert_eq!(list.len(), 1);
    let (list, _) = store
        .list_snapshots(0, "", Some(&dir("pvc-other")))
        .unwrap();
    assert!(list.is_empty());
    assert!(store.delete_snapshot(&snap).unwrap());
    assert!(!store.delete_snapshot(&snap).unwrap());
}

#[test]
fn delete_while_a_clone_is_copying_is_aborted_and_the_clone_completes() {
    let root = tempfile::tempdir().unwrap();
    let (reached_tx, reached_rx) = mpsc::channel::<()>();
    let (resume_tx, resume_rx) = mpsc::channel::<()>();
    let resume_rx = std::sync::Mutex::new(resume_rx);
    let reached_tx = std::sync::Mutex::new(reached_tx);
    let hook: CopyHook = Arc::new(move |_path| {
        let _ = reached_tx.lock().unwrap().send(());
        let _ = resume_rx
            .lock()
            .unwrap()
            .recv_timeout(std::time::Duration::from_secs(10));
    });
    let store = Arc::new(
        VolumeStore::open(StoreConfig {
            copy_hook: Some(hook),
            ..config(root.path())
        })
        .unwrap(),
    );
    store.create_volume(create("pvc-src", MIB)).unwrap();
    std::fs::write(root.path().join("volumes/pvc-src/f"), b"data").unwrap();

    let cloner = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut clone = create("pvc-clone", MIB);
            clone.source = Some(SourceRef::Volume(dir("pvc-src")));
            store.create_volume(clone)
        })
    };
    reached_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the clone started copying");
    let err = store.delete_volume(&dir("pvc-src")).unwrap_err();
    assert!(matches!(err, VolumeError::Busy(_)), "{err}");
    // A second create of the same clone while the first runs is also told to retry.
    let mut again = create("pvc-clone", MIB);
    again.source = Some(SourceRef::Volume(dir("pvc-src")));
    assert!(matches!(
        store.create_volume(again),
        Err(VolumeError::Busy(_))
    ));
    resume_tx.send(()).unwrap();
    cloner.join().unwrap().unwrap();

    assert_eq!(
        std::fs::read(root.path().join("volumes/pvc-clone/f")).unwrap(),
        b"data"
    );
    assert_eq!(
        store.delete_volume(&dir("pvc-src")).unwrap(),
        DeleteOutcome::Deleted
    );
    assert_eq!(
        std::fs::read(root.path().join("volumes/pvc-clone/f")).unwrap(),
        b"data"
    );
}

#[test]
fn retain_and_archive_keep_the_data_outside_volumes() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(config(root.path())).unwrap();
    for (name, policy) in [("pvc-r", OnDelete::Retain), ("pvc-a", OnDelete::Archive)] {
        let mut request = create(name, MIB);
        request.on_delete = policy;
        store.create_volume(request).unwrap();
        std::fs::write(root.path().join("volumes").join(name).join("f"), name).unwrap();
        let DeleteOutcome::Kept(kept_policy, path) = store.delete_volume(&dir(name)).unwrap()
        else {
            panic!("{name} was not kept");
        };
        assert_eq!(kept_policy, policy);
        assert_eq!(std::fs::read_to_string(path.join("f")).unwrap(), name);
        assert!(!root.path().join("volumes").join(name).exists());
    }
    assert!(root.path().join("retained/pvc-r/f").exists());
}

#[test]
fn reserve_policy_refuses_what_is_already_promised() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(StoreConfig {
        capacity_policy: CapacityPolicy::Reserve,
        ..config(root.path())
    })
    .unwrap();
    let capacity = store.capacity().unwrap();
    assert!(capacity.available_bytes > 0);
    let err = store
        .create_volume(create("pvc-huge", capacity.available_bytes + (1 << 30)))
        .unwrap_err();
    assert!(matches!(err, VolumeError::ResourceExhausted(_)), "{err}");
    assert!(err.to_string().contains("available"), "{err}");
    store.create_volume(create("pvc-ok", 10 * MIB)).unwrap();
    let after = store.capacity().unwrap();
    assert_eq!(after.promised_bytes, 10 * MIB);
    // Expansion beyond what is available is refused too, and leaves the size alone.
    let err = store
        .expand_volume(&dir("pvc-ok"), after.available_bytes + (1 << 30), 0)
        .unwrap_err();
    assert!(matches!(err, VolumeError::ResourceExhausted(_)), "{err}");
    assert_eq!(
        store
            .get_volume(&dir("pvc-ok"))
            .unwrap()
            .meta
            .unwrap()
            .capacity_bytes,
        10 * MIB
    );
    let grown = store.expand_volume(&dir("pvc-ok"), 20 * MIB, 0).unwrap();
    assert_eq!(grown.meta.unwrap().capacity_bytes, 20 * MIB);
}

#[test]
fn pagination_over_volumes_returns_each_once() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(config(root.path())).unwrap();
    for i in 0..7 {
        store
            .create_volume(create(&format!("pvc-{i}"), MIB))
            .unwrap();
    }
    let mut token = String::new();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (page, next) = store.list_volumes(3, &token).unwrap();
        assert!(page.len() <= 3);
        seen.extend(page.into_iter().map(|v| v.dir.to_string()));
        match next {
            Some(t) => token = t,
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    assert!(matches!(
        store.list_volumes(3, "invalid-token"),
        Err(VolumeError::BadToken(_))
    ));
}

#[test]
fn the_on_delete_policy_can_be_changed_after_creation() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(config(root.path())).unwrap();
    store.create_volume(create("pvc-m", MIB)).unwrap();
    std::fs::write(root.path().join("volumes/pvc-m/f"), b"keep").unwrap();
    let info = store
        .set_on_delete(&dir("pvc-m"), OnDelete::Retain)
        .unwrap();
    assert_eq!(info.meta.unwrap().on_delete, OnDelete::Retain);
    assert!(matches!(
        store.delete_volume(&dir("pvc-m")).unwrap(),
        DeleteOutcome::Kept(OnDelete::Retain, _)
    ));
    assert_eq!(
        std::fs::read(root.path().join("retained/pvc-m/f")).unwrap(),
        b"keep"
    );
    assert!(matches!(
        store.set_on_delete(&dir("pvc-m"), OnDelete::Delete),
        Err(VolumeError::NotFound(_))
    ));
}

#[test]
fn a_directory_without_a_record_is_kept_not_trashed_on_delete() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(config(root.path())).unwrap();
    std::fs::create_dir(root.path().join("volumes/handmade")).unwrap();
    std::fs::write(root.path().join("volumes/handmade/f"), b"precious").unwrap();
    let DeleteOutcome::Kept(OnDelete::Retain, kept) =
        store.delete_volume(&dir("handmade")).unwrap()
    else {
        panic!("a volume without a record must be retained");
    };
    assert_eq!(std::fs::read(kept.join("f")).unwrap(), b"precious");
}

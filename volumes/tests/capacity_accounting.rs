//! The capacity promised to volumes (policy "reserve") is kept in memory: computed once
//! from the records when the store opens and updated under the accounting lock by each
//! create, expand and delete, so a CreateVolume does not read every other volume's
//! record (at 2,000 volumes that made CreateVolume p50 3.98 s in hanfsctl's load test).
//! These tests check that the kept total always equals the sum of the records, after a
//! mix of calls, concurrent calls, and a reopen (which is what a restart after a crash
//! does).

#![allow(clippy::unwrap_used)] // test helpers panic on setup failure by design

use common::ids::{SnapshotName, VolumeDir};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use volumes::meta::{self, OnDelete, VolumeMeta};
use volumes::store::{CapacityPolicy, CreateVolume, SourceRef};
use volumes::{StoreConfig, VolumeError, VolumeStore};

const KIB: i64 = 1 << 10;

fn config(root: &Path) -> StoreConfig {
    StoreConfig {
        root: root.to_owned(),
        capacity_policy: CapacityPolicy::Reserve,
        default_volume_bytes: 64 * KIB,
        default_mode: 0o777,
        copy_hook: None,
    }
}

fn dir(name: &str) -> VolumeDir {
    VolumeDir::parse(name).unwrap()
}

fn create(name: &str, bytes: i64, on_delete: OnDelete) -> CreateVolume {
    CreateVolume {
        dir: dir(name),
        request_name: name.to_string(),
        required_bytes: bytes,
        limit_bytes: 0,
        on_delete,
        mode: None,
        source: None,
    }
}

/// What the records on disk promise: the capacity of every volume in `volumes/` that
/// has a readable record, read straight from the files (not through the store).
fn sum_of_records(root: &Path) -> i64 {
    let mut sum = 0;
    for entry in std::fs::read_dir(root.join("volumes")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let record = root
            .join(".hanfs/meta/volumes")
            .join(format!("{name}.json"));
        if let Some(r) = meta::read::<VolumeMeta>(&record).unwrap() {
            sum += r.capacity_bytes;
        }
    }
    sum
}

fn promised(store: &VolumeStore) -> i64 {
    store.capacity().unwrap().promised_bytes
}

#[test]
fn the_promised_total_equals_the_records_after_creates_expands_deletes_and_a_reopen() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(config(root.path())).unwrap();
    assert_eq!(promised(&store), 0);

    // Hundreds of volumes of different sizes and delete policies.
    let count = 300;
    for i in 0..count {
        let on_delete = match i % 10 {
            0 => OnDelete::Retain,
            1 => OnDelete::Archive,
            _ => OnDelete::Delete,
        };
        store
            .create_volume(create(&format!("pvc-{i}"), (1 + i % 7) * KIB, on_delete))
            .unwrap();
    }
    // Sizes left to the default, and a repeated (idempotent) create that adds nothing.
    store
        .create_volume(create("pvc-default", 0, OnDelete::Delete))
        .unwrap();
    store
        .create_volume(create("pvc-7", KIB, OnDelete::Delete))
        .unwrap();
    assert_eq!(promised(&store), sum_of_records(root.path()));

    // Expansions, including ones that are no-ops (not larger) and one refused.
    for i in (0..count).step_by(3) {
        store
            .expand_volume(&dir(&format!("pvc-{i}")), 16 * KIB + i, 0)
            .unwrap();
    }
    store.expand_volume(&dir("pvc-1"), KIB, 0).unwrap();
    let available = store.capacity().unwrap().available_bytes;
    let err = store
        .expand_volume(&dir("pvc-2"), available + (1 << 30), 0)
        .unwrap_err();
    assert!(matches!(err, VolumeError::ResourceExhausted(_)), "{err}");
    assert_eq!(promised(&store), sum_of_records(root.path()));

    // Clones and restores promise their own capacity.
    let snap = SnapshotName::parse("snap-5").unwrap();
    store
        .create_snapshot(&snap, "snap-5", &dir("pvc-5"))
        .unwrap();
    let mut restore = create("pvc-restored", 0, OnDelete::Delete);
    restore.source = Some(SourceRef::Snapshot(snap));
    store.create_volume(restore).unwrap();
    let mut clone = create("pvc-clone", 32 * KIB, OnDelete::Delete);
    clone.source = Some(SourceRef::Volume(dir("pvc-6")));
    store.create_volume(clone).unwrap();
    assert_eq!(promised(&store), sum_of_records(root.path()));

    // Deletes under every policy (retained and archived volumes promise nothing more),
    // and deletes of what is already gone.
    for i in (0..count).step_by(2) {
        store.delete_volume(&dir(&format!("pvc-{i}"))).unwrap();
    }
    store.delete_volume(&dir("pvc-0")).unwrap();
    store.delete_volume(&dir("pvc-never")).unwrap();
    let before_reopen = promised(&store);
    assert_eq!(before_reopen, sum_of_records(root.path()));
    assert!(before_reopen > 0);

    // A restart computes the same total from the records.
    drop(store);
    let store = VolumeStore::open(config(root.path())).unwrap();
    assert_eq!(promised(&store), before_reopen);
    assert_eq!(promised(&store), sum_of_records(root.path()));
}

#[test]
fn a_create_reads_no_other_volumes_record_and_a_reopen_reads_them_all() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(config(root.path())).unwrap();
    for i in 0..200 {
        store
            .create_volume(create(&format!("pvc-{i}"), 4 * KIB, OnDelete::Delete))
            .unwrap();
    }
    let kept = promised(&store);
    assert_eq!(kept, 200 * 4 * KIB);

    // A record changed behind the store's back (what a crash between two writes of
    // another process could leave, or an admin's edit): a create does not rescan every
    // record (that was the quadratic cost), so the kept total is unchanged by it ...
    let record_path = root.path().join(".hanfs/meta/volumes/pvc-9.json");
    let mut record: VolumeMeta = meta::read(&record_path).unwrap().unwrap();
    record.capacity_bytes = 1 << 30;
    meta::write(&record_path, &record).unwrap();
    store
        .create_volume(create("pvc-new", 4 * KIB, OnDelete::Delete))
        .unwrap();
    assert_eq!(promised(&store), kept + 4 * KIB);

    // ... and the next open takes it from the records.
    drop(store);
    let store = VolumeStore::open(config(root.path())).unwrap();
    assert_eq!(promised(&store), sum_of_records(root.path()));
    assert_eq!(promised(&store), kept + 4 * KIB - 4 * KIB + (1 << 30));
}

#[test]
fn concurrent_creates_expands_and_deletes_keep_the_total_exact() {
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(VolumeStore::open(config(root.path())).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..40 {
                    let name = format!("pvc-{t}-{i}");
                    store
                        .create_volume(create(&name, (1 + i % 5) * KIB, OnDelete::Delete))
                        .unwrap();
                    if i % 3 == 0 {
                        store.expand_volume(&dir(&name), 8 * KIB, 0).unwrap();
                    }
                    if i % 4 == 0 {
                        store.delete_volume(&dir(&name)).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(promised(&store), sum_of_records(root.path()));
    assert!(promised(&store) > 0);
}

#[test]
fn refusal_message_names_requested_available_export_promised_and_free() {
    let root = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(config(root.path())).unwrap();
    store
        .create_volume(create("pvc-a", 8 * KIB, OnDelete::Delete))
        .unwrap();
    let capacity = store.capacity().unwrap();
    let requested = capacity.total_bytes;
    let err = store
        .create_volume(create("pvc-huge", requested, OnDelete::Delete))
        .unwrap_err();
    let VolumeError::ResourceExhausted(message) = &err else {
        panic!("{err}");
    };
    assert!(
        message.starts_with(&format!("{requested} bytes requested, ")),
        "{message}"
    );
    for part in [
        " available (export ".to_string(),
        format!("{} bytes, ", capacity.total_bytes),
        format!("{} promised to volumes, ", 8 * KIB),
        " free; policy: reserve)".to_string(),
    ] {
        assert!(message.contains(&part), "{message} lacks {part:?}");
    }
    assert!(!root.path().join("volumes/pvc-huge").exists());
    assert_eq!(promised(&store), 8 * KIB);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// CreateVolume latency beside 2,000 volumes, one caller and 32 at once (the load test's
/// shape). Printed, not asserted (timing depends on the machine). Run with
/// `cargo test -p volumes --test capacity_accounting -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement (prints figures): run with --ignored --nocapture"]
fn create_latency_at_2000_volumes() {
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(VolumeStore::open(config(root.path())).unwrap());
    let started = Instant::now();
    for i in 0..2000 {
        store
            .create_volume(create(&format!("pvc-{i}"), 4 * KIB, OnDelete::Delete))
            .unwrap();
    }
    println!(
        "filled 2000 volumes in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut serial = Vec::new();
    for i in 0..64 {
        let t = Instant::now();
        store
            .create_volume(create(&format!("pvc-s{i}"), 4 * KIB, OnDelete::Delete))
            .unwrap();
        serial.push(t.elapsed());
    }
    serial.sort();

    let clients: Vec<_> = (0..32)
        .map(|c| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                (0..4)
                    .map(|i| {
                        let t = Instant::now();
                        store
                            .create_volume(create(
                                &format!("pvc-c{c}-{i}"),
                                4 * KIB,
                                OnDelete::Delete,
                            ))
                            .unwrap();
                        t.elapsed()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut concurrent: Vec<Duration> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    concurrent.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "CreateVolume beside 2000+ volumes: 1 caller p50 {:.2} ms p99 {:.2} ms; 32 callers p50 {:.2} ms p99 {:.2} ms",
        ms(percentile(&serial, 0.5)),
        ms(percentile(&serial, 0.99)),
        ms(percentile(&concurrent, 0.5)),
        ms(percentile(&concurrent, 0.99)),
    );
}

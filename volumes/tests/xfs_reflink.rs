//! On a real XFS filesystem (a loop-mounted image): snapshots and clones are reflinks
//! that share blocks, and volume directories get their own project ids. Needs root and
//! `mkfs.xfs` (xfsprogs), which `.ci/run` installs.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failure by design

mod support;

use common::ids::{SnapshotName, VolumeDir};
use std::path::Path;
use volumes::meta::{CopyMethod, OnDelete};
use volumes::store::{CapacityPolicy, CreateVolume, SourceRef};
use volumes::{StoreConfig, VolumeStore};

fn free_bytes(path: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).unwrap();
    stat.blocks_available() * stat.fragment_size()
}

#[test]
fn snapshots_on_xfs_are_reflinks_sharing_blocks_and_volumes_get_project_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mount = support::mount_xfs(dir.path(), 512 << 20);
    let store = VolumeStore::open(StoreConfig {
        root: mount.mountpoint.clone(),
        capacity_policy: CapacityPolicy::Thin,
        default_volume_bytes: 1 << 30,
        default_mode: 0o777,
        copy_hook: None,
    })
    .unwrap();
    let status = store.status().unwrap();
    assert_eq!(status.filesystem, "xfs");
    assert!(status.reflink, "{}", status.reflink_detail);
    assert!(
        status.quota.project_ids,
        "XFS always carries project ids: {}",
        status.quota.detail
    );

    let volume = VolumeDir::parse("pvc-data").unwrap();
    let created = store
        .create_volume(CreateVolume {
            dir: volume.clone(),
            request_name: "pvc-data".into(),
            required_bytes: 256 << 20,
            limit_bytes: 0,
            on_delete: OnDelete::Delete,
            mode: None,
            source: None,
        })
        .unwrap();
    assert!(created.meta.as_ref().unwrap().project_id >= 1000);

    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(mount.mountpoint.join("volumes/pvc-data/big"), &data).unwrap();
    nix::unistd::sync();
    let before = free_bytes(&mount.mountpoint);

    let snap = store
        .create_snapshot(&SnapshotName::parse("snap").unwrap(), "snap", &volume)
        .unwrap();
    assert_eq!(snap.meta.copy_method, CopyMethod::Reflink);
    let clone = store
        .create_volume(CreateVolume {
            dir: VolumeDir::parse("pvc-clone").unwrap(),
            request_name: "pvc-clone".into(),
            required_bytes: 256 << 20,
            limit_bytes: 0,
            on_delete: OnDelete::Delete,
            mode: None,
            source: Some(SourceRef::Volume(volume.clone())),
        })
        .unwrap();
    let clone_meta = clone.meta.unwrap();
    assert_eq!(clone_meta.copy_method, CopyMethod::Reflink);
    assert_ne!(
        clone_meta.project_id,
        created.meta.unwrap().project_id,
        "a clone is its own project"
    );
    nix::unistd::sync();
    let used_by_copies = before.saturating_sub(free_bytes(&mount.mountpoint));
    // Two 64 MiB copies as full copies would take 128 MiB; reflinks share the blocks.
    assert!(
        used_by_copies < 8 << 20,
        "snapshot + clone used {used_by_copies} bytes"
    );
    assert_eq!(
        std::fs::read(mount.mountpoint.join("volumes/pvc-clone/big")).unwrap(),
        data
    );
    drop(store);
}

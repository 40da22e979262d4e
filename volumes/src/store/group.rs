//! Group snapshots: several volumes of the export cut at one instant relative to the
//! writes to all of them (CSI `CreateVolumeGroupSnapshot` asks for write-order
//! consistency "or fail if that's not possible").
//!
//! Why not FIFREEZE around the copies: a frozen filesystem blocks *every* writer,
//! including the reflink that makes the copy (FICLONE and the file create both wait in
//! `sb_start_write`): on this host's 6.18 kernel, `xfs_io -c reflink` on a frozen XFS
//! slept in `percpu_rwsem_wait` until the thaw. Freezing, reflinking, thawing on one
//! filesystem deadlocks; the copy can only happen while writers run.
//!
//! So the cut is optimistic, and checked: before each member is copied its tree is
//! fingerprinted (every entry's inode, size, mode, owner, mtime and ctime); the member
//! copied last is fingerprinted again right after its copy ends (instant T), every
//! other member after that. A member whose fingerprint did not change was not written
//! between its fingerprint and the check, so its copy equals its state at T — the same
//! instant for every member. (The last member only has to hold still during its own
//! copy, so a member written continuously, e.g. a database log, settles once it is
//! copied last; a retry copies only the members that changed, in that role.) Members
//! that changed are copied again (bounded attempts and time) until one check holds
//! for all of them; otherwise the call fails with
//! [`VolumeError::Unsettled`] (ABORTED: retry) and nothing is kept. Writers never
//! stall for the group (only per file, while its reflink runs, as for any snapshot).
//! The check relies on ctime moving on every change: Linux >= 6.13 gives XFS, ext4
//! and tmpfs fine-grained ctimes once a ctime was queried, so a write right after the
//! fingerprint cannot hide in the same clock tick (older kernels: size and mtime still
//! catch appends; an in-place rewrite in the same tick could go unseen).
//!
//! Crash safety: the members are built in one scratch directory, their records are
//! written, they are renamed into `snapshots/`, and the group's record is written
//! last. A member counts as existing only while its group's record exists, so a crash
//! before that record leaves nothing visible; the leftovers go at the next call on the
//! same group and at start.

use super::{VolumeStore, method_of, snapshot_key, volume_key};
use crate::copy::{self, CopyStats};
use crate::error::{Result, VolumeError};
use crate::layout::{self, Layout};
use crate::locks::Access;
use crate::meta::{self, SnapshotMeta};
use crate::store::SnapshotInfo;
use common::ids::{SnapshotName, VolumeDir};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Copies of the members before the call gives up (each attempt copies only the
/// members that changed during the previous one).
pub const MAX_CUT_ATTEMPTS: u32 = 8;
/// Wall-clock bound of all attempts together.
pub const MAX_CUT_TIME: Duration = Duration::from_secs(30);
/// Length of the per-member suffix of a member snapshot's name (`<group>-<hash>`).
pub const MEMBER_SUFFIX_LEN: usize = 9;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub snapshot: String,
    pub source_volume: String,
}

/// The group's record in `.hanfs/meta/groups/`; written last, so it is the commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    pub request_name: String,
    /// Sorted by source volume.
    pub members: Vec<GroupMember>,
    pub created_unix_nanos: i128,
    /// How many rounds of copies it took until one check held for every member.
    pub attempts: u32,
}

#[derive(Debug, Clone)]
pub struct GroupInfo {
    pub name: SnapshotName,
    pub meta: GroupMeta,
    /// In the order of `meta.members`.
    pub snapshots: Vec<SnapshotInfo>,
}

/// The snapshot name of `dir`'s member of `group`: stable for the pair, so a repeated
/// create finds the same names, and distinct per member.
pub fn member_name(group: &SnapshotName, dir: &VolumeDir) -> Result<SnapshotName> {
    let hash = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, dir.as_str().as_bytes())
        .simple()
        .to_string();
    let name = format!("{group}-{}", &hash[..MEMBER_SUFFIX_LEN - 1]);
    SnapshotName::parse(&name).map_err(|e| {
        VolumeError::InvalidArgument(format!(
            "group snapshot name {group} is too long for its member names: {e}"
        ))
    })
}

/// One entry of a member's tree as the check compares it. Every change a writer can
/// make moves at least one of these (data: size/mtime/ctime; metadata: ctime; a
/// replaced entry: inode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            ino: m.ino(),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// A member's whole tree: relative path → stamp, in walk order (sorted per directory).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(pub Vec<(PathBuf, Stamp)>);

/// Walks `root` without following symlinks. Tenants may swap entries meanwhile; that
/// can only make the walk fail or the fingerprint differ (the parent's ctime moves),
/// which the caller treats as "changed" — the walk reads metadata only, never data.
pub fn fingerprint(root: &Path) -> std::io::Result<Fingerprint> {
    let mut out = Vec::new();
    let top = std::fs::symlink_metadata(root)?;
    out.push((PathBuf::new(), Stamp::of(&top)));
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(root.join(&rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for name in names {
            let child = rel.join(&name);
            let m = std::fs::symlink_metadata(root.join(&child))?;
            if m.file_type().is_dir() {
                stack.push(child.clone());
            }
            out.push((child, Stamp::of(&m)));
        }
    }
    Ok(Fingerprint(out))
}

/// The pure decision of one check: which members changed since their copy started
/// (their fingerprint then differs from now). Empty: the copies form one consistent
/// cut. A member never fingerprinted counts as changed.
pub fn changed_members(taken: &[Option<Fingerprint>], now: &[Fingerprint]) -> Vec<usize> {
    (0..now.len())
        .filter(|&i| taken.get(i).and_then(Option::as_ref) != Some(&now[i]))
        .collect()
}

fn group_key(name: &SnapshotName) -> String {
    format!("group snapshot {name}")
}

fn scratch_label(name: &SnapshotName) -> String {
    format!("group-{name}")
}

/// Removes members of groups whose record is missing (a creation that crashed before
/// its commit, or a delete that crashed after removing the record). Run at start.
pub fn sweep_orphan_members(layout: &Layout) -> Result<usize> {
    let mut removed = 0;
    for name in super::sorted_names(&layout.snapshots_dir())? {
        let Ok(snap) = SnapshotName::parse(&name) else {
            continue;
        };
        let record = match meta::read::<SnapshotMeta>(&layout.snapshot_meta(&snap)) {
            Ok(Some(r)) => r,
            _ => continue,
        };
        if let Some(group) = &record.group
            && let Ok(group) = SnapshotName::parse(group)
            && !layout.group_meta(&group).exists()
        {
            remove_member(layout, &snap)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Takes a member's directory out of `snapshots/` (via the trash) and its record.
fn remove_member(layout: &Layout, snap: &SnapshotName) -> Result<()> {
    let path = layout.snapshot(snap);
    if path.exists() {
        let slot = layout.trash_slot(&format!("snap-{snap}"));
        std::fs::rename(&path, &slot)
            .map_err(VolumeError::io("moving group member to trash", &path))?;
        layout::sync_dir(&layout.snapshots_dir())?;
        layout::remove_any(&layout.snapshot_meta(snap))?;
        if let Err(e) = layout::remove_any(&slot) {
            tracing::warn!(snapshot = %snap, error = %e, "group member removed; its data leaves the trash later");
        }
    } else {
        layout::remove_any(&layout.snapshot_meta(snap))?;
    }
    Ok(())
}

impl VolumeStore {
    fn group_record(&self, name: &SnapshotName) -> Result<Option<GroupMeta>> {
        meta::read(&self.layout.group_meta(name))
    }

    /// Whether a snapshot record is visible: a group member only with its group.
    pub(super) fn member_visible(&self, record: &SnapshotMeta) -> bool {
        match &record.group {
            None => true,
            Some(group) => {
                SnapshotName::parse(group).is_ok_and(|g| self.layout.group_meta(&g).exists())
            }
        }
    }

    /// What an interrupted call on group `name` left: its scratch builds and members
    /// without the group's record. The caller holds the group's exclusive lock and has
    /// checked that the record does not exist.
    fn remove_group_leftovers(&self, name: &SnapshotName) -> Result<()> {
        let scratch_prefix = format!("{}.", scratch_label(name));
        for entry in super::sorted_names(&self.layout.tmp_dir())? {
            if entry.starts_with(&scratch_prefix) {
                layout::remove_any(&self.layout.tmp_dir().join(&entry))?;
            }
        }
        let member_prefix = format!("{name}-");
        for dir in [self.layout.snapshots_dir(), self.layout.snapshot_meta_dir()] {
            for entry in super::sorted_names(&dir)? {
                let stem = entry.strip_suffix(".json").unwrap_or(&entry);
                if !stem.starts_with(&member_prefix) {
                    continue;
                }
                let Ok(snap) = SnapshotName::parse(stem) else {
                    continue;
                };
                // Only members of exactly this group: `a-b`'s members also start with `a-`.
                let record = meta::read::<SnapshotMeta>(&self.layout.snapshot_meta(&snap));
                if let Ok(Some(r)) = record
                    && r.group.as_deref() == Some(name.as_str())
                {
                    remove_member(&self.layout, &snap)?;
                }
            }
        }
        Ok(())
    }

    pub fn create_group_snapshot(
        &self,
        name: &SnapshotName,
        request_name: &str,
        sources: &[VolumeDir],
    ) -> Result<GroupInfo> {
        if sources.is_empty() {
            return Err(VolumeError::InvalidArgument(
                "a group snapshot needs at least one source volume".into(),
            ));
        }
        let mut sources = sources.to_vec();
        sources.sort();
        if let Some(pair) = sources.windows(2).find(|w| w[0] == w[1]) {
            return Err(VolumeError::InvalidArgument(format!(
                "source volume {} is listed twice",
                pair[0]
            )));
        }
        let mut members = Vec::with_capacity(sources.len());
        for dir in &sources {
            members.push((member_name(name, dir)?, dir.clone()));
        }
        let mut names: Vec<_> = members.iter().map(|(m, _)| m).collect();
        names.sort();
        names.dedup();
        if names.len() != members.len() {
            return Err(VolumeError::InvalidArgument(format!(
                "two source volumes of group {name} map to one member name; use another group name"
            )));
        }
        let mut wanted = vec![(group_key(name), Access::Exclusive)];
        for (snap, dir) in &members {
            wanted.push((snapshot_key(snap), Access::Exclusive));
            wanted.push((volume_key(dir), Access::Shared));
        }
        let _guard = self.lock(&wanted)?;

        if let Some(existing) = self.group_record(name)? {
            let same_members = existing.members.len() == members.len()
                && existing
                    .members
                    .iter()
                    .zip(&members)
                    .all(|(a, (_, d))| a.source_volume == d.as_str());
            if existing.request_name != request_name || !same_members {
                let theirs: Vec<_> = existing.members.iter().map(|m| &m.source_volume).collect();
                return Err(VolumeError::AlreadyExists(format!(
                    "group snapshot {name} already exists for request {:?} with volumes {theirs:?}",
                    existing.request_name
                )));
            }
            return self.group_info(name, existing);
        }
        self.remove_group_leftovers(name)?;

        let mut source_records = Vec::with_capacity(members.len());
        for (snap, dir) in &members {
            let record = self.volume_record(dir)?.ok_or_else(|| {
                VolumeError::NotFound(format!("source volume {dir} does not exist"))
            })?;
            if self.layout.snapshot(snap).exists() || self.layout.snapshot_meta(snap).exists() {
                return Err(VolumeError::AlreadyExists(format!(
                    "snapshot {snap} exists and is not a member of group {name}; use another group name"
                )));
            }
            source_records.push(record);
        }

        let scratch = self.layout.scratch(&scratch_label(name));
        let result = (|| {
            std::fs::create_dir(&scratch).map_err(VolumeError::io(
                "creating group scratch directory",
                &scratch,
            ))?;
            let (stats, attempts) = self.cut(&scratch, &members)?;
            // One syncfs for all members (not one per member inside the cut, where it
            // would widen every member's window): the copies are durable before any
            // becomes visible.
            let dir = std::fs::File::open(&scratch)
                .map_err(VolumeError::io("opening group scratch", &scratch))?;
            nix::unistd::syncfs(&dir).map_err(|e| VolumeError::Io {
                context: "syncing group copies",
                path: scratch.clone(),
                source: e.into(),
            })?;
            let created = meta::now_unix_nanos();
            for (i, ((snap, dir), record)) in members.iter().zip(&source_records).enumerate() {
                let member = SnapshotMeta {
                    request_name: format!("{request_name}/{dir}"),
                    source_volume: dir.to_string(),
                    size_bytes: record.capacity_bytes,
                    copy_method: method_of(&stats[i], self.reflink),
                    created_unix_nanos: created,
                    group: Some(name.to_string()),
                };
                meta::write(&self.layout.snapshot_meta(snap), &member)?;
                let target = self.layout.snapshot(snap);
                std::fs::rename(scratch.join(i.to_string()), &target)
                    .map_err(VolumeError::io("moving group member into place", &target))?;
            }
            layout::sync_dir(&self.layout.snapshots_dir())?;
            let group = GroupMeta {
                request_name: request_name.to_owned(),
                members: members
                    .iter()
                    .map(|(snap, dir)| GroupMember {
                        snapshot: snap.to_string(),
                        source_volume: dir.to_string(),
                    })
                    .collect(),
                created_unix_nanos: created,
                attempts,
            };
            meta::write(&self.layout.group_meta(name), &group)?;
            Ok(group)
        })();
        match result {
            Ok(group) => {
                let _ = layout::remove_any(&scratch);
                tracing::info!(group = %name, members = members.len(), attempts = group.attempts, "group snapshot created");
                self.group_info(name, group)
            }
            Err(e) => {
                let _ = layout::remove_any(&scratch);
                if !self.layout.group_meta(name).exists() {
                    for (snap, _) in &members {
                        if let Err(cleanup) = remove_member(&self.layout, snap) {
                            tracing::warn!(snapshot = %snap, error = %cleanup, "could not remove a member of a failed group snapshot; the next call or restart does");
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Copies every member into `scratch/<index>` until one check finds none of them
    /// changed since its copy began. Returns each member's copy statistics and the
    /// number of rounds.
    fn cut(
        &self,
        scratch: &Path,
        members: &[(SnapshotName, VolumeDir)],
    ) -> Result<(Vec<CopyStats>, u32)> {
        let started = Instant::now();
        let mut taken: Vec<Option<Fingerprint>> = vec![None; members.len()];
        let mut stats = vec![CopyStats::default(); members.len()];
        let mut pending: Vec<usize> = (0..members.len()).collect();
        let mut attempt = 0;
        while attempt < MAX_CUT_ATTEMPTS && (attempt == 0 || started.elapsed() < MAX_CUT_TIME) {
            attempt += 1;
            let last = pending.last().copied();
            let mut after_last = None;
            for &i in &pending {
                let source = self.layout.volume(&members[i].1);
                let target = scratch.join(i.to_string());
                layout::remove_any(&target)?;
                std::fs::create_dir(&target)
                    .map_err(VolumeError::io("creating member directory", &target))?;
                // Before the copy: any write from here on shows in the check.
                taken[i] = fingerprint(&source).ok();
                match copy::copy_tree(&source, &target, self.config.copy_hook.as_ref()) {
                    Ok(s) => stats[i] = s,
                    // An entry removed while it was copied: the member is changing, which
                    // the check below sees; not a failure of the call.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => taken[i] = None,
                    Err(e) => return Err(VolumeError::io("copying group member", &source)(e)),
                }
                let root = std::fs::metadata(&source)
                    .map_err(VolumeError::io("reading source", &source))?;
                copy::copy_attributes(&root, &target)
                    .map_err(VolumeError::io("copying attributes", &target))?;
                if Some(i) == last {
                    // Instant T: the cut is the state of every member now.
                    after_last = Some(fingerprint(&source).unwrap_or_default());
                }
            }
            let mut now = Vec::with_capacity(members.len());
            for (i, (_, dir)) in members.iter().enumerate() {
                if Some(i) == last
                    && let Some(print) = after_last.take()
                {
                    now.push(print);
                    continue;
                }
                // A tree that cannot be walked right now (an entry vanished mid-walk)
                // is changing: it cannot match any earlier fingerprint.
                now.push(fingerprint(&self.layout.volume(dir)).unwrap_or_default());
            }
            pending = changed_members(&taken, &now);
            if pending.is_empty() {
                return Ok((stats, attempt));
            }
            tracing::debug!(
                attempt,
                changed = pending.len(),
                "group members changed during the cut; copying them again"
            );
        }
        let changed: Vec<_> = pending.iter().map(|&i| members[i].1.as_str()).collect();
        Err(VolumeError::Unsettled(format!(
            "volumes {changed:?} were written while they were copied, in each of {attempt} attempts ({:.1} s): no consistent cut; retry when they are written less",
            started.elapsed().as_secs_f64()
        )))
    }

    fn group_info(&self, name: &SnapshotName, meta: GroupMeta) -> Result<GroupInfo> {
        let mut snapshots = Vec::with_capacity(meta.members.len());
        for member in &meta.members {
            let snap = SnapshotName::parse(&member.snapshot).map_err(|e| VolumeError::Io {
                context: "reading group record",
                path: self.layout.group_meta(name),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
            let record = meta::read::<SnapshotMeta>(&self.layout.snapshot_meta(&snap))?
                .filter(|_| self.layout.snapshot(&snap).is_dir())
                .ok_or_else(|| VolumeError::Io {
                    context: "group member is missing",
                    path: self.layout.snapshot(&snap),
                    source: std::io::ErrorKind::NotFound.into(),
                })?;
            snapshots.push(SnapshotInfo {
                name: snap,
                meta: record,
            });
        }
        Ok(GroupInfo {
            name: name.clone(),
            meta,
            snapshots,
        })
    }

    pub fn get_group_snapshot(&self, name: &SnapshotName) -> Result<GroupInfo> {
        let _guard = self.lock(&[(group_key(name), Access::Shared)])?;
        let meta = self.group_record(name)?.ok_or_else(|| {
            VolumeError::NotFound(format!("group snapshot {name} does not exist"))
        })?;
        self.group_info(name, meta)
    }

    /// Deletes the group and its members. The record goes first (all members vanish at
    /// once), then each member; a crash in between leaves invisible members that the
    /// next call on this group or the next start removes.
    pub fn delete_group_snapshot(&self, name: &SnapshotName) -> Result<bool> {
        let _group = self.lock(&[(group_key(name), Access::Exclusive)])?;
        let Some(record) = self.group_record(name)? else {
            self.remove_group_leftovers(name)?;
            return Ok(false);
        };
        let mut wanted = Vec::new();
        for member in &record.members {
            if let Ok(snap) = SnapshotName::parse(&member.snapshot) {
                wanted.push((snapshot_key(&snap), Access::Exclusive));
            }
        }
        // A member that is the source of a CreateVolume right now holds it shared.
        let _members = self.lock(&wanted)?;
        layout::remove_any(&self.layout.group_meta(name))?;
        layout::sync_dir(&self.layout.group_meta_dir())?;
        self.remove_group_leftovers(name)?;
        tracing::info!(group = %name, members = record.members.len(), "group snapshot deleted");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ctime: i64) -> Stamp {
        Stamp {
            ino: 1,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            size: 1,
            mtime: (ctime, 0),
            ctime: (ctime, 0),
        }
    }

    fn print(ctime: i64) -> Fingerprint {
        Fingerprint(vec![(PathBuf::from("f"), stamp(ctime))])
    }

    #[test]
    fn only_members_that_changed_since_their_copy_are_copied_again() {
        let taken = vec![Some(print(1)), Some(print(2)), None];
        let now = vec![print(1), print(3), print(4)];
        assert_eq!(changed_members(&taken, &now), vec![1, 2]);
        let settled = vec![Some(print(1)), Some(print(3)), Some(print(4))];
        assert!(changed_members(&settled, &now).is_empty());
    }

    #[test]
    fn member_names_are_stable_distinct_and_bounded() {
        let group = SnapshotName::parse("groupsnapshot-1").unwrap();
        let a = VolumeDir::parse("pvc-a").unwrap();
        let b = VolumeDir::parse("pvc-b").unwrap();
        assert_eq!(
            member_name(&group, &a).unwrap(),
            member_name(&group, &a).unwrap()
        );
        assert_ne!(
            member_name(&group, &a).unwrap(),
            member_name(&group, &b).unwrap()
        );
        assert_eq!(
            member_name(&group, &a).unwrap().as_str().len(),
            group.as_str().len() + MEMBER_SUFFIX_LEN
        );
        let long = SnapshotName::parse(&"g".repeat(common::ids::MAX_ID_LEN)).unwrap();
        assert!(matches!(
            member_name(&long, &a),
            Err(VolumeError::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_fingerprint_moves_with_every_kind_of_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), b"one").unwrap();
        let before = fingerprint(root).unwrap();
        assert_eq!(before, fingerprint(root).unwrap(), "a quiet tree is stable");
        std::fs::write(root.join("sub/f"), b"two").unwrap();
        let rewritten = fingerprint(root).unwrap();
        assert_ne!(before, rewritten, "a same-size rewrite shows");
        std::fs::write(root.join("new"), b"").unwrap();
        let created = fingerprint(root).unwrap();
        assert_ne!(rewritten, created, "a new file shows");
        std::fs::remove_file(root.join("new")).unwrap();
        assert_ne!(created, fingerprint(root).unwrap(), "a removal shows");
    }
}

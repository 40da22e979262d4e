//! The quota side of the start-up sweep: project quota limits left behind by a create
//! or a delete that was killed half-way.
//!
//! A create sets its project's limit on the directory it builds in `.hanfs/tmp/` before
//! renaming it into place; a delete renames the volume into `.hanfs/trash/` before it
//! clears the limit. A SIGKILL in between leaves a limit on a project that no volume
//! holds any more, and the sweep that removes the directory would lose the last trace
//! of its id. So before anything is removed, [`survey`] reads the project ids of what
//! the sweep is about to remove, [`projects_to_clear`] (pure) decides which limits go,
//! and [`clear_limits`] zeroes them.

use super::{Layout, VolumeError, meta, quota};
use crate::error::Result;
use crate::meta::{OnDelete, VolumeMeta};
use crate::quota::QuotaSupport;
use std::collections::BTreeSet;
use std::path::Path;

/// The label of a volume's scratch build and of its trash slot (`Layout::scratch`,
/// `Layout::trash_slot`); snapshot and group copies use others and own no project.
pub(super) const VOLUME_LABEL: &str = "vol-";

/// Something the start-up sweep is about to remove, with what it says about projects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// An entry of `.hanfs/tmp/` or `.hanfs/trash/` and the project id its directory
    /// carries (`None`: not a directory, or its project id cannot be read).
    Entry { name: String, project: Option<u32> },
    /// A volume record whose volume is not in `volumes/`.
    OrphanRecord { project: u32, on_delete: OnDelete },
}

/// The project ids whose limits must be cleared: those of volume builds and trashed
/// volumes, and of orphan records of volumes that were to be deleted — never id 0 and
/// never a project a volume in `volumes/` still holds (`live`).
///
/// An orphan record with policy retain or archive may be a delete killed after moving
/// the volume to `retained/` or `archived/`, which keep their project and limit (as an
/// uninterrupted delete leaves them); a create of such a volume killed before its
/// rename is still found by its scratch directory's project id.
pub fn projects_to_clear(found: &[Found], live: &BTreeSet<u32>) -> BTreeSet<u32> {
    found
        .iter()
        .filter_map(|f| match f {
            Found::Entry {
                name,
                project: Some(id),
            } if name.starts_with(VOLUME_LABEL) => Some(*id),
            Found::OrphanRecord {
                project,
                on_delete: OnDelete::Delete,
            } => Some(*project),
            _ => None,
        })
        .filter(|id| *id != 0 && !live.contains(id))
        .collect()
}

/// Reads what the sweep will remove: every entry of tmp/ and trash/ with its project
/// id, and every volume record without its volume. Run before [`Layout::sweep`].
pub fn survey(layout: &Layout) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    for dir in [layout.tmp_dir(), layout.trash_dir()] {
        for entry in std::fs::read_dir(&dir).map_err(VolumeError::io("listing", &dir))? {
            let entry = entry.map_err(VolumeError::io("listing", &dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let project = entry
                .file_type()
                .is_ok_and(|t| t.is_dir())
                .then(|| project_of(&entry.path()))
                .flatten();
            found.push(Found::Entry { name, project });
        }
    }
    let records = layout.volume_meta_dir();
    for entry in std::fs::read_dir(&records).map_err(VolumeError::io("listing", &records))? {
        let path = entry.map_err(VolumeError::io("listing", &records))?.path();
        let Some(item) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        if layout.volumes_dir().join(item).exists() {
            continue;
        }
        match meta::read::<VolumeMeta>(&path) {
            Ok(Some(record)) => found.push(Found::OrphanRecord {
                project: record.project_id,
                on_delete: record.on_delete,
            }),
            Ok(None) => {}
            // A torn record names no project we could trust; the sweep removes it.
            Err(e) => tracing::debug!(error = %e, "orphan record unreadable"),
        }
    }
    Ok(found)
}

fn project_of(path: &Path) -> Option<u32> {
    match quota::project_of(path) {
        Ok(id) => Some(id),
        // Filesystems without project ids (tmpfs) refuse the ioctl: nothing to clear.
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "no project id readable");
            None
        }
    }
}

/// Zeroes the limits of `ids` when this filesystem enforces project quotas (without
/// enforcement no limit was ever set). Returns the ids whose limits were cleared; a
/// failure is logged, not returned: the store still opens, as it did before this sweep.
pub fn clear_limits(root: &Path, support: &QuotaSupport, ids: &BTreeSet<u32>) -> Vec<u32> {
    if ids.is_empty() {
        return Vec::new();
    }
    if !support.enforced {
        tracing::info!(
            projects = ?ids,
            "interrupted creates or deletes left these project ids; quotas are not enforced here, so no limit to clear"
        );
        return Vec::new();
    }
    let mut cleared = Vec::new();
    for &id in ids {
        match quota::set_limit(root, id, 0) {
            Ok(()) => {
                tracing::info!(
                    project_id = id,
                    "cleared the quota limit of a project an interrupted create or delete left behind"
                );
                cleared.push(id);
            }
            Err(e) => tracing::warn!(
                project_id = id,
                error = %e,
                "could not clear the quota limit of a project an interrupted create or delete left behind"
            ),
        }
    }
    cleared
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, project: Option<u32>) -> Found {
        Found::Entry {
            name: name.into(),
            project,
        }
    }

    fn record(project: u32, on_delete: OnDelete) -> Found {
        Found::OrphanRecord { project, on_delete }
    }

    #[test]
    fn volume_builds_and_trashed_volumes_lose_their_limits() {
        let found = [
            entry("vol-pvc-a.0123", Some(1004)),
            entry("vol-pvc-b.4567", Some(1007)),
        ];
        assert_eq!(
            projects_to_clear(&found, &BTreeSet::new()),
            BTreeSet::from([1004, 1007])
        );
    }

    #[test]
    fn snapshot_copies_probes_unreadable_entries_and_id_zero_are_left_alone() {
        let found = [
            entry("snap-s1.89ab", Some(1010)),
            entry("group-g1.cdef", Some(1011)),
            entry(".project-probe.77", Some(1)),
            entry("vol-pvc-c.0000", None),
            entry("vol-pvc-d.1111", Some(0)),
            record(0, OnDelete::Delete),
        ];
        assert!(projects_to_clear(&found, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_project_a_live_volume_holds_is_never_cleared() {
        let found = [
            entry("vol-pvc-a.0123", Some(1004)),
            record(1005, OnDelete::Delete),
        ];
        assert_eq!(
            projects_to_clear(&found, &BTreeSet::from([1004, 1005])),
            BTreeSet::new()
        );
    }

    #[test]
    fn orphan_records_clear_only_volumes_that_were_to_be_deleted() {
        let found = [
            record(1020, OnDelete::Delete),
            record(1021, OnDelete::Retain),
            record(1022, OnDelete::Archive),
        ];
        assert_eq!(
            projects_to_clear(&found, &BTreeSet::new()),
            BTreeSet::from([1020])
        );
        // A killed create of a volume to be retained is found by its build directory.
        let found = [
            record(1023, OnDelete::Retain),
            entry("vol-pvc-r.2222", Some(1023)),
        ];
        assert_eq!(
            projects_to_clear(&found, &BTreeSet::new()),
            BTreeSet::from([1023])
        );
    }

    #[test]
    fn an_id_found_twice_is_cleared_once() {
        // A create killed after its record was written: the scratch dir and the record.
        let found = [
            entry("vol-pvc-a.0123", Some(1030)),
            record(1030, OnDelete::Delete),
        ];
        assert_eq!(
            projects_to_clear(&found, &BTreeSet::new()),
            BTreeSet::from([1030])
        );
    }

    #[test]
    fn the_survey_reads_entries_and_orphan_records_of_a_real_tree() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::open(root.path()).unwrap();
        std::fs::create_dir(layout.tmp_dir().join("vol-pvc-a.0123")).unwrap();
        std::fs::write(layout.trash_dir().join("stray-file"), b"x").unwrap();
        let orphan = VolumeMeta {
            request_name: "pvc-b".into(),
            capacity_bytes: 1 << 20,
            project_id: 1041,
            on_delete: OnDelete::Delete,
            mode: 0o777,
            source: None,
            copy_method: meta::CopyMethod::None,
            created_unix_nanos: 0,
        };
        let dir_b = common::ids::VolumeDir::parse("pvc-b").unwrap();
        meta::write(&layout.volume_meta(&dir_b), &orphan).unwrap();
        // A record whose volume exists is no orphan.
        let dir_c = common::ids::VolumeDir::parse("pvc-c").unwrap();
        std::fs::create_dir(layout.volume(&dir_c)).unwrap();
        meta::write(
            &layout.volume_meta(&dir_c),
            &VolumeMeta {
                project_id: 1042,
                ..orphan.clone()
            },
        )
        .unwrap();

        let mut found = survey(&layout).unwrap();
        found.sort_by_key(|f| format!("{f:?}"));
        let scratch_project = match &found[0] {
            Found::Entry { name, project } => {
                assert_eq!(name, "stray-file");
                assert_eq!(*project, None, "a file carries no volume's project");
                match &found[1] {
                    Found::Entry { name, project } => {
                        assert_eq!(name, "vol-pvc-a.0123");
                        *project
                    }
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        };
        // Whether this filesystem reads project ids or not, a fresh directory has none.
        assert!(matches!(scratch_project, None | Some(0)));
        assert_eq!(found[2], record(1041, OnDelete::Delete));
        assert_eq!(found.len(), 3, "{found:?}");
    }
}

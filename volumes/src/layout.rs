//! Where things live under the export root, and the crash-recovery sweep.
//!
//! ```text
//! <root>/volumes/<dir>          a volume (what clients mount)
//! <root>/snapshots/<name>       a snapshot's files
//! <root>/retained/<dir>         volumes deleted with onDelete=retain
//! <root>/archived/<dir>-<time>  volumes deleted with onDelete=archive
//! <root>/.hanfs/meta/volumes/<dir>.json      per-volume record
//! <root>/.hanfs/meta/snapshots/<name>.json   per-snapshot record
//! <root>/.hanfs/meta/groups/<name>.json      per-group-snapshot record
//! <root>/.hanfs/tmp/            creations in progress (swept at start)
//! <root>/.hanfs/trash/          deletions in progress (swept at start and on delete)
//! <root>/.hanfs/next-project-id the next project quota id to hand out
//! ```

use super::error::{Result, VolumeError};
use common::ids::{SnapshotName, VolumeDir};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Creates the directory skeleton under `root` (which must exist).
    pub fn open(root: &Path) -> Result<Self> {
        let meta =
            std::fs::metadata(root).map_err(VolumeError::io("opening the export root", root))?;
        if !meta.is_dir() {
            return Err(VolumeError::InvalidArgument(format!(
                "export root {} is not a directory",
                root.display()
            )));
        }
        let layout = Self {
            root: root.to_owned(),
        };
        for dir in [
            layout.volumes_dir(),
            layout.snapshots_dir(),
            layout.retained_dir(),
            layout.archived_dir(),
            layout.volume_meta_dir(),
            layout.snapshot_meta_dir(),
            layout.group_meta_dir(),
            layout.tmp_dir(),
            layout.trash_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(VolumeError::io("creating directory", &dir))?;
        }
        Ok(layout)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    pub fn retained_dir(&self) -> PathBuf {
        self.root.join("retained")
    }
    pub fn archived_dir(&self) -> PathBuf {
        self.root.join("archived")
    }
    fn state_dir(&self) -> PathBuf {
        self.root.join(".hanfs")
    }
    pub fn volume_meta_dir(&self) -> PathBuf {
        self.state_dir().join("meta/volumes")
    }
    pub fn snapshot_meta_dir(&self) -> PathBuf {
        self.state_dir().join("meta/snapshots")
    }
    pub fn group_meta_dir(&self) -> PathBuf {
        self.state_dir().join("meta/groups")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.state_dir().join("tmp")
    }
    pub fn trash_dir(&self) -> PathBuf {
        self.state_dir().join("trash")
    }
    pub fn project_counter(&self) -> PathBuf {
        self.state_dir().join("next-project-id")
    }

    pub fn volume(&self, dir: &VolumeDir) -> PathBuf {
        self.volumes_dir().join(dir)
    }
    pub fn volume_meta(&self, dir: &VolumeDir) -> PathBuf {
        self.volume_meta_dir().join(format!("{dir}.json"))
    }
    pub fn snapshot(&self, name: &SnapshotName) -> PathBuf {
        self.snapshots_dir().join(name)
    }
    pub fn snapshot_meta(&self, name: &SnapshotName) -> PathBuf {
        self.snapshot_meta_dir().join(format!("{name}.json"))
    }
    /// A group snapshot's record: the group exists exactly while this file does.
    pub fn group_meta(&self, name: &SnapshotName) -> PathBuf {
        self.group_meta_dir().join(format!("{name}.json"))
    }

    /// A fresh scratch path in `.hanfs/tmp/` for building `label` before it is
    /// renamed into place.
    pub fn scratch(&self, label: &str) -> PathBuf {
        self.tmp_dir()
            .join(format!("{label}.{}", uuid::Uuid::new_v4().simple()))
    }

    /// A fresh path in `.hanfs/trash/` to rename something into before removing it.
    pub fn trash_slot(&self, label: &str) -> PathBuf {
        self.trash_dir()
            .join(format!("{label}.{}", uuid::Uuid::new_v4().simple()))
    }

    /// Removes what interrupted calls left: scratch builds, half-removed trash, and
    /// records whose volume or snapshot is gone. Run before serving, when no call is in
    /// flight. Returns how many leftovers were removed.
    pub fn sweep(&self) -> Result<usize> {
        let mut removed = 0;
        for dir in [self.tmp_dir(), self.trash_dir()] {
            removed += remove_children(&dir)?;
        }
        removed += remove_orphan_records(&self.volume_meta_dir(), &self.volumes_dir())?;
        removed += remove_orphan_records(&self.snapshot_meta_dir(), &self.snapshots_dir())?;
        // The project-id counter is written through a temp file next to it; a crash
        // inside that write left it here (found by hanfsctl/tests/kill_points.rs).
        removed += remove_write_leftovers(&self.state_dir())?;
        Ok(removed)
    }

    /// Empties the trash (called after each delete so a crash mid-removal is finished
    /// by the next delete, not only by a restart).
    pub fn empty_trash(&self) -> Result<usize> {
        remove_children(&self.trash_dir())
    }

    /// [`Layout::empty_trash`] for paths where the caller's own work is already done:
    /// a failure (e.g. a parallel call removing the same tree) is logged, not returned.
    pub fn empty_trash_best_effort(&self) {
        if let Err(e) = self.empty_trash() {
            tracing::warn!(error = %e, "could not empty the trash yet; a later call or restart finishes it");
        }
    }
}

fn remove_children(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(VolumeError::io("listing", dir))? {
        let path = entry.map_err(VolumeError::io("listing", dir))?.path();
        remove_any(&path)?;
        removed += 1;
    }
    Ok(removed)
}

/// Removes a file or a whole tree; a path that is already gone is fine.
pub fn remove_any(path: &Path) -> Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(VolumeError::Io {
            context: "removing",
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Temp files of interrupted atomic writes (`<name>.json.tmp-<id>`, see `meta::write`)
/// directly in `dir`.
fn remove_write_leftovers(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(VolumeError::io("listing", dir))? {
        let entry = entry.map_err(VolumeError::io("listing", dir))?;
        let leftover = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.contains(".json.tmp-"));
        if leftover && entry.file_type().is_ok_and(|t| t.is_file()) {
            remove_any(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn remove_orphan_records(records: &Path, items: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(records).map_err(VolumeError::io("listing", records))? {
        let path = entry.map_err(VolumeError::io("listing", records))?.path();
        let orphan = match path.file_name().and_then(|n| n.to_str()) {
            Some(name) => match name.strip_suffix(".json") {
                Some(item) => !items.join(item).exists(),
                // Interrupted atomic writes leave `<name>.json.tmp-<id>` files.
                None => true,
            },
            None => true,
        };
        if orphan {
            remove_any(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// fsyncs a directory so that renames into or out of it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(VolumeError::io("syncing directory", dir))
}

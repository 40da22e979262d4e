//! Publish records of [`VolumeStore`] (see [`crate::exports`]): ControllerPublish and
//! ControllerUnpublish write them, the export table is derived from them.

use super::{VolumeStore, volume_key};
use crate::error::{Result, VolumeError};
use crate::exports::{self, ExportTable, Publication, PublishOutcome, PublishRecord};
use crate::layout;
use crate::locks::Access;
use crate::meta;
use common::ids::VolumeDir;
use std::path::PathBuf;

impl VolumeStore {
    /// `.hanfs/meta/publish/`: one record per published volume.
    pub fn publish_records_dir(&self) -> PathBuf {
        self.layout.root().join(".hanfs/meta/publish")
    }

    fn publish_record_path(&self, dir: &VolumeDir) -> PathBuf {
        self.publish_records_dir().join(format!("{dir}.json"))
    }

    /// The volume's publish record, if it belongs to the volume that exists now.
    fn current_publish_record(
        &self,
        dir: &VolumeDir,
        created_unix_nanos: i128,
    ) -> Result<Option<PublishRecord>> {
        Ok(meta::read::<PublishRecord>(&self.publish_record_path(dir))?
            .filter(|r| r.volume_created_unix_nanos == created_unix_nanos))
    }

    /// Records that `node_id` may mount the volume. Nothing is written when the request
    /// is refused (missing volume, conflicting flags) or is a repeat.
    pub fn publish(
        &self,
        dir: &VolumeDir,
        node_id: &str,
        wanted: Publication,
    ) -> Result<PublishOutcome> {
        let _guard = self.lock(&[(volume_key(dir), Access::Exclusive)])?;
        let volume = self
            .volume_record(dir)?
            .ok_or_else(|| VolumeError::NotFound(format!("volume {dir} does not exist")))?;
        let created = volume.created_unix_nanos;
        let mut record = self
            .current_publish_record(dir, created)?
            .unwrap_or_else(|| PublishRecord::new(created, dir.as_str()));
        let outcome = exports::check_publish(dir.as_str(), &record.nodes, node_id, &wanted)?;
        if outcome == PublishOutcome::Added {
            record.nodes.insert(node_id.to_owned(), wanted);
            let records = self.publish_records_dir();
            std::fs::create_dir_all(&records)
                .map_err(VolumeError::io("creating directory", &records))?;
            meta::write(&self.publish_record_path(dir), &record)?;
            tracing::info!(volume = %dir, node = node_id, address = %wanted.address, readonly = wanted.readonly, "volume published");
        }
        Ok(outcome)
    }

    /// Removes `node_id` (every node with `None`) from the volume's record. True when
    /// something was removed; a volume or node never published is not an error (CSI).
    pub fn unpublish(&self, dir: &VolumeDir, node_id: Option<&str>) -> Result<bool> {
        let _guard = self.lock(&[(volume_key(dir), Access::Exclusive)])?;
        let path = self.publish_record_path(dir);
        let Some(mut record) = meta::read::<PublishRecord>(&path)? else {
            return Ok(false);
        };
        let removed = match node_id {
            Some(node) => record.nodes.remove(node).is_some(),
            None => {
                let any = !record.nodes.is_empty();
                record.nodes.clear();
                any
            }
        };
        let stale = self
            .volume_record(dir)?
            .is_none_or(|v| v.created_unix_nanos != record.volume_created_unix_nanos);
        if record.nodes.is_empty() || stale {
            layout::remove_any(&path)?;
            layout::sync_dir(&self.publish_records_dir())?;
        } else if removed {
            meta::write(&path, &record)?;
        }
        if removed {
            tracing::info!(volume = %dir, node = node_id.unwrap_or("<all>"), "volume unpublished");
        }
        Ok(removed && !stale)
    }

    /// Drops a deleted volume's record (its admissions end with it).
    pub(super) fn forget_publications(&self, dir: &VolumeDir) -> Result<bool> {
        let path = self.publish_record_path(dir);
        let existed = path.exists();
        layout::remove_any(&path)?;
        Ok(existed)
    }

    /// The node ids the volume is published to now.
    pub fn published_nodes(&self, dir: &VolumeDir) -> Result<Vec<String>> {
        let Some(volume) = self.volume_record(dir)? else {
            return Ok(Vec::new());
        };
        Ok(self
            .current_publish_record(dir, volume.created_unix_nanos)?
            .map(|r| r.nodes.into_keys().collect())
            .unwrap_or_default())
    }

    /// The export table the records on disk call for (see [`ExportTable::derive`]).
    /// Takes no lock: records are replaced atomically, and callers serialise applies.
    /// A record that cannot be read is logged and left out rather than failing the
    /// whole table: one torn file must not keep every other volume from its clients
    /// after a takeover.
    pub fn export_table(&self) -> Result<ExportTable> {
        let records = self.publish_records_dir();
        let names = match std::fs::read_dir(&records) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(VolumeError::io("listing", &records)(e)),
        };
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            // Interrupted atomic writes leave `<dir>.json.tmp-<id>`: not records.
            let Some(dir) = name
                .strip_suffix(".json")
                .and_then(|d| VolumeDir::parse(d).ok())
            else {
                continue;
            };
            let found = self.volume_record(&dir).and_then(|volume| match volume {
                Some(v) => self.current_publish_record(&dir, v.created_unix_nanos),
                None => Ok(None),
            });
            match found {
                Ok(Some(record)) => entries.push((self.layout.volume(&dir), record)),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(volume = %dir, error = %e, "publish record unreadable: volume left out of the export table");
                }
            }
        }
        Ok(ExportTable::derive(entries))
    }
}

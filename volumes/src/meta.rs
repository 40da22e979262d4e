//! Per-volume and per-snapshot records (JSON files in `.hanfs/meta/`).
//!
//! The directory's existence is what makes a volume exist; the record says what it was
//! made for. A create writes the record *before* renaming the directory into place and
//! a delete removes the directory *before* the record, so an existing volume always has
//! its record, and a record without a volume is a leftover the sweep removes.

use super::error::{Result, VolumeError};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    Delete,
    Retain,
    Archive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyMethod {
    None,
    Reflink,
    FullCopy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Snapshot(String),
    Volume(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub request_name: String,
    pub capacity_bytes: i64,
    /// 0 when the filesystem has no project ids.
    pub project_id: u32,
    pub on_delete: OnDelete,
    pub mode: u32,
    pub source: Option<Source>,
    pub copy_method: CopyMethod,
    pub created_unix_nanos: i128,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub request_name: String,
    pub source_volume: String,
    pub size_bytes: i64,
    pub copy_method: CopyMethod,
    pub created_unix_nanos: i128,
    /// The group snapshot this one is a member of. A member exists only while its
    /// group's record does (that record is written last), so a crashed group creation
    /// leaves no member visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

pub fn now_unix_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Reads a record; `Ok(None)` when it does not exist.
pub fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(VolumeError::Io {
                context: "reading record",
                path: path.to_owned(),
                source: e,
            });
        }
    };
    decode(&bytes).map(Some).map_err(|e| VolumeError::Io {
        context: "parsing record",
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// Decodes a record's bytes (what [`read`] does after reading the file); public so the
/// fuzz target can feed it bytes a torn or tampered disk could hold.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> serde_json::Result<T> {
    serde_json::from_slice(bytes)
}

/// Writes a record atomically: a temp file, fsync, rename, fsync of the directory.
pub fn write<T: Serialize>(path: &Path, record: &T) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let tmp = path.with_extension(format!("json.tmp-{}", uuid::Uuid::new_v4().simple()));
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| VolumeError::Io {
        context: "encoding record",
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(VolumeError::Io {
            context: "writing record",
            path: path.to_owned(),
            source: e,
        });
    }
    super::layout::sync_dir(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.json");
        assert_eq!(read::<VolumeMeta>(&path).unwrap(), None);
        let meta = VolumeMeta {
            request_name: "pvc-1".into(),
            capacity_bytes: 1 << 30,
            project_id: 7,
            on_delete: OnDelete::Archive,
            mode: 0o777,
            source: Some(Source::Snapshot("snap-1".into())),
            copy_method: CopyMethod::Reflink,
            created_unix_nanos: 5,
        };
        write(&path, &meta).unwrap();
        assert_eq!(read::<VolumeMeta>(&path).unwrap(), Some(meta));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = read::<VolumeMeta>(&path).unwrap_err().to_string();
        assert!(err.contains("v.json"), "{err}");
    }
}

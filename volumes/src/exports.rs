//! Per-volume export ACLs (DESIGN.md §8): which nodes may mount which volume.
//!
//! Each published volume has a publish record on the replicated disk,
//! `.hanfs/meta/publish/<dir>.json`, naming the nodes it is published to (CSI
//! ControllerPublishVolume) with their NFS addresses and the volume's own `fsid`. The
//! export table is *derived* from those records ([`ExportTable`]): a volume with no
//! node is not exported at all, and nothing exports the whole tree. Because the records
//! live on the replicated filesystem, a new active rebuilds exactly the same table on
//! takeover.
//!
//! A publication is written first and the table applied after ([`ExportControl`]), so a
//! crash in between leaves a record that the next apply (a retried publish, or the
//! takeover's export step) turns into the export; an unpublish removes the node from
//! the record and applies again. Where the table goes is an [`ExportSink`]: the agent's
//! nfsd driver writes `/etc/exports.d/hanfs.exports` and runs one `exportfs -r`; local
//! mode has no sink (its node plugin bind-mounts; the records are kept all the same, so
//! CSI semantics are identical).

use crate::VolumeStore;
use crate::api::StoreGuard;
use crate::error::{Result, VolumeError};
use common::node_id::Cidr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

/// One node a volume is published to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// The address the node's NFS client mounts from.
    pub address: IpAddr,
    pub readonly: bool,
    /// Published with a SINGLE_NODE_* access mode: no second node may join.
    pub single_node: bool,
}

/// `.hanfs/meta/publish/<dir>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRecord {
    /// The `created_unix_nanos` of the volume this record belongs to. A record left by
    /// an earlier volume of the same name (deleted while published, e.g. by hand) does
    /// not match and is ignored, so a new volume never inherits old admissions.
    pub volume_created_unix_nanos: i128,
    /// The export's `fsid=`: a UUID kept here so both servers hand out the same file
    /// handles, and distinct per volume (nfsd requires distinct fsids per export).
    pub fsid: String,
    /// By CSI node id.
    pub nodes: BTreeMap<String, Publication>,
}

impl PublishRecord {
    pub fn new(volume_created_unix_nanos: i128, dir: &str) -> Self {
        Self {
            volume_created_unix_nanos,
            fsid: fsid_for(dir, volume_created_unix_nanos),
            nodes: BTreeMap::new(),
        }
    }
}

/// A stable fsid: the same on both servers (derived, and kept in the record), and
/// different for a recreated volume of the same name (new creation time).
pub fn fsid_for(dir: &str, created_unix_nanos: i128) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("hanfs-volume:{dir}:{created_unix_nanos}").as_bytes(),
    )
    .hyphenated()
    .to_string()
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The node was added to the record.
    Added,
    /// The node was already published with the same flags (a retry).
    Unchanged,
}

/// Checks one more publication against a volume's current ones (pure: the CSI rules).
pub fn check_publish(
    dir: &str,
    existing: &BTreeMap<String, Publication>,
    node_id: &str,
    wanted: &Publication,
) -> Result<PublishOutcome> {
    if let Some(current) = existing.get(node_id) {
        if current.readonly != wanted.readonly || current.address != wanted.address {
            return Err(VolumeError::AlreadyExists(format!(
                "volume {dir} is already published to node {node_id} ({}, from {}); unpublish it \
                 before publishing it {}",
                if current.readonly {
                    "read-only"
                } else {
                    "read-write"
                },
                current.address,
                if wanted.readonly {
                    "read-only"
                } else {
                    "read-write"
                },
            )));
        }
        return Ok(PublishOutcome::Unchanged);
    }
    // CSI: FAILED_PRECONDITION "published at another node and does not have MULTI_NODE
    // volume capability", naming that node.
    let single = wanted.single_node || existing.values().any(|p| p.single_node);
    if single && let Some(other) = existing.keys().next() {
        return Err(VolumeError::FailedPrecondition(format!(
            "volume {dir} has a single-node access mode and is published to node {other}; \
             unpublish it there first"
        )));
    }
    Ok(PublishOutcome::Added)
}

/// One export line: a volume directory and the clients it admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeExport {
    pub path: PathBuf,
    pub fsid: String,
    /// Sorted by address, one per address (two node ids with one address: read-write
    /// wins only if both are read-write — the stricter flag is kept).
    pub clients: Vec<(IpAddr, bool)>,
}

/// The whole export table, sorted by path: what the active must export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportTable {
    pub volumes: Vec<VolumeExport>,
}

impl ExportTable {
    /// The table for these volumes' publish records (pure). Volumes without a node are
    /// left out: they are not exported at all.
    pub fn derive(entries: impl IntoIterator<Item = (PathBuf, PublishRecord)>) -> Self {
        let mut volumes: Vec<VolumeExport> = entries
            .into_iter()
            .filter(|(_, record)| !record.nodes.is_empty())
            .map(|(path, record)| {
                let mut by_address: BTreeMap<IpAddr, bool> = BTreeMap::new();
                for p in record.nodes.values() {
                    let readonly = by_address.entry(p.address).or_insert(p.readonly);
                    *readonly |= p.readonly;
                }
                VolumeExport {
                    path,
                    fsid: record.fsid,
                    clients: by_address.into_iter().collect(),
                }
            })
            .collect();
        volumes.sort_by(|a, b| a.path.cmp(&b.path));
        Self { volumes }
    }

    /// How many (volume, client) admissions the table holds.
    pub fn admissions(&self) -> usize {
        self.volumes.iter().map(|v| v.clients.len()).sum()
    }
}

/// Something that holds the store for the duration of a derivation: the volume API's
/// [`StoreGuard`] (counted as in flight), or the store itself.
pub trait HoldsStore: Send + 'static {
    fn store(&self) -> &VolumeStore;
}

impl HoldsStore for Arc<VolumeStore> {
    fn store(&self) -> &VolumeStore {
        self
    }
}

impl HoldsStore for StoreGuard {
    fn store(&self) -> &VolumeStore {
        self
    }
}

/// What [`ExportSink::apply`] returns: done, or why the table could not be applied.
pub type ApplyFuture<'a> =
    Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send + 'a>>;

/// Where an export table is applied (the nfsd driver on a storage server).
pub trait ExportSink: Send + Sync + 'static {
    /// Makes the server export exactly `table`, replacing what the last call applied.
    fn apply(&self, table: ExportTable) -> ApplyFuture<'_>;
}

/// The publish policy and the sink of one volume API server.
pub struct ExportControl {
    /// Node addresses a publish may admit.
    allowed: Vec<Cidr>,
    /// `None` in local mode: records only.
    sink: Option<Arc<dyn ExportSink>>,
    /// One derive-and-apply at a time, each deriving from the disk under this lock, so
    /// the last apply always carries the latest records (never an older table last).
    serial: tokio::sync::Mutex<()>,
}

impl ExportControl {
    pub fn new(allowed: Vec<Cidr>, sink: Option<Arc<dyn ExportSink>>) -> Self {
        Self {
            allowed,
            sink,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// Local mode's default: any address, no sink.
    pub fn records_only() -> Self {
        Self::new(Cidr::any().to_vec(), None)
    }

    pub fn allowed(&self) -> &[Cidr] {
        &self.allowed
    }

    /// Whether a node at `address` may be admitted at all.
    pub fn admits(&self, address: IpAddr) -> Result<()> {
        if self.allowed.iter().any(|c| c.contains(address)) {
            return Ok(());
        }
        let allowed: Vec<String> = self.allowed.iter().map(|c| c.to_string()).collect();
        Err(VolumeError::FailedPrecondition(format!(
            "node address {address} is outside the allowed client networks [{}]: fix the node's \
             --node-address or add its network to the backend's allowed clients",
            allowed.join(", ")
        )))
    }

    /// Derives the table from the records in `store` and applies it. Returns the table.
    pub async fn resync<S: HoldsStore>(&self, store: S) -> Result<ExportTable> {
        let _one_at_a_time = self.serial.lock().await;
        let table = tokio::task::spawn_blocking(move || store.store().export_table())
            .await
            .map_err(|e| VolumeError::Io {
                context: "deriving the export table",
                path: PathBuf::new(),
                source: std::io::Error::other(e.to_string()),
            })??;
        if let Some(sink) = &self.sink {
            sink.apply(table.clone())
                .await
                .map_err(|e| VolumeError::Io {
                    context: "applying the export table (the publish records are kept; retry)",
                    path: PathBuf::new(),
                    source: std::io::Error::other(e),
                })?;
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(address: &str, readonly: bool, single_node: bool) -> Publication {
        Publication {
            address: address.parse().unwrap(),
            readonly,
            single_node,
        }
    }

    #[test]
    fn a_repeat_is_unchanged_and_another_flag_already_exists() {
        let mut nodes = BTreeMap::new();
        nodes.insert("a@10.0.0.1".to_string(), p("10.0.0.1", false, false));
        let again = check_publish("v", &nodes, "a@10.0.0.1", &p("10.0.0.1", false, false));
        assert_eq!(again.unwrap(), PublishOutcome::Unchanged);
        let flipped = check_publish("v", &nodes, "a@10.0.0.1", &p("10.0.0.1", true, false));
        assert!(matches!(flipped, Err(VolumeError::AlreadyExists(m)) if m.contains("read-only")));
        let second = check_publish("v", &nodes, "b@10.0.0.2", &p("10.0.0.2", false, false));
        assert_eq!(second.unwrap(), PublishOutcome::Added);
        let single = check_publish("v", &nodes, "b@10.0.0.2", &p("10.0.0.2", false, true));
        assert!(
            matches!(single, Err(VolumeError::FailedPrecondition(m)) if m.contains("a@10.0.0.1"))
        );
        assert_eq!(
            check_publish("v", &BTreeMap::new(), "b", &p("10.0.0.2", false, true)).unwrap(),
            PublishOutcome::Added
        );
    }

    #[test]
    fn the_table_leaves_out_unpublished_volumes_and_is_sorted() {
        let mut a = PublishRecord::new(1, "a");
        a.nodes
            .insert("n2@10.0.0.2".into(), p("10.0.0.2", true, false));
        a.nodes
            .insert("n1@10.0.0.1".into(), p("10.0.0.1", false, false));
        // Two ids with one address: the stricter (read-only) flag wins.
        a.nodes
            .insert("n1b@10.0.0.1".into(), p("10.0.0.1", true, false));
        let empty = PublishRecord::new(2, "b");
        let table = ExportTable::derive([
            (PathBuf::from("/e/volumes/z"), empty),
            (PathBuf::from("/e/volumes/a"), a.clone()),
        ]);
        assert_eq!(table.volumes.len(), 1);
        assert_eq!(table.volumes[0].path, PathBuf::from("/e/volumes/a"));
        assert_eq!(
            table.volumes[0].clients,
            vec![
                ("10.0.0.1".parse().unwrap(), true),
                ("10.0.0.2".parse().unwrap(), true)
            ]
        );
        assert_eq!(table.admissions(), 2);
        assert_eq!(table.volumes[0].fsid, a.fsid);
    }

    #[test]
    fn fsids_are_stable_and_distinct() {
        assert_eq!(fsid_for("a", 1), fsid_for("a", 1));
        assert_ne!(fsid_for("a", 1), fsid_for("a", 2));
        assert_ne!(fsid_for("a", 1), fsid_for("b", 1));
    }

    #[test]
    fn addresses_outside_the_allowed_networks_are_refused() {
        let control = ExportControl::new(vec![Cidr::parse("10.80.0.0/24").unwrap()], None);
        control.admits("10.80.0.20".parse().unwrap()).unwrap();
        let refused = control.admits("10.81.0.20".parse().unwrap()).unwrap_err();
        assert!(
            matches!(&refused, VolumeError::FailedPrecondition(m) if m.contains("10.80.0.0/24"))
        );
        ExportControl::records_only()
            .admits("fd00::1".parse().unwrap())
            .unwrap();
    }
}

//! The CSI Node service: stage (the node's one mount of a volume), publish (a bind
//! mount of it per pod), unpublish, unstage, stats and expand.
//!
//! Stateless: what is mounted where is read from mountinfo on every call, so a restarted
//! plugin picks up where the last one left off. Syscalls that touch a mount path run in
//! the helper (see [`crate::syscall_helper`]); this module only stats, creates and
//! removes target directories in-process once mountinfo shows nothing is mounted there.
//!
//! Stage and publish get the volume context, so they know a static volume's directory
//! (see [`crate::mount_spec`]); NodeGetVolumeStats and NodeExpandVolume get only the id,
//! so for a static handle they accept any mount of this node's export at the path.

use crate::access_mode::{self, Published};
use crate::config::{NodeConfig, Transport};
use crate::error::NodeError;
use crate::mount_spec::{self, MountSpec, NfsOrigin, StaticHandle, VolumeRef};
use crate::mount_table::MountTable;
use crate::stats;
use crate::syscall_helper::Helper;
use crate::target_path;
use crate::volume_health::{self, Finding, StorageProbe};
use common::ids::VolumeId;
use common::mountinfo::{self, MountInfo};
use proto::csi::v1::node_server::Node;
use proto::csi::v1::node_service_capability::{Rpc, Type, rpc};
use proto::csi::v1::volume_capability::AccessType;
use proto::csi::v1::volume_capability::access_mode::Mode;
use proto::csi::v1::*;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// How many stacked mounts an unpublish removes before giving up.
const MAX_STACKED_MOUNTS: usize = 16;

/// NodeGetStorageHealth's probes (the TCP connect to the NFS server and the statfs of
/// one mount): longer than any live server takes, shorter than a failover, so a
/// failover in progress shows as one. A statfs bounded by the stats timeout (10 s)
/// blocked across a whole 9.5 s hard kill and then came back "normal" (CI, stop 16).
const STORAGE_PROBE_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

pub struct NodeService {
    config: Arc<NodeConfig>,
    helper: Helper,
    /// Targets with a publish or unpublish in flight; a second call for one of them is
    /// answered ABORTED (CSI "operation pending") instead of racing the first.
    in_flight: Arc<Mutex<HashSet<PathBuf>>>,
}

/// Holds a target in `in_flight` until dropped.
struct Claim {
    in_flight: Arc<Mutex<HashSet<PathBuf>>>,
    target: PathBuf,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut set) = self.in_flight.lock() {
            set.remove(&self.target);
        }
    }
}

/// Which mounts found in mountinfo count as a volume's.
#[derive(Clone, Copy)]
enum Identity<'a> {
    /// Exactly this volume's directory (stage and publish know it from the context).
    Exact(&'a VolumeRef),
    /// A static volume known only by its handle: CSI sends no volume context with
    /// NodeGetVolumeStats or NodeExpandVolume, so any mount of this node's export (NFS
    /// transport: any NFS mount) counts. Kubelet only asks about paths it published.
    AnyStatic(&'a StaticHandle),
}

impl std::fmt::Display for Identity<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Exact(volume) => volume.fmt(f),
            Identity::AnyStatic(handle) => handle.fmt(f),
        }
    }
}

/// The mount flags of a filesystem capability; block access is refused.
fn mount_flags_of(capability: &VolumeCapability) -> Result<&[String], NodeError> {
    // Without a known access mode the single-writer checks cannot apply, so such a
    // capability is refused instead of mounted as if it allowed anything.
    let known = capability
        .access_mode
        .and_then(|m| Mode::try_from(m.mode).ok())
        .is_some_and(|m| m != Mode::Unknown);
    if !known {
        return Err(NodeError::Missing(
            "volume_capability.access_mode (one of the CSI access modes)",
        ));
    }
    match &capability.access_type {
        Some(AccessType::Mount(mount)) => Ok(&mount.mount_flags),
        Some(AccessType::Block(_)) => Err(NodeError::BlockAccess),
        None => Err(NodeError::NoAccessType),
    }
}

fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, NodeError> {
    if value.is_empty() {
        Err(NodeError::Missing(field))
    } else {
        Ok(value)
    }
}

/// Runs blocking filesystem work off the async runtime.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| NodeError::io(what)(std::io::Error::other(err)))?
}

/// One read of the mount table per question; a call at 2,000 mounts must not parse
/// 2,000 lines for each (see [`crate::mount_table`]). Read in place, not off the
/// runtime: procfs answers from memory, never from a mounted filesystem.
fn read_mounts() -> Result<MountTable, NodeError> {
    MountTable::read_self().map_err(NodeError::io(format!(
        "reading {}",
        mountinfo::SELF_MOUNTINFO
    )))
}

/// The answer of one RPC; the error's code is chosen in [`NodeError`]. The call itself
/// is logged by [`common::rpc_trace`], which wraps the whole service.
fn reply<T>(result: Result<T, NodeError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

impl NodeService {
    pub fn new(config: NodeConfig) -> Self {
        let helper = Helper::new(config.helper_binary.clone());
        Self {
            config: Arc::new(config),
            helper,
            in_flight: Arc::default(),
        }
    }

    /// The volume a stage or publish names: static when the context has `subDir`, else a
    /// hanfs id of this cluster (exactly as before static volumes existed).
    fn volume_of(
        &self,
        volume_id: &str,
        context: &HashMap<String, String>,
    ) -> Result<VolumeRef, NodeError> {
        match mount_spec::static_volume(volume_id, context)? {
            Some(volume) => Ok(VolumeRef::Static(volume)),
            None => Ok(VolumeRef::Hanfs(VolumeId::parse(
                volume_id,
                &self.config.cluster_id,
            )?)),
        }
    }

    fn claim(&self, target: &Path) -> Result<Claim, NodeError> {
        let mut set = self
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !set.insert(target.to_owned()) {
            return Err(NodeError::Busy(target.to_owned()));
        }
        Ok(Claim {
            in_flight: self.in_flight.clone(),
            target: target.to_owned(),
        })
    }

    async fn resolve_target(&self, field: &'static str, path: &str) -> Result<PathBuf, NodeError> {
        let (path, roots) = (path.to_owned(), self.config.allowed_target_roots.clone());
        blocking("resolving target path", move || {
            Ok(target_path::resolve(field, &path, &roots)?)
        })
        .await
    }

    /// The canonical path of a volume path for lookups in mountinfo (which shows
    /// canonical mount points); `None` when it cannot be a mount point at all.
    async fn lookup_path(&self, path: &str) -> Option<PathBuf> {
        let path = path.to_owned();
        blocking("resolving volume path", move || {
            Ok(target_path::canonicalize_parent("volume_path", &path).ok())
        })
        .await
        .ok()
        .flatten()
    }

    /// What to mount for `volume`; checks that a local source exists (and, for a static
    /// volume, stays inside the export root) and resolves the NFS server's address.
    async fn mount_spec(
        &self,
        volume: &VolumeRef,
        volume_context: &HashMap<String, String>,
        mount_flags: &[String],
        readonly: bool,
    ) -> Result<MountSpec, NodeError> {
        match &self.config.transport {
            Transport::Local { export_root } => {
                let source = self.local_source(volume, export_root).await?;
                Ok(mount_spec::local(&source, mount_flags, readonly)?)
            }
            Transport::Nfs {
                default_server,
                default_share,
                options,
            } => {
                let location = volume.nfs_location(
                    volume_context,
                    default_server.as_deref(),
                    default_share,
                )?;
                let addr = match location.server_ip() {
                    Some(ip) => ip,
                    None => self.resolve(&location.server).await?,
                };
                Ok(mount_spec::nfs(
                    &location,
                    addr,
                    &volume.nfs_path(&location),
                    options,
                    mount_flags,
                    readonly,
                )?)
            }
        }
    }

    /// The canonical local directory of `volume`; a static volume's must resolve to a
    /// directory strictly inside the (canonical) export root.
    async fn local_source(
        &self,
        volume: &VolumeRef,
        export_root: &Path,
    ) -> Result<PathBuf, NodeError> {
        if let VolumeRef::Static(v) = volume {
            mount_spec::check_static_location_syntax(v)?;
        }
        let source = volume.local_source(export_root);
        let checked = source.clone();
        let canonical = blocking("checking the volume directory", move || {
            existing_dir(&checked)
        })
        .await?;
        let Some(canonical) = canonical else {
            return Err(NodeError::VolumeMissing {
                volume: volume.to_string(),
                path: source,
            });
        };
        if let VolumeRef::Static(v) = volume {
            let root = export_root.to_owned();
            let canonical_root = blocking("resolving the export root", move || {
                std::fs::canonicalize(&root).map_err(NodeError::io(format!(
                    "resolving the export root {}",
                    root.display()
                )))
            })
            .await?;
            mount_spec::check_confined(&canonical_root, &canonical, &v.sub_dir)?;
        }
        Ok(canonical)
    }

    async fn resolve(&self, server: &str) -> Result<IpAddr, NodeError> {
        let err = |reason: String| NodeError::Resolve {
            server: server.to_owned(),
            reason,
        };
        let lookup = tokio::net::lookup_host((server, 2049));
        let mut addrs = tokio::time::timeout(self.config.mount_timeout, lookup)
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        addrs
            .next()
            .map(|a| a.ip())
            .ok_or_else(|| err("no addresses".into()))
    }

    /// What a mount of the volume (any access mode) looks like, worked out once per
    /// call: a scan of many mounts then only compares ([`MountOf::matches`]).
    ///
    /// Bind mounts are traced to their source through device and root. For NFS a hanfs
    /// volume's path is compared by its tail `/volumes/<dir>` only: stats and expand get
    /// no volume context, so the server and share are not known there. Stage and publish
    /// know them and also compare the server and the whole path ([`NfsOrigin`]). A static
    /// volume's whole path `<share>/<subDir>` is compared, as its tail says little.
    fn mount_of(&self, table: &MountTable, identity: Identity) -> MountOf {
        match (&self.config.transport, identity) {
            (Transport::Local { export_root }, Identity::Exact(volume)) => {
                let source = volume.local_source(export_root);
                let source = std::fs::canonicalize(&source).unwrap_or(source);
                MountOf::Bind(table.origin_of(&source))
            }
            (Transport::Local { export_root }, Identity::AnyStatic(_)) => {
                let root = std::fs::canonicalize(export_root).unwrap_or(export_root.clone());
                MountOf::BindBelow(table.origin_of(&root))
            }
            (Transport::Nfs { .. }, Identity::Exact(VolumeRef::Hanfs(id))) => {
                MountOf::NfsTail(Path::new("volumes").join(&id.dir))
            }
            (
                Transport::Nfs {
                    default_server,
                    default_share,
                    ..
                },
                Identity::Exact(volume @ VolumeRef::Static(_)),
            ) => MountOf::NfsPath(
                volume
                    .nfs_location(&HashMap::new(), default_server.as_deref(), default_share)
                    .ok()
                    .map(|location| volume.nfs_path(&location)),
            ),
            (Transport::Nfs { .. }, Identity::AnyStatic(_)) => MountOf::AnyNfs,
        }
    }

    /// The NFS server and path a mount of `volume` must come from (NFS transport only;
    /// in local mode device and root already pin the origin). Stats and expand get no
    /// volume context, so only stage and publish can know it.
    fn nfs_origin(
        &self,
        volume: &VolumeRef,
        volume_context: &HashMap<String, String>,
    ) -> Result<Option<NfsOrigin>, NodeError> {
        let Transport::Nfs {
            default_server,
            default_share,
            ..
        } = &self.config.transport
        else {
            return Ok(None);
        };
        let location =
            volume.nfs_location(volume_context, default_server.as_deref(), default_share)?;
        Ok(Some(NfsOrigin::new(&location, volume.nfs_path(&location))))
    }

    /// The canonical path of a mount of the volume at `path` (from `origin`, when
    /// given), or NOT_FOUND.
    async fn find_mount(
        &self,
        identity: Identity<'_>,
        origin: Option<&NfsOrigin>,
        path: &str,
    ) -> Result<PathBuf, NodeError> {
        let not_mounted = || NodeError::NotMounted {
            volume: identity.to_string(),
            path: path.to_owned(),
        };
        let canonical = self.lookup_path(path).await.ok_or_else(not_mounted)?;
        let table = read_mounts()?;
        match table.topmost_at(&canonical) {
            Some(mounted)
                if self.mount_of(&table, identity).matches(&mounted)
                    && origin
                        .is_none_or(|o| mount_spec::nfs_origin_mismatch(&mounted, o).is_none()) =>
            {
                Ok(canonical)
            }
            _ => Err(not_mounted()),
        }
    }

    /// The targets other than `target` (and the staging path) where mountinfo shows a
    /// mount of `volume` now.
    async fn published_elsewhere(
        &self,
        volume: &VolumeRef,
        target: &Path,
        staging: &str,
    ) -> Result<Vec<Published>, NodeError> {
        let staging = match staging {
            "" => None,
            path => self.lookup_path(path).await,
        };
        let table = read_mounts()?;
        let mount_of = self.mount_of(&table, Identity::Exact(volume));
        Ok(table
            .parsed()
            .filter(|m| m.mount_point != target && Some(&m.mount_point) != staging.as_ref())
            .filter(|m| mount_of.matches(m))
            .map(|m| Published {
                target: m.mount_point.clone(),
                read_only: m.mount_read_only(),
            })
            .collect())
    }

    async fn publish(
        &self,
        req: NodePublishVolumeRequest,
    ) -> Result<NodePublishVolumeResponse, NodeError> {
        let volume_id = required("volume_id", &req.volume_id)?;
        let target = required("target_path", &req.target_path)?;
        let capability = req
            .volume_capability
            .as_ref()
            .ok_or(NodeError::Missing("volume_capability"))?;
        let mount_flags = mount_flags_of(capability)?;
        let volume = self.volume_of(volume_id, &req.volume_context)?;
        let origin = self.nfs_origin(&volume, &req.volume_context)?;
        let target = self.resolve_target("target_path", target).await?;
        let _claim = self.claim(&target)?;
        let mode = capability
            .access_mode
            .and_then(|m| Mode::try_from(m.mode).ok())
            .unwrap_or(Mode::Unknown);
        // Single-writer modes: one publish of the volume at a time on this node, so two
        // racing publishes at different targets cannot both pass the check below.
        let _volume_claim = if access_mode::is_single_writer(mode) {
            Some(self.claim(&PathBuf::from(format!("volume:{volume}")))?)
        } else {
            None
        };
        if access_mode::is_single_writer(mode) {
            let others = self
                .published_elsewhere(&volume, &target, &req.staging_target_path)
                .await?;
            access_mode::check_publish(mode, req.readonly, &others).map_err(|reason| {
                NodeError::AccessMode {
                    volume: volume.to_string(),
                    reason,
                }
            })?;
        }
        let spec = if req.staging_target_path.is_empty() {
            // Published without staging (e.g. by hanfsctl): mount the volume itself.
            self.mount_spec(&volume, &req.volume_context, mount_flags, req.readonly)
                .await?
        } else {
            // Staged: every pod gets a bind mount of the node's one mount of the volume.
            let staged = self
                .find_mount(
                    Identity::Exact(&volume),
                    origin.as_ref(),
                    &req.staging_target_path,
                )
                .await
                .map_err(|_| NodeError::NotStaged {
                    volume: volume.to_string(),
                    path: req.staging_target_path.clone(),
                })?;
            mount_spec::local(&staged, mount_flags, req.readonly)?
        };
        self.mount_at(&volume, origin.as_ref(), &spec, &target)
            .await?;
        Ok(NodePublishVolumeResponse {})
    }

    /// NodeStageVolume: mounts the volume once per node (read-write) at the staging
    /// path; publishes bind-mount it into each pod, read-only where asked. Pods then
    /// come and go without a new NFS mount, and an unpublish never waits on the server.
    async fn stage(
        &self,
        req: NodeStageVolumeRequest,
    ) -> Result<NodeStageVolumeResponse, NodeError> {
        let volume_id = required("volume_id", &req.volume_id)?;
        let staging = required("staging_target_path", &req.staging_target_path)?;
        let capability = req
            .volume_capability
            .as_ref()
            .ok_or(NodeError::Missing("volume_capability"))?;
        let mount_flags = mount_flags_of(capability)?;
        let volume = self.volume_of(volume_id, &req.volume_context)?;
        let origin = self.nfs_origin(&volume, &req.volume_context)?;
        let staging = self.resolve_target("staging_target_path", staging).await?;
        let _claim = self.claim(&staging)?;
        let spec = self
            .mount_spec(&volume, &req.volume_context, mount_flags, false)
            .await?;
        self.mount_at(&volume, origin.as_ref(), &spec, &staging)
            .await?;
        Ok(NodeStageVolumeResponse {})
    }

    /// NodeUnstageVolume: unmounts the staging mount; the directory is the CO's.
    async fn unstage(
        &self,
        req: NodeUnstageVolumeRequest,
    ) -> Result<NodeUnstageVolumeResponse, NodeError> {
        required("volume_id", &req.volume_id)?;
        let staging = required("staging_target_path", &req.staging_target_path)?;
        let staging = match self.resolve_target("staging_target_path", staging).await {
            Ok(staging) => staging,
            Err(NodeError::TargetPath(err)) if err.parent_missing() => {
                tracing::info!("staging path does not exist");
                return Ok(NodeUnstageVolumeResponse {});
            }
            Err(err) => return Err(err),
        };
        let _claim = self.claim(&staging)?;
        self.unmount_all(&staging).await?;
        Ok(NodeUnstageVolumeResponse {})
    }

    /// Mounts `spec` at `target` unless this volume is already mounted there the same
    /// way (CSI idempotency); another volume (also: the same path from another NFS server
    /// or export than `origin`), or another access mode, is ALREADY_EXISTS (CSI
    /// NodePublishVolume/NodeStageVolume: "volume published but is incompatible"). It is
    /// not remounted: the mount there may be in use by a pod. Creates the directory if
    /// needed and undoes everything on failure.
    async fn mount_at(
        &self,
        volume: &VolumeRef,
        origin: Option<&NfsOrigin>,
        spec: &MountSpec,
        target: &Path,
    ) -> Result<(), NodeError> {
        if !spec.ignored.is_empty() {
            tracing::info!(ignored = ?spec.ignored, "mount options without meaning for this transport");
        }
        let table = read_mounts()?;
        if let Some(mounted) = table.topmost_at(target) {
            if !self
                .mount_of(&table, Identity::Exact(volume))
                .matches(&mounted)
            {
                return Err(NodeError::MountedDifferently {
                    target: target.to_owned(),
                    detail: format!(
                        "{} ({}) is mounted there, not {volume}",
                        mounted.source,
                        mounted.root.display()
                    ),
                });
            }
            if let Some(detail) = origin.and_then(|o| mount_spec::nfs_origin_mismatch(&mounted, o))
            {
                return Err(NodeError::MountedDifferently {
                    target: target.to_owned(),
                    detail: format!("{volume} is {detail}"),
                });
            }
            if mounted.mount_read_only() != spec.read_only() {
                let (is, wanted) = if mounted.mount_read_only() {
                    ("read-only", "read-write")
                } else {
                    ("read-write", "read-only")
                };
                return Err(NodeError::MountedDifferently {
                    target: target.to_owned(),
                    detail: format!("{volume} is mounted {is}, but {wanted} was asked for"),
                });
            }
            tracing::info!("already mounted");
            return Ok(());
        }

        let dir = target.to_owned();
        let created = blocking("creating the target", move || create_target(&dir)).await?;
        tracing::info!(source = %spec.source, readonly = spec.read_only(), created, "mounting");
        if let Err(err) = self
            .helper
            .mount(spec, target, self.config.mount_timeout)
            .await
        {
            self.roll_back(target, created).await;
            return Err(err.into());
        }
        self.check_still_confined(volume, spec, target, created)
            .await
    }

    /// Local transport, static volume: the source was resolved and checked before the
    /// mount, but whoever can write below the export could have swapped a directory of
    /// `subDir` for a symlink since. The mount that was made is checked against the
    /// export (by device and root, as mountinfo shows it) and undone if it is outside.
    async fn check_still_confined(
        &self,
        volume: &VolumeRef,
        spec: &MountSpec,
        target: &Path,
        created: bool,
    ) -> Result<(), NodeError> {
        let (Transport::Local { export_root }, VolumeRef::Static(v)) =
            (&self.config.transport, volume)
        else {
            return Ok(());
        };
        let table = read_mounts()?;
        let inside = table.topmost_at(target).is_some_and(|mounted| {
            self.mount_of(&table, Identity::AnyStatic(&v.handle))
                .matches(&mounted)
        });
        if inside {
            return Ok(());
        }
        self.roll_back(target, created).await;
        Err(mount_spec::MountSpecError::OutsideExport {
            sub_dir: v.sub_dir.to_string(),
            resolved: PathBuf::from(&spec.source),
            root: export_root.clone(),
        }
        .into())
    }

    /// After a failed mount: undo whatever did get mounted (a mount that completed just
    /// before its helper was killed) and remove the target if we created it.
    async fn roll_back(&self, target: &Path, created: bool) {
        if let Err(err) = self.unmount_all(target).await {
            tracing::error!(error = %err, "rollback: could not unmount the target");
            return;
        }
        if created && let Err(err) = std::fs::remove_dir(target) {
            tracing::error!(error = %err, "rollback: could not remove the target we created");
        }
    }

    /// Unmounts every mount stacked at `target`.
    async fn unmount_all(&self, target: &Path) -> Result<(), NodeError> {
        for _ in 0..MAX_STACKED_MOUNTS {
            let Some(mounted) = read_mounts()?.topmost_at(target) else {
                return Ok(());
            };
            tracing::info!(source = %mounted.source, "unmounting");
            self.helper
                .unmount_with_fallback(target, self.config.mount_timeout)
                .await?;
        }
        match read_mounts()?.topmost_at(target) {
            None => Ok(()),
            Some(_) => Err(NodeError::StillMounted {
                target: target.to_owned(),
                attempts: MAX_STACKED_MOUNTS,
            }),
        }
    }

    async fn unpublish(
        &self,
        req: NodeUnpublishVolumeRequest,
    ) -> Result<NodeUnpublishVolumeResponse, NodeError> {
        required("volume_id", &req.volume_id)?;
        let target = required("target_path", &req.target_path)?;
        let target = match self.resolve_target("target_path", target).await {
            Ok(target) => target,
            // No parent, so no target: nothing to undo (CSI: unpublish is idempotent).
            Err(NodeError::TargetPath(err)) if err.parent_missing() => {
                tracing::info!("target does not exist");
                return Ok(NodeUnpublishVolumeResponse {});
            }
            Err(err) => return Err(err),
        };
        let _claim = self.claim(&target)?;
        self.unmount_all(&target).await?;
        let dir = target.clone();
        blocking("removing the target", move || remove_target(&dir)).await?;
        Ok(NodeUnpublishVolumeResponse {})
    }

    async fn volume_stats(
        &self,
        req: NodeGetVolumeStatsRequest,
    ) -> Result<NodeGetVolumeStatsResponse, NodeError> {
        let volume_id = required("volume_id", &req.volume_id)?;
        let path = required("volume_path", &req.volume_path)?;
        let path = if mount_spec::is_hanfs_shaped(volume_id) {
            let id = VolumeId::parse(volume_id, &self.config.cluster_id)
                .map_err(NodeError::UnknownVolume)?;
            self.find_mount(Identity::Exact(&VolumeRef::Hanfs(id)), None, path)
                .await?
        } else {
            let handle = StaticHandle::parse(volume_id)?;
            self.find_mount(Identity::AnyStatic(&handle), None, path)
                .await?
        };
        // CSI v1.13 moved the volume's condition out of this call into
        // NodeGetVolumeHealth; a statfs that fails or hangs is an error here (bounded by
        // the stats timeout), and the health call says what it means.
        let fs = self.helper.statfs(&path, self.config.stats_timeout).await?;
        Ok(NodeGetVolumeStatsResponse {
            usage: stats::usage_of(&fs),
        })
    }

    /// NodeGetVolumeHealth (CSI v1.13): this node's view of the volume. Every mount of
    /// it at the given paths (or, with none given, every mount of it mountinfo shows)
    /// must answer a statfs within the stats timeout; in local mode its directory must
    /// still exist in the export; with nothing mounted over NFS, the server must answer.
    async fn volume_health(
        &self,
        req: NodeGetVolumeHealthRequest,
    ) -> Result<NodeGetVolumeHealthResponse, NodeError> {
        let volume_id = required("volume_id", &req.volume_id)?;
        let volume = if mount_spec::is_hanfs_shaped(volume_id) {
            VolumeRef::Hanfs(
                VolumeId::parse(volume_id, &self.config.cluster_id)
                    .map_err(NodeError::UnknownVolume)?,
            )
        } else {
            // A static volume: CSI sends no context here, so its mounts are only found
            // at the paths the CO names.
            let handle = StaticHandle::parse(volume_id)?;
            return self.static_volume_health(volume_id, &handle, &req).await;
        };
        let identity = Identity::Exact(&volume);
        let mut mounts = Vec::new();
        for path in [&req.volume_publish_path, &req.staging_target_path] {
            if !path.is_empty()
                && let Ok(canonical) = self.find_mount(identity, None, path).await
            {
                mounts.push(canonical);
            }
        }
        if req.volume_publish_path.is_empty() && req.staging_target_path.is_empty() {
            let table = read_mounts()?;
            let mount_of = self.mount_of(&table, identity);
            mounts = table
                .parsed()
                .filter(|m| mount_of.matches(m))
                .map(|m| m.mount_point)
                .collect();
        }
        let mut findings = self
            .probe_mounts(&mounts, self.config.stats_timeout)
            .await?;
        match &self.config.transport {
            Transport::Local { export_root } => {
                let source = volume.local_source(export_root);
                let checked = source.clone();
                let present = blocking("checking the volume directory", move || {
                    existing_dir(&checked)
                })
                .await?
                .is_some();
                match (present, mounts.is_empty()) {
                    (true, _) => {}
                    (false, true) => {
                        return Err(NodeError::VolumeMissing {
                            volume: volume.to_string(),
                            path: source,
                        });
                    }
                    (false, false) => findings.extend(volume_health::directory_missing(
                        &source.display().to_string(),
                    )),
                }
            }
            Transport::Nfs { .. } if mounts.is_empty() => {
                // Not mounted here (yet, or any more): whether it could be is whether
                // the server answers.
                if let Some(f) = self.server_finding().await {
                    findings.push(f);
                }
            }
            Transport::Nfs { .. } => {}
        }
        if !findings.is_empty() {
            tracing::warn!(volume = %volume, ?findings, "volume not healthy on this node");
        }
        Ok(NodeGetVolumeHealthResponse {
            volume_health: Some(VolumeHealth {
                volume_id: volume_id.to_owned(),
                health_statuses: volume_health::entries(findings),
            }),
        })
    }

    async fn static_volume_health(
        &self,
        volume_id: &str,
        handle: &StaticHandle,
        req: &NodeGetVolumeHealthRequest,
    ) -> Result<NodeGetVolumeHealthResponse, NodeError> {
        let mut mounts = Vec::new();
        for path in [&req.volume_publish_path, &req.staging_target_path] {
            if !path.is_empty()
                && let Ok(canonical) = self
                    .find_mount(Identity::AnyStatic(handle), None, path)
                    .await
            {
                mounts.push(canonical);
            }
        }
        let mut findings = self
            .probe_mounts(&mounts, self.config.stats_timeout)
            .await?;
        if mounts.is_empty()
            && let Some(f) = self.server_finding().await
        {
            findings.push(f);
        }
        Ok(NodeGetVolumeHealthResponse {
            volume_health: Some(VolumeHealth {
                volume_id: volume_id.to_owned(),
                health_statuses: volume_health::entries(findings),
            }),
        })
    }

    /// A statfs of each mount in the helper, each bounded by the stats timeout.
    async fn probe_mounts(
        &self,
        mounts: &[PathBuf],
        timeout: std::time::Duration,
    ) -> Result<Vec<Finding>, NodeError> {
        let mut findings = Vec::new();
        for mount in mounts {
            if let Err(err) = self.helper.statfs(mount, timeout).await {
                match volume_health::of_statfs_failure(&mount.display().to_string(), &err, timeout)
                {
                    Some(f) => findings.push(f),
                    None => return Err(err.into()),
                }
            }
        }
        Ok(findings)
    }

    /// The storage as this node reaches it now: in local mode a statfs of the export
    /// root (in the helper, bounded); over NFS a TCP connect to the server's NFS port,
    /// bounded by the stats timeout. `None` when there is nothing to ask (NFS without
    /// a default server: each volume names its own).
    async fn probe_storage(&self) -> Option<StorageProbe> {
        let timeout = self.config.stats_timeout;
        match &self.config.transport {
            Transport::Local { export_root } => {
                let target = export_root.display().to_string();
                Some(match self.helper.statfs(export_root, timeout).await {
                    Ok(_) => StorageProbe::Reachable,
                    Err(err) if err.is_timeout() => StorageProbe::TimedOut {
                        target,
                        after: timeout,
                    },
                    Err(err) => StorageProbe::Unreachable {
                        target,
                        detail: err.to_string(),
                    },
                })
            }
            Transport::Nfs {
                default_server,
                options,
                ..
            } => {
                let server = default_server.as_deref()?;
                let port = nfs_port(options);
                let target = format!("{server}:{port}");
                // A live server's kernel answers a connect in milliseconds; waiting the
                // stats bound (10 s) hid a whole hard-kill failover (~9 s here) behind
                // one slow "reachable".
                let timeout = timeout.min(STORAGE_PROBE_BOUND);
                let connect = tokio::net::TcpStream::connect((server, port));
                Some(match tokio::time::timeout(timeout, connect).await {
                    Ok(Ok(_)) => StorageProbe::Reachable,
                    Ok(Err(err)) => StorageProbe::Unreachable {
                        target,
                        detail: format!("no NFS connection: {err} (a failover may be in progress)"),
                    },
                    Err(_) => StorageProbe::TimedOut {
                        target,
                        after: timeout,
                    },
                })
            }
        }
    }

    /// The storage probe as a finding about one volume (INACCESSIBLE), if it failed.
    async fn server_finding(&self) -> Option<Finding> {
        let entry = volume_health::storage_entries(&self.probe_storage().await?, None)
            .into_iter()
            .next()?;
        Some(Finding {
            status: VolumeHealthErrorType::Inaccessible,
            reason: "StorageUnreachable",
            message: entry.message,
        })
    }

    /// NodeGetStorageHealth (CSI v1.13): whether this node reaches the storage now
    /// ([`Self::probe_storage`]: during a failover the VIP answers nobody, then the
    /// new active does), and whether the volumes mounted here answer (one statfs of
    /// one hanfs mount: they share one NFS client, so one hung is all hung).
    async fn storage_health(&self) -> Result<NodeGetStorageHealthResponse, NodeError> {
        let sample = read_mounts()?
            .parsed()
            .find(|m| match &self.config.transport {
                // A hanfs volume (`<share>/volumes/<dir>`), not any NFS mount.
                Transport::Nfs { .. } => {
                    m.is_nfs()
                        && mount_spec::nfs_source_path(&m.source)
                            .is_some_and(|path| path.contains("/volumes/"))
                }
                // Bind mounts of a local directory: the export-root probe says it all.
                Transport::Local { .. } => false,
            })
            .map(|m| m.mount_point);
        // Both at once, both short: the answer says how things stand now, not what
        // a call that waited out a failover saw at its end.
        let mount_bound = self.config.stats_timeout.min(STORAGE_PROBE_BOUND);
        let mount_probe = async {
            match sample {
                Some(mount) => Ok(self
                    .probe_mounts(&[mount], mount_bound)
                    .await?
                    .into_iter()
                    .next()),
                None => Ok::<_, NodeError>(None),
            }
        };
        let (server, mounts) = tokio::join!(self.probe_storage(), mount_probe);
        let server = server.unwrap_or(StorageProbe::Reachable);
        let mounts = mounts?;
        let backend_health = volume_health::storage_entries(&server, mounts.as_ref());
        if !backend_health.is_empty() {
            tracing::warn!(?backend_health, "storage not healthy from this node");
        }
        Ok(NodeGetStorageHealthResponse { backend_health })
    }

    async fn expand(
        &self,
        req: NodeExpandVolumeRequest,
    ) -> Result<NodeExpandVolumeResponse, NodeError> {
        let volume_id = required("volume_id", &req.volume_id)?;
        let path = required("volume_path", &req.volume_path)?;
        // Nothing to grow here (the quota grows on the server), but a range no size can
        // meet is still the caller's mistake.
        if let Some(range) = &req.capacity_range
            && (range.required_bytes < 0
                || range.limit_bytes < 0
                || (range.limit_bytes > 0 && range.required_bytes > range.limit_bytes))
        {
            return Err(NodeError::Missing(
                "capacity_range with non-negative sizes and required_bytes <= limit_bytes",
            ));
        }
        if let Some(VolumeCapability {
            access_type: Some(AccessType::Block(_)),
            ..
        }) = req.volume_capability
        {
            return Err(NodeError::BlockAccess);
        }
        if mount_spec::is_hanfs_shaped(volume_id) {
            let id = VolumeId::parse(volume_id, &self.config.cluster_id)?;
            self.find_mount(Identity::Exact(&VolumeRef::Hanfs(id)), None, path)
                .await?;
        } else {
            let handle = StaticHandle::parse(volume_id)?;
            self.find_mount(Identity::AnyStatic(&handle), None, path)
                .await?;
        }
        // An NFS directory grows with its quota on the server; nothing to do here.
        Ok(NodeExpandVolumeResponse {
            capacity_bytes: req.capacity_range.map(|r| r.required_bytes).unwrap_or(0),
        })
    }
}

/// What a mount of one volume looks like ([`NodeService::mount_of`]).
enum MountOf {
    /// Local: a bind mount of exactly this device and directory (`None`: the volume's
    /// directory is on no mount, so nothing is a mount of it).
    Bind(Option<(String, PathBuf)>),
    /// Local, static: a bind mount of a directory strictly below this one.
    BindBelow(Option<(String, PathBuf)>),
    /// NFS, hanfs volume: an NFS mount whose server path ends in `volumes/<dir>`.
    NfsTail(PathBuf),
    /// NFS, static volume: an NFS mount of exactly this server path.
    NfsPath(Option<String>),
    /// NFS, static volume known by its handle only: any NFS mount.
    AnyNfs,
}

impl MountOf {
    fn matches(&self, mounted: &MountInfo) -> bool {
        match self {
            MountOf::Bind(origin) => origin.as_ref().is_some_and(|(device, root)| {
                mounted.device() == *device
                    && (mounted.root == *root || is_deleted_form(&mounted.root, root))
            }),
            MountOf::BindBelow(origin) => origin.as_ref().is_some_and(|(device, root)| {
                mounted.device() == *device
                    && mounted.root != *root
                    && mounted.root.starts_with(root)
            }),
            MountOf::NfsTail(tail) => {
                mounted.is_nfs()
                    && mount_spec::nfs_source_path(&mounted.source)
                        .is_some_and(|path| Path::new(path).ends_with(tail))
            }
            MountOf::NfsPath(wanted) => wanted.as_ref().is_some_and(|wanted| {
                mounted.is_nfs()
                    && mount_spec::nfs_source_path(&mounted.source)
                        .is_some_and(|path| Path::new(path) == Path::new(wanted))
            }),
            MountOf::AnyNfs => mounted.is_nfs(),
        }
    }
}

/// Whether a mount's root is `root` after the directory was removed: mountinfo then
/// shows `<root>//deleted` (older kernels: `<root> (deleted)`). Such a mount is still
/// the volume's (NodeGetVolumeHealth reports exactly that case).
fn is_deleted_form(mounted_root: &Path, root: &Path) -> bool {
    ["//deleted", " (deleted)"].iter().any(|suffix| {
        let mut deleted = root.as_os_str().to_owned();
        deleted.push(suffix);
        mounted_root.as_os_str() == deleted
    })
}

/// The NFS server's port: `port=` of the node's NFS options, else 2049.
fn nfs_port(options: &[String]) -> u16 {
    options
        .iter()
        .find_map(|o| o.strip_prefix("port=")?.parse().ok())
        .filter(|p| *p != 0)
        .unwrap_or(2049)
}

/// The canonical path of `path` if it is an existing directory.
fn existing_dir(path: &Path) -> Result<Option<PathBuf>, NodeError> {
    match std::fs::canonicalize(path) {
        Ok(canonical) if canonical.is_dir() => Ok(Some(canonical)),
        Ok(_) => Ok(None),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(NodeError::io(format!("checking {}", path.display()))(err)),
    }
}

/// Creates the target directory unless it is one already (CSI: the SP creates the
/// target). Returns whether it was created. A symlink is refused: mount(2) would follow
/// it out of the allowed roots.
fn create_target(target: &Path) -> Result<bool, NodeError> {
    match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => Ok(false),
        Ok(_) => Err(NodeError::TargetNotDirectory(target.to_owned())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(0o750).create(target) {
                Ok(()) => Ok(true),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    create_target(target)
                }
                Err(err) => Err(NodeError::io(format!("creating {}", target.display()))(err)),
            }
        }
        Err(err) => Err(NodeError::io(format!("inspecting {}", target.display()))(
            err,
        )),
    }
}

/// Removes the (unmounted) target directory; a missing one is fine.
fn remove_target(target: &Path) -> Result<(), NodeError> {
    match std::fs::symlink_metadata(target) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(NodeError::io(format!("inspecting {}", target.display()))(
            err,
        )),
        Ok(meta) if !meta.is_dir() => Err(NodeError::TargetNotDirectory(target.to_owned())),
        Ok(_) => match std::fs::remove_dir(target) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                Err(NodeError::TargetNotEmpty(target.to_owned()))
            }
            Err(err) => Err(NodeError::io(format!("removing {}", target.display()))(err)),
        },
    }
}

fn capability(kind: rpc::Type) -> NodeServiceCapability {
    NodeServiceCapability {
        r#type: Some(Type::Rpc(Rpc {
            r#type: kind as i32,
        })),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        reply(self.publish(request.into_inner()).await)
    }

    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        reply(self.stage(request.into_inner()).await)
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        reply(self.unstage(request.into_inner()).await)
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        reply(self.unpublish(request.into_inner()).await)
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        reply(self.volume_stats(request.into_inner()).await)
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        reply(self.expand(request.into_inner()).await)
    }

    async fn node_get_volume_health(
        &self,
        request: Request<NodeGetVolumeHealthRequest>,
    ) -> Result<Response<NodeGetVolumeHealthResponse>, Status> {
        reply(self.volume_health(request.into_inner()).await)
    }

    async fn node_get_storage_health(
        &self,
        _: Request<NodeGetStorageHealthRequest>,
    ) -> Result<Response<NodeGetStorageHealthResponse>, Status> {
        reply(self.storage_health().await)
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        // EXPAND_VOLUME is a no-op here (the quota grows on the server), advertised so
        // kubelet and csi-sanity can call it.
        let capabilities = [
            rpc::Type::StageUnstageVolume,
            rpc::Type::GetVolumeStats,
            rpc::Type::SingleNodeMultiWriter,
            rpc::Type::ExpandVolume,
            rpc::Type::GetVolumeHealth,
            rpc::Type::GetStorageHealth,
        ]
        .into_iter()
        .map(capability)
        .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

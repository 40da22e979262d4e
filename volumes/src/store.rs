//! [`VolumeStore`]: the volume and snapshot operations over the export tree.
//!
//! Blocking by design (filesystem work); the gRPC layer runs it off the async runtime.
//! Every operation takes the per-name locks of what it touches, so concurrent calls on
//! one name answer [`VolumeError::Busy`] instead of interleaving.

use super::copy::{self, CopyHook, CopyStats};
use super::error::{Result, VolumeError};
use super::health::{self, DirState, HealthProblem, HealthStatus, Observed, QuotaObserved};
use super::layout::{self, Layout};
use super::locks::{Access, LockGuard, NameLocks};
use super::meta::{self, CopyMethod, OnDelete, SnapshotMeta, Source, VolumeMeta};
use super::quota::{self, QuotaSupport};
use common::ids::{SnapshotName, VolumeDir};
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub mod group;
pub use group::{GroupInfo, GroupMeta};

mod publish;
pub mod sweep;
use sweep::VOLUME_LABEL;

/// Largest size we accept: far beyond any filesystem, far below i64 overflow.
pub const MAX_VOLUME_BYTES: i64 = 1 << 60;
/// Pagination tokens carry a prefix no name can have, so foreign tokens are recognised.
const TOKEN_PREFIX: &str = "from:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacityPolicy {
    /// A volume is created only if its whole size is still unpromised.
    Reserve,
    /// Sizes are limits only; the export may be overcommitted.
    Thin,
}

pub struct StoreConfig {
    pub root: PathBuf,
    pub capacity_policy: CapacityPolicy,
    /// Size of a new volume whose request names no size and has no source.
    pub default_volume_bytes: i64,
    /// Permission bits of a new volume's root when the request names none.
    pub default_mode: u32,
    /// Test seam: called before each file of a snapshot or clone is copied.
    pub copy_hook: Option<CopyHook>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRef {
    Snapshot(SnapshotName),
    Volume(VolumeDir),
}

#[derive(Debug, Clone)]
pub struct CreateVolume {
    pub dir: VolumeDir,
    pub request_name: String,
    pub required_bytes: i64,
    pub limit_bytes: i64,
    pub on_delete: OnDelete,
    pub mode: Option<u32>,
    pub source: Option<SourceRef>,
}

#[derive(Debug, Clone)]
pub struct VolumeInfo {
    pub dir: VolumeDir,
    /// `None` when the directory exists without a record (made by hand).
    pub meta: Option<VolumeMeta>,
    pub mode: u32,
    pub used_bytes: Option<u64>,
    pub quota_enforced: bool,
    /// `Some(reason)` when something is wrong with the volume.
    pub abnormal: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    pub name: SnapshotName,
    pub meta: SnapshotMeta,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Nothing by that name existed.
    Absent,
    Deleted,
    /// Kept at this path (retain / archive).
    Kept(OnDelete, PathBuf),
}

#[derive(Debug, Clone)]
pub struct CapacityInfo {
    pub total_bytes: i64,
    pub free_bytes: i64,
    pub promised_bytes: i64,
    pub available_bytes: i64,
    pub policy: CapacityPolicy,
}

/// What [`VolumeStore::open`]'s sweep of interrupted calls found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Leftover directories, records and temp files removed.
    pub removed: usize,
    /// Projects of volumes an interrupted create or delete left behind (their limits
    /// must not outlive them), ascending.
    pub orphan_projects: Vec<u32>,
    /// The ones whose quota limit was zeroed (empty where quotas are not enforced).
    pub cleared_limits: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct StatusInfo {
    pub export_root: PathBuf,
    pub filesystem: String,
    pub quota: QuotaSupport,
    pub reflink: bool,
    pub reflink_detail: String,
    pub volume_count: usize,
    pub snapshot_count: usize,
    pub capacity_policy: CapacityPolicy,
}

pub struct VolumeStore {
    layout: Layout,
    config: StoreConfig,
    quota: QuotaSupport,
    reflink: bool,
    locks: NameLocks,
    /// Serialises capacity decisions and project-id allocation, and keeps the promised
    /// total in memory so that a decision reads no records (see [`Accounting`]).
    accounting: Mutex<Accounting>,
    /// What the sweep at open found and did.
    swept: SweepReport,
}

/// The bytes promised to volumes, kept under [`VolumeStore::accounting`].
#[derive(Debug, Default)]
struct Accounting {
    /// The capacity of every volume in `volumes/` with a readable record
    /// ([`counted_bytes`]): summed from the records at open, which is what makes it
    /// right after a crash, then moved by each create, expand and delete, each while it
    /// holds its volume's exclusive lock. A record edited behind hanfs's back counts
    /// from the next open. Wider than a size: thin-provisioned sizes (each up to
    /// [`MAX_VOLUME_BYTES`]) can sum past `i64`, and sums must stay exact to be undone.
    recorded: i128,
    /// Bytes of creations and expansions that passed the capacity check but are not
    /// recorded on disk yet.
    pending: i128,
}

impl Accounting {
    /// Recorded and pending bytes, saturated at `i64::MAX` for reporting.
    fn promised(&self) -> i64 {
        i64::try_from(self.recorded + self.pending).unwrap_or(i64::MAX)
    }
}

impl VolumeStore {
    /// Opens the export at `config.root`: creates the layout, sweeps leftovers of
    /// interrupted calls, and detects quota and reflink support.
    pub fn open(config: StoreConfig) -> Result<Self> {
        let layout = Layout::open(&config.root)?;
        let quota = QuotaSupport::detect(layout.root(), &layout.tmp_dir());
        // Project ids are read before the sweep removes the directories carrying them,
        // and limits cleared before the removal: a crash in between repeats this.
        let found = sweep::survey(&layout)?;
        let (recorded, live_projects) = count_records(&layout)?;
        let orphans = sweep::projects_to_clear(&found, &live_projects);
        let cleared_limits = sweep::clear_limits(layout.root(), &quota, &orphans);
        let removed = layout.sweep()? + group::sweep_orphan_members(&layout)?;
        if removed > 0 {
            tracing::warn!(
                removed,
                orphan_projects = ?orphans,
                "removed leftovers of interrupted operations"
            );
        }
        let reflink = copy::probe_reflink(&layout.tmp_dir())
            .map_err(VolumeError::io("probing reflink support", layout.tmp_dir()))?;
        tracing::info!(root = %layout.root().display(), quota = %quota.detail, reflink, "volume store open");
        if !reflink {
            tracing::warn!(
                "this filesystem cannot reflink: snapshots and clones are full copies (use XFS with reflink=1)"
            );
        }
        Ok(Self {
            layout,
            config,
            quota,
            reflink,
            locks: NameLocks::default(),
            accounting: Mutex::new(Accounting {
                recorded,
                pending: 0,
            }),
            swept: SweepReport {
                removed,
                orphan_projects: orphans.into_iter().collect(),
                cleared_limits,
            },
        })
    }

    /// What the sweep at open found and did.
    pub fn startup_sweep(&self) -> &SweepReport {
        &self.swept
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn lock(&self, wanted: &[(String, Access)]) -> Result<LockGuard> {
        self.locks.try_lock(wanted).map_err(|key| {
            VolumeError::Busy(format!(
                "another operation on {key} is in progress; retry later"
            ))
        })
    }

    fn accounts(&self) -> std::sync::MutexGuard<'_, Accounting> {
        self.accounting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ---- volumes -------------------------------------------------------------

    pub fn create_volume(&self, request: CreateVolume) -> Result<VolumeInfo> {
        check_range(request.required_bytes, request.limit_bytes)?;
        let mut wanted = vec![(volume_key(&request.dir), Access::Exclusive)];
        match &request.source {
            Some(SourceRef::Volume(src)) if *src == request.dir => {
                return Err(VolumeError::InvalidArgument(format!(
                    "volume {} cannot be cloned from itself",
                    src
                )));
            }
            Some(SourceRef::Volume(src)) => wanted.push((volume_key(src), Access::Shared)),
            Some(SourceRef::Snapshot(src)) => wanted.push((snapshot_key(src), Access::Shared)),
            None => {}
        }
        let _guard = self.lock(&wanted)?;

        if self.layout.volume(&request.dir).exists() {
            return self.existing_matches(&request);
        }

        let (source_path, source_bytes, source_record) = match &request.source {
            None => (None, None, None),
            Some(SourceRef::Volume(src)) => {
                let record = self.volume_record(src)?.ok_or_else(|| {
                    VolumeError::NotFound(format!("source volume {src} does not exist"))
                })?;
                (
                    Some(self.layout.volume(src)),
                    Some(record.capacity_bytes),
                    Some(Source::Volume(src.to_string())),
                )
            }
            Some(SourceRef::Snapshot(src)) => {
                let record = self.snapshot_record(src)?.ok_or_else(|| {
                    VolumeError::NotFound(format!("source snapshot {src} does not exist"))
                })?;
                (
                    Some(self.layout.snapshot(src)),
                    Some(record.size_bytes),
                    Some(Source::Snapshot(src.to_string())),
                )
            }
        };
        let capacity = choose_capacity(
            request.required_bytes,
            request.limit_bytes,
            source_bytes,
            self.config.default_volume_bytes,
        )?;
        let (reservation, project_id) = self.reserve(capacity, true)?;
        let result = self.build_volume(
            &request,
            capacity,
            project_id,
            source_path.as_deref(),
            source_record,
        );
        // The volume counted nothing before (it did not exist); it counts what is on
        // disk now, also when a step after its rename into place failed.
        reservation.settle(counted_bytes(&self.layout, &request.dir));
        result
    }

    /// Checks an existing volume against a repeated create (idempotency).
    fn existing_matches(&self, request: &CreateVolume) -> Result<VolumeInfo> {
        let dir = &request.dir;
        let info = self.volume_info(dir, false)?;
        let Some(existing) = &info.meta else {
            return Err(VolumeError::AlreadyExists(format!(
                "directory volumes/{dir} exists but was not made by hanfs (no record); remove or rename it"
            )));
        };
        if existing.request_name != request.request_name {
            return Err(VolumeError::AlreadyExists(format!(
                "directory volumes/{dir} already belongs to volume request {:?}",
                existing.request_name
            )));
        }
        let wanted_source = request.source.as_ref().map(|s| match s {
            SourceRef::Snapshot(n) => Source::Snapshot(n.to_string()),
            SourceRef::Volume(d) => Source::Volume(d.to_string()),
        });
        if existing.source != wanted_source {
            return Err(VolumeError::AlreadyExists(format!(
                "volume {dir} exists with content source {:?}, not {:?}",
                existing.source, wanted_source
            )));
        }
        let cap = existing.capacity_bytes;
        if cap < request.required_bytes || (request.limit_bytes > 0 && cap > request.limit_bytes) {
            return Err(VolumeError::AlreadyExists(format!(
                "volume {dir} exists with capacity {cap} bytes, outside the requested range (required {}, limit {})",
                request.required_bytes, request.limit_bytes
            )));
        }
        Ok(info)
    }

    fn build_volume(
        &self,
        request: &CreateVolume,
        capacity: i64,
        project_id: u32,
        source: Option<&Path>,
        source_record: Option<Source>,
    ) -> Result<VolumeInfo> {
        let dir = &request.dir;
        let scratch = self.layout.scratch(&format!("{VOLUME_LABEL}{dir}"));
        let target = self.layout.volume(dir);
        let record_path = self.layout.volume_meta(dir);
        let result = (|| {
            std::fs::create_dir(&scratch)
                .map_err(VolumeError::io("creating volume directory", &scratch))?;
            // The project id goes on before any content so that copied files inherit it
            // and are charged to this volume (DESIGN.md §3).
            if project_id != 0 {
                quota::assign_project(&scratch, project_id)
                    .map_err(VolumeError::io("assigning project id", &scratch))?;
                if self.quota.enforced {
                    quota::set_limit(self.layout.root(), project_id, capacity as u64)
                        .map_err(VolumeError::io("setting project quota", &scratch))?;
                }
            }
            let mut copy_method = CopyMethod::None;
            let mut root_meta = None;
            if let Some(source) = source {
                let stats = self.copy_into(source, &scratch)?;
                copy_method = method_of(&stats, self.reflink);
                root_meta = Some(
                    std::fs::metadata(source).map_err(VolumeError::io("reading source", source))?,
                );
                tracing::info!(volume = %dir, ?copy_method, ?stats, "copied content source");
            }
            // The root's mode: as requested, else the source's, else the default.
            let mode = match (request.mode, &root_meta) {
                (Some(mode), _) => mode,
                (None, Some(m)) => m.mode() & 0o7777,
                (None, None) => self.config.default_mode,
            };
            if let Some(m) = &root_meta {
                std::os::unix::fs::chown(&scratch, Some(m.uid()), Some(m.gid()))
                    .map_err(VolumeError::io("setting owner", &scratch))?;
            }
            std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(mode))
                .map_err(VolumeError::io("setting permissions", &scratch))?;
            let record = VolumeMeta {
                request_name: request.request_name.clone(),
                capacity_bytes: capacity,
                project_id,
                on_delete: request.on_delete,
                mode,
                source: source_record,
                copy_method,
                created_unix_nanos: meta::now_unix_nanos(),
            };
            meta::write(&record_path, &record)?;
            std::fs::rename(&scratch, &target)
                .map_err(VolumeError::io("moving volume into place", &target))?;
            layout::sync_dir(&self.layout.volumes_dir())?;
            Ok(())
        })();
        if let Err(e) = result {
            // Nothing half-made stays: the scratch tree and the record go.
            let _ = layout::remove_any(&scratch);
            if !target.exists() {
                let _ = layout::remove_any(&record_path);
            }
            if project_id != 0 && self.quota.enforced {
                let _ = quota::set_limit(self.layout.root(), project_id, 0);
            }
            return Err(e);
        }
        tracing::info!(volume = %dir, capacity, project_id, "volume created");
        self.volume_info(dir, false)
    }

    /// Copies `source` into `target` and makes the copy durable before it becomes
    /// visible (a crash right after the rename must not expose a torn copy).
    fn copy_into(&self, source: &Path, target: &Path) -> Result<CopyStats> {
        let stats = copy::copy_tree(source, target, self.config.copy_hook.as_ref())
            .map_err(VolumeError::io("copying content", source))?;
        if stats.skipped_special > 0 {
            tracing::warn!(skipped = stats.skipped_special, source = %source.display(), "sockets, FIFOs and device nodes are not copied");
        }
        let file = std::fs::File::open(target).map_err(VolumeError::io("opening copy", target))?;
        nix::unistd::syncfs(&file).map_err(|e| VolumeError::Io {
            context: "syncing copy",
            path: target.to_owned(),
            source: e.into(),
        })?;
        Ok(stats)
    }

    /// Checks `extra_bytes` against the capacity policy and holds them as pending
    /// until the returned reservation drops; allocates a project id when `new_project`.
    fn reserve(&self, extra_bytes: i64, new_project: bool) -> Result<(Reservation<'_>, u32)> {
        let mut accounts = self.accounts();
        if self.config.capacity_policy == CapacityPolicy::Reserve && extra_bytes > 0 {
            let capacity = self.capacity_with(accounts.promised())?;
            if extra_bytes > capacity.available_bytes {
                return Err(VolumeError::ResourceExhausted(format!(
                    "{extra_bytes} bytes requested, {} available (export {} bytes, {} promised to volumes, {} free; policy: reserve)",
                    capacity.available_bytes,
                    capacity.total_bytes,
                    capacity.promised_bytes,
                    capacity.free_bytes
                )));
            }
        }
        let project_id = if new_project && self.quota.project_ids {
            self.next_project_id()?
        } else {
            0
        };
        accounts.pending += i128::from(extra_bytes);
        Ok((
            Reservation {
                store: self,
                bytes: extra_bytes,
            },
            project_id,
        ))
    }

    fn next_project_id(&self) -> Result<u32> {
        let path = self.layout.project_counter();
        // Ids start above the small numbers admins use by hand in /etc/projid.
        let next: u32 = meta::read(&path)?.unwrap_or(1000);
        meta::write(&path, &(next + 1))?;
        Ok(next)
    }

    pub fn delete_volume(&self, dir: &VolumeDir) -> Result<DeleteOutcome> {
        let _guard = self.lock(&[(volume_key(dir), Access::Exclusive)])?;
        let path = self.layout.volume(dir);
        if !path.exists() {
            // Also finishes a delete that failed or crashed after the rename into the
            // trash: its record (if still there) names the project whose limit goes.
            self.layout.empty_trash_best_effort();
            let record_path = self.layout.volume_meta(dir);
            if let Ok(Some(record)) = meta::read::<VolumeMeta>(&record_path) {
                let found = [sweep::Found::OrphanRecord {
                    project: record.project_id,
                    on_delete: record.on_delete,
                }];
                let ids = sweep::projects_to_clear(&found, &BTreeSet::new());
                sweep::clear_limits(self.layout.root(), &self.quota, &ids);
            }
            let _ = layout::remove_any(&record_path);
            return Ok(DeleteOutcome::Absent);
        }
        let record = self.volume_record(dir)?;
        // What this volume adds to the promised total until it leaves `volumes/`.
        let counted = record.as_ref().map_or(0, |r| r.capacity_bytes);
        let mut trash_slot = None;
        // A directory without a record was not made by hanfs (or lost its record): its
        // data is kept, never trashed on a guess.
        let policy = record.as_ref().map_or(OnDelete::Retain, |r| r.on_delete);
        let outcome = match policy {
            OnDelete::Delete => {
                let slot = self.layout.trash_slot(&format!("{VOLUME_LABEL}{dir}"));
                std::fs::rename(&path, &slot)
                    .map_err(VolumeError::io("moving volume to trash", &path))?;
                trash_slot = Some(slot);
                DeleteOutcome::Deleted
            }
            OnDelete::Retain | OnDelete::Archive => {
                let kept = self.kept_path(dir, policy);
                std::fs::rename(&path, &kept).map_err(VolumeError::io("keeping volume", &kept))?;
                DeleteOutcome::Kept(policy, kept)
            }
        };
        // Out of `volumes/`: promised no more, whatever fails next.
        self.accounts().recorded -= i128::from(counted);
        layout::sync_dir(&self.layout.volumes_dir())?;
        layout::remove_any(&self.layout.volume_meta(dir))?;
        // Its export admissions end with it (the API re-applies the export table).
        self.forget_publications(dir)?;
        if let Some(r) = &record
            && r.project_id != 0
            && self.quota.enforced
            && policy == OnDelete::Delete
            && let Err(e) = quota::set_limit(self.layout.root(), r.project_id, 0)
        {
            tracing::warn!(volume = %dir, project_id = r.project_id, error = %e, "could not clear the project quota");
        }
        // Only our own slot: parallel deletes must not race over each other's trees. The
        // volume is gone from volumes/ already; a failure here is finished later.
        if let Some(slot) = trash_slot
            && let Err(e) = layout::remove_any(&slot)
        {
            tracing::warn!(volume = %dir, error = %e, "volume deleted; its data will be removed from the trash later");
        }
        tracing::info!(volume = %dir, ?outcome, "volume deleted");
        Ok(outcome)
    }

    fn kept_path(&self, dir: &VolumeDir, policy: OnDelete) -> PathBuf {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match policy {
            OnDelete::Archive => self.layout.archived_dir().join(format!("{dir}-{now}")),
            _ => {
                let plain = self.layout.retained_dir().join(dir);
                if plain.exists() {
                    self.layout.retained_dir().join(format!("{dir}-{now}"))
                } else {
                    plain
                }
            }
        }
    }

    pub fn expand_volume(
        &self,
        dir: &VolumeDir,
        required_bytes: i64,
        limit_bytes: i64,
    ) -> Result<VolumeInfo> {
        check_range(required_bytes, limit_bytes)?;
        let _guard = self.lock(&[(volume_key(dir), Access::Exclusive)])?;
        let mut record = self
            .volume_record(dir)?
            .ok_or_else(|| VolumeError::NotFound(format!("volume {dir} does not exist")))?;
        if required_bytes <= record.capacity_bytes {
            // Shrinking is not supported; the volume already satisfies the request.
            return self.volume_info(dir, false);
        }
        let counted = record.capacity_bytes;
        let (reservation, _) = self.reserve(required_bytes - counted, false)?;
        let result = (|| {
            if record.project_id != 0 && self.quota.enforced {
                quota::set_limit(self.layout.root(), record.project_id, required_bytes as u64)
                    .map_err(VolumeError::io(
                        "raising project quota",
                        self.layout.volume(dir),
                    ))?;
            }
            record.capacity_bytes = required_bytes;
            meta::write(&self.layout.volume_meta(dir), &record)
        })();
        // A record write can fail after its rename (the directory's fsync): the total
        // follows the record on disk, not the outcome.
        reservation.settle(counted_bytes(&self.layout, dir) - counted);
        result?;
        tracing::info!(volume = %dir, capacity = required_bytes, "volume expanded");
        self.volume_info(dir, false)
    }

    pub fn set_on_delete(&self, dir: &VolumeDir, on_delete: OnDelete) -> Result<VolumeInfo> {
        let _guard = self.lock(&[(volume_key(dir), Access::Exclusive)])?;
        let mut record = self
            .volume_record(dir)?
            .ok_or_else(|| VolumeError::NotFound(format!("volume {dir} does not exist")))?;
        if record.on_delete != on_delete {
            record.on_delete = on_delete;
            meta::write(&self.layout.volume_meta(dir), &record)?;
            tracing::info!(volume = %dir, ?on_delete, "on-delete policy changed");
        }
        self.volume_info(dir, false)
    }

    pub fn get_volume(&self, dir: &VolumeDir) -> Result<VolumeInfo> {
        self.volume_info(dir, true)
    }

    fn volume_record(&self, dir: &VolumeDir) -> Result<Option<VolumeMeta>> {
        if !self.layout.volume(dir).is_dir() {
            return Ok(None);
        }
        meta::read(&self.layout.volume_meta(dir))
    }

    fn volume_info(&self, dir: &VolumeDir, with_usage: bool) -> Result<VolumeInfo> {
        let path = self.layout.volume(dir);
        let stat = match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => {
                return Err(VolumeError::NotFound(format!(
                    "volumes/{dir} is not a directory"
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(format!(
                    "volume {dir} does not exist"
                )));
            }
            Err(e) => {
                return Err(VolumeError::Io {
                    context: "reading volume",
                    path,
                    source: e,
                });
            }
        };
        let record = meta::read::<VolumeMeta>(&self.layout.volume_meta(dir))?;
        let quota_enforced =
            self.quota.enforced && record.as_ref().is_some_and(|r| r.project_id != 0);
        let mut abnormal = record
            .is_none()
            .then(|| "the volume has no hanfs record (made by hand?)".to_string());
        let used_bytes = match &record {
            Some(r) if quota_enforced => match quota::usage(self.layout.root(), r.project_id) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    abnormal = Some(format!("cannot read project quota usage: {e}"));
                    None
                }
            },
            _ if with_usage => copy::allocated_bytes(&path).ok(),
            _ => None,
        };
        Ok(VolumeInfo {
            dir: dir.clone(),
            meta: record,
            mode: stat.mode() & 0o7777,
            used_bytes,
            quota_enforced,
            abnormal,
        })
    }

    pub fn list_volumes(
        &self,
        max_entries: usize,
        starting_token: &str,
    ) -> Result<(Vec<VolumeInfo>, Option<String>)> {
        let names = sorted_names(&self.layout.volumes_dir())?;
        let (page, next) = paginate(&names, max_entries, starting_token)?;
        let mut volumes = Vec::with_capacity(page.len());
        for name in page {
            let Ok(dir) = VolumeDir::parse(name) else {
                continue;
            };
            match self.volume_info(&dir, false) {
                Ok(info) => volumes.push(info),
                // Deleted between listing and reading.
                Err(VolumeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((volumes, next))
    }

    /// What is wrong with the volume (empty: nothing known); NOT_FOUND when there is
    /// neither a directory nor a record. A record without its directory is reported,
    /// not hidden: that is the volume whose data vanished behind hanfs's back.
    pub fn volume_health(&self, dir: &VolumeDir) -> Result<Vec<HealthProblem>> {
        // Shared: a delete between its rename and its record removal must not read as
        // a vanished directory.
        let _guard = self.lock(&[(volume_key(dir), Access::Shared)])?;
        self.volume_health_unlocked(dir)?
            .ok_or_else(|| VolumeError::NotFound(format!("volume {dir} does not exist")))
    }

    fn volume_health_unlocked(&self, dir: &VolumeDir) -> Result<Option<Vec<HealthProblem>>> {
        let path = self.layout.volume(dir);
        let state = match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => DirState::Directory,
            Ok(_) => DirState::NotADirectory,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirState::Missing,
            Err(e) => DirState::Unreadable(e.to_string()),
        };
        let record = match meta::read::<VolumeMeta>(&self.layout.volume_meta(dir)) {
            Ok(r) => r,
            Err(e) if state == DirState::Directory => {
                return Ok(Some(vec![HealthProblem {
                    status: HealthStatus::Degraded,
                    reason: "RecordUnreadable",
                    message: format!("the volume's record cannot be read: {e}"),
                }]));
            }
            Err(e) => return Err(e),
        };
        let quota = match &record {
            Some(r) if r.project_id != 0 && state == DirState::Directory => {
                let root = self.layout.root();
                let text = |e: std::io::Error| e.to_string();
                Some(QuotaObserved {
                    enforced: self.quota.enforced,
                    dir_project: quota::project_of(&path).map_err(text),
                    limit_bytes: quota::limit(root, r.project_id).map_err(text),
                    used_bytes: quota::usage(root, r.project_id).map_err(text),
                })
            }
            _ => None,
        };
        Ok(health::judge(&Observed {
            dir: state,
            record: record.map(|r| (r.capacity_bytes, r.project_id)),
            quota,
        }))
    }

    /// The volumes with problems, in name order from `starting_token`, at most
    /// `max_entries` of them (0: all). Names come from the directories and from the
    /// records, so a volume whose directory vanished is listed too. A volume busy with
    /// another call is left out of this page (CSI: a list is no consistent view).
    #[allow(clippy::type_complexity)]
    pub fn list_volume_health(
        &self,
        max_entries: usize,
        starting_token: &str,
    ) -> Result<(Vec<(VolumeDir, Vec<HealthProblem>)>, Option<String>)> {
        let mut names = sorted_names(&self.layout.volumes_dir())?;
        for record in sorted_names(&self.layout.volume_meta_dir())? {
            if let Some(name) = record.strip_suffix(".json") {
                names.push(name.to_owned());
            }
        }
        names.sort();
        names.dedup();
        let (rest, _) = paginate(&names, 0, starting_token)?;
        let mut out = Vec::new();
        for name in rest {
            if max_entries > 0 && out.len() == max_entries {
                return Ok((out, Some(format!("{TOKEN_PREFIX}{name}"))));
            }
            let Ok(dir) = VolumeDir::parse(name) else {
                continue;
            };
            let Ok(_guard) = self.lock(&[(volume_key(&dir), Access::Shared)]) else {
                continue;
            };
            if let Some(problems) = self.volume_health_unlocked(&dir)?
                && !problems.is_empty()
            {
                out.push((dir, problems));
            }
        }
        Ok((out, None))
    }

    // ---- snapshots -----------------------------------------------------------

    pub fn create_snapshot(
        &self,
        name: &SnapshotName,
        request_name: &str,
        source: &VolumeDir,
    ) -> Result<SnapshotInfo> {
        let _guard = self.lock(&[
            (snapshot_key(name), Access::Exclusive),
            (volume_key(source), Access::Shared),
        ])?;
        if let Some(existing) = self.snapshot_record(name)? {
            if existing.request_name != request_name || existing.source_volume != source.as_str() {
                return Err(VolumeError::AlreadyExists(format!(
                    "snapshot {name} already exists for volume {} (request {:?})",
                    existing.source_volume, existing.request_name
                )));
            }
            return Ok(SnapshotInfo {
                name: name.clone(),
                meta: existing,
            });
        }
        let source_record = self.volume_record(source)?.ok_or_else(|| {
            VolumeError::NotFound(format!("source volume {source} does not exist"))
        })?;
        let source_path = self.layout.volume(source);
        let scratch = self.layout.scratch(&format!("snap-{name}"));
        let target = self.layout.snapshot(name);
        let record_path = self.layout.snapshot_meta(name);
        let result = (|| {
            std::fs::create_dir(&scratch)
                .map_err(VolumeError::io("creating snapshot directory", &scratch))?;
            let stats = self.copy_into(&source_path, &scratch)?;
            let root = std::fs::metadata(&source_path)
                .map_err(VolumeError::io("reading source", &source_path))?;
            copy::copy_attributes(&root, &scratch)
                .map_err(VolumeError::io("copying attributes", &scratch))?;
            let record = SnapshotMeta {
                request_name: request_name.to_owned(),
                source_volume: source.to_string(),
                size_bytes: source_record.capacity_bytes,
                copy_method: method_of(&stats, self.reflink),
                created_unix_nanos: meta::now_unix_nanos(),
                group: None,
            };
            meta::write(&record_path, &record)?;
            std::fs::rename(&scratch, &target)
                .map_err(VolumeError::io("moving snapshot into place", &target))?;
            layout::sync_dir(&self.layout.snapshots_dir())?;
            tracing::info!(snapshot = %name, volume = %source, copy_method = ?record.copy_method, ?stats, "snapshot created");
            Ok(record)
        })();
        match result {
            Ok(record) => Ok(SnapshotInfo {
                name: name.clone(),
                meta: record,
            }),
            Err(e) => {
                let _ = layout::remove_any(&scratch);
                if !target.exists() {
                    let _ = layout::remove_any(&record_path);
                }
                Err(e)
            }
        }
    }

    pub fn delete_snapshot(&self, name: &SnapshotName) -> Result<bool> {
        let _guard = self.lock(&[(snapshot_key(name), Access::Exclusive)])?;
        if let Some(SnapshotMeta {
            group: Some(group), ..
        }) = self.snapshot_record(name)?
        {
            // CSI: a snapshot with a group_snapshot_id cannot be deleted stand-alone.
            return Err(VolumeError::FailedPrecondition(format!(
                "snapshot {name} is a member of group snapshot {group}; delete the group instead"
            )));
        }
        let path = self.layout.snapshot(name);
        let existed = path.exists();
        let mut slot = None;
        if existed {
            let trash = self.layout.trash_slot(&format!("snap-{name}"));
            std::fs::rename(&path, &trash)
                .map_err(VolumeError::io("moving snapshot to trash", &path))?;
            layout::sync_dir(&self.layout.snapshots_dir())?;
            slot = Some(trash);
        }
        layout::remove_any(&self.layout.snapshot_meta(name))?;
        if let Some(slot) = slot
            && let Err(e) = layout::remove_any(&slot)
        {
            tracing::warn!(snapshot = %name, error = %e, "snapshot deleted; its data will be removed from the trash later");
        }
        if existed {
            tracing::info!(snapshot = %name, "snapshot deleted");
        }
        Ok(existed)
    }

    fn snapshot_record(&self, name: &SnapshotName) -> Result<Option<SnapshotMeta>> {
        if !self.layout.snapshot(name).is_dir() {
            return Ok(None);
        }
        Ok(
            meta::read::<SnapshotMeta>(&self.layout.snapshot_meta(name))?
                .filter(|record| self.member_visible(record)),
        )
    }

    pub fn get_snapshot(&self, name: &SnapshotName) -> Result<SnapshotInfo> {
        self.snapshot_record(name)?
            .map(|meta| SnapshotInfo {
                name: name.clone(),
                meta,
            })
            .ok_or_else(|| VolumeError::NotFound(format!("snapshot {name} does not exist")))
    }

    pub fn list_snapshots(
        &self,
        max_entries: usize,
        starting_token: &str,
        source: Option<&VolumeDir>,
    ) -> Result<(Vec<SnapshotInfo>, Option<String>)> {
        let mut names = sorted_names(&self.layout.snapshots_dir())?;
        let mut records = std::collections::HashMap::new();
        // Filter before paginating so that pages and tokens refer to matching entries.
        names.retain(|n| {
            let Ok(name) = SnapshotName::parse(n) else {
                return false;
            };
            match self.snapshot_record(&name) {
                Ok(Some(meta)) if source.is_none_or(|s| meta.source_volume == s.as_str()) => {
                    records.insert(n.clone(), SnapshotInfo { name, meta });
                    true
                }
                _ => false,
            }
        });
        let (page, next) = paginate(&names, max_entries, starting_token)?;
        let snapshots = page.iter().filter_map(|n| records.remove(*n)).collect();
        Ok((snapshots, next))
    }

    // ---- capacity and status ---------------------------------------------------

    pub fn capacity(&self) -> Result<CapacityInfo> {
        let promised = self.accounts().promised();
        self.capacity_with(promised)
    }

    /// The capacity figures beside `promised_bytes` (recorded and pending): one statvfs,
    /// no records read, so a capacity decision costs the same beside 2,000 volumes.
    fn capacity_with(&self, promised_bytes: i64) -> Result<CapacityInfo> {
        let root = self.layout.root();
        let stat = nix::sys::statvfs::statvfs(root).map_err(|e| VolumeError::Io {
            context: "statvfs of the export",
            path: root.to_owned(),
            source: e.into(),
        })?;
        let block = stat.fragment_size() as i64;
        let total_bytes = stat.blocks() as i64 * block;
        let free_bytes = stat.blocks_available() as i64 * block;
        let available_bytes = match self.config.capacity_policy {
            // What is not promised, and never more than what is really free.
            CapacityPolicy::Reserve => (total_bytes - promised_bytes).min(free_bytes).max(0),
            CapacityPolicy::Thin => free_bytes,
        };
        Ok(CapacityInfo {
            total_bytes,
            free_bytes,
            promised_bytes,
            available_bytes,
            policy: self.config.capacity_policy,
        })
    }

    pub fn status(&self) -> Result<StatusInfo> {
        let root = self.layout.root();
        let fs = nix::sys::statfs::statfs(root).map_err(|e| VolumeError::Io {
            context: "statfs of the export",
            path: root.to_owned(),
            source: e.into(),
        })?;
        Ok(StatusInfo {
            export_root: root.to_owned(),
            filesystem: filesystem_name(fs.filesystem_type().0 as i64),
            quota: self.quota.clone(),
            reflink: self.reflink,
            reflink_detail: if self.reflink {
                "snapshots and clones are reflinks (instant, blocks shared until written)".into()
            } else {
                "this filesystem cannot reflink: snapshots and clones are FULL COPIES (use XFS with reflink=1)".into()
            },
            volume_count: sorted_names(&self.layout.volumes_dir())?.len(),
            snapshot_count: sorted_names(&self.layout.snapshots_dir())?.len(),
            capacity_policy: self.config.capacity_policy,
        })
    }
}

/// Bytes that passed the capacity check but are not recorded on disk yet.
struct Reservation<'a> {
    store: &'a VolumeStore,
    bytes: i64,
}

impl Reservation<'_> {
    /// Ends the reservation and moves the volume's recorded share by `recorded_delta`
    /// in one step, so no capacity decision sees the bytes twice or not at all.
    fn settle(mut self, recorded_delta: i64) {
        let mut accounts = self.store.accounts();
        accounts.pending -= i128::from(self.bytes);
        accounts.recorded += i128::from(recorded_delta);
        self.bytes = 0;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes != 0 {
            self.store.accounts().pending -= i128::from(self.bytes);
        }
    }
}

/// What `dir` adds to the promised total: its record's capacity while the volume is a
/// directory in `volumes/` and its record reads, else nothing. The same rule at open
/// ([`count_records`]) and after each call, so the kept total equals a fresh count.
fn counted_bytes(layout: &Layout, dir: &VolumeDir) -> i64 {
    counted_record(layout, dir).map_or(0, |r| r.capacity_bytes)
}

fn counted_record(layout: &Layout, dir: &VolumeDir) -> Option<VolumeMeta> {
    if !layout.volume(dir).is_dir() {
        return None;
    }
    meta::read::<VolumeMeta>(&layout.volume_meta(dir))
        .ok()
        .flatten()
}

/// The promised total and the projects held by volumes in `volumes/`, from the records
/// (once, at open).
fn count_records(layout: &Layout) -> Result<(i128, BTreeSet<u32>)> {
    let mut promised = 0;
    let mut projects = BTreeSet::new();
    for name in sorted_names(&layout.volumes_dir())? {
        let Ok(dir) = VolumeDir::parse(&name) else {
            continue;
        };
        if let Some(record) = counted_record(layout, &dir) {
            promised += i128::from(record.capacity_bytes);
            if record.project_id != 0 {
                projects.insert(record.project_id);
            }
        }
    }
    Ok((promised, projects))
}

fn volume_key(dir: &VolumeDir) -> String {
    format!("volume {dir}")
}

fn snapshot_key(name: &SnapshotName) -> String {
    format!("snapshot {name}")
}

fn method_of(stats: &CopyStats, reflink_supported: bool) -> CopyMethod {
    if stats.copied_files > 0 || (!reflink_supported && stats.reflinked_files == 0) {
        CopyMethod::FullCopy
    } else {
        CopyMethod::Reflink
    }
}

fn check_range(required: i64, limit: i64) -> Result<()> {
    if required < 0 || limit < 0 {
        return Err(VolumeError::InvalidArgument(format!(
            "capacity range must not be negative (required {required}, limit {limit})"
        )));
    }
    if limit > 0 && required > limit {
        return Err(VolumeError::InvalidArgument(format!(
            "required bytes {required} exceed limit bytes {limit}"
        )));
    }
    if required > MAX_VOLUME_BYTES || limit > MAX_VOLUME_BYTES {
        return Err(VolumeError::OutOfRange(format!(
            "capacity {} bytes is beyond the largest supported size {MAX_VOLUME_BYTES}",
            required.max(limit)
        )));
    }
    Ok(())
}

/// The capacity of a new volume: the required size, else the source's, else the
/// default; never below the source's size, never above the limit.
pub fn choose_capacity(
    required: i64,
    limit: i64,
    source_bytes: Option<i64>,
    default: i64,
) -> Result<i64> {
    check_range(required, limit)?;
    let source = source_bytes.unwrap_or(0);
    if limit > 0 && source > limit {
        return Err(VolumeError::OutOfRange(format!(
            "the content source is {source} bytes, more than the limit of {limit} bytes"
        )));
    }
    if required > 0 && required < source {
        return Err(VolumeError::OutOfRange(format!(
            "the content source is {source} bytes; the new volume must be at least that large, not {required}"
        )));
    }
    let base = if required > 0 {
        required
    } else if source > 0 {
        source
    } else {
        default
    };
    Ok(if limit > 0 { base.min(limit) } else { base })
}

fn sorted_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(VolumeError::io("listing", dir))? {
        let entry = entry.map_err(VolumeError::io("listing", dir))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// One page of `names` (sorted) starting at the token's name; the token of the next
/// page is the first name not returned.
fn paginate<'a>(
    names: &'a [String],
    max_entries: usize,
    token: &str,
) -> Result<(Vec<&'a String>, Option<String>)> {
    let start = if token.is_empty() {
        0
    } else {
        let from = token
            .strip_prefix(TOKEN_PREFIX)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| VolumeError::BadToken(token.to_owned()))?;
        names.partition_point(|n| n.as_str() < from)
    };
    let rest = &names[start..];
    let take = if max_entries == 0 {
        rest.len()
    } else {
        max_entries.min(rest.len())
    };
    let next = rest.get(take).map(|n| format!("{TOKEN_PREFIX}{n}"));
    Ok((rest[..take].iter().collect(), next))
}

fn filesystem_name(magic: i64) -> String {
    match magic {
        0x5846_5342 => "xfs".into(),
        0xef53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x9123_683e => "btrfs".into(),
        0x794c_7630 => "overlayfs".into(),
        0x6969 => "nfs".into(),
        other => format!("unknown (magic {other:#x})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_choice_follows_the_csi_range_rules() {
        assert_eq!(choose_capacity(0, 0, None, 100).unwrap(), 100);
        assert_eq!(choose_capacity(0, 50, None, 100).unwrap(), 50);
        assert_eq!(choose_capacity(70, 0, None, 100).unwrap(), 70);
        assert_eq!(choose_capacity(0, 0, Some(30), 100).unwrap(), 30);
        assert!(matches!(
            choose_capacity(20, 0, Some(30), 100),
            Err(VolumeError::OutOfRange(_))
        ));
        assert!(matches!(
            choose_capacity(0, 20, Some(30), 100),
            Err(VolumeError::OutOfRange(_))
        ));
        assert!(matches!(
            choose_capacity(-1, 0, None, 100),
            Err(VolumeError::InvalidArgument(_))
        ));
        assert!(matches!(
            choose_capacity(10, 5, None, 100),
            Err(VolumeError::InvalidArgument(_))
        ));
        assert!(matches!(
            choose_capacity(i64::MAX, 0, None, 100),
            Err(VolumeError::OutOfRange(_))
        ));
    }

    #[test]
    fn pagination_walks_every_name_once_and_rejects_foreign_tokens() {
        let names: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = paginate(&names, 2, &token).unwrap();
            seen.extend(page.into_iter().cloned());
            match next {
                Some(t) => token = t,
                None => break,
            }
        }
        assert_eq!(seen, names);
        assert!(matches!(
            paginate(&names, 2, "invalid-token"),
            Err(VolumeError::BadToken(_))
        ));
        // A token whose entry was deleted meanwhile still continues in order.
        let (page, _) = paginate(&names, 0, "from:bb").unwrap();
        assert_eq!(page, vec!["c", "d", "e"]);
    }
}

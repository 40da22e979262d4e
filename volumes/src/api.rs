//! The gRPC server for `backend.proto`: parses requests into validated names at the
//! edge, runs the blocking [`VolumeStore`] work off the async runtime, and maps
//! [`VolumeError`] to status codes in one place.
//!
//! When an auth token is configured every call must carry `authorization: Bearer <token>`.

use crate::exports::{ExportControl, ExportTable, Publication};
use crate::meta::{CopyMethod, OnDelete, Source};
use crate::store::{
    CapacityInfo, CapacityPolicy, CreateVolume, DeleteOutcome, GroupInfo, SnapshotInfo, SourceRef,
    VolumeInfo,
};
use crate::{VolumeError, VolumeStore};
use common::ids::{IdError, RequestName, SnapshotName, VolumeDir};
use proto::backend::v1 as pb;
use proto::backend::v1::volumes_server::{Volumes, VolumesServer};
use std::sync::Arc;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

pub struct VolumeApi {
    slot: Arc<StoreSlot>,
}

/// Where the volume API finds its store: always there when serving a plain directory;
/// on a storage server only while it is active (the store opens after the replicated
/// filesystem is mounted and closes before it is unmounted). Calls meanwhile get
/// UNAVAILABLE, which the CSI sidecars retry — by then the VIP points at the new active.
///
/// Every call holds a [`StoreGuard`] until its blocking work is done (the guard moves
/// into that work, so a call whose client gave up still counts while its copy runs);
/// [`StoreSlot::close`] refuses new calls and waits for those guards, so the unmount
/// that follows never meets a clone still writing.
pub struct StoreSlot {
    store: std::sync::RwLock<Option<Arc<VolumeStore>>>,
    /// How many guards are out. Taken under the read lock of `store`, so a close (which
    /// takes the write lock) sees every call that found the store open.
    in_flight: Arc<tokio::sync::watch::Sender<usize>>,
    /// Who may be admitted and where export tables go; records only unless set. Lives
    /// as long as the slot, across store openings: the agent's export step and the
    /// publish calls share its lock.
    exports: std::sync::RwLock<Arc<ExportControl>>,
}

impl Default for StoreSlot {
    fn default() -> Self {
        Self {
            store: std::sync::RwLock::new(None),
            in_flight: Arc::new(tokio::sync::watch::Sender::new(0)),
            exports: std::sync::RwLock::new(Arc::new(ExportControl::records_only())),
        }
    }
}

/// The store, borrowed by one call; the slot counts it as in flight until dropped.
pub struct StoreGuard {
    store: Arc<VolumeStore>,
    in_flight: Arc<tokio::sync::watch::Sender<usize>>,
}

impl std::ops::Deref for StoreGuard {
    type Target = VolumeStore;

    fn deref(&self) -> &VolumeStore {
        &self.store
    }
}

impl Drop for StoreGuard {
    fn drop(&mut self) {
        self.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Volume calls were still running when a close's bound passed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{calls} volume API call(s) still running after {waited:?}; the store stays closed to new calls"
)]
pub struct StillInFlight {
    pub calls: usize,
    pub waited: std::time::Duration,
}

impl StoreSlot {
    pub fn with(store: Arc<VolumeStore>) -> Self {
        let slot = Self::default();
        slot.set(Some(store));
        slot
    }

    /// Opens (or, with `None`, closes without waiting) the slot.
    pub fn set(&self, store: Option<Arc<VolumeStore>>) {
        *self.store.write().unwrap_or_else(|p| p.into_inner()) = store;
    }

    /// The store for one call, counted as in flight until the guard drops.
    pub fn get(&self) -> Result<StoreGuard, Status> {
        let store = self.store.read().unwrap_or_else(|p| p.into_inner());
        let Some(store) = store.as_ref() else {
            return Err(Status::unavailable(
                "this storage server is not active (the export is not mounted here); retry at the VIP",
            ));
        };
        self.in_flight.send_modify(|n| *n += 1);
        Ok(StoreGuard {
            store: store.clone(),
            in_flight: self.in_flight.clone(),
        })
    }

    pub fn is_open(&self) -> bool {
        self.store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Sets the publish policy and export sink (before serving).
    pub fn set_exports(&self, control: ExportControl) {
        *self.exports.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(control);
    }

    pub fn exports(&self) -> Arc<ExportControl> {
        self.exports
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Derives the export table from the open store's records and applies it (the
    /// agent's export step on takeover; every publish and unpublish).
    pub async fn apply_exports(&self) -> Result<ExportTable, Status> {
        let store = self.get()?;
        self.exports().resync(store).await.map_err(to_status)
    }

    /// Calls holding the store now.
    pub fn in_flight(&self) -> usize {
        *self.in_flight.borrow()
    }

    /// Closes the slot: new calls get UNAVAILABLE at once; then waits, at most `within`,
    /// for the calls in flight to finish. Err when some still run: the caller must not
    /// unmount (the slot stays closed; closing again waits again).
    pub async fn close(&self, within: std::time::Duration) -> Result<(), StillInFlight> {
        self.set(None);
        let mut changes = self.in_flight.subscribe();
        let drained = tokio::time::timeout(within, async {
            // The sender lives in `self`, so waiting cannot fail; the borrow it returns
            // is dropped at once.
            changes.wait_for(|n| *n == 0).await.map(drop)
        })
        .await;
        match drained {
            Ok(_) => Ok(()),
            Err(_) => Err(StillInFlight {
                calls: self.in_flight(),
                waited: within,
            }),
        }
    }
}

/// Checks the bearer token on every call when one is configured.
#[derive(Clone)]
pub struct AuthCheck {
    expected: Option<Arc<str>>,
}

impl tonic::service::Interceptor for AuthCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong backend token")),
            None => Err(Status::unauthenticated(
                "missing 'authorization: Bearer <token>' for the backend API",
            )),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The tonic service to add to a server.
pub fn service(
    store: Arc<VolumeStore>,
    auth_token: Option<String>,
) -> InterceptedService<VolumesServer<VolumeApi>, AuthCheck> {
    service_for_slot(Arc::new(StoreSlot::with(store)), auth_token)
}

/// The tonic service over a store that comes and goes with the active role.
pub fn service_for_slot(
    slot: Arc<StoreSlot>,
    auth_token: Option<String>,
) -> InterceptedService<VolumesServer<VolumeApi>, AuthCheck> {
    VolumesServer::with_interceptor(
        VolumeApi { slot },
        AuthCheck {
            expected: auth_token.map(Arc::from),
        },
    )
}

/// The one place where volume errors become gRPC codes.
fn to_status(error: VolumeError) -> Status {
    match &error {
        VolumeError::InvalidArgument(m) => Status::invalid_argument(m.clone()),
        VolumeError::NotFound(m) => Status::not_found(m.clone()),
        VolumeError::AlreadyExists(m) => Status::already_exists(m.clone()),
        VolumeError::OutOfRange(m) => Status::out_of_range(m.clone()),
        VolumeError::ResourceExhausted(m) => Status::resource_exhausted(m.clone()),
        VolumeError::Busy(m) => Status::aborted(m.clone()),
        VolumeError::FailedPrecondition(m) => Status::failed_precondition(m.clone()),
        VolumeError::Unsettled(m) => Status::aborted(m.clone()),
        VolumeError::BadToken(_) => Status::aborted(error.to_string()),
        VolumeError::Io { .. } => {
            tracing::error!(error = %error, "filesystem operation failed");
            Status::internal(error.to_string())
        }
    }
}

/// A node id is a record key only (the address travels on its own), but it is bounded.
fn checked_node_id(node_id: &str) -> Result<String, Status> {
    if node_id.is_empty() {
        return Err(Status::invalid_argument("node_id is required"));
    }
    if node_id.len() > common::node_id::MAX_NODE_ID_LEN || node_id.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "node_id must be at most {} bytes without control characters",
            common::node_id::MAX_NODE_ID_LEN
        )));
    }
    Ok(node_id.to_owned())
}

fn bad_name(error: IdError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// Runs blocking store work on the blocking pool, counting it in the API metrics.
async fn blocking<T: Send + 'static>(
    method: &'static str,
    work: impl FnOnce() -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, Status> {
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("volume operation panicked: {e}")))
        .and_then(|r| r.map_err(to_status));
    let code = result.as_ref().err().map_or(tonic::Code::Ok, |s| s.code());
    metrics::record(method, code, started.elapsed());
    result
}

pub mod metrics;

fn on_delete_from_pb(value: i32) -> Result<OnDelete, Status> {
    match pb::OnDelete::try_from(value) {
        Ok(pb::OnDelete::Unspecified | pb::OnDelete::Delete) => Ok(OnDelete::Delete),
        Ok(pb::OnDelete::Retain) => Ok(OnDelete::Retain),
        Ok(pb::OnDelete::Archive) => Ok(OnDelete::Archive),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown on_delete value {value}"
        ))),
    }
}

fn on_delete_to_pb(value: OnDelete) -> pb::OnDelete {
    match value {
        OnDelete::Delete => pb::OnDelete::Delete,
        OnDelete::Retain => pb::OnDelete::Retain,
        OnDelete::Archive => pb::OnDelete::Archive,
    }
}

fn copy_method_to_pb(value: CopyMethod) -> pb::CopyMethod {
    match value {
        CopyMethod::None => pb::CopyMethod::None,
        CopyMethod::Reflink => pb::CopyMethod::Reflink,
        CopyMethod::FullCopy => pb::CopyMethod::FullCopy,
    }
}

fn policy_to_pb(value: CapacityPolicy) -> pb::CapacityPolicy {
    match value {
        CapacityPolicy::Reserve => pb::CapacityPolicy::Reserve,
        CapacityPolicy::Thin => pb::CapacityPolicy::Thin,
    }
}

fn timestamp(unix_nanos: i128) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (unix_nanos / 1_000_000_000) as i64,
        nanos: (unix_nanos % 1_000_000_000) as i32,
    }
}

fn volume_to_pb(info: VolumeInfo) -> pb::Volume {
    let mut volume = pb::Volume {
        dir: info.dir.to_string(),
        used_bytes: info.used_bytes.map_or(-1, |b| b as i64),
        mode: info.mode,
        quota_enforced: info.quota_enforced,
        condition: Some(pb::Condition {
            abnormal: info.abnormal.is_some(),
            message: info.abnormal.unwrap_or_else(|| "ok".into()),
        }),
        ..Default::default()
    };
    if let Some(record) = info.meta {
        volume.request_name = record.request_name;
        volume.capacity_bytes = record.capacity_bytes;
        volume.project_id = record.project_id;
        volume.on_delete = on_delete_to_pb(record.on_delete) as i32;
        volume.copy_method = copy_method_to_pb(record.copy_method) as i32;
        volume.created = Some(timestamp(record.created_unix_nanos));
        volume.source = record.source.map(|s| match s {
            Source::Snapshot(n) => pb::volume::Source::SourceSnapshot(n),
            Source::Volume(d) => pb::volume::Source::SourceVolume(d),
        });
    }
    volume
}

fn snapshot_to_pb(info: SnapshotInfo) -> pb::Snapshot {
    pb::Snapshot {
        name: info.name.to_string(),
        source_volume: info.meta.source_volume,
        size_bytes: info.meta.size_bytes,
        created: Some(timestamp(info.meta.created_unix_nanos)),
        copy_method: copy_method_to_pb(info.meta.copy_method) as i32,
        request_name: info.meta.request_name,
        group: info.meta.group.unwrap_or_default(),
    }
}

fn group_to_pb(info: GroupInfo) -> pb::GroupSnapshot {
    pb::GroupSnapshot {
        name: info.name.to_string(),
        request_name: info.meta.request_name,
        members: info.snapshots.into_iter().map(snapshot_to_pb).collect(),
        created: Some(timestamp(info.meta.created_unix_nanos)),
        attempts: info.meta.attempts,
    }
}

fn capacity_to_pb(c: CapacityInfo) -> pb::Capacity {
    pb::Capacity {
        total_bytes: c.total_bytes,
        free_bytes: c.free_bytes,
        promised_bytes: c.promised_bytes,
        available_bytes: c.available_bytes,
        policy: policy_to_pb(c.policy) as i32,
    }
}

fn health_report_to_pb(
    dir: String,
    problems: Vec<crate::health::HealthProblem>,
) -> pb::VolumeHealthReport {
    use crate::health::HealthStatus;
    let problems = problems
        .into_iter()
        .map(|p| pb::HealthProblem {
            status: match p.status {
                HealthStatus::Degraded => pb::HealthStatus::Degraded,
                HealthStatus::Inaccessible => pb::HealthStatus::Inaccessible,
                HealthStatus::DataLoss => pb::HealthStatus::DataLoss,
            } as i32,
            reason: p.reason.to_owned(),
            message: p.message,
        })
        .collect();
    pb::VolumeHealthReport { dir, problems }
}

fn page_size(max_entries: i32) -> Result<usize, Status> {
    usize::try_from(max_entries).map_err(|_| {
        Status::invalid_argument(format!(
            "max_entries must not be negative, got {max_entries}"
        ))
    })
}

#[tonic::async_trait]
impl Volumes for VolumeApi {
    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let r = request.into_inner();
        let dir = VolumeDir::parse(&r.dir).map_err(bad_name)?;
        // Kept in the record and shown by list calls: held to the CSI name rules the
        // controller already applies, so a caller with the token cannot store 4 MiB.
        RequestName::parse(&r.request_name).map_err(bad_name)?;
        if r.mode & !0o7777 != 0 {
            return Err(Status::invalid_argument(format!(
                "mode {:o} has bits beyond 7777",
                r.mode
            )));
        }
        let source = match r.source {
            None => None,
            Some(pb::create_volume_request::Source::SourceSnapshot(n)) => Some(
                SourceRef::Snapshot(SnapshotName::parse(&n).map_err(bad_name)?),
            ),
            Some(pb::create_volume_request::Source::SourceVolume(d)) => {
                Some(SourceRef::Volume(VolumeDir::parse(&d).map_err(bad_name)?))
            }
        };
        let create = CreateVolume {
            dir,
            request_name: r.request_name,
            required_bytes: r.required_bytes,
            limit_bytes: r.limit_bytes,
            on_delete: on_delete_from_pb(r.on_delete)?,
            mode: (r.mode != 0).then_some(r.mode),
            source,
        };
        let store = self.slot.get()?;
        let info = blocking("CreateVolume", move || store.create_volume(create)).await?;
        Ok(Response::new(volume_to_pb(info)))
    }

    async fn delete_volume(
        &self,
        request: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let dir = VolumeDir::parse(&request.into_inner().dir).map_err(bad_name)?;
        let store = self.slot.get()?;
        let outcome = blocking("DeleteVolume", move || store.delete_volume(&dir)).await?;
        // A volume deleted while published leaves the table (CSI COs unpublish first, so
        // this is normally a no-op apply).
        // The volume is gone either way: a failed apply is logged (the next publish,
        // unpublish or takeover applies the table again), not turned into an error.
        if outcome != DeleteOutcome::Absent
            && let Err(status) = self.slot.apply_exports().await
        {
            tracing::warn!(
                error = status.message(),
                "volume deleted, but the export table was not re-applied"
            );
        }
        let (applied, kept_at) = match outcome {
            DeleteOutcome::Absent => (pb::OnDelete::Unspecified, String::new()),
            DeleteOutcome::Deleted => (pb::OnDelete::Delete, String::new()),
            DeleteOutcome::Kept(policy, path) => {
                (on_delete_to_pb(policy), path.display().to_string())
            }
        };
        Ok(Response::new(pb::DeleteVolumeResponse {
            applied: applied as i32,
            kept_at,
        }))
    }

    async fn expand_volume(
        &self,
        request: Request<pb::ExpandVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let r = request.into_inner();
        let dir = VolumeDir::parse(&r.dir).map_err(bad_name)?;
        let store = self.slot.get()?;
        let info = blocking("ExpandVolume", move || {
            store.expand_volume(&dir, r.capacity_bytes, 0)
        })
        .await?;
        Ok(Response::new(volume_to_pb(info)))
    }

    async fn modify_volume(
        &self,
        request: Request<pb::ModifyVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let r = request.into_inner();
        let dir = VolumeDir::parse(&r.dir).map_err(bad_name)?;
        let on_delete = on_delete_from_pb(r.on_delete)?;
        let store = self.slot.get()?;
        let info = blocking("ModifyVolume", move || store.set_on_delete(&dir, on_delete)).await?;
        Ok(Response::new(volume_to_pb(info)))
    }

    async fn get_volume(
        &self,
        request: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let dir = VolumeDir::parse(&request.into_inner().dir).map_err(bad_name)?;
        let store = self.slot.get()?;
        let info = blocking("GetVolume", move || store.get_volume(&dir)).await?;
        Ok(Response::new(volume_to_pb(info)))
    }

    async fn list_volumes(
        &self,
        request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let r = request.into_inner();
        let max = page_size(r.max_entries)?;
        let store = self.slot.get()?;
        let (volumes, next) = blocking("ListVolumes", move || {
            store.list_volumes(max, &r.starting_token)
        })
        .await?;
        Ok(Response::new(pb::ListVolumesResponse {
            volumes: volumes.into_iter().map(volume_to_pb).collect(),
            next_token: next.unwrap_or_default(),
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let r = request.into_inner();
        let name = SnapshotName::parse(&r.name).map_err(bad_name)?;
        let source = VolumeDir::parse(&r.source_volume).map_err(bad_name)?;
        // Kept in the record and shown by list calls: held to the CSI name rules the
        // controller already applies, so a caller with the token cannot store 4 MiB.
        RequestName::parse(&r.request_name).map_err(bad_name)?;
        let store = self.slot.get()?;
        let info = blocking("CreateSnapshot", move || {
            store.create_snapshot(&name, &r.request_name, &source)
        })
        .await?;
        Ok(Response::new(snapshot_to_pb(info)))
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let name = SnapshotName::parse(&request.into_inner().name).map_err(bad_name)?;
        let store = self.slot.get()?;
        let existed = blocking("DeleteSnapshot", move || store.delete_snapshot(&name)).await?;
        Ok(Response::new(pb::DeleteSnapshotResponse { existed }))
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let name = SnapshotName::parse(&request.into_inner().name).map_err(bad_name)?;
        let store = self.slot.get()?;
        let info = blocking("GetSnapshot", move || store.get_snapshot(&name)).await?;
        Ok(Response::new(snapshot_to_pb(info)))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let r = request.into_inner();
        let max = page_size(r.max_entries)?;
        let source = if r.source_volume.is_empty() {
            None
        } else {
            Some(VolumeDir::parse(&r.source_volume).map_err(bad_name)?)
        };
        let store = self.slot.get()?;
        let (snapshots, next) = blocking("ListSnapshots", move || {
            store.list_snapshots(max, &r.starting_token, source.as_ref())
        })
        .await?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: snapshots.into_iter().map(snapshot_to_pb).collect(),
            next_token: next.unwrap_or_default(),
        }))
    }

    async fn get_capacity(
        &self,
        _: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::Capacity>, Status> {
        let store = self.slot.get()?;
        Ok(Response::new(capacity_to_pb(
            blocking("GetCapacity", move || store.capacity()).await?,
        )))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let store = self.slot.get()?;
        let s = blocking("Status", move || store.status()).await?;
        Ok(Response::new(pb::StatusResponse {
            export_root: s.export_root.display().to_string(),
            filesystem: s.filesystem,
            quota_enforced: s.quota.enforced,
            quota_detail: s.quota.detail,
            reflink: s.reflink,
            reflink_detail: s.reflink_detail,
            volume_count: s.volume_count as u32,
            snapshot_count: s.snapshot_count as u32,
            version: common::VERSION.to_owned(),
            capacity_policy: policy_to_pb(s.capacity_policy) as i32,
        }))
    }

    async fn volume_health(
        &self,
        request: Request<pb::VolumeHealthRequest>,
    ) -> Result<Response<pb::VolumeHealthReport>, Status> {
        let dir = VolumeDir::parse(&request.into_inner().dir).map_err(bad_name)?;
        let store = self.slot.get()?;
        let name = dir.to_string();
        let problems = blocking("VolumeHealth", move || store.volume_health(&dir)).await?;
        Ok(Response::new(health_report_to_pb(name, problems)))
    }

    async fn list_volume_health(
        &self,
        request: Request<pb::ListVolumeHealthRequest>,
    ) -> Result<Response<pb::ListVolumeHealthResponse>, Status> {
        let r = request.into_inner();
        let max = page_size(r.max_entries)?;
        let store = self.slot.get()?;
        let (volumes, next) = blocking("ListVolumeHealth", move || {
            store.list_volume_health(max, &r.starting_token)
        })
        .await?;
        Ok(Response::new(pb::ListVolumeHealthResponse {
            volumes: volumes
                .into_iter()
                .map(|(dir, problems)| health_report_to_pb(dir.to_string(), problems))
                .collect(),
            next_token: next.unwrap_or_default(),
        }))
    }
    async fn publish_volume(
        &self,
        request: Request<pb::PublishVolumeRequest>,
    ) -> Result<Response<pb::PublishVolumeResponse>, Status> {
        let r = request.into_inner();
        let dir = VolumeDir::parse(&r.dir).map_err(bad_name)?;
        let node_id = checked_node_id(&r.node_id)?;
        let address: std::net::IpAddr = r.address.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "address {:?} is not an IPv4 or IPv6 address",
                r.address
            ))
        })?;
        self.slot.exports().admits(address).map_err(to_status)?;
        let wanted = Publication {
            address,
            readonly: r.readonly,
            single_node: r.single_node,
        };
        let store = self.slot.get()?;
        blocking("PublishVolume", move || {
            store.publish(&dir, &node_id, wanted)
        })
        .await?;
        // Also after a repeat: the apply that followed the first attempt may have failed.
        self.slot.apply_exports().await?;
        Ok(Response::new(pb::PublishVolumeResponse {}))
    }

    async fn unpublish_volume(
        &self,
        request: Request<pb::UnpublishVolumeRequest>,
    ) -> Result<Response<pb::UnpublishVolumeResponse>, Status> {
        let r = request.into_inner();
        let dir = VolumeDir::parse(&r.dir).map_err(bad_name)?;
        let node_id = if r.node_id.is_empty() {
            None
        } else {
            Some(checked_node_id(&r.node_id)?)
        };
        let store = self.slot.get()?;
        blocking("UnpublishVolume", move || {
            store.unpublish(&dir, node_id.as_deref())
        })
        .await?;
        // Also when nothing was removed: a retry after a failed apply must converge.
        self.slot.apply_exports().await?;
        Ok(Response::new(pb::UnpublishVolumeResponse {}))
    }

    async fn create_group_snapshot(
        &self,
        request: Request<pb::CreateGroupSnapshotRequest>,
    ) -> Result<Response<pb::GroupSnapshot>, Status> {
        let r = request.into_inner();
        let name = SnapshotName::parse(&r.name).map_err(bad_name)?;
        // Kept in the record and shown by list calls: held to the CSI name rules the
        // controller already applies, so a caller with the token cannot store 4 MiB.
        RequestName::parse(&r.request_name).map_err(bad_name)?;
        let sources = r
            .source_volumes
            .iter()
            .map(|d| VolumeDir::parse(d).map_err(bad_name))
            .collect::<Result<Vec<_>, _>>()?;
        let store = self.slot.get()?;
        let info = blocking("CreateGroupSnapshot", move || {
            store.create_group_snapshot(&name, &r.request_name, &sources)
        })
        .await?;
        Ok(Response::new(group_to_pb(info)))
    }

    async fn delete_group_snapshot(
        &self,
        request: Request<pb::DeleteGroupSnapshotRequest>,
    ) -> Result<Response<pb::DeleteGroupSnapshotResponse>, Status> {
        let name = SnapshotName::parse(&request.into_inner().name).map_err(bad_name)?;
        let store = self.slot.get()?;
        let existed = blocking("DeleteGroupSnapshot", move || {
            store.delete_group_snapshot(&name)
        })
        .await?;
        Ok(Response::new(pb::DeleteGroupSnapshotResponse { existed }))
    }

    async fn get_group_snapshot(
        &self,
        request: Request<pb::GetGroupSnapshotRequest>,
    ) -> Result<Response<pb::GroupSnapshot>, Status> {
        let name = SnapshotName::parse(&request.into_inner().name).map_err(bad_name)?;
        let store = self.slot.get()?;
        let info = blocking("GetGroupSnapshot", move || store.get_group_snapshot(&name)).await?;
        Ok(Response::new(group_to_pb(info)))
    }
}

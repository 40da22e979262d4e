//! The CSI Controller service: CSI semantics (validation, idempotency, id formats,
//! error codes) over calls to the backend volume API.

use crate::backend::BackendClient;
use crate::capabilities;
use crate::params::{self, ExportConfig, OnDelete, ParamError};
use common::ids::{
    self, ClusterId, IdError, RequestName, SnapshotId, SnapshotName, VolumeDir, VolumeId,
};
use proto::backend::v1 as be;
use proto::csi::v1 as csi;
use proto::csi::v1::controller_server::Controller;
use proto::csi::v1::controller_service_capability::rpc::Type as Rpc;
use std::collections::HashMap;
use std::future::Future;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

/// Volume context keys the node plugin reads.
pub const CONTEXT_SERVER: &str = "server";
pub const CONTEXT_SHARE: &str = "share";

pub struct ControllerService {
    cluster: ClusterId,
    export: ExportConfig,
    backend: BackendClient,
}

impl ControllerService {
    pub fn new(cluster: ClusterId, export: ExportConfig, backend: BackendClient) -> Self {
        Self {
            cluster,
            export,
            backend,
        }
    }

    fn volume_id(&self, dir: &str) -> Result<String, Status> {
        let dir = VolumeDir::parse(dir)
            .map_err(|e| Status::internal(format!("backend returned a bad directory name: {e}")))?;
        Ok(VolumeId::new(self.cluster.clone(), dir).to_string())
    }

    fn snapshot_id(&self, name: &str) -> Result<String, Status> {
        let name = SnapshotName::parse(name)
            .map_err(|e| Status::internal(format!("backend returned a bad snapshot name: {e}")))?;
        Ok(SnapshotId::new(self.cluster.clone(), name).to_string())
    }

    fn volume_context(&self) -> HashMap<String, String> {
        let mut context = HashMap::new();
        if let Some(server) = &self.export.server {
            context.insert(CONTEXT_SERVER.to_string(), server.clone());
            context.insert(CONTEXT_SHARE.to_string(), self.export.share.clone());
        }
        context
    }

    fn to_csi_volume(&self, volume: be::Volume) -> Result<csi::Volume, Status> {
        let content_source = match &volume.source {
            None => None,
            Some(be::volume::Source::SourceSnapshot(name)) => Some(csi::VolumeContentSource {
                r#type: Some(csi::volume_content_source::Type::Snapshot(
                    csi::volume_content_source::SnapshotSource {
                        snapshot_id: self.snapshot_id(name)?,
                    },
                )),
            }),
            Some(be::volume::Source::SourceVolume(dir)) => Some(csi::VolumeContentSource {
                r#type: Some(csi::volume_content_source::Type::Volume(
                    csi::volume_content_source::VolumeSource {
                        volume_id: self.volume_id(dir)?,
                    },
                )),
            }),
        };
        Ok(csi::Volume {
            capacity_bytes: volume.capacity_bytes,
            volume_id: self.volume_id(&volume.dir)?,
            volume_context: self.volume_context(),
            content_source,
            accessible_topology: Vec::new(),
        })
    }

    fn to_csi_snapshot(&self, snapshot: be::Snapshot) -> Result<csi::Snapshot, Status> {
        Ok(csi::Snapshot {
            size_bytes: snapshot.size_bytes,
            snapshot_id: self.snapshot_id(&snapshot.name)?,
            source_volume_id: self.volume_id(&snapshot.source_volume)?,
            creation_time: snapshot.created,
            ready_to_use: true,
            group_snapshot_id: String::new(),
        })
    }

    /// Parses a volume id for a call that must find the volume.
    fn existing_volume(&self, id: &str) -> Result<VolumeDir, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        VolumeId::parse(id, &self.cluster)
            .map(|v| v.dir)
            .map_err(id_status)
    }

    async fn create_volume(
        &self,
        r: csi::CreateVolumeRequest,
    ) -> Result<csi::CreateVolumeResponse, Status> {
        let name =
            RequestName::parse(&r.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        capabilities::check_all(&r.volume_capabilities).map_err(Status::invalid_argument)?;
        let params =
            params::parse_volume_params(&r.parameters, &self.export).map_err(param_status)?;
        let mutable_on_delete =
            params::parse_mutable_params(&r.mutable_parameters).map_err(param_status)?;
        let dir = match &params.sub_dir {
            Some(template) => {
                params::render_sub_dir(template, &params, &self.cluster).map_err(param_status)?
            }
            None => VolumeDir::parse(&ids::dir_name_for(&self.cluster, &name))
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        };
        let source = match r.volume_content_source.and_then(|s| s.r#type) {
            None => None,
            Some(csi::volume_content_source::Type::Snapshot(s)) => {
                let id = SnapshotId::parse(&s.snapshot_id, &self.cluster)
                    .map_err(|e| source_status("snapshot", e))?;
                Some(be::create_volume_request::Source::SourceSnapshot(
                    id.name.to_string(),
                ))
            }
            Some(csi::volume_content_source::Type::Volume(v)) => {
                let id = VolumeId::parse(&v.volume_id, &self.cluster)
                    .map_err(|e| source_status("volume", e))?;
                Some(be::create_volume_request::Source::SourceVolume(
                    id.dir.to_string(),
                ))
            }
        };
        let range = r.capacity_range.unwrap_or_default();
        let request = be::CreateVolumeRequest {
            dir: dir.to_string(),
            request_name: name.to_string(),
            required_bytes: range.required_bytes,
            limit_bytes: range.limit_bytes,
            on_delete: on_delete_to_backend(mutable_on_delete.unwrap_or(params.on_delete)) as i32,
            mode: params.mount_permissions.unwrap_or(0),
            source,
        };
        let volume = self
            .backend
            .clone()
            .create_volume(request)
            .await
            .map_err(backend_status)?
            .into_inner();
        tracing::info!(volume_id = %self.volume_id(&volume.dir)?, capacity = volume.capacity_bytes, "volume ready");
        Ok(csi::CreateVolumeResponse {
            volume: Some(self.to_csi_volume(volume)?),
        })
    }

    async fn delete_volume(
        &self,
        r: csi::DeleteVolumeRequest,
    ) -> Result<csi::DeleteVolumeResponse, Status> {
        if r.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        let dir = match VolumeId::parse(&r.volume_id, &self.cluster) {
            Ok(id) => id.dir,
            // CSI: deleting a volume that does not exist succeeds. An id hanfs never made
            // for this cluster names no volume of ours.
            Err(e) if e.means_not_found() => {
                tracing::warn!(error = %e, "delete of a volume id this cluster never made: nothing to do");
                return Ok(csi::DeleteVolumeResponse {});
            }
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        };
        let outcome = self
            .backend
            .clone()
            .delete_volume(be::DeleteVolumeRequest {
                dir: dir.to_string(),
            })
            .await
            .map_err(backend_status)?
            .into_inner();
        if !outcome.kept_at.is_empty() {
            tracing::info!(kept_at = %outcome.kept_at, "volume deleted, data kept by its onDelete policy");
        }
        Ok(csi::DeleteVolumeResponse {})
    }

    async fn get_backend_volume(&self, dir: &VolumeDir) -> Result<be::Volume, Status> {
        Ok(self
            .backend
            .clone()
            .get_volume(be::GetVolumeRequest {
                dir: dir.to_string(),
            })
            .await
            .map_err(backend_status)?
            .into_inner())
    }

    async fn validate(
        &self,
        r: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse, Status> {
        let dir = self.existing_volume(&r.volume_id)?;
        if r.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument(
                "volume_capabilities must not be empty",
            ));
        }
        self.get_backend_volume(&dir).await?;
        let problem = capabilities::check_all(&r.volume_capabilities)
            .err()
            .or_else(|| {
                params::parse_volume_params(&r.parameters, &self.export)
                    .err()
                    .map(|e| e.to_string())
            })
            .or_else(|| {
                params::parse_mutable_params(&r.mutable_parameters)
                    .err()
                    .map(|e| e.to_string())
            });
        Ok(match problem {
            Some(message) => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message,
            },
            None => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                    mutable_parameters: r.mutable_parameters,
                }),
                message: String::new(),
            },
        })
    }

    async fn list_volumes(
        &self,
        r: csi::ListVolumesRequest,
    ) -> Result<csi::ListVolumesResponse, Status> {
        if r.max_entries < 0 {
            return Err(Status::invalid_argument(format!(
                "max_entries must not be negative, got {}",
                r.max_entries
            )));
        }
        let page = self
            .backend
            .clone()
            .list_volumes(be::ListVolumesRequest {
                max_entries: r.max_entries,
                starting_token: r.starting_token,
            })
            .await
            .map_err(backend_status)?
            .into_inner();
        let mut entries = Vec::with_capacity(page.volumes.len());
        for volume in page.volumes {
            let condition = condition_of(&volume);
            entries.push(csi::list_volumes_response::Entry {
                volume: Some(self.to_csi_volume(volume)?),
                status: Some(csi::list_volumes_response::VolumeStatus {
                    published_node_ids: Vec::new(),
                    volume_condition: Some(condition),
                }),
            });
        }
        Ok(csi::ListVolumesResponse {
            entries,
            next_token: page.next_token,
        })
    }

    async fn get_capacity(
        &self,
        r: csi::GetCapacityRequest,
    ) -> Result<csi::GetCapacityResponse, Status> {
        if !r.volume_capabilities.is_empty()
            && let Err(reason) = capabilities::check_all(&r.volume_capabilities)
        {
            // CSI: capacity for capabilities we cannot serve is zero, not an error.
            tracing::debug!(%reason, "capacity asked for an unsupported capability");
            return Ok(csi::GetCapacityResponse {
                available_capacity: 0,
                ..Default::default()
            });
        }
        params::parse_volume_params(&r.parameters, &self.export).map_err(param_status)?;
        let capacity = self
            .backend
            .clone()
            .get_capacity(be::GetCapacityRequest {})
            .await
            .map_err(backend_status)?
            .into_inner();
        Ok(csi::GetCapacityResponse {
            available_capacity: capacity.available_bytes,
            maximum_volume_size: Some(capacity.available_bytes),
            minimum_volume_size: Some(0),
        })
    }

    async fn create_snapshot(
        &self,
        r: csi::CreateSnapshotRequest,
    ) -> Result<csi::CreateSnapshotResponse, Status> {
        let name =
            RequestName::parse(&r.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if r.source_volume_id.is_empty() {
            return Err(Status::invalid_argument("source_volume_id is required"));
        }
        params::check_snapshot_params(&r.parameters).map_err(param_status)?;
        let source = self.existing_volume(&r.source_volume_id)?;
        let snapshot_name = SnapshotName::parse(&ids::dir_name_for(&self.cluster, &name))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let snapshot = self
            .backend
            .clone()
            .create_snapshot(be::CreateSnapshotRequest {
                name: snapshot_name.to_string(),
                request_name: name.to_string(),
                source_volume: source.to_string(),
            })
            .await
            .map_err(backend_status)?
            .into_inner();
        Ok(csi::CreateSnapshotResponse {
            snapshot: Some(self.to_csi_snapshot(snapshot)?),
        })
    }

    async fn delete_snapshot(
        &self,
        r: csi::DeleteSnapshotRequest,
    ) -> Result<csi::DeleteSnapshotResponse, Status> {
        if r.snapshot_id.is_empty() {
            return Err(Status::invalid_argument("snapshot_id is required"));
        }
        let name = match SnapshotId::parse(&r.snapshot_id, &self.cluster) {
            Ok(id) => id.name,
            Err(e) if e.means_not_found() => {
                tracing::warn!(error = %e, "delete of a snapshot id this cluster never made: nothing to do");
                return Ok(csi::DeleteSnapshotResponse {});
            }
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        };
        self.backend
            .clone()
            .delete_snapshot(be::DeleteSnapshotRequest {
                name: name.to_string(),
            })
            .await
            .map_err(backend_status)?;
        Ok(csi::DeleteSnapshotResponse {})
    }

    async fn list_snapshots(
        &self,
        r: csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse, Status> {
        if r.max_entries < 0 {
            return Err(Status::invalid_argument(format!(
                "max_entries must not be negative, got {}",
                r.max_entries
            )));
        }
        let empty = csi::ListSnapshotsResponse::default();
        if !r.snapshot_id.is_empty() {
            // CSI: an unknown snapshot id yields an empty list, not an error.
            let Ok(id) = SnapshotId::parse(&r.snapshot_id, &self.cluster) else {
                return Ok(empty);
            };
            let found = self
                .backend
                .clone()
                .get_snapshot(be::GetSnapshotRequest {
                    name: id.name.to_string(),
                })
                .await;
            let snapshot = match found {
                Ok(s) => s.into_inner(),
                Err(status) if status.code() == Code::NotFound => return Ok(empty),
                Err(status) => return Err(backend_status(status)),
            };
            let wanted_source = &r.source_volume_id;
            if !wanted_source.is_empty()
                && *wanted_source != self.volume_id(&snapshot.source_volume)?
            {
                return Ok(empty);
            }
            return Ok(csi::ListSnapshotsResponse {
                entries: vec![csi::list_snapshots_response::Entry {
                    snapshot: Some(self.to_csi_snapshot(snapshot)?),
                }],
                next_token: String::new(),
            });
        }
        let source_volume = if r.source_volume_id.is_empty() {
            String::new()
        } else {
            match VolumeId::parse(&r.source_volume_id, &self.cluster) {
                Ok(id) => id.dir.to_string(),
                Err(_) => return Ok(empty),
            }
        };
        let page = self
            .backend
            .clone()
            .list_snapshots(be::ListSnapshotsRequest {
                max_entries: r.max_entries,
                starting_token: r.starting_token,
                source_volume,
            })
            .await
            .map_err(backend_status)?
            .into_inner();
        let entries = page
            .snapshots
            .into_iter()
            .map(|s| {
                Ok(csi::list_snapshots_response::Entry {
                    snapshot: Some(self.to_csi_snapshot(s)?),
                })
            })
            .collect::<Result<_, Status>>()?;
        Ok(csi::ListSnapshotsResponse {
            entries,
            next_token: page.next_token,
        })
    }

    async fn get_snapshot(
        &self,
        r: csi::GetSnapshotRequest,
    ) -> Result<csi::GetSnapshotResponse, Status> {
        if r.snapshot_id.is_empty() {
            return Err(Status::invalid_argument("snapshot_id is required"));
        }
        let id = SnapshotId::parse(&r.snapshot_id, &self.cluster).map_err(id_status)?;
        let snapshot = self
            .backend
            .clone()
            .get_snapshot(be::GetSnapshotRequest {
                name: id.name.to_string(),
            })
            .await
            .map_err(backend_status)?
            .into_inner();
        Ok(csi::GetSnapshotResponse {
            snapshot: Some(self.to_csi_snapshot(snapshot)?),
        })
    }

    async fn expand(
        &self,
        r: csi::ControllerExpandVolumeRequest,
    ) -> Result<csi::ControllerExpandVolumeResponse, Status> {
        let dir = self.existing_volume(&r.volume_id)?;
        let range = r
            .capacity_range
            .ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
        if range.required_bytes < 0 || range.limit_bytes < 0 {
            return Err(Status::invalid_argument(
                "capacity_range must not be negative",
            ));
        }
        if range.limit_bytes > 0 && range.required_bytes > range.limit_bytes {
            return Err(Status::invalid_argument(
                "required_bytes exceeds limit_bytes",
            ));
        }
        let volume = self
            .backend
            .clone()
            .expand_volume(be::ExpandVolumeRequest {
                dir: dir.to_string(),
                capacity_bytes: range.required_bytes,
            })
            .await
            .map_err(backend_status)?
            .into_inner();
        if range.limit_bytes > 0 && volume.capacity_bytes > range.limit_bytes {
            return Err(Status::out_of_range(format!(
                "volume is already {} bytes, more than limit_bytes {} (volumes do not shrink)",
                volume.capacity_bytes, range.limit_bytes
            )));
        }
        // The quota takes effect on the server at once: no node step (DESIGN.md §3).
        Ok(csi::ControllerExpandVolumeResponse {
            capacity_bytes: volume.capacity_bytes,
            node_expansion_required: false,
        })
    }

    async fn get_volume(
        &self,
        r: csi::ControllerGetVolumeRequest,
    ) -> Result<csi::ControllerGetVolumeResponse, Status> {
        let dir = self.existing_volume(&r.volume_id)?;
        let volume = self.get_backend_volume(&dir).await?;
        let condition = condition_of(&volume);
        Ok(csi::ControllerGetVolumeResponse {
            volume: Some(self.to_csi_volume(volume)?),
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids: Vec::new(),
                volume_condition: Some(condition),
            }),
        })
    }

    async fn modify(
        &self,
        r: csi::ControllerModifyVolumeRequest,
    ) -> Result<csi::ControllerModifyVolumeResponse, Status> {
        let dir = self.existing_volume(&r.volume_id)?;
        let on_delete =
            params::parse_mutable_params(&r.mutable_parameters).map_err(param_status)?;
        match on_delete {
            Some(on_delete) => {
                self.backend
                    .clone()
                    .modify_volume(be::ModifyVolumeRequest {
                        dir: dir.to_string(),
                        on_delete: on_delete_to_backend(on_delete) as i32,
                    })
                    .await
                    .map_err(backend_status)?;
            }
            // Nothing to change, but the volume must exist.
            None => {
                self.get_backend_volume(&dir).await?;
            }
        }
        Ok(csi::ControllerModifyVolumeResponse {})
    }
}

fn on_delete_to_backend(value: OnDelete) -> be::OnDelete {
    match value {
        OnDelete::Delete => be::OnDelete::Delete,
        OnDelete::Retain => be::OnDelete::Retain,
        OnDelete::Archive => be::OnDelete::Archive,
    }
}

fn condition_of(volume: &be::Volume) -> csi::VolumeCondition {
    let condition = volume.condition.clone().unwrap_or_default();
    csi::VolumeCondition {
        abnormal: condition.abnormal,
        message: condition.message,
    }
}

/// An id that cannot name one of our volumes: NOT_FOUND when it is simply not ours,
/// INVALID_ARGUMENT when it is malformed (traversal, bad characters, too long).
fn id_status(error: IdError) -> Status {
    if error.means_not_found() {
        Status::not_found(error.to_string())
    } else {
        Status::invalid_argument(error.to_string())
    }
}

fn source_status(kind: &str, error: IdError) -> Status {
    if error.means_not_found() {
        Status::not_found(format!("content source {kind} not found: {error}"))
    } else {
        Status::invalid_argument(format!("content source {kind}: {error}"))
    }
}

fn param_status(error: ParamError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// Backend answers keep their code (it already speaks CSI's codes); an unreachable
/// backend says where it tried.
fn backend_status(status: Status) -> Status {
    match status.code() {
        Code::Unavailable | Code::Unknown => Status::unavailable(format!(
            "backend volume API unavailable: {}",
            status.message()
        )),
        code => Status::new(code, status.message().to_owned()),
    }
}

/// Runs one RPC inside a span and logs its failure with the code.
async fn traced<T>(
    span: tracing::Span,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    async move {
        match work.await {
            Ok(response) => Ok(Response::new(response)),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "request failed");
                Err(status)
            }
        }
    }
    .instrument(span)
    .await
}

fn rpc_capability(rpc: Rpc) -> csi::ControllerServiceCapability {
    csi::ControllerServiceCapability {
        r#type: Some(csi::controller_service_capability::Type::Rpc(
            csi::controller_service_capability::Rpc { r#type: rpc as i32 },
        )),
    }
}

/// What the controller advertises (DESIGN.md §3).
pub const CAPABILITIES: &[Rpc] = &[
    Rpc::CreateDeleteVolume,
    Rpc::CreateDeleteSnapshot,
    Rpc::ListSnapshots,
    // GET_SNAPSHOT (alpha) stays unadvertised: csi-sanity v5.4.0 fails on capabilities it
    // does not know. The GetSnapshot RPC is served all the same.
    Rpc::CloneVolume,
    Rpc::ExpandVolume,
    Rpc::ListVolumes,
    Rpc::GetCapacity,
    Rpc::GetVolume,
    Rpc::VolumeCondition,
    Rpc::SingleNodeMultiWriter,
    Rpc::ModifyVolume,
];

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let r = request.into_inner();
        traced(
            tracing::info_span!("CreateVolume", name = %r.name),
            self.create_volume(r),
        )
        .await
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let r = request.into_inner();
        traced(
            tracing::info_span!("DeleteVolume", volume_id = %r.volume_id),
            self.delete_volume(r),
        )
        .await
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let r = request.into_inner();
        traced(
            tracing::info_span!("ValidateVolumeCapabilities", volume_id = %r.volume_id),
            self.validate(r),
        )
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        traced(
            tracing::debug_span!("ListVolumes"),
            self.list_volumes(request.into_inner()),
        )
        .await
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        traced(
            tracing::debug_span!("GetCapacity"),
            self.get_capacity(request.into_inner()),
        )
        .await
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities: CAPABILITIES.iter().copied().map(rpc_capability).collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let r = request.into_inner();
        traced(
            tracing::info_span!("CreateSnapshot", name = %r.name, source = %r.source_volume_id),
            self.create_snapshot(r),
        )
        .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let r = request.into_inner();
        traced(
            tracing::info_span!("DeleteSnapshot", snapshot_id = %r.snapshot_id),
            self.delete_snapshot(r),
        )
        .await
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        traced(
            tracing::debug_span!("ListSnapshots"),
            self.list_snapshots(request.into_inner()),
        )
        .await
    }

    async fn get_snapshot(
        &self,
        request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        let r = request.into_inner();
        traced(
            tracing::debug_span!("GetSnapshot", snapshot_id = %r.snapshot_id),
            self.get_snapshot(r),
        )
        .await
    }

    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let r = request.into_inner();
        traced(
            tracing::info_span!("ControllerExpandVolume", volume_id = %r.volume_id),
            self.expand(r),
        )
        .await
    }

    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let r = request.into_inner();
        traced(
            tracing::debug_span!("ControllerGetVolume", volume_id = %r.volume_id),
            self.get_volume(r),
        )
        .await
    }

    async fn controller_modify_volume(
        &self,
        request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        let r = request.into_inner();
        traced(
            tracing::info_span!("ControllerModifyVolume", volume_id = %r.volume_id),
            self.modify(r),
        )
        .await
    }
}

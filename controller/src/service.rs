//! The CSI Controller service: CSI semantics (validation, idempotency, id formats,
//! error codes) over calls to the backend volume API.

use crate::backend::{self, BackendClient};
use crate::capabilities;
use crate::error::ControllerError;
use crate::params::{self, ExportConfig, OnDelete};
use common::ids::{self, ClusterId, RequestName, SnapshotId, SnapshotName, VolumeDir, VolumeId};
use proto::backend::v1 as be;
use proto::csi::v1 as csi;
use proto::csi::v1::controller_server::Controller;
use proto::csi::v1::controller_service_capability::rpc::Type as Rpc;
use std::collections::HashMap;
use tonic::{Code, Request, Response, Status};

/// Volume context keys the node plugin reads.
pub const CONTEXT_SERVER: &str = "server";
pub const CONTEXT_SHARE: &str = "share";

mod publish;

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

    fn volume_id(&self, dir: &str) -> Result<String, ControllerError> {
        let dir = VolumeDir::parse(dir)
            .map_err(|e| ControllerError::BadBackendReply(format!("a bad directory name: {e}")))?;
        Ok(VolumeId::new(self.cluster.clone(), dir).to_string())
    }

    fn snapshot_id(&self, name: &str) -> Result<String, ControllerError> {
        let name = SnapshotName::parse(name)
            .map_err(|e| ControllerError::BadBackendReply(format!("a bad snapshot name: {e}")))?;
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

    fn to_csi_volume(&self, volume: be::Volume) -> Result<csi::Volume, ControllerError> {
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

    fn to_csi_snapshot(&self, snapshot: be::Snapshot) -> Result<csi::Snapshot, ControllerError> {
        Ok(csi::Snapshot {
            size_bytes: snapshot.size_bytes,
            snapshot_id: self.snapshot_id(&snapshot.name)?,
            source_volume_id: self.volume_id(&snapshot.source_volume)?,
            creation_time: snapshot.created,
            ready_to_use: true,
            group_snapshot_id: crate::group::group_id_of(&self.cluster, &snapshot.group)?,
            // Every node mounts the one export: a snapshot is usable from everywhere,
            // which CSI v1.13 spells as no topology (and no
            // SNAPSHOT_ACCESSIBILITY_CONSTRAINTS plugin capability).
            accessible_topology: Vec::new(),
        })
    }

    /// Parses a volume id for a call that must find the volume.
    fn existing_volume(&self, id: &str) -> Result<VolumeDir, ControllerError> {
        if id.is_empty() {
            return Err(ControllerError::Missing("volume_id"));
        }
        Ok(VolumeId::parse(id, &self.cluster)?.dir)
    }

    async fn create_volume(
        &self,
        r: csi::CreateVolumeRequest,
    ) -> Result<csi::CreateVolumeResponse, ControllerError> {
        let name = RequestName::parse(&r.name).map_err(ControllerError::Name)?;
        capabilities::check_all(&r.volume_capabilities).map_err(ControllerError::Capability)?;
        let params = params::parse_volume_params(&r.parameters, &self.export)?;
        let mutable_on_delete = params::parse_mutable_params(&r.mutable_parameters)?;
        let dir = match &params.sub_dir {
            Some(template) => params::render_sub_dir(template, &params, &self.cluster)?,
            None => VolumeDir::parse(&ids::dir_name_for(&self.cluster, &name))
                .map_err(ControllerError::Name)?,
        };
        // A content source that names neither a snapshot nor a volume is a broken
        // request, not a request for an empty volume.
        if r.volume_content_source
            .as_ref()
            .is_some_and(|s| s.r#type.is_none())
        {
            return Err(ControllerError::Missing(
                "volume_content_source.type (a snapshot or a volume)",
            ));
        }
        let source = match r.volume_content_source.and_then(|s| s.r#type) {
            None => None,
            Some(csi::volume_content_source::Type::Snapshot(s)) => {
                let id = SnapshotId::parse(&s.snapshot_id, &self.cluster).map_err(|source| {
                    ControllerError::ContentSource {
                        kind: "snapshot",
                        source,
                    }
                })?;
                Some(be::create_volume_request::Source::SourceSnapshot(
                    id.name.to_string(),
                ))
            }
            Some(csi::volume_content_source::Type::Volume(v)) => {
                let id = VolumeId::parse(&v.volume_id, &self.cluster).map_err(|source| {
                    ControllerError::ContentSource {
                        kind: "volume",
                        source,
                    }
                })?;
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
        let volume = backend::idempotent(
            &self.backend,
            "CreateVolume",
            request,
            |mut c, r| async move { c.create_volume(r).await },
        )
        .await?
        .into_inner();
        tracing::info!(volume_id = %self.volume_id(&volume.dir)?, capacity = volume.capacity_bytes, "volume ready");
        Ok(csi::CreateVolumeResponse {
            volume: Some(self.to_csi_volume(volume)?),
        })
    }

    async fn delete_volume(
        &self,
        r: csi::DeleteVolumeRequest,
    ) -> Result<csi::DeleteVolumeResponse, ControllerError> {
        if r.volume_id.is_empty() {
            return Err(ControllerError::Missing("volume_id"));
        }
        let dir = match VolumeId::parse(&r.volume_id, &self.cluster) {
            Ok(id) => id.dir,
            // CSI: deleting a volume that does not exist succeeds. An id hanfs never made
            // for this cluster names no volume of ours.
            Err(e) if e.means_not_found() => {
                tracing::warn!(error = %e, "delete of a volume id this cluster never made: nothing to do");
                return Ok(csi::DeleteVolumeResponse {});
            }
            Err(e) => return Err(e.into()),
        };
        let request = be::DeleteVolumeRequest {
            dir: dir.to_string(),
        };
        let outcome = backend::idempotent(
            &self.backend,
            "DeleteVolume",
            request,
            |mut c, r| async move { c.delete_volume(r).await },
        )
        .await?
        .into_inner();
        if !outcome.kept_at.is_empty() {
            tracing::info!(kept_at = %outcome.kept_at, "volume deleted, data kept by its onDelete policy");
        }
        Ok(csi::DeleteVolumeResponse {})
    }

    async fn get_backend_volume(&self, dir: &VolumeDir) -> Result<be::Volume, ControllerError> {
        Ok(self
            .backend
            .clone()
            .get_volume(be::GetVolumeRequest {
                dir: dir.to_string(),
            })
            .await?
            .into_inner())
    }

    async fn validate(
        &self,
        r: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse, ControllerError> {
        let dir = self.existing_volume(&r.volume_id)?;
        if r.volume_capabilities.is_empty() {
            return Err(ControllerError::Missing("volume_capabilities"));
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
    ) -> Result<csi::ListVolumesResponse, ControllerError> {
        if r.max_entries < 0 {
            return Err(ControllerError::NegativeMaxEntries(r.max_entries));
        }
        let page = self
            .backend
            .clone()
            .list_volumes(be::ListVolumesRequest {
                max_entries: r.max_entries,
                starting_token: r.starting_token,
            })
            .await?
            .into_inner();
        let mut entries = Vec::with_capacity(page.volumes.len());
        for volume in page.volumes {
            entries.push(csi::list_volumes_response::Entry {
                volume: Some(self.to_csi_volume(volume)?),
                status: Some(csi::list_volumes_response::VolumeStatus {
                    published_node_ids: Vec::new(),
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
    ) -> Result<csi::GetCapacityResponse, ControllerError> {
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
        params::parse_volume_params(&r.parameters, &self.export)?;
        let capacity = self
            .backend
            .clone()
            .get_capacity(be::GetCapacityRequest {})
            .await?
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
    ) -> Result<csi::CreateSnapshotResponse, ControllerError> {
        let name = RequestName::parse(&r.name).map_err(ControllerError::Name)?;
        if r.source_volume_id.is_empty() {
            return Err(ControllerError::Missing("source_volume_id"));
        }
        params::check_snapshot_params(&r.parameters)?;
        let source = self.existing_volume(&r.source_volume_id)?;
        let snapshot_name = SnapshotName::parse(&ids::dir_name_for(&self.cluster, &name))
            .map_err(ControllerError::Name)?;
        let request = be::CreateSnapshotRequest {
            name: snapshot_name.to_string(),
            request_name: name.to_string(),
            source_volume: source.to_string(),
        };
        let snapshot = backend::idempotent(
            &self.backend,
            "CreateSnapshot",
            request,
            |mut c, r| async move { c.create_snapshot(r).await },
        )
        .await?
        .into_inner();
        Ok(csi::CreateSnapshotResponse {
            snapshot: Some(self.to_csi_snapshot(snapshot)?),
        })
    }

    async fn delete_snapshot(
        &self,
        r: csi::DeleteSnapshotRequest,
    ) -> Result<csi::DeleteSnapshotResponse, ControllerError> {
        if r.snapshot_id.is_empty() {
            return Err(ControllerError::Missing("snapshot_id"));
        }
        let name = match SnapshotId::parse(&r.snapshot_id, &self.cluster) {
            Ok(id) => id.name,
            Err(e) if e.means_not_found() => {
                tracing::warn!(error = %e, "delete of a snapshot id this cluster never made: nothing to do");
                return Ok(csi::DeleteSnapshotResponse {});
            }
            Err(e) => return Err(e.into()),
        };
        let request = be::DeleteSnapshotRequest {
            name: name.to_string(),
        };
        backend::idempotent(
            &self.backend,
            "DeleteSnapshot",
            request,
            |mut c, r| async move { c.delete_snapshot(r).await },
        )
        .await?;
        Ok(csi::DeleteSnapshotResponse {})
    }

    async fn list_snapshots(
        &self,
        r: csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse, ControllerError> {
        if r.max_entries < 0 {
            return Err(ControllerError::NegativeMaxEntries(r.max_entries));
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
                Err(status) => return Err(status.into()),
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
            .await?
            .into_inner();
        let entries = page
            .snapshots
            .into_iter()
            .map(|s| {
                Ok(csi::list_snapshots_response::Entry {
                    snapshot: Some(self.to_csi_snapshot(s)?),
                })
            })
            .collect::<Result<_, ControllerError>>()?;
        Ok(csi::ListSnapshotsResponse {
            entries,
            next_token: page.next_token,
        })
    }

    async fn get_snapshot(
        &self,
        r: csi::GetSnapshotRequest,
    ) -> Result<csi::GetSnapshotResponse, ControllerError> {
        if r.snapshot_id.is_empty() {
            return Err(ControllerError::Missing("snapshot_id"));
        }
        // CSI GetSnapshot: "Snapshot does not exist" is NOT_FOUND, and an id this
        // cluster cannot have made names no snapshot of ours (csi-sanity asks for
        // `none-exist-id`).
        let id = SnapshotId::parse(&r.snapshot_id, &self.cluster).map_err(|e| {
            // The error shows the id cut short; echoing the whole id would put up to
            // 4 MiB into the grpc-message header, which HTTP/2 clients refuse.
            ControllerError::NotFound(format!("snapshot does not exist: {e}"))
        })?;
        let snapshot = self
            .backend
            .clone()
            .get_snapshot(be::GetSnapshotRequest {
                name: id.name.to_string(),
            })
            .await?
            .into_inner();
        Ok(csi::GetSnapshotResponse {
            snapshot: Some(self.to_csi_snapshot(snapshot)?),
        })
    }

    async fn expand(
        &self,
        r: csi::ControllerExpandVolumeRequest,
    ) -> Result<csi::ControllerExpandVolumeResponse, ControllerError> {
        let dir = self.existing_volume(&r.volume_id)?;
        // Optional, but a capability hanfs cannot serve is as wrong here as at create.
        if let Some(capability) = &r.volume_capability {
            capabilities::check_all(std::slice::from_ref(capability))
                .map_err(ControllerError::Capability)?;
        }
        let range = r
            .capacity_range
            .ok_or(ControllerError::Missing("capacity_range"))?;
        if range.required_bytes < 0 || range.limit_bytes < 0 {
            return Err(ControllerError::CapacityRange("must not be negative"));
        }
        if range.limit_bytes > 0 && range.required_bytes > range.limit_bytes {
            return Err(ControllerError::CapacityRange(
                "required_bytes exceeds limit_bytes",
            ));
        }
        let request = be::ExpandVolumeRequest {
            dir: dir.to_string(),
            capacity_bytes: range.required_bytes,
        };
        let volume = backend::idempotent(
            &self.backend,
            "ExpandVolume",
            request,
            |mut c, r| async move { c.expand_volume(r).await },
        )
        .await?
        .into_inner();
        if range.limit_bytes > 0 && volume.capacity_bytes > range.limit_bytes {
            return Err(ControllerError::AboveLimit {
                capacity: volume.capacity_bytes,
                limit: range.limit_bytes,
            });
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
    ) -> Result<csi::ControllerGetVolumeResponse, ControllerError> {
        let dir = self.existing_volume(&r.volume_id)?;
        let volume = self.get_backend_volume(&dir).await?;
        Ok(csi::ControllerGetVolumeResponse {
            volume: Some(self.to_csi_volume(volume)?),
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids: Vec::new(),
            }),
        })
    }

    /// CSI v1.13 VolumeHealth from the backend's report: what the storage server sees
    /// of the volume's directory, record and quota. (The node reports its mounts.)
    fn to_csi_health(
        &self,
        report: be::VolumeHealthReport,
    ) -> Result<csi::VolumeHealth, ControllerError> {
        let health_statuses = report
            .problems
            .into_iter()
            .map(|p| csi::volume_health::VolumeHealthEntry {
                status: match be::HealthStatus::try_from(p.status) {
                    Ok(be::HealthStatus::Degraded) => csi::VolumeHealthErrorType::Degraded,
                    Ok(be::HealthStatus::Inaccessible) => csi::VolumeHealthErrorType::Inaccessible,
                    Ok(be::HealthStatus::DataLoss) => csi::VolumeHealthErrorType::DataLoss,
                    // A newer backend's kind: COs must ignore unknown types, so say UNKNOWN.
                    _ => csi::VolumeHealthErrorType::UnknownVolumeHealthType,
                } as i32,
                reason: p.reason,
                message: p.message,
            })
            .collect();
        Ok(csi::VolumeHealth {
            volume_id: self.volume_id(&report.dir)?,
            health_statuses,
        })
    }

    async fn volume_health(
        &self,
        r: csi::ControllerGetVolumeHealthRequest,
    ) -> Result<csi::ControllerGetVolumeHealthResponse, ControllerError> {
        let dir = self.existing_volume(&r.volume_id)?;
        let report = self
            .backend
            .clone()
            .volume_health(be::VolumeHealthRequest {
                dir: dir.to_string(),
            })
            .await?
            .into_inner();
        Ok(csi::ControllerGetVolumeHealthResponse {
            volume_health: Some(self.to_csi_health(report)?),
        })
    }

    async fn list_volume_health(
        &self,
        r: csi::ControllerListVolumeHealthRequest,
    ) -> Result<csi::ControllerListVolumeHealthResponse, ControllerError> {
        if r.max_entries < 0 {
            return Err(ControllerError::NegativeMaxEntries(r.max_entries));
        }
        let page = self
            .backend
            .clone()
            .list_volume_health(be::ListVolumeHealthRequest {
                max_entries: r.max_entries,
                starting_token: r.starting_token,
            })
            .await?
            .into_inner();
        Ok(csi::ControllerListVolumeHealthResponse {
            entries: page
                .volumes
                .into_iter()
                .map(|v| self.to_csi_health(v))
                .collect::<Result<_, _>>()?,
            next_token: page.next_token,
        })
    }

    async fn modify(
        &self,
        r: csi::ControllerModifyVolumeRequest,
    ) -> Result<csi::ControllerModifyVolumeResponse, ControllerError> {
        let dir = self.existing_volume(&r.volume_id)?;
        let on_delete = params::parse_mutable_params(&r.mutable_parameters)?;
        match on_delete {
            Some(on_delete) => {
                let request = be::ModifyVolumeRequest {
                    dir: dir.to_string(),
                    on_delete: on_delete_to_backend(on_delete) as i32,
                };
                // Sets a value: idempotent like the calls named by name.
                backend::idempotent(
                    &self.backend,
                    "ModifyVolume",
                    request,
                    |mut c, r| async move { c.modify_volume(r).await },
                )
                .await?;
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

/// The answer of one RPC; the error's code is chosen in [`ControllerError`].
fn reply<T>(result: Result<T, ControllerError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
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
    Rpc::GetSnapshot,
    Rpc::CloneVolume,
    Rpc::ExpandVolume,
    Rpc::ListVolumes,
    Rpc::GetCapacity,
    Rpc::GetVolume,
    Rpc::SingleNodeMultiWriter,
    Rpc::ModifyVolume,
    Rpc::GetVolumeHealth,
    Rpc::ListVolumeHealth,
    // Per-node export ACLs: publish admits the node's address to the volume's export.
    Rpc::PublishUnpublishVolume,
    // A read-only publish admits the node with `ro` in the volume's export entry, so the
    // server refuses its writes whatever the node mounts with.
    Rpc::PublishReadonly,
];

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        reply(self.create_volume(request.into_inner()).await)
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        reply(self.delete_volume(request.into_inner()).await)
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        reply(self.validate(request.into_inner()).await)
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        reply(self.list_volumes(request.into_inner()).await)
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        reply(self.get_capacity(request.into_inner()).await)
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
        reply(self.create_snapshot(request.into_inner()).await)
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        reply(self.delete_snapshot(request.into_inner()).await)
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        reply(self.list_snapshots(request.into_inner()).await)
    }

    async fn get_snapshot(
        &self,
        request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        reply(self.get_snapshot(request.into_inner()).await)
    }

    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        reply(self.expand(request.into_inner()).await)
    }

    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        reply(self.get_volume(request.into_inner()).await)
    }

    async fn controller_get_volume_health(
        &self,
        request: Request<csi::ControllerGetVolumeHealthRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeHealthResponse>, Status> {
        reply(self.volume_health(request.into_inner()).await)
    }

    async fn controller_list_volume_health(
        &self,
        request: Request<csi::ControllerListVolumeHealthRequest>,
    ) -> Result<Response<csi::ControllerListVolumeHealthResponse>, Status> {
        reply(self.list_volume_health(request.into_inner()).await)
    }

    async fn controller_publish_volume(
        &self,
        request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        reply(self.publish(request.into_inner()).await)
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        reply(self.unpublish(request.into_inner()).await)
    }

    async fn controller_modify_volume(
        &self,
        request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        reply(self.modify(request.into_inner()).await)
    }
}

//! The CSI GroupController service: volume group snapshots over the backend's group
//! snapshot calls (write-order consistent cuts of volumes on the one export; see
//! `volumes::store::group` for how the cut is made and checked).
//!
//! Group ids are `g1/<cluster>/<name>`; each member is an ordinary snapshot
//! (`s1/<cluster>/<name>-<hash>`) that carries the group's id, so the CO restores it like
//! any snapshot and deletes it only with the group.

use crate::backend::{self, BackendClient};
use crate::error::ControllerError;
use crate::params::ParamError;
use common::ids::{
    ClusterId, IdError, MAX_ID_LEN, RequestName, SnapshotId, SnapshotName, VolumeId,
};
use proto::backend::v1 as be;
use proto::csi::v1 as csi;
use proto::csi::v1::group_controller_server::GroupController;
use proto::csi::v1::group_controller_service_capability::rpc::Type as Rpc;
use std::collections::BTreeSet;
use tonic::{Request, Response, Status};

const GROUP_ID_VERSION: &str = "g1";
/// What csi-snapshotter's `--extra-create-metadata` adds; nothing else is accepted.
const GROUP_METADATA_PREFIX: &str = "csi.storage.k8s.io/volumegroupsnapshot";
/// `-<8 hex>`: what the backend appends to the group name for each member's snapshot
/// (`volumes::store::group::MEMBER_SUFFIX_LEN`).
const MEMBER_SUFFIX_LEN: usize = 9;

/// `g1/<cluster>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshotId {
    pub cluster: ClusterId,
    pub name: SnapshotName,
}

impl GroupSnapshotId {
    pub fn parse(id: &str, ours: &ClusterId) -> Result<Self, IdError> {
        let name = common::ids::split_id(
            "group snapshot id",
            "g1/<cluster>/<name>",
            GROUP_ID_VERSION,
            id,
            ours,
        )?;
        Ok(Self {
            cluster: ours.clone(),
            name: SnapshotName::parse(name)?,
        })
    }
}

impl std::fmt::Display for GroupSnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{GROUP_ID_VERSION}/{}/{}", self.cluster, self.name)
    }
}

/// The backend name of the group for a CSI request name: short enough that the group's
/// id and every member's snapshot id (`s1/<cluster>/<name>-<hash>`) fit in
/// [`MAX_ID_LEN`]; longer names are cut and get a hash of the whole name (deterministic,
/// so a repeated create finds the same group).
pub fn group_name_for(cluster: &ClusterId, name: &RequestName) -> Result<SnapshotName, IdError> {
    let budget = MAX_ID_LEN - "s1//".len() - cluster.as_str().len() - MEMBER_SUFFIX_LEN;
    let name = name.as_str();
    if name.len() <= budget {
        return SnapshotName::parse(name);
    }
    let hash = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes())
        .simple()
        .to_string();
    let hash = &hash[..16];
    // ASCII (validated as a RequestName), so byte slicing is on character boundaries.
    let keep = budget - hash.len() - 1;
    SnapshotName::parse(&format!(
        "{}-{hash}",
        name[..keep].trim_end_matches(['.', '-', '_'])
    ))
}

fn check_group_params(
    params: &std::collections::HashMap<String, String>,
) -> Result<(), ParamError> {
    match params
        .keys()
        .find(|k| !k.starts_with(GROUP_METADATA_PREFIX))
    {
        Some(key) => Err(ParamError::Unknown {
            key: key.clone(),
            accepted: "no group snapshot parameters (only the csi.storage.k8s.io/volumegroupsnapshot* metadata keys)",
        }),
        None => Ok(()),
    }
}

pub struct GroupControllerService {
    cluster: ClusterId,
    backend: BackendClient,
}

impl GroupControllerService {
    pub fn new(cluster: ClusterId, backend: BackendClient) -> Self {
        Self { cluster, backend }
    }

    fn to_csi(
        &self,
        group: be::GroupSnapshot,
    ) -> Result<csi::VolumeGroupSnapshot, ControllerError> {
        let name = SnapshotName::parse(&group.name)
            .map_err(|e| ControllerError::BadBackendReply(format!("a bad group name: {e}")))?;
        let group_snapshot_id = GroupSnapshotId {
            cluster: self.cluster.clone(),
            name,
        }
        .to_string();
        let mut snapshots = Vec::with_capacity(group.members.len());
        for member in group.members {
            snapshots.push(member_to_csi(&self.cluster, member, &group_snapshot_id)?);
        }
        Ok(csi::VolumeGroupSnapshot {
            group_snapshot_id,
            snapshots,
            creation_time: group.created,
            ready_to_use: true,
        })
    }

    /// The group's backend name; `None` for a well-formed id this cluster never made.
    fn group_name(&self, id: &str) -> Result<Option<SnapshotName>, ControllerError> {
        if id.is_empty() {
            return Err(ControllerError::Missing("group_snapshot_id"));
        }
        match GroupSnapshotId::parse(id, &self.cluster) {
            Ok(id) => Ok(Some(id.name)),
            Err(e) if e.means_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_group(
        &self,
        name: &SnapshotName,
    ) -> Result<Option<be::GroupSnapshot>, ControllerError> {
        let request = be::GetGroupSnapshotRequest {
            name: name.to_string(),
        };
        match backend::idempotent(
            &self.backend,
            "GetGroupSnapshot",
            request,
            |mut c, r| async move { c.get_group_snapshot(r).await },
        )
        .await
        {
            Ok(group) => Ok(Some(group.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(status.into()),
        }
    }

    async fn create(
        &self,
        r: csi::CreateVolumeGroupSnapshotRequest,
    ) -> Result<csi::CreateVolumeGroupSnapshotResponse, ControllerError> {
        let name = RequestName::parse(&r.name).map_err(ControllerError::Name)?;
        if r.source_volume_ids.is_empty() {
            return Err(ControllerError::Missing("source_volume_ids"));
        }
        check_group_params(&r.parameters)?;
        let mut sources = Vec::with_capacity(r.source_volume_ids.len());
        for id in &r.source_volume_ids {
            // A volume id of another cluster or driver names no volume here.
            sources.push(VolumeId::parse(id, &self.cluster)?.dir.to_string());
        }
        let group_name = group_name_for(&self.cluster, &name).map_err(ControllerError::Name)?;
        let request = be::CreateGroupSnapshotRequest {
            name: group_name.to_string(),
            request_name: name.to_string(),
            source_volumes: sources,
        };
        let group = backend::idempotent(
            &self.backend,
            "CreateGroupSnapshot",
            request,
            |mut c, r| async move { c.create_group_snapshot(r).await },
        )
        .await?
        .into_inner();
        Ok(csi::CreateVolumeGroupSnapshotResponse {
            group_snapshot: Some(self.to_csi(group)?),
        })
    }

    async fn delete(
        &self,
        r: csi::DeleteVolumeGroupSnapshotRequest,
    ) -> Result<csi::DeleteVolumeGroupSnapshotResponse, ControllerError> {
        let Some(name) = self.group_name(&r.group_snapshot_id)? else {
            tracing::warn!(id = %r.group_snapshot_id, "delete of a group snapshot id this cluster never made: nothing to do");
            return Ok(csi::DeleteVolumeGroupSnapshotResponse {});
        };
        if !r.snapshot_ids.is_empty()
            && let Some(group) = self.get_group(&name).await?
        {
            self.check_snapshot_ids(&group, &r.snapshot_ids)?;
        }
        let request = be::DeleteGroupSnapshotRequest {
            name: name.to_string(),
        };
        backend::idempotent(
            &self.backend,
            "DeleteGroupSnapshot",
            request,
            |mut c, r| async move { c.delete_group_snapshot(r).await },
        )
        .await?;
        Ok(csi::DeleteVolumeGroupSnapshotResponse {})
    }

    async fn get(
        &self,
        r: csi::GetVolumeGroupSnapshotRequest,
    ) -> Result<csi::GetVolumeGroupSnapshotResponse, ControllerError> {
        // The id is well-formed by then (at most MAX_ID_LEN bytes): safe to echo.
        let not_found = || {
            ControllerError::NotFound(format!(
                "group snapshot {} does not exist",
                r.group_snapshot_id
            ))
        };
        let name = self
            .group_name(&r.group_snapshot_id)?
            .ok_or_else(not_found)?;
        let group = self.get_group(&name).await?.ok_or_else(not_found)?;
        if !r.snapshot_ids.is_empty() {
            self.check_snapshot_ids(&group, &r.snapshot_ids)?;
        }
        Ok(csi::GetVolumeGroupSnapshotResponse {
            group_snapshot: Some(self.to_csi(group)?),
        })
    }

    /// CSI: a `snapshot_ids` list that is not exactly the group's members is
    /// INVALID_ARGUMENT ("snapshot list mismatch").
    fn check_snapshot_ids(
        &self,
        group: &be::GroupSnapshot,
        given: &[String],
    ) -> Result<(), ControllerError> {
        let mut members = BTreeSet::new();
        for member in &group.members {
            let name = SnapshotName::parse(&member.name)
                .map_err(|e| ControllerError::BadBackendReply(format!("a bad member name: {e}")))?;
            members.insert(SnapshotId::new(self.cluster.clone(), name).to_string());
        }
        let given: BTreeSet<String> = given.iter().cloned().collect();
        if given != members {
            return Err(ControllerError::SnapshotListMismatch(format!(
                "snapshot_ids {given:?} are not the members of group snapshot {}: {members:?}",
                group.name
            )));
        }
        Ok(())
    }
}

/// A member snapshot as CSI sees it; `group_snapshot_id` tells the CO that it is
/// deleted with its group only.
pub fn member_to_csi(
    cluster: &ClusterId,
    member: be::Snapshot,
    group_snapshot_id: &str,
) -> Result<csi::Snapshot, ControllerError> {
    let name = SnapshotName::parse(&member.name)
        .map_err(|e| ControllerError::BadBackendReply(format!("a bad snapshot name: {e}")))?;
    let dir = common::ids::VolumeDir::parse(&member.source_volume)
        .map_err(|e| ControllerError::BadBackendReply(format!("a bad directory name: {e}")))?;
    Ok(csi::Snapshot {
        size_bytes: member.size_bytes,
        snapshot_id: SnapshotId::new(cluster.clone(), name).to_string(),
        source_volume_id: VolumeId::new(cluster.clone(), dir).to_string(),
        creation_time: member.created,
        ready_to_use: true,
        group_snapshot_id: group_snapshot_id.to_owned(),
        // One export for every node: usable everywhere (as for any hanfs snapshot).
        accessible_topology: Vec::new(),
    })
}

/// The group id a backend snapshot belongs to, empty for a snapshot of its own.
pub fn group_id_of(cluster: &ClusterId, group: &str) -> Result<String, ControllerError> {
    if group.is_empty() {
        return Ok(String::new());
    }
    let name = SnapshotName::parse(group)
        .map_err(|e| ControllerError::BadBackendReply(format!("a bad group name: {e}")))?;
    Ok(GroupSnapshotId {
        cluster: cluster.clone(),
        name,
    }
    .to_string())
}

#[tonic::async_trait]
impl GroupController for GroupControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _: Request<csi::GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::GroupControllerGetCapabilitiesResponse>, Status> {
        use csi::group_controller_service_capability::{Rpc as RpcCap, Type};
        Ok(Response::new(csi::GroupControllerGetCapabilitiesResponse {
            capabilities: vec![csi::GroupControllerServiceCapability {
                r#type: Some(Type::Rpc(RpcCap {
                    r#type: Rpc::CreateDeleteGetVolumeGroupSnapshot as i32,
                })),
            }],
        }))
    }

    async fn create_volume_group_snapshot(
        &self,
        request: Request<csi::CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::CreateVolumeGroupSnapshotResponse>, Status> {
        Ok(Response::new(self.create(request.into_inner()).await?))
    }

    async fn delete_volume_group_snapshot(
        &self,
        request: Request<csi::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::DeleteVolumeGroupSnapshotResponse>, Status> {
        Ok(Response::new(self.delete(request.into_inner()).await?))
    }

    async fn get_volume_group_snapshot(
        &self,
        request: Request<csi::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::GetVolumeGroupSnapshotResponse>, Status> {
        Ok(Response::new(self.get(request.into_inner()).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterId {
        ClusterId::parse("prod-1").unwrap()
    }

    #[test]
    fn group_ids_round_trip_and_foreign_ids_are_not_found() {
        let id = GroupSnapshotId {
            cluster: cluster(),
            name: SnapshotName::parse("groupsnapshot-1").unwrap(),
        };
        assert_eq!(id.to_string(), "g1/prod-1/groupsnapshot-1");
        assert_eq!(
            GroupSnapshotId::parse(&id.to_string(), &cluster()).unwrap(),
            id
        );
        for foreign in ["s1/prod-1/x", "g1/other/x", "nonsense"] {
            let err = GroupSnapshotId::parse(foreign, &cluster()).unwrap_err();
            assert!(err.means_not_found(), "{foreign}: {err}");
        }
        let bad = GroupSnapshotId::parse("g1/prod-1/../x", &cluster()).unwrap_err();
        assert!(!bad.means_not_found(), "traversal is INVALID_ARGUMENT");
    }

    #[test]
    fn long_names_leave_room_for_every_member_id() {
        let long = RequestName::parse(&"groupsnapshot-".repeat(15)).unwrap();
        let name = group_name_for(&cluster(), &long).unwrap();
        assert_eq!(
            name,
            group_name_for(&cluster(), &long).unwrap(),
            "deterministic"
        );
        let member = format!("s1/prod-1/{name}-12345678");
        assert!(member.len() <= MAX_ID_LEN, "{member}");
        let short = RequestName::parse("groupsnapshot-1").unwrap();
        assert_eq!(
            group_name_for(&cluster(), &short).unwrap().as_str(),
            "groupsnapshot-1"
        );
    }

    #[test]
    fn only_the_sidecars_metadata_keys_are_accepted() {
        let mut params = std::collections::HashMap::new();
        params.insert(
            "csi.storage.k8s.io/volumegroupsnapshot/name".to_string(),
            "g".to_string(),
        );
        assert!(check_group_params(&params).is_ok());
        params.insert("compress".to_string(), "yes".to_string());
        assert!(check_group_params(&params).is_err());
    }
}

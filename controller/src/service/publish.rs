//! ControllerPublishVolume / ControllerUnpublishVolume: admit a node to a volume's own
//! export entry, or remove it (DESIGN.md §8). The node id carries the node's NFS address
//! (`<name>@<ip>`, [`common::node_id`]), so the controller stays stateless; the backend
//! keeps the publication in the volume's record on the replicated disk and re-exports.

use super::ControllerService;
use crate::backend;
use crate::capabilities;
use crate::error::ControllerError;
use common::ids::VolumeId;
use common::node_id::NodeId;
use proto::backend::v1 as be;
use proto::csi::v1 as csi;
use proto::csi::v1::volume_capability::access_mode::Mode;

/// Access modes that allow one node only: a second node is FAILED_PRECONDITION.
fn single_node(capability: &csi::VolumeCapability) -> bool {
    let mode = capability
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok());
    matches!(
        mode,
        Some(
            Mode::SingleNodeWriter
                | Mode::SingleNodeReaderOnly
                | Mode::SingleNodeSingleWriter
                | Mode::SingleNodeMultiWriter
        )
    )
}

/// A csi-driver-nfs style static handle (`server#share#subDir`), which the node mounts
/// as given; hanfs ids never hold `#`.
fn is_static_handle(volume_id: &str) -> bool {
    volume_id.contains('#')
}

impl ControllerService {
    pub(super) async fn publish(
        &self,
        r: csi::ControllerPublishVolumeRequest,
    ) -> Result<csi::ControllerPublishVolumeResponse, ControllerError> {
        // CSI's order of checks (csi-sanity expects INVALID_ARGUMENT for each missing
        // field before it looks for the volume or the node).
        if r.volume_id.is_empty() {
            return Err(ControllerError::Missing("volume_id"));
        }
        if r.node_id.is_empty() {
            return Err(ControllerError::Missing("node_id"));
        }
        let capability = r
            .volume_capability
            .as_ref()
            .ok_or(ControllerError::Missing("volume_capability"))?;
        if let Some(reason) = capabilities::unsupported_reason(capability) {
            return Err(ControllerError::Capability(reason));
        }
        if is_static_handle(&r.volume_id) {
            // A static PV in csi-driver-nfs style (`server#share#subDir`) names a directory
            // hanfs did not make and keeps no record of: there is no per-volume export entry
            // to admit the node to, and refusing would keep the attacher from ever
            // attaching it. Its export is the administrator's (README: security model).
            tracing::warn!(volume = %r.volume_id, node = %r.node_id,
                "static volume: published without a per-node export ACL (not a hanfs volume)");
            return Ok(csi::ControllerPublishVolumeResponse::default());
        }
        let dir = VolumeId::parse(&r.volume_id, &self.cluster)?.dir;
        let node = NodeId::parse(&r.node_id)?;
        let request = be::PublishVolumeRequest {
            dir: dir.to_string(),
            node_id: node.to_string(),
            address: node.address().to_string(),
            readonly: r.readonly,
            single_node: single_node(capability),
        };
        // Idempotent by (volume, node): a repeat with the same flags is OK, so the call is
        // sent again across a failover like create and delete.
        backend::idempotent(
            &self.backend,
            "PublishVolume",
            request,
            |mut c, r| async move { c.publish_volume(r).await },
        )
        .await?;
        tracing::info!(volume = %dir, node = %node, readonly = r.readonly, "published");
        // The node mounts the same `<server>:<share>/volumes/<dir>` as before: the
        // export entry, not a context, is what changed.
        Ok(csi::ControllerPublishVolumeResponse::default())
    }

    pub(super) async fn unpublish(
        &self,
        r: csi::ControllerUnpublishVolumeRequest,
    ) -> Result<csi::ControllerUnpublishVolumeResponse, ControllerError> {
        if r.volume_id.is_empty() {
            return Err(ControllerError::Missing("volume_id"));
        }
        let dir = match VolumeId::parse(&r.volume_id, &self.cluster) {
            Ok(id) => id.dir,
            // CSI: a volume that cannot be found is regarded as unpublished: OK.
            Err(e) if e.means_not_found() => {
                tracing::warn!(error = %e, "unpublish of a volume id this cluster never made: nothing to do");
                return Ok(csi::ControllerUnpublishVolumeResponse {});
            }
            Err(e) => return Err(e.into()),
        };
        // Any node id string: publications are keyed by the id as it was published, so
        // an id we could not publish simply matches nothing (OK, per CSI). Empty: all.
        backend::idempotent(
            &self.backend,
            "UnpublishVolume",
            be::UnpublishVolumeRequest {
                dir: dir.to_string(),
                node_id: r.node_id,
            },
            |mut c, r| async move { c.unpublish_volume(r).await },
        )
        .await?;
        Ok(csi::ControllerUnpublishVolumeResponse {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume};

    #[test]
    fn single_node_modes_are_recognised() {
        let cap = |mode: Mode| csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        };
        assert!(single_node(&cap(Mode::SingleNodeWriter)));
        assert!(single_node(&cap(Mode::SingleNodeSingleWriter)));
        assert!(!single_node(&cap(Mode::MultiNodeMultiWriter)));
        assert!(!single_node(&cap(Mode::MultiNodeReaderOnly)));
    }
}

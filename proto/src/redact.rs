//! `Debug` for CSI messages that carry `secrets` (build.rs skips prost's derive for
//! them). Only identifying fields are printed; secrets never are, not even their keys.

use crate::csi::v1::*;
use std::fmt;

macro_rules! redacted_debug {
    ($($message:ident { $($field:ident),* }),* $(,)?) => {
        $(
            impl fmt::Debug for $message {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.debug_struct(stringify!($message))
                        $(.field(stringify!($field), &self.$field))*
                        .field("secrets", &"<redacted>")
                        .finish_non_exhaustive()
                }
            }
        )*
    };
}

redacted_debug! {
    ControllerExpandVolumeRequest { volume_id, capacity_range },
    ControllerModifyVolumeRequest { volume_id },
    ControllerPublishVolumeRequest { volume_id, node_id, readonly },
    ControllerUnpublishVolumeRequest { volume_id, node_id },
    CreateSnapshotRequest { name, source_volume_id },
    CreateVolumeGroupSnapshotRequest { name, source_volume_ids },
    CreateVolumeRequest { name, capacity_range },
    DeleteSnapshotRequest { snapshot_id },
    DeleteVolumeGroupSnapshotRequest { group_snapshot_id },
    DeleteVolumeRequest { volume_id },
    GetMetadataAllocatedRequest { snapshot_id },
    GetMetadataDeltaRequest { base_snapshot_id, target_snapshot_id },
    GetSnapshotRequest { snapshot_id },
    GetVolumeGroupSnapshotRequest { group_snapshot_id },
    ListSnapshotsRequest { snapshot_id, source_volume_id, max_entries },
    NodeExpandVolumeRequest { volume_id, volume_path },
    NodePublishVolumeRequest { volume_id, target_path, readonly },
    NodeStageVolumeRequest { volume_id, staging_target_path },
    ValidateVolumeCapabilitiesRequest { volume_id },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_request_with_secrets_prints_no_secret() {
        let request = CreateVolumeRequest {
            name: "pvc-1".into(),
            secrets: [("password".to_string(), "hunter2".to_string())].into(),
            ..Default::default()
        };
        let printed = format!("{request:?}");
        assert!(printed.contains("pvc-1"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("password"), "{printed}");
    }
}

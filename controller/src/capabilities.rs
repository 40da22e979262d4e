//! Which volume capabilities hanfs serves: filesystem access (an NFS directory) in every
//! access mode; never raw block.

use proto::csi::v1::VolumeCapability;
use proto::csi::v1::volume_capability::{AccessType, access_mode::Mode};

/// Why a capability cannot be served, in words for the user.
pub fn unsupported_reason(capability: &VolumeCapability) -> Option<String> {
    match &capability.access_type {
        None => return Some("volume capability has no access type (mount or block)".into()),
        Some(AccessType::Block(_)) => {
            return Some("block access is not supported: hanfs volumes are NFS directories; use volumeMode: Filesystem".into());
        }
        Some(AccessType::Mount(_)) => {}
    }
    let Some(mode) = &capability.access_mode else {
        return Some("volume capability has no access mode".into());
    };
    match Mode::try_from(mode.mode) {
        Ok(Mode::Unknown) | Err(_) => Some(format!("access mode {} is not supported", mode.mode)),
        // Every NFS directory can be shared: RWO, ROX, RWX and RWOP all work.
        Ok(_) => None,
    }
}

/// Checks a list of capabilities; an empty list is itself an error.
pub fn check_all(capabilities: &[VolumeCapability]) -> Result<(), String> {
    if capabilities.is_empty() {
        return Err("volume_capabilities must not be empty".into());
    }
    capabilities
        .iter()
        .find_map(unsupported_reason)
        .map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::csi::v1::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn capability(access_type: AccessType, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(access_type),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn mount_in_every_mode_is_served_block_never() {
        for mode in [
            Mode::SingleNodeWriter,
            Mode::SingleNodeReaderOnly,
            Mode::MultiNodeReaderOnly,
            Mode::MultiNodeSingleWriter,
            Mode::MultiNodeMultiWriter,
            Mode::SingleNodeSingleWriter,
            Mode::SingleNodeMultiWriter,
        ] {
            assert_eq!(
                unsupported_reason(&capability(AccessType::Mount(MountVolume::default()), mode)),
                None
            );
        }
        let block = unsupported_reason(&capability(
            AccessType::Block(BlockVolume {}),
            Mode::SingleNodeWriter,
        ));
        assert!(block.unwrap().contains("volumeMode: Filesystem"));
        assert!(
            unsupported_reason(&capability(
                AccessType::Mount(MountVolume::default()),
                Mode::Unknown
            ))
            .is_some()
        );
        assert!(check_all(&[]).is_err());
    }
}

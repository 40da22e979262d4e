//! Which publishes a volume's access mode allows on this node: pure.
//!
//! The controller cannot enforce single-writer modes (every node may mount the NFS
//! export), so the node does, from mountinfo: the other targets this volume is
//! published at right now (the staging mount does not count).
//!
//! CSI spec, `AccessMode`:
//! - SINGLE_NODE_SINGLE_WRITER (Kubernetes ReadWriteOncePod): "published once as
//!   read/write at a single workload on a single node": any second target path is
//!   refused.
//! - SINGLE_NODE_WRITER: "published once as read/write on a single node": a second
//!   read-write target is refused; read-only ones may join. (Kubernetes sends
//!   SINGLE_NODE_MULTI_WRITER for ReadWriteOnce, because the node advertises that
//!   capability, so pods of one node sharing an RWO volume are not affected.)
//! - every other mode: no limit on this node.
//!
//! A refusal is FAILED_PRECONDITION (NodePublishVolume errors: "Volume published to
//! another node / exceeds capabilities"; csi-sanity v5.6.0 expects that code).

use proto::csi::v1::volume_capability::access_mode::Mode;
use std::path::PathBuf;

/// Another target where the volume is published now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub target: PathBuf,
    pub read_only: bool,
}

/// Whether the access mode limits publishes on one node, so a publish must be
/// serialised with the others of the same volume.
pub fn is_single_writer(mode: Mode) -> bool {
    matches!(mode, Mode::SingleNodeSingleWriter | Mode::SingleNodeWriter)
}

/// `Err(why)` when a publish (`read_only` or not) must be refused given `others`.
pub fn check_publish(mode: Mode, read_only: bool, others: &[Published]) -> Result<(), String> {
    match mode {
        Mode::SingleNodeSingleWriter => match others.first() {
            Some(other) => Err(format!(
                "the volume's access mode is SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod) and it is already published at {}",
                other.target.display()
            )),
            None => Ok(()),
        },
        Mode::SingleNodeWriter if !read_only => match others.iter().find(|o| !o.read_only) {
            Some(other) => Err(format!(
                "the volume's access mode is SINGLE_NODE_WRITER and it is already published read-write at {}",
                other.target.display()
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(path: &str, read_only: bool) -> Published {
        Published {
            target: PathBuf::from(path),
            read_only,
        }
    }

    #[test]
    fn rwop_allows_exactly_one_target() {
        let m = Mode::SingleNodeSingleWriter;
        assert!(check_publish(m, false, &[]).is_ok());
        assert!(check_publish(m, true, &[]).is_ok());
        let err = check_publish(m, true, &[at("/a", true)]).unwrap_err();
        assert!(
            err.contains("/a") && err.contains("ReadWriteOncePod"),
            "{err}"
        );
        assert!(check_publish(m, false, &[at("/a", false)]).is_err());
    }

    #[test]
    fn single_node_writer_allows_one_writer_and_readers() {
        let m = Mode::SingleNodeWriter;
        assert!(check_publish(m, false, &[at("/r", true)]).is_ok());
        assert!(check_publish(m, true, &[at("/w", false)]).is_ok());
        let err = check_publish(m, false, &[at("/r", true), at("/w", false)]).unwrap_err();
        assert!(err.contains("/w"), "{err}");
    }

    #[test]
    fn shared_modes_have_no_node_limit() {
        let many = [at("/a", false), at("/b", false)];
        for m in [
            Mode::SingleNodeMultiWriter,
            Mode::SingleNodeReaderOnly,
            Mode::MultiNodeReaderOnly,
            Mode::MultiNodeSingleWriter,
            Mode::MultiNodeMultiWriter,
        ] {
            assert!(check_publish(m, false, &many).is_ok(), "{m:?}");
            assert!(!is_single_writer(m));
        }
        assert!(is_single_writer(Mode::SingleNodeWriter));
        assert!(is_single_writer(Mode::SingleNodeSingleWriter));
    }
}

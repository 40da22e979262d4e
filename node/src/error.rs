//! The node service's errors and the one place they become CSI status codes.

use crate::mount_spec::MountSpecError;
use crate::syscall_helper::HelperError;
use crate::target_path::TargetPathError;
use common::ids::IdError;
use nix::errno::Errno;
use std::path::PathBuf;
use thiserror::Error;
use tonic::{Code, Status};

#[derive(Debug, Error)]
pub enum NodeError {
    /// A required request field is empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// The capability asks for a raw block device.
    #[error(
        "hanfs volumes are NFS directories; use volumeMode: Filesystem (block access is not supported)"
    )]
    BlockAccess,
    /// The capability has neither `mount` nor `block`.
    #[error("volume_capability has no access type (mount or block)")]
    NoAccessType,
    /// A volume id that is malformed, or not one of this cluster's.
    #[error(transparent)]
    VolumeId(#[from] IdError),
    /// A volume id NodeGetVolumeStats cannot know (every id error is NOT_FOUND there).
    #[error("volume not found: {0}")]
    UnknownVolume(#[source] IdError),
    /// A target path that is not acceptable.
    #[error(transparent)]
    TargetPath(#[from] TargetPathError),
    /// The mount options or the volume context cannot be turned into a mount.
    #[error(transparent)]
    MountSpec(#[from] MountSpecError),
    /// The volume's directory does not exist (local transport).
    #[error("volume {volume} not found: {} does not exist", path.display())]
    VolumeMissing { volume: String, path: PathBuf },
    /// Something other than a directory sits at the target.
    #[error("target {} exists and is not a directory", .0.display())]
    TargetNotDirectory(PathBuf),
    /// The target holds another volume, or the same one with other access.
    #[error("target {} is already mounted differently: {detail}", target.display())]
    MountedDifferently { target: PathBuf, detail: String },
    /// No mount of this volume at the path.
    #[error("volume {volume} is not mounted at {path}")]
    NotMounted { volume: String, path: String },
    /// Publish names a staging path where the volume is not staged.
    #[error("volume {volume} is not staged at {path}: NodeStageVolume must succeed first")]
    NotStaged { volume: String, path: String },
    /// The volume's access mode allows no further publish on this node now.
    #[error("volume {volume} cannot be published at another target: {reason}")]
    AccessMode { volume: String, reason: String },
    /// Another publish/unpublish for the same target is still running.
    #[error("an operation on {} is already in progress", .0.display())]
    Busy(PathBuf),
    /// The NFS server's name does not resolve.
    #[error("resolving NFS server {server:?}: {reason}")]
    Resolve { server: String, reason: String },
    /// A mount, unmount or statfs failed or timed out.
    #[error(transparent)]
    Helper(#[from] HelperError),
    /// Mounts kept reappearing at the target.
    #[error("target {} is still mounted after {attempts} unmounts", target.display())]
    StillMounted { target: PathBuf, attempts: usize },
    /// Files remain in the target after unmounting: not ours to delete.
    #[error("target {} is not empty after unmounting; refusing to delete its contents", .0.display())]
    TargetNotEmpty(PathBuf),
    /// Local file system or /proc access failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl NodeError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
        let what = what.into();
        move |source| NodeError::Io { what, source }
    }

    /// The CSI code for this error (CSI spec, "Error Scheme" of each Node RPC).
    pub fn code(&self) -> Code {
        match self {
            NodeError::Missing(_)
            | NodeError::BlockAccess
            | NodeError::NoAccessType
            | NodeError::TargetPath(_)
            | NodeError::TargetNotDirectory(_) => Code::InvalidArgument,
            NodeError::VolumeId(err) if err.means_not_found() => Code::NotFound,
            NodeError::VolumeId(_) => Code::InvalidArgument,
            NodeError::MountSpec(MountSpecError::NoServer) => Code::FailedPrecondition,
            NodeError::MountSpec(_) => Code::InvalidArgument,
            NodeError::UnknownVolume(_)
            | NodeError::VolumeMissing { .. }
            | NodeError::NotMounted { .. } => Code::NotFound,
            NodeError::MountedDifferently { .. } => Code::AlreadyExists,
            NodeError::NotStaged { .. } | NodeError::AccessMode { .. } => Code::FailedPrecondition,
            NodeError::Busy(_) => Code::Aborted,
            NodeError::Resolve { .. } => Code::Unavailable,
            NodeError::Helper(err) if err.is_timeout() => Code::DeadlineExceeded,
            // The server has no such export directory.
            NodeError::Helper(err) if err.errno() == Some(Errno::ENOENT) => Code::NotFound,
            // A path kubelet could never have made (a component over NAME_MAX).
            NodeError::Io { source, .. } if source.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                Code::InvalidArgument
            }
            NodeError::Helper(_)
            | NodeError::StillMounted { .. }
            | NodeError::TargetNotEmpty(_)
            | NodeError::Io { .. } => Code::Internal,
        }
    }
}

impl From<NodeError> for Status {
    fn from(err: NodeError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::ids::{ClusterId, VolumeId};

    #[test]
    fn id_errors_split_into_not_found_and_invalid() {
        let ours = ClusterId::parse("c1").unwrap();
        let foreign = VolumeId::parse("v1/other/pvc-1", &ours).unwrap_err();
        assert_eq!(NodeError::from(foreign.clone()).code(), Code::NotFound);
        assert_eq!(NodeError::UnknownVolume(foreign).code(), Code::NotFound);
        let bad = VolumeId::parse("v1/c1/../x", &ours).unwrap_err();
        assert_eq!(NodeError::from(bad).code(), Code::InvalidArgument);
    }

    #[test]
    fn helper_failures_map_by_kind() {
        let timeout = HelperError::Timeout {
            op: "mount".into(),
            after: Default::default(),
        };
        assert_eq!(NodeError::from(timeout).code(), Code::DeadlineExceeded);
        let enoent = HelperError::Syscall {
            op: "mount".into(),
            errno: Some(2),
            message: "gone".into(),
        };
        assert_eq!(NodeError::from(enoent).code(), Code::NotFound);
        let eacces = HelperError::Syscall {
            op: "mount".into(),
            errno: Some(13),
            message: "no".into(),
        };
        let status = Status::from(NodeError::from(eacces));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "mount: no");
    }
}

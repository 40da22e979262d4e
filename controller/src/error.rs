//! The controller's errors and the one place they become CSI status codes.
//!
//! Backend answers arrive as a `Status` that already speaks CSI (the volume service
//! chooses NOT_FOUND, ALREADY_EXISTS, RESOURCE_EXHAUSTED, ... itself): [`From<Status>`]
//! names the codes the controller reasons about and passes every other one through.

use crate::params::ParamError;
use common::ids::IdError;
use common::node_id::NodeIdError;
use thiserror::Error;
use tonic::{Code, Status};

#[derive(Debug, Error)]
pub enum ControllerError {
    /// A required request field is empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// The CSI request name cannot become a volume or snapshot name.
    #[error("name: {0}")]
    Name(#[source] IdError),
    /// A volume or snapshot id that is malformed, or not one of this cluster's.
    #[error(transparent)]
    Id(#[from] IdError),
    /// The content source of a CreateVolume names no volume or snapshot of ours.
    #[error("content source {kind}: {source}")]
    ContentSource {
        kind: &'static str,
        #[source]
        source: IdError,
    },
    /// A ControllerPublish node id that names no hanfs node (NOT_FOUND) or carries a
    /// malformed address (INVALID_ARGUMENT).
    #[error(transparent)]
    NodeId(#[from] NodeIdError),
    /// A volume capability hanfs cannot serve (block access, unknown access mode, ...).
    #[error("{0}")]
    Capability(String),
    /// A StorageClass / VolumeSnapshotClass / VolumeAttributesClass parameter is wrong.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// A paging request with a negative `max_entries`.
    #[error("max_entries must not be negative, got {0}")]
    NegativeMaxEntries(i32),
    /// A capacity range that cannot be satisfied by any size.
    #[error("capacity_range: {0}")]
    CapacityRange(&'static str),
    /// Expansion found the volume already larger than `limit_bytes` (volumes never shrink).
    #[error(
        "volume is already {capacity} bytes, more than limit_bytes {limit} (volumes do not shrink)"
    )]
    AboveLimit { capacity: i64, limit: i64 },
    /// A group snapshot call's `snapshot_ids` are not exactly the group's members.
    #[error("{0}")]
    SnapshotListMismatch(String),
    /// The backend has no such volume or snapshot.
    #[error("{0}")]
    NotFound(String),
    /// The backend has a volume or snapshot of this name with other parameters
    /// (another capacity, content source or source volume).
    #[error("{0}")]
    AlreadyExists(String),
    /// The backend volume API cannot be reached (no active server, failover, network).
    #[error("backend volume API unavailable: {0}")]
    BackendUnavailable(String),
    /// Any other backend answer; its code is already the right CSI code.
    #[error("{}", .0.message())]
    Backend(Status),
    /// The backend answered with something this controller cannot turn into an id.
    #[error("backend returned {0}")]
    BadBackendReply(String),
}

impl ControllerError {
    /// The CSI code for this error (CSI spec, "Error Scheme" of each Controller RPC).
    pub fn code(&self) -> Code {
        match self {
            ControllerError::Missing(_)
            | ControllerError::Name(_)
            | ControllerError::Capability(_)
            | ControllerError::Param(_)
            | ControllerError::NegativeMaxEntries(_)
            | ControllerError::CapacityRange(_)
            | ControllerError::SnapshotListMismatch(_) => Code::InvalidArgument,
            ControllerError::Id(err) | ControllerError::ContentSource { source: err, .. }
                if err.means_not_found() =>
            {
                Code::NotFound
            }
            ControllerError::Id(_) | ControllerError::ContentSource { .. } => Code::InvalidArgument,
            ControllerError::NodeId(err) if err.means_unknown_node() => Code::NotFound,
            ControllerError::NodeId(_) => Code::InvalidArgument,
            ControllerError::AboveLimit { .. } => Code::OutOfRange,
            ControllerError::NotFound(_) => Code::NotFound,
            ControllerError::AlreadyExists(_) => Code::AlreadyExists,
            ControllerError::BackendUnavailable(_) => Code::Unavailable,
            ControllerError::Backend(status) => status.code(),
            ControllerError::BadBackendReply(_) => Code::Internal,
        }
    }
}

/// A backend answer. UNKNOWN is what tonic reports for a connection that broke mid-call
/// (e.g. the active server died): like UNAVAILABLE it means "try again", which the CO
/// does with backoff.
impl From<Status> for ControllerError {
    fn from(status: Status) -> Self {
        match status.code() {
            Code::Unavailable | Code::Unknown => {
                ControllerError::BackendUnavailable(status.message().to_owned())
            }
            Code::NotFound => ControllerError::NotFound(status.message().to_owned()),
            Code::AlreadyExists => ControllerError::AlreadyExists(status.message().to_owned()),
            _ => ControllerError::Backend(status),
        }
    }
}

impl From<ControllerError> for Status {
    fn from(err: ControllerError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::ids::{ClusterId, RequestName, SnapshotId, VolumeId};

    fn status(err: impl Into<ControllerError>) -> Status {
        Status::from(err.into())
    }

    #[test]
    fn request_errors_are_invalid_argument() {
        let bad_name = RequestName::parse("").unwrap_err();
        for err in [
            ControllerError::Missing("volume_id"),
            ControllerError::Name(bad_name),
            ControllerError::Capability("block access is not supported".into()),
            ControllerError::NegativeMaxEntries(-1),
            ControllerError::CapacityRange("required_bytes exceeds limit_bytes"),
        ] {
            assert_eq!(status(err).code(), Code::InvalidArgument);
        }
        let missing = status(ControllerError::Missing("volume_id"));
        assert_eq!(missing.message(), "volume_id is required");
    }

    #[test]
    fn id_errors_split_into_not_found_and_invalid() {
        let ours = ClusterId::parse("c1").unwrap();
        let foreign = VolumeId::parse("v1/other/pvc-1", &ours).unwrap_err();
        let not_ours = SnapshotId::parse("snap-from-elsewhere", &ours).unwrap_err();
        let malformed = VolumeId::parse("v1/c1/../x", &ours).unwrap_err();
        assert_eq!(status(foreign.clone()).code(), Code::NotFound);
        assert_eq!(status(not_ours).code(), Code::NotFound);
        assert_eq!(status(malformed.clone()).code(), Code::InvalidArgument);
        let source = |source| ControllerError::ContentSource {
            kind: "snapshot",
            source,
        };
        assert_eq!(status(source(foreign)).code(), Code::NotFound);
        let invalid = status(source(malformed));
        assert_eq!(invalid.code(), Code::InvalidArgument);
        assert!(invalid.message().starts_with("content source snapshot: "));
    }

    #[test]
    fn node_ids_without_an_address_are_unknown_nodes_and_bad_addresses_invalid() {
        let unknown = common::node_id::NodeId::parse("some-fake-node-id").unwrap_err();
        assert_eq!(status(unknown).code(), Code::NotFound);
        let bad = common::node_id::NodeId::parse("n@10.0.0.300").unwrap_err();
        let bad = status(bad);
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().contains("10.0.0.300"), "{}", bad.message());
    }

    #[test]
    fn backend_answers_keep_their_meaning() {
        let unavailable = status(Status::unavailable("connection refused"));
        assert_eq!(unavailable.code(), Code::Unavailable);
        assert_eq!(
            unavailable.message(),
            "backend volume API unavailable: connection refused"
        );
        assert_eq!(
            status(Status::unknown("h2 protocol error")).code(),
            Code::Unavailable
        );
        let exists = status(Status::already_exists("pvc-1 exists with 2 GiB"));
        assert_eq!(exists.code(), Code::AlreadyExists);
        assert_eq!(exists.message(), "pvc-1 exists with 2 GiB");
        assert_eq!(status(Status::not_found("gone")).code(), Code::NotFound);
        for code in [
            Code::ResourceExhausted,
            Code::OutOfRange,
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::DeadlineExceeded,
            Code::Unauthenticated,
            Code::Internal,
        ] {
            let passed = status(Status::new(code, "from the backend"));
            assert_eq!(passed.code(), code);
            assert_eq!(passed.message(), "from the backend");
        }
    }

    #[test]
    fn controller_findings_map_to_their_codes() {
        let above = status(ControllerError::AboveLimit {
            capacity: 2,
            limit: 1,
        });
        assert_eq!(above.code(), Code::OutOfRange);
        assert_eq!(
            status(ControllerError::BadBackendReply(
                "a bad directory name".into()
            ))
            .code(),
            Code::Internal
        );
    }
}

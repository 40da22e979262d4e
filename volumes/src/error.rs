//! Errors of the volume service; `api.rs` maps each variant to one gRPC code.

use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum VolumeError {
    /// A name, size or parameter the caller must fix.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume or snapshot does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken by something with other properties.
    #[error("{0}")]
    AlreadyExists(String),
    /// The size cannot be served (e.g. smaller than the source).
    #[error("{0}")]
    OutOfRange(String),
    /// Not enough unpromised space under the capacity policy.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Another call on the same name is in progress.
    #[error("{0}")]
    Busy(String),
    /// The request is valid but the state does not allow it (e.g. deleting one member
    /// of a group snapshot on its own).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A group snapshot could not be cut consistently because its members kept
    /// changing; retrying later may succeed.
    #[error("{0}")]
    Unsettled(String),
    /// A pagination token this server did not hand out.
    #[error("invalid starting token {0:?}")]
    BadToken(String),
    /// A filesystem call failed.
    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl VolumeError {
    pub fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| VolumeError::Io {
            context,
            path,
            source,
        }
    }
}

pub type Result<T, E = VolumeError> = std::result::Result<T, E>;

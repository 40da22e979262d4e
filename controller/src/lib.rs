//! `hanfs-controller`: the CSI Identity and Controller services.
//!
//! Stateless: every volume id names its directory (`v1/<cluster>/<dir>`), and all state
//! lives on the storage servers behind the backend volume API.
//!
//! - [`params`]: StorageClass / VolumeSnapshotClass / VolumeAttributesClass parameters
//!   (a superset of csi-driver-nfs's), parsed and validated without I/O.
//! - [`capabilities`]: which volume capabilities hanfs serves, checked without I/O.
//! - [`service`]: the Controller service: CSI semantics over backend calls.
//! - [`error`]: the service's errors and their one mapping to CSI status codes.
//! - [`backend`]: the authenticated client of the backend volume API.
//! - [`health`]: `grpc.health.v1`, SERVING while the backend answers (background check).

pub mod backend;
pub mod capabilities;
pub mod error;
pub mod health;
pub mod params;
pub mod service;

//! `hanfs-controller`: the CSI Identity and Controller services.
//!
//! Stateless: every volume id names its directory (`v1/<cluster>/<dir>`), and all state
//! lives on the storage servers behind the backend volume API.
//!
//! - [`params`]: StorageClass / VolumeSnapshotClass / VolumeAttributesClass parameters
//!   (a superset of csi-driver-nfs's), parsed and validated without I/O.
//! - [`capabilities`]: which volume capabilities hanfs serves, checked without I/O.
//! - [`service`]: the Controller service: CSI semantics over backend calls.
//! - [`group`]: the GroupController service: volume group snapshots (CSI ids, checks).
//! - [`error`]: the service's errors and their one mapping to CSI status codes.
//! - [`backend`]: the authenticated client of the backend volume API: keepalives,
//!   deadlines, and retries of idempotent calls across a failover.
//! - [`retry`]: which failed backend calls are sent again and after how long (pure).
//! - [`deadline`]: the CSI caller's `grpc-timeout`, carried to the backend calls.
//! - [`health`]: `grpc.health.v1`, SERVING while the backend answers (background check).

pub mod backend;
pub mod capabilities;
pub mod deadline;
pub mod error;
pub mod group;
pub mod health;
pub mod params;
pub mod retry;
pub mod service;

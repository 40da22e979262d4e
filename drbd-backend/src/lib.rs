//! `hanfs-backend`: the agent on each storage server.
//!
//! Module map (what each part owns):
//! - [`volumes`]: the volume service over the export's directory tree — layout and
//!   crash recovery, per-volume metadata, project quotas, reflink/copy, per-name
//!   locks, and [`volumes::VolumeStore`], the blocking API that does the work.
//! - [`api`]: the gRPC server for `backend.proto`, mapping errors to status codes in
//!   one place and running blocking filesystem work off the async runtime.
//! - [`ha`]: the HA role manager: the pure decision core, its simulation, the agent loop.
//! - [`drivers`]: one module per outside thing: DRBD, filesystem mount, nfsd, VIP, tickle
//!   ACKs, the Kubernetes Lease, external commands.
//! - [`admin`]: status / switchover / force-promote, and Prometheus metrics.
//! - [`agent_config`]: the agent's JSON configuration file.
//!

pub mod admin;
pub mod agent_config;
pub mod api;
pub mod drivers;
pub mod ha;
pub mod volumes;

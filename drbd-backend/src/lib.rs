//! `hanfs-backend`: the agent on each storage server. The volume service it serves while
//! active lives in the `volumes` crate (local mode uses it too).
//!
//! Module map (what each part owns):
//! - [`ha`]: the HA role manager: the pure decision core, its simulation, the agent loop.
//! - [`drivers`]: one module per outside thing: DRBD, filesystem mount, nfsd, VIP, tickle
//!   ACKs, the Kubernetes Lease, external commands.
//! - [`admin`]: status / switchover / force-promote, and Prometheus metrics.
//! - [`agent_config`]: the agent's JSON configuration file.
//!

pub mod admin;
pub mod agent_config;
pub mod drivers;
pub mod ha;

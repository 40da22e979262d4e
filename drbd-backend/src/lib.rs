//! `hanfs-backend`: the agent on each storage server. The volume service it serves while
//! active lives in the `volumes` crate (local mode uses it too).
//!
//! Module map (what each part owns):
//! - [`ha`]: the HA role manager: the pure decision core, its simulation, the agent loop.
//! - [`drivers`]: one module per outside thing: DRBD, filesystem mount, nfsd, VIP, tickle
//!   ACKs, the Kubernetes Lease, external commands.
//! - [`admin`]: status / switchover / force-promote over the admin socket.
//! - [`metrics`]: Prometheus `/metrics` (axum), and the sampler that keeps filesystem
//!   calls out of a scrape.
//! - [`servers`]: the spawned servers, watched: the first to stop is reported.
//! - [`agent_config`]: the agent's JSON configuration file.
//!

pub mod admin;
pub mod agent_config;
pub mod drivers;
pub mod ha;
pub mod metrics;
pub mod servers;

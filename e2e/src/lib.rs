//! End-to-end runs on the VM cluster: real DRBD, kernel nfsd and NFS client, a real
//! kube-apiserver, the hanfs agents, controller and node plugin (DESIGN.md §5).
//!
//! - [`acl`]: per-volume export ACLs: refused before publish, after unpublish and from a
//!   second address, kept across a hard kill.
//! - [`cluster`]: brings up the whole hanfs installation (three VMs, the API server,
//!   DRBD, agents, the controller on the host, the node plugin in the client VM).
//! - [`sanity`]: the upstream csi-sanity over real NFS.
//! - [`volume_checks`]: per-volume behaviour on the real stack (quota, stats, expansion,
//!   snapshots and clones).
//! - [`writer`] + [`scenarios`]: failovers measured by a client that fsyncs numbered
//!   records; [`stock`]: the same hard kill with the hand-built setup people run today;
//!   [`health_probe`]: NodeGetStorageHealth watched through a hard kill; [`breakdown`]:
//!   where each failover's stall went, from the new active's agent log.
//! - [`soak`]: the Lease soak: writer, volume churn and API load for half an hour with
//!   nothing failing, counting unplanned hand-overs and how close renewals came to the
//!   renew deadline (what proves a Lease duration safe).
//! - [`kube_pods`]: the client VM as a kubelet node, the chart `helm install`ed, workload
//!   pods writing through failovers.
//! - [`storage_suite`]: Kubernetes' external-storage e2e suite against that node.
//! - [`volume_calls`]: CSI creates, deletes and snapshots in a loop through a hard kill:
//!   each finishes, none much slower than the failover, each name once on the survivor.
//! - [`volume_load`]: volumes created, published over NFS, stat'ed, snapshotted and
//!   deleted by concurrent clients: nothing fails, nothing is left, nothing leaks.
//! - [`vm_bench`]: hanfs-bench in the client VM, hanfs beside csi-driver-nfs against the
//!   same HA export (provisioning, footprint, data path).
//! - [`report`]: the tables.
//!
//! The binary `hanfs-e2e` runs the CI subset (`ci`), the full matrix (`matrix`) or the
//! storage e2e suite (`storage-e2e`).

pub mod acl;
pub mod breakdown;
pub mod cluster;
pub mod health_probe;
pub mod kube_pods;
pub mod report;
pub mod sanity;
pub mod scenarios;
pub mod soak;
pub mod stock;
pub mod storage_suite;
pub mod vm_bench;
pub mod volume_calls;
pub mod volume_checks;
pub mod volume_load;
pub mod writer;

use std::time::Instant;

pub type Error = Box<dyn std::error::Error>;

/// Seconds since the run started, for progress lines on stderr.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Clock(Instant::now())
    }

    pub fn log(&self, what: &str) {
        eprintln!("[{:>7.1}s] {what}", self.0.elapsed().as_secs_f64());
    }

    pub fn elapsed_s(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

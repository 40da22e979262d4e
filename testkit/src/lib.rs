//! Test harnesses that start real things, and stop them again.
//!
//! Everything here is blocking (`std::process`), so it works the same from plain `#[test]`s
//! and from async tests; every wait is bounded and every started process is stopped on
//! drop, also when a test panics.
//!
//! - [`certs`]: a throwaway PKI (CA, server and client certificates, expired ones) for
//!   the mutual-TLS tests and the VM cluster.
//! - [`cmd`]: run one external command with stdin closed, a timeout, and exit status plus
//!   stderr in the error.
//! - [`process`]: [`process::Supervised`], a long-running child in its own process group,
//!   stopped on drop (SIGTERM, bounded wait, SIGKILL to the whole group).
//! - [`netns`]: [`netns::Topology`], private network namespaces (a bridge in a "core"
//!   namespace, N members on veth pairs) that can be partitioned; wraps `e2e/netns/netns.sh`.
//! - [`kube`]: [`kube::KubeApiServer`], etcd + kube-apiserver (+ kube-controller-manager
//!   with [`kube::Options`]) inside a namespace; wraps `e2e/kube/build.sh` (builds the
//!   binaries into a cache once) and `e2e/kube/start.sh`.
//! - [`csi_sidecars`]: [`csi_sidecars::Sidecar`], csi-provisioner, csi-resizer,
//!   csi-snapshotter, snapshot-controller, csi-attacher as processes in a namespace; wraps
//!   `e2e/kube/build-sidecars.sh` (built into a cache once).
//! - [`thread_ns`]: run a closure or a future on a thread inside a network namespace.
//! - [`vm`]: [`vm::Cluster`], Debian VMs (qemu TCG, kernel with drbd/nfsd) on a bridge in a
//!   private namespace, commands through a 9p mailbox, hard kill and restart; wraps
//!   `e2e/vm/build-image.sh` (image cached once) and `e2e/vm/vm.sh`.
//!
//! Needs root (`ip netns`), `ip`, `curl`, `openssl`, and Go for the first build.

pub mod certs;
pub mod cmd;
pub mod csi_sidecars;
pub mod kube;
pub mod netns;
pub mod process;
pub mod thread_ns;
pub mod vm;

use std::path::PathBuf;

/// Path of a file in the repository's `e2e/` folder, where the scripts this crate wraps live.
fn e2e_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../e2e")
        .join(rel)
}

//! Drivers: one module per outside thing the HA agent observes or acts on. Each keeps
//! its parsing pure (tested with literal input) and its I/O behind timeouts.
//!
//! - [`command`]: running an external tool: stdin closed, a timeout, the child killed
//!   on timeout, exit status and stderr in the error.
//! - [`lease`]: the Kubernetes Lease (kube-rs), every write a compare-and-swap.
//! - [`tickle`]: the NFS clients' connections to the VIP, and tickle ACKs after takeover.
//! - [`vip`]: the virtual IP: add/remove/check over rtnetlink, gratuitous ARP.
//! - [`drbd`]: `drbdsetup events2` parsing and folding, drbdadm role/connection commands.
//! - [`fs_mount`]: mounting/unmounting the replicated filesystem, mountinfo, write probe.
//! - [`nfsd`]: kernel NFS server steps (state dir, lease/grace, UTS-namespaced start, exports).

pub mod command;
pub mod drbd;
pub mod fs_mount;
pub mod lease;
pub mod nfsd;
pub mod tickle;
pub mod vip;

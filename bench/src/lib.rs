//! hanfs-bench: hanfs side by side with a peer CSI driver (csi-driver-nfs's
//! `nfsplugin`), driven the same way over their CSI sockets, in one run on one machine
//! (absolute times are noisy; the ratios are the result).
//!
//! - [`load`]: the load generator (CreateVolume / DeleteVolume at N in flight,
//!   ListVolumes paging), over any CSI controller endpoint.
//! - [`procfs`]: RSS and CPU of a process from /proc.
//! - [`targets`]: starting hanfs local mode and the peer on this machine, stopped on drop.
//! - [`measure`]: the run itself: idle footprint, provisioning per concurrency, the
//!   populated export, ListVolumes, footprint under load.
//! - [`datapath`]: throughput and fsync latency through mounted volumes, targets in turns.
//! - [`stats`], [`report`]: percentiles and the table (pure).
//! - [`records`], [`plot`]: the e2e matrix's per-trial records and the SVG pictures.

pub mod datapath;
pub mod load;
pub mod measure;
pub mod plot;
pub mod procfs;
pub mod records;
pub mod report;
pub mod stats;
pub mod targets;

//! What the node plugin is told at start: who it is, which cluster it serves, how
//! volumes reach this node, and where kubelet may ask it to mount them.

use common::ids::ClusterId;
use std::path::PathBuf;
use std::time::Duration;

/// NFS options used unless `--nfs-mount-option` replaces them.
///
/// `vers=4.2` must be explicit: a raw mount(2) of `nfs4` without `vers=` silently
/// negotiates v4.0. `hard` keeps applications blocked (not failing) across a failover;
/// `timeo=50` (5 s) with `retrans=2` lets the client retry soon after the VIP moved.
/// `noresvport` lets a reconnect pick a fresh source port instead of waiting for the
/// old one to leave TIME_WAIT, which matters right after the VIP moved.
pub const DEFAULT_NFS_OPTIONS: &[&str] = &[
    "vers=4.2",
    "proto=tcp",
    "hard",
    "timeo=50",
    "retrans=2",
    "noresvport",
];

/// The export path on the storage servers unless the volume context or a flag says otherwise.
pub const DEFAULT_NFS_SHARE: &str = "/export";

/// Where kubelet puts publish targets unless configured otherwise.
pub const DEFAULT_TARGET_ROOT: &str = "/var/lib/kubelet";

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The CSI driver name reported by GetPluginInfo.
    pub driver_name: String,
    /// This node's id in NodeGetInfo: the Kubernetes node name, with `@<address>` when
    /// the node's NFS address is known (see `common::node_id`).
    pub node_id: String,
    /// Volume ids of other clusters are answered with NOT_FOUND.
    pub cluster_id: ClusterId,
    /// How a volume directory reaches this node.
    pub transport: Transport,
    /// Publish/unpublish targets must lie below one of these (after resolving
    /// symlinks of the target's parent), so a bad request cannot mount over `/etc`.
    pub allowed_target_roots: Vec<PathBuf>,
    /// Longest a mount or one unmount attempt may take before the helper is killed.
    pub mount_timeout: Duration,
    /// Longest a statfs for NodeGetVolumeStats may take; past it the volume is reported
    /// abnormal instead of blocking kubelet.
    pub stats_timeout: Duration,
    /// The binary re-executed as `<binary> helper ...` for every syscall on a mount
    /// path (normally this very binary, `std::env::current_exe()`).
    pub helper_binary: PathBuf,
}

/// How a volume directory gets onto this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// The export is a local directory: bind-mount `<export_root>/volumes/<dir>`.
    Local { export_root: PathBuf },
    /// NFSv4 from the storage servers' VIP: mount `<server>:<share>/volumes/<dir>`.
    Nfs {
        /// Used when the volume context carries no `server`.
        default_server: Option<String>,
        /// Used when the volume context carries no `share`.
        default_share: String,
        /// Base options; the StorageClass's `mountOptions` override same-named ones.
        options: Vec<String>,
    },
}

impl Transport {
    /// NFS with the default share and options.
    pub fn nfs(default_server: Option<String>) -> Self {
        Transport::Nfs {
            default_server,
            default_share: DEFAULT_NFS_SHARE.to_owned(),
            options: DEFAULT_NFS_OPTIONS
                .iter()
                .map(|o| (*o).to_owned())
                .collect(),
        }
    }
}

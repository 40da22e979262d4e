//! The HA agent's configuration file (JSON): who this node is, where the Lease lives,
//! and what it drives. Parsed and checked before anything starts.

use crate::ha::decide::HaConfig;
use crate::ha::system::LastResort;
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// This node's name (the Lease holder identity).
    pub node: String,
    pub peer: String,
    pub lease: LeaseSection,
    /// A kubeconfig for the Lease; in-cluster credentials when absent.
    pub kubeconfig: Option<PathBuf>,
    /// Persisted tenure (use tmpfs: it must not survive a reboot).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_admin_socket")]
    pub admin_socket: PathBuf,
    /// `host:port` for Prometheus `/metrics`; none: no metrics endpoint.
    pub metrics_listen: Option<String>,
    pub volume_api: VolumeApiSection,
    pub drbd: DrbdSection,
    pub filesystem: FilesystemSection,
    pub nfsd: NfsdSection,
    pub vip: VipSection,
    #[serde(default = "default_last_resort")]
    pub last_resort: LastResort,
    /// The agent's CPU priority (nice, -20..=19) for all its threads and the tools it
    /// runs. Above nfsd and a busy server's volume work by default, so Lease calls keep
    /// their deadlines when the node is saturated (a soak in 1-vCPU test VMs lost the
    /// Lease at nice 0); corosync runs at realtime priority for the same reason.
    #[serde(default = "default_nice")]
    pub nice: i32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseSection {
    pub namespace: String,
    pub name: String,
    /// Expiry of a silent holder; the holder renews every third of it and stops serving
    /// at two thirds. The failover budget starts here.
    #[serde(default = "default_lease_ms")]
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeApiSection {
    #[serde(default = "default_volume_listen")]
    pub listen: String,
    pub token_file: Option<PathBuf>,
    /// Mutual TLS; required when `listen` is TCP.
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub thin: bool,
    #[serde(default = "default_volume_bytes")]
    pub default_volume_bytes: i64,
}

/// The volume API's TLS files (a Kubernetes TLS Secret's `ca.crt`, `tls.crt`, `tls.key`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The CA whose certificates clients (controller, hanfsctl) must present.
    pub ca_file: PathBuf,
    /// This server's certificate; its subject alternative names must include the VIP.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl VolumeApiSection {
    pub fn tls_files(&self) -> Option<common::credentials::TlsFiles> {
        self.tls.as_ref().map(|t| common::credentials::TlsFiles {
            ca: t.ca_file.clone(),
            cert: t.cert_file.clone(),
            key: t.key_file.clone(),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrbdSection {
    pub resource: String,
    /// The DRBD device, e.g. /dev/drbd0.
    pub device: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemSection {
    pub mountpoint: PathBuf,
    #[serde(default = "default_fstype")]
    pub fstype: String,
    #[serde(default = "default_mount_options")]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsdSection {
    /// The NFSv4 server scope both nodes share (the VIP's DNS name).
    pub scope: String,
    #[serde(default = "default_nfs_time")]
    pub lease_secs: u32,
    #[serde(default = "default_nfs_time")]
    pub grace_secs: u32,
    #[serde(default = "default_threads")]
    pub threads: u32,
    /// Networks whose nodes ControllerPublish may admit (CIDRs, e.g. `10.0.0.0/16`);
    /// a node address outside them is refused with FAILED_PRECONDITION. Default: any.
    /// Each volume is exported only to the nodes it is published to, never the tree.
    #[serde(default = "default_allowed_clients")]
    pub allowed_clients: Vec<String>,
    /// `root_squash` on every volume export (default true); false: `no_root_squash`.
    #[serde(default = "default_root_squash")]
    pub root_squash: bool,
    /// The exports file the agent owns (`exportfs -r` reads `/etc/exports.d/*.exports`).
    #[serde(default = "default_exports_file")]
    pub exports_file: PathBuf,
}

impl NfsdSection {
    /// The parsed `allowed_clients`.
    pub fn allowed_cidrs(&self) -> Result<Vec<common::node_id::Cidr>, String> {
        if self.allowed_clients.is_empty() {
            return Err("nfsd.allowed_clients is empty: no node could ever mount a volume".into());
        }
        self.allowed_clients
            .iter()
            .map(|c| {
                common::node_id::Cidr::parse(c).map_err(|e| format!("nfsd.allowed_clients: {e}"))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSection {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub interface: String,
}

fn default_state_dir() -> PathBuf {
    "/run/hanfs".into()
}
fn default_admin_socket() -> PathBuf {
    "/run/hanfs/admin.sock".into()
}
fn default_last_resort() -> LastResort {
    LastResort::Reboot
}
fn default_nice() -> i32 {
    -10
}
fn default_lease_ms() -> u64 {
    6000
}
fn default_volume_listen() -> String {
    "tcp://0.0.0.0:9820".into()
}
fn default_volume_bytes() -> i64 {
    1 << 30
}
fn default_fstype() -> String {
    "xfs".into()
}
fn default_mount_options() -> Vec<String> {
    vec!["prjquota".into()]
}
fn default_nfs_time() -> u32 {
    10
}
fn default_threads() -> u32 {
    8
}
fn default_allowed_clients() -> Vec<String> {
    vec!["0.0.0.0/0".into(), "::/0".into()]
}
fn default_root_squash() -> bool {
    true
}
fn default_exports_file() -> PathBuf {
    "/etc/exports.d/hanfs.exports".into()
}

impl AgentFile {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let file: AgentFile =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        file.ha()
            .check()
            .map_err(|e| format!("{}: lease timings: {e}", path.display()))?;
        if !(-20..=19).contains(&file.nice) {
            return Err(format!(
                "{}: nice must be in -20..=19, not {}",
                path.display(),
                file.nice
            ));
        }
        if file.lease.duration_ms < 1500 {
            return Err(format!(
                "{}: lease.duration_ms must be at least 1500",
                path.display()
            ));
        }
        Ok(file)
    }

    pub fn ha(&self) -> HaConfig {
        HaConfig::with_lease(&self.node, &self.peer, self.lease.duration_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
        "node": "storage-a", "peer": "storage-b",
        "lease": {"namespace": "hanfs", "name": "hanfs-export"},
        "volume_api": {"token_file": "/etc/hanfs/token"},
        "drbd": {"resource": "r0", "device": "/dev/drbd0"},
        "filesystem": {"mountpoint": "/export"},
        "nfsd": {"scope": "nfs.example.com"},
        "vip": {"address": "10.0.0.100", "prefix_len": 24, "interface": "eth0"}
    }"#;

    #[test]
    fn the_documented_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agent.json");
        let file = AgentFile::load(&path).unwrap();
        assert_eq!(
            (file.node.as_str(), file.peer.as_str()),
            ("storage-a", "storage-b")
        );
        assert_eq!(file.metrics_listen.as_deref(), Some("0.0.0.0:9821"));
    }

    #[test]
    fn the_example_parses_with_defaults_and_typos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        std::fs::write(&path, EXAMPLE).unwrap();
        let file = AgentFile::load(&path).unwrap();
        assert_eq!(file.lease.duration_ms, 6000);
        assert_eq!(file.nice, -10);
        assert_eq!(file.last_resort, LastResort::Reboot);
        assert_eq!(file.filesystem.options, vec!["prjquota"]);
        std::fs::write(&path, EXAMPLE.replace("\"peer\"", "\"pear\"")).unwrap();
        let err = AgentFile::load(&path).unwrap_err();
        assert!(err.contains("pear"), "{err}");
        std::fs::write(
            &path,
            EXAMPLE.replace("\"node\": \"storage-a\"", "\"node\": \"storage-b\""),
        )
        .unwrap();
        assert!(AgentFile::load(&path).unwrap_err().contains("differ"));
    }
}

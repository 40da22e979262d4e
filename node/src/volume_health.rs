//! NodeGetVolumeHealth and NodeGetStorageHealth answers (CSI v1.13), from what the
//! probes saw: pure.
//!
//! The probes themselves run elsewhere, each bounded: a statfs of a mount in the
//! killable helper (a hung NFS server makes statfs block in the kernel, so it must not
//! run in this process), a TCP connect to the NFS server, a stat of a local directory.
//! A probe that did not answer in time is a finding (`NotResponding`), never a hang.

use crate::syscall_helper::HelperError;
use nix::errno::Errno;
use proto::csi::v1::node_get_storage_health_response::StorageBackendHealth;
use proto::csi::v1::volume_health::VolumeHealthEntry;
use proto::csi::v1::{StorageHealthErrorType, VolumeHealthErrorType};
use std::time::Duration;

/// One adverse condition of a volume on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub status: VolumeHealthErrorType,
    /// CamelCase, for machines (CSI: unique per status within one answer).
    pub reason: &'static str,
    pub message: String,
}

impl Finding {
    fn inaccessible(reason: &'static str, message: String) -> Self {
        Self {
            status: VolumeHealthErrorType::Inaccessible,
            reason,
            message,
        }
    }
}

/// What the statfs of one mount of the volume says. `None` for failures that say
/// nothing about the volume (the helper could not run at all): those stay RPC errors.
pub fn of_statfs_failure(path: &str, err: &HelperError, timeout: Duration) -> Option<Finding> {
    let not_responding = || {
        Finding::inaccessible(
            "NotResponding",
            format!(
                "{path}: the filesystem did not answer a statfs within {timeout:?} (NFS server not responding)"
            ),
        )
    };
    if err.is_timeout() {
        return Some(not_responding());
    }
    match err.errno() {
        Some(Errno::ESTALE) => Some(Finding::inaccessible(
            "StaleFileHandle",
            format!(
                "{path}: stale file handle: the NFS server no longer knows this volume's directory"
            ),
        )),
        Some(Errno::EIO) => Some(not_responding()),
        Some(_) => Some(Finding::inaccessible(
            "StatfsFailed",
            format!("{path}: statfs failed: {err}"),
        )),
        None => None,
    }
}

/// A volume mounted on this node whose directory is gone from the export (local
/// transport): the mount still answers, but it shows an unlinked directory.
pub fn directory_missing(source: &str) -> Vec<Finding> {
    let message = format!("the volume's directory {source} no longer exists in the export");
    vec![
        Finding::inaccessible("VolumeDirectoryMissing", message.clone()),
        Finding {
            status: VolumeHealthErrorType::DataLoss,
            reason: "VolumeDirectoryMissing",
            message,
        },
    ]
}

/// The entries of one answer: each (status, reason) once, in the order first seen
/// (CSI: "MUST NOT return multiple VolumeHealthEntry messages ... with the same
/// (status, reason)"); the messages of duplicates are joined.
pub fn entries(findings: Vec<Finding>) -> Vec<VolumeHealthEntry> {
    let mut out: Vec<VolumeHealthEntry> = Vec::new();
    for f in findings {
        match out
            .iter_mut()
            .find(|e| e.status == f.status as i32 && e.reason == f.reason)
        {
            Some(entry) => {
                if !entry.message.contains(&f.message) {
                    entry.message = format!("{}; {}", entry.message, f.message);
                }
            }
            None => out.push(VolumeHealthEntry {
                status: f.status as i32,
                reason: f.reason.to_owned(),
                message: f.message,
            }),
        }
    }
    out
}

/// How the storage looks from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageProbe {
    /// The server (NFS) or the export directory (local) answered in time.
    Reachable,
    /// It refused or failed: `detail` says how.
    Unreachable { target: String, detail: String },
    /// No answer within the bound: on NFS typically a failover in progress (the VIP is
    /// moving and nobody answers on it yet) or a dead server.
    TimedOut { target: String, after: Duration },
}

/// One probe's NodeGetStorageHealth entries (none while reachable). A mount that does
/// not answer while the server does is DEGRADED: new mounts work, old ones hang.
pub fn storage_entries(
    server: &StorageProbe,
    mounts: Option<&Finding>,
) -> Vec<StorageBackendHealth> {
    let mut out = Vec::new();
    match server {
        StorageProbe::Reachable => {}
        StorageProbe::Unreachable { target, detail } => out.push(StorageBackendHealth {
            status: StorageHealthErrorType::StorageUnreachable as i32,
            reason: "StorageUnreachable".into(),
            message: format!("{target}: {detail}"),
            volume_capability: None,
        }),
        StorageProbe::TimedOut { target, after } => out.push(StorageBackendHealth {
            status: StorageHealthErrorType::StorageUnreachable as i32,
            reason: "StorageNotResponding".into(),
            message: format!(
                "{target} did not answer within {after:?}: the storage servers may be failing over"
            ),
            volume_capability: None,
        }),
    }
    if let Some(finding) = mounts {
        out.push(StorageBackendHealth {
            status: StorageHealthErrorType::StorageDegraded as i32,
            reason: "MountsNotResponding".into(),
            message: finding.message.clone(),
            volume_capability: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn syscall(errno: Errno) -> HelperError {
        HelperError::Syscall {
            op: "statfs /t".into(),
            errno: Some(errno as i32),
            message: errno.desc().into(),
        }
    }

    #[test]
    fn statfs_failures_by_kind() {
        let stale = of_statfs_failure("/t", &syscall(Errno::ESTALE), TIMEOUT).unwrap();
        assert_eq!(
            (stale.status, stale.reason),
            (VolumeHealthErrorType::Inaccessible, "StaleFileHandle")
        );
        let timeout = HelperError::Timeout {
            op: "statfs /t".into(),
            after: TIMEOUT,
        };
        for err in [timeout, syscall(Errno::EIO)] {
            let f = of_statfs_failure("/t", &err, TIMEOUT).unwrap();
            assert_eq!(f.reason, "NotResponding");
            assert!(f.message.contains("within 10s"), "{}", f.message);
        }
        let other = of_statfs_failure("/t", &syscall(Errno::EACCES), TIMEOUT).unwrap();
        assert_eq!(other.reason, "StatfsFailed");
        let spawn = HelperError::Run {
            op: "statfs /t".into(),
            source: crate::syscall_helper::RunError::Spawn {
                program: "x".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
        };
        assert!(of_statfs_failure("/t", &spawn, TIMEOUT).is_none());
    }

    #[test]
    fn entries_are_unique_per_status_and_reason() {
        let a = of_statfs_failure("/a", &syscall(Errno::EIO), TIMEOUT).unwrap();
        let b = of_statfs_failure("/b", &syscall(Errno::EIO), TIMEOUT).unwrap();
        let mut findings = vec![a, b];
        findings.extend(directory_missing("/x"));
        let e = entries(findings);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].message.contains("/a") && e[0].message.contains("/b"));
        assert_eq!(e[1].reason, "VolumeDirectoryMissing");
        assert_eq!(e[2].status, VolumeHealthErrorType::DataLoss as i32);
        assert!(entries(Vec::new()).is_empty());
    }

    #[test]
    fn storage_entries_by_probe() {
        assert!(storage_entries(&StorageProbe::Reachable, None).is_empty());
        let down = storage_entries(
            &StorageProbe::TimedOut {
                target: "10.0.0.1:2049".into(),
                after: Duration::from_secs(3),
            },
            None,
        );
        assert_eq!(down.len(), 1);
        assert_eq!(
            down[0].status,
            StorageHealthErrorType::StorageUnreachable as i32
        );
        assert!(
            down[0].message.contains("failing over"),
            "{}",
            down[0].message
        );
        let hung = of_statfs_failure("/m", &syscall(Errno::EIO), TIMEOUT).unwrap();
        let degraded = storage_entries(&StorageProbe::Reachable, Some(&hung));
        assert_eq!(
            degraded[0].status,
            StorageHealthErrorType::StorageDegraded as i32
        );
    }
}

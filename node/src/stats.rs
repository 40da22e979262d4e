//! NodeGetVolumeStats answers, from what the statfs helper returned: pure.
//!
//! A statfs that fails with ESTALE or EIO, or does not return in time, is reported as
//! an abnormal VolumeCondition and not as an RPC error: kubelet then shows the
//! condition on the pod's events instead of only logging a failed call.

use crate::syscall_helper::{FsStats, HelperError};
use nix::errno::Errno;
use proto::csi::v1::{VolumeCondition, VolumeUsage, volume_usage};
use std::time::Duration;

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Bytes and inodes; `available` is what a user may still use (`f_bavail`).
pub fn usage_of(stats: &FsStats) -> Vec<VolumeUsage> {
    let bytes = |blocks: u64| clamp(blocks.saturating_mul(stats.block_size));
    vec![
        VolumeUsage {
            total: bytes(stats.blocks),
            available: bytes(stats.blocks_available),
            used: bytes(stats.blocks.saturating_sub(stats.blocks_free)),
            unit: volume_usage::Unit::Bytes as i32,
        },
        VolumeUsage {
            total: clamp(stats.files),
            available: clamp(stats.files_free),
            used: clamp(stats.files.saturating_sub(stats.files_free)),
            unit: volume_usage::Unit::Inodes as i32,
        },
    ]
}

/// The condition of a volume whose statfs answered.
pub fn healthy() -> VolumeCondition {
    VolumeCondition {
        abnormal: false,
        message: "volume is healthy".into(),
    }
}

/// The condition of a volume whose statfs failed. `None` for failures that say nothing
/// about the volume (the helper could not run at all): those stay RPC errors.
pub fn condition_of_failure(err: &HelperError, stats_timeout: Duration) -> Option<VolumeCondition> {
    let abnormal = |message: String| {
        Some(VolumeCondition {
            abnormal: true,
            message,
        })
    };
    let not_responding = || {
        abnormal(format!(
            "NFS server not responding within {stats_timeout:?}"
        ))
    };
    if err.is_timeout() {
        return not_responding();
    }
    match err.errno() {
        Some(Errno::ESTALE) => {
            abnormal("stale file handle: the NFS server no longer knows this volume".to_owned())
        }
        Some(Errno::EIO) => not_responding(),
        Some(_) => abnormal(format!("statfs failed: {err}")),
        None => None,
    }
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
    fn usage_counts_bytes_and_inodes() {
        let stats = FsStats {
            block_size: 4096,
            blocks: 100,
            blocks_free: 40,
            blocks_available: 30,
            files: 1000,
            files_free: 990,
        };
        let usage = usage_of(&stats);
        assert_eq!(
            (usage[0].total, usage[0].available, usage[0].used),
            (409_600, 122_880, 245_760)
        );
        assert_eq!(usage[0].unit, volume_usage::Unit::Bytes as i32);
        assert_eq!(
            (usage[1].total, usage[1].available, usage[1].used),
            (1000, 990, 10)
        );
        assert_eq!(usage[1].unit, volume_usage::Unit::Inodes as i32);
    }

    #[test]
    fn huge_numbers_saturate_instead_of_wrapping() {
        let stats = FsStats {
            block_size: 1 << 20,
            blocks: u64::MAX,
            blocks_free: 0,
            blocks_available: 0,
            files: u64::MAX,
            files_free: 0,
        };
        let usage = usage_of(&stats);
        assert_eq!(usage[0].total, i64::MAX);
        assert_eq!(usage[1].total, i64::MAX);
    }

    #[test]
    fn conditions_by_outcome() {
        assert!(!healthy().abnormal);

        let stale = condition_of_failure(&syscall(Errno::ESTALE), TIMEOUT).unwrap();
        assert!(stale.abnormal);
        assert!(
            stale.message.starts_with("stale file handle"),
            "{}",
            stale.message
        );

        let timeout = HelperError::Timeout {
            op: "statfs /t".into(),
            after: TIMEOUT,
        };
        for err in [timeout, syscall(Errno::EIO)] {
            let c = condition_of_failure(&err, TIMEOUT).unwrap();
            assert!(c.abnormal);
            assert_eq!(c.message, "NFS server not responding within 10s");
        }

        let other = condition_of_failure(&syscall(Errno::EACCES), TIMEOUT).unwrap();
        assert!(
            other.abnormal && other.message.contains("statfs failed"),
            "{}",
            other.message
        );

        let spawn = HelperError::Run {
            op: "statfs /t".into(),
            source: crate::syscall_helper::RunError::Spawn {
                program: "x".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
        };
        assert!(condition_of_failure(&spawn, TIMEOUT).is_none());
    }
}

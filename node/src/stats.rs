//! NodeGetVolumeStats answers, from what the statfs helper returned: pure. (What a
//! failed or hung statfs means for the volume is [`crate::volume_health`]'s.)

use crate::syscall_helper::FsStats;
use proto::csi::v1::{VolumeUsage, volume_usage};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

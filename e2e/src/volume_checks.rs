//! Per-volume behaviour on the real stack, through the CSI calls Kubernetes makes:
//! - the volume's size is enforced through NFS (writing past it fails with
//!   EDQUOT/ENOSPC while the export still has room);
//! - NodeGetVolumeStats reports the volume's own capacity and usage, not the export's;
//! - ControllerExpandVolume raises the limit live (the mounted volume takes more data);
//! - snapshots and clones are reflinks (the export's used space barely moves) holding
//!   the same bytes.

use crate::Error;
use crate::cluster::{HanfsCluster, SHORT, STANDALONE_ROOT, first_word};

const MIB: u64 = 1 << 20;

/// One named check and what it found; `ok == false` fails the run.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

pub fn run(hc: &HanfsCluster) -> Result<Vec<Check>, Error> {
    let mut checks = Vec::new();
    let (id, target) = hc.published_volume("quota-check", "32Mi")?;
    let client = hc.client();
    let (active, _) = hc.wait_active(None, SHORT)?;

    // 1. Quota through NFS.
    let fill = client.exec(
        &format!("dd if=/dev/zero of={target}/fill bs=1M count=48 oflag=direct conv=fsync 2>&1; echo rc=$?; stat -c %s {target}/fill"),
        SHORT,
    )?;
    let export_free = hc
        .vm(&active)
        .run("df -B1 --output=avail /export | tail -1", SHORT)?;
    let export_free: u64 = export_free.trim().parse()?;
    // An unreadable size fails the check rather than reading as "0 bytes got through".
    let written: u64 = fill
        .stdout
        .lines()
        .last()
        .ok_or("quota fill: dd printed nothing")?
        .trim()
        .parse()
        .map_err(|e| {
            format!(
                "quota fill: size of the written file in {:?}: {e}",
                fill.stdout
            )
        })?;
    let refused = fill.stdout.contains("rc=1")
        && (fill.stdout.contains("quota") || fill.stdout.contains("No space"));
    checks.push(Check {
        name: "quota enforced through NFS",
        ok: refused && written <= 33 * MIB && export_free > 64 * MIB,
        detail: format!(
            "32 MiB volume: dd of 48 MiB stopped after {:.1} MiB with {:?}; export still had {} MiB free",
            written as f64 / MIB as f64,
            fill.stdout.lines().find(|l| l.contains("error")).unwrap_or("no error").trim(),
            export_free / MIB
        ),
    });

    // 2. NodeGetVolumeStats: the volume's own size and usage.
    let stats = hc.hanfsctl(&["stats", &id, &target])?;
    let (total, used) = bytes_line(&stats)?;
    checks.push(Check {
        name: "NodeGetVolumeStats shows the volume's capacity and usage",
        ok: total.abs_diff(32 * MIB) <= MIB && used.abs_diff(written) <= 2 * MIB,
        detail: format!(
            "total {:.1} MiB, used {:.1} MiB (export free {} MiB)",
            total as f64 / MIB as f64,
            used as f64 / MIB as f64,
            export_free / MIB
        ),
    });

    // 3. Live expansion: no remount, more room at once.
    hc.hanfsctl(&["volume", "expand", &id, "--size", "64Mi"])?;
    let more = client.exec(
        &format!("rm -f {target}/fill && dd if=/dev/urandom of={target}/data bs=1M count=48 oflag=direct conv=fsync 2>&1"),
        SHORT,
    )?;
    let stats = hc.hanfsctl(&["stats", &id, &target])?;
    let (total, _) = bytes_line(&stats)?;
    checks.push(Check {
        name: "expansion raises the limit live",
        ok: more.success() && total.abs_diff(64 * MIB) <= MIB,
        detail: format!(
            "after ControllerExpandVolume to 64 MiB: 48 MiB written {}, capacity now {:.1} MiB",
            if more.success() { "fine" } else { "FAILED" },
            total as f64 / MIB as f64
        ),
    });

    // 4. Snapshot and clone share blocks (reflink) and hold the same bytes.
    let sum = client.run(&format!("sha256sum {target}/data | cut -d' ' -f1"), SHORT)?;
    let used_before = used_bytes(hc, &active)?;
    let snapshot =
        first_word(&hc.hanfsctl(&["snapshot", "create", "quota-check-snap", "--volume", &id])?)?;
    let clone = first_word(&hc.hanfsctl(&[
        "volume",
        "create",
        "quota-check-clone",
        "--size",
        "64Mi",
        "--from-volume",
        &id,
    ])?)?;
    let restored = first_word(&hc.hanfsctl(&[
        "volume",
        "create",
        "quota-check-restored",
        "--size",
        "64Mi",
        "--from-snapshot",
        &snapshot,
    ])?)?;
    let used_after = used_bytes(hc, &active)?;
    let mut same = true;
    for (i, copy) in [&clone, &restored].into_iter().enumerate() {
        let mount = format!("{STANDALONE_ROOT}/pods/copy{i}/mount");
        client.run(&format!("mkdir -p {mount}"), SHORT)?;
        hc.hanfsctl(&["publish", copy, &mount])?;
        let copy_sum = client.run(&format!("sha256sum {mount}/data | cut -d' ' -f1"), SHORT)?;
        same &= copy_sum.trim() == sum.trim();
        hc.hanfsctl(&["unpublish", copy, &mount])?;
    }
    let grew = used_after.saturating_sub(used_before);
    checks.push(Check {
        name: "snapshot, clone and restore are reflinks with the same bytes",
        ok: same && grew < 8 * MIB,
        detail: format!(
            "3 copies of 48 MiB grew the export by {:.1} MiB; checksums {}",
            grew as f64 / MIB as f64,
            if same { "equal" } else { "DIFFER" }
        ),
    });

    let staging =
        format!("{STANDALONE_ROOT}/plugins/kubernetes.io/csi/hanfs/quota-check/globalmount");
    hc.hanfsctl(&["unpublish", &id, &target, "--staging", &staging])?;
    for volume in [&clone, &restored] {
        hc.hanfsctl(&["volume", "delete", volume])?;
    }
    hc.hanfsctl(&["snapshot", "delete", &snapshot])?;
    hc.hanfsctl(&["volume", "delete", &id])?;
    Ok(checks)
}

/// `bytes: total T used U available A` from `hanfsctl stats`.
fn bytes_line(stats: &str) -> Result<(u64, u64), Error> {
    let line = stats
        .lines()
        .find(|l| l.starts_with("bytes:"))
        .ok_or_else(|| format!("no byte usage in {stats:?}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |key: &str| -> Result<u64, Error> {
        let at = words
            .iter()
            .position(|w| *w == key)
            .ok_or_else(|| format!("no {key} in {line:?}"))?;
        Ok(words.get(at + 1).ok_or("truncated")?.parse()?)
    };
    Ok((number("total")?, number("used")?))
}

fn used_bytes(hc: &HanfsCluster, active: &str) -> Result<u64, Error> {
    hc.vm(active)
        .run("sync; df -B1 --output=used /export | tail -1", SHORT)?
        .trim()
        .parse()
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_byte_line_of_hanfsctl_stats() {
        let out = "bytes: total 33554432 used 1048576 available 32505856\ninodes: total 10 used 1 available 9\ncondition: normal (ok)\n";
        assert_eq!(bytes_line(out).unwrap(), (33554432, 1048576));
        assert!(bytes_line("inodes: total 1 used 1 available 0").is_err());
    }
}

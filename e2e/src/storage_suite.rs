//! Kubernetes' own external-storage e2e suite (`e2e.test` of k8s.io/kubernetes, the suite
//! csi-driver-nfs and other CSI drivers run against themselves) against hanfs on the VM
//! cluster: the chart `helm install`ed, the client VM the kubelet node, real NFS through
//! the VIP. `e2e/kube/storage-e2e/run.sh` runs the binary and sums the JUnit report per
//! suite and test pattern; this module gives it the cluster and reads its result.

use crate::Error;
use crate::cluster::HanfsCluster;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::kube::KubeApiServer;

/// The suite's result as run.sh summed it up.
#[derive(Debug)]
pub struct SuiteResult {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// run.sh's table: passed / failed / skipped per suite and pattern, then each failure.
    pub summary: String,
    pub seconds: f64,
    pub report_dir: PathBuf,
}

/// The test images the suite's pods run (OCI archives made by build-e2e-test.sh), to be
/// put into the node's containerd store before the client VM boots.
pub fn test_images(repo: &Path) -> Result<Vec<PathBuf>, Error> {
    // The script prints its bin folder last; the images folder is that folder's sibling.
    let bin = crate::kube_pods::built(repo, "e2e/kube/build-e2e-test.sh", &[])?;
    let dir = bin
        .parent()
        .ok_or_else(|| {
            format!(
                "build-e2e-test.sh printed {}, which has no parent folder",
                bin.display()
            )
        })?
        .join("images");
    let mut images: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".oci.tar"))
        .collect();
    images.sort();
    if images.is_empty() {
        return Err(format!("no test images (*.oci.tar) in {}", dir.display()).into());
    }
    Ok(images)
}

/// Runs the suite (run.sh's default focus unless `focus` is given) from the API server's
/// namespace, bounded by `limit` (ginkgo's own timeout; run.sh adds 15 min on top).
pub fn run(
    hc: &HanfsCluster,
    kube: &KubeApiServer,
    focus: Option<&str>,
    limit: Duration,
) -> Result<SuiteResult, Error> {
    // Outside the cluster's work folder, which goes with the VMs: the JUnit report and
    // the suite's log must outlive the run that made them.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let report_dir = hc
        .repo
        .join(format!("target/e2e-reports/storage-e2e-{stamp}"));
    std::fs::create_dir_all(&report_dir).map_err(|e| format!("{}: {e}", report_dir.display()))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", kube.core_ns(), "bash"])
        .arg(hc.repo.join("e2e/kube/storage-e2e/run.sh"))
        .arg(kube.kubeconfig());
    if let Some(focus) = focus {
        cmd.arg(focus);
    }
    cmd.env(
        "HANFS_E2E_TIMEOUT",
        format!("{}m", limit.as_secs().div_ceil(60)),
    )
    .env("HANFS_E2E_REPORT_DIR", &report_dir);
    hc.clock.log(&format!(
        "storage e2e suite started (log: {})",
        report_dir.join("e2e.log").display()
    ));
    let started = Instant::now();
    let out = testkit::cmd::output(&mut cmd, limit + Duration::from_secs(20 * 60))?;
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(report_dir.join("run.out"), &stdout)?;
    let summary = std::fs::read_to_string(report_dir.join("summary.txt")).map_err(|e| {
        format!(
            "storage e2e: no summary ({e}); exit {:?}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let (passed, failed, skipped) = parse_total(&summary)?;
    Ok(SuiteResult {
        passed,
        failed,
        skipped,
        summary,
        seconds,
        report_dir,
    })
}

/// run.sh's last line: `storage-e2e: N passed, M failed (K skipped)`. Anything else is an
/// error, never a zero.
fn parse_total(summary: &str) -> Result<(usize, usize, usize), Error> {
    let line = summary
        .lines()
        .rfind(|l| l.starts_with("storage-e2e: "))
        .ok_or("storage e2e summary has no total line")?;
    let garbled =
        || format!("storage e2e total line {line:?} is not N passed, M failed (K skipped)");
    let words: Vec<&str> = line
        .trim_start_matches("storage-e2e: ")
        .split([' ', ',', '(', ')'])
        .filter(|w| !w.is_empty())
        .collect();
    match words[..] {
        [p, "passed", f, "failed", k, "skipped"] => {
            let n = |w: &str| w.parse::<usize>().map_err(|_| garbled());
            Ok((n(p)?, n(f)?, n(k)?))
        }
        _ => Err(garbled().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_line_is_read() {
        let s = "suite [pattern] ...\nprovisioning [Dynamic PV (default fs)]  3 1 2\nstorage-e2e: 12 passed, 1 failed (7 skipped)\n";
        assert_eq!(parse_total(s).unwrap(), (12, 1, 7));
    }

    #[test]
    fn a_missing_or_garbled_total_is_an_error() {
        assert!(parse_total("no total here").is_err());
        assert!(
            parse_total("storage-e2e: dry-run: 63 specs selected in 9 suite/pattern pairs")
                .is_err()
        );
    }
}

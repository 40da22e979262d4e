//! The upstream csi-sanity over real NFS: the controller on the host calls the volume
//! API at the VIP, the node plugin in the client VM mounts `VIP:/export/volumes/<dir>`.
//! No spec is skipped by our flags.
//!
//! csi-sanity creates and removes its target and staging folders itself (`os.Mkdir`,
//! `os.Stat`, `os.Remove` on its own machine). The client VM bind-mounts its 9p share at
//! the very path the host uses for that folder, so those calls and the node plugin's
//! mounts see the same directories; the mounts themselves happen only in the guest.
//! So csi-sanity's removal of those folders goes through `e2e/vm/sanity-remove-path.sh`,
//! which runs `csi-sanity/remove-path.sh` in the client VM: a spec that fails and leaves a
//! mount cannot poison the specs after it, and every such leftover fails the run.

use crate::Error;
use crate::cluster::{HanfsCluster, SHORT};
use std::process::Command;
use std::time::{Duration, Instant};

/// Bound on the whole csi-sanity run (about 4 minutes here).
const SANITY_TIMEOUT: Duration = Duration::from_secs(20 * 60);

#[derive(Debug, Clone)]
pub struct SanityResult {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub pending: usize,
    /// csi-sanity's own skips, one line per reason.
    pub skip_reasons: Vec<String>,
    pub seconds: f64,
    /// The after-run checks on the storage side (archived volumes, nothing left).
    pub checks: Vec<String>,
}

pub fn run(hc: &HanfsCluster) -> Result<SanityResult, Error> {
    let install = Command::new(hc.repo.join("csi-sanity/install.sh")).output()?;
    if !install.status.success() {
        return Err(format!(
            "installing csi-sanity: {}",
            String::from_utf8_lossy(&install.stderr)
        )
        .into());
    }
    let sanity = String::from_utf8(install.stdout)?.trim().to_owned();
    let dir = hc.sanity_dir();
    let log = hc.workdir().join("sanity.log");
    let junit = hc.workdir().join("sanity-junit.xml");
    let share = hc.client().share_dir();
    std::fs::copy(
        hc.repo.join("csi-sanity/remove-path.sh"),
        share.join("remove-path.sh"),
    )?;
    let leaks = share.join("sanity-leaks");
    std::fs::write(&leaks, "")?;
    let remove = hc.repo.join("e2e/vm/sanity-remove-path.sh");
    let remove = remove.display().to_string();
    let mut cmd = Command::new(&sanity);
    cmd.env("HANFS_CLIENT_SHARE", &share);
    cmd.args([
        "--csi.endpoint",
        &hc.node_endpoint().replace("tcp://", ""),
        "--csi.controllerendpoint",
        &hc.controller_endpoint(),
        "--csi.mountdir",
        &dir.join("csi-mount").display().to_string(),
        "--csi.stagingdir",
        &dir.join("csi-staging").display().to_string(),
        "--csi.removemountpathcmd",
        &remove,
        "--csi.removestagingpathcmd",
        &remove,
        "--csi.removepathcmdtimeout",
        "40s",
        "--csi.testvolumesize",
        &(64u64 << 20).to_string(),
        "--csi.testvolumeexpandsize",
        &(128u64 << 20).to_string(),
        "--csi.testvolumeparameters",
        &hc.repo
            .join("csi-sanity/volume-parameters.yaml")
            .display()
            .to_string(),
        "--csi.testvolumemutableparameters",
        &hc.repo
            .join("csi-sanity/mutable-parameters.yaml")
            .display()
            .to_string(),
        "--csi.junitfile",
        &junit.display().to_string(),
        "--ginkgo.no-color",
    ]);
    let started = Instant::now();
    let output = testkit::cmd::output(&mut hc.vms().command_in(&cmd), SANITY_TIMEOUT)?;
    let seconds = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    std::fs::write(&log, &text)?;
    std::fs::write(hc.workdir().join("sanity.err"), &output.stderr)?;
    let status = output.status;
    let summary = text
        .lines()
        .rfind(|l| l.starts_with("SUCCESS! -- ") || l.starts_with("FAIL! -- "))
        .ok_or_else(|| {
            format!(
                "csi-sanity printed no summary ({status:?}); end of its log:\n{}",
                tail(&text, 60)
            )
        })?;
    // ginkgo's summary always names all four counts: a missing one means the format
    // changed, and reading it as 0 could turn failures into a pass.
    let count = |label: &str| -> Result<usize, Error> {
        summary
            .split('|')
            .find(|part| part.contains(label))
            .and_then(|part| part.split_whitespace().find_map(|w| w.parse().ok()))
            .ok_or_else(|| format!("csi-sanity summary {summary:?} has no {label} count").into())
    };
    let skips = Command::new("python3")
        .arg(hc.repo.join("csi-sanity/skipped.py"))
        .arg(&junit)
        .output()?;
    let mut result = SanityResult {
        passed: count("Passed")?,
        failed: count("Failed")?,
        skipped: count("Skipped")?,
        pending: count("Pending")?,
        skip_reasons: String::from_utf8_lossy(&skips.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
        seconds,
        checks: Vec::new(),
    };
    let leaked = std::fs::read_to_string(&leaks)?;
    if result.failed > 0 || !summary.starts_with("SUCCESS") {
        eprintln!("---- csi-sanity failures ----\n{}", failures(&text));
        if !leaked.is_empty() {
            eprintln!("---- left behind by the driver ----\n{leaked}");
        }
        return Err(format!("csi-sanity over NFS: {summary}").into());
    }
    if !leaked.is_empty() {
        return Err(format!(
            "csi-sanity over NFS passed, but the driver left mounts or files in its \
             folders:\n{leaked}"
        )
        .into());
    }
    result.checks = after_checks(hc)?;
    Ok(result)
}

/// What the parameters promised happened on the real export, and nothing was left
/// mounted in the client.
fn after_checks(hc: &HanfsCluster) -> Result<Vec<String>, Error> {
    let (active, _) = hc.wait_active(None, SHORT)?;
    let out = hc.vm(&active).run(
        "echo $(ls /export/volumes | wc -l) $(ls /export/archived | wc -l) \
         $(stat -c %a /export/archived/* 2>/dev/null | sort -u | tr '\\n' ,)",
        SHORT,
    )?;
    let fields: Vec<&str> = out.split_whitespace().collect();
    let (left, archived, modes) = match fields.as_slice() {
        [l, a, m] => (*l, *a, m.trim_end_matches(',')),
        [l, a] => (*l, *a, ""),
        _ => return Err(format!("unexpected export listing: {out:?}").into()),
    };
    if left != "0" {
        return Err(format!("{left} volumes left in /export/volumes after csi-sanity").into());
    }
    if archived == "0" || modes != "750" {
        return Err(format!(
            "expected archived volumes with mode 750 (onDelete=archive, mountPermissions=0750), \
             found {archived} with modes {modes:?}"
        )
        .into());
    }
    let dir = hc.sanity_dir();
    let mounts = hc.client().run(
        &format!("grep -c ' {}/' /proc/self/mountinfo || true", dir.display()),
        SHORT,
    )?;
    if mounts.trim() != "0" {
        return Err(format!(
            "{} mounts left in the client under {}",
            mounts.trim(),
            dir.display()
        )
        .into());
    }
    Ok(vec![
        "no volume left in /export/volumes".into(),
        format!("{archived} volumes archived (onDelete=archive) with mode 0750"),
        "no mount left in the client".into(),
    ])
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The "[FAIL]" lines and the summary block at the end of ginkgo's output.
fn failures(text: &str) -> String {
    let mut out: Vec<&str> = text.lines().filter(|l| l.contains("[FAIL]")).collect();
    out.push("...");
    out.extend(
        text.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev(),
    );
    out.join("\n")
}

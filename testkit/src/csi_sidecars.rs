//! The Kubernetes CSI sidecars as real processes: csi-provisioner, csi-attacher,
//! csi-resizer, csi-snapshotter and snapshot-controller, built from the Go module proxy by
//! `e2e/kube/build-sidecars.sh` (cached outside the repo), run inside a network namespace
//! against a kube-apiserver with `--kubeconfig`, and talking to a CSI driver over its unix
//! socket (a path on the filesystem, so it crosses network namespaces).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cmd::{self, CmdError};
use crate::netns;
use crate::process::Supervised;

/// Bound on `build-sidecars.sh`: a cold build is several minutes on 2 cores.
const BUILD_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// SIGTERM-to-SIGKILL grace for one sidecar; they exit at once on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How much of a log [`Sidecar::log_tail`] shows.
const TAIL_LINES: usize = 25;

/// Errors from building or starting a sidecar.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `e2e/kube/build-sidecars.sh` failed or timed out.
    #[error("building the CSI sidecars (e2e/kube/build-sidecars.sh): {0}")]
    Build(#[source] CmdError),
    /// The sidecar could not be started.
    #[error("starting {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: CmdError,
    },
    /// Reading or creating a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the built sidecars and the snapshot CRDs are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `csi-provisioner`, `csi-attacher`, `csi-resizer`, `csi-snapshotter`,
    /// `snapshot-controller`.
    pub bin: PathBuf,
    /// The snapshot CRDs (`snapshot.storage.k8s.io_*.yaml`, `groupsnapshot…`) of the
    /// external-snapshotter client module the snapshotter was built with.
    pub crd: PathBuf,
}

impl Binaries {
    /// The path of one sidecar binary.
    pub fn path(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// The CRD manifests, sorted by name.
    pub fn crds(&self) -> Result<Vec<PathBuf>, Error> {
        let io_err = |source| Error::Io {
            path: self.crd.clone(),
            source,
        };
        let mut files: Vec<PathBuf> = fs::read_dir(&self.crd)
            .map_err(io_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        Ok(files)
    }
}

/// Builds the sidecars unless cached (see `e2e/kube/build-sidecars.sh`).
pub fn binaries() -> Result<Binaries, Error> {
    let out = cmd::run(
        Command::new("bash").arg(crate::e2e_path("kube/build-sidecars.sh")),
        BUILD_TIMEOUT,
    )
    .map_err(Error::Build)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let bin = PathBuf::from(text.lines().last().unwrap_or_default().trim());
    let crd = bin.with_file_name("crd");
    Ok(Binaries { bin, crd })
}

/// One sidecar process inside a network namespace, its output in a log file. Dropping it
/// stops it (SIGTERM, 5 s, SIGKILL to its group).
#[derive(Debug)]
pub struct Sidecar {
    name: String,
    /// `ip netns exec` execs the sidecar, so this is the sidecar itself.
    process: Supervised,
    log: PathBuf,
}

impl Sidecar {
    /// Starts `program args…` in namespace `ns`, stdout and stderr to `log`.
    pub fn start(
        name: &str,
        ns: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Self, Error> {
        let io_err = |source| Error::Io {
            path: log.to_owned(),
            source,
        };
        let out = fs::File::create(log).map_err(io_err)?;
        let err = out.try_clone().map_err(io_err)?;
        let mut c = Command::new(program);
        c.args(args);
        let process = Supervised::spawn(name, netns::command_in(ns, &c).stdout(out).stderr(err))
            .map_err(|source| Error::Spawn {
                name: name.to_owned(),
                source,
            })?;
        Ok(Sidecar {
            name: name.to_owned(),
            process,
            log: log.to_owned(),
        })
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it still runs.
    pub fn is_running(&self) -> bool {
        !self.process.has_exited()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last lines of its log, for failure messages; says so if it has exited.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
        let state = if self.is_running() { "" } else { " (exited)" };
        format!("--- {}{state}, {}:\n{tail}", self.name, self.log.display())
    }

    /// Stops it now (what Drop does).
    pub fn stop(&mut self) {
        if let Err(e) = self.process.stop(STOP_GRACE) {
            eprintln!("testkit: stopping {}: {e}", self.name);
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.stop();
    }
}

//! The drivers the bench starts on this machine: hanfs local mode (`hanfsctl local up`,
//! the three real binaries) and the peer's `nfsplugin` (Identity and footprint only on
//! a host without an NFS client). Each is stopped on drop — SIGTERM, a bounded wait,
//! then SIGKILL — so a failed run leaves no process behind.

use common::endpoint::Endpoint;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long a driver gets to open its sockets.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it gets to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The hanfs binaries local mode runs, by executable name.
pub const HANFS_BINARIES: [&str; 3] = ["hanfs-backend", "hanfs-controller", "hanfs-node"];
/// Size of the sparse XFS image local mode's export lives on (only written blocks
/// take disk space).
const IMAGE_BYTES: u64 = 8 << 30;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("starting {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not come up within {START_TIMEOUT:?}; its log {log}:\n{tail}")]
    Timeout {
        what: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} exited during start-up ({status}); its log {log}:\n{tail}")]
    Exited {
        what: String,
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("{what}: {detail}")]
    Setup { what: String, detail: String },
}

fn tail(log: &Path) -> String {
    let text = match std::fs::read_to_string(log) {
        Ok(text) => text,
        Err(e) => return format!("(its log {} is unreadable: {e})", log.display()),
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A started process tree, stopped on drop.
#[derive(Debug)]
struct Supervised {
    what: String,
    child: Child,
    /// Processes under it to SIGKILL if they outlive it.
    extra: Vec<i32>,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            eprintln!(
                "bench: {} did not stop within {STOP_TIMEOUT:?}: killing it",
                self.what
            );
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for pid in &self.extra {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
}

/// Polls until `ready()` or the process exits or the time is up.
fn wait_ready(
    process: &mut Supervised,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) -> Result<(), StartError> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(StartError::Exited {
                what: process.what.clone(),
                status,
                log: log.to_owned(),
                tail: tail(log),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(StartError::Timeout {
        what: process.what.clone(),
        log: log.to_owned(),
        tail: tail(log),
    })
}

fn log_file(path: &Path) -> Result<std::fs::File, StartError> {
    std::fs::File::create(path).map_err(|source| StartError::Spawn {
        what: format!("log {}", path.display()),
        source,
    })
}

/// hanfs local mode under `dir`, its export on a loop-mounted XFS image (the filesystem
/// production uses: reflinks cost what they cost there; no prjquota, which this host's
/// kernel refuses) when
/// `xfs` is set. It runs in a private mount namespace (`unshare -m`), so the loop mount
/// vanishes with it however the bench ends.
#[derive(Debug)]
pub struct LocalMode {
    process: Supervised,
    pub controller: Endpoint,
    pub node: Endpoint,
    /// Executable name → pid of the three binaries.
    pub pids: BTreeMap<&'static str, i32>,
    pub export_fs: &'static str,
}

impl LocalMode {
    pub fn start(bin_dir: &Path, dir: &Path, xfs: bool) -> Result<Self, StartError> {
        let setup = |detail: String| StartError::Setup {
            what: "local mode".into(),
            detail,
        };
        let export = dir.join("export");
        std::fs::create_dir_all(&export)
            .map_err(|e| setup(format!("{}: {e}", export.display())))?;
        let hanfsctl = bin_dir.join("hanfsctl");
        let log = dir.join("local-mode.log");
        let mut command = Command::new("unshare");
        command.args(["--mount", "--propagation", "private", "--"]);
        if xfs {
            let image = dir.join("export.img");
            std::fs::File::create(&image)
                .and_then(|f| f.set_len(IMAGE_BYTES))
                .map_err(|e| setup(format!("{}: {e}", image.display())))?;
            let made = Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| setup(format!("mkfs.xfs: {e}")))?;
            if !made.status.success() {
                return Err(setup(format!(
                    "mkfs.xfs {}: {}",
                    made.status,
                    String::from_utf8_lossy(&made.stderr).trim()
                )));
            }
            // Mount inside the new namespace, then become hanfsctl (same pid, so the
            // binaries are its children and SIGTERM reaches it).
            command.args([
                "sh",
                "-c",
                "mount -o loop \"$1\" \"$2\" && exec \"$3\" --dir \"$4\" --cluster-id bench local up --bin-dir \"$5\"",
                "sh",
            ]);
            command
                .arg(&image)
                .arg(&export)
                .arg(&hanfsctl)
                .arg(dir)
                .arg(bin_dir);
        } else {
            command
                .arg(&hanfsctl)
                .arg("--dir")
                .arg(dir)
                .args(["--cluster-id", "bench", "local", "up", "--bin-dir"])
                .arg(bin_dir);
        }
        let child = command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log_file(&log)?)
            .stderr(log_file(&dir.join("local-mode.stderr"))?)
            .spawn()
            .map_err(|source| StartError::Spawn {
                what: format!("{} local up (via unshare)", hanfsctl.display()),
                source,
            })?;
        let mut process = Supervised {
            what: "hanfs local mode".into(),
            child,
            extra: Vec::new(),
        };
        wait_ready(&mut process, &log, || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("local mode is up"))
        })?;
        let parent = process.child.id() as i32;
        let mut pids = BTreeMap::new();
        for name in HANFS_BINARIES {
            match crate::procfs::find(name, Some(parent)).as_slice() {
                [pid] => {
                    pids.insert(name, *pid);
                }
                other => {
                    return Err(setup(format!(
                        "expected one {name} under hanfsctl (pid {parent}), found {other:?}"
                    )));
                }
            }
        }
        process.extra = pids.values().copied().collect();
        let sockets = dir.join("sockets");
        Ok(Self {
            process,
            controller: Endpoint::Unix(sockets.join("controller.sock")),
            node: Endpoint::Unix(sockets.join("node.sock")),
            pids,
            export_fs: if xfs { "XFS (loop)" } else { "plain directory" },
        })
    }

    /// Whether local mode still runs (a binary that died mid-run voids the figures).
    pub fn alive(&mut self) -> bool {
        matches!(self.process.child.try_wait(), Ok(None))
    }
}

/// csi-driver-nfs's `nfsplugin` serving a unix socket under `dir`, with a made-up node
/// id. Its flags' defaults were read first: `--endpoint` defaults to unix://tmp/csi.sock
/// and `--working-mount-dir` to /tmp, both moved under `dir`; it opens no TCP port.
#[derive(Debug)]
pub struct Peer {
    process: Supervised,
    pub endpoint: Endpoint,
    pub pid: i32,
}

impl Peer {
    pub fn start(nfsplugin: &Path, dir: &Path) -> Result<Self, StartError> {
        let work = dir.join("peer-work");
        std::fs::create_dir_all(&work).map_err(|e| StartError::Setup {
            what: "peer".into(),
            detail: format!("{}: {e}", work.display()),
        })?;
        let socket = dir.join("peer.sock");
        let log = dir.join("peer.log");
        let child = Command::new(nfsplugin)
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .arg("--nodeid=bench-host")
            .arg(format!("--working-mount-dir={}", work.display()))
            .stdin(Stdio::null())
            .stdout(log_file(&log)?)
            .stderr(log_file(&dir.join("peer.stderr"))?)
            .spawn()
            .map_err(|source| StartError::Spawn {
                what: nfsplugin.display().to_string(),
                source,
            })?;
        let pid = child.id() as i32;
        let mut process = Supervised {
            what: "nfsplugin".into(),
            child,
            extra: Vec::new(),
        };
        wait_ready(&mut process, &dir.join("peer.stderr"), || socket.exists())?;
        Ok(Self {
            process,
            endpoint: Endpoint::Unix(socket),
            pid,
        })
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.process.child.try_wait(), Ok(None))
    }
}

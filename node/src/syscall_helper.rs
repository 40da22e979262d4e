//! Syscalls on mount paths, each in a child process with a deadline.
//!
//! A mount(2), umount(2) or statfs(2) on an NFS path whose server is gone blocks in the
//! kernel, and with `hard` it blocks until the server is back. Run in-process, that would
//! pin a runtime thread forever. So each such syscall runs in a child: this same binary
//! re-executed as `hanfs-node helper mount|umount|statfs ...`, with stdin closed, waited
//! for with a timeout, and SIGKILLed and reaped when the timeout passes. NFS waits are
//! killable (TASK_KILLABLE), so the child does die and nothing is leaked. The child
//! prints one JSON [`Reply`] on stdout; errors carry the errno.
//!
//! Why this is not just `common::command`: that runner runs *tools*; here the node runs
//! *its own syscalls* out of process, so this module owns the other half too — the
//! hidden `helper` subcommand that performs them, the JSON reply protocol, and the
//! child setup (die with the parent). Starting, bounding, killing and reaping the child
//! is `common::command::output`, the same runner the agent and the test harnesses use.

use crate::mount_spec::{self, MountKind, MountSpec};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::statvfs::{FsFlags, statvfs};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};
use std::time::Duration;
use thiserror::Error;

/// Errors of running the helper process; the runner is the shared one.
pub use common::command::CommandError as RunError;

/// statvfs(3) numbers, as the helper reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsStats {
    /// The unit of the block counts (`f_frsize`).
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    /// Free blocks an unprivileged user may use (the quota's view on NFS).
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
}

/// What the helper prints on stdout, one JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    Done,
    Stats(FsStats),
    Failed { errno: Option<i32>, message: String },
}

/// How hard an unmount tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnmountMode {
    /// umount(2): fails with EBUSY while in use.
    Normal,
    /// MNT_FORCE: aborts pending NFS requests so the unmount can proceed.
    Force,
    /// MNT_DETACH: detaches now, cleans up when the last user is gone.
    Lazy,
}

/// The hidden `helper` subcommand: one syscall, run in a child by [`Helper`].
#[derive(Debug, Clone, clap::Subcommand)]
pub enum HelperCommand {
    /// mount(2) `source` on `target` (a bind mount without --fstype).
    Mount {
        #[arg(long)]
        source: String,
        #[arg(long)]
        target: PathBuf,
        #[arg(long)]
        fstype: Option<String>,
        #[arg(long)]
        data: Option<String>,
        /// VFS flags by name (`ro`, `nosuid`, ...), comma-separated.
        #[arg(long, value_delimiter = ',')]
        flags: Vec<String>,
    },
    /// umount2(2) `target`, never following a symlink.
    Umount {
        #[arg(long)]
        target: PathBuf,
        #[arg(long, value_enum, default_value = "normal")]
        mode: UnmountMode,
    },
    /// statvfs(3) on `path`.
    Statfs {
        #[arg(long)]
        path: PathBuf,
    },
}

#[derive(Debug, Error)]
pub enum HelperError {
    /// The syscall did not return in time; the helper was killed.
    #[error("{op}: no answer within {}s; the helper was killed", after.as_secs_f64())]
    Timeout { op: String, after: Duration },
    /// The helper could not be started or waited for.
    #[error("{op}: {source}")]
    Run {
        op: String,
        #[source]
        source: RunError,
    },
    /// The syscall failed.
    #[error("{op}: {message}")]
    Syscall {
        op: String,
        errno: Option<i32>,
        message: String,
    },
    /// The helper died or printed something that is not a reply.
    #[error("{op}: helper exited with {status}; stderr: {stderr}")]
    Broken {
        op: String,
        status: ExitStatus,
        stderr: String,
    },
}

impl HelperError {
    pub fn errno(&self) -> Option<Errno> {
        match self {
            HelperError::Syscall {
                errno: Some(errno), ..
            } => Some(Errno::from_raw(*errno)),
            _ => None,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, HelperError::Timeout { .. })
    }
}

/// Starts helper processes (the parent side).
#[derive(Debug, Clone)]
pub struct Helper {
    binary: PathBuf,
}

impl Helper {
    /// `binary` is re-executed as `<binary> helper ...`.
    pub fn new(binary: PathBuf) -> Self {
        Self { binary }
    }

    async fn call(
        &self,
        op: String,
        args: Vec<OsString>,
        timeout: Duration,
    ) -> Result<Reply, HelperError> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("helper").args(args);
        die_with_parent(&mut cmd);
        let output = match common::command::output(cmd, timeout).await {
            Ok(output) => output,
            Err(RunError::TimedOut { timeout, .. }) => {
                return Err(HelperError::Timeout { op, after: timeout });
            }
            Err(source) => return Err(HelperError::Run { op, source }),
        };
        let reply = String::from_utf8_lossy(&output.stdout)
            .lines()
            .rev()
            .find_map(|line| serde_json::from_str::<Reply>(line).ok());
        match reply {
            Some(Reply::Failed { errno, message }) => {
                Err(HelperError::Syscall { op, errno, message })
            }
            Some(reply) if output.status.success() => Ok(reply),
            _ => Err(HelperError::Broken {
                op,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            }),
        }
    }

    /// Mounts `spec` on `target` (an existing directory).
    pub async fn mount(
        &self,
        spec: &MountSpec,
        target: &Path,
        timeout: Duration,
    ) -> Result<(), HelperError> {
        let op = format!("mounting {} on {}", spec.source, target.display());
        let mut args = vec![
            OsString::from("mount"),
            arg("--source=", &spec.source),
            arg("--target=", target),
        ];
        if let MountKind::Nfs4 { data } = &spec.kind {
            args.push(arg("--fstype=", "nfs4"));
            args.push(arg("--data=", data));
        }
        let flags = mount_spec::flag_names(spec.flags);
        if !flags.is_empty() {
            args.push(arg("--flags=", flags.join(",")));
        }
        self.call(op, args, timeout).await.map(drop)
    }

    /// Unmounts the topmost mount at `target` once.
    pub async fn unmount(
        &self,
        target: &Path,
        mode: UnmountMode,
        timeout: Duration,
    ) -> Result<(), HelperError> {
        let op = format!("unmounting {} ({mode:?})", target.display());
        let mode = match mode {
            UnmountMode::Normal => "normal",
            UnmountMode::Force => "force",
            UnmountMode::Lazy => "lazy",
        };
        let args = vec![
            OsString::from("umount"),
            arg("--target=", target),
            arg("--mode=", mode),
        ];
        self.call(op, args, timeout).await.map(drop)
    }

    /// statvfs of `path`.
    pub async fn statfs(&self, path: &Path, timeout: Duration) -> Result<FsStats, HelperError> {
        let op = format!("statfs {}", path.display());
        let args = vec![OsString::from("statfs"), arg("--path=", path)];
        match self.call(op.clone(), args, timeout).await? {
            Reply::Stats(stats) => Ok(stats),
            other => Err(HelperError::Syscall {
                op,
                errno: None,
                message: format!("helper answered {other:?} instead of stats"),
            }),
        }
    }

    /// Unmounts the topmost mount at `target`: plainly, and when that fails or hangs
    /// with MNT_FORCE, then lazily (MNT_DETACH) as the last resort. Returns the mode
    /// that worked; the error is the lazy attempt's.
    pub async fn unmount_with_fallback(
        &self,
        target: &Path,
        timeout: Duration,
    ) -> Result<UnmountMode, HelperError> {
        let mut last = None;
        for mode in [UnmountMode::Normal, UnmountMode::Force, UnmountMode::Lazy] {
            match self.unmount(target, mode, timeout).await {
                Ok(()) => {
                    if mode != UnmountMode::Normal {
                        tracing::warn!(target = %target.display(), ?mode, "unmounted only with fallback");
                    }
                    return Ok(mode);
                }
                // EINVAL: not a mount point (any more), e.g. someone else unmounted it.
                Err(err) if err.errno() == Some(Errno::EINVAL) => return Ok(mode),
                Err(err) => {
                    tracing::warn!(target = %target.display(), ?mode, %err, "unmount failed");
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| HelperError::Syscall {
            op: format!("unmounting {}", target.display()),
            errno: None,
            message: "no unmount attempted".into(),
        }))
    }
}

/// `--name=value` as one argument, so a value starting with '-' is never read as a flag.
fn arg(name: &str, value: impl AsRef<std::ffi::OsStr>) -> OsString {
    let mut out = OsString::from(name);
    out.push(value);
    out
}

/// Makes the helper die with SIGKILL when the node plugin dies, so a helper stuck on a
/// dead server does not outlive a restarted plugin. PR_SET_PDEATHSIG fires when the
/// *thread* that forked exits; helpers are spawned from runtime worker threads, which
/// live as long as the process.
fn die_with_parent(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and calls only prctl(2) and
    // getppid(2), both async-signal-safe; it allocates nothing and takes no locks.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The parent may have died before prctl: then nobody waits for this child.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other(
                    "parent exited before the helper started",
                ));
            }
            Ok(())
        });
    }
}

/// Runs one helper command in this (child) process: prints the JSON reply on stdout,
/// exits 0 on success and 1 on failure.
pub fn run_helper(command: HelperCommand) -> ExitCode {
    let reply = match execute(command) {
        Ok(reply) => reply,
        Err((what, errno)) => Reply::Failed {
            errno: Some(errno as i32),
            message: format!("{what}: {errno}"),
        },
    };
    let failed = matches!(reply, Reply::Failed { .. });
    match serde_json::to_string(&reply) {
        Ok(json) => println!("{json}"),
        Err(err) => eprintln!("cannot encode helper reply: {err}"),
    }
    if let Reply::Failed { message, .. } = &reply {
        eprintln!("{message}");
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

type SyscallResult = Result<Reply, (String, Errno)>;

fn execute(command: HelperCommand) -> SyscallResult {
    match command {
        HelperCommand::Mount {
            source,
            target,
            fstype,
            data,
            flags,
        } => {
            let mut ms = MsFlags::empty();
            for name in &flags {
                ms |= mount_spec::flag_from_name(name)
                    .ok_or_else(|| (format!("unknown VFS flag {name:?}"), Errno::EINVAL))?;
            }
            match fstype {
                Some(fstype) => nix::mount::mount(
                    Some(source.as_str()),
                    &target,
                    Some(fstype.as_str()),
                    ms,
                    data.as_deref(),
                )
                .map_err(|e| ("mount".to_owned(), e))?,
                None => bind_mount(&source, &target, ms)?,
            }
            Ok(Reply::Done)
        }
        HelperCommand::Umount { target, mode } => {
            let flags = match mode {
                UnmountMode::Normal => MntFlags::empty(),
                UnmountMode::Force => MntFlags::MNT_FORCE,
                UnmountMode::Lazy => MntFlags::MNT_DETACH,
            };
            nix::mount::umount2(&target, flags | MntFlags::UMOUNT_NOFOLLOW)
                .map_err(|e| ("umount".to_owned(), e))?;
            Ok(Reply::Done)
        }
        HelperCommand::Statfs { path } => {
            let st = statvfs(&path).map_err(|e| ("statfs".to_owned(), e))?;
            Ok(Reply::Stats(FsStats {
                block_size: st.fragment_size(),
                blocks: st.blocks(),
                blocks_free: st.blocks_free(),
                blocks_available: st.blocks_available(),
                files: st.files(),
                files_free: st.files_free(),
            }))
        }
    }
}

/// A bind mount ignores VFS flags, so they take a second, remounting call. That remount
/// must keep the flags the source mount already has that are locked (nosuid, nodev,
/// noexec, atime flags: in a user namespace changing them fails with EPERM). When the
/// remount fails, the bind mount is undone so no writable mount is left behind.
fn bind_mount(source: &str, target: &Path, flags: MsFlags) -> Result<(), (String, Errno)> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| ("bind mount".to_owned(), e))?;
    if flags.is_empty() {
        return Ok(());
    }
    let remount = || -> Result<(), (String, Errno)> {
        let current = statvfs(target).map_err(|e| ("statfs after bind mount".to_owned(), e))?;
        let mut flags = flags;
        for (st, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if current.flags().contains(st) {
                flags |= ms;
            }
        }
        let atime = MsFlags::MS_NOATIME | MsFlags::MS_RELATIME | MsFlags::MS_STRICTATIME;
        if !flags.intersects(atime) {
            if current.flags().contains(FsFlags::ST_NOATIME) {
                flags |= MsFlags::MS_NOATIME;
            } else if current.flags().contains(FsFlags::ST_RELATIME) {
                flags |= MsFlags::MS_RELATIME;
            }
        }
        if current.flags().contains(FsFlags::ST_NODIRATIME) {
            flags |= MsFlags::MS_NODIRATIME;
        }
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
            None::<&str>,
        )
        .map_err(|e| ("remounting the bind mount with its flags".to_owned(), e))
    };
    remount().inspect_err(|_| {
        let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Killing, reaping and capturing are the shared runner's, tested in common::command;
    // what follows is the helper protocol on top of it.

    #[tokio::test]
    async fn a_helper_that_prints_no_reply_is_broken_with_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let (source, fake) = (dir.path().join("fake.src"), dir.path().join("fake-helper"));
        std::fs::write(
            &source,
            "#!/bin/sh\necho 'no json' ; echo boom >&2; exit 2\n",
        )
        .unwrap();
        // Installed by another process, so no write fd of ours leaks into a child forked
        // concurrently by another test (exec would fail with ETXTBSY).
        let installed = std::process::Command::new("install")
            .args(["-m", "0755"])
            .arg(&source)
            .arg(&fake)
            .status()
            .unwrap();
        assert!(installed.success());
        let err = Helper::new(fake)
            .statfs(Path::new("/"), Duration::from_secs(10))
            .await
            .unwrap_err();
        let HelperError::Broken { stderr, status, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!((stderr.as_str(), status.code()), ("boom", Some(2)));
    }

    #[test]
    fn replies_round_trip_as_json() {
        let stats = Reply::Stats(FsStats {
            block_size: 4096,
            blocks: 10,
            blocks_free: 5,
            blocks_available: 4,
            files: 100,
            files_free: 90,
        });
        let json = serde_json::to_string(&stats).unwrap();
        assert!(json.starts_with(r#"{"result":"stats""#), "{json}");
        assert_eq!(serde_json::from_str::<Reply>(&json).unwrap(), stats);
        let failed = Reply::Failed {
            errno: Some(116),
            message: "statfs: stale".into(),
        };
        let json = serde_json::to_string(&failed).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&json).unwrap(), failed);
    }
}

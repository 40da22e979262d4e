//! The replicated filesystem: mounting it on the DRBD device, unmounting it even when
//! something holds it, telling whether it is mounted, and proving it still takes writes.
//!
//! - [`FsMount::mounted`] reads `/proc/self/mountinfo` under the deadline and parses it
//!   with [`common::mountinfo`].
//! - [`FsMount`] runs `mount`/`umount` through [`command::run`]; unmount falls back
//!   from plain to `-f` to `-l`, each step under the deadline.
//! - [`probe_writable`] writes, fsyncs and removes a file on a thread of its own under
//!   a deadline, so a hung filesystem costs one stuck thread, never the agent; the
//!   number of stuck probes is bounded.

use crate::drivers::command::{self, CommandError};
use common::mountinfo::{self, MountInfo};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use thiserror::Error;

/// The probe file, created and removed by [`probe_writable`].
pub const PROBE_FILE: &str = ".hanfs-health";

/// Probes whose thread is still stuck (a hung filesystem) after their deadline, plus
/// those running. Past [`MAX_PROBES_IN_FLIGHT`] no new probe thread is started.
static PROBES_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
const MAX_PROBES_IN_FLIGHT: usize = 4;

#[derive(Debug, Error)]
pub enum FsError {
    /// `mount`/`umount` failed, timed out, or could not start (the command line, with
    /// the mount point, is in the source).
    #[error("{action}: {source}")]
    Command {
        action: &'static str,
        #[source]
        source: CommandError,
    },
    /// Something other than our device is mounted on the mount point.
    #[error("{mountpoint} already has {found_source} ({found_fstype}) mounted, not {device}")]
    MountpointTaken {
        mountpoint: PathBuf,
        device: PathBuf,
        found_source: String,
        found_fstype: String,
    },
    /// Every unmount fallback failed; the filesystem is still mounted.
    #[error("could not unmount {mountpoint}: {}", .attempts.join("; "))]
    UnmountFailed {
        mountpoint: PathBuf,
        attempts: Vec<String>,
    },
    /// Reading or parsing the mount table failed.
    #[error("reading mount table {path}: {reason}")]
    MountTable { path: PathBuf, reason: String },
    /// The mount point must be an absolute path (it is compared with the mount table).
    #[error("mount point {0} is not an absolute path")]
    RelativeMountpoint(PathBuf),
    /// The probe failed at one step (e.g. EROFS after an error remount).
    #[error("write probe {path}: {step} failed: {source}")]
    ProbeFailed {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The probe did not finish in time: the filesystem (or its device) hangs.
    #[error("write probe {path} did not finish within {timeout:?}: the filesystem hangs")]
    ProbeTimedOut { path: PathBuf, timeout: Duration },
    /// Earlier probes are still stuck; no new thread is started.
    #[error("write probe {path} not started: {in_flight} earlier probes are still stuck")]
    ProbesStuck { path: PathBuf, in_flight: usize },
}

/// `a/./b//c/` → `a/b/c`, lexically (no filesystem access: a hung filesystem must not
/// hang a mount-table lookup). `..` is kept as written.
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Mounting
// ---------------------------------------------------------------------------------------

/// How [`FsMount::unmount`] got the filesystem off the mount point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmountOutcome {
    /// Nothing was mounted there.
    NotMounted,
    /// Plain `umount`.
    Clean,
    /// `umount -f`.
    Forced,
    /// `umount -l`: detached from the tree, but whoever held it still does, so the
    /// device stays open (and DRBD cannot be demoted) until they let go.
    Lazy,
}

/// The replicated filesystem and where it goes.
#[derive(Debug, Clone)]
pub struct FsMount {
    /// The block device (`/dev/drbd0`).
    pub device: PathBuf,
    /// Absolute path of the mount point.
    pub mountpoint: PathBuf,
    pub fstype: String,
    /// `-o` options, joined with commas (none if empty).
    pub options: Vec<String>,
    /// Deadline for each `mount`/`umount` run and each mount-table read.
    pub timeout: Duration,
    pub mount_bin: PathBuf,
    pub umount_bin: PathBuf,
    /// `/proc/self/mountinfo` (tests may point elsewhere).
    pub mountinfo: PathBuf,
}

impl FsMount {
    /// With the system's `mount`/`umount`, `/proc/self/mountinfo`, and a 30 s deadline.
    pub fn new(
        device: impl Into<PathBuf>,
        mountpoint: impl Into<PathBuf>,
        fstype: impl Into<String>,
    ) -> FsMount {
        FsMount {
            device: device.into(),
            mountpoint: mountpoint.into(),
            fstype: fstype.into(),
            options: Vec::new(),
            timeout: Duration::from_secs(30),
            mount_bin: "mount".into(),
            umount_bin: "umount".into(),
            mountinfo: "/proc/self/mountinfo".into(),
        }
    }

    fn checked_mountpoint(&self) -> Result<PathBuf, FsError> {
        if !self.mountpoint.is_absolute() {
            return Err(FsError::RelativeMountpoint(self.mountpoint.clone()));
        }
        Ok(normalize(&self.mountpoint))
    }

    /// The topmost mount on the mount point, if any.
    pub async fn mounted(&self) -> Result<Option<MountInfo>, FsError> {
        let mountpoint = self.checked_mountpoint()?;
        let table_err = |reason: String| FsError::MountTable {
            path: self.mountinfo.clone(),
            reason,
        };
        let text = tokio::time::timeout(self.timeout, tokio::fs::read(&self.mountinfo))
            .await
            .map_err(|_| table_err(format!("not read within {:?}", self.timeout)))?
            .map_err(|e| table_err(e.to_string()))?;
        let entries = mountinfo::parse_strict(&text).map_err(|e| table_err(e.to_string()))?;
        // Later lines are mounted on top of earlier ones.
        Ok(entries
            .into_iter()
            .rev()
            .find(|m| m.mount_point == mountpoint))
    }

    /// Whether anything is mounted on the mount point.
    pub async fn is_mounted(&self) -> Result<bool, FsError> {
        Ok(self.mounted().await?.is_some())
    }

    /// Whether `entry` is our device: same major:minor for a block device (so
    /// `/dev/drbd/by-res/r0/0` and `/dev/drbd0` agree), else the same source text.
    fn is_our_device(&self, entry: &MountInfo) -> bool {
        match std::fs::metadata(&self.device) {
            Ok(meta) if meta.file_type().is_block_device() => {
                let rdev = meta.rdev();
                (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
                    == (entry.major.into(), entry.minor.into())
            }
            _ => Path::new(&entry.source) == self.device,
        }
    }

    /// `mount -t <fstype> [-o <options>] <device> <mountpoint>`. Already mounted from our
    /// device: nothing to do. Something else mounted there: an error.
    pub async fn mount(&self) -> Result<(), FsError> {
        if let Some(entry) = self.mounted().await? {
            if self.is_our_device(&entry) {
                tracing::info!(mountpoint = %self.mountpoint.display(), "already mounted");
                return Ok(());
            }
            return Err(FsError::MountpointTaken {
                mountpoint: self.mountpoint.clone(),
                device: self.device.clone(),
                found_source: entry.source,
                found_fstype: entry.fstype,
            });
        }
        let mut args: Vec<OsString> = vec!["-t".into(), self.fstype.clone().into()];
        if !self.options.is_empty() {
            args.push("-o".into());
            args.push(self.options.join(",").into());
        }
        args.push(self.device.clone().into());
        args.push(self.mountpoint.clone().into());
        tracing::info!(device = %self.device.display(), mountpoint = %self.mountpoint.display(), "mount");
        command::run(&self.mount_bin.to_string_lossy(), &args, self.timeout)
            .await
            .map(drop)
            .map_err(|source| FsError::Command {
                action: "mount",
                source,
            })
    }

    /// Unmounts: plain `umount`, then `umount -f`, then `umount -l`, each under the
    /// deadline and logged. Stops at the first that works.
    pub async fn unmount(&self) -> Result<UnmountOutcome, FsError> {
        if !self.is_mounted().await? {
            return Ok(UnmountOutcome::NotMounted);
        }
        let steps: [(&[&str], UnmountOutcome); 3] = [
            (&[], UnmountOutcome::Clean),
            (&["-f"], UnmountOutcome::Forced),
            (&["-l"], UnmountOutcome::Lazy),
        ];
        let mut attempts = Vec::new();
        for (flags, outcome) in steps {
            let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
            args.push(self.mountpoint.clone().into());
            match command::run(&self.umount_bin.to_string_lossy(), &args, self.timeout).await {
                Ok(_) => {
                    if outcome == UnmountOutcome::Lazy {
                        tracing::warn!(mountpoint = %self.mountpoint.display(),
                            "lazily unmounted: the device stays open until its users let go");
                    } else {
                        tracing::info!(mountpoint = %self.mountpoint.display(), ?outcome, "unmounted");
                    }
                    return Ok(outcome);
                }
                Err(err) => {
                    tracing::warn!(mountpoint = %self.mountpoint.display(), %err, "umount {flags:?} failed");
                    attempts.push(err.to_string());
                    // Someone else unmounted it meanwhile: done.
                    if !self.is_mounted().await? {
                        return Ok(UnmountOutcome::NotMounted);
                    }
                }
            }
        }
        Err(FsError::UnmountFailed {
            mountpoint: self.mountpoint.clone(),
            attempts,
        })
    }

    /// [`probe_writable`] on the mount point, with this mount's deadline.
    pub async fn probe_writable(&self) -> Result<(), FsError> {
        probe_writable(&self.mountpoint, self.timeout).await
    }
}

// ---------------------------------------------------------------------------------------
// Write probe
// ---------------------------------------------------------------------------------------

impl FsError {
    /// Whether a failed write probe reports a filesystem that stays broken: the kernel
    /// answered EIO, EROFS or EUCLEAN (XFS after a forced shutdown or corruption), as
    /// opposed to a slow or stuck device that may still recover.
    pub fn is_lasting(&self) -> bool {
        match self {
            FsError::ProbeFailed { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc_errno) if [nix::libc::EIO, nix::libc::EROFS, nix::libc::EUCLEAN].contains(&libc_errno)
            ),
            _ => false,
        }
    }
}

/// Decrements [`PROBES_IN_FLIGHT`] when the probe thread finally ends.
struct InFlight;

impl Drop for InFlight {
    fn drop(&mut self) {
        PROBES_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Creates `dir/.hanfs-health`, writes it, fsyncs it and removes it, within `timeout`.
///
/// Runs on a thread of its own rather than the blocking pool: a write to a hung device
/// blocks in the kernel (D state) and cannot be cancelled, so the thread may never
/// return. Each stuck probe keeps one thread; past a small bound, probes fail at once
/// with [`FsError::ProbesStuck`] instead of piling up threads.
pub async fn probe_writable(dir: &Path, timeout: Duration) -> Result<(), FsError> {
    let path = dir.join(PROBE_FILE);
    let in_flight = PROBES_IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    let guard = InFlight;
    if in_flight >= MAX_PROBES_IN_FLIGHT {
        drop(guard);
        return Err(FsError::ProbesStuck { path, in_flight });
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_path = path.clone();
    let spawned = std::thread::Builder::new()
        .name("hanfs-fs-probe".into())
        .spawn(move || {
            let _guard = guard;
            let _ = tx.send(write_probe_file(&thread_path));
        });
    if let Err(source) = spawned {
        // The closure (and the guard in it) was dropped: the count is already restored.
        return Err(FsError::ProbeFailed {
            path,
            step: "start thread",
            source,
        });
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err((step, source)))) => Err(FsError::ProbeFailed { path, step, source }),
        Ok(Err(_)) => Err(FsError::ProbeFailed {
            path,
            step: "run",
            source: std::io::Error::other("probe thread ended without an answer"),
        }),
        Err(_) => Err(FsError::ProbeTimedOut { path, timeout }),
    }
}

fn write_probe_file(path: &Path) -> Result<(), (&'static str, std::io::Error)> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| ("create", e))?;
    file.write_all(b"hanfs write probe\n")
        .map_err(|e| ("write", e))?;
    file.sync_all().map_err(|e| ("fsync", e))?;
    drop(file);
    std::fs::remove_file(path).map_err(|e| ("remove", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eio_and_erofs_are_lasting_a_timeout_is_not() {
        let failed = |errno| FsError::ProbeFailed {
            path: "/export/.hanfs-health".into(),
            step: "write",
            source: std::io::Error::from_raw_os_error(errno),
        };
        assert!(failed(nix::libc::EIO).is_lasting());
        assert!(failed(nix::libc::EROFS).is_lasting());
        assert!(!failed(nix::libc::ENOSPC).is_lasting());
        let stuck = FsError::ProbesStuck {
            path: "/export/.hanfs-health".into(),
            in_flight: 4,
        };
        assert!(!stuck.is_lasting());
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b//c/")), Path::new("/a/b/c"));
    }
}

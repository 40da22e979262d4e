//! Long-running children that cannot outlive their owner by accident.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

use crate::cmd::{CmdError, describe};

/// Grace period [`Drop`] gives a child between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(20);

/// A child process leading its own process group, stopped when dropped: SIGTERM to the
/// child, a bounded wait, then SIGKILL to the whole group (the child and anything it started
/// that is still in the group).
///
/// The own group also keeps a terminal's Ctrl-C away from it, so the owner decides the
/// order in which things stop.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    child: Child,
    /// Set once [`Supervised::stop`] has reaped the child; its pid may be reused after that,
    /// so nothing is signalled any more.
    status: Option<ExitStatus>,
}

impl Supervised {
    /// Spawns `cmd` with stdin closed, in a new process group. Redirect stdout/stderr on
    /// `cmd` before calling (they are inherited otherwise). `name` is for messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self, CmdError> {
        cmd.stdin(Stdio::null()).process_group(0);
        let child = cmd.spawn().map_err(|source| CmdError::Spawn {
            program: describe(cmd),
            source,
        })?;
        Ok(Supervised {
            name: name.to_owned(),
            child,
            status: None,
        })
    }

    /// The child's pid, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the child has exited (checked without reaping it, so its pid stays reserved
    /// and its group can still be signalled safely).
    pub fn has_exited(&self) -> bool {
        self.status.is_some()
            || i32::try_from(self.child.id()).map_or(true, |p| exited(Pid::from_raw(p)))
    }

    /// Stops the child: SIGTERM, up to `grace` for it to exit, then SIGKILL to its group.
    /// Whatever else is left in the group afterwards is SIGKILLed too. Returns the child's
    /// exit status; calling it again returns the same status.
    pub fn stop(&mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id()).map_err(std::io::Error::other)?);
        if !exited(pid) {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while !exited(pid) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
        }
        // The leader is dead but unreaped, or still alive after the grace: either way its
        // pid (= the group id) is still reserved, so the group kill cannot hit a stranger.
        let _ = killpg(pid, Signal::SIGKILL);
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }
}

/// Whether `pid`, a child of ours, has exited; `WNOWAIT` leaves the zombie in place.
fn exited(pid: Pid) -> bool {
    !matches!(
        waitid(
            Id::Pid(pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        ),
        Ok(WaitStatus::StillAlive)
    )
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.status.is_none()
            && let Err(e) = self.stop(DEFAULT_GRACE)
        {
            eprintln!("testkit: stopping {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        // A zombie still has a /proc entry; it counts as gone.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }

    #[test]
    fn drop_kills_the_group_including_ignoring_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        // The grandchild ignores SIGTERM; only the group SIGKILL ends it.
        let script = format!(
            "sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 60' & wait",
            pidfile.display()
        );
        let p = Supervised::spawn("t", Command::new("sh").args(["-c", &script])).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let grandchild = loop {
            if let Ok(s) = std::fs::read_to_string(&pidfile)
                && let Ok(pid) = s.trim().parse::<i32>()
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "grandchild did not start");
            thread::sleep(Duration::from_millis(10));
        };
        assert!(alive(grandchild));
        let t = Instant::now();
        drop(p);
        assert!(t.elapsed() < Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(grandchild), "grandchild {grandchild} survived");
    }

    #[test]
    fn stop_reports_status_of_an_exited_child() {
        let mut p = Supervised::spawn("t", Command::new("sh").args(["-c", "exit 7"])).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.has_exited() {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(p.stop(Duration::from_secs(1)).unwrap().code(), Some(7));
        assert_eq!(p.stop(Duration::from_secs(1)).unwrap().code(), Some(7));
    }
}

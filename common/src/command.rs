//! The one way hanfs runs an external command to completion: stdin closed, stdout and
//! stderr captured (each capped at [`OUTPUT_CAP`], the rest read and dropped so the
//! child never blocks on a full pipe), a deadline, and past it the command's whole
//! process group SIGKILLed and reaped; exit status and stderr in every error.
//!
//! Callers: the storage agent's drivers (drbdadm, mount, exportfs, …, through
//! `drbd_backend::drivers::command`), the node's syscall helper (the process half: the
//! re-executed `hanfs-node helper`), and the test harnesses (`testkit::cmd`, through
//! the blocking [`run_blocking`] / [`output_blocking`]).
//!
//! The command runs in a process group of its own, so a timeout also kills whatever it
//! started (`drbdadm` → `drbdsetup`, `mount` → `mount.xfs`, an `ip netns exec … sh -c`
//! pipeline), and a future dropped before the command ended (the caller gave up) kills
//! the group too. A process the command leaves behind still holding its stdout or stderr
//! counts as not finished: the wait covers the pipes, not just the exit.
//!
//! Not for children meant to outlive a call (`rpc.mountd`, `drbdsetup events2`): those
//! are supervised by their owners.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of each of stdout and stderr is kept.
pub const OUTPUT_CAP: usize = 16 << 20;
/// How long to wait for a SIGKILLed command to be reaped before leaving it to tokio (a
/// process in an uninterruptible kernel wait dies only when that wait ends).
pub const REAP_GRACE: Duration = Duration::from_secs(5);
/// How much of stderr an error message keeps (the end, where the reason usually is).
const STDERR_TAIL: usize = 4096;

#[derive(Debug, Error)]
pub enum CommandError {
    /// The program could not be started (missing, not executable).
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the command or reading its output failed.
    #[error("waiting for `{command}`: {source}")]
    Wait {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The deadline passed; the command's process group was SIGKILLed.
    #[error(
        "`{command}` did not finish within {timeout:?}; killed pid {pid} and its group{}",
        stderr_note(stderr)
    )]
    TimedOut {
        command: String,
        timeout: Duration,
        pid: u32,
        /// What it had written to stderr until then.
        stderr: String,
    },
    /// It ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

fn stderr_note(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

impl CommandError {
    /// The exit code when the program ran and exited non-zero.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            CommandError::Failed { status, .. } => status.code(),
            _ => None,
        }
    }

    /// True when the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, CommandError::TimedOut { .. })
    }
}

/// Runs `cmd` within `timeout`; succeeds only on exit status 0.
pub async fn run(cmd: Command, timeout: Duration) -> Result<Output, CommandError> {
    let command = describe(&cmd);
    let output = output(cmd, timeout).await?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(CommandError::Failed {
            command,
            status: output.status,
            stderr: tail(&output.stderr),
        })
    }
}

/// Runs `cmd` within `timeout` and returns its output whatever its exit status; only a
/// failure to start or wait, or the timeout, is an error.
pub async fn output(cmd: Command, timeout: Duration) -> Result<Output, CommandError> {
    let command = describe(&cmd);
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|source| CommandError::Spawn { program, source })?;
    let pid = child.id().unwrap_or_default();
    // Armed until the command is reaped: a caller that drops this future mid-run kills
    // the whole group, not just the leader (which is all kill_on_drop does).
    let mut group = GroupGuard(Some(pid));
    let (stdout_pipe, stderr_pipe) = (child.stdout.take(), child.stderr.take());
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let finished = tokio::time::timeout(timeout, async {
        let (status, (), ()) = tokio::join!(
            child.wait(),
            read_capped(stdout_pipe, &mut stdout),
            read_capped(stderr_pipe, &mut stderr)
        );
        status
    })
    .await;
    match finished {
        Ok(Ok(status)) => {
            group.disarm();
            Ok(Output {
                status,
                stdout,
                stderr,
            })
        }
        Ok(Err(source)) => {
            group.kill();
            Err(CommandError::Wait { command, source })
        }
        Err(_) => {
            group.kill();
            match tokio::time::timeout(REAP_GRACE, child.wait()).await {
                Ok(_) => {
                    tracing::warn!(pid, %command, ?timeout, "command timed out; killed and reaped")
                }
                Err(_) => tracing::error!(
                    pid,
                    %command,
                    "command timed out and is still alive {REAP_GRACE:?} after SIGKILL \
                     (stuck in the kernel); tokio reaps it when it exits"
                ),
            }
            Err(CommandError::TimedOut {
                command,
                timeout,
                pid,
                stderr: tail(&stderr),
            })
        }
    }
}

/// [`run`] for code outside an async runtime (test harnesses on plain threads). Safe to
/// call from inside a runtime as well: the command runs on a runtime of its own, on a
/// thread of its own.
pub fn run_blocking(cmd: Command, timeout: Duration) -> Result<Output, CommandError> {
    block_on_own_thread(cmd, timeout, |cmd, timeout| Box::pin(run(cmd, timeout)))
}

/// [`output`] for code outside an async runtime, like [`run_blocking`].
pub fn output_blocking(cmd: Command, timeout: Duration) -> Result<Output, CommandError> {
    block_on_own_thread(cmd, timeout, |cmd, timeout| Box::pin(output(cmd, timeout)))
}

type Running = std::pin::Pin<Box<dyn Future<Output = Result<Output, CommandError>> + Send>>;

fn block_on_own_thread(
    cmd: Command,
    timeout: Duration,
    start: fn(Command, Duration) -> Running,
) -> Result<Output, CommandError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| CommandError::Spawn {
                    program: program.clone(),
                    source,
                })?;
            runtime.block_on(start(cmd, timeout))
        });
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// SIGKILLs the process group led by the command, unless disarmed once it was reaped
/// (only then could its id be reused).
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take().and_then(|p| i32::try_from(p).ok())
            && pid > 0
        {
            // ESRCH once the group is empty is fine.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, kept: &mut Vec<u8>) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// `program arg…` for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last few KiB of `bytes` as trimmed text.
pub fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use std::time::Instant;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[tokio::test]
    async fn success_failure_missing_and_hang_are_told_apart() {
        let ok = run(sh("echo out; echo err >&2"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            (&ok.stdout[..], &ok.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );

        let err = run(sh("echo why >&2; exit 3"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), Some(3));
        assert!(err.to_string().contains("why"), "{err}");

        let err = run(Command::new("/nonexistent/drbdadm"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err}");

        let started = Instant::now();
        let err = run(sh("echo partial >&2; sleep 30"), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(
            err.to_string().contains("partial"),
            "stderr until then: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn output_keeps_a_failed_status_and_stdin_is_closed() {
        // `cat` would wait for input forever if stdin were inherited.
        let out = output(sh("cat; echo out; exit 3"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
    }

    #[tokio::test]
    async fn a_timeout_kills_and_reaps_the_whole_group() {
        // The background sleep holds stdout open and would survive a kill of `sh` alone.
        let started = Instant::now();
        let err = output(
            sh("sleep 30 & echo $! >&2; wait"),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let CommandError::TimedOut {
            pid,
            timeout,
            stderr,
            ..
        } = err
        else {
            panic!("{err}")
        };
        assert_eq!(timeout, Duration::from_millis(300));
        // The leader is reaped, not a zombie: its pid is gone.
        assert_eq!(kill(Pid::from_raw(pid as i32), None), Err(Errno::ESRCH));
        // The grandchild got the SIGKILL too (it is reaped by init, so allow a moment).
        let grandchild = Pid::from_raw(stderr.trim().parse().unwrap());
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            kill(grandchild, None) == Err(Errno::ESRCH)
        });
        assert!(gone, "the background sleep {grandchild} survived");
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_kills_the_group() {
        let pidfile = tempfile::NamedTempFile::new().unwrap();
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.path().display());
        let gave_up = tokio::time::timeout(
            Duration::from_millis(300),
            run(sh(&script), Duration::from_secs(60)),
        )
        .await;
        assert!(
            gave_up.is_err(),
            "the command should still have been running"
        );
        let grandchild = Pid::from_raw(
            std::fs::read_to_string(pidfile.path())
                .unwrap()
                .trim()
                .parse()
                .unwrap(),
        );
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            kill(grandchild, None) == Err(Errno::ESRCH)
        });
        assert!(
            gone,
            "the background sleep {grandchild} survived the dropped future"
        );
    }

    #[test]
    fn the_blocking_form_works_inside_and_outside_a_runtime() {
        let out = run_blocking(sh("echo hi"), Duration::from_secs(5)).unwrap();
        assert_eq!(out.stdout, b"hi\n");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let inside =
            runtime.block_on(async { run_blocking(sh("echo in"), Duration::from_secs(5)) });
        assert_eq!(inside.unwrap().stdout, b"in\n");
        let err = output_blocking(sh("sleep 30"), Duration::from_millis(200)).unwrap_err();
        assert!(err.is_timeout(), "{err}");
    }

    #[tokio::test]
    async fn output_past_the_cap_is_dropped_without_blocking_the_child() {
        let script = format!("head -c {} /dev/zero", OUTPUT_CAP + 100_000);
        let out = run(sh(&script), Duration::from_secs(20)).await.unwrap();
        assert_eq!(out.stdout.len(), OUTPUT_CAP);
    }
}

//! One external command, bounded: stdin closed, stdout/stderr captured, killed (with its
//! whole process group) when the timeout passes.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How much of stderr an error message keeps (the end, where the reason usually is).
const STDERR_TAIL: usize = 4096;

/// Why a command did not produce a successful result.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be started (not installed, not executable).
    #[error("cannot start `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the command or reading its output failed.
    #[error("waiting for `{cmd}`: {source}")]
    Wait {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    /// The command ran past its timeout and was killed.
    #[error("`{cmd}` did not finish within {after:?} (killed); stderr: {stderr}")]
    Timeout {
        cmd: String,
        after: Duration,
        stderr: String,
    },
    /// The command exited unsuccessfully.
    #[error("`{cmd}` failed ({status}); stderr: {stderr}")]
    Failed {
        cmd: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// Runs `cmd` to completion within `timeout` and returns its output if it exited 0.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, CmdError> {
    let out = output(cmd, timeout)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(CmdError::Failed {
            cmd: describe(cmd),
            status: out.status,
            stderr: tail(&out.stderr),
        })
    }
}

/// Runs `cmd` to completion within `timeout` and returns its output whatever its exit
/// status; only a failure to start, or the timeout, is an error.
///
/// The command runs in a process group of its own, so the kill on timeout also reaches
/// whatever it started (an `ip netns exec … sh -c …` pipeline, for instance).
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output, CmdError> {
    let desc = describe(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| CmdError::Spawn {
        cmd: desc.clone(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    let readers = Readers::start(&mut child);
    let wait_err = |source| CmdError::Wait {
        cmd: desc.clone(),
        source,
    };

    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(wait_err)? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let Some(status) = status else {
        kill_group(&child);
        child.wait().map_err(wait_err)?;
        let (_, stderr) = readers.collect(Instant::now() + Duration::from_secs(1));
        return Err(CmdError::Timeout {
            cmd: desc,
            after: timeout,
            stderr: tail(&stderr.unwrap_or_default()),
        });
    };
    // A process the command left behind may still hold the pipes open; that is a timeout too.
    match readers.collect(deadline.max(Instant::now() + Duration::from_millis(200))) {
        (Some(stdout), Some(stderr)) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        (_, stderr) => {
            kill_group(&child);
            Err(CmdError::Timeout {
                cmd: desc,
                after: timeout,
                stderr: tail(&stderr.unwrap_or_default()),
            })
        }
    }
}

/// SIGKILL to the process group led by `child` (ESRCH once the group is empty is fine).
fn kill_group(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Threads draining stdout and stderr, so a chatty command never blocks on a full pipe.
struct Readers {
    rx: mpsc::Receiver<(usize, Vec<u8>)>,
}

impl Readers {
    fn start(child: &mut Child) -> Self {
        let (tx, rx) = mpsc::channel();
        let pipes: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ];
        for (i, pipe) in pipes.into_iter().enumerate() {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut buf);
                }
                let _ = tx.send((i, buf));
            });
        }
        Readers { rx }
    }

    /// (stdout, stderr), each `None` if its pipe was still open at `deadline`.
    fn collect(self, deadline: Instant) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let mut got: [Option<Vec<u8>>; 2] = [None, None];
        while got.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((i, buf)) => got[i] = Some(buf),
                Err(_) => break,
            }
        }
        let [stdout, stderr] = got;
        (stdout, stderr)
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

/// The last [`STDERR_TAIL`] bytes of `bytes` as trimmed text.
pub(crate) fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_returns_output() {
        let out = run(
            Command::new("sh").args(["-c", "echo hi; echo err >&2"]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn failure_carries_status_and_stderr() {
        let err = run(
            Command::new("sh").args(["-c", "echo boom >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .unwrap_err();
        match err {
            CmdError::Failed { status, stderr, .. } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr, "boom");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let t = Instant::now();
        // The backgrounded sleep holds stdout open: only a group kill ends the wait early.
        let err = output(
            Command::new("sh").args(["-c", "sleep 30 & sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(err, CmdError::Timeout { .. }), "{err:?}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = output(&mut Command::new("/nonexistent/x"), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, CmdError::Spawn { .. }), "{err:?}");
    }
}

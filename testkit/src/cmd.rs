//! One external command, bounded, for harness code on plain threads: [`common::command`]'s
//! runner in its blocking form (stdin closed, stdout/stderr captured, the whole process
//! group killed when the timeout passes, so an `ip netns exec … sh -c …` pipeline dies
//! with it). The `&mut Command` signatures keep the call sites' builder style.

use std::process::{Command, Output};
use std::time::Duration;

pub use common::command::{CommandError as CmdError, describe, tail};

/// Runs `cmd` to completion within `timeout` and returns its output if it exited 0.
/// `cmd` is used up (left as a bare program without arguments).
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, CmdError> {
    common::command::run_blocking(take(cmd), timeout)
}

/// Runs `cmd` to completion within `timeout` and returns its output whatever its exit
/// status; only a failure to start, or the timeout, is an error.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output, CmdError> {
    common::command::output_blocking(take(cmd), timeout)
}

fn take(cmd: &mut Command) -> Command {
    let program = cmd.get_program().to_owned();
    std::mem::replace(cmd, Command::new(program))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

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
        assert!(matches!(err, CmdError::TimedOut { .. }), "{err:?}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = output(&mut Command::new("/nonexistent/x"), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, CmdError::Spawn { .. }), "{err:?}");
    }
}

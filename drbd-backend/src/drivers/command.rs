//! Runs external tools (drbdadm, exportfs, rpc.nfsd, mount, …) the same careful way:
//! stdin closed, a deadline, the child killed and reaped when it passes, and the exit
//! status with stderr in every error.

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;
use thiserror::Error;
use tokio::process::Command;

#[derive(Debug, Error)]
pub enum CommandError {
    /// The program could not be started (missing, not executable).
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The deadline passed; the child was killed.
    #[error("{program} {args} did not finish within {timeout:?} and was killed")]
    TimedOut {
        program: String,
        args: String,
        timeout: Duration,
    },
    /// It ran and failed.
    #[error("{program} {args} failed ({status}): {stderr}")]
    Failed {
        program: String,
        args: String,
        status: std::process::ExitStatus,
        code: Option<i32>,
        stderr: String,
    },
}

impl CommandError {
    /// The exit code when the program ran and exited non-zero.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            CommandError::Failed { code, .. } => *code,
            _ => None,
        }
    }
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args…` with a deadline. Succeeds only on exit status 0.
pub async fn run<I, S>(program: &str, args: I, timeout: Duration) -> Result<Output, CommandError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown_args = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let child = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CommandError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    // On timeout the future (and with it the child) is dropped: kill_on_drop kills it
    // and tokio reaps it in the background.
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(source)) => {
            return Err(CommandError::Spawn {
                program: program.to_owned(),
                source,
            });
        }
        Err(_) => {
            return Err(CommandError::TimedOut {
                program: program.to_owned(),
                args: shown_args,
                timeout,
            });
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if !output.status.success() {
        return Err(CommandError::Failed {
            program: program.to_owned(),
            args: shown_args,
            status: output.status,
            code: output.status.code(),
            stderr,
        });
    }
    Ok(Output { stdout, stderr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn success_failure_missing_and_hang_are_told_apart() {
        let ok = run(
            "sh",
            ["-c", "echo out; echo err >&2"],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!((ok.stdout.as_str(), ok.stderr.as_str()), ("out\n", "err"));

        let err = run("sh", ["-c", "echo why >&2; exit 3"], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), Some(3));
        assert!(err.to_string().contains("why"), "{err}");

        let err = run("/nonexistent/drbdadm", ["up"], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err}");

        let started = std::time::Instant::now();
        let err = run("sleep", ["30"], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn stdin_is_closed_so_a_tool_waiting_for_input_does_not_hang() {
        let out = run("cat", Vec::<&str>::new(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(out.stdout, "");
    }
}

//! The drivers' calling convention for external tools (drbdadm, exportfs, rpc.nfsd,
//! mount, …) over [`common::command`], the one runner (stdin closed, deadline,
//! process-group kill, exit status and stderr in every error): program name and
//! arguments in, text out.

pub use common::command::CommandError;
use std::ffi::OsStr;
use std::time::Duration;

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    /// Trimmed.
    pub stderr: String,
}

/// Runs `program args…` with a deadline. Succeeds only on exit status 0.
pub async fn run<I, S>(program: &str, args: I, timeout: Duration) -> Result<Output, CommandError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    let output = common::command::run(cmd, timeout).await?;
    Ok(Output {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The runner itself (timeouts, group kill, caps) is tested in common::command; this
    // is the text conversion the drivers rely on.
    #[tokio::test]
    async fn stdout_is_text_and_stderr_is_trimmed() {
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
        assert!(
            matches!(&err, CommandError::Failed { stderr, .. } if stderr == "why"),
            "{err}"
        );
    }
}

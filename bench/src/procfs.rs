//! A process's footprint from /proc: resident memory (`VmRSS`, and its peak `VmHWM`,
//! from `status`) and CPU time (`utime` + `stime`, from `stat`). Parsers are pure and
//! tested on literal text; a field that is missing or garbled is an error, never 0.

use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// Linux reports `utime`/`stime` in USER_HZ ticks, which the kernel fixes at 100 for
/// userspace on every architecture (the ABI; CONFIG_HZ differs, USER_HZ does not).
const USER_HZ: u64 = 100;

#[derive(Debug, Error)]
pub enum ProcError {
    /// The process is gone or /proc is unreadable.
    #[error("reading /proc/{pid}/{file}: {source}")]
    Read {
        pid: i32,
        file: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A field is missing or not a number.
    #[error("/proc/{pid}/{file}: {what}")]
    Parse {
        pid: i32,
        file: &'static str,
        what: String,
    },
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub rss_kib: u64,
    /// The peak RSS since the process started.
    pub hwm_kib: u64,
    /// User + system CPU time so far.
    pub cpu: Duration,
}

/// `VmRSS` and `VmHWM` (kB) from the text of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> Result<(u64, u64), String> {
    let field = |key: &str| -> Result<u64, String> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .ok_or_else(|| format!("no {key} line (a kernel thread or a zombie?)"))?;
        let mut words = line.split_whitespace();
        let value = words
            .next()
            .ok_or_else(|| format!("{key} has no value"))?
            .parse::<u64>()
            .map_err(|e| format!("{key}: {e}"))?;
        match words.next() {
            Some("kB") => Ok(value),
            other => Err(format!("{key}: unit {other:?}, expected kB")),
        }
    };
    Ok((field("VmRSS")?, field("VmHWM")?))
}

/// `utime + stime` from the text of `/proc/<pid>/stat`. The command name (field 2) is
/// in parentheses and may itself contain spaces and ')', so fields are counted from
/// the last ')'.
pub fn parse_stat_cpu(text: &str) -> Result<Duration, String> {
    let (_, rest) = text
        .rsplit_once(')')
        .ok_or("no ')' after the command name")?;
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |index: usize, name: &str| -> Result<u64, String> {
        fields
            .get(index)
            .ok_or_else(|| format!("no {name} field"))?
            .parse::<u64>()
            .map_err(|e| format!("{name}: {e}"))
    };
    let ticks = tick(11, "utime")? + tick(12, "stime")?;
    Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// Reads `pid` now.
pub fn sample(pid: i32) -> Result<Sample, ProcError> {
    let read =
        |file: &'static str| {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .map_err(|source| ProcError::Read { pid, file, source })
        };
    let (rss_kib, hwm_kib) = parse_status(&read("status")?).map_err(|what| ProcError::Parse {
        pid,
        file: "status",
        what,
    })?;
    let cpu = parse_stat_cpu(&read("stat")?).map_err(|what| ProcError::Parse {
        pid,
        file: "stat",
        what,
    })?;
    Ok(Sample {
        rss_kib,
        hwm_kib,
        cpu,
    })
}

/// The parent pid from the text of `/proc/<pid>/stat` (field 4).
pub fn parse_stat_ppid(text: &str) -> Option<i32> {
    let (_, rest) = text.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Processes on this machine whose executable's file name is `name`, optionally only
/// children of `parent`. (`comm` is cut at 15 bytes, "hanfs-controlle", so the
/// executable's link is what names them.)
pub fn find(name: &str, parent: Option<i32>) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let dir = Path::new("/proc").join(pid.to_string());
            let exe_matches = std::fs::read_link(dir.join("exe"))
                .ok()
                .and_then(|p| Some(p.file_name()?.to_str()? == name))
                .unwrap_or(false);
            exe_matches
                && parent.is_none_or(|want| {
                    std::fs::read_to_string(dir.join("stat"))
                        .ok()
                        .and_then(|s| parse_stat_ppid(&s))
                        == Some(want)
                })
        })
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const STATUS: &str = "Name:\thanfs-controlle\nUmask:\t0022\nState:\tS (sleeping)\n\
        VmPeak:\t  612340 kB\nVmSize:\t  546804 kB\nVmLck:\t       0 kB\n\
        VmHWM:\t    9120 kB\nVmRSS:\t    6812 kB\nThreads:\t3\n";

    #[test]
    fn status_gives_rss_and_peak() {
        assert_eq!(parse_status(STATUS).unwrap(), (6812, 9120));
        let kernel_thread = "Name:\tkworker/0:1\nState:\tI (idle)\nThreads:\t1\n";
        assert!(parse_status(kernel_thread).unwrap_err().contains("VmRSS"));
        assert!(parse_status("VmRSS:\t12 MB\nVmHWM:\t12 kB\n").is_err());
        assert!(parse_status("VmRSS:\tx kB\nVmHWM:\t12 kB\n").is_err());
    }

    #[test]
    fn stat_cpu_counts_from_the_last_parenthesis() {
        // A command name with a space and a ')' in it, utime 250 and stime 50 ticks.
        let stat = "4242 (evil) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 3 0 \
                    100 553123840 1703 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat).unwrap(), Duration::from_secs(3));
        assert_eq!(parse_stat_ppid(stat), Some(1));
        assert!(parse_stat_cpu("4242 (short) S 1 2").is_err());
        assert!(parse_stat_cpu("no parenthesis").is_err());
    }

    #[test]
    fn this_process_reads_and_is_found_by_its_executable() {
        let pid = std::process::id() as i32;
        let s = sample(pid).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{s:?}");
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap();
        assert!(find(name, None).contains(&pid));
        assert!(!find(name, Some(pid)).contains(&pid), "not its own child");
        assert!(matches!(sample(-1), Err(ProcError::Read { .. })));
    }
}

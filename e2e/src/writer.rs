//! The client's bounded writer and what one trial measures.
//!
//! The writer (Python in the client VM) appends numbered records to a file on the NFS
//! volume, fsyncs each one and logs every acknowledgement with its monotonic time, or
//! the errno of a failed write. Optionally it holds a POSIX (fcntl) lock for the whole
//! run. After the run the host compares the acknowledged records with the file's
//! content as the server has it (client caches dropped first; an acknowledged record
//! missing = lost), takes the longest gap between two
//! acknowledgements as the client-observed stall, counts the client kernel's
//! "lost N locks" messages, and checks that the published path still works without a
//! remount (no stale file handle).

use crate::Error;
use crate::cluster::{LONG, SHORT};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use testkit::vm::Vm;

const WRITER: &str = r#"
import fcntl, os, sys, time
path, log, duration, lock = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "lock"
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
if lock:
    fcntl.lockf(fd, fcntl.LOCK_EX)
out = open(log, "w", buffering=1)
end = time.monotonic() + duration
i = 0
while time.monotonic() < end:
    i += 1
    try:
        os.write(fd, f"{i}\n".encode())
        os.fsync(fd)
        out.write(f"ack {i} {time.monotonic():.3f}\n")
    except OSError as e:
        out.write(f"err {i} {time.monotonic():.3f} {e.errno}\n")
        time.sleep(0.2)
    time.sleep(0.05)
out.write(f"done {time.monotonic():.3f}\n")
"#;

/// Puts the writer script into the client's share.
pub fn install(client: &Vm) -> Result<(), Error> {
    std::fs::write(client.share_dir().join("writer.py"), WRITER)?;
    Ok(())
}

/// What the writer does in one trial.
#[derive(Debug, Clone, Copy)]
pub struct Writer {
    /// Hold a POSIX (fcntl) lock on the file for the whole run.
    pub lock: bool,
    pub seconds: u32,
    /// When the fault is injected after the writer started.
    pub fault_after: Duration,
}

/// One row of the failover table.
#[derive(Debug, Clone)]
pub struct Trial {
    /// "hanfs" or "stock".
    pub setup: &'static str,
    pub scenario: String,
    pub lock: bool,
    /// Longest gap between two acknowledgements (s).
    pub stall_s: f64,
    /// From the fault to the first acknowledgement after the stall (s, writer's clock).
    pub resumed_s: f64,
    /// When the fault was injected: unix seconds on the host's clock.
    pub fault_unix: f64,
    pub acked: usize,
    pub lost: usize,
    pub io_errors: usize,
    pub locks_lost: usize,
    pub split_brain: usize,
    /// 1 when the published path failed (e.g. ESTALE) after the trial.
    pub stale_handles: usize,
    /// What else was checked or seen.
    pub notes: Vec<String>,
    /// Expectations of the scenario that did not hold (fails the trial).
    pub broken: Vec<String>,
}

impl Trial {
    /// Whether the trial meets hanfs's promise: nothing lost, nothing failed.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.io_errors == 0
            && self.locks_lost == 0
            && self.split_brain == 0
            && self.stale_handles == 0
            && self.broken.is_empty()
    }
}

/// Runs the writer in `dir` on the client for `writer.seconds`, calls `fault` after
/// `writer.fault_after`, waits for the writer to finish (bounded) and measures.
pub fn run_trial(
    clock: &crate::Clock,
    client: &Vm,
    setup: &'static str,
    scenario: &str,
    dir: &str,
    writer: Writer,
    fault: impl FnOnce() -> Result<(), Error>,
) -> Result<Trial, Error> {
    let file = format!("{dir}/records-{}.log", scenario.replace(' ', "-"));
    client.run(
        &format!("dmesg -c >/dev/null; rm -f /root/acks.log {file}"),
        SHORT,
    )?;
    client.run(
        &format!(
            "setsid -f python3 /hanfs/share/writer.py {file} /root/acks.log {} {} >/root/writer.out 2>&1",
            writer.seconds,
            if writer.lock { "lock" } else { "nolock" }
        ),
        SHORT,
    )?;
    std::thread::sleep(writer.fault_after);
    // The fault's moment on the client's clock (the writer's timestamps are the
    // client's CLOCK_MONOTONIC; guest and host clocks differ).
    let fault_at: f64 = client
        .run("python3 -c 'import time; print(time.monotonic())'", SHORT)?
        .trim()
        .parse()?;
    clock.log(&format!("{setup} {scenario}: fault"));
    let fault_unix = crate::breakdown::now_unix()?;
    fault()?;
    clock.log(&format!("{setup} {scenario}: fault injected"));
    let deadline = Instant::now() + Duration::from_secs(u64::from(writer.seconds) + 240);
    loop {
        let tail = client.exec("tail -1 /root/acks.log", SHORT)?;
        if tail.stdout.starts_with("done") {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{setup} {scenario}: the writer did not finish").into());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let acks = client.run("cat /root/acks.log", SHORT)?;
    // Read back what the *server* has: without dropping the client's page cache, cat
    // would show the writer's own cached pages even if the server never got them.
    let written = client.run(
        &format!("sync; echo 3 >/proc/sys/vm/drop_caches; cat {file}"),
        LONG,
    )?;
    let locks_lost = client
        .run("dmesg | grep -c 'lost .* lock' || true", SHORT)?
        .trim()
        .parse()
        .map_err(|e| format!("{setup} {scenario}: counting lost locks in dmesg: {e}"))?;
    let stale = client.exec(
        &format!("ls {dir} >/dev/null && echo probe >{dir}/probe && cat {dir}/probe"),
        SHORT,
    )?;
    std::fs::write(
        client.share_dir().join(format!(
            "acks-{setup}-{}-{}.log",
            scenario.replace(' ', "-"),
            if writer.lock { "lock" } else { "nolock" }
        )),
        &acks,
    )?;
    // The share dies with the cluster's work folder; the bench's failover timeline
    // (bench/README.md) needs the acks and the fault's moment after the run.
    if let Some(dir) = std::env::var_os("HANFS_E2E_RECORDS_DIR") {
        keep_records(
            std::path::Path::new(&dir),
            setup,
            scenario,
            writer.lock,
            fault_at,
            &acks,
        )?;
    }
    let measured = measure(&acks, &written, fault_at)?;
    let mut notes = Vec::new();
    if measured.longest_gap_s > measured.stall_s + 1.0 {
        notes.push(format!(
            "longest gap elsewhere in the run {:.2} s",
            measured.longest_gap_s
        ));
    }
    if !stale.success() {
        notes.push(format!("published path failed: {}", stale.stderr.trim()));
    }
    Ok(Trial {
        setup,
        scenario: scenario.to_owned(),
        lock: writer.lock,
        stall_s: measured.stall_s,
        resumed_s: measured.resumed_s,
        fault_unix,
        acked: measured.acked,
        lost: measured.lost,
        io_errors: measured.io_errors,
        locks_lost,
        split_brain: 0,
        stale_handles: usize::from(!stale.success()),
        notes,
        broken: Vec::new(),
    })
}

/// Writes `acks-<setup>-<scenario>-<lock|nolock>-<unix ms>.log` into `dir`: a first
/// line `fault <t>` (the fault on the writer's clock), then the writer's log as it was.
/// The stamp keeps every trial of a scenario.
pub fn keep_records(
    dir: &std::path::Path,
    setup: &str,
    scenario: &str,
    lock: bool,
    fault_at: f64,
    acks: &str,
) -> Result<std::path::PathBuf, Error> {
    std::fs::create_dir_all(dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let path = dir.join(format!(
        "acks-{setup}-{}-{}-{stamp}.log",
        scenario.replace(' ', "-"),
        if lock { "lock" } else { "nolock" }
    ));
    std::fs::write(&path, format!("fault {fault_at:.3}\n{acks}"))?;
    Ok(path)
}

/// What the acknowledgement log and the file's content say.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Last acknowledgement before the fault to the first one after it (to the end of
    /// the run if none came): the longest gap ending after the fault was injected.
    pub stall_s: f64,
    /// From `fault_at` to the end of that gap: when writes came through again.
    pub resumed_s: f64,
    /// The longest gap between acknowledgements anywhere in the run.
    pub longest_gap_s: f64,
    pub acked: usize,
    pub lost: usize,
    pub io_errors: usize,
}

/// Compares the writer's log (`ack <n> <t>` / `err <n> <t> <errno>` / `done <t>` lines)
/// with the records found in the file; `fault_at` is the fault's time on the writer's
/// clock. A writer that never got another write through stalled until the end.
pub fn measure(acks: &str, written: &str, fault_at: f64) -> Result<Measured, Error> {
    let present: HashSet<&str> = written.lines().collect();
    let mut acked: Vec<(&str, f64)> = Vec::new();
    let mut io_errors = 0;
    let mut done = None;
    let mut last_err = f64::MIN;
    for line in acks.lines() {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["ack", n, t] => acked.push((n, t.parse::<f64>()?)),
            ["err", _, t, ..] => {
                io_errors += 1;
                last_err = last_err.max(t.parse::<f64>()?);
            }
            ["err", ..] => io_errors += 1,
            ["done", t] => done = Some(t.parse::<f64>()?),
            _ => {}
        }
    }
    // A writer that wrote nothing after the fault (it had finished, or the fault landed
    // late) measured no stall at all: that is an unreadable trial, never a 0 s stall.
    if !acked.iter().any(|(_, t)| *t > fault_at) && last_err <= fault_at {
        return Err(format!(
            "no record was written after the fault (at {fault_at:.3}): the writer stopped \
             before it, so the fault's stall cannot be read"
        )
        .into());
    }
    let lost = acked.iter().filter(|(n, _)| !present.contains(n)).count();
    // Gaps between consecutive acknowledgements, and from the last one to the end.
    let mut gaps: Vec<(f64, f64)> = acked.windows(2).map(|w| (w[0].1, w[1].1)).collect();
    if let (Some((_, last)), Some(end)) = (acked.last(), done) {
        gaps.push((*last, end));
    }
    let longest_gap_s = longest(gaps.iter());
    // The fault's gap is the longest one that ends after the fault was injected (the
    // fault's exact instant is a little later than `fault_at`, so "the gap that starts
    // before it" could pick one of the last acknowledgements before the kill landed).
    let after_fault = || gaps.iter().filter(|(_, to)| *to > fault_at);
    let stall_s = longest(after_fault());
    let resumed_s = after_fault()
        .max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
        .map_or(0.0, |(_, to)| to - fault_at);
    Ok(Measured {
        stall_s,
        resumed_s,
        longest_gap_s,
        acked: acked.len(),
        lost,
        io_errors,
    })
}

/// The longest of some (from, to) gaps; 0 for none.
fn longest<'a>(gaps: impl Iterator<Item = &'a (f64, f64)>) -> f64 {
    gaps.map(|(from, to)| to - from).fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counts_lost_records_errors_and_the_longest_gap() {
        let acks =
            "ack 1 10.000\nack 2 10.100\nerr 3 10.200 5\nack 3 17.300\nack 4 17.400\ndone 17.5\n";
        let m = measure(acks, "1\n2\n4\n", 10.15).unwrap();
        assert_eq!(m.acked, 4);
        assert_eq!(
            m.lost, 1,
            "record 3 was acknowledged but is not in the file"
        );
        assert_eq!(m.io_errors, 1);
        assert!((m.stall_s - 7.2).abs() < 1e-9, "{}", m.stall_s);
        assert!((m.resumed_s - 7.15).abs() < 1e-9, "{}", m.resumed_s);
        assert!((m.longest_gap_s - 7.2).abs() < 1e-9);
    }

    #[test]
    fn a_writer_that_never_recovers_stalls_until_the_end() {
        let acks = "ack 1 1.0\nerr 2 2.0 5\nerr 3 2.3 5\ndone 60.0\n";
        let m = measure(acks, "1\n", 1.5).unwrap();
        assert!((m.stall_s - 59.0).abs() < 1e-9, "{}", m.stall_s);
        assert_eq!(m.io_errors, 2);
    }

    #[test]
    fn a_writer_done_before_the_fault_is_an_error_not_a_zero_stall() {
        let acks = "ack 1 1.0\nack 2 1.5\ndone 2.1\n";
        let err = measure(acks, "1\n2\n", 1.6).unwrap_err().to_string();
        assert!(
            err.contains("no record was written after the fault"),
            "{err}"
        );
    }

    #[test]
    fn a_clean_run_has_nothing_lost() {
        let m = measure("ack 1 1.0\nack 2 1.5\ndone 1.6\n", "1\n2\n", 1.2).unwrap();
        assert_eq!((m.lost, m.io_errors), (0, 0));
        assert!((m.stall_s - 0.5).abs() < 1e-9);
        assert!(
            measure("ack 1 x\n", "", 0.0).is_err(),
            "a garbled time is an error"
        );
    }

    #[test]
    fn kept_records_hold_the_fault_then_the_acks() {
        let dir = std::env::temp_dir().join(format!("hanfs-records-test-{}", std::process::id()));
        let acks = "ack 1 1.0\nack 2 9.0\ndone 9.1\n";
        let path = keep_records(&dir, "hanfs", "hard kill", false, 5.25, acks).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(name.starts_with("acks-hanfs-hard-kill-nolock-"), "{name}");
        assert_eq!(text, format!("fault 5.250\n{acks}"));
        // The extra line does not change what measure() reads.
        assert_eq!(
            measure(&text, "1\n2\n", 5.25).unwrap(),
            measure(acks, "1\n2\n", 5.25).unwrap()
        );
    }

    #[test]
    fn the_stall_is_around_the_fault_not_the_longest_gap() {
        let acks = "ack 1 1.0\nack 2 9.0\nack 3 9.1\nack 4 12.1\nack 5 12.2\ndone 12.3\n";
        let m = measure(acks, "1\n2\n3\n4\n5\n", 10.0).unwrap();
        assert!((m.stall_s - 3.0).abs() < 1e-9, "{}", m.stall_s);
        assert!((m.longest_gap_s - 8.0).abs() < 1e-9);
        // Acknowledgements that slipped in between reading the clock and the kill.
        let m = measure(acks, "1\n2\n3\n4\n5\n", 9.05).unwrap();
        assert!((m.stall_s - 3.0).abs() < 1e-9, "{}", m.stall_s);
    }
}

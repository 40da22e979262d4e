//! `record-writer`: the workload of the pod-level end-to-end runs (`e2e/src/kube_pods.rs`).
//! It runs in a container of its own (image `hanfs.local/record-writer`), so it is a small
//! std-only binary rather than the Python writer the VM-level trials use, and it speaks the
//! same log protocol (`ack <n> <t>` / `err <n> <t> <errno>` / `done <t>`, `t` = this host's
//! CLOCK_MONOTONIC, which a container shares with its node) so `writer::measure` judges both.
//!
//!   record-writer write <file> <seconds> [lock]   append numbered records, fsync each,
//!                                                 log every acknowledgement on stdout
//!   record-writer read <file>                     print `records <count> last <n>` and
//!                                                 every record, for a second pod

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::process::ExitCode;
use std::time::Duration;

/// Seconds on CLOCK_MONOTONIC, the clock the e2e harness reads the fault's moment from.
fn monotonic() -> f64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9,
        // The protocol needs a time on every line; NaN makes the harness's parse of the
        // measurement fail loudly instead of reading as a fresh time.
        Err(_) => f64::NAN,
    }
}

fn write_records(path: &str, seconds: f64, lock: bool) -> io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    if lock {
        // On NFS the kernel implements flock() as a whole-file POSIX lock held by the
        // server, the lock a failover must keep (the client reclaims it in grace).
        file.lock()?;
    }
    let mut out = io::stdout().lock();
    let end = monotonic() + seconds;
    let mut i: u64 = 0;
    while monotonic() < end {
        i += 1;
        match file
            .write_all(format!("{i}\n").as_bytes())
            .and_then(|()| file.sync_data())
        {
            Ok(()) => writeln!(out, "ack {i} {:.3}", monotonic())?,
            Err(e) => {
                writeln!(
                    out,
                    "err {i} {:.3} {}",
                    monotonic(),
                    e.raw_os_error().unwrap_or(-1)
                )?;
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    writeln!(out, "done {:.3}", monotonic())?;
    out.flush()
}

fn read_records(path: &str) -> io::Result<()> {
    let lines: Vec<String> = BufReader::new(File::open(path)?)
        .lines()
        .collect::<Result<_, _>>()?;
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "records {} last {}",
        lines.len(),
        lines.last().map_or("none", String::as_str)
    )?;
    for line in &lines {
        writeln!(out, "{line}")?;
    }
    out.flush()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["write", path, seconds, rest @ ..] => match seconds.parse::<f64>() {
            Ok(s) if s > 0.0 && s < 3600.0 => write_records(path, s, rest == ["lock"]),
            _ => Err(io::Error::other(format!("bad seconds {seconds:?}"))),
        },
        ["read", path] => read_records(path),
        _ => {
            eprintln!("usage: record-writer write <file> <seconds> [lock] | read <file>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("record-writer: {e}");
            ExitCode::FAILURE
        }
    }
}

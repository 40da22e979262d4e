//! NodeGetStorageHealth across a failover (issue 10): while a hard kill runs, a thread
//! asks the node plugin in the client VM (`hanfsctl storage-health`) twice a second
//! whether it reaches the storage. The promise checked: healthy before the kill, the
//! failover in progress visible as unhealthy, healthy again once the new active serves.

use crate::Error;
use crate::cluster::HanfsCluster;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Pause between two probes; each probe is one hanfsctl process and one bounded RPC.
const EVERY: Duration = Duration::from_millis(500);
/// A probe's own bound (the node plugin bounds its connect test far below this).
const PROBE_BOUND: Duration = Duration::from_secs(15);
/// At most this many probes per trial, whatever happens (a 5 min trial at 2/s).
const MAX_PROBES: usize = 600;

/// One answer: seconds since the probe started, and what the node said (`normal`, a
/// problem line, or the call's own error).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub at_s: f64,
    /// How long the call took: a call that blocks across an outage and then answers
    /// "normal" is how a failover hides (the CI of stop 16).
    pub took_s: f64,
    pub healthy: bool,
    pub what: String,
}

pub struct StorageHealthProbe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Reading>>,
}

impl StorageHealthProbe {
    pub fn start(hc: &HanfsCluster) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let hanfsctl = hc.hanfsctl_command(&["storage-health"]);
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let started = Instant::now();
            let mut readings = Vec::new();
            while !flag.load(Ordering::Relaxed) && readings.len() < MAX_PROBES {
                let at_s = started.elapsed().as_secs_f64();
                let mut cmd = hanfsctl();
                let (healthy, what) = match testkit::cmd::output(&mut cmd, PROBE_BOUND) {
                    Ok(out) => parse_answer(
                        out.status.success(),
                        &String::from_utf8_lossy(&out.stdout),
                        &String::from_utf8_lossy(&out.stderr),
                    ),
                    Err(e) => (false, format!("probe failed: {e}")),
                };
                let took_s = started.elapsed().as_secs_f64() - at_s;
                readings.push(Reading {
                    at_s,
                    took_s,
                    healthy,
                    what,
                });
                thread::sleep(EVERY);
            }
            readings
        });
        StorageHealthProbe { stop, thread }
    }

    /// Stops the probing and returns every reading in order.
    pub fn finish(self) -> Result<Vec<Reading>, Error> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the storage-health probe thread panicked".into())
    }
}

/// What one `hanfsctl storage-health` said: healthy only on exactly `storage: normal`.
/// A failed call counts as unhealthy (the node plugin itself answers even when the
/// storage is gone, so a failed call is worth seeing in the timeline).
pub fn parse_answer(success: bool, stdout: &str, stderr: &str) -> (bool, String) {
    let lines: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if !success {
        return (false, format!("call failed: {}", stderr.trim()));
    }
    if lines == ["storage: normal"] {
        return (true, "normal".into());
    }
    (false, lines.join("; "))
}

/// The verdict on a failover's readings: a one-line timeline, or what broke the promise.
pub fn judge(readings: &[Reading]) -> Result<String, String> {
    let first = readings.first().ok_or("no storage-health reading at all")?;
    if !first.healthy {
        return Err(format!(
            "storage unhealthy before the kill: {} (at {:.1} s)",
            first.what, first.at_s
        ));
    }
    let down = readings.iter().position(|r| !r.healthy).ok_or_else(|| {
        format!(
            "the failover never showed in NodeGetStorageHealth (every reading normal; {})",
            span(readings)
        )
    })?;
    let up = readings[down..]
        .iter()
        .position(|r| r.healthy)
        .map(|i| down + i)
        .ok_or_else(|| {
            format!(
                "NodeGetStorageHealth never cleared after the failover (last: {})",
                readings.last().map_or("", |r| r.what.as_str())
            )
        })?;
    // Relapses after the recovery are reported, not hidden.
    let relapses = readings[up..].iter().filter(|r| !r.healthy).count();
    Ok(format!(
        "storage health: normal, then {} from {:.1} s ({} readings), normal again at {:.1} s \
         ({:.1} s unhealthy){}",
        readings[down].what,
        readings[down].at_s,
        up - down,
        readings[up].at_s,
        readings[up].at_s - readings[down].at_s,
        if relapses > 0 {
            format!(", {relapses} unhealthy readings after that")
        } else {
            String::new()
        }
    ))
}

/// The readings in one phrase: how many, over what time, and the slowest call.
fn span(readings: &[Reading]) -> String {
    let slowest = readings.iter().max_by(|a, b| a.took_s.total_cmp(&b.took_s));
    match (readings.first(), readings.last(), slowest) {
        (Some(first), Some(last), Some(slow)) => format!(
            "{} readings from {:.1} to {:.1} s, the slowest took {:.1} s from {:.1} s",
            readings.len(),
            first.at_s,
            last.at_s,
            slow.took_s,
            slow.at_s
        ),
        _ => "no readings".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(at_s: f64, healthy: bool) -> Reading {
        Reading {
            at_s,
            took_s: 0.1,
            healthy,
            what: if healthy {
                "normal"
            } else {
                "storage: NOT_REACHABLE x"
            }
            .into(),
        }
    }

    #[test]
    fn only_exactly_normal_is_healthy() {
        assert_eq!(
            parse_answer(true, "storage: normal\n", ""),
            (true, "normal".into())
        );
        assert!(!parse_answer(true, "storage: NOT_REACHABLE a (b)\n", "").0);
        assert!(!parse_answer(true, "", "").0);
        assert!(!parse_answer(false, "storage: normal\n", "boom").0);
        assert!(!parse_answer(true, "storage: normal\nstorage: X y (z)\n", "").0);
    }

    #[test]
    fn a_failover_must_show_and_then_clear() {
        let good = [
            r(0.0, true),
            r(0.5, true),
            r(1.0, false),
            r(1.5, false),
            r(2.0, true),
        ];
        let line = judge(&good).unwrap();
        assert!(
            line.contains("from 1.0 s (2 readings), normal again at 2.0 s"),
            "{line}"
        );
        let hidden = judge(&[r(0.0, true), r(0.5, true)]).unwrap_err();
        assert!(hidden.contains("never showed"), "{hidden}");
        assert!(
            hidden.contains("2 readings from 0.0 to 0.5 s, the slowest took 0.1 s"),
            "{hidden}"
        );
        assert!(
            judge(&[r(0.0, true), r(0.5, false)])
                .unwrap_err()
                .contains("never cleared")
        );
        assert!(
            judge(&[r(0.0, false), r(0.5, true)])
                .unwrap_err()
                .contains("before the kill")
        );
        assert!(judge(&[]).is_err());
        let relapse = [
            r(0.0, true),
            r(1.0, false),
            r(2.0, true),
            r(3.0, false),
            r(4.0, true),
        ];
        assert!(
            judge(&relapse)
                .unwrap()
                .contains("1 unhealthy readings after that")
        );
    }
}

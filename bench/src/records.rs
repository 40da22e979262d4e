//! The e2e matrix's per-trial records, for the failover timeline.
//!
//! e2e/src/writer.rs keeps, when `HANFS_E2E_RECORDS_DIR` is set for a VM run, one file
//! per trial, `acks-<setup>-<scenario>-<lock|nolock>-<stamp>.log`: the client writer's
//! log (`ack <n> <t>`, `err <n> <t> <errno>`, `done <t>`, t on the client's
//! CLOCK_MONOTONIC) after a first line `fault <t>`, the fault's moment on that clock.
//! The bench turns each into (seconds since the fault, records acknowledged since the
//! fault): a stall is the flat stretch right of 0.

use std::path::{Path, PathBuf};

/// One trial's acknowledgements.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialRecords {
    /// "hanfs" or "stock".
    pub setup: String,
    /// e.g. "hard-kill".
    pub scenario: String,
    pub lock: bool,
    pub fault_at: f64,
    /// Acknowledgement times, in log order.
    pub acks: Vec<f64>,
    /// The writer's last line (ack, err or done): it was still running until then.
    pub last_at: f64,
}

/// Parses one records file's text; `name` is its file name (setup, scenario, lock).
pub fn parse(name: &str, text: &str) -> Result<TrialRecords, String> {
    let stem = name
        .strip_prefix("acks-")
        .and_then(|n| n.strip_suffix(".log"))
        .ok_or_else(|| format!("{name}: not acks-<setup>-<scenario>-<lock>-<stamp>.log"))?;
    let (setup, rest) = stem
        .split_once('-')
        .ok_or_else(|| format!("{name}: no setup in the name"))?;
    // The scenario may contain '-'; lock and stamp are the last two parts.
    let mut parts: Vec<&str> = rest.rsplitn(3, '-').collect();
    parts.reverse();
    let (scenario, lock) = match parts.as_slice() {
        [scenario, "lock", _stamp] => (*scenario, true),
        [scenario, "nolock", _stamp] => (*scenario, false),
        _ => return Err(format!("{name}: no lock/nolock and stamp at the end")),
    };
    let mut fault_at = None;
    let mut acks = Vec::new();
    let mut last_at = f64::NEG_INFINITY;
    for (i, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let time = |s: &str| {
            s.parse::<f64>()
                .map_err(|e| format!("{name} line {}: {line:?}: {e}", i + 1))
        };
        match words.as_slice() {
            ["fault", t] => fault_at = Some(time(t)?),
            ["ack", _, t] => {
                acks.push(time(t)?);
                last_at = last_at.max(time(t)?);
            }
            ["err", _, t, _] | ["done", t] => last_at = last_at.max(time(t)?),
            [] => {}
            _ => return Err(format!("{name} line {}: unknown {line:?}", i + 1)),
        }
    }
    Ok(TrialRecords {
        setup: setup.to_owned(),
        scenario: scenario.to_owned(),
        lock,
        fault_at: fault_at.ok_or_else(|| {
            format!("{name}: no 'fault <t>' line (written by an older e2e/src/writer.rs?)")
        })?,
        acks,
        last_at,
    })
}

/// (seconds since the fault, records acknowledged since the fault) from `before` s
/// before it to `after` s after it, as a step line: each acknowledgement raises the
/// count by one at its moment.
pub fn timeline(trial: &TrialRecords, before: f64, after: f64) -> Vec<(f64, f64)> {
    let at_fault = trial.acks.iter().filter(|t| **t <= trial.fault_at).count() as f64;
    let mut points = Vec::new();
    for (i, t) in trial.acks.iter().enumerate() {
        let x = t - trial.fault_at;
        if x < -before || x > after {
            continue;
        }
        let y = (i + 1) as f64 - at_fault;
        if let Some(&(_, last)) = points.last() {
            // Hold the previous count until this ack: a stall draws flat.
            points.push((x, last));
        }
        points.push((x, y));
    }
    // A stall longer than the window (the stock setup's 110 s, with or without I/O
    // errors) draws flat to its edge, never as a line that just ends at the fault.
    let ran_past_window = trial.last_at - trial.fault_at > after;
    if let Some(&(x, last)) = points.last()
        && ran_past_window
        && x < after
    {
        points.push((after, last));
    }
    points
}

/// Every records file in `dir` (sorted by name), parsed. Files of other names are
/// ignored; a records file that cannot be parsed is an error.
pub fn load_dir(dir: &Path) -> Result<Vec<TrialRecords>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("acks-") && n.ends_with(".log"))
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            // Only names that are UTF-8 passed the filter above.
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("acks-?.log");
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            parse(name, &text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TRIAL: &str = "fault 100.000\nack 1 99.800\nack 2 99.900\nack 3 100.050\nerr 4 100.3 5\n\
                         ack 4 105.100\nack 5 105.200\ndone 105.300\n";

    #[test]
    fn parses_names_and_lines() {
        let t = parse("acks-hanfs-hard-kill-nolock-1764600000000.log", TRIAL).unwrap();
        assert_eq!(
            (t.setup.as_str(), t.scenario.as_str(), t.lock),
            ("hanfs", "hard-kill", false)
        );
        assert_eq!(t.fault_at, 100.0);
        assert_eq!(t.acks.len(), 5);
        let s = parse("acks-stock-hard-kill-lock-7.log", TRIAL).unwrap();
        assert!(s.lock && s.setup == "stock");
        assert!(parse("acks-hanfs-hard-kill.log", TRIAL).is_err());
        assert!(parse("other.log", TRIAL).is_err());
        let old = parse("acks-hanfs-x-nolock-1.log", "ack 1 1.0\n").unwrap_err();
        assert!(old.contains("fault"), "{old}");
        assert!(parse("acks-hanfs-x-nolock-1.log", "fault x\n").is_err());
        assert!(parse("acks-hanfs-x-nolock-1.log", "fault 1\nbogus line\n").is_err());
    }

    #[test]
    fn the_timeline_is_flat_through_the_stall() {
        let t = parse("acks-hanfs-hard-kill-nolock-1.log", TRIAL).unwrap();
        let points = timeline(&t, 1.0, 10.0);
        // Two acks before the fault: counted negative, 0 at the fault.
        assert_eq!(points[0], (99.8 - 100.0, -1.0));
        let y_at = |x: f64| {
            points
                .iter()
                .rev()
                .find(|(px, _)| *px <= x)
                .map(|(_, y)| *y)
                .unwrap()
        };
        assert_eq!(y_at(0.06), 1.0);
        assert_eq!(y_at(5.0), 1.0, "nothing acknowledged during the stall");
        assert_eq!(y_at(5.25), 3.0);
        // Points outside the window are left out, and a stall past its edge stays flat
        // to the edge.
        let short = timeline(&t, 0.1, 1.0);
        assert!(short.iter().all(|(x, _)| (-0.1..=1.0).contains(x)));
        assert_eq!(short.last(), Some(&(1.0, 1.0)));
        // A trial that ended inside the window is not drawn past its last ack.
        assert!(points.last().unwrap().0 < 10.0);
        // Only errors after the fault, for longer than the window: flat to its edge.
        let failing = parse(
            "acks-stock-hard-kill-lock-1.log",
            "fault 100.0\nack 1 99.5\nerr 2 115.0 5\nerr 3 140.0 5\ndone 141.0\n",
        )
        .unwrap();
        assert_eq!(timeline(&failing, 1.0, 30.0).last(), Some(&(30.0, 0.0)));
    }

    #[test]
    fn loads_a_directory_and_refuses_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("acks-hanfs-hard-kill-nolock-1.log"), TRIAL).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        assert_eq!(load_dir(dir.path()).unwrap().len(), 1);
        std::fs::write(
            dir.path().join("acks-stock-hard-kill-nolock-2.log"),
            "ack 1 x\n",
        )
        .unwrap();
        assert!(load_dir(dir.path()).is_err());
        assert!(load_dir(&dir.path().join("missing")).is_err());
    }
}

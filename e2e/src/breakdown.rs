//! Where a failover's stall goes (issue 12): the new active's agent log, read on the
//! fault's clock. Each trial that moved the storage gets one line, e.g.
//! `takeover after the fault: Lease taken 6.91 s, Promote 6.93 (0.25), Mount 7.18 (2.60),
//! StartNfsd 9.78 (0.90), Export 10.68 (0.05), AddVip 10.73 (0.20), VIP up 10.93,
//! first ack 11.40 (clock offset ±0.04 s)`: seconds after the fault, and in brackets
//! how long each step took (to the next mark).
//!
//! The agent logs wall-clock UTC on the guest's clock; the fault's moment is taken on
//! the host's. The guest's offset is measured with one `date` round trip right after
//! the trial, so every mark carries that round trip's half as its uncertainty. The
//! client's first acknowledgement after the fault comes from the writer's own clock,
//! relative to the fault read on that same clock ([`crate::writer::Trial::resumed_s`]).

use crate::Error;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::vm::Vm;

/// One mark of the takeover: what, and when (seconds after the fault).
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub what: String,
    pub at_s: f64,
}

/// The stack steps a takeover runs, in the names the agent logs them with.
const STEPS: &[&str] = &[
    "Promote",
    "PromoteForced",
    "Mount",
    "StartNfsd",
    "Export",
    "AddVip",
];

/// Unix seconds now, on the host's clock (a clock before 1970 is an error, not a 0).
pub fn now_unix() -> Result<f64, Error> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64())
}

/// The guest's clock minus the host's (seconds), and the uncertainty of that: half the
/// round trip of the `date` that read it, the shortest of three (one command in a TCG
/// guest takes 0.3-1 s).
pub fn guest_offset(vm: &Vm) -> Result<(f64, f64), Error> {
    let mut best: Option<(f64, f64)> = None;
    for _ in 0..3 {
        let before = now_unix()?;
        let out = vm.run("date +%s.%N", Duration::from_secs(30))?;
        let after = now_unix()?;
        let guest: f64 = out
            .trim()
            .parse()
            .map_err(|e| format!("{}: date printed {out:?}: {e}", vm.name()))?;
        let reading = (guest - (before + after) / 2.0, (after - before) / 2.0);
        if best.is_none_or(|(_, half)| reading.1 < half) {
            best = Some(reading);
        }
    }
    best.ok_or_else(|| "no clock reading".into())
}

/// Unix seconds of a tracing timestamp such as `2026-12-02T03:40:01.123456Z`.
pub fn parse_stamp(stamp: &str) -> Option<f64> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec >= 61.0 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

/// The log line without terminal colour codes (the agent's log is a redirected stderr,
/// and tracing's formatter colours it anyway).
pub(crate) fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The takeover marks in an agent log after `fault_guest` (unix seconds on the guest's
/// clock): the Lease taken, each stack step's start, and "VIP up", up to the first
/// "VIP up" after the fault. Times are relative to the fault.
pub fn takeover_marks(log: &str, fault_guest: f64) -> Vec<Mark> {
    let mut marks = Vec::new();
    for line in log.lines() {
        let line = plain(line);
        let Some(at) = line.split_whitespace().next().and_then(parse_stamp) else {
            continue;
        };
        if at < fault_guest {
            continue;
        }
        let at_s = at - fault_guest;
        let what = if line.contains("Lease written") && line.contains("action=Acquire") {
            "Lease taken".to_owned()
        } else if line.contains("stack step")
            && !line.contains("stack step failed")
            && let Some(step) = field(&line, "step")
            && STEPS.contains(&step.split([' ', '{']).next().unwrap_or(""))
        {
            step.split([' ', '{']).next().unwrap_or("").to_owned()
        } else if line.contains("active: VIP up") {
            marks.push(Mark {
                what: "VIP up".into(),
                at_s,
            });
            break;
        } else {
            continue;
        };
        // A step retried after a failure shows once, at its first start.
        if !marks.iter().any(|m: &Mark| m.what == what) {
            marks.push(Mark { what, at_s });
        }
    }
    marks
}

/// The value of `key=value` in a tracing line (up to the next space).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    Some(rest.split(' ').next().unwrap_or(rest))
}

/// One line: the marks, each step's duration to the next mark, the client's first
/// acknowledgement, and the clock uncertainty.
pub fn describe(marks: &[Mark], resumed_s: f64, uncertainty_s: f64) -> String {
    let mut parts = Vec::new();
    for (i, mark) in marks.iter().enumerate() {
        let took = marks
            .get(i + 1)
            .filter(|_| STEPS.contains(&mark.what.as_str()))
            .map_or(String::new(), |next| {
                format!(" ({:.2})", next.at_s - mark.at_s)
            });
        parts.push(format!("{} {:.2}{took}", mark.what, mark.at_s));
    }
    parts.push(format!("first ack {resumed_s:.2}"));
    format!(
        "takeover after the fault, s: {} (clock offset ±{uncertainty_s:.2} s)",
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stamps_are_unix_seconds() {
        assert_eq!(parse_stamp("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_stamp("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        let t = parse_stamp("2026-12-02T03:40:01.250000Z").unwrap();
        assert!((t - 1_796_182_801.25).abs() < 1e-6, "{t}");
        for bad in [
            "2026-12-02 03:40:01Z",
            "2026-13-02T03:40:01Z",
            "x",
            "2026-12-02T03:40:01",
        ] {
            assert_eq!(parse_stamp(bad), None, "{bad}");
        }
    }

    const LOG: &str = "\
2026-12-02T03:40:00.000000Z  INFO drbd_backend::ha::agent: stack step step=Export reason=old
2026-12-02T03:40:07.000000Z  INFO drbd_backend::ha::agent: Lease written action=Acquire
2026-12-02T03:40:07.100000Z  INFO drbd_backend::ha::agent: stack step step=Promote reason=holder
2026-12-02T03:40:07.400000Z  INFO drbd_backend::ha::agent: stack step step=Mount reason=primary
2026-12-02T03:40:08.000000Z  WARN drbd_backend::ha::agent: stack step failed step=Mount error=x
2026-12-02T03:40:08.100000Z  INFO drbd_backend::ha::agent: stack step step=Mount reason=again
2026-12-02T03:40:10.000000Z  INFO drbd_backend::ha::agent: stack step step=StartNfsd reason=m
2026-12-02T03:40:10.900000Z  INFO drbd_backend::ha::agent: stack step step=Export reason=n
2026-12-02T03:40:11.000000Z  INFO drbd_backend::ha::agent: stack step step=AddVip reason=e
2026-12-02T03:40:11.200000Z  INFO drbd_backend::ha::agent: active: VIP up takeover_ms=4200
2026-12-02T03:40:12.000000Z  INFO drbd_backend::ha::agent: stack step step=Promote reason=later
";

    #[test]
    fn marks_after_the_fault_up_to_vip_up() {
        let fault = parse_stamp("2026-12-02T03:40:01.000000Z").unwrap();
        let marks = takeover_marks(LOG, fault);
        let names: Vec<&str> = marks.iter().map(|m| m.what.as_str()).collect();
        assert_eq!(
            names,
            [
                "Lease taken",
                "Promote",
                "Mount",
                "StartNfsd",
                "Export",
                "AddVip",
                "VIP up"
            ]
        );
        assert!((marks[2].at_s - 6.4).abs() < 1e-6, "{marks:?}");
        let line = describe(&marks, 11.5, 0.04);
        assert!(
            line.contains("Lease taken 6.00, Promote 6.10 (0.30), Mount 6.40 (2.60)"),
            "{line}"
        );
        assert!(
            line.ends_with("VIP up 10.20, first ack 11.50 (clock offset ±0.04 s)"),
            "{line}"
        );
    }

    #[test]
    fn colour_codes_and_forced_promotes_are_read() {
        let log = "\u{1b}[2m2026-12-02T03:40:02.000000Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \
                   \u{1b}[2mdrbd_backend::ha::agent\u{1b}[0m\u{1b}[2m:\u{1b}[0m stack step \
                   \u{1b}[3mstep\u{1b}[0m\u{1b}[2m=\u{1b}[0mPromoteForced { reason: \"x\" }\n";
        let fault = parse_stamp("2026-12-02T03:40:01.000000Z").unwrap();
        let marks = takeover_marks(log, fault);
        assert_eq!(
            marks,
            [Mark {
                what: "PromoteForced".into(),
                at_s: 1.0
            }]
        );
        assert!(takeover_marks(LOG, parse_stamp("2026-12-02T04:00:00Z").unwrap()).is_empty());
    }
}

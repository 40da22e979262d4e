//! Volume calls across a hard kill (issue 13 part 5): CSI creates, deletes and snapshots
//! are issued in a loop through the host's controller (hanfsctl → hanfs-controller →
//! volume API at the VIP) while the active storage VM is SIGKILLed. Each call must
//! finish successfully, none may take much longer than the failover itself, and on the
//! new active every name must exist once with nothing half-made left (no directory
//! without its record or the other way round, nothing in the build and trash areas).
//! The slowest call is printed.
//!
//! hanfsctl sends no deadline, so each call is bounded by the controller's own budget
//! (120 s); what keeps it short is the controller's keepalive (a dead server's silent
//! connection dropped within 10 s) and its retries of idempotent calls.

use crate::Error;
use crate::cluster::{HanfsCluster, LONG, SHORT, first_word, hanfsctl_outcome};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Calls run this long before the kill, so some are in flight when it comes.
const BEFORE_KILL: Duration = Duration::from_secs(6);
/// ... and this long after the survivor serves, so calls issued during the failover end.
const AFTER_TAKEOVER: Duration = Duration::from_secs(20);
/// A call may take the failover (kill → survivor active) plus this: keepalive detection
/// (5 s interval + 5 s timeout), one capped backoff (2 s), the call itself under TCG.
const SLACK: Duration = Duration::from_secs(20);
/// Bound on the loop per worker, whatever the timing.
const MAX_ROUNDS: usize = 200;
/// One hanfsctl call may not take longer than this at all (the controller's budget for
/// calls without a deadline is 120 s).
const CALL_LIMIT: Duration = Duration::from_secs(150);

/// One finished call.
#[derive(Debug, Clone)]
struct Call {
    what: String,
    started: Instant,
    took: Duration,
    result: Result<String, String>,
}

fn call(make: &impl Fn() -> Command, what: String) -> Call {
    let started = Instant::now();
    let result = hanfsctl_outcome(make, CALL_LIMIT);
    Call {
        what,
        started,
        took: started.elapsed(),
        result,
    }
}

/// What each worker left on the storage: names that must exist now.
#[derive(Default)]
struct Expected {
    volumes: Vec<String>,
    snapshots: Vec<String>,
}

/// One worker's loop (see [`run`]), until `stop` or [`MAX_ROUNDS`].
fn worker(hc: &HanfsCluster, kind: &str, source: &str, stop: &AtomicBool) -> (Vec<Call>, Expected) {
    let ctl = |args: &[&str], what: String| call(&hc.hanfsctl_command(args), what);
    let mut calls = Vec::new();
    let mut expected = Expected::default();
    for i in 0..MAX_ROUNDS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let name = format!("vc-{kind}-{i}");
        let made = match kind {
            "snapshot" => ctl(
                &["snapshot", "create", &name, "--volume", source],
                format!("snapshot create {name}"),
            ),
            // Kept volumes are small: up to MAX_ROUNDS of them stay until the end, and
            // the e2e export (~450 MiB, capacity policy reserve) must hold them all.
            "keep" => ctl(
                &["volume", "create", &name, "--size", "1Mi"],
                format!("volume create {name}"),
            ),
            _ => ctl(
                &["volume", "create", &name, "--size", "8Mi"],
                format!("volume create {name}"),
            ),
        };
        let ok = made.result.is_ok();
        calls.push(made);
        if !ok {
            continue;
        }
        let second = match kind {
            "volume" => ctl(
                &["volume", "delete", &format!("v1/e2e/{name}")],
                format!("volume delete {name}"),
            ),
            "snapshot" => ctl(
                &["snapshot", "delete", &format!("s1/e2e/{name}")],
                format!("snapshot delete {name}"),
            ),
            _ => ctl(&["volume", "list"], "volume list".to_owned()),
        };
        let done = second.result.is_ok();
        calls.push(second);
        match kind {
            "keep" => expected.volumes.push(name),
            "volume" if !done => expected.volumes.push(name),
            "snapshot" if !done => expected.snapshots.push(name),
            _ => {}
        }
    }
    (calls, expected)
}

/// Runs the scenario; returns the notes for the report, or what broke.
pub fn run(hc: &HanfsCluster) -> Result<Vec<String>, Error> {
    let (active, _) = hc.wait_active(None, LONG)?;
    let source = first_word(&hc.hanfsctl(&["volume", "create", "vc-source", "--size", "16Mi"])?)?;

    let stop = AtomicBool::new(false);
    let mut calls = Vec::new();
    let mut expected = Expected {
        volumes: vec!["vc-source".into()],
        snapshots: Vec::new(),
    };
    let killed = Instant::now() + BEFORE_KILL;
    let takeover = thread::scope(|scope| -> Result<(String, Duration), Error> {
        // Worker "volume": create a volume, delete it again. "snapshot": snapshot the
        // source, delete the snapshot. "keep": create volumes and keep them (each must
        // be there once afterwards), with a list call in between.
        let workers: Vec<_> = ["volume", "snapshot", "keep"]
            .into_iter()
            .map(|kind| {
                let (stop, source) = (&stop, &source);
                scope.spawn(move || worker(hc, kind, source, stop))
            })
            .collect();
        thread::sleep(killed.saturating_duration_since(Instant::now()));
        hc.clock.log(&format!("volume calls: killing {active}"));
        let takeover: Result<(String, Duration), Error> = match hc.vm(&active).kill() {
            Ok(()) => hc.wait_active(Some(&active), LONG),
            Err(e) => Err(e.into()),
        };
        if takeover.is_ok() {
            thread::sleep(AFTER_TAKEOVER);
        }
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            let (c, e) = w.join().map_err(|_| "a volume-call worker panicked")?;
            calls.extend(c);
            expected.volumes.extend(e.volumes);
            expected.snapshots.extend(e.snapshots);
        }
        takeover
    });
    let (survivor, failover) = takeover?;
    let mut broken = Vec::new();

    // Every call succeeded and none took much longer than the failover.
    let limit = failover + SLACK;
    for c in &calls {
        if let Err(e) = &c.result {
            broken.push(format!(
                "{} failed after {:.1} s: {}",
                c.what,
                c.took.as_secs_f64(),
                e.trim()
            ));
        }
        if c.took > limit {
            broken.push(format!(
                "{} took {:.1} s, over the failover ({:.1} s) + {} s",
                c.what,
                c.took.as_secs_f64(),
                failover.as_secs_f64(),
                SLACK.as_secs()
            ));
        }
    }
    let across: Vec<&Call> = calls
        .iter()
        .filter(|c| c.started <= killed + failover && c.started + c.took >= killed)
        .collect();
    let slowest = calls
        .iter()
        .max_by_key(|c| c.took)
        .ok_or("no volume call ran")?;

    // On the new active: each expected name once, nothing else of ours, nothing half-made.
    let listing = hc.vm(&survivor).run(
        "cd /export; for d in volumes snapshots .hanfs/meta/volumes .hanfs/meta/snapshots \
         .hanfs/tmp .hanfs/trash; do echo \"== $d\"; ls -1 $d 2>/dev/null; done",
        SHORT,
    )?;
    let section = |name: &str| -> Vec<String> {
        listing
            .split("== ")
            .find_map(|s| s.strip_prefix(&format!("{name}\n")))
            .unwrap_or("")
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    };
    let ours = |names: Vec<String>| -> Vec<String> {
        let mut names: Vec<String> = names
            .into_iter()
            .map(|n| n.trim_end_matches(".json").to_owned())
            .filter(|n| n.starts_with("vc-"))
            .collect();
        names.sort();
        names
    };
    expected.volumes.sort();
    expected.snapshots.sort();
    for (what, found) in [
        ("volume directories", ours(section("volumes"))),
        ("volume records", ours(section(".hanfs/meta/volumes"))),
    ] {
        if found != expected.volumes {
            broken.push(format!(
                "{what} on {survivor}: {found:?}, expected {:?}",
                expected.volumes
            ));
        }
    }
    for (what, found) in [
        ("snapshot directories", ours(section("snapshots"))),
        ("snapshot records", ours(section(".hanfs/meta/snapshots"))),
    ] {
        if found != expected.snapshots {
            broken.push(format!(
                "{what} on {survivor}: {found:?}, expected {:?}",
                expected.snapshots
            ));
        }
    }
    for area in [".hanfs/tmp", ".hanfs/trash"] {
        let left = section(area);
        if !left.is_empty() {
            broken.push(format!("{area} on {survivor} holds {left:?}"));
        }
    }

    // Leave the cluster as the next scenario expects it: both nodes up and in sync.
    hc.rejoin_storage(&active, &survivor)?;
    for name in &expected.volumes {
        let _ = hc.hanfsctl(&["volume", "delete", &format!("v1/e2e/{name}")]);
    }
    for name in &expected.snapshots {
        let _ = hc.hanfsctl(&["snapshot", "delete", &format!("s1/e2e/{name}")]);
    }

    let note = format!(
        "{} calls ({} in flight across the kill), failover {active} → {survivor} {:.1} s, \
         slowest call {} {:.1} s",
        calls.len(),
        across.len(),
        failover.as_secs_f64(),
        slowest.what,
        slowest.took.as_secs_f64()
    );
    println!("volume calls across a hard kill: {note}");
    if across.is_empty() {
        broken.push("no call was in flight across the kill: the scenario proved nothing".into());
    }
    if broken.is_empty() {
        Ok(vec![note])
    } else {
        Err(format!("{note}; broken: {}", broken.join("; ")).into())
    }
}

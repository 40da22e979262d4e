//! A volume load over real NFS (issue 13 part 4, the smaller shape of
//! `hanfsctl/tests/load.rs`): [`CLIENTS`] concurrent clients take [`VOLUMES`] volumes
//! each through create → ControllerPublish + NodeStage + NodePublish on the client VM →
//! a write through the mount and NodeGetVolumeStats → snapshot create and delete →
//! unpublish → delete, through hanfs-controller on the host (mTLS to the VIP) and the
//! node plugin in the client VM. Afterwards: no call failed, no mount of the load is
//! left in the client, nothing of it is left on the active (directories, records,
//! publications, build and trash areas), no project quota limit of it remains, and the
//! node plugin's and the backend's descriptors and threads are back where they were.
//! RSS of hanfs-node (client VM), hanfs-backend (active) and hanfs-controller (host)
//! before, at the peak and after is printed.

use crate::Error;
use crate::cluster::{HanfsCluster, LONG, SHORT, STANDALONE_ROOT, first_word, hanfsctl_outcome};
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Volumes per client, and clients at once: 40 volumes, each staged over NFS (a mount
/// costs seconds under TCG).
const VOLUMES: usize = 5;
const CLIENTS: usize = 8;
/// One hanfsctl call may not take longer than this (the controller's own budget for
/// calls without a deadline is 120 s).
const CALL_LIMIT: Duration = Duration::from_secs(150);
/// Between the last call and the "after" reading: the daemons trim freed memory every
/// 10 s and tokio's idle blocking threads exit after 10 s.
const SETTLE: Duration = Duration::from_secs(15);
/// How long after SETTLE descriptors and threads may take to return to their start.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// How often the sampler reads RSS during the load (each reading is one command per VM).
const SAMPLE_EVERY: Duration = Duration::from_secs(3);
/// Descriptors may differ by this much between before and after (a connection that
/// happens to be open at the reading); a leak per call would show as dozens.
const SLACK: i64 = 2;
/// Threads may stay up to one per concurrent client above the start: tokio's blocking
/// pool grows to the load's concurrency, and the daemons' periodic blocking work (each
/// health check) wakes its idle threads in turn, so none sits idle long enough to exit
/// (seen: hanfs-backend 6 → 13 threads, still 13 after 79 s). A leak per call would
/// show as hundreds (320 calls).
const THREAD_SLACK: i64 = CLIENTS as i64 + SLACK;

/// Every daemon's descriptors and threads are back within their slack.
fn settled(before: &[Footprint; 3], after: &[Footprint; 3]) -> bool {
    before
        .iter()
        .zip(after)
        .all(|(b, a)| a.fds <= b.fds + SLACK && a.threads <= b.threads + THREAD_SLACK)
}

/// What one process looks like at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Footprint {
    rss_kib: i64,
    fds: i64,
    threads: i64,
}

/// `VmRSS`, descriptors and threads of the oldest process named `name` (the daemon, not
/// a short-lived helper it forked, which may be gone before its status is read), as a
/// shell command that prints `<rss> <fds> <threads>`.
fn footprint_command(name: &str) -> String {
    format!(
        "p=$(pgrep -o -x {name}) && echo $(awk '/^VmRSS:/{{print $2}}' /proc/$p/status) \
         $(ls /proc/$p/fd | wc -l) $(awk '/^Threads:/{{print $2}}' /proc/$p/status)"
    )
}

fn parse_footprint(what: &str, text: &str) -> Result<Footprint, Error> {
    let numbers: Vec<i64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: unreadable footprint {text:?}: {e}"))?;
    match numbers[..] {
        [rss_kib, fds, threads] => Ok(Footprint {
            rss_kib,
            fds,
            threads,
        }),
        _ => Err(format!("{what}: unreadable footprint {text:?}").into()),
    }
}

/// hanfs-controller runs on the host: the one whose command line names this cluster's
/// controller socket.
fn controller_footprint(hc: &HanfsCluster) -> Result<Footprint, Error> {
    let socket = hc.workdir().join("controller.sock").display().to_string();
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.starts_with(&hc.bins.join("hanfs-controller").display().to_string())
            || !cmdline.contains(&socket)
        {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status"))?;
        let field = |name: &str| -> i64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(-1)
        };
        return Ok(Footprint {
            rss_kib: field("VmRSS:"),
            fds: std::fs::read_dir(path.join("fd"))?.count() as i64,
            threads: field("Threads:"),
        });
    }
    Err("hanfs-controller is not running on the host".into())
}

/// The three daemons at one moment: node (client VM), backend (active), controller.
fn footprints(hc: &HanfsCluster, active: &str) -> Result<[Footprint; 3], Error> {
    Ok([
        parse_footprint(
            "hanfs-node",
            &hc.client().run(&footprint_command("hanfs-node"), SHORT)?,
        )?,
        parse_footprint(
            "hanfs-backend",
            &hc.vm(active)
                .run(&footprint_command("hanfs-backend"), SHORT)?,
        )?,
        controller_footprint(hc)?,
    ])
}

/// Project ids with a hard block limit on `/export` of `vm` (`xfs_quota` report lines
/// `#<id> <used> <soft> <hard> …`).
fn limited_projects(hc: &HanfsCluster, vm: &str) -> Result<BTreeSet<String>, Error> {
    let report = hc
        .vm(vm)
        .run("xfs_quota -x -c 'report -p -n -N -b' /export", SHORT)?;
    Ok(report
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            match fields[..] {
                [id, _used, _soft, hard, ..] if id.starts_with('#') && hard != "0" => {
                    Some(id.to_owned())
                }
                _ => None,
            }
        })
        .collect())
}

/// One finished call.
struct Call {
    what: &'static str,
    took: Duration,
    error: Option<String>,
}

/// One hanfsctl call, recorded in `calls`; its output when it succeeded.
fn call(
    hc: &HanfsCluster,
    calls: &mut Vec<Call>,
    what: &'static str,
    args: &[&str],
) -> Option<String> {
    let started = Instant::now();
    let result = hanfsctl_outcome(&hc.hanfsctl_command(args), CALL_LIMIT);
    calls.push(Call {
        what,
        took: started.elapsed(),
        error: result
            .as_ref()
            .err()
            .map(|e| format!("{what} {}: {}", args.join(" "), e.trim())),
    });
    result.ok()
}

/// One client's volumes, each through its whole life.
fn client(hc: &HanfsCluster, index: usize) -> Vec<Call> {
    let mut calls = Vec::new();
    let c = &mut calls;
    for v in 0..VOLUMES {
        let name = format!("vl-{index}-{v}");
        let Some(created) = call(
            hc,
            c,
            "create",
            &["volume", "create", &name, "--size", "4Mi"],
        ) else {
            continue;
        };
        let Ok(id) = first_word(&created) else {
            c.push(Call {
                what: "create",
                took: Duration::ZERO,
                error: Some(format!("create {name}: no id in {created:?}")),
            });
            continue;
        };
        let (staging, target) = paths(&name);
        if call(
            hc,
            c,
            "publish",
            &["publish", &id, &target, "--staging", &staging],
        )
        .is_some()
        {
            let wrote = hc.client().run(
                &format!("echo {name} > {target}/data && sync && cat {target}/data"),
                SHORT,
            );
            c.push(Call {
                what: "write",
                took: Duration::ZERO,
                error: match wrote {
                    Ok(text) if text.trim() == name => None,
                    Ok(text) => Some(format!("write through {target}: read back {text:?}")),
                    Err(e) => Some(format!("write through {target}: {e}")),
                },
            });
            call(hc, c, "stats", &["stats", &id, &target]);
            let snapshot = format!("{name}-snap");
            if call(
                hc,
                c,
                "snapshot create",
                &["snapshot", "create", &snapshot, "--volume", &id],
            )
            .is_some()
            {
                call(
                    hc,
                    c,
                    "snapshot delete",
                    &["snapshot", "delete", &format!("s1/e2e/{snapshot}")],
                );
            }
            call(
                hc,
                c,
                "unpublish",
                &["unpublish", &id, &target, "--staging", &staging],
            );
        }
        call(hc, c, "delete", &["volume", "delete", &id]);
    }
    calls
}

/// Staging and target paths of a load volume in the client, below the node plugin's
/// allowed target root.
fn paths(name: &str) -> (String, String) {
    (
        format!("{STANDALONE_ROOT}/plugins/kubernetes.io/csi/hanfs/{name}/globalmount"),
        format!("{STANDALONE_ROOT}/pods/load/volumes/kubernetes.io~csi/{name}/mount"),
    )
}

fn percentile(mut values: Vec<Duration>, p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    let at = ((values.len() - 1) as f64 * p).round() as usize;
    values[at]
}

/// Runs the load; returns the notes for the report, or what broke.
pub fn run(hc: &HanfsCluster) -> Result<Vec<String>, Error> {
    let (active, _) = hc.wait_active(None, LONG)?;
    // Every staging and target parent exists before the clients start (one command).
    let mut dirs = Vec::new();
    for c in 0..CLIENTS {
        for v in 0..VOLUMES {
            let (staging, target) = paths(&format!("vl-{c}-{v}"));
            dirs.push(staging);
            dirs.push(
                target
                    .rsplit_once('/')
                    .map_or(target.clone(), |(p, _)| p.to_owned()),
            );
        }
    }
    hc.client()
        .run(&format!("mkdir -p {}", dirs.join(" ")), SHORT)?;
    let limits_before = limited_projects(hc, &active)?;
    let before = footprints(hc, &active)?;

    let started = Instant::now();
    let done = AtomicBool::new(false);
    let peak = Mutex::new(before);
    let sample_errors = Mutex::new(Vec::new());
    let calls: Vec<Call> = thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            // Bounded like every loop here: the load's own bound, then stop.
            while !done.load(Ordering::SeqCst) && started.elapsed() < CALL_LIMIT * 8 {
                match footprints(hc, &active) {
                    Ok(now) => {
                        let mut peak = peak.lock().unwrap_or_else(|e| e.into_inner());
                        for (p, n) in peak.iter_mut().zip(now) {
                            p.rss_kib = p.rss_kib.max(n.rss_kib);
                            p.fds = p.fds.max(n.fds);
                            p.threads = p.threads.max(n.threads);
                        }
                    }
                    Err(e) => sample_errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(e.to_string()),
                }
                thread::sleep(SAMPLE_EVERY);
            }
        });
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| scope.spawn(move || client(hc, c)))
            .collect();
        let mut calls = Vec::new();
        for c in clients {
            match c.join() {
                Ok(mut more) => calls.append(&mut more),
                Err(_) => calls.push(Call {
                    what: "client",
                    took: Duration::ZERO,
                    error: Some("a load client panicked".into()),
                }),
            }
        }
        done.store(true, Ordering::SeqCst);
        let _ = sampler.join();
        calls
    });
    let load_took = started.elapsed();
    // Idle pool threads (tokio's blocking pool keeps one 10 s after its last task, and
    // the daemons' periodic work keeps reusing them) go on their own; a leak stays. So the
    // "after" reading is the first back within its slack, or the last one at SETTLE_LIMIT.
    thread::sleep(SETTLE);
    let settling = Instant::now();
    let mut after = footprints(hc, &active)?;
    while !settled(&before, &after) && settling.elapsed() < SETTLE_LIMIT {
        thread::sleep(SAMPLE_EVERY);
        after = footprints(hc, &active)?;
    }
    let settle_took = SETTLE + settling.elapsed();
    let peak = peak.into_inner().unwrap_or_else(|e| e.into_inner());
    let limits_after = limited_projects(hc, &active)?;

    let mut broken: Vec<String> = calls.iter().filter_map(|c| c.error.clone()).collect();
    // Load alone must never move the service: a burst of publishes once made the active's
    // health check misread a half-applied export table and stand down.
    let (active_after, _) = hc.wait_active(None, LONG)?;
    if active_after != active {
        broken.push(format!(
            "the active storage server changed under the load ({active} → {active_after}): an unplanned failover"
        ));
    }
    if let Ok(errors) = sample_errors.into_inner()
        && !errors.is_empty()
    {
        broken.push(format!(
            "RSS samples could not be read: {}",
            errors.join("; ")
        ));
    }
    let mounts = hc.client().run(
        &format!("grep -c ' {STANDALONE_ROOT}/[^ ]*/vl-' /proc/self/mountinfo || true"),
        SHORT,
    )?;
    if mounts.trim() != "0" {
        broken.push(format!(
            "{} mounts of the load left in the client",
            mounts.trim()
        ));
    }
    let left = hc.vm(&active).run(
        "cd /export && ls -1d volumes/vl-* snapshots/vl-* .hanfs/meta/volumes/vl-* \
         .hanfs/meta/snapshots/vl-* .hanfs/meta/publish/vl-* 2>/dev/null; \
         ls -1A .hanfs/tmp .hanfs/trash 2>/dev/null | grep -v ':$' | grep . || true",
        SHORT,
    )?;
    if !left.trim().is_empty() {
        broken.push(format!(
            "left on {active}: {}",
            left.trim().replace('\n', ", ")
        ));
    }
    let new_limits: Vec<&String> = limits_after.difference(&limits_before).collect();
    if !new_limits.is_empty() {
        broken.push(format!(
            "project quota limits left on {active}: {new_limits:?}"
        ));
    }
    let names = ["hanfs-node", "hanfs-backend", "hanfs-controller"];
    for (name, (b, a)) in names.iter().zip(before.iter().zip(after.iter())) {
        if a.fds > b.fds + SLACK {
            broken.push(format!(
                "{name} holds {} descriptors, {} before",
                a.fds, b.fds
            ));
        }
        if a.threads > b.threads + THREAD_SLACK {
            broken.push(format!(
                "{name} runs {} threads, {} before",
                a.threads, b.threads
            ));
        }
    }

    let by_kind = |what: &str| -> String {
        let took: Vec<Duration> = calls
            .iter()
            .filter(|c| c.what == what)
            .map(|c| c.took)
            .collect();
        format!(
            "{what} p50 {:.2} s max {:.2} s",
            percentile(took.clone(), 0.5).as_secs_f64(),
            percentile(took, 1.0).as_secs_f64()
        )
    };
    let memory: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                "{name} {}/{}/{} KiB, fds {}→{}, threads {}→{}",
                before[i].rss_kib,
                peak[i].rss_kib,
                after[i].rss_kib,
                before[i].fds,
                after[i].fds,
                before[i].threads,
                after[i].threads
            )
        })
        .collect();
    let note = format!(
        "{} volumes by {CLIENTS} clients over NFS, {} calls, {} failed, in {:.0} s; {}; {}; {}; {}; \
         after read {:.0} s after the last call; RSS before/peak/after: {}",
        VOLUMES * CLIENTS,
        calls.len(),
        calls.iter().filter(|c| c.error.is_some()).count(),
        load_took.as_secs_f64(),
        by_kind("create"),
        by_kind("publish"),
        by_kind("unpublish"),
        by_kind("delete"),
        settle_took.as_secs_f64(),
        memory.join("; ")
    );
    println!("volume load over NFS: {note}");
    if broken.is_empty() {
        Ok(vec![note])
    } else {
        Err(format!("{note}; broken: {}", broken.join("; ")).into())
    }
}

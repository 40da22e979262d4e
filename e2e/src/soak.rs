//! The Lease soak (issue 12): whether a Lease duration is safe, measured. For the soak's
//! length, with nothing failing on purpose, four things run at once:
//! - the client's writer appends fsync'ed records to a published volume (as in every
//!   failover trial, [`crate::writer`]);
//! - a volume churn: CSI CreateVolume, CreateSnapshot, DeleteSnapshot, DeleteVolume in a
//!   loop through hanfs-controller (each call a write on the active's export);
//! - an API server load: ConfigMaps created, listed and deleted in a loop from the host,
//!   so etcd writes and the Lease renewals compete;
//! - a Lease watcher that reads the Lease every [`WATCH_EVERY`] and records each renewal
//!   (its `renewTime`, the holder's clock) and each change of holder or tenure.
//!
//! It passes only with 0 unplanned hand-overs (the holder and its tenure unchanged from
//! start to end, the same VM active), the writer clean (nothing lost, no I/O error) and
//! every churn call answered. It also prints how close the renewals came to the renew
//! deadline: the longest gap between two renewals against `2/3` of the Lease.

use crate::Error;
use crate::breakdown::{parse_stamp, plain};
use crate::cluster::{HanfsCluster, LONG, first_word, hanfsctl_outcome, lease_ms};
use crate::writer::{Trial, Writer, run_trial};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How often the watcher reads the Lease: under a sixth of the shortest Lease allowed
/// (1.5 s), so most renewals are seen one by one.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// The Lease object the agents hold (`cluster::agent_config`).
const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases/hanfs-export";
const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";
/// Concurrent API load loops, and the pause each takes between requests.
const API_LOOPS: usize = 2;
const API_PAUSE: Duration = Duration::from_millis(20);
/// One API request may not take longer than this.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// One churn call may not take longer than this (the controller's own budget for calls
/// without a deadline is 120 s).
const CALL_LIMIT: Duration = Duration::from_secs(150);
/// Bounds on every loop, whatever the timing.
const MAX_CHURN_ROUNDS: usize = 20_000;
const MAX_API_ROUNDS: usize = 200_000;
/// After the writer starts, before the soak counts (the "fault" of the trial is a no-op
/// at this point; the writer's stall is then the longest gap of the whole soak).
const WARM_UP: Duration = Duration::from_secs(5);

/// What the watcher saw.
#[derive(Debug, Default)]
struct LeaseWatch {
    reads: usize,
    read_failures: usize,
    /// (holder, tenure) in the order seen, starting with the first reading.
    tenures: Vec<(String, String)>,
    /// Distinct renewTimes seen, unix seconds on the holder's clock.
    renewals: Vec<f64>,
}

impl LeaseWatch {
    fn observe(&mut self, lease: &serde_json::Value) -> Result<(), Error> {
        let spec = &lease["spec"];
        let holder = spec["holderIdentity"].as_str().unwrap_or("").to_owned();
        let tenure = lease["metadata"]["annotations"]["hanfs.io/tenure"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if self.tenures.last() != Some(&(holder.clone(), tenure.clone())) {
            self.tenures.push((holder, tenure));
        }
        let renewed = spec["renewTime"]
            .as_str()
            .ok_or_else(|| format!("the Lease has no renewTime: {lease}"))?;
        let at = parse_stamp(renewed)
            .ok_or_else(|| format!("the Lease's renewTime {renewed:?} is unreadable"))?;
        if self.renewals.last() != Some(&at) {
            self.renewals.push(at);
        }
        Ok(())
    }

    /// Gaps between consecutive renewals seen (s), sorted.
    fn gaps(&self) -> Vec<f64> {
        let mut gaps: Vec<f64> = self.renewals.windows(2).map(|w| w[1] - w[0]).collect();
        gaps.sort_by(f64::total_cmp);
        gaps
    }
}

/// Latencies and failures of one kind of call.
#[derive(Debug, Default)]
struct Calls {
    took: Vec<Duration>,
    failures: Vec<String>,
}

impl Calls {
    fn record(&mut self, started: Instant, result: Result<(), String>) {
        self.took.push(started.elapsed());
        if let Err(e) = result {
            self.failures.push(e);
        }
    }

    fn describe(&self, what: &str) -> String {
        let mut took = self.took.clone();
        took.sort();
        let pct = |p: f64| -> f64 {
            took.get(((took.len() as f64 - 1.0) * p).round() as usize)
                .map_or(f64::NAN, Duration::as_secs_f64)
        };
        format!(
            "{what}: {} calls, {} failed, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            took.len(),
            self.failures.len(),
            pct(0.5) * 1e3,
            pct(0.99) * 1e3,
            took.last().map_or(f64::NAN, Duration::as_secs_f64) * 1e3
        )
    }
}

/// Ok if the API server answered `want`; else what it said.
fn ok(answer: Result<(u16, String), impl std::fmt::Display>, want: u16) -> Result<(), String> {
    match answer {
        Ok((code, _)) if code == want => Ok(()),
        Ok((code, body)) => Err(format!("HTTP {code}: {}", body.trim())),
        Err(e) => Err(e.to_string()),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Errors are Strings: they cross the scoped thread's join.
fn watch_lease(hc: &HanfsCluster, stop: &AtomicBool) -> Result<LeaseWatch, String> {
    let api = hc.api().map_err(|e| e.to_string())?;
    let mut watch = LeaseWatch::default();
    let mut last_error = String::new();
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        watch.reads += 1;
        match api.curl("GET", LEASE_PATH, None) {
            Ok((200, body)) => {
                let lease = serde_json::from_str(&body).map_err(|e| format!("the Lease: {e}"))?;
                watch.observe(&lease).map_err(|e| e.to_string())?
            }
            Ok((code, body)) => {
                watch.read_failures += 1;
                last_error = format!("HTTP {code}: {body}");
            }
            Err(e) => {
                watch.read_failures += 1;
                last_error = e.to_string();
            }
        }
        thread::sleep(WATCH_EVERY.saturating_sub(started.elapsed()));
    }
    // Every reading failing is an unreadable soak, never "no hand-over seen".
    if watch.tenures.is_empty() {
        return Err(format!(
            "the Lease was never read ({} tries): {last_error}",
            watch.reads
        ));
    }
    Ok(watch)
}

/// ConfigMaps created (4 KiB of data each), listed and deleted, until `stop`.
fn api_load(hc: &HanfsCluster, index: usize, stop: &AtomicBool) -> Result<Calls, String> {
    let api = hc.api().map_err(|e| e.to_string())?;
    let mut calls = Calls::default();
    let data = "x".repeat(4096);
    for round in 0..MAX_API_ROUNDS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let name = format!("soak-{index}-{round}");
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": name }, "data": { "filler": data }
        })
        .to_string();
        let list = format!("{CONFIGMAPS}?limit=100");
        let one = format!("{CONFIGMAPS}/{name}");
        for (method, path, body, status) in [
            ("POST", CONFIGMAPS, Some(body.as_str()), 201),
            ("GET", list.as_str(), None, 200),
            ("DELETE", one.as_str(), None, 200),
        ] {
            let started = Instant::now();
            let reply = api.curl_in(api.core_ns(), method, path, body, API_TIMEOUT);
            calls.record(started, ok(reply, status));
        }
        thread::sleep(API_PAUSE);
    }
    Ok(calls)
}

/// Volumes and snapshots made and removed through the controller, until `stop`.
fn churn(hc: &HanfsCluster, stop: &AtomicBool) -> Calls {
    let mut calls = Calls::default();
    let ctl = |calls: &mut Calls, args: &[&str]| -> Option<String> {
        let started = Instant::now();
        let out = hanfsctl_outcome(&hc.hanfsctl_command(args), CALL_LIMIT);
        let result = out
            .as_ref()
            .map(|_| ())
            .map_err(|e| format!("{}: {}", args.join(" "), e.trim()));
        calls.record(started, result);
        out.ok()
    };
    for round in 0..MAX_CHURN_ROUNDS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let volume = format!("soak-{round}");
        let Some(made) = ctl(&mut calls, &["volume", "create", &volume, "--size", "8Mi"]) else {
            continue;
        };
        let Ok(id) = first_word(&made) else {
            calls
                .failures
                .push(format!("volume create {volume}: no id in {made:?}"));
            continue;
        };
        let snapshot = format!("soak-snap-{round}");
        if ctl(
            &mut calls,
            &["snapshot", "create", &snapshot, "--volume", &id],
        )
        .is_some()
        {
            ctl(
                &mut calls,
                &["snapshot", "delete", &format!("s1/e2e/{snapshot}")],
            );
        }
        ctl(&mut calls, &["volume", "delete", &id]);
    }
    calls
}

/// Warnings and errors in an agent's log (tracing's level field), counted, with the
/// first few distinct messages.
fn agent_warnings(
    hc: &HanfsCluster,
    vm: &str,
    since_line: usize,
) -> Result<(usize, Vec<String>), Error> {
    let log = std::fs::read_to_string(hc.vm(vm).share_dir().join("agent.log"))?;
    let mut count = 0;
    let mut distinct: Vec<String> = Vec::new();
    for line in log.lines().skip(since_line) {
        let line = plain(line);
        if line.contains(" WARN ") || line.contains(" ERROR ") {
            count += 1;
            let message = line
                .split_once(": ")
                .map_or(line.as_str(), |(_, m)| m)
                .to_owned();
            if distinct.len() < 3 && !distinct.contains(&message) {
                distinct.push(message);
            }
        }
    }
    Ok((count, distinct))
}

fn log_lines(hc: &HanfsCluster, vm: &str) -> Result<usize, Error> {
    Ok(
        std::fs::read_to_string(hc.vm(vm).share_dir().join("agent.log"))?
            .lines()
            .count(),
    )
}

/// The soak's result: whether it passed, and its report lines.
pub struct Soak {
    pub passed: bool,
    pub lines: Vec<String>,
}

/// Runs the soak for `length` with the writer on `target` (a published volume's path in
/// the client VM).
pub fn run(hc: &HanfsCluster, target: &str, length: Duration) -> Result<Soak, Error> {
    let (active, _) = hc.wait_active(None, LONG)?;
    let log_start: Vec<(String, usize)> = crate::cluster::STORAGE
        .iter()
        .map(|vm| Ok(((*vm).to_owned(), log_lines(hc, vm)?)))
        .collect::<Result<_, Error>>()?;
    let lease = lease_ms()?;
    hc.clock.log(&format!(
        "soak: {} min, Lease {lease} ms, {active} active",
        length.as_secs() / 60
    ));
    let stop = AtomicBool::new(false);
    let writer = Writer {
        lock: true,
        seconds: u32::try_from(length.as_secs())?,
        fault_after: WARM_UP,
    };
    let failures = Mutex::new(Vec::<String>::new());
    let (trial, watch, churned, api_calls) = thread::scope(|scope| {
        let watcher = scope.spawn(|| watch_lease(hc, &stop));
        let churner = scope.spawn(|| churn(hc, &stop));
        let loaders: Vec<_> = (0..API_LOOPS)
            .map(|i| {
                let stop = &stop;
                scope.spawn(move || api_load(hc, i, stop))
            })
            .collect();
        // The trial's "fault" is nothing: the writer's longest gap after WARM_UP is then
        // the longest stall of the whole soak.
        let trial = run_trial(
            &hc.clock,
            hc.client(),
            "hanfs",
            "soak",
            target,
            writer,
            || {
                hc.clock.log("soak: counting");
                Ok(())
            },
        );
        stop.store(true, Ordering::SeqCst);
        let joined = |what: &str| {
            if let Ok(mut f) = failures.lock() {
                f.push(format!("the {what} thread panicked"));
            }
        };
        let watch = watcher.join().unwrap_or_else(|_| {
            joined("Lease watcher");
            Err("no Lease watch".to_owned())
        });
        let churned = churner.join().unwrap_or_else(|_| {
            joined("churn");
            Calls::default()
        });
        let mut api_calls = Calls::default();
        for loader in loaders {
            match loader.join() {
                Ok(Ok(c)) => {
                    api_calls.took.extend(c.took);
                    api_calls.failures.extend(c.failures);
                }
                Ok(Err(e)) => api_calls.failures.push(e),
                Err(_) => joined("API load"),
            }
        }
        (trial, watch, churned, api_calls)
    });
    let watch = watch.map_err(|e| format!("soak: {e}"))?;
    let mut broken = failures
        .into_inner()
        .map_err(|_| "soak failures poisoned")?;
    // A writer that did not finish (its server gone, say) is one failure among the
    // figures: the Lease watch still says what happened to the Lease meanwhile.
    let trial: Option<Trial> = trial.map_err(|e| broken.push(format!("writer: {e}"))).ok();

    let handovers = watch.tenures.len() - 1;
    if handovers > 0 {
        broken.push(format!(
            "{handovers} unplanned hand-over(s): the Lease went {:?}",
            watch.tenures
        ));
    }
    let now_active = hc.active(None);
    if now_active.as_deref() != Some(active.as_str()) {
        broken.push(format!(
            "{active} was active at the start, {now_active:?} at the end"
        ));
    }
    if let Some(trial) = trial.as_ref().filter(|t| !t.clean()) {
        broken.push(format!(
            "writer: {} lost, {} I/O errors, {} locks lost, {} stale{}",
            trial.lost,
            trial.io_errors,
            trial.locks_lost,
            trial.stale_handles,
            if trial.broken.is_empty() {
                String::new()
            } else {
                format!("; {}", trial.broken.join("; "))
            }
        ));
    }
    if let Some(first) = churned.failures.first() {
        broken.push(format!(
            "{} churn call(s) failed, the first: {first}",
            churned.failures.len()
        ));
    }
    if churned.took.is_empty() {
        broken.push("no churn call ran".into());
    }
    let gaps = watch.gaps();
    if gaps.is_empty() {
        broken.push(format!(
            "fewer than two renewals seen in {} readings",
            watch.reads
        ));
    }
    let renew_deadline_s = lease as f64 * 2.0 / 3.0 / 1e3;
    let mut lines = vec![format!(
        "Lease soak ({} min, Lease {lease} ms, writer + volume churn + API load): {} unplanned hand-overs; \
         {} renewals seen, gap between renewals p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (renew every {} ms, \
         stop serving at {:.0} ms); {} Lease readings, {} failed",
        length.as_secs() / 60,
        handovers,
        watch.renewals.len(),
        percentile(&gaps, 0.5) * 1e3,
        percentile(&gaps, 0.99) * 1e3,
        gaps.last().copied().unwrap_or(f64::NAN) * 1e3,
        lease / 6,
        renew_deadline_s * 1e3,
        watch.reads,
        watch.read_failures
    )];
    if let Some(trial) = &trial {
        lines.push(format!(
            "soak writer: {} records acknowledged, {} lost, {} I/O errors, {} locks lost, longest stall {:.2} s",
            trial.acked, trial.lost, trial.io_errors, trial.locks_lost, trial.stall_s
        ));
    }
    lines.push(format!("soak {}", churned.describe("volume churn")));
    lines.push(format!("soak {}", api_calls.describe("API load")));
    if let Some(first) = api_calls.failures.first() {
        lines.push(format!("soak API load: first failure: {first}"));
    }
    for (vm, since) in &log_start {
        let (count, distinct) = agent_warnings(hc, vm, *since)?;
        lines.push(format!(
            "soak agent log of {vm}: {count} warnings/errors{}",
            if distinct.is_empty() {
                String::new()
            } else {
                format!(" ({})", distinct.join(" | "))
            }
        ));
    }
    let passed = broken.is_empty();
    lines.extend(broken.iter().map(|b| format!("soak FAILED: {b}")));
    Ok(Soak { passed, lines })
}

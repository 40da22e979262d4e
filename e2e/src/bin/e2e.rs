//! `hanfs-e2e`: hanfs on the VM cluster, end to end (see the crate docs).
//!
//!   hanfs-e2e ci       boot, csi-sanity over NFS, per-volume checks, one hard kill,
//!                      one switchover (what the README's test command runs)
//!   hanfs-e2e matrix   all of that, then every failover scenario (hard kill 5×,
//!                      each other scenario with and without a lock, switchover 5×) and
//!                      the stock setup's hard kill for comparison
//!   hanfs-e2e stock    only the stock setup's hard kills (with and without a lock)
//!   hanfs-e2e acl      only the per-volume export ACL scenario (also part of ci/matrix)
//!   hanfs-e2e soak [--minutes N]  only the Lease soak (see `e2e::soak`): writer, volume
//!                      churn and API load for N minutes (default 30), counting unplanned
//!                      hand-overs; `HANFS_E2E_LEASE_MS` sets the Lease it soaks
//!   hanfs-e2e volume-calls  only CSI creates/deletes/snapshots in a loop through a hard
//!                      kill (also part of the matrix; `--skip-volume-calls` there)
//!   hanfs-e2e bench [--peer-nfsplugin PATH] [--out DIR] [--data-path-only] [hanfs-bench options]
//!                      hanfs-bench in the client VM: hanfs beside csi-driver-nfs on the
//!                      HA export (see `e2e::vm_bench`); tables on stdout, files in DIR
//!
//! Both `ci` and `matrix` end with the Kubernetes part (`kube_pods`): the client VM becomes
//! a kubelet node, the chart is `helm install`ed, a pod writes records that a second pod
//! reads back; in the matrix the `pod-*` scenarios then fail the storage over under a
//! writing pod.
//!
//! Options: `--only a,b` runs only those scenarios (matrix; `pod-hard-kill` etc. included),
//! `--skip-sanity`, `--skip-stock`, `--skip-pods`, `--hard-kills N`, `--switchovers N`,
//! `--stock-trials N` (the stock setup's hard kills; default: as many as `--hard-kills`),
//! `--pod-trials N` (each `pod-` scenario; default 5), `--soak-minutes N` (the Lease soak
//! before the trials). `HANFS_E2E_LEASE_MS` runs the agents with another Lease duration.
//! Prints the tables on stdout and ends with `e2e: N passed, M failed`.
//! Needs root, qemu, Go, release binaries (`cargo build --release --bins`).

use e2e::cluster::{Exports, HanfsCluster};
use e2e::kube_pods::{Artifacts, KubeNode};
use e2e::scenarios::{ALL, Runner, UNDER_POD};
use e2e::writer::Trial;
use e2e::{
    Clock, Error, acl, report, sanity, soak, stock, storage_suite, volume_calls, volume_checks,
    volume_load,
};
use std::path::PathBuf;

struct Plan {
    /// Boot the hanfs installation at all.
    hanfs: bool,
    sanity: bool,
    checks: bool,
    /// The export ACL scenario ([`acl`]).
    acl: bool,
    /// Volume calls through a hard kill ([`volume_calls`]).
    volume_calls: bool,
    /// Volumes by concurrent clients over NFS ([`volume_load`]).
    volume_load: bool,
    /// (scenario, lock) in order.
    trials: Vec<(String, bool)>,
    /// Start the kubelet node and install the chart (pod write/read check).
    pods: bool,
    /// (`pod-` scenario, lock) in order, after the pod write/read check.
    pod_trials: Vec<(String, bool)>,
    /// Locks of the stock setup's hard-kill trials (empty: no stock run).
    stock: Vec<bool>,
    /// The Lease soak ([`soak`]) for this many minutes, before the failover trials.
    soak_minutes: Option<u64>,
    /// Run Kubernetes' storage e2e suite on the kubelet node (focus: run.sh's default
    /// unless given), bounded by the minutes given.
    storage_e2e: Option<(Option<String>, u64)>,
}

fn plan(args: &[String]) -> Result<Plan, Error> {
    let mode = args.first().map(String::as_str).unwrap_or("");
    let flag = |name: &str| args.iter().any(|a| a == name);
    let value = |name: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let number = |name: &str, default: usize| -> Result<usize, Error> {
        value(name).map_or(Ok(default), |v| {
            v.parse().map_err(|e| format!("{name} {v:?}: {e}").into())
        })
    };
    let mut trials = Vec::new();
    let mut pod_trials = Vec::new();
    let mut stock = Vec::new();
    let mut hanfs = true;
    let mut storage_e2e = None;
    let mut quick = false;
    let mut acl_only = false;
    let mut volume_calls = false;
    let mut volume_load = false;
    let mut soak_minutes = value("--soak-minutes")
        .map(|v| {
            v.parse::<u64>()
                .map_err(|e| format!("--soak-minutes {v:?}: {e}"))
        })
        .transpose()?;
    match mode {
        "soak" => {
            // The soak alone: the cluster, a published volume, nothing else.
            quick = true;
            acl_only = true;
            soak_minutes = Some(number("--minutes", 30)? as u64);
        }
        "volume-calls" => {
            quick = true;
            acl_only = true;
            volume_calls = true;
        }
        "volume-load" => {
            quick = true;
            acl_only = true;
            volume_load = true;
        }
        "acl" => {
            quick = true;
            acl_only = true;
        }
        "storage-e2e" => {
            // Only what the suite needs: the cluster, the kubelet node and the chart.
            quick = true;
            let minutes = number("--minutes", 240)? as u64;
            storage_e2e = Some((value("--focus").map(str::to_owned), minutes));
        }
        "stock" => {
            hanfs = false;
            stock = vec![true, false];
        }
        "ci" => {
            trials.push(("hard-kill".to_owned(), true));
            trials.push(("switchover".to_owned(), false));
            // The pod-level failovers (pod-hard-kill, pod-switchover) run in the matrix: a
            // pod start costs 1-2 min under TCG, too much for the CI budget.
        }
        "matrix" => {
            let pod_names: Vec<String> = UNDER_POD.iter().map(|n| format!("pod-{n}")).collect();
            let mut every: Vec<&str> = ALL.to_vec();
            every.extend(pod_names.iter().map(String::as_str));
            let only: Vec<&str> = value("--only").map_or(every.clone(), |v| v.split(',').collect());
            for name in &only {
                if !every.contains(name) {
                    return Err(format!("unknown scenario {name:?}; known: {every:?}").into());
                }
            }
            let pod_count = number("--pod-trials", 5)?;
            for name in pod_names.iter().filter(|n| only.contains(&n.as_str())) {
                let count = pod_count;
                pod_trials.extend((0..count).map(|i| (name.clone(), i % 2 == 0)));
            }
            for name in ALL.iter().filter(|n| only.contains(n)) {
                let count = match *name {
                    "hard-kill" => number("--hard-kills", 5)?,
                    "switchover" => number("--switchovers", 5)?,
                    "cold-restart" => 1,
                    _ => 2,
                };
                // Alternate: with a lock first, then without.
                trials.extend((0..count).map(|i| (name.to_string(), i % 2 == 0)));
            }
            if !flag("--skip-stock") && only.contains(&"hard-kill") {
                // As many as hanfs's hard kills by default, so both rows have a median.
                let count = number("--stock-trials", number("--hard-kills", 5)?)?;
                stock = (0..count).map(|i| i % 2 == 0).collect();
            }
        }
        _ => return Err("usage: hanfs-e2e ci|matrix|stock|acl|volume-calls|volume-load|bench [--skip-acl] [--skip-volume-calls] [--skip-volume-load] [--only a,b] [--skip-sanity] [--skip-stock] [--skip-pods] [--hard-kills N] [--switchovers N] [--stock-trials N] [--pod-trials N] [--soak-minutes N] | soak [--minutes N] | storage-e2e [--focus REGEX] [--minutes N]".into()),
    }
    let pods = hanfs && !acl_only && (storage_e2e.is_some() || !flag("--skip-pods"));
    if !pods {
        pod_trials.clear();
    }
    Ok(Plan {
        hanfs,
        sanity: !quick && !flag("--skip-sanity"),
        checks: !quick && !flag("--skip-checks"),
        acl: (acl_only && !volume_calls && !volume_load && mode != "soak")
            || (!quick && !flag("--skip-acl")),
        volume_calls: volume_calls || (mode == "matrix" && !flag("--skip-volume-calls")),
        volume_load: volume_load || (mode == "matrix" && !flag("--skip-volume-load")),
        trials,
        pods,
        pod_trials,
        stock,
        soak_minutes,
        storage_e2e,
    })
}

#[derive(Default)]
struct Outcome {
    passed: usize,
    failed: usize,
    trials: Vec<Trial>,
    lines: Vec<String>,
}

fn run_hanfs(clock: Clock, plan: &Plan, outcome: &mut Outcome) -> Result<(), Error> {
    // The kubelet node's parts are built before the VMs boot (its data disk among them).
    let artifacts = if plan.pods {
        let (repo, bins) = e2e::cluster::repo_and_bins()?;
        let test_images = if plan.storage_e2e.is_some() {
            storage_suite::test_images(&repo)?
        } else {
            Vec::new()
        };
        Some(Artifacts::build(clock, &repo, &bins, &test_images)?)
    } else {
        None
    };
    let hc = HanfsCluster::start_with(
        clock,
        artifacts.as_ref().map(|a| a.client_disk.as_path()),
        if plan.storage_e2e.is_some() {
            Exports::STORAGE_SUITE
        } else {
            Exports::DEFAULT
        },
    )?;
    let result = run_on(&hc, plan, artifacts.as_ref(), outcome);
    if result.is_err() {
        hc.dump_logs();
    }
    hc.destroy()?;
    result
}

fn run_on(
    hc: &HanfsCluster,
    plan: &Plan,
    artifacts: Option<&Artifacts>,
    outcome: &mut Outcome,
) -> Result<(), Error> {
    if plan.sanity {
        let result = sanity::run(hc)?;
        outcome.lines.push(format!(
            "csi-sanity over NFS: {} passed, {} failed, {} skipped by csi-sanity, {} pending, in {:.0} s",
            result.passed, result.failed, result.skipped, result.pending, result.seconds
        ));
        outcome.lines.extend(result.skip_reasons.iter().cloned());
        outcome.lines.extend(
            result
                .checks
                .iter()
                .map(|c| format!("after csi-sanity: {c}")),
        );
        outcome.passed += result.passed;
        outcome.failed += result.failed;
        hc.clock.log("csi-sanity over NFS passed");
    }
    if plan.checks {
        for check in volume_checks::run(hc)? {
            outcome.lines.push(format!(
                "volume check: {}: {} ({})",
                check.name,
                if check.ok { "ok" } else { "FAILED" },
                check.detail
            ));
            if check.ok {
                outcome.passed += 1;
            } else {
                outcome.failed += 1;
            }
        }
        hc.clock.log("volume checks done");
    }
    if plan.acl {
        match acl::run(hc) {
            Ok(notes) => {
                outcome
                    .lines
                    .push(format!("export ACLs: ok ({})", notes.join("; ")));
                outcome.passed += 1;
            }
            Err(e) => {
                outcome.lines.push(format!("export ACLs: FAILED: {e}"));
                outcome.failed += 1;
            }
        }
        hc.clock.log("export ACL scenario done");
    }
    if plan.volume_calls {
        match volume_calls::run(hc) {
            Ok(notes) => {
                outcome.lines.push(format!(
                    "volume calls across a hard kill: ok ({})",
                    notes.join("; ")
                ));
                outcome.passed += 1;
            }
            Err(e) => {
                outcome
                    .lines
                    .push(format!("volume calls across a hard kill: FAILED: {e}"));
                outcome.failed += 1;
            }
        }
        hc.clock.log("volume calls scenario done");
    }
    if plan.volume_load {
        match volume_load::run(hc) {
            Ok(notes) => {
                outcome
                    .lines
                    .push(format!("volume load over NFS: ok ({})", notes.join("; ")));
                outcome.passed += 1;
            }
            Err(e) => {
                outcome
                    .lines
                    .push(format!("volume load over NFS: FAILED: {e}"));
                outcome.failed += 1;
            }
        }
        hc.clock.log("volume load scenario done");
    }
    let (_, target) = hc.published_volume("writer", "128Mi")?;
    if let Some(minutes) = plan.soak_minutes {
        let result = soak::run(hc, &target, std::time::Duration::from_secs(minutes * 60))?;
        for line in &result.lines {
            hc.clock.log(line);
        }
        outcome.lines.extend(result.lines);
        if result.passed {
            outcome.passed += 1;
        } else {
            outcome.failed += 1;
        }
    }
    let mut runner = Runner::new(hc, target.clone());
    run_trials(hc, &mut runner, &plan.trials, outcome)?;
    let Some(artifacts) = artifacts else {
        return Ok(());
    };
    let node = KubeNode::start(hc, artifacts)?;
    match node.write_then_read() {
        Ok(line) => {
            outcome.lines.push(line);
            outcome.passed += 1;
        }
        Err(e) => {
            node.dump_chart_logs();
            outcome.lines.push(format!("pod write/read FAILED: {e}"));
            outcome.failed += 1;
        }
    }
    if let Some((focus, minutes)) = &plan.storage_e2e {
        let suite = storage_suite::run(
            hc,
            hc.api()?,
            focus.as_deref(),
            std::time::Duration::from_secs(minutes * 60),
        )?;
        outcome.lines.push(format!(
            "Kubernetes storage e2e suite: {} passed, {} failed, {} skipped in {:.0} s (report {})",
            suite.passed,
            suite.failed,
            suite.skipped,
            suite.seconds,
            suite.report_dir.display()
        ));
        outcome
            .lines
            .extend(suite.summary.lines().map(str::to_owned));
        outcome.passed += suite.passed;
        outcome.failed += suite.failed;
    }
    let mut runner = Runner::new(hc, target).with_pods(&node);
    run_trials(hc, &mut runner, &plan.pod_trials, outcome)
}

fn run_trials(
    hc: &HanfsCluster,
    runner: &mut Runner,
    trials: &[(String, bool)],
    outcome: &mut Outcome,
) -> Result<(), Error> {
    for (name, lock) in trials {
        let trial = runner.run(name, *lock)?;
        hc.clock.log(&format!(
            "{name} (lock {lock}): stall {:.2} s, {} acked, {} lost, {} I/O errors, {} locks lost, {} split-brain, {} stale; {}",
            trial.stall_s, trial.acked, trial.lost, trial.io_errors, trial.locks_lost,
            trial.split_brain, trial.stale_handles, trial.notes.join("; ")
        ));
        if trial.clean() {
            outcome.passed += 1;
        } else {
            outcome.failed += 1;
        }
        outcome.trials.push(trial);
    }
    Ok(())
}

/// `hanfs-e2e bench`: its own cluster and its own output (the bench's tables).
fn bench(args: &[String]) -> ! {
    let mut opts = e2e::vm_bench::Options {
        peer_nfsplugin: None,
        bench_args: Vec::new(),
        out: PathBuf::from("bench/out/vm"),
        data_path_only: false,
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = |name: &str| match rest.next() {
            Some(v) => v.clone(),
            None => {
                eprintln!("hanfs-e2e bench: {name} needs a value");
                std::process::exit(2);
            }
        };
        match arg.as_str() {
            "--peer-nfsplugin" => opts.peer_nfsplugin = Some(PathBuf::from(value(arg))),
            "--out" => opts.out = PathBuf::from(value(arg)),
            "--data-path-only" => opts.data_path_only = true,
            _ => opts.bench_args.push(arg.clone()),
        }
    }
    let clock = Clock::start();
    match e2e::vm_bench::run(clock, &opts) {
        Ok(tables) => {
            println!("== bench in the VM cluster ({:.0} s)", clock.elapsed_s());
            println!("{tables}");
            println!("files: {}", opts.out.display());
            std::process::exit(0);
        }
        Err(e) => {
            println!("ERROR: bench: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("bench") {
        bench(&args[1..]);
    }
    let plan = match plan(&args) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("hanfs-e2e: {e}");
            std::process::exit(2);
        }
    };
    let clock = Clock::start();
    let mut outcome = Outcome::default();
    let mut errors = Vec::new();
    if plan.hanfs
        && let Err(e) = run_hanfs(clock, &plan, &mut outcome)
    {
        errors.push(format!("hanfs: {e}"));
    }
    if !plan.stock.is_empty() {
        // Its own cluster, after the hanfs one is gone (never two VM clusters at once).
        match stock::hard_kill(clock, &plan.stock) {
            Ok(trials) => outcome.trials.extend(trials),
            Err(e) => errors.push(format!("stock setup: {e}")),
        }
    }
    println!("== e2e results ({:.0} s)", clock.elapsed_s());
    for line in &outcome.lines {
        println!("{line}");
    }
    if !outcome.trials.is_empty() {
        println!();
        println!("{}", report::trials_table(&outcome.trials));
        println!("{}", report::summary_table(&outcome.trials));
    }
    for e in &errors {
        println!("ERROR: {e}");
    }
    let failed = outcome.failed + errors.len();
    println!("e2e: {} passed, {failed} failed", outcome.passed);
    if failed > 0 {
        std::process::exit(1);
    }
}

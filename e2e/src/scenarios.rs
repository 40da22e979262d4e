//! The failover scenarios of the matrix. Each injects one fault while the client's
//! writer runs on a published volume, lets the agents act, measures (see
//! [`crate::writer`]), then brings the cluster back to two connected, UpToDate nodes
//! for the next scenario. Extra expectations of a scenario (the peer refusing to
//! promote while outdated, the up-to-date node winning a cold start) are checked here
//! and reported in the row's notes; a broken expectation fails the trial.

use crate::Error;
use crate::breakdown;
use crate::cluster::{
    HanfsCluster, LONG, RESYNC_LIMIT, SHORT, STORAGE, STORAGE_IPS, SplitBrainCounter,
    fail_data_disk,
};
use crate::health_probe::{self, StorageHealthProbe};
use crate::kube_pods::KubeNode;
use crate::writer::{Trial, Writer, run_trial};
use std::time::Duration;

/// The agents' nfsd grace period (`nfsd.grace_secs` in the agent config) plus a margin.
const GRACE: Duration = Duration::from_secs(11);

/// The scenarios, by the names the command line takes.
pub const ALL: &[&str] = &[
    "hard-kill",
    "nfsd-killed",
    "fs-broken",
    "disk-failed",
    "link-cut",
    "api-cut",
    "switchover",
    "cold-restart",
];

/// The longest client stall a failover trial may show and still pass: generous (the
/// matrix's failovers stall 2–13 s here, TCG on 2 cores), so a failover that takes a
/// minute fails the trial instead of becoming a number in a table. A cold restart of
/// both servers is an outage, not a failover: its stall is mostly two VM boots.
pub fn stall_limit(scenario: &str) -> Duration {
    match scenario {
        "cold-restart" => Duration::from_secs(240),
        _ => Duration::from_secs(30),
    }
}

/// Fails `trial` if its stall is over the scenario's [`stall_limit`].
fn enforce_stall_limit(trial: &mut Trial, scenario: &str) {
    let limit = stall_limit(scenario);
    // NaN (no measurable stall) is not within any limit.
    let within = trial.stall_s.is_finite() && trial.stall_s <= limit.as_secs_f64();
    if !within {
        trial.broken.push(format!(
            "stall {:.2} s over the {} s limit of a {scenario} trial",
            trial.stall_s,
            limit.as_secs()
        ));
    }
}

/// The scenarios that also run under a pod (`pod-<name>`: the writer is a workload pod on
/// the client VM's kubelet, its volume provisioned and mounted by the chart's pods).
pub const UNDER_POD: &[&str] = &["hard-kill", "switchover"];

pub struct Runner<'a> {
    pub hc: &'a HanfsCluster,
    /// The published volume the writer writes into (a path in the client VM).
    pub target: String,
    split_brain: SplitBrainCounter,
    /// The kubelet node, once `pod-*` scenarios are to run.
    pods: Option<&'a KubeNode<'a>>,
    /// Whether the scenario running now writes from a pod.
    under_pod: bool,
}

fn peer_of(name: &str) -> &'static str {
    if name == STORAGE[0] {
        STORAGE[1]
    } else {
        STORAGE[0]
    }
}

fn ip_of(name: &str) -> &'static str {
    if name == STORAGE[0] {
        STORAGE_IPS[0]
    } else {
        STORAGE_IPS[1]
    }
}

impl<'a> Runner<'a> {
    pub fn new(hc: &'a HanfsCluster, target: String) -> Self {
        Runner {
            hc,
            target,
            split_brain: SplitBrainCounter::default(),
            pods: None,
            under_pod: false,
        }
    }

    /// Lets `pod-*` scenarios run, with their writer in a pod on this node.
    pub fn with_pods(mut self, pods: &'a KubeNode<'a>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// Runs scenario `name` once, with or without the writer holding a lock.
    pub fn run(&mut self, name: &str, lock: bool) -> Result<Trial, Error> {
        self.under_pod = false;
        if let Some(base) = name.strip_prefix("pod-") {
            if !UNDER_POD.contains(&base) {
                return Err(
                    format!("scenario {base:?} does not run under a pod ({UNDER_POD:?})").into(),
                );
            }
            if self.pods.is_none() {
                return Err(format!("{name}: no kubelet node was started").into());
            }
            self.under_pod = true;
            let result = self.run_base(base, lock);
            self.under_pod = false;
            let mut trial = result?;
            enforce_stall_limit(&mut trial, base);
            return Ok(trial);
        }
        let mut trial = self.run_base(name, lock)?;
        enforce_stall_limit(&mut trial, name);
        Ok(trial)
    }

    fn run_base(&mut self, name: &str, lock: bool) -> Result<Trial, Error> {
        let (active, _) = self.hc.wait_active(None, LONG)?;
        // A trial needs a peer that can take over: a node still resyncing (restarted by
        // an earlier step) is Inconsistent, cannot be promoted, and the trial would wait
        // for a takeover that cannot come (a CI run lost a hard kill this way).
        self.hc.wait_in_sync(&active, RESYNC_LIMIT)?;
        // After a takeover nfsd is in its grace period (10 s) and holds back new opens
        // and locks; the writer must be writing when the fault comes.
        std::thread::sleep(GRACE);
        let writer = |seconds| Writer {
            lock,
            seconds,
            fault_after: Duration::from_secs(8),
        };
        let mut trial = match name {
            "hard-kill" => self.hard_kill(&active, writer(40))?,
            "nfsd-killed" => self.trial(name, writer(40), || {
                // Every nfsd thread stops, as when nfsd is killed; the export and VIP stay.
                self.hc.vm(&active).run("rpc.nfsd 0", SHORT)?;
                Ok(())
            })?,
            "fs-broken" => self.trial(name, writer(40), || {
                // XFS forced shutdown: every I/O on the filesystem fails from now on.
                self.hc
                    .vm(&active)
                    .run("xfs_io -x -c shutdown /export", SHORT)?;
                Ok(())
            })?,
            "disk-failed" => self.disk_failed(&active, writer(40))?,
            "link-cut" => self.link_cut(&active, writer(30))?,
            "api-cut" => self.api_cut(&active, writer(40))?,
            "switchover" => self.trial(name, writer(25), || {
                self.hc.vm(&active).run("hanfs-backend switchover", SHORT)?;
                Ok(())
            })?,
            "cold-restart" => self.cold_restart(&active, writer(150))?,
            other => return Err(format!("unknown scenario {other:?} (known: {ALL:?})").into()),
        };
        let (now_active, _) = self.hc.wait_active(None, LONG)?;
        trial.notes.push(format!("{active} → {now_active}"));
        if now_active != active {
            trial
                .notes
                .push(self.takeover_breakdown(&now_active, &trial));
        }
        // Back to two connected, UpToDate nodes before the next scenario.
        let standby = peer_of(&now_active);
        if !self.hc.vm(standby).is_running() {
            self.hc.restart_storage(standby)?;
        }
        let resync = self.hc.wait_in_sync(&now_active, RESYNC_LIMIT)?;
        trial
            .notes
            .push(format!("back in sync after {:.0} s", resync.as_secs_f64()));
        trial.split_brain = self.split_brain.new_events(self.hc.vms())?;
        Ok(trial)
    }

    fn trial(
        &self,
        name: &str,
        writer: Writer,
        fault: impl FnOnce() -> Result<(), Error>,
    ) -> Result<Trial, Error> {
        if let (true, Some(pods)) = (self.under_pod, self.pods) {
            return pods.pod_trial(name, writer, fault);
        }
        run_trial(
            &self.hc.clock,
            self.hc.client(),
            "hanfs",
            name,
            &self.target,
            writer,
            fault,
        )
    }

    /// Where the stall went: the new active's takeover marks on the fault's clock
    /// ([`breakdown`]); what could not be read says so instead.
    fn takeover_breakdown(&self, now_active: &str, trial: &Trial) -> String {
        let vm = self.hc.vm(now_active);
        let read = || -> Result<String, Error> {
            let (offset, uncertainty) = breakdown::guest_offset(vm)?;
            let log = std::fs::read_to_string(vm.share_dir().join("agent.log"))?;
            let marks = breakdown::takeover_marks(&log, trial.fault_unix + offset);
            if marks.is_empty() {
                return Err(
                    format!("no takeover in {now_active}'s agent log after the fault").into(),
                );
            }
            Ok(breakdown::describe(&marks, trial.resumed_s, uncertainty))
        };
        read().unwrap_or_else(|e| format!("takeover breakdown unreadable: {e}"))
    }

    fn hard_kill(&self, active: &str, writer: Writer) -> Result<Trial, Error> {
        // The node plugin's NodeGetStorageHealth, watched through the kill (not under a
        // pod: there the node plugin runs in the chart's pod, not at the test's endpoint).
        let probe = (!self.under_pod).then(|| StorageHealthProbe::start(self.hc));
        let result = self
            .trial("hard-kill", writer, || {
                self.hc.vm(active).kill()?;
                Ok(())
            })
            .and_then(|trial| Ok((trial, self.hc.wait_active(Some(active), LONG)?)));
        // Stopped before any error returns, so the thread never outlives the trial.
        let readings = probe.map(StorageHealthProbe::finish).transpose()?;
        let (mut trial, (survivor, _)) = result?;
        trial.notes.push(format!("{survivor} took over"));
        if let Some(readings) = readings {
            match health_probe::judge(&readings) {
                Ok(timeline) => trial.notes.push(timeline),
                Err(broken) => trial.broken.push(format!("NodeGetStorageHealth: {broken}")),
            }
        }
        self.hc.restart_storage(active)?;
        Ok(trial)
    }

    /// The active's disk dies under DRBD (every I/O fails): DRBD detaches it and serves
    /// from the peer's disk, the agent sees a Diskless Primary and hands over to the
    /// node that still has the data. The failed node comes back with a working disk
    /// (a restart) and resyncs.
    fn disk_failed(&self, active: &str, writer: Writer) -> Result<Trial, Error> {
        let mut trial = self.trial("disk-failed", writer, || {
            fail_data_disk(self.hc.vm(active))?;
            Ok(())
        })?;
        let (now, _) = self.hc.wait_active(Some(active), LONG)?;
        trial
            .notes
            .push(format!("{now} took over from the diskless {active}"));
        self.hc.restart_storage(active)?;
        Ok(trial)
    }

    /// The replication link between the storage VMs breaks (a blackhole route on both,
    /// so the VIP, the client and the API server stay reachable). The active must fence
    /// the peer in the Lease before it acknowledges more writes; the peer must refuse to
    /// promote while outdated: a switchover is refused while the link is down.
    fn link_cut(&self, active: &str, writer: Writer) -> Result<Trial, Error> {
        let peer = peer_of(active);
        let mut trial = self.trial("link-cut", writer, || {
            for (vm, other) in [(active, peer), (peer, active)] {
                self.hc.vm(vm).run(
                    &format!("ip route add blackhole {}/32", ip_of(other)),
                    SHORT,
                )?;
            }
            Ok(())
        })?;
        let status = self.hc.status(active)?;
        let fenced = status.contains(&format!("fenced:      {peer} is marked outdated"));
        let refused = self.hc.vm(active).exec("hanfs-backend switchover", SHORT)?;
        let still = self.hc.active(None);
        trial.notes.push(format!(
            "peer fenced in the Lease: {}; switchover while cut: {}; active after: {}",
            if fenced { "yes" } else { "NO" },
            if refused.success() {
                "ACCEPTED"
            } else {
                "refused"
            },
            still.as_deref().unwrap_or("nobody")
        ));
        if !fenced || refused.success() || still.as_deref() != Some(active) {
            trial
                .broken
                .push("the outdated peer was not kept from serving".into());
        }
        for (vm, other) in [(active, peer), (peer, active)] {
            self.hc.vm(vm).run(
                &format!("ip route del blackhole {}/32", ip_of(other)),
                SHORT,
            )?;
        }
        Ok(trial)
    }

    /// The active loses the API server only (a blackhole route to it): it must stand
    /// down on its own before its Lease runs out; the peer takes over after.
    fn api_cut(&self, active: &str, writer: Writer) -> Result<Trial, Error> {
        let api = self.hc.vms().bridge_ip();
        let mut trial = self.trial("api-cut", writer, || {
            self.hc
                .vm(active)
                .run(&format!("ip route add blackhole {api}/32"), SHORT)?;
            Ok(())
        })?;
        let (now, _) = self.hc.wait_active(Some(active), LONG)?;
        trial.notes.push(format!("{now} took over"));
        self.hc
            .vm(active)
            .run(&format!("ip route del blackhole {api}/32"), SHORT)?;
        Ok(trial)
    }

    /// Both storage VMs go down, the standby first, so the active goes on alone and
    /// fences it. The outdated one boots first and must not serve; once the up-to-date
    /// one is back it serves again with every acknowledged record.
    fn cold_restart(&self, active: &str, writer: Writer) -> Result<Trial, Error> {
        let standby = peer_of(active);
        let mut outdated_served = None;
        let mut trial = self.trial("cold-restart", writer, || {
            self.hc.vm(standby).kill()?;
            // The active notices, fences the standby and goes on acknowledging writes.
            std::thread::sleep(Duration::from_secs(8));
            self.hc.vm(active).kill()?;
            self.hc.restart_storage(standby)?;
            std::thread::sleep(Duration::from_millis(3 * crate::cluster::lease_ms()?));
            outdated_served = Some(self.hc.active(None));
            self.hc.restart_storage(active)?;
            Ok(())
        })?;
        let (now, _) = self.hc.wait_active(None, LONG)?;
        let early = outdated_served.flatten();
        trial.notes.push(format!(
            "outdated {standby} booted first and {}; {now} serves",
            match &early {
                None => "stayed standby".to_owned(),
                Some(who) => format!("{who} SERVED"),
            }
        ));
        if early.is_some() || now != active {
            trial
                .broken
                .push("the up-to-date node did not win the cold start".into());
        }
        Ok(trial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(stall_s: f64) -> Trial {
        Trial {
            setup: "hanfs",
            scenario: "hard-kill".into(),
            lock: true,
            stall_s,
            resumed_s: stall_s,
            fault_unix: 0.0,
            acked: 10,
            lost: 0,
            io_errors: 0,
            locks_lost: 0,
            split_brain: 0,
            stale_handles: 0,
            notes: Vec::new(),
            broken: Vec::new(),
        }
    }

    #[test]
    fn a_failover_over_the_limit_fails_the_trial() {
        let mut slow = trial(61.0);
        enforce_stall_limit(&mut slow, "hard-kill");
        assert!(!slow.clean(), "{:?}", slow.broken);
        let mut fast = trial(8.0);
        enforce_stall_limit(&mut fast, "hard-kill");
        assert!(fast.clean(), "{:?}", fast.broken);
    }

    #[test]
    fn an_unmeasurable_stall_fails_the_trial() {
        let mut nan = trial(f64::NAN);
        enforce_stall_limit(&mut nan, "switchover");
        assert!(!nan.clean());
    }

    #[test]
    fn a_cold_restart_may_take_two_boots_but_not_forever() {
        let mut boots = trial(53.0);
        enforce_stall_limit(&mut boots, "cold-restart");
        assert!(boots.clean());
        let mut forever = trial(600.0);
        enforce_stall_limit(&mut forever, "cold-restart");
        assert!(!forever.clean());
    }

    #[test]
    fn every_scenario_has_a_limit_of_at_least_its_measured_stalls() {
        for name in ALL {
            assert!(stall_limit(name) >= Duration::from_secs(30), "{name}");
        }
    }
}

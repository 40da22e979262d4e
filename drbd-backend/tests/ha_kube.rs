//! Two HA agents against a real kube-apiserver + etcd: the Lease is real, each agent
//! lives in its own network namespace with a real VIP on its `eth0`, and cutting an
//! agent from the API server takes its link down — nothing about the arbiter is mocked.
//!
//! DRBD and nfsd are absent from this host's kernel, so below the VIP each agent drives
//! [`RecordingDrbdNfsDouble`], a test double that keeps DRBD role, replication link,
//! mount, nfsd and export as in-memory flags (refusing a second Primary while connected,
//! as DRBD does) and records every step. The real DRBD and nfsd run in the VM cluster.
//!
//! Proves: acquisition by exactly one node, renewal, planned hand-over, a partitioned
//! holder standing down before the peer takes over, fencing records that stop a stale
//! node from promoting, and a foreign Lease edited by hand. Prints the timings.

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use drbd_backend::admin::AdminService;
use drbd_backend::drivers::lease::LeaseClient;
use drbd_backend::drivers::vip::{GarpConfig, Vip};
use drbd_backend::ha::agent::{
    Agent, AgentConfig, AgentHandle, Stack, StackObservation, StepError,
};
use drbd_backend::metrics::metrics_text;
use ha_core::{Disk, DrbdView, HaConfig, Ineligible, Phase, Role, StackAction, StackView};
use proto::backend::v1 as pb;
use proto::backend::v1::admin_server::Admin;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::kube::KubeApiServer;
use testkit::netns::Topology;
use testkit::thread_ns::{block_on, block_on_in, spawn_in};

const LEASE_MS: u64 = 3000;
const NAMES: [&str; 2] = ["storage-a", "storage-b"];

/// The shared "hardware" of both doubles: DRBD roles, the replication link, the stacks.
#[derive(Debug, Default)]
struct Pair {
    role: [Option<Role>; 2],
    stack: [StackView; 2],
    link_up: bool,
    steps: Vec<(usize, String)>,
    last_resorts: [u32; 2],
    /// The reason of each last resort, in order (it says how late it came).
    last_resort_reasons: Vec<String>,
    /// An unmount that hangs (a filesystem held open): standing down cannot finish.
    unmount_hangs: bool,
}

/// Test double for DRBD + mount + nfsd (named as such on purpose); the VIP is real.
struct RecordingDrbdNfsDouble {
    side: usize,
    pair: Arc<Mutex<Pair>>,
    vip: Vip,
}

impl Stack for RecordingDrbdNfsDouble {
    async fn observe(&self) -> StackObservation {
        let vip = self.vip.is_present().await.unwrap_or(false);
        let pair = self.pair.lock().unwrap();
        let other = 1 - self.side;
        let connected = pair.link_up && pair.role[other].is_some();
        let mut stack = pair.stack[self.side];
        stack.vip = vip;
        StackObservation {
            drbd: Some(DrbdView {
                role: pair.role[self.side].unwrap_or(Role::Secondary),
                disk: Disk::UpToDate,
                connected,
                peer_role: if connected {
                    pair.role[other].unwrap_or(Role::Unknown)
                } else {
                    Role::Unknown
                },
                peer_disk: if connected {
                    Disk::UpToDate
                } else {
                    Disk::Unknown
                },
                io_frozen: false,
            }),
            stack,
            unhealthy: None,
        }
    }

    async fn run(&self, step: &StackAction) -> Result<(), StepError> {
        let failed = |e: &dyn std::fmt::Display| StepError::Failed(e.to_string());
        let hangs = self.pair.lock().unwrap().unmount_hangs;
        if *step == StackAction::Unmount && hangs {
            // Until the agent's step timeout ends it.
            tokio::time::sleep(Duration::from_secs(60)).await;
            return Err(StepError::Failed("unmount hung".into()));
        }
        match step {
            StackAction::AddVip => {
                self.vip.add().await.map_err(|e| failed(&e))?;
                self.vip
                    .announce(&GarpConfig::once())
                    .await
                    .map_err(|e| failed(&e))?;
            }
            StackAction::RemoveVip => {
                self.vip.remove().await.map_err(|e| failed(&e))?;
            }
            _ => {}
        }
        let mut pair = self.pair.lock().unwrap();
        pair.steps.push((self.side, format!("{step:?}")));
        let (me, other) = (self.side, 1 - self.side);
        let connected = pair.link_up && pair.role[other].is_some();
        let s = &mut pair.stack[me];
        match step {
            StackAction::Promote | StackAction::PromoteForced { .. } => {
                if connected && pair.role[other] == Some(Role::Primary) {
                    return Err(StepError::Refused(
                        "peer is Primary: DRBD refuses a second Primary".into(),
                    ));
                }
                pair.role[me] = Some(Role::Primary);
            }
            StackAction::Demote => pair.role[me] = Some(Role::Secondary),
            StackAction::Mount => s.mounted = true,
            StackAction::Unmount => s.mounted = false,
            StackAction::StartNfsd => s.nfsd = true,
            StackAction::StopNfsd => s.nfsd = false,
            StackAction::Export => s.exported = true,
            StackAction::Unexport => s.exported = false,
            StackAction::AddVip | StackAction::RemoveVip | StackAction::ResumeIo => {}
        }
        Ok(())
    }

    async fn last_resort(&self, reason: &str) {
        let _ = self.vip.remove().await;
        let mut pair = self.pair.lock().unwrap();
        pair.last_resorts[self.side] += 1;
        pair.last_resort_reasons.push(reason.to_owned());
        pair.role[self.side] = Some(Role::Secondary);
        pair.stack[self.side] = StackView::default();
    }
}

async fn kube_client(kubeconfig: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// How long one Lease call may take in these tests (the agent's own bound is a sixth of
/// the Lease, 500 ms here; more room for a loaded test host).
const LEASE_CALL_TIMEOUT: Duration = Duration::from_millis(800);

fn lease_client(client: kube::Client, node: &str, call_timeout: Duration) -> LeaseClient {
    LeaseClient::new(
        client,
        "default",
        "hanfs-export",
        node,
        Duration::from_millis(LEASE_MS),
        call_timeout,
    )
}

struct RunningAgent {
    handle: AgentHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningAgent {
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fields drop in order: agents first, then the API server, then the namespaces.
struct Cluster {
    agents: [Option<RunningAgent>; 2],
    api: KubeApiServer,
    topology: Topology,
    pair: Arc<Mutex<Pair>>,
    vip: Ipv4Addr,
    state: tempfile::TempDir,
    t0: Instant,
    /// The API server's files; removed last.
    _workdir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Self {
        let topology = Topology::new(2).unwrap();
        let workdir = tempfile::tempdir().unwrap();
        let api =
            KubeApiServer::start(topology.core_ns(), topology.core_ip(), workdir.path()).unwrap();
        let vip = topology.subnet_ip(100);
        let c = Cluster {
            topology,
            api,
            pair: Arc::new(Mutex::new(Pair {
                link_up: true,
                ..Default::default()
            })),
            vip,
            state: tempfile::tempdir().unwrap(),
            agents: [None, None],
            t0: Instant::now(),
            _workdir: workdir,
        };
        c.log(&format!(
            "kube-apiserver ready in {:.1}s",
            c.api.startup_time().as_secs_f64()
        ));
        c
    }

    fn start_agent(&mut self, side: usize) {
        self.start_agent_with(side, LEASE_CALL_TIMEOUT);
    }

    /// Starts the agent of `side` whose Lease calls give up after `call_timeout`.
    fn start_agent_with(&mut self, side: usize, call_timeout: Duration) {
        let ns = self.topology.member_ns(side).to_owned();
        let kubeconfig = self.api.kubeconfig();
        let state_dir = self.state.path().join(NAMES[side]);
        std::fs::create_dir_all(&state_dir).unwrap();
        let pair = self.pair.clone();
        pair.lock().unwrap().role[side] = Some(Role::Secondary);
        let vip = Vip::new(self.vip, testkit::netns::PREFIX_LEN, "eth0");
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // On a thread in the member's namespace: every socket the agent opens (the Lease
        // client, netlink) lives there.
        let thread = spawn_in(&ns, move || {
            block_on(async move {
                let client = kube_client(&kubeconfig).await;
                let config = AgentConfig {
                    ha: HaConfig::with_lease(NAMES[side], NAMES[1 - side], LEASE_MS),
                    tick: Duration::from_millis(100),
                    state_dir,
                    step_timeout: Duration::from_secs(5),
                };
                let stack = RecordingDrbdNfsDouble { side, pair, vip };
                let lease = lease_client(client, NAMES[side], call_timeout);
                let agent = Agent::new(config, lease, stack);
                handle_tx.send(agent.handle()).unwrap();
                agent
                    .run(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        let handle = handle_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        self.agents[side] = Some(RunningAgent {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        });
    }

    fn handle(&self, side: usize) -> &AgentHandle {
        &self.agents[side].as_ref().unwrap().handle
    }

    /// Who serves: Primary with the VIP on its interface (checked in its namespace).
    fn serving(&self, side: usize) -> bool {
        let pair = self.pair.lock().unwrap();
        pair.role[side] == Some(Role::Primary) && self.handle(side).status().observation.stack.vip
    }

    fn lease_json(&self) -> serde_json::Value {
        let (code, body) = self
            .api
            .curl(
                "GET",
                "/apis/coordination.k8s.io/v1/namespaces/default/leases/hanfs-export",
                None,
            )
            .unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn holder(&self) -> Option<String> {
        self.lease_json()["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_owned)
    }

    /// Waits (bounded) until `check` holds; returns the time it took.
    fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&Cluster) -> bool,
    ) -> Duration {
        let started = Instant::now();
        while started.elapsed() < limit {
            if check(self) {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let statuses: Vec<_> = (0..2)
            .filter(|i| self.agents[*i].is_some())
            .map(|i| format!("{}: {:?}", NAMES[i], self.handle(i).status().last_decision))
            .collect();
        panic!(
            "timed out after {limit:?} waiting for: {what}\n{statuses:#?}\n{:?}",
            self.pair.lock().unwrap()
        );
    }

    fn both_serving(&self) -> bool {
        self.serving(0) && self.serving(1)
    }

    fn log(&self, what: &str) {
        eprintln!("[{:>6.2}s] {what}", self.t0.elapsed().as_secs_f64());
    }
}

#[test]
fn two_agents_share_one_lease_on_a_real_apiserver() {
    let mut c = Cluster::new();
    let limit = Duration::from_millis(LEASE_MS * 4);

    // 1. Acquisition: exactly one becomes active.
    c.start_agent(0);
    c.start_agent(1);
    let took = c.wait_for("one node active", limit, |c| c.serving(0) || c.serving(1));
    let active = if c.serving(0) { 0 } else { 1 };
    let standby = 1 - active;
    c.log(&format!(
        "{} active after {:.2}s (Lease acquired, stack up, VIP on eth0)",
        NAMES[active],
        took.as_secs_f64()
    ));
    assert_eq!(c.holder().as_deref(), Some(NAMES[active]));
    assert!(!c.serving(standby));
    let admin = |side: usize| {
        AdminService::new(
            HaConfig::with_lease(NAMES[side], NAMES[1 - side], LEASE_MS),
            c.handle(side).clone(),
            vec![],
        )
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt
        .block_on(admin(active).status(tonic::Request::new(pb::AdminStatusRequest {})))
        .unwrap()
        .into_inner();
    assert!(
        status.vip && status.lease_holder == NAMES[active] && status.lease_remaining_ms > 0,
        "{status:?}"
    );
    let metrics = metrics_text(
        &HaConfig::with_lease(NAMES[active], NAMES[standby], LEASE_MS),
        &c.handle(active).status(),
        None,
    );
    assert!(
        metrics.contains(&format!("hanfs_active{{node=\"{}\"}} 1", NAMES[active])),
        "{metrics}"
    );

    // 2. Renewal: three Lease durations later nothing changed hands.
    let version_before = c.lease_json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    std::thread::sleep(Duration::from_millis(LEASE_MS * 3));
    assert!(
        c.serving(active) && !c.serving(standby),
        "the holder kept serving"
    );
    assert_ne!(
        c.lease_json()["metadata"]["resourceVersion"]
            .as_str()
            .unwrap(),
        version_before,
        "renewed"
    );
    assert_eq!(c.handle(active).status().acquisitions, 1);
    assert_eq!(c.handle(standby).status().acquisitions, 0);
    c.log("renewals kept the holder for 3 Lease durations");

    // 3. Planned hand-over: no waiting for expiry.
    let started = Instant::now();
    let refused =
        rt.block_on(admin(standby).switchover(tonic::Request::new(pb::SwitchoverRequest {})));
    assert_eq!(
        refused.unwrap_err().code(),
        tonic::Code::FailedPrecondition,
        "only the active hands over"
    );
    rt.block_on(admin(active).switchover(tonic::Request::new(pb::SwitchoverRequest {})))
        .unwrap();
    c.wait_for("switchover", limit, |c| c.serving(standby));
    let switchover = started.elapsed();
    assert!(!c.serving(active));
    c.log(&format!(
        "switchover {} -> {} in {:.2}s",
        NAMES[active],
        NAMES[standby],
        switchover.as_secs_f64()
    ));
    let (active, standby) = (standby, active);

    // 4. The holder is cut from the API server: it stands down before the peer takes over.
    let cut_at = Instant::now();
    c.topology.cut(active).unwrap();
    c.log(&format!("cut {} from the API server", NAMES[active]));
    let down = c.wait_for("the cut holder stands down", limit, |c| !c.serving(active));
    let mut overlap = false;
    c.wait_for("the peer takes over", limit * 2, |c| {
        overlap |= c.both_serving();
        c.serving(standby)
    });
    let takeover_after_cut = cut_at.elapsed();
    assert!(!overlap, "both served at once");
    c.log(&format!(
        "cut holder stood down {:.2}s after the cut; {} serving {:.2}s after the cut (Lease {LEASE_MS} ms)",
        down.as_secs_f64(),
        NAMES[standby],
        takeover_after_cut.as_secs_f64()
    ));
    let status = c.handle(standby).status();
    c.log(&format!(
        "takeover on {}: Lease acquisition -> VIP up {} ms",
        NAMES[standby],
        status.last_takeover_ms.unwrap_or(0)
    ));
    c.topology.heal(active).unwrap();
    c.wait_for("the healed node settles as standby", limit, |c| {
        c.handle(active).status().last_decision.phase.is_standby()
    });
    assert!(c.serving(standby) && !c.serving(active));
    let (active, standby) = (standby, active);

    // 5. Fencing: the replication link drops; the active records the peer as outdated
    //    (what DRBD's fence-peer handler does), then dies; the stale peer must not promote.
    c.pair.lock().unwrap().link_up = false;
    let fence_ns = c.topology.member_ns(active).to_owned();
    let kubeconfig = c.api.kubeconfig();
    let state_dir = c.state.path().join(NAMES[active]);
    let (code, message) = block_on_in(&fence_ns, move || async move {
        let client = kube_client(&kubeconfig).await;
        let lease = lease_client(client, NAMES[active], LEASE_CALL_TIMEOUT);
        drbd_backend::ha::fence::fence_peer(
            &lease,
            NAMES[active],
            NAMES[standby],
            &state_dir,
            Duration::from_secs(5),
        )
        .await
    });
    c.log(&format!(
        "fence-peer on {}: exit {code}: {message}",
        NAMES[active]
    ));
    assert_eq!(code, drbd_backend::ha::fence::EXIT_PEER_OUTDATED);
    assert_eq!(
        c.lease_json()["metadata"]["annotations"]["hanfs.io/outdated"],
        NAMES[standby]
    );
    // The standby cannot fence (it does not hold the Lease).
    let fence_ns = c.topology.member_ns(standby).to_owned();
    let kubeconfig = c.api.kubeconfig();
    let state_dir = c.state.path().join(NAMES[standby]);
    let (code, _) = block_on_in(&fence_ns, move || async move {
        let lease = lease_client(
            kube_client(&kubeconfig).await,
            NAMES[standby],
            LEASE_CALL_TIMEOUT,
        );
        drbd_backend::ha::fence::fence_peer(
            &lease,
            NAMES[standby],
            NAMES[active],
            &state_dir,
            Duration::from_secs(2),
        )
        .await
    });
    assert_eq!(code, drbd_backend::ha::fence::EXIT_REFUSED);

    c.agents[active].as_mut().unwrap().stop();
    {
        // The active's node dies with it.
        let mut pair = c.pair.lock().unwrap();
        pair.role[active] = None;
        pair.stack[active] = StackView::default();
    }
    let _ = spawn_in(c.topology.member_ns(active), {
        let vip = Vip::new(c.vip, testkit::netns::PREFIX_LEN, "eth0");
        move || block_on(vip.remove()).unwrap()
    })
    .join();
    c.log(&format!(
        "{} died after fencing {}",
        NAMES[active], NAMES[standby]
    ));
    std::thread::sleep(Duration::from_millis(LEASE_MS * 3));
    assert!(!c.serving(standby), "an outdated node must not promote");
    let decision = c.handle(standby).status().last_decision;
    assert_eq!(
        decision.phase,
        Phase::Ineligible(Ineligible::MarkedOutdated),
        "{}",
        decision.reason
    );
    let reason = decision.reason;
    c.log(&format!(
        "{} stayed standby for 3 Lease durations: {reason}",
        NAMES[standby]
    ));

    // The fenced node comes back with the link: the old active restarts, resyncs the peer,
    // takes over again (it is the last primary) and clears the fence record.
    c.pair.lock().unwrap().link_up = true;
    c.start_agent(active);
    c.wait_for("the up-to-date node serves again", limit * 2, |c| {
        c.serving(active)
    });
    c.wait_for("the fence record is cleared after resync", limit, |c| {
        c.lease_json()["metadata"]["annotations"]["hanfs.io/outdated"].is_null()
    });
    c.log("fence record cleared after resync");

    // 6. A Lease edited by hand to name a foreign holder: the active stands down, and
    //    after expiry one of ours takes it back — never both at once.
    let patch = r#"{"spec":{"holderIdentity":"somebody-else"},"metadata":{"annotations":{"hanfs.io/tenure":"foreign"}}}"#;
    let (code, body) = c
        .api
        .curl(
            "PATCH",
            "/apis/coordination.k8s.io/v1/namespaces/default/leases/hanfs-export",
            Some(patch),
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    c.log("Lease edited by hand: holder = somebody-else");
    let mut overlap = false;
    c.wait_for(
        "the active stands down for the foreign holder",
        limit,
        |c| {
            overlap |= c.both_serving();
            !c.serving(0) && !c.serving(1)
        },
    );
    c.wait_for(
        "one of ours takes the expired foreign Lease",
        limit * 2,
        |c| {
            overlap |= c.both_serving();
            c.serving(0) || c.serving(1)
        },
    );
    assert!(!overlap, "both served at once");
    c.log("recovered from the foreign holder");

    // 7. The API server loses its storage (etcd frozen): no node can prove it holds the
    //    Lease, so the active stands down (safe, not available); when etcd is back, one
    //    node takes over again.
    let etcd = nix::unistd::Pid::from_raw(c.api.etcd_pid() as i32);
    nix::sys::signal::kill(etcd, nix::sys::signal::Signal::SIGSTOP).unwrap();
    c.log("etcd frozen: the API server cannot read or write Leases");
    let mut overlap = false;
    let down = c.wait_for("the active stands down without an arbiter", limit, |c| {
        overlap |= c.both_serving();
        !c.serving(0) && !c.serving(1)
    });
    c.log(&format!(
        "nobody serves {:.2}s after the outage began",
        down.as_secs_f64()
    ));
    nix::sys::signal::kill(etcd, nix::sys::signal::Signal::SIGCONT).unwrap();
    c.wait_for("one node serves again after the outage", limit * 3, |c| {
        overlap |= c.both_serving();
        c.serving(0) || c.serving(1)
    });
    assert!(!overlap, "both served at once");
    c.log("etcd back: service restored");

    let steps = c.pair.lock().unwrap().steps.len();
    let last_resorts = c.pair.lock().unwrap().last_resorts;
    c.log(&format!(
        "{steps} stack steps recorded, last resorts {last_resorts:?}"
    ));
    for agent in c.agents.iter_mut().flatten() {
        agent.stop();
    }
}

/// The backstop fires on time however long a Lease call blocks. The holder's API server
/// freezes (SIGSTOP: its calls hang) while its stand-down cannot finish (the unmount
/// hangs), so the node is still Primary when the peer may take over: it must reboot or
/// freeze at `last_resort_after` (2.5 s of the 3 s Lease), not when a hung Lease call
/// gives up (10 s here). A soak found the Lease lane alone acting at 3.15 s of a 3 s Lease.
#[test]
fn the_last_resort_comes_on_time_however_long_a_lease_call_blocks() {
    let mut c = Cluster::new();
    let config = HaConfig::with_lease(NAMES[0], NAMES[1], LEASE_MS);
    let hung_call = Duration::from_secs(10);
    c.start_agent_with(0, hung_call);
    c.wait_for(
        "storage-a active",
        Duration::from_millis(LEASE_MS * 4),
        |c| c.serving(0),
    );
    c.pair.lock().unwrap().unmount_hangs = true;
    let apiserver = nix::unistd::Pid::from_raw(c.api.apiserver_pid() as i32);
    nix::sys::signal::kill(apiserver, nix::sys::signal::Signal::SIGSTOP).unwrap();
    c.log("kube-apiserver frozen: every Lease call hangs");
    let waited = c.wait_for(
        "a last resort",
        hung_call + Duration::from_millis(LEASE_MS),
        |c| c.pair.lock().unwrap().last_resorts[0] > 0,
    );
    nix::sys::signal::kill(apiserver, nix::sys::signal::Signal::SIGCONT).unwrap();
    let reason = c.pair.lock().unwrap().last_resort_reasons[0].clone();
    // "still Primary ... N ms after the last Lease renewal (limit M ms) ..."
    let late_ms: u64 = reason
        .split(" ms after the last Lease renewal")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no age in the last resort's reason: {reason:?}"));
    c.log(&format!(
        "last resort {:.2}s after the freeze, {late_ms} ms after the last renewal (at {} ms; the peer may take over at {LEASE_MS} ms)",
        waited.as_secs_f64(),
        config.last_resort_after
    ));
    assert!(
        late_ms >= config.last_resort_after,
        "a last resort before its time: {reason}"
    );
    assert!(
        late_ms < LEASE_MS,
        "the last resort came after the Lease could expire: {reason}"
    );
}

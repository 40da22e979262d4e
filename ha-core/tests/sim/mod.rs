//! A two-node world whose agents are the real [`AgentState`] state machine — the very
//! type `drbd-backend`'s agent runs, fed the same events in the same two lanes — and
//! that checks the safety rules after every step. Only the world is modelled here;
//! nothing of the agent's bookkeeping is. Pure and deterministic (its randomness comes
//! from a seed), so property tests can run thousands of scenarios in seconds.
//!
//! Modelled: the Lease in an API server (compare-and-swap on a version, request
//! latency, unreachability), each node's monotonic clock (own offset and rate, ±2 %),
//! DRBD (single-primary, protocol C replication, resync, disk states as DRBD reports
//! them, I/O frozen on connection loss until the fence-peer handler records the peer
//! outdated), the serving stack (mount, nfsd, export, VIP) with slow, failing and
//! hanging steps (cut off by the agent's step deadline, as the agent does), node crashes
//! and reboots, agent restarts (the tenure survives as the agent persists it), Lease
//! writes that land although their answer is lost, partitions (node↔API, node↔node),
//! switchover requests, stack failures and hand edits of the Lease.
//! Clients write through whichever node serves; every write acknowledged is counted.
//!
//! Checked after every step:
//! - never two nodes Primary at once;
//! - never two nodes that may serve writes (Primary, or a valid Lease holder);
//! - the VIP only on a node that is Primary with the filesystem mounted and exported;
//! - a promotion never loses an acknowledged write and never promotes a node the
//!   Lease marks outdated.

// Shared by two test binaries (the property test and the replays), each using a part.
#![allow(dead_code)]

use ha_core::{
    AgentState, Disk, DrbdView, FenceDecision, HaConfig, LeaseAction, LeaseRecord, LeaseWrite,
    Millis, Renewal, Request, Role, StackAction, StackObservation, StackView, StepError, Tenure,
    WriteError, fence_decision,
};

pub const TICK: u64 = 100;
/// The agent's deadline for steps that are not gated (the Kubernetes test's value).
const STEP_TIMEOUT: Millis = 5000;

/// Something that happens to the world between ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The node dies (power loss); it stays down until `Restart`.
    Crash(usize),
    Restart(usize),
    /// The agent process restarts; DRBD and the stack keep running.
    AgentRestart(usize),
    CutApi(usize),
    HealApi(usize),
    CutLink,
    HealLink,
    Switchover(usize),
    /// A piece of the running stack dies (nfsd crashes).
    KillNfsd(usize),
    /// Stack steps take long / fail with this percentage / unmount hangs.
    Slow(usize, bool),
    Failing(usize, u8),
    HangUnmount(usize, bool),
    /// The node stops for this many steps (a VM or process pause, a long GC or I/O
    /// stall) — the real form of a "clock jump" for an agent that only reads monotonic
    /// time. With `true`, its monotonic clock stops too, so on waking it believes almost
    /// no time has passed.
    Pause(usize, u16, bool),
    /// Someone edits the Lease by hand: touches it (version bump) or sets the holder.
    TouchLease,
    SetHolder(Option<usize>),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub steps: u64,
    pub promotions: u64,
    pub last_resorts: u64,
    pub fences: u64,
    pub acknowledged_writes: u64,
    pub switchovers_completed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub at_ms: u64,
    pub what: String,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, good enough for picking latencies.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
    fn percent(&mut self, p: u8) -> bool {
        self.next() % 100 < p as u64
    }
}

/// A Lease write on its way to the API server.
struct PendingWrite {
    write: LeaseWrite,
    done_at: u64,
    /// Sent while the API was unreachable: it never arrives.
    fails: bool,
}

/// A stack step running.
struct PendingStep {
    step: StackAction,
    done_at: u64,
    /// How it ends if the world does not refuse it on its own.
    ends: StepEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepEnd {
    Normally,
    Fails,
    /// Cut off by the agent's deadline: no effect.
    TimesOut,
}

struct Node {
    config: HaConfig,
    up: bool,
    clock_offset: u64,
    clock_rate_ppm: i64,
    /// The highest local time read so far: a monotonic clock never goes back.
    clock_floor: Millis,
    /// The agent: the real state machine.
    pub agent: AgentState,
    /// What the agent persisted: survives agent restarts (the monotonic clock keeps
    /// counting), not reboots. The fence-peer handler reads it too.
    persisted: Tenure,
    lease_lane: Option<PendingWrite>,
    stack_lane: Option<PendingStep>,
    /// The observation the agent predicted after a successful step: the next step is
    /// decided from it without a real look, as the agent does.
    predicted: Option<StackObservation>,
    // DRBD and the stack.
    role: Role,
    generation: u64,
    knows_up_to_date: bool,
    frozen: bool,
    stack: StackView,
    // Fault knobs.
    slow: bool,
    failing_percent: u8,
    hang_unmount: bool,
    api_ok: bool,
    /// Paused until this global time.
    paused_until: u64,
    /// Milliseconds its monotonic clock missed while paused.
    clock_stopped_ms: u64,
    /// DRBD ran the fence-peer handler for the current disconnection.
    fence_attempted: bool,
}

impl Node {
    fn new(config: HaConfig, offset: u64, rate_ppm: i64) -> Self {
        Self {
            config,
            up: true,
            clock_offset: offset,
            clock_rate_ppm: rate_ppm,
            clock_floor: 0,
            agent: AgentState::default(),
            persisted: Tenure::default(),
            lease_lane: None,
            stack_lane: None,
            predicted: None,
            role: Role::Secondary,
            generation: 0,
            knows_up_to_date: true,
            frozen: false,
            stack: StackView::default(),
            slow: false,
            failing_percent: 0,
            hang_unmount: false,
            api_ok: true,
            paused_until: 0,
            clock_stopped_ms: 0,
            fence_attempted: false,
        }
    }

    fn scaled(&self, global: u64) -> u64 {
        (global as i128 * (1_000_000 + self.clock_rate_ppm as i128) / 1_000_000) as u64
    }

    /// This node's monotonic clock at global time `global`.
    fn local(&mut self, global: u64) -> Millis {
        let t = (self.clock_offset + self.scaled(global)).saturating_sub(self.clock_stopped_ms);
        self.clock_floor = self.clock_floor.max(t);
        self.clock_floor
    }

    /// Up and not paused: the agent and the kernel both run.
    fn running(&self, global: u64) -> bool {
        self.up && global >= self.paused_until
    }

    fn serving(&self) -> bool {
        self.up
            && self.role == Role::Primary
            && self.stack.mounted
            && self.stack.nfsd
            && self.stack.exported
            && self.stack.vip
    }

    fn reboot(&mut self) {
        self.up = false;
        self.agent = AgentState::default();
        self.persisted = Tenure::default();
        self.lease_lane = None;
        self.stack_lane = None;
        self.predicted = None;
        self.role = Role::Secondary;
        self.knows_up_to_date = false;
        self.frozen = false;
        self.fence_attempted = false;
        self.stack = StackView::default();
        // A reboot restarts the monotonic clock from an arbitrary point.
        self.clock_offset = self.clock_offset.wrapping_mul(31).wrapping_add(17) % 1_000_000;
        self.clock_floor = 0;
        self.clock_stopped_ms = 0;
    }

    /// Whether this node, by its own view, may serve writes.
    fn valid_holder(&mut self, global: u64) -> bool {
        let now = self.local(global);
        let a = &self.agent;
        let Some(view) = &a.lease else { return false };
        view.record.holder.as_deref() == Some(self.config.node.as_str())
            && a.tenure.id.as_deref() == Some(view.record.tenure.as_str())
            && Renewal::of(&a.tenure, now).within(self.config.renew_deadline)
    }
}

pub struct World {
    now: u64,
    lease: LeaseRecord,
    version: u64,
    nodes: [Node; 2],
    link_ok: bool,
    resync_left: u32,
    acked: u64,
    rng: Rng,
    /// Nodes rebooting after a last resort: (global ms when back, node).
    pending_restarts: Vec<(u64, usize)>,
    pub stats: Stats,
    pub violations: Vec<Violation>,
    /// Print every step (for debugging a failing scenario).
    pub trace: bool,
    /// Set by [`run_scenario`]: some step after healing had exactly one node serving.
    pub served_after_heal: bool,
    /// A paused Primary stays Primary while the peer takes over (nothing can demote a
    /// stopped machine); from then on the checks are the data-level ones.
    pauses_happened: bool,
}

impl World {
    pub fn new(seed: u64, lease_duration: Millis) -> Self {
        Self::with_configs(
            seed,
            HaConfig::with_lease("a", "b", lease_duration),
            HaConfig::with_lease("b", "a", lease_duration),
        )
    }

    /// A world whose nodes run these configurations (tests use broken ones to prove the
    /// checks catch what they should).
    pub fn with_configs(seed: u64, a: HaConfig, b: HaConfig) -> Self {
        let mut rng = Rng(seed | 1);
        let rate_a = rng.range(0, 40_000) as i64 - 20_000;
        let rate_b = rng.range(0, 40_000) as i64 - 20_000;
        let offset_a = rng.range(0, 1_000_000);
        let offset_b = rng.range(0, 1_000_000);
        Self {
            now: 0,
            lease: LeaseRecord {
                version: "0".into(),
                ..Default::default()
            },
            version: 0,
            nodes: [
                Node::new(a, offset_a, rate_a),
                Node::new(b, offset_b, rate_b),
            ],
            link_ok: true,
            resync_left: 0,
            acked: 0,
            rng,
            pending_restarts: Vec::new(),
            stats: Stats::default(),
            violations: Vec::new(),
            trace: false,
            served_after_heal: false,
            pauses_happened: false,
        }
    }

    fn violation(&mut self, what: String) {
        self.violations.push(Violation {
            at_ms: self.now,
            what,
        });
    }

    /// DRBD's link: both kernels running, and never two Primaries (DRBD refuses that
    /// handshake: a split brain stays disconnected).
    fn connected(&self) -> bool {
        let [a, b] = &self.nodes;
        self.link_ok
            && a.running(self.now)
            && b.running(self.now)
            && !(a.role == Role::Primary && b.role == Role::Primary)
    }

    fn disk(&self, i: usize) -> Disk {
        let (me, peer) = (&self.nodes[i], &self.nodes[1 - i]);
        if !me.up {
            return Disk::Unknown;
        }
        if self.connected() {
            if me.generation >= peer.generation {
                Disk::UpToDate
            } else {
                Disk::Inconsistent
            }
        } else if me.knows_up_to_date {
            Disk::UpToDate
        } else {
            Disk::Consistent
        }
    }

    fn bump(&mut self) -> String {
        self.version += 1;
        self.lease.version = self.version.to_string();
        self.lease.version.clone()
    }

    pub fn apply(&mut self, fault: Fault) {
        match fault {
            Fault::Crash(i) => self.nodes[i].reboot(),
            Fault::Restart(i) => {
                if !self.nodes[i].up {
                    self.nodes[i].up = true;
                }
            }
            Fault::AgentRestart(i) => {
                // A new process: only what the agent persisted survives.
                let n = &mut self.nodes[i];
                n.agent = AgentState::restored(n.persisted.clone(), None);
                n.lease_lane = None;
                n.stack_lane = None;
                n.predicted = None;
            }
            Fault::CutApi(i) => self.nodes[i].api_ok = false,
            Fault::HealApi(i) => self.nodes[i].api_ok = true,
            Fault::CutLink => self.link_ok = false,
            Fault::HealLink => self.link_ok = true,
            Fault::Switchover(i) => {
                if self.nodes[i].up {
                    self.nodes[i].agent.request(Request::Switchover);
                }
            }
            Fault::KillNfsd(i) => {
                let n = &mut self.nodes[i];
                // The agent finds it down on its next look and counts it.
                if n.up {
                    n.stack.nfsd = false;
                }
            }
            Fault::Slow(i, on) => self.nodes[i].slow = on,
            Fault::Failing(i, p) => self.nodes[i].failing_percent = p.min(60),
            Fault::HangUnmount(i, on) => self.nodes[i].hang_unmount = on,
            Fault::Pause(i, ticks, clock_stops) => {
                let n = &mut self.nodes[i];
                if n.running(self.now) {
                    let duration = ticks as u64 * TICK;
                    n.paused_until = self.now + duration;
                    if clock_stops {
                        n.clock_stopped_ms += duration;
                    }
                    self.pauses_happened = true;
                }
            }
            Fault::TouchLease => {
                self.bump();
            }
            Fault::SetHolder(holder) => {
                self.lease.holder = holder.map(|i| self.nodes[i].config.node.clone());
                self.bump();
            }
        }
    }

    /// Heals every fault and restarts every node (for the liveness check).
    pub fn heal_all(&mut self) {
        self.link_ok = true;
        for i in 0..2 {
            let n = &mut self.nodes[i];
            n.api_ok = true;
            n.slow = false;
            n.failing_percent = 0;
            n.hang_unmount = false;
            n.up = true;
        }
    }

    /// Exactly one node serves.
    pub fn one_serving(&self) -> bool {
        self.nodes.iter().filter(|n| n.serving()).count() == 1
    }

    /// What the agent's stack lane sees: DRBD as `drbdsetup` reports it, the stack.
    fn observation(&self, i: usize) -> StackObservation {
        let connected = self.connected();
        let peer = &self.nodes[1 - i];
        StackObservation {
            drbd: Some(DrbdView {
                role: self.nodes[i].role,
                disk: self.disk(i),
                connected,
                peer_role: if connected { peer.role } else { Role::Unknown },
                peer_disk: if connected {
                    self.disk(1 - i)
                } else {
                    Disk::Unknown
                },
                io_frozen: self.nodes[i].frozen,
            }),
            stack: self.nodes[i].stack,
            unhealthy: None,
        }
    }

    fn step_duration(&mut self, i: usize, action: &StackAction) -> u64 {
        let gated_max = self.nodes[i].config.gated_step_timeout;
        if action.is_gated() {
            return if self.nodes[i].slow {
                gated_max
            } else {
                self.rng.range(20, gated_max / 2)
            };
        }
        if *action == StackAction::Unmount && self.nodes[i].hang_unmount {
            return 10_000;
        }
        if self.nodes[i].slow {
            self.rng.range(1000, 3000)
        } else {
            self.rng.range(20, 400)
        }
    }

    /// The agent's lease lane: read the Lease (if the API answers), decide, maybe run
    /// the last resort, send the write. The lane waits for its write, as the agent does.
    fn lease_lane(&mut self, i: usize) {
        if self.nodes[i].lease_lane.is_some() {
            return;
        }
        let local = self.nodes[i].local(self.now);
        let config = self.nodes[i].config.clone();
        if self.nodes[i].api_ok {
            let record = self.lease.clone();
            self.nodes[i].agent.lease_read(record, local);
        } else {
            self.nodes[i]
                .agent
                .lease_read_failed("API server unreachable".into());
        }
        let id = self.rng.next();
        let (tick, _) = self.nodes[i]
            .agent
            .lease_tick(&config, local, || id.to_string());
        if self.trace {
            let n = &self.nodes[i];
            eprintln!(
                "t={} node{i} local={local} role={:?} stack={:?} view={:?} tenure={:?} -> {:?} {:?}",
                self.now,
                n.role,
                n.stack,
                n.agent.lease,
                n.agent.tenure,
                n.agent.last_decision,
                tick.write
            );
        }
        if tick.last_resort.is_some() {
            self.stats.last_resorts += 1;
            self.nodes[i].reboot();
            // It reboots: back after 5 s.
            self.pending_restarts.push((self.now + 5000, i));
            return;
        }
        if let Some(write) = tick.write {
            let api_down = !self.nodes[i].api_ok;
            let latency = if api_down {
                1000
            } else {
                self.rng.range(5, 300)
            };
            self.nodes[i].lease_lane = Some(PendingWrite {
                write,
                done_at: self.now + latency,
                fails: api_down,
            });
        }
    }

    /// The agent's stack lane: observe (or take the prediction), decide, start a step.
    fn stack_lane(&mut self, i: usize) {
        if self.nodes[i].stack_lane.is_some() {
            return;
        }
        let local = self.nodes[i].local(self.now);
        let config = self.nodes[i].config.clone();
        let (observation, real) = match self.nodes[i].predicted.take() {
            Some(predicted) => (predicted, false),
            None => (self.observation(i), true),
        };
        let agent = &mut self.nodes[i].agent;
        agent.stack_observed(&config, observation, real, local);
        let Some((step, _)) = agent.next_step(&config, local) else {
            return;
        };
        let limit = if step.is_gated() {
            config.gated_step_timeout
        } else {
            STEP_TIMEOUT
        };
        let duration = self.step_duration(i, &step);
        let failing = self.rng.percent(self.nodes[i].failing_percent);
        let (done_in, ends) = if duration > limit {
            (limit, StepEnd::TimesOut)
        } else if failing || (step == StackAction::Unmount && self.nodes[i].frozen) {
            (duration, StepEnd::Fails)
        } else {
            (duration, StepEnd::Normally)
        };
        self.nodes[i].stack_lane = Some(PendingStep {
            step,
            done_at: self.now + done_in,
            ends,
        });
    }

    /// A Lease write arrives (or does not): the API server's compare-and-swap, then the
    /// answer to the agent.
    fn finish_lease_action(&mut self, i: usize) {
        let Some(p) = self.nodes[i].lease_lane.take_if(|p| p.done_at <= self.now) else {
            return;
        };
        let local = self.nodes[i].local(self.now);
        let arrives = !p.fails;
        // Cut while in flight: the write may land with its answer lost.
        let answer_lost = !self.nodes[i].api_ok;
        let lands = arrives && (!answer_lost || self.rng.percent(50));
        let matches = p.write.record.version == self.lease.version;
        let result = if lands && matches {
            let switching = self.nodes[i].agent.request == Request::Switchover;
            match &p.write.action {
                LeaseAction::Release { .. } if switching => self.stats.switchovers_completed += 1,
                LeaseAction::RecordPeerOutdated => self.stats.fences += 1,
                _ => {}
            }
            self.lease = p.write.record.clone();
            let version = self.bump();
            if answer_lost {
                Err(WriteError::Failed("no answer".into()))
            } else {
                Ok(version)
            }
        } else if lands {
            Err(WriteError::Conflict)
        } else {
            Err(WriteError::Failed("API server unreachable".into()))
        };
        let (persist, _) = self.nodes[i].agent.lease_written(p.write, result, local);
        if let Some(tenure) = persist {
            self.nodes[i].persisted = tenure;
        }
    }

    /// A stack step ends: its effect on the world, then its outcome to the agent.
    fn finish_stack_action(&mut self, i: usize) {
        let Some(p) = self.nodes[i].stack_lane.take_if(|p| p.done_at <= self.now) else {
            return;
        };
        let local = self.nodes[i].local(self.now);
        let result = match p.ends {
            StepEnd::TimesOut => Err(StepError::Timeout(format!("{:?} hung", p.step))),
            StepEnd::Fails => Err(StepError::Failed("the tool failed".into())),
            StepEnd::Normally => self.apply_step(i, &p.step),
        };
        let (predicted, _) = self.nodes[i].agent.step_finished(&p.step, result, local);
        self.nodes[i].predicted = predicted;
    }

    /// What the kernel and the tools do with a step: DRBD refuses what it refuses, a
    /// step whose preconditions are missing fails.
    fn apply_step(&mut self, i: usize, step: &StackAction) -> Result<(), StepError> {
        let refused = |why: &str| Err(StepError::Refused(why.into()));
        let failed = |why: &str| Err(StepError::Failed(why.into()));
        let connected = self.connected();
        let disk = self.disk(i);
        let peer_primary = self.nodes[1 - i].role == Role::Primary;
        let promoting = matches!(
            step,
            StackAction::Promote | StackAction::PromoteForced { .. }
        );
        if promoting && !connected && !self.fence_for_promotion(i) {
            // DRBD with `fencing resource-and-stonith` runs the fence-peer handler before
            // it promotes without a peer; the handler refuses unless this node holds the
            // Lease under its own tenure, and then the promotion fails.
            return refused("the fence-peer handler refused");
        }
        let n = &mut self.nodes[i];
        match step {
            // DRBD itself: single-primary while connected; an UpToDate disk unless forced.
            StackAction::Promote | StackAction::PromoteForced { .. }
                if connected && peer_primary =>
            {
                return refused("peer is Primary");
            }
            StackAction::Promote if disk != Disk::UpToDate => {
                return refused("need access to UpToDate data");
            }
            StackAction::Promote | StackAction::PromoteForced { .. } => n.role = Role::Primary,
            StackAction::Mount if n.role != Role::Primary => return failed("device is read-only"),
            StackAction::Mount => n.stack.mounted = true,
            StackAction::StartNfsd => n.stack.nfsd = true,
            StackAction::Export if !(n.stack.mounted && n.stack.nfsd) => {
                return failed("nothing to export");
            }
            StackAction::Export => n.stack.exported = true,
            StackAction::AddVip if !(n.stack.exported && n.role == Role::Primary) => {
                return failed("not serving");
            }
            StackAction::AddVip => n.stack.vip = true,
            StackAction::RemoveVip => n.stack.vip = false,
            StackAction::Unexport => n.stack.exported = false,
            StackAction::StopNfsd => n.stack.nfsd = false,
            StackAction::Unmount if n.stack.exported => return refused("busy: exported"),
            StackAction::Unmount => n.stack.mounted = false,
            StackAction::Demote if n.stack.mounted => return refused("device held open"),
            StackAction::Demote => n.role = Role::Secondary,
            StackAction::ResumeIo => n.frozen = false,
        }
        if promoting {
            self.stats.promotions += 1;
            let generation = self.nodes[i].generation;
            if generation < self.acked {
                self.violation(format!(
                    "node {i} promoted with generation {generation}, but writes up to {} were acknowledged",
                    self.acked
                ));
            }
            // Connected and in sync (DRBD promotes only an UpToDate disk), the data is
            // current whatever the Lease still says; without a peer, the mark must hold.
            if !connected
                && self.lease.outdated.as_deref() == Some(self.nodes[i].config.node.as_str())
            {
                self.violation(format!(
                    "node {i} promoted without its peer while the Lease marks it outdated"
                ));
            }
        }
        Ok(())
    }

    /// The fence-peer handler as DRBD runs it when promoting without a connected peer:
    /// records the peer outdated (a Lease write) only for the tenure-holding node.
    fn fence_for_promotion(&mut self, i: usize) -> bool {
        if !self.nodes[i].api_ok {
            return false;
        }
        let me = self.nodes[i].config.node.clone();
        let peer = self.nodes[1 - i].config.node.clone();
        match fence_decision(
            &self.lease,
            &me,
            self.nodes[i].persisted.id.as_deref(),
            &peer,
        ) {
            FenceDecision::RecordOutdated => {
                self.lease.outdated = Some(peer);
                self.bump();
                self.stats.fences += 1;
                true
            }
            FenceDecision::Refuse(_) => false,
        }
    }

    /// DRBD replication, fencing and resync, then the clients' writes.
    fn data_path(&mut self) {
        let connected = self.connected();
        if connected {
            let (g0, g1) = (self.nodes[0].generation, self.nodes[1].generation);
            if g0 != g1 {
                if self.resync_left == 0 {
                    self.resync_left = 5;
                }
                self.resync_left -= 1;
                if self.resync_left == 0 {
                    let g = g0.max(g1);
                    self.nodes[0].generation = g;
                    self.nodes[1].generation = g;
                }
            }
            if self.nodes[0].generation == self.nodes[1].generation {
                self.nodes[0].knows_up_to_date = true;
                self.nodes[1].knows_up_to_date = true;
            }
            for n in &mut self.nodes {
                n.frozen = false;
            }
        }
        for i in 0..2 {
            if connected {
                self.nodes[i].fence_attempted = false;
            }
            if !self.nodes[i].running(self.now)
                || self.nodes[i].role != Role::Primary
                || connected
                || self.nodes[i].fence_attempted
            {
                continue;
            }
            // Connection lost while Primary: DRBD freezes I/O and runs the fence-peer
            // handler once; only its "peer outdated" answer resumes I/O. If it fails, I/O
            // stays frozen until the agent records the peer and resumes it.
            self.nodes[i].fence_attempted = true;
            self.nodes[i].frozen = true;
            if self.nodes[i].api_ok {
                let me = self.nodes[i].config.node.clone();
                let peer = self.nodes[1 - i].config.node.clone();
                match fence_decision(
                    &self.lease,
                    &me,
                    self.nodes[i].persisted.id.as_deref(),
                    &peer,
                ) {
                    FenceDecision::RecordOutdated => {
                        self.lease.outdated = Some(peer);
                        self.bump();
                        self.stats.fences += 1;
                        self.nodes[i].frozen = false;
                    }
                    FenceDecision::Refuse(_) => {}
                }
            }
        }
        for i in 0..2 {
            if self.nodes[i].running(self.now) && self.nodes[i].serving() && !self.nodes[i].frozen {
                self.nodes[i].generation += 1;
                if connected && self.nodes[1 - i].generation + 1 == self.nodes[i].generation {
                    self.nodes[1 - i].generation += 1;
                }
                self.acked = self.acked.max(self.nodes[i].generation);
                self.stats.acknowledged_writes += 1;
            }
        }
    }

    fn check(&mut self) {
        let now = self.now;
        // Data level, always: never two nodes that can acknowledge writes.
        let can_ack = |w: &World, i: usize| {
            let n = &w.nodes[i];
            n.running(now) && n.serving() && !n.frozen
        };
        if can_ack(self, 0) && can_ack(self, 1) {
            self.violation("both nodes acknowledge writes".into());
        }
        if !self.pauses_happened {
            let both_up = self.nodes[0].up && self.nodes[1].up;
            if both_up && self.nodes[0].role == Role::Primary && self.nodes[1].role == Role::Primary
            {
                self.violation("both nodes Primary".into());
            }
            let now = self.now;
            let mut may_serve = |i: usize| {
                let n = &mut self.nodes[i];
                n.up && (n.role == Role::Primary || n.valid_holder(now))
            };
            if may_serve(0) && may_serve(1) {
                self.violation("both nodes may serve writes".into());
            }
        }
        for i in 0..2 {
            let n = &self.nodes[i];
            if n.up
                && n.stack.vip
                && !(n.role == Role::Primary && n.stack.mounted && n.stack.exported)
            {
                self.violation(format!(
                    "node {i} holds the VIP without Primary + mount + export"
                ));
            }
        }
    }

    /// Advances the world by one tick.
    pub fn tick(&mut self) {
        self.now += TICK;
        self.stats.steps += 1;
        let due: Vec<usize> = self
            .pending_restarts
            .iter()
            .filter(|(at, _)| *at <= self.now)
            .map(|(_, i)| *i)
            .collect();
        self.pending_restarts.retain(|(at, _)| *at > self.now);
        for i in due {
            self.nodes[i].up = true;
        }
        for i in 0..2 {
            if self.nodes[i].running(self.now) {
                self.finish_lease_action(i);
                self.finish_stack_action(i);
            }
        }
        for i in 0..2 {
            if self.nodes[i].running(self.now) {
                self.lease_lane(i);
            }
            // (A last resort above rebooted the node: it is not running any more.)
            if self.nodes[i].running(self.now) {
                self.stack_lane(i);
            }
        }
        self.data_path();
        self.check();
    }
}

/// One scenario as the property tests run it: settle (one node active), the faults with
/// the given waits (in 100 ms steps) between them, then heal everything and let the
/// world run for three Lease durations plus a resync. `trace` prints every step.
pub fn run_scenario(seed: u64, lease: Millis, events: &[(u16, Fault)], trace: bool) -> World {
    let mut world = World::new(seed, lease);
    for _ in 0..((lease / TICK) * 2 + 50) {
        world.tick();
    }
    world.trace = trace;
    for (wait, fault) in events {
        world.apply(*fault);
        for _ in 0..*wait {
            world.tick();
        }
    }
    world.heal_all();
    world.served_after_heal = false;
    for _ in 0..((lease / TICK) * 3 + 150) {
        world.tick();
        world.served_after_heal |= world.one_serving();
    }
    world
}

#[cfg(test)]
mod replays;

//! A two-node world that drives [`decide`] the way the agent does and checks the safety
//! rules after every step. Pure and deterministic (its randomness comes from a seed),
//! so property tests can run thousands of scenarios in seconds and shrink failures.
//!
//! Modelled: the Lease in an API server (compare-and-swap on a version, request
//! latency, unreachability), each node's monotonic clock (own offset and rate, ±2 %),
//! DRBD (single-primary, protocol C replication, resync, disk states as DRBD reports
//! them, I/O frozen on connection loss until the fence-peer handler records the peer
//! outdated), the serving stack (mount, nfsd, export, VIP) with slow, failing and
//! hanging steps, node crashes and reboots, agent restarts, partitions (node↔API,
//! node↔node), switchover requests, stack failures and hand edits of the Lease.
//! Clients write through whichever node serves; every write acknowledged is counted.
//!
//! Checked after every step:
//! - never two nodes Primary at once;
//! - never two nodes that may serve writes (Primary, or a valid Lease holder);
//! - the VIP only on a node that is Primary with the filesystem mounted and exported;
//! - a promotion never loses an acknowledged write and never promotes a node the
//!   Lease marks outdated.

use super::decide::{
    Disk, DrbdView, FenceDecision, HaConfig, LeaseAction, LeaseRecord, LeaseView, Millis, Observed,
    Request, Role, StackAction, StackView, Tenure, decide, fence_decision,
};

const TICK: u64 = 100;

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

struct Pending<A> {
    action: A,
    sent_local: Millis,
    /// The Lease version the request was built from (its compare-and-swap).
    version: Option<String>,
    done_at: u64,
    fails: bool,
}

struct Node {
    config: HaConfig,
    up: bool,
    clock_offset: u64,
    clock_rate_ppm: i64,
    // Agent memory.
    view: Option<LeaseView>,
    /// Survive agent restarts (persisted with the monotonic clock), not reboots.
    renewed_at: Option<Millis>,
    tenure: Option<String>,
    request: Request,
    health_failures: u32,
    lease_lane: Option<Pending<LeaseAction>>,
    stack_lane: Option<Pending<StackAction>>,
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
            view: None,
            renewed_at: None,
            tenure: None,
            request: Request::None,
            health_failures: 0,
            lease_lane: None,
            stack_lane: None,
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

    fn local(&self, global: u64) -> Millis {
        let scaled = global as i128 * (1_000_000 + self.clock_rate_ppm as i128) / 1_000_000;
        (self.clock_offset + scaled as u64).saturating_sub(self.clock_stopped_ms)
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
        self.view = None;
        self.renewed_at = None;
        self.tenure = None;
        self.request = Request::None;
        self.health_failures = 0;
        self.lease_lane = None;
        self.stack_lane = None;
        self.role = Role::Secondary;
        self.knows_up_to_date = false;
        self.frozen = false;
        self.fence_attempted = false;
        self.stack = StackView::default();
        // A reboot restarts the monotonic clock from an arbitrary point.
        self.clock_offset = self.clock_offset.wrapping_mul(31).wrapping_add(17) % 1_000_000;
    }

    /// Whether this node, by its own view, may serve writes.
    fn valid_holder(&self, global: u64) -> bool {
        let Some(view) = &self.view else { return false };
        view.record.holder.as_deref() == Some(self.config.node.as_str())
            && self.tenure.as_deref() == Some(view.record.tenure.as_str())
            && self
                .renewed_at
                .is_some_and(|t| self.local(global).saturating_sub(t) < self.config.renew_deadline)
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
                let n = &mut self.nodes[i];
                n.view = None;
                n.request = Request::None;
                n.health_failures = 0;
                n.lease_lane = None;
                n.stack_lane = None;
            }
            Fault::CutApi(i) => self.nodes[i].api_ok = false,
            Fault::HealApi(i) => self.nodes[i].api_ok = true,
            Fault::CutLink => self.link_ok = false,
            Fault::HealLink => self.link_ok = true,
            Fault::Switchover(i) => {
                if self.nodes[i].up {
                    self.nodes[i].request = Request::Switchover;
                }
            }
            Fault::KillNfsd(i) => {
                let n = &mut self.nodes[i];
                if n.up && n.stack.nfsd {
                    n.stack.nfsd = false;
                    // What the agent's health check counts.
                    n.health_failures += 1;
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

    fn observe(&mut self, i: usize) -> Observed {
        let local = self.nodes[i].local(self.now);
        if self.nodes[i].api_ok {
            LeaseView::observe(&mut self.nodes[i].view, self.lease.clone(), local);
        }
        // The agent forgets stack failures once it has stood down: they were failures of
        // the active stack, and a standby may be needed again.
        {
            let n = &mut self.nodes[i];
            let holder = n
                .view
                .as_ref()
                .is_some_and(|v| v.record.holder.as_deref() == Some(n.config.node.as_str()));
            if !holder && n.role == Role::Secondary && !n.stack.any_up() && n.stack_lane.is_none() {
                n.health_failures = 0;
            }
        }
        let connected = self.connected();
        let peer = &self.nodes[1 - i];
        let drbd = DrbdView {
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
        };
        let n = &self.nodes[i];
        Observed {
            now: local,
            lease: n.view.clone(),
            tenure: Tenure {
                id: n.tenure.clone(),
                renewed_at: n.renewed_at,
            },
            drbd: Some(drbd),
            stack: n.stack,
            stack_busy: n.stack_lane.is_some(),
            stack_observed_at: local + 1,
            health_failures: n.health_failures,
            request: n.request,
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

    fn start_actions(&mut self, i: usize, observed: &Observed) {
        let decision = decide(observed, &self.nodes[i].config);
        if self.trace {
            eprintln!(
                "t={} node{i} local={} role={:?} stack={:?} view={:?} renewed={:?} -> {:?}",
                self.now,
                observed.now,
                self.nodes[i].role,
                self.nodes[i].stack,
                observed.lease,
                self.nodes[i].renewed_at,
                decision
            );
        }
        if decision.last_resort.is_some() {
            self.stats.last_resorts += 1;
            self.nodes[i].reboot();
            // It reboots: back after 5 s.
            self.pending_restarts.push((self.now + 5000, i));
            return;
        }
        if self.nodes[i].lease_lane.is_none()
            && let Some(action) = decision.lease
        {
            let api_down = !self.nodes[i].api_ok;
            let latency = if api_down {
                1000
            } else {
                self.rng.range(5, 300)
            };
            let version = observed.lease.as_ref().map(|v| v.record.version.clone());
            self.nodes[i].lease_lane = Some(Pending {
                action,
                sent_local: observed.now,
                version,
                done_at: self.now + latency,
                fails: api_down,
            });
        }
        if self.nodes[i].stack_lane.is_none()
            && let Some(action) = decision.stack.into_iter().next()
        {
            let duration = self.step_duration(i, &action);
            let fails = self.rng.percent(self.nodes[i].failing_percent)
                || (action == StackAction::Unmount
                    && (self.nodes[i].hang_unmount || self.nodes[i].frozen));
            self.nodes[i].stack_lane = Some(Pending {
                action,
                sent_local: observed.now,
                version: None,
                done_at: self.now + duration,
                fails,
            });
        }
    }

    fn finish_lease_action(&mut self, i: usize) {
        let Some(p) = self.nodes[i].lease_lane.take_if(|p| p.done_at <= self.now) else {
            return;
        };
        if p.fails || !self.nodes[i].api_ok {
            return;
        }
        let me = self.nodes[i].config.node.clone();
        // Every write is a compare-and-swap on the version the request was built from.
        if p.version.as_deref() != Some(self.lease.version.as_str()) {
            return;
        }
        match p.action {
            LeaseAction::Acquire => {
                let tenure = format!("{me}-{}", self.rng.next());
                self.lease.tenure = tenure.clone();
                self.nodes[i].tenure = Some(tenure);
                self.lease.holder = Some(me.clone());
                self.lease.last_primary = Some(me);
                self.lease.handover_to = None;
                self.nodes[i].renewed_at = Some(p.sent_local);
            }
            LeaseAction::Renew => {
                if self.lease.holder.as_deref() != Some(me.as_str()) {
                    return;
                }
                self.nodes[i].renewed_at = Some(p.sent_local);
            }
            LeaseAction::Release { handover_to } => {
                self.lease.holder = None;
                self.lease.tenure.clear();
                self.lease.handover_to = handover_to;
                if self.nodes[i].request == Request::Switchover {
                    self.stats.switchovers_completed += 1;
                }
                self.nodes[i].request = Request::None;
                self.nodes[i].health_failures = 0;
            }
            LeaseAction::ClearOutdated => self.lease.outdated = None,
            LeaseAction::RecordPeerOutdated => {
                if self.lease.holder.as_deref() != Some(me.as_str()) {
                    return;
                }
                self.lease.outdated = Some(self.nodes[i].config.peer.clone());
                self.stats.fences += 1;
            }
        }
        self.bump();
    }

    fn finish_stack_action(&mut self, i: usize) {
        let Some(p) = self.nodes[i].stack_lane.take_if(|p| p.done_at <= self.now) else {
            return;
        };
        if p.fails {
            return;
        }
        let connected = self.connected();
        let disk = self.disk(i);
        let peer_primary = self.nodes[1 - i].role == Role::Primary;
        let promoting = matches!(
            p.action,
            StackAction::Promote | StackAction::PromoteForced { .. }
        );
        if promoting && !connected && !self.fence_for_promotion(i) {
            // DRBD with `fencing resource-and-stonith` runs the fence-peer handler before
            // it promotes without a peer; the handler refuses unless this node holds the
            // Lease under its own tenure, and then the promotion fails.
            return;
        }
        let n = &mut self.nodes[i];
        let promoted = match p.action {
            // DRBD itself: single-primary while connected; an UpToDate disk unless forced.
            StackAction::Promote if (connected && peer_primary) || disk != Disk::UpToDate => return,
            StackAction::PromoteForced { .. } if connected && peer_primary => return,
            StackAction::Promote | StackAction::PromoteForced { .. } => {
                n.role = Role::Primary;
                true
            }
            StackAction::Mount if n.role == Role::Primary => {
                n.stack.mounted = true;
                false
            }
            StackAction::StartNfsd => {
                n.stack.nfsd = true;
                false
            }
            StackAction::Export if n.stack.mounted && n.stack.nfsd => {
                n.stack.exported = true;
                false
            }
            StackAction::AddVip if n.stack.exported && n.role == Role::Primary => {
                n.stack.vip = true;
                false
            }
            StackAction::RemoveVip => {
                n.stack.vip = false;
                false
            }
            StackAction::Unexport => {
                n.stack.exported = false;
                false
            }
            StackAction::StopNfsd => {
                n.stack.nfsd = false;
                false
            }
            StackAction::Unmount if !n.stack.exported => {
                n.stack.mounted = false;
                false
            }
            StackAction::Demote if !n.stack.mounted => {
                n.role = Role::Secondary;
                false
            }
            StackAction::ResumeIo => {
                n.frozen = false;
                false
            }
            _ => false,
        };
        if promoted {
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
    }

    /// The fence-peer handler as DRBD runs it when promoting without a connected peer:
    /// records the peer outdated (a Lease write) only for the tenure-holding node.
    fn fence_for_promotion(&mut self, i: usize) -> bool {
        if !self.nodes[i].api_ok {
            return false;
        }
        let me = self.nodes[i].config.node.clone();
        let peer = self.nodes[1 - i].config.node.clone();
        match fence_decision(&self.lease, &me, self.nodes[i].tenure.as_deref(), &peer) {
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
                match fence_decision(&self.lease, &me, self.nodes[i].tenure.as_deref(), &peer) {
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
            let may_serve = |w: &World, i: usize| {
                let n = &w.nodes[i];
                n.up && (n.role == Role::Primary || n.valid_holder(w.now))
            };
            if may_serve(self, 0) && may_serve(self, 1) {
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
                let observed = self.observe(i);
                self.start_actions(i, &observed);
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
mod tests {
    use super::*;

    fn replay(seed: u64, lease: Millis, events: &[(u16, Fault)]) -> World {
        run_scenario(
            seed,
            lease,
            events,
            std::env::var_os("HANFS_SIM_TRACE").is_some(),
        )
    }

    #[test]
    fn a_hand_edit_naming_the_old_holder_after_a_switchover_is_safe() {
        let world = replay(
            2118576506160205736,
            15000,
            &[(28, Fault::Switchover(0)), (0, Fault::SetHolder(Some(0)))],
        );
        assert!(world.violations.is_empty(), "{:?}", world.violations);
        assert!(world.one_serving());
    }

    #[test]
    fn scenario_two() {
        use Fault::*;
        let world = replay(
            3514700358563122236,
            15000,
            &[
                (9, Slow(0, true)),
                (14, Switchover(0)),
                (0, HealApi(0)),
                (28, Restart(0)),
                (54, Slow(1, true)),
                (22, SetHolder(Some(0))),
                (52, Restart(0)),
                (39, Restart(0)),
                (38, HealApi(0)),
                (3, Switchover(0)),
            ],
        );
        assert!(world.violations.is_empty(), "{:?}", world.violations);
    }

    #[test]
    fn scenario_three() {
        use Fault::*;
        let world = replay(
            3082468365312321550,
            15000,
            &[
                (0, CutApi(0)),
                (10, CutLink),
                (21, AgentRestart(0)),
                (79, Restart(0)),
            ],
        );
        assert!(world.violations.is_empty(), "{:?}", world.violations);
    }

    #[test]
    fn scenario_four() {
        use Fault::*;
        let world = replay(
            991706522318,
            6000,
            &[
                (20, HealApi(0)),
                (0, SetHolder(None)),
                (31, HealLink),
                (38, Crash(1)),
                (0, KillNfsd(0)),
                (2, CutApi(0)),
                (0, KillNfsd(0)),
                (0, SetHolder(None)),
            ],
        );
        assert!(world.violations.is_empty(), "{:?}", world.violations);
        assert!(world.one_serving());
    }

    /// The checks can fail: a node that never gives up Primary when it loses the API
    /// (no deadline, no last resort) is caught as soon as the peer takes over.
    #[test]
    fn the_checker_catches_a_holder_that_never_steps_down() {
        let reckless = HaConfig {
            renew_deadline: u64::MAX / 4,
            last_resort_after: u64::MAX / 2,
            lease_duration: 6000,
            ..HaConfig::with_lease("a", "b", 6000)
        };
        let mut world = World::with_configs(7, reckless, HaConfig::with_lease("b", "a", 6000));
        for _ in 0..200 {
            world.tick();
        }
        assert!(
            world.one_serving() && world.nodes[0].serving(),
            "a is active"
        );
        world.apply(Fault::CutApi(0));
        world.apply(Fault::CutLink);
        for _ in 0..200 {
            world.tick();
        }
        assert!(
            world
                .violations
                .iter()
                .any(|v| v.what.contains("both nodes")),
            "{:?}",
            world.violations
        );
    }

    /// The classic VM-pause hazard: the active stops (clock included) long enough for the
    /// peer to take over, then wakes believing its Lease is fresh. It is still Primary
    /// (nothing could demote it), but DRBD lost the connection, freezes its I/O, and the
    /// fence-peer handler refuses (it no longer holds the Lease): it never acknowledges a
    /// write again, and the peer keeps every acknowledged one.
    #[test]
    fn a_paused_active_whose_clock_stopped_never_acknowledges_after_waking() {
        let mut world = World::new(11, 6000);
        for _ in 0..170 {
            world.tick();
        }
        let active = if world.nodes[0].serving() { 0 } else { 1 };
        world.apply(Fault::Pause(active, 150, true));
        let mut peer_served = false;
        for _ in 0..300 {
            world.tick();
            peer_served |= world.nodes[1 - active].serving();
            let woke = world.now >= world.nodes[active].paused_until;
            if woke && world.nodes[active].serving() {
                assert!(
                    world.nodes[active].frozen,
                    "a woken stale active must be frozen"
                );
            }
        }
        assert!(peer_served, "the peer took over during the pause");
        assert!(world.violations.is_empty(), "{:?}", world.violations);
        assert!(
            world.stats.last_resorts >= 1 || !world.nodes[active].serving(),
            "the stale active stood down"
        );
    }

    #[test]
    fn scenario_five() {
        use Fault::*;
        let world = replay(
            14803522750110324434,
            6000,
            &[
                (31, KillNfsd(0)),
                (13, Pause(1, 5, false)),
                (4, Pause(1, 2, false)),
                (0, Crash(0)),
                (0, Restart(1)),
                (19, CutApi(0)),
                (45, Failing(0, 0)),
            ],
        );
        assert!(world.violations.is_empty(), "{:?}", world.violations);
    }

    /// A promotion started before a pause lands after the peer took over and fenced this
    /// node. Without a peer, DRBD's fence-peer handler at promotion time refuses it; with
    /// the peer connected and in sync, the data is current and nothing is lost.
    #[test]
    fn a_promotion_landing_after_a_pause_is_refused_by_the_fence_handler() {
        use Fault::*;
        let world = replay(
            2953117642372001580,
            6000,
            &[
                (11, HangUnmount(0, false)),
                (17, Restart(0)),
                (23, Restart(0)),
                (18, Switchover(1)),
                (15, Pause(0, 74, false)),
                (48, CutApi(0)),
                (0, Switchover(1)),
            ],
        );
        assert!(world.violations.is_empty(), "{:?}", world.violations);
    }
}

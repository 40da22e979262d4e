//! The pure core of the HA role manager: `decide(observed, config) -> Decision`.
//!
//! No I/O, no clocks: time comes in as `observed.now`, this node's *monotonic* clock in
//! milliseconds, and every "when" in [`Observed`] is on that same clock (DESIGN.md §4
//! rule 2: expiry is judged from when this node last saw the Lease change, never from
//! timestamps written by another machine).
//!
//! The decision has two lanes that the agent runs independently, so a slow stack action
//! (a mount replaying its log) never delays a lease renewal:
//! - `lease`: at most one Lease write (acquire, renew, release, clear a fence record);
//! - `stack`: the next steps towards the wanted role, in order. Becoming active:
//!   Primary → mount → nfsd → export → VIP (+ tickle ACKs). Standing down: the exact
//!   reverse, VIP first.
//!
//! plus `last_resort`: set when this node is still Primary at a point where the other
//! node may already hold the Lease; the agent must then freeze I/O or reboot.
//!
//! Safety rules (each checked by the property tests in `tests/ha_model.rs`, which run
//! this function inside the agent's state machine, [`crate::machine`]):
//! 1. Primary only while holding a Lease renewed within `renew_deadline`; the VIP only
//!    with Primary + mounted + exported.
//! 2. A holder that cannot renew stands down before `last_resort_after`, which is below
//!    the `lease_duration` after which the other node may take over.
//! 3. Never promote stale data: a node marked outdated in the Lease, or whose disk is not
//!    known to be current, does not become Primary (unless an administrator forces it).
//!
//! Time fails closed: an age is `now - then` with `checked_sub`, and a "then" in this
//! node's future is *unknown*, never "just now". An unknown age of this node's own
//! renewal makes the Lease invalid (stand down, backstop armed); an unknown age of the
//! Lease record's last change makes it not expired (never taken over on a guess).

use std::fmt;

/// Milliseconds on this node's monotonic clock.
pub type Millis = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// This node's name (the Lease holder identity).
    pub node: String,
    /// The other storage server.
    pub peer: String,
    /// How long after its last observed change a Lease counts as expired.
    pub lease_duration: Millis,
    /// The holder renews this long after its last successful renewal.
    pub renew_interval: Millis,
    /// A holder whose last successful renewal is older stops serving.
    pub renew_deadline: Millis,
    /// A node still Primary this long after its last renewal freezes I/O or reboots.
    pub last_resort_after: Millis,
    /// Longest a promote or VIP add may take: they start only if they finish in time.
    pub gated_step_timeout: Millis,
    /// Regressions of the running stack (a piece found down) before stepping down.
    pub health_failures_to_step_down: u32,
}

impl HaConfig {
    /// Timings derived from the Lease duration (DESIGN.md §4): stop serving at two
    /// thirds, last resort at five sixths. Renewing every sixth rather than every third
    /// costs one small write a second (6 s Lease) and brings a dead holder's expiry, as
    /// the peer sees it, 1/6 of a Lease closer to the death on average.
    pub fn with_lease(node: &str, peer: &str, lease_duration: Millis) -> Self {
        Self {
            node: node.to_owned(),
            peer: peer.to_owned(),
            lease_duration,
            renew_interval: lease_duration / 6,
            renew_deadline: lease_duration * 2 / 3,
            last_resort_after: lease_duration * 5 / 6,
            // Room for a promotion that runs DRBD's fence-peer handler (a Lease write),
            // as much as the rules allow with margin (the check: under renew_deadline -
            // renew_interval = 1/2): `drbdadm primary` alone took 0.5-0.6 s in the test
            // VMs (TCG), too close to a quarter of a 3 s Lease.
            gated_step_timeout: lease_duration * 5 / 12,
            health_failures_to_step_down: 2,
        }
    }

    /// Why these timings cannot keep the safety rules, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.node.is_empty() || self.peer.is_empty() || self.node == self.peer {
            return Err("node and peer names must be set and differ".into());
        }
        if !(self.renew_interval < self.renew_deadline
            && self.renew_deadline < self.last_resort_after
            && self.last_resort_after < self.lease_duration)
        {
            return Err(format!(
                "need renew_interval ({}) < renew_deadline ({}) < last_resort_after ({}) < lease_duration ({})",
                self.renew_interval,
                self.renew_deadline,
                self.last_resort_after,
                self.lease_duration
            ));
        }
        if self.gated_step_timeout >= self.renew_deadline - self.renew_interval {
            return Err(
                "gated_step_timeout must leave room between renewal and renew deadline".into(),
            );
        }
        Ok(())
    }
}

/// The Lease as stored in the API server (`coordination.k8s.io/v1`), with the data
/// currency record hanfs keeps in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    /// The API server's resourceVersion: every write is a compare-and-swap on it.
    pub version: String,
    /// A node the holder fenced while the replication link was down: its data is stale
    /// until it resyncs (DESIGN.md §4 rule 4).
    pub outdated: Option<String>,
    /// The last node that held the Lease while eligible: whose data is current when
    /// both restart without a peer to compare with.
    pub last_primary: Option<String>,
    /// Set by a planned switchover: this node may acquire at once, others wait for expiry.
    pub handover_to: Option<String>,
    /// A fresh id written by every acquisition, kept by renewals, cleared by a release.
    /// A node holds the Lease only under the tenure it wrote itself: a hand edit that
    /// names it holder, or a record from before its reboot, does not make it active.
    pub tenure: String,
}

/// What this node knows about the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub record: LeaseRecord,
    /// When this node first saw the current `record.version`.
    pub changed_at: Millis,
}

impl LeaseView {
    /// Folds a fresh read of the Lease into what this node knows: `changed_at` restarts
    /// only when the record differs from the one seen last, so an unchanged Lease ages
    /// towards expiry on this node's own clock.
    pub fn observe(view: &mut Option<LeaseView>, record: LeaseRecord, now: Millis) {
        if view.as_ref().is_none_or(|seen| seen.record != record) {
            *view = Some(LeaseView {
                record,
                changed_at: now,
            });
        }
    }
}

/// What this node remembers of its own tenure; the agent persists it (it survives agent
/// restarts, and the monotonic clock keeps counting), a reboot clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tenure {
    /// The tenure id this node's last acquisition wrote.
    pub id: Option<String>,
    /// When this node *sent* its last renewal (or acquisition) that succeeded. Sending
    /// time, not answer time, so the holder's view of its lease never outlives the
    /// API server's.
    pub renewed_at: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Secondary,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    UpToDate,
    /// Intact, but whether it is current cannot be told without the peer.
    Consistent,
    Outdated,
    Inconsistent,
    Diskless,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrbdView {
    pub role: Role,
    pub disk: Disk,
    pub connected: bool,
    pub peer_role: Role,
    pub peer_disk: Disk,
    /// I/O suspended by `fencing resource-and-stonith`: the fence-peer handler has not
    /// (yet) recorded the peer as outdated. Nothing is acknowledged meanwhile.
    pub io_frozen: bool,
}

/// The serving stack above DRBD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackView {
    pub mounted: bool,
    pub nfsd: bool,
    pub exported: bool,
    pub vip: bool,
}

impl StackView {
    pub fn any_up(&self) -> bool {
        self.mounted || self.nfsd || self.exported || self.vip
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Request {
    #[default]
    None,
    /// Hand the service to the peer (maintenance).
    Switchover,
    /// Become active even if the data may be stale (disaster recovery).
    ForcePromote,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub now: Millis,
    /// `None` until the Lease was read once.
    pub lease: Option<LeaseView>,
    pub tenure: Tenure,
    /// `None` when DRBD cannot be observed.
    pub drbd: Option<DrbdView>,
    pub stack: StackView,
    /// A stack step is still running: its effect (a promotion!) may land after this
    /// observation, so the Lease is neither released nor acquired meanwhile.
    pub stack_busy: bool,
    /// When (this node's clock) DRBD and the stack were last observed: the lease lane
    /// decides with the stack lane's latest observation, which may be older than the
    /// Lease record it reads.
    pub stack_observed_at: Millis,
    /// Regressions of the running stack while active (counted by the agent, which
    /// resets the count once the node has stood down).
    pub health_failures: u32,
    pub request: Request,
    /// This node cannot trust its own clock or identity: it stays (or becomes) standby.
    pub local_fault: Option<LocalFault>,
}

/// Something about this node itself that makes it unfit to serve, whatever the Lease says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalFault {
    /// The monotonic clock could not be read: no Lease age can be judged.
    ClockUnreadable,
    /// The kernel's boot id could not be read: a persisted tenure cannot be told from one
    /// written before a reboot, so none is trusted and none can be persisted.
    BootIdUnreadable,
}

impl fmt::Display for LocalFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LocalFault::ClockUnreadable => "the monotonic clock cannot be read",
            LocalFault::BootIdUnreadable => "the boot id cannot be read",
        })
    }
}

/// How long ago this node's last successful renewal was sent, on its own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// No renewal on record (never acquired, or the agent's state was lost).
    Never,
    Ago(Millis),
    /// Recorded in this node's future: the clock or the record cannot be trusted, so the
    /// age is unknown and counts as overdue (fail closed).
    Unknown,
}

impl Renewal {
    pub fn of(tenure: &Tenure, now: Millis) -> Renewal {
        match tenure.renewed_at {
            None => Renewal::Never,
            Some(at) => now.checked_sub(at).map_or(Renewal::Unknown, Renewal::Ago),
        }
    }

    /// Renewed less than `limit` ago, provably.
    pub fn within(self, limit: Millis) -> bool {
        matches!(self, Renewal::Ago(a) if a < limit)
    }
}

impl Observed {
    fn role(&self) -> Role {
        self.drbd.map_or(Role::Unknown, |d| d.role)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAction {
    Acquire,
    Renew,
    /// Give the Lease up (holder cleared), optionally reserved for the peer.
    Release {
        handover_to: Option<String>,
    },
    /// The fenced peer has resynced: its data is current again.
    ClearOutdated,
    /// What the fence-peer handler does, retried by the agent when the handler gave up
    /// (e.g. the API server was briefly unreachable) and I/O is still frozen.
    RecordPeerOutdated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackAction {
    Promote,
    /// `drbdadm primary --force`: only with a stated reason.
    PromoteForced {
        reason: String,
    },
    Mount,
    StartNfsd,
    Export,
    /// Adds the VIP, announces it (one gratuitous ARP), then sends the tickle ACKs so
    /// clients reconnect at once (DESIGN.md §4) — one step, because the stack lane runs
    /// one step per look and the tickles only make sense right after the VIP moves.
    AddVip,
    RemoveVip,
    Unexport,
    StopNfsd,
    Unmount,
    Demote,
    /// `drbdadm resume-io`, once the Lease records the peer as outdated.
    ResumeIo,
}

impl StackAction {
    /// Steps that create a writer or make one visible: they must finish while the Lease
    /// is still valid, so they start only with `gated_step_timeout` to spare.
    pub fn is_gated(&self) -> bool {
        matches!(
            self,
            StackAction::Promote | StackAction::PromoteForced { .. } | StackAction::AddVip
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub lease: Option<LeaseAction>,
    pub stack: Vec<StackAction>,
    pub last_resort: Option<String>,
    /// Where this node stands: what code branches on.
    pub phase: Phase,
    /// `phase` in a few words, for logs and the operator's status (never parsed).
    pub reason: String,
}

/// Where this node stands, as one decision sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    /// The Lease was never read: serve nothing.
    #[default]
    LeaseUnknown,
    /// Holding the Lease with the whole stack up.
    Active,
    /// Holding the Lease and bringing the stack up.
    BringingUp,
    /// Holding the Lease, standing down, then releasing it.
    StandingDown(StandDown),
    /// The Lease names this node but the renewal is overdue (or of unknown age):
    /// standing down while still trying to renew.
    RenewOverdue,
    /// Not holding; the Lease is free: acquiring.
    Acquiring,
    /// Not holding, eligible: waiting for the Lease.
    Standby,
    /// Not holding, and may not become Primary.
    Ineligible(Ineligible),
}

impl Phase {
    /// Holding the Lease and serving or about to serve: where stack failures count.
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Active | Phase::BringingUp)
    }

    /// Not holding the Lease.
    pub fn is_standby(self) -> bool {
        matches!(
            self,
            Phase::Acquiring | Phase::Standby | Phase::Ineligible(_)
        )
    }
}

/// Why a holder stands down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandDown {
    Switchover,
    Unhealthy,
    Ineligible(Ineligible),
}

/// Why this node may not become Primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    DrbdUnknown,
    MarkedOutdated,
    PeerPrimary,
    Disk(Disk),
    Local(LocalFault),
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::DrbdUnknown => f.write_str("DRBD state unknown"),
            Ineligible::MarkedOutdated => {
                f.write_str("marked outdated in the Lease by the peer; must resync first")
            }
            Ineligible::PeerPrimary => f.write_str("peer is Primary"),
            Ineligible::Disk(disk) => write!(f, "disk is {disk}"),
            Ineligible::Local(fault) => write!(f, "{fault}"),
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::LeaseUnknown => f.write_str("the Lease was never read: serve nothing"),
            Phase::Active => f.write_str("active"),
            Phase::BringingUp => f.write_str("active: bringing the stack up"),
            Phase::StandingDown(StandDown::Switchover) => {
                f.write_str("switchover: standing down, then handing the Lease to the peer")
            }
            Phase::StandingDown(StandDown::Unhealthy) => {
                f.write_str("stack unhealthy: standing down, then handing the Lease to the peer")
            }
            Phase::StandingDown(StandDown::Ineligible(why)) => {
                write!(
                    f,
                    "holding the Lease but not eligible ({why}): standing down"
                )
            }
            Phase::RenewOverdue => {
                f.write_str("Lease not renewed within the deadline: standing down")
            }
            Phase::Acquiring => f.write_str("Lease free: acquiring"),
            Phase::Standby => f.write_str("standby"),
            Phase::Ineligible(why) => write!(f, "standby, not eligible: {why}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PromoteKind {
    Normal,
    Forced(String),
}

impl fmt::Display for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Whether this node's data may become Primary, and how.
fn eligibility(
    o: &Observed,
    c: &HaConfig,
    record: &LeaseRecord,
) -> Result<PromoteKind, Ineligible> {
    if let Some(fault) = o.local_fault {
        return Err(Ineligible::Local(fault));
    }
    let Some(drbd) = o.drbd else {
        return Err(Ineligible::DrbdUnknown);
    };
    if o.request == Request::ForcePromote {
        return Ok(PromoteKind::Forced(
            "administrator force-promote: data may be stale".into(),
        ));
    }
    if record.outdated.as_deref() == Some(c.node.as_str()) {
        return Err(Ineligible::MarkedOutdated);
    }
    if drbd.connected && drbd.peer_role == Role::Primary {
        return Err(Ineligible::PeerPrimary);
    }
    match drbd.disk {
        Disk::UpToDate => Ok(PromoteKind::Normal),
        // Restarted without a peer to compare with: current only if we were the last
        // Primary (the peer never held the Lease since).
        Disk::Consistent if record.last_primary.as_deref() == Some(c.node.as_str()) => Ok(
            PromoteKind::Forced("last Primary, peer unreachable: own data is current".into()),
        ),
        disk => Err(Ineligible::Disk(disk)),
    }
}

/// Steps that stand the node down, VIP first, Demote last.
/// Whether this node may be Primary: it is, or DRBD cannot be observed while the Lease
/// names this node (a failed `drbdsetup` must not read as "safely Secondary").
fn maybe_primary(o: &Observed, c: &HaConfig) -> bool {
    match o.role() {
        Role::Primary => true,
        Role::Secondary => false,
        Role::Unknown => o
            .lease
            .as_ref()
            .is_some_and(|v| v.record.holder.as_deref() == Some(c.node.as_str())),
    }
}

fn teardown(o: &Observed, c: &HaConfig) -> Vec<StackAction> {
    let s = o.stack;
    let mut steps = Vec::new();
    if s.vip {
        steps.push(StackAction::RemoveVip);
    }
    if s.exported {
        steps.push(StackAction::Unexport);
    }
    if s.nfsd {
        steps.push(StackAction::StopNfsd);
    }
    if s.mounted {
        steps.push(StackAction::Unmount);
    }
    if maybe_primary(o, c) {
        steps.push(StackAction::Demote);
    }
    steps
}

/// Steps that bring the node up, in order, each after the ones before it; gated steps
/// only while `room` allows them to finish within the Lease.
fn bring_up(o: &Observed, kind: &PromoteKind, gated_room: bool) -> Vec<StackAction> {
    let s = o.stack;
    let mut steps = Vec::new();
    if o.role() != Role::Primary {
        if !gated_room {
            return steps;
        }
        steps.push(match kind {
            PromoteKind::Normal => StackAction::Promote,
            PromoteKind::Forced(reason) => StackAction::PromoteForced {
                reason: reason.clone(),
            },
        });
    }
    if !s.mounted {
        steps.push(StackAction::Mount);
    }
    if !s.nfsd {
        steps.push(StackAction::StartNfsd);
    }
    if !s.exported {
        steps.push(StackAction::Export);
    }
    if !s.vip && gated_room {
        steps.push(StackAction::AddVip);
    }
    steps
}

/// A Lease is free at once only when its holder released it (which clears the tenure,
/// after standing down) — and then only for the node it was handed to, if any. Any
/// other record (a holder who went silent, a holder cleared by hand) is free once it
/// has not changed for a whole `lease_duration` on this node's clock.
fn lease_available(o: &Observed, c: &HaConfig, view: &LeaseView) -> bool {
    let record = &view.record;
    // A change seen "in the future" has an unknown age: not expired (fail closed).
    let expired = o
        .now
        .checked_sub(view.changed_at)
        .is_some_and(|age| age >= c.lease_duration);
    let released = record.holder.is_none() && record.tenure.is_empty();
    let handed_to_me = record.handover_to.as_deref().is_none_or(|to| to == c.node);
    expired || (released && handed_to_me)
}

pub fn decide(o: &Observed, c: &HaConfig) -> Decision {
    let age = Renewal::of(&o.tenure, o.now);
    let mut d = match &o.lease {
        Some(view) => decide_with_lease(o, c, view, age),
        None => Decision {
            stack: teardown(o, c),
            phase: Phase::LeaseUnknown,
            ..Default::default()
        },
    };
    let record = o.lease.as_ref().map(|v| &v.record);
    let valid = record.is_some_and(|r| holds(o, c, r)) && age.within(c.renew_deadline);
    // The backstop: Primary when the other node may already own the Lease.
    if maybe_primary(o, c) && !valid {
        let overdue = match age {
            Renewal::Ago(a) => a >= c.last_resort_after,
            // No renewal on record (agent state lost) and someone else holds it.
            Renewal::Never => {
                record.is_some_and(|r| r.holder.as_deref().is_some_and(|h| h != c.node))
            }
            // A renewal "in the future": nothing proves the peer has not taken over.
            Renewal::Unknown => true,
        };
        if overdue {
            d.last_resort = Some(format!(
                "still Primary (or DRBD unobservable) {} ms after the last Lease renewal (limit {} ms): the peer may take over now",
                match age {
                    Renewal::Ago(a) => a.to_string(),
                    Renewal::Never | Renewal::Unknown => "?".to_string(),
                },
                c.last_resort_after
            ));
        }
    }
    d.reason = d.phase.to_string();
    d
}

/// Holding means holding under the tenure this node wrote itself: a record naming it
/// that it did not write (hand edit, or from before a reboot) must first expire and be
/// re-acquired.
fn holds(o: &Observed, c: &HaConfig, record: &LeaseRecord) -> bool {
    record.holder.as_deref() == Some(c.node.as_str())
        && o.tenure.renewed_at.is_some()
        && o.tenure.id.as_deref() == Some(record.tenure.as_str())
}

fn decide_with_lease(o: &Observed, c: &HaConfig, view: &LeaseView, age: Renewal) -> Decision {
    let mut d = Decision::default();
    let record = &view.record;
    let holder_is_me = holds(o, c, record);
    let valid = holder_is_me && age.within(c.renew_deadline);
    let want_down =
        o.request == Request::Switchover || o.health_failures >= c.health_failures_to_step_down;
    let eligible = eligibility(o, c, record);

    if holder_is_me && (want_down || eligible.is_err()) {
        d.stack = teardown(o, c);
        // Released only once DRBD is seen Secondary: never while its state is unknown.
        if d.stack.is_empty() && !o.stack_busy && o.role() == Role::Secondary {
            let handover_to = want_down.then(|| c.peer.clone());
            d.lease = Some(LeaseAction::Release { handover_to });
        }
        d.phase = Phase::StandingDown(match (&eligible, o.request) {
            (_, Request::Switchover) => StandDown::Switchover,
            (Err(why), _) => StandDown::Ineligible(*why),
            _ => StandDown::Unhealthy,
        });
    } else if holder_is_me {
        if !age.within(c.renew_interval) {
            d.lease = Some(LeaseAction::Renew);
        }
        if valid {
            let kind = eligible.unwrap_or(PromoteKind::Normal);
            let gated_room = age.within(c.renew_deadline.saturating_sub(c.gated_step_timeout));
            d.stack = bring_up(o, &kind, gated_room);
            // Frozen by fencing and the handler gave up: do its job, then resume I/O.
            if o.drbd.is_some_and(|x| x.io_frozen && !x.connected) {
                if record.outdated.as_deref() == Some(c.peer.as_str()) {
                    d.stack.insert(0, StackAction::ResumeIo);
                } else if d.lease.is_none() {
                    d.lease = Some(LeaseAction::RecordPeerOutdated);
                }
            }
            let peer_resynced = o
                .drbd
                .is_some_and(|x| x.connected && x.peer_disk == Disk::UpToDate);
            // Only an observation made after this record was seen proves the fenced peer
            // resynced *since* the fence (an older one could predate a new disconnection).
            let fresh = o.stack_observed_at > view.changed_at;
            if d.lease.is_none()
                && record.outdated.as_deref() == Some(c.peer.as_str())
                && peer_resynced
                && fresh
            {
                d.lease = Some(LeaseAction::ClearOutdated);
            }
            d.phase = if d.stack.is_empty() {
                Phase::Active
            } else {
                Phase::BringingUp
            };
        } else {
            d.stack = teardown(o, c);
            d.phase = Phase::RenewOverdue;
        }
    } else {
        d.stack = teardown(o, c);
        let down = d.stack.is_empty() && !o.stack_busy;
        d.phase = match &eligible {
            Ok(_) if down && lease_available(o, c, view) => {
                d.lease = Some(LeaseAction::Acquire);
                Phase::Acquiring
            }
            Ok(_) => Phase::Standby,
            Err(why) => Phase::Ineligible(*why),
        };
    }

    d
}

/// What the fence-peer handler answers DRBD (DESIGN.md §4 rule 4): record the peer as
/// outdated in the Lease only while holding it, so frozen I/O resumes only when the peer
/// provably cannot be promoted.
///
/// The record is written even when it already names the peer: the write changes the
/// Lease's version, so an unfence the active decided before this disconnection (a
/// `ClearOutdated` still in flight) fails its compare-and-swap instead of erasing the
/// record the resumed writes depend on. (The property tests found that race.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceDecision {
    /// Write `outdated = peer` (a compare-and-swap on the record's version).
    RecordOutdated,
    /// Not the holder: refuse; DRBD keeps I/O frozen.
    Refuse(String),
}

pub fn fence_decision(
    record: &LeaseRecord,
    node: &str,
    my_tenure: Option<&str>,
    peer: &str,
) -> FenceDecision {
    if record.holder.as_deref() != Some(node) || my_tenure != Some(record.tenure.as_str()) {
        return FenceDecision::Refuse(format!(
            "this node ({node}) does not hold the Lease (holder: {}): cannot vouch that {peer} stays down",
            record.holder.as_deref().unwrap_or("nobody")
        ));
    }
    FenceDecision::RecordOutdated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HaConfig {
        HaConfig::with_lease("a", "b", 6000)
    }

    /// A Lease view plus this node's tenure (renewed at `renewed_at` under tenure "t1").
    fn lease(
        holder: Option<&str>,
        changed_at: Millis,
        renewed_at: Option<Millis>,
    ) -> (LeaseView, Tenure) {
        let record = LeaseRecord {
            holder: holder.map(str::to_owned),
            version: "1".into(),
            tenure: "t1".into(),
            ..Default::default()
        };
        (
            LeaseView { record, changed_at },
            Tenure {
                id: renewed_at.map(|_| "t1".to_string()),
                renewed_at,
            },
        )
    }

    #[test]
    fn an_unchanged_lease_keeps_its_changed_at() {
        let (first, _) = lease(Some("b"), 0, None);
        let mut view = None;
        LeaseView::observe(&mut view, first.record.clone(), 100);
        assert_eq!(view.as_ref().map(|v| v.changed_at), Some(100));
        LeaseView::observe(&mut view, first.record.clone(), 200);
        assert_eq!(view.as_ref().map(|v| v.changed_at), Some(100));
        let renewed = LeaseRecord {
            version: "2".into(),
            ..first.record
        };
        LeaseView::observe(&mut view, renewed.clone(), 300);
        assert_eq!(
            view,
            Some(LeaseView {
                record: renewed,
                changed_at: 300
            })
        );
    }

    fn drbd(role: Role, disk: Disk) -> DrbdView {
        DrbdView {
            role,
            disk,
            connected: true,
            peer_role: Role::Secondary,
            peer_disk: Disk::UpToDate,
            io_frozen: false,
        }
    }

    fn observed(
        now: Millis,
        lease: Option<(LeaseView, Tenure)>,
        drbd_view: DrbdView,
        stack: StackView,
    ) -> Observed {
        let (lease, tenure) = match lease {
            Some((view, tenure)) => (Some(view), tenure),
            None => (None, Tenure::default()),
        };
        Observed {
            now,
            lease,
            tenure,
            drbd: Some(drbd_view),
            stack,
            stack_busy: false,
            stack_observed_at: now,
            health_failures: 0,
            request: Request::None,
            local_fault: None,
        }
    }

    const ALL_UP: StackView = StackView {
        mounted: true,
        nfsd: true,
        exported: true,
        vip: true,
    };

    #[test]
    fn default_timings_are_consistent() {
        config().check().unwrap();
        assert!(
            HaConfig {
                renew_deadline: 7000,
                ..config()
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn a_fresh_holder_brings_the_stack_up_in_order() {
        let o = observed(
            1000,
            Some(lease(Some("a"), 900, Some(900))),
            drbd(Role::Secondary, Disk::UpToDate),
            StackView::default(),
        );
        let d = decide(&o, &config());
        assert_eq!(d.lease, None);
        assert_eq!(
            d.stack,
            vec![
                StackAction::Promote,
                StackAction::Mount,
                StackAction::StartNfsd,
                StackAction::Export,
                StackAction::AddVip,
            ]
        );
    }

    #[test]
    fn a_holder_past_its_deadline_stands_down_vip_first_and_last_resort_follows() {
        let c = config();
        let o = observed(
            5000,
            Some(lease(Some("a"), 900, Some(900))),
            drbd(Role::Primary, Disk::UpToDate),
            ALL_UP,
        );
        let d = decide(&o, &c);
        assert_eq!(d.stack.first(), Some(&StackAction::RemoveVip));
        assert_eq!(d.stack.last(), Some(&StackAction::Demote));
        assert_eq!(
            d.lease,
            Some(LeaseAction::Renew),
            "keeps trying to renew meanwhile"
        );
        assert!(d.last_resort.is_none(), "4100 ms < last resort at 5000 ms");
        let later = Observed {
            now: 900 + c.last_resort_after,
            ..o
        };
        assert!(decide(&later, &c).last_resort.is_some());
    }

    #[test]
    fn the_standby_waits_a_full_lease_from_its_own_observation() {
        let c = config();
        let o = |now| {
            observed(
                now,
                Some(lease(Some("b"), 10_000, None)),
                drbd(Role::Secondary, Disk::UpToDate),
                StackView::default(),
            )
        };
        assert_eq!(decide(&o(15_999), &c).lease, None);
        assert_eq!(decide(&o(16_000), &c).lease, Some(LeaseAction::Acquire));
    }

    #[test]
    fn stale_or_unknown_data_is_never_promoted() {
        let c = config();
        // (Each Lease here expired long ago: now = 100 s, last change at 0.)
        let mut view = lease(None, 0, None);
        view.0.record.outdated = Some("a".into());
        let o = observed(
            100_000,
            Some(view.clone()),
            drbd(Role::Secondary, Disk::UpToDate),
            StackView::default(),
        );
        assert_eq!(decide(&o, &c).lease, None, "marked outdated");
        let o = observed(
            100_000,
            Some(lease(None, 0, None)),
            drbd(Role::Secondary, Disk::Consistent),
            StackView::default(),
        );
        assert_eq!(
            decide(&o, &c).lease,
            None,
            "consistent but not the last primary"
        );
        let mut last = lease(None, 0, None);
        last.0.record.last_primary = Some("a".into());
        let o = observed(
            100_000,
            Some(last),
            drbd(Role::Secondary, Disk::Consistent),
            StackView::default(),
        );
        assert_eq!(
            decide(&o, &c).lease,
            Some(LeaseAction::Acquire),
            "the last primary may restart alone"
        );
        let forced = Observed {
            request: Request::ForcePromote,
            ..observed(
                100_000,
                Some(view),
                drbd(Role::Secondary, Disk::Outdated),
                StackView::default(),
            )
        };
        assert_eq!(
            decide(&forced, &c).lease,
            Some(LeaseAction::Acquire),
            "an administrator may force"
        );
    }

    #[test]
    fn switchover_stands_down_then_hands_the_lease_to_the_peer() {
        let c = config();
        let mut o = observed(
            1000,
            Some(lease(Some("a"), 900, Some(900))),
            drbd(Role::Primary, Disk::UpToDate),
            ALL_UP,
        );
        o.request = Request::Switchover;
        assert_eq!(decide(&o, &c).stack.first(), Some(&StackAction::RemoveVip));
        o.stack = StackView::default();
        o.drbd = Some(drbd(Role::Secondary, Disk::UpToDate));
        assert_eq!(
            decide(&o, &c).lease,
            Some(LeaseAction::Release {
                handover_to: Some("b".into())
            })
        );
        // The peer, named in the handover, acquires without waiting for expiry.
        let mut view = lease(None, 1000, None);
        view.0.record.handover_to = Some("b".into());
        view.0.record.tenure.clear();
        let peer = observed(
            1001,
            Some(view),
            drbd(Role::Secondary, Disk::UpToDate),
            StackView::default(),
        );
        assert_eq!(
            decide(&peer, &HaConfig::with_lease("b", "a", 6000)).lease,
            Some(LeaseAction::Acquire)
        );
    }

    #[test]
    fn the_fence_record_is_written_only_by_the_holder() {
        let mut record = LeaseRecord {
            holder: Some("a".into()),
            tenure: "t1".into(),
            ..Default::default()
        };
        assert_eq!(
            fence_decision(&record, "a", Some("t1"), "b"),
            FenceDecision::RecordOutdated
        );
        assert!(
            matches!(
                fence_decision(&record, "a", Some("t0"), "b"),
                FenceDecision::Refuse(_)
            ),
            "old tenure"
        );
        record.outdated = Some("b".into());
        assert_eq!(
            fence_decision(&record, "a", Some("t1"), "b"),
            FenceDecision::RecordOutdated,
            "written again, to win over an unfence in flight"
        );
        assert!(matches!(
            fence_decision(&record, "b", Some("t1"), "a"),
            FenceDecision::Refuse(_)
        ));
    }

    #[test]
    fn a_holder_frozen_by_fencing_records_the_peer_then_resumes_io() {
        let c = config();
        let mut frozen = drbd(Role::Primary, Disk::UpToDate);
        frozen.connected = false;
        frozen.io_frozen = true;
        let mut o = observed(1000, Some(lease(Some("a"), 900, Some(900))), frozen, ALL_UP);
        assert_eq!(decide(&o, &c).lease, Some(LeaseAction::RecordPeerOutdated));
        o.lease.as_mut().unwrap().record.outdated = Some("b".into());
        let d = decide(&o, &c);
        assert_eq!(d.stack.first(), Some(&StackAction::ResumeIo));
        assert_eq!(d.lease, None);
    }

    #[test]
    fn a_renewal_in_the_future_is_of_unknown_age_not_fresh() {
        let c = config();
        // Renewed "at 9000" while the clock reads 5000: the clock or the record is wrong.
        let o = observed(
            5000,
            Some(lease(Some("a"), 900, Some(9000))),
            drbd(Role::Primary, Disk::UpToDate),
            ALL_UP,
        );
        assert_eq!(Renewal::of(&o.tenure, o.now), Renewal::Unknown);
        let d = decide(&o, &c);
        assert_eq!(d.phase, Phase::RenewOverdue, "not a valid holder");
        assert_eq!(d.stack.first(), Some(&StackAction::RemoveVip));
        assert_eq!(
            d.lease,
            Some(LeaseAction::Renew),
            "a renewal makes it known again"
        );
        assert!(
            d.last_resort.is_some(),
            "Primary with an unknown age: the backstop"
        );
        // The same with an honest age is a healthy active.
        let honest = Observed { now: 9500, ..o };
        assert_eq!(decide(&honest, &c).phase, Phase::Active);
    }

    #[test]
    fn a_lease_change_seen_in_the_future_is_not_expired() {
        let c = config();
        let o = observed(
            5000,
            Some(lease(Some("b"), 90_000, None)),
            drbd(Role::Secondary, Disk::UpToDate),
            StackView::default(),
        );
        let d = decide(&o, &c);
        assert_eq!(
            (d.lease, d.phase),
            (None, Phase::Standby),
            "never taken over on a guess"
        );
        // Only a whole Lease duration after the change, on this clock, frees it.
        let later = Observed {
            now: 90_000 + c.lease_duration,
            ..o
        };
        assert_eq!(decide(&later, &c).lease, Some(LeaseAction::Acquire));
    }

    #[test]
    fn a_local_fault_keeps_a_standby_out_even_when_forced() {
        let c = config();
        let mut o = observed(
            100_000,
            Some(lease(None, 0, None)),
            drbd(Role::Secondary, Disk::UpToDate),
            StackView::default(),
        );
        o.request = Request::ForcePromote;
        o.local_fault = Some(LocalFault::ClockUnreadable);
        let d = decide(&o, &c);
        assert_eq!(d.lease, None);
        assert_eq!(
            d.phase,
            Phase::Ineligible(Ineligible::Local(LocalFault::ClockUnreadable))
        );
        assert!(d.reason.contains("clock"), "{}", d.reason);
    }

    #[test]
    fn an_unobservable_drbd_is_treated_as_maybe_primary_by_the_holder() {
        let c = config();
        let mut o = observed(
            5000,
            Some(lease(Some("a"), 900, Some(900))),
            drbd(Role::Primary, Disk::UpToDate),
            StackView::default(),
        );
        o.drbd = None;
        let d = decide(&o, &c);
        assert_eq!(
            d.stack,
            vec![StackAction::Demote],
            "demote what may be Primary"
        );
        assert!(
            !matches!(d.lease, Some(LeaseAction::Release { .. })),
            "never release while unknown"
        );
        let later = Observed {
            now: 900 + c.last_resort_after,
            ..o.clone()
        };
        assert!(
            decide(&later, &c).last_resort.is_some(),
            "the backstop applies too"
        );
        // A standby whose DRBD is down is left alone.
        let mut standby = observed(
            5000,
            Some(lease(Some("b"), 900, None)),
            drbd(Role::Secondary, Disk::UpToDate),
            StackView::default(),
        );
        standby.drbd = None;
        assert!(decide(&standby, &c).stack.is_empty());
    }
}

//! The agent loop: observe → [`decide`] → act, in two lanes that never wait for each
//! other (DESIGN.md §4):
//!
//! - the **lease lane** reads the Lease every tick, performs at most one Lease write
//!   (acquire, renew, release, clear a fence record) and runs the last-resort backstop
//!   — nothing in it waits for a mount or a hung NFS server;
//! - the **stack lane** observes DRBD and the serving stack and runs the next stack step
//!   under a timeout.
//!
//! Both decide from one shared snapshot. What the agent must remember across restarts
//! — its tenure and when it last renewed — is persisted in its state directory together
//! with the boot id, because the monotonic clock restarts with the machine.

use super::decide::{
    Decision, DrbdView, HaConfig, LeaseAction, LeaseRecord, LeaseView, Millis, Observed, Request,
    StackAction, StackView, Tenure, decide,
};
use crate::drivers::lease::{LeaseClient, LeaseError};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the stack lane sees of DRBD and the serving stack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackObservation {
    pub drbd: Option<DrbdView>,
    pub stack: StackView,
    /// Something is wrong with a running piece that its flags cannot say (the
    /// filesystem is mounted but takes no writes): counted as a stack failure.
    pub unhealthy: Option<Unhealthy>,
}

/// A health problem of the running stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy {
    pub problem: String,
    /// It will not go away by itself (the filesystem answers writes with EIO/EROFS: a
    /// shut-down XFS stays so until unmounted), so the node hands over at once instead
    /// of waiting for a second failure while clients get errors.
    pub lasting: bool,
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.problem)
    }
}

impl StackObservation {
    /// The observation after `step` succeeded, where its effect is certain (a tool that
    /// returned success did what it says), so the next step of a chain can be decided
    /// without spawning the observation tools again; `None` where only a real look can
    /// tell (`ResumeIo`). Health is not judged on a prediction.
    pub fn after(&self, step: &StackAction) -> Option<StackObservation> {
        let mut next = self.clone();
        match step {
            StackAction::Promote | StackAction::PromoteForced { .. } => {
                next.drbd.as_mut()?.role = super::decide::Role::Primary;
            }
            StackAction::Demote => next.drbd.as_mut()?.role = super::decide::Role::Secondary,
            StackAction::Mount => next.stack.mounted = true,
            StackAction::Unmount => next.stack.mounted = false,
            StackAction::StartNfsd => next.stack.nfsd = true,
            StackAction::StopNfsd => next.stack.nfsd = false,
            StackAction::Export => next.stack.exported = true,
            StackAction::Unexport => next.stack.exported = false,
            StackAction::AddVip => next.stack.vip = true,
            StackAction::RemoveVip => next.stack.vip = false,
            StackAction::ResumeIo => return None,
        }
        next.unhealthy = None;
        Some(next)
    }
}

/// The things the agent drives below the Lease: DRBD, the filesystem, nfsd, the VIP.
/// Production uses the drivers; tests may substitute recording doubles.
pub trait Stack: Send + Sync + 'static {
    fn observe(&self) -> impl Future<Output = StackObservation> + Send;
    fn run(&self, step: &StackAction) -> impl Future<Output = Result<(), String>> + Send;
    /// Freeze I/O or reboot: the node is Primary when the peer may already be active.
    fn last_resort(&self, reason: &str) -> impl Future<Output = ()> + Send;
}

/// Monotonic milliseconds, system-wide (survive agent restarts, not reboots).
pub fn monotonic_ms() -> Millis {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[derive(Debug, Serialize, Deserialize)]
struct PersistedTenure {
    boot_id: String,
    id: Option<String>,
    renewed_at: Option<Millis>,
}

/// Loads the tenure persisted in `state_dir`; nothing after a reboot.
pub fn load_tenure(state_dir: &Path) -> Tenure {
    let path = state_dir.join("tenure.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Tenure::default();
    };
    match serde_json::from_slice::<PersistedTenure>(&bytes) {
        Ok(p) if p.boot_id == boot_id() => Tenure {
            id: p.id,
            renewed_at: p.renewed_at,
        },
        Ok(_) => Tenure::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable tenure file");
            Tenure::default()
        }
    }
}

fn store_tenure(state_dir: &Path, tenure: &Tenure) {
    let record = PersistedTenure {
        boot_id: boot_id(),
        id: tenure.id.clone(),
        renewed_at: tenure.renewed_at,
    };
    let path = state_dir.join("tenure.json");
    let tmp = state_dir.join("tenure.json.tmp");
    let result = serde_json::to_vec(&record)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = result {
        tracing::error!(path = %path.display(), error = %e, "cannot persist the tenure: an agent restart will stand down");
    }
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub ha: HaConfig,
    /// How often each lane looks.
    pub tick: Duration,
    /// Where the tenure is persisted (tmpfs is right: it must not survive a reboot).
    pub state_dir: PathBuf,
    /// Limit for stack steps that are not gated (mount, nfsd, export, unmount…).
    pub step_timeout: Duration,
}

/// What an operator sees (`status`) and what the metrics report.
#[derive(Debug, Clone, Default)]
pub struct AgentStatus {
    pub lease: Option<LeaseView>,
    pub tenure: Tenure,
    pub observation: StackObservation,
    pub stack_busy: bool,
    /// When the stack lane stored `observation` (monotonic ms).
    pub observed_at: Millis,
    pub health_failures: u32,
    /// Since when the active stack has been fully up and healthy (monotonic ms).
    pub healthy_since: Option<Millis>,
    pub request: Request,
    pub last_decision: Decision,
    pub lease_error: Option<String>,
    pub last_step_error: Option<String>,
    /// Consecutive failed stack steps while bringing the stack up.
    pub failed_steps: u32,
    /// Acquisitions by this node.
    pub acquisitions: u64,
    /// When this node last acquired the Lease (monotonic ms), until the stack is up.
    pub acquired_at: Option<Millis>,
    /// Acquisition → VIP up, for the last takeover.
    pub last_takeover_ms: Option<Millis>,
    pub last_resorts: u64,
    pub now: Millis,
}

impl AgentStatus {
    fn observed(&self, now: Millis) -> Observed {
        Observed {
            now,
            lease: self.lease.clone(),
            tenure: self.tenure.clone(),
            drbd: self.observation.drbd,
            stack: self.observation.stack,
            stack_busy: self.stack_busy,
            stack_observed_at: self.observed_at,
            health_failures: self.health_failures,
            request: self.request,
        }
    }
}

/// A handle on a running agent: status and operator requests.
#[derive(Clone, Default)]
pub struct AgentHandle {
    shared: Arc<Mutex<AgentStatus>>,
    /// Wakes the lease lane before its tick when the stack lane made a Lease action
    /// possible (DRBD demoted: release).
    wake: Arc<tokio::sync::Notify>,
}

impl AgentHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, AgentStatus> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn status(&self) -> AgentStatus {
        let mut status = self.lock().clone();
        status.now = monotonic_ms();
        status
    }

    pub fn request(&self, request: Request) {
        if request == Request::ForcePromote {
            tracing::warn!(
                "FORCE-PROMOTE requested: this node will become Primary even if its data is stale; writes acknowledged by the peer since may be lost"
            );
        }
        self.lock().request = request;
    }
}

pub struct Agent<S: Stack> {
    config: AgentConfig,
    lease: LeaseClient,
    stack: Arc<S>,
    handle: AgentHandle,
}

impl<S: Stack> Agent<S> {
    pub fn new(config: AgentConfig, lease: LeaseClient, stack: S) -> Self {
        let handle = AgentHandle::default();
        handle.lock().tenure = load_tenure(&config.state_dir);
        Self {
            config,
            lease,
            stack: Arc::new(stack),
            handle,
        }
    }

    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// Runs both lanes until `shutdown` resolves. Shutdown leaves the roles as they are:
    /// a restarted agent picks up its persisted tenure (stopping the service is what
    /// `switchover` is for).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let lease_lane = lease_lane(
            self.config.clone(),
            self.lease.clone(),
            self.stack.clone(),
            self.handle.clone(),
        );
        let stack_lane = stack_lane(self.config.clone(), self.stack.clone(), self.handle.clone());
        tokio::select! {
            _ = lease_lane => {}
            _ = stack_lane => {}
            _ = shutdown => tracing::info!("agent stopping"),
        }
    }
}

fn decide_now(config: &AgentConfig, handle: &AgentHandle) -> (Observed, Decision) {
    let observed = handle.lock().observed(monotonic_ms());
    let decision = decide(&observed, &config.ha);
    (observed, decision)
}

async fn lease_lane<S: Stack>(
    config: AgentConfig,
    lease: LeaseClient,
    stack: Arc<S>,
    handle: AgentHandle,
) {
    let mut ticks = tokio::time::interval(config.tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = handle.wake.notified() => {}
        }
        match lease.read().await {
            Ok(record) => {
                let now = monotonic_ms();
                let mut status = handle.lock();
                status.lease_error = None;
                LeaseView::observe(&mut status.lease, record, now);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the Lease");
                handle.lock().lease_error = Some(e.to_string());
            }
        }
        let (observed, decision) = decide_now(&config, &handle);
        if let Some(reason) = &decision.last_resort {
            tracing::error!(%reason, "LAST RESORT");
            handle.lock().last_resorts += 1;
            stack.last_resort(reason).await;
        }
        if let Some(action) = decision.lease.clone() {
            perform_lease_action(&config, &lease, &handle, &observed, action).await;
        }
        let mut status = handle.lock();
        if status.last_decision.reason != decision.reason {
            tracing::info!(reason = %decision.reason, "decision");
        }
        status.last_decision = decision;
    }
}

async fn perform_lease_action(
    config: &AgentConfig,
    lease: &LeaseClient,
    handle: &AgentHandle,
    observed: &Observed,
    action: LeaseAction,
) {
    let Some(view) = &observed.lease else { return };
    let me = config.ha.node.clone();
    let mut record: LeaseRecord = view.record.clone();
    let mut tenure = observed.tenure.clone();
    let sent = monotonic_ms();
    match &action {
        LeaseAction::Acquire => {
            let id = format!("{me}-{}", uuid::Uuid::new_v4().simple());
            record.holder = Some(me.clone());
            record.tenure = id.clone();
            record.last_primary = Some(me.clone());
            record.handover_to = None;
            if observed.request == Request::ForcePromote {
                // The administrator overrides the fence record: keeping it would make this
                // node stand itself down again right after the forced promotion.
                tracing::warn!(outdated = ?record.outdated, "force-promote: clearing the fence record");
                record.outdated = None;
            }
            tenure.id = Some(id);
        }
        LeaseAction::Renew => {}
        LeaseAction::Release { handover_to } => {
            record.holder = None;
            record.tenure.clear();
            record.handover_to = handover_to.clone();
        }
        LeaseAction::ClearOutdated => record.outdated = None,
        LeaseAction::RecordPeerOutdated => record.outdated = Some(config.ha.peer.clone()),
    }
    match lease.write(&record, action == LeaseAction::Acquire).await {
        Ok(version) => {
            record.version = version;
            let now = monotonic_ms();
            let mut status = handle.lock();
            match &action {
                LeaseAction::Acquire | LeaseAction::Renew => {
                    tenure.renewed_at = Some(sent);
                    status.tenure = tenure.clone();
                    store_tenure(&config.state_dir, &tenure);
                }
                LeaseAction::Release { .. } => {
                    status.tenure.id = None;
                    store_tenure(&config.state_dir, &status.tenure);
                    if status.request == Request::Switchover {
                        status.request = Request::None;
                    }
                    status.health_failures = 0;
                }
                LeaseAction::ClearOutdated | LeaseAction::RecordPeerOutdated => {}
            }
            if action == LeaseAction::Acquire {
                status.acquisitions += 1;
                status.acquired_at = Some(sent);
                tracing::info!(tenure = ?tenure.id, "Lease acquired");
            } else if action != LeaseAction::Renew {
                tracing::info!(?action, "Lease written");
            }
            status.lease = Some(LeaseView {
                record,
                changed_at: now,
            });
            status.lease_error = None;
        }
        Err(LeaseError::Conflict { .. }) => {
            tracing::info!(?action, "Lease changed meanwhile; deciding again")
        }
        Err(e) => {
            tracing::warn!(?action, error = %e, "Lease write failed");
            handle.lock().lease_error = Some(e.to_string());
        }
    }
}

async fn stack_lane<S: Stack>(config: AgentConfig, stack: Arc<S>, handle: AgentHandle) {
    let mut ticks = tokio::time::interval(config.tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The effect of the step that just succeeded: the next step of a takeover is decided
    // from it at once instead of after a tick and a real look (each cost ~0.2 s in a
    // slow VM, and a takeover is a chain of five steps). A real look follows every chain.
    let mut predicted: Option<StackObservation> = None;
    loop {
        let (observation, real) = match predicted.take() {
            Some(predicted) => (predicted, false),
            None => {
                ticks.tick().await;
                (stack.observe().await, true)
            }
        };
        if real {
            let mut status = handle.lock();
            let before = status.observation.stack;
            let holding = status.last_decision.reason.starts_with("active");
            // A piece that was up and is down again while active is a stack failure: the
            // next steps restart it once; a second one makes the node hand over.
            let regressed = (before.nfsd && !observation.stack.nfsd)
                || (before.exported && !observation.stack.exported)
                || (before.mounted && !observation.stack.mounted)
                || (before.vip && !observation.stack.vip);
            if holding
                && !status.stack_busy
                && let Some(problem) = &observation.unhealthy
            {
                status.health_failures += if problem.lasting {
                    config.ha.health_failures_to_step_down
                } else {
                    1
                };
                tracing::warn!(failures = status.health_failures, %problem, "the active stack is unhealthy");
            }
            if holding && regressed && !status.stack_busy {
                status.health_failures += 1;
                tracing::warn!(
                    failures = status.health_failures,
                    ?observation,
                    "a running piece of the stack went down"
                );
            }
            let is_down = !observation.stack.any_up()
                && observation
                    .drbd
                    .is_none_or(|d| d.role != super::decide::Role::Primary);
            let holder = status
                .lease
                .as_ref()
                .is_some_and(|v| v.record.holder.as_deref() == Some(config.ha.node.as_str()));
            if is_down && !holder {
                status.health_failures = 0;
            }
            // Failures are counted against a window: one nfsd hiccup an hour ago and
            // another now are two restarts, not a reason to hand over.
            let now = monotonic_ms();
            let all_up = observation.stack.mounted
                && observation.stack.nfsd
                && observation.stack.exported
                && observation.stack.vip;
            if holding && all_up && !regressed && observation.unhealthy.is_none() {
                let since = *status.healthy_since.get_or_insert(now);
                if status.health_failures > 0 && now.saturating_sub(since) >= HEALTH_FORGET_MS {
                    tracing::info!(
                        forgotten = status.health_failures,
                        "stack healthy for {} s: earlier failures forgotten",
                        HEALTH_FORGET_MS / 1000
                    );
                    status.health_failures = 0;
                }
            } else {
                status.healthy_since = None;
            }
        }
        {
            let mut status = handle.lock();
            if observation.stack.vip
                && let Some(acquired) = status.acquired_at.take()
            {
                let took = monotonic_ms().saturating_sub(acquired);
                status.last_takeover_ms = Some(took);
                tracing::info!(takeover_ms = took, "active: VIP up");
            }
            if status.request == Request::ForcePromote
                && observation
                    .drbd
                    .is_some_and(|d| d.role == super::decide::Role::Primary)
            {
                status.request = Request::None;
            }
            status.observation = observation;
            // Only a real look is fresh (unfencing the peer needs one).
            if real {
                status.observed_at = monotonic_ms();
            }
        }
        // Decide and mark the lane busy under one lock: the lease lane must never see the
        // pre-step observation without the busy flag (it would release the Lease while a
        // promotion may still land).
        let decision = {
            let mut status = handle.lock();
            status.stack_busy = false;
            let now = monotonic_ms();
            // After an agent restart, wait for the first Lease read while the persisted
            // renewal may still be valid: tearing down a healthy active would be an outage.
            let may_still_hold = status
                .tenure
                .renewed_at
                .is_some_and(|t| now.saturating_sub(t) < config.ha.renew_deadline);
            if status.lease.is_none() && may_still_hold {
                continue;
            }
            let decision = decide(&status.observed(now), &config.ha);
            if decision.stack.is_empty() {
                continue;
            }
            status.stack_busy = true;
            decision
        };
        let step = decision.stack[0].clone();
        let timeout = if step.is_gated() {
            Duration::from_millis(config.ha.gated_step_timeout)
        } else {
            config.step_timeout
        };
        tracing::info!(?step, reason = %decision.reason, "stack step");
        let result = match tokio::time::timeout(timeout, stack.run(&step)).await {
            Ok(result) => result,
            Err(_) => Err(format!("did not finish within {timeout:?}")),
        };
        // stack_busy stays set until the next observation is stored (top of the loop).
        let mut status = handle.lock();
        match result {
            Ok(()) => {
                status.last_step_error = None;
                status.failed_steps = 0;
                predicted = status.observation.after(&step);
                if predicted.is_none() {
                    ticks.reset_immediately();
                }
                if step == StackAction::Demote {
                    // Secondary now: the lease lane may release (or hand over) at once.
                    handle.wake.notify_one();
                }
            }
            Err(e) => {
                tracing::warn!(?step, error = %e, "stack step failed");
                status.last_step_error = Some(format!("{step:?}: {e}"));
                // A bring-up step that keeps failing (bad filesystem, wrong interface)
                // counts as a stack failure, so the peer gets its chance.
                if decision.reason.starts_with("active") {
                    status.failed_steps += 1;
                    if status.failed_steps >= FAILED_STEPS_PER_HEALTH_FAILURE {
                        status.failed_steps = 0;
                        status.health_failures += 1;
                        tracing::warn!(failures = status.health_failures, "bring-up keeps failing");
                    }
                }
            }
        }
    }
}

/// How long the active stack must stay healthy before earlier failures stop counting
/// towards a hand-over.
const HEALTH_FORGET_MS: Millis = 30_000;

/// Consecutive failed bring-up steps that count as one stack failure.
const FAILED_STEPS_PER_HEALTH_FAILURE: u32 = 5;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ha::decide::{Disk, Role};

    fn secondary_all_down() -> StackObservation {
        StackObservation {
            drbd: Some(DrbdView {
                role: Role::Secondary,
                disk: Disk::UpToDate,
                connected: true,
                peer_role: Role::Secondary,
                peer_disk: Disk::UpToDate,
                io_frozen: false,
            }),
            stack: StackView::default(),
            unhealthy: Some(Unhealthy {
                problem: "old news".into(),
                lasting: false,
            }),
        }
    }

    #[test]
    fn a_bring_up_chain_predicts_each_effect_and_nothing_else() {
        let mut o = secondary_all_down();
        for step in [
            StackAction::Promote,
            StackAction::Mount,
            StackAction::StartNfsd,
            StackAction::Export,
            StackAction::AddVip,
        ] {
            o = o.after(&step).unwrap();
        }
        let drbd = o.drbd.unwrap();
        assert_eq!(drbd.role, Role::Primary);
        assert_eq!((drbd.peer_disk, drbd.connected), (Disk::UpToDate, true));
        assert!(o.stack.mounted && o.stack.nfsd && o.stack.exported && o.stack.vip);
        assert_eq!(o.unhealthy, None, "health is never judged on a prediction");
    }

    #[test]
    fn unknown_drbd_or_resume_io_needs_a_real_look() {
        let mut o = secondary_all_down();
        assert!(o.after(&StackAction::ResumeIo).is_none());
        o.drbd = None;
        assert!(o.after(&StackAction::Promote).is_none());
        assert!(o.after(&StackAction::Demote).is_none());
        assert!(!o.after(&StackAction::Unmount).unwrap().stack.mounted);
    }
}

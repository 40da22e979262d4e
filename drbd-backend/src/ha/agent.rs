//! The agent loop: the I/O around [`AgentState`] (the `ha-core` state machine, which
//! decides and remembers everything), in two lanes that never wait for each other
//! (DESIGN.md §4):
//!
//! - the **lease lane** reads the Lease every tick, performs at most one Lease write
//!   (acquire, renew, release, clear a fence record) and runs the last-resort backstop
//!   — nothing in it waits for a mount or a hung NFS server;
//! - the **stack lane** observes DRBD and the serving stack and runs the next stack step
//!   under a timeout.
//!
//! Both feed one shared [`AgentState`]. What this file adds is only what the state
//! machine cannot do: the clocks, the Lease client, the stack, timeouts, and persisting
//! the tenure in the state directory together with the boot id (the monotonic clock
//! restarts with the machine, so a tenure from before a reboot must not count).

use crate::drivers::lease::{LeaseClient, LeaseError, LeaseStore};
use ha_core::{
    AgentState, HaConfig, LocalFault, Millis, Note, Request, StackAction, Tenure, WriteError,
};
pub use ha_core::{StackObservation, StepError, Unhealthy};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// The things the agent drives below the Lease: DRBD, the filesystem, nfsd, the VIP.
/// Production uses the drivers; tests may substitute recording doubles.
pub trait Stack: Send + Sync + 'static {
    fn observe(&self) -> impl Future<Output = StackObservation> + Send;
    /// Runs one step; says whether a failure was a refusal or a failure (a timeout is
    /// what the agent's own deadline produces, or a tool's).
    fn run(&self, step: &StackAction) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Freeze I/O or reboot: the node is Primary when the peer may already be active.
    fn last_resort(&self, reason: &str) -> impl Future<Output = ()> + Send;
}

/// This node's own clock or identity cannot be read.
#[derive(Debug, Error)]
pub enum LocalError {
    /// `clock_gettime(CLOCK_MONOTONIC)` failed (or returned a negative time).
    #[error("cannot read the monotonic clock: {0}")]
    Clock(String),
    /// `/proc/sys/kernel/random/boot_id` is unreadable or empty.
    #[error("cannot read the boot id: {0}")]
    BootId(String),
}

/// Monotonic milliseconds, system-wide (survive agent restarts, not reboots). An error
/// instead of a made-up 0, which would read every age as "just now".
pub fn monotonic_ms() -> Result<Millis, LocalError> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_err(|e| LocalError::Clock(e.to_string()))?;
    let (secs, nanos) = (u64::try_from(t.tv_sec()), u64::try_from(t.tv_nsec()));
    match (secs, nanos) {
        (Ok(secs), Ok(nanos)) => Ok(secs * 1000 + nanos / 1_000_000),
        _ => Err(LocalError::Clock(format!("negative time {t:?}"))),
    }
}

/// The kernel's id of this boot; an error rather than "", which would match a tenure
/// file written without one.
pub fn boot_id() -> Result<String, LocalError> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map_err(|e| LocalError::BootId(e.to_string()))?;
    let id = id.trim();
    if id.is_empty() {
        return Err(LocalError::BootId("empty".into()));
    }
    Ok(id.to_owned())
}

#[derive(Debug, Serialize, Deserialize)]
struct PersistedTenure {
    boot_id: String,
    id: Option<String>,
    renewed_at: Option<Millis>,
}

/// Loads the tenure persisted in `state_dir` (nothing after a reboot, or when the file
/// is missing or unreadable); an error only when the boot id cannot be read, in which
/// case no tenure can be trusted.
pub fn load_tenure(state_dir: &Path) -> Result<Tenure, LocalError> {
    let boot = boot_id()?;
    let path = state_dir.join("tenure.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(Tenure::default());
    };
    Ok(match serde_json::from_slice::<PersistedTenure>(&bytes) {
        Ok(p) if p.boot_id == boot => Tenure {
            id: p.id,
            renewed_at: p.renewed_at,
        },
        Ok(_) => Tenure::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable tenure file");
            Tenure::default()
        }
    })
}

fn store_tenure(state_dir: &Path, tenure: &Tenure) {
    let path = state_dir.join("tenure.json");
    let tmp = state_dir.join("tenure.json.tmp");
    let result = boot_id()
        .map_err(std::io::Error::other)
        .and_then(|boot_id| {
            serde_json::to_vec(&PersistedTenure {
                boot_id,
                id: tenure.id.clone(),
                renewed_at: tenure.renewed_at,
            })
            .map_err(std::io::Error::other)
        })
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

/// What an operator sees (`status`) and what the metrics report: the state machine's
/// state, with `now` read from the clock when the status is taken.
pub type AgentStatus = AgentState;

/// A handle on a running agent: status and operator requests.
#[derive(Clone, Default)]
pub struct AgentHandle {
    shared: Arc<Mutex<AgentState>>,
    /// Wakes the lease lane before its tick when the stack lane made a Lease action
    /// possible (DRBD demoted: release).
    wake: Arc<tokio::sync::Notify>,
}

impl AgentHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, AgentState> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn status(&self) -> AgentStatus {
        let mut status = self.lock().clone();
        if let Ok(now) = monotonic_ms() {
            status.now = now;
        }
        status
    }

    pub fn request(&self, request: Request) {
        if request == Request::ForcePromote {
            tracing::warn!(
                "FORCE-PROMOTE requested: this node will become Primary even if its data is stale; writes acknowledged by the peer since may be lost"
            );
        }
        self.lock().request(request);
    }

    /// This node's clock now; when it cannot be read, the state machine is told (the
    /// node stands down for good) and the last time it could read is used.
    fn now(&self) -> Millis {
        match monotonic_ms() {
            Ok(now) => now,
            Err(e) => {
                let mut state = self.lock();
                if state.local_fault.is_none() {
                    tracing::error!(error = %e, "the monotonic clock is unreadable: standing down for good");
                }
                state.clock_unreadable();
                state.now
            }
        }
    }
}

fn log_notes(notes: Vec<Note>) {
    for note in notes {
        match note {
            Note::Unhealthy { failures, problem } => {
                tracing::warn!(failures, %problem, "the active stack is unhealthy")
            }
            Note::Regressed { failures, pieces } => {
                tracing::warn!(failures, went_down = %pieces.join(", "), "a running piece of the stack went down")
            }
            Note::FailuresForgotten { forgotten } => tracing::info!(
                forgotten,
                "stack healthy for {} s: earlier failures forgotten",
                ha_core::machine::HEALTH_FORGET_MS / 1000
            ),
            Note::TakeoverDone { took_ms } => {
                tracing::info!(takeover_ms = took_ms, "active: VIP up")
            }
            Note::BringUpFailing { failures } => {
                tracing::warn!(failures, "bring-up keeps failing")
            }
            Note::FenceRecordOverridden { outdated } => {
                tracing::warn!(?outdated, "force-promote: clearing the fence record")
            }
            Note::Written { action } => tracing::info!(?action, "Lease written"),
        }
    }
}

pub struct Agent<S: Stack, L: LeaseStore = LeaseClient> {
    config: AgentConfig,
    lease: Arc<L>,
    stack: Arc<S>,
    handle: AgentHandle,
}

impl<S: Stack, L: LeaseStore> Agent<S, L> {
    pub fn new(config: AgentConfig, lease: L, stack: S) -> Self {
        let state = match load_tenure(&config.state_dir) {
            Ok(tenure) => AgentState::restored(tenure, None),
            Err(e) => {
                tracing::error!(error = %e, "no tenure can be trusted: this node stays standby");
                AgentState::restored(Tenure::default(), Some(LocalFault::BootIdUnreadable))
            }
        };
        let handle = AgentHandle::default();
        *handle.lock() = state;
        Self {
            config,
            lease: Arc::new(lease),
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
        let deadline_lane =
            deadline_lane(self.config.clone(), self.stack.clone(), self.handle.clone());
        tokio::select! {
            _ = lease_lane => {}
            _ = stack_lane => {}
            _ = deadline_lane => {}
            _ = shutdown => tracing::info!("agent stopping"),
        }
    }
}

async fn lease_lane<S: Stack, L: LeaseStore>(
    config: AgentConfig,
    lease: Arc<L>,
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
                let now = handle.now();
                handle.lock().lease_read(record, now);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the Lease");
                handle.lock().lease_read_failed(e.to_string());
            }
        }
        let now = handle.now();
        let (tick, notes) = {
            let mut state = handle.lock();
            let tick = state.lease_tick(&config.ha, now, || {
                uuid::Uuid::new_v4().simple().to_string()
            });
            if tick.0.changed {
                tracing::info!(reason = %state.last_decision.reason, "decision");
            }
            tick
        };
        log_notes(notes);
        if let Some(reason) = &tick.last_resort {
            tracing::error!(%reason, "LAST RESORT");
            stack.last_resort(reason).await;
        }
        let Some(write) = tick.write else { continue };
        let result = lease
            .write(&write.record, write.acquire)
            .await
            .map_err(|e| match e {
                LeaseError::Conflict { .. } => {
                    tracing::info!(action = ?write.action, "Lease changed meanwhile; deciding again");
                    WriteError::Conflict
                }
                e => {
                    tracing::warn!(action = ?write.action, error = %e, "Lease write failed");
                    WriteError::Failed(e.to_string())
                }
            });
        let now = handle.now();
        let (persist, notes) = handle.lock().lease_written(write, result, now);
        if let Some(tenure) = persist {
            store_tenure(&config.state_dir, &tenure);
        }
        log_notes(notes);
    }
}

/// How often [`deadline_lane`] looks: a small part of the margin between the last resort
/// and the Lease's expiry (a sixth of the Lease: 1 s at the 6 s default).
const DEADLINE_WATCH: Duration = Duration::from_millis(50);

/// The last resort on time. The Lease lane decides only between its calls, and each call
/// may block up to its timeout: in a soak with a loaded API server (3 s Lease, calls
/// bounded at 500 ms) a read and a write in a row held it until the node was still
/// Primary 3.15 s after its last renewal, past the Lease itself, before it acted. This
/// lane does no I/O of its own, so a slow API server cannot hold it; it acts once per
/// overdue spell (the Lease lane may act too: both reboot or freeze, never undo).
async fn deadline_lane<S: Stack>(config: AgentConfig, stack: Arc<S>, handle: AgentHandle) {
    let mut ticks = tokio::time::interval(DEADLINE_WATCH);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut acted = false;
    loop {
        ticks.tick().await;
        let now = handle.now();
        let due = handle.lock().decide(&config.ha, now).last_resort;
        match due {
            Some(reason) if !acted => {
                acted = true;
                tracing::error!(%reason, "LAST RESORT (deadline watch)");
                stack.last_resort(&reason).await;
            }
            Some(_) => {}
            None => acted = false,
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
        let now = handle.now();
        let notes = handle
            .lock()
            .stack_observed(&config.ha, observation, real, now);
        log_notes(notes);
        let now = handle.now();
        let Some((step, decision)) = handle.lock().next_step(&config.ha, now) else {
            continue;
        };
        let timeout = if step.is_gated() {
            Duration::from_millis(config.ha.gated_step_timeout)
        } else {
            config.step_timeout
        };
        tracing::info!(?step, reason = %decision.reason, "stack step");
        let result = match tokio::time::timeout(timeout, stack.run(&step)).await {
            Ok(result) => result,
            Err(_) => Err(StepError::Timeout(format!(
                "did not finish within {timeout:?}"
            ))),
        };
        if let Err(e) = &result {
            tracing::warn!(?step, error = %e, "stack step failed");
        }
        let succeeded = result.is_ok();
        let now = handle.now();
        let (next, notes) = handle.lock().step_finished(&step, result, now);
        log_notes(notes);
        predicted = next;
        if succeeded && predicted.is_none() {
            ticks.reset_immediately();
        }
        if succeeded && step == StackAction::Demote {
            // Secondary now: the lease lane may release (or hand over) at once.
            handle.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_clock_and_the_boot_id_read_here() {
        let a = monotonic_ms().unwrap();
        let b = monotonic_ms().unwrap();
        assert!(a > 0 && b >= a);
        assert_eq!(boot_id().unwrap().len(), 36);
    }

    #[test]
    fn a_tenure_survives_an_agent_restart_but_not_a_foreign_boot() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_tenure(dir.path()).unwrap(), Tenure::default());
        let tenure = Tenure {
            id: Some("a-1".into()),
            renewed_at: Some(42),
        };
        store_tenure(dir.path(), &tenure);
        assert_eq!(load_tenure(dir.path()).unwrap(), tenure);
        let other_boot =
            r#"{"boot_id":"00000000-0000-0000-0000-000000000000","id":"a-1","renewed_at":42}"#;
        std::fs::write(dir.path().join("tenure.json"), other_boot).unwrap();
        assert_eq!(load_tenure(dir.path()).unwrap(), Tenure::default());
        let no_boot = r#"{"boot_id":"","id":"a-1","renewed_at":42}"#;
        std::fs::write(dir.path().join("tenure.json"), no_boot).unwrap();
        assert_eq!(
            load_tenure(dir.path()).unwrap(),
            Tenure::default(),
            "a file without a boot id never matches"
        );
    }
}

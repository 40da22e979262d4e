//! The agent's memory as a state machine: every event the agent's I/O produces goes in
//! (a Lease read or its failure, a Lease write's outcome, a stack observation, a stack
//! step's outcome, an operator request, a tick of either lane) and what to do comes out
//! (a [`LeaseWrite`] to send, a last resort to run, the next stack step, [`Note`]s to
//! log). Pure: the caller passes `now` (its monotonic clock) and fresh tenure ids.
//!
//! The agent runs two lanes that never wait for each other (a slow mount must not delay
//! a renewal); both drive one `AgentState` behind a lock:
//! - lease lane: [`AgentState::lease_read`] (or [`AgentState::lease_read_failed`]),
//!   [`AgentState::lease_tick`], then the write it returns, whose outcome goes to
//!   [`AgentState::lease_written`];
//! - stack lane: [`AgentState::stack_observed`], [`AgentState::next_step`], the step,
//!   then [`AgentState::step_finished`] (which may predict the next observation).
//!
//! How step errors are treated (see [`StepError`]): `Refused` and `Failed` changed
//! nothing, or nothing certain; while bringing the stack up they count as one failed
//! step, and [`FAILED_STEPS_PER_HEALTH_FAILURE`] in a row make one health failure.
//! `Timeout` means a component hangs (a hung mount, an nfsd that never starts): waiting
//! for five of them would keep clients waiting for minutes, so one timeout is one health
//! failure at once. Whatever failed, the next step is decided only after a real look
//! (no predicted observation), and the Lease lane treats the stack as busy until then:
//! a timed-out promotion may still land.

use crate::decide::{
    Decision, DrbdView, HaConfig, LeaseAction, LeaseRecord, LeaseView, LocalFault, Millis,
    Observed, Phase, Renewal, Request, Role, StackAction, StackView, Tenure, decide,
};
use thiserror::Error;

/// How long the active stack must stay healthy before earlier failures stop counting
/// towards a hand-over.
pub const HEALTH_FORGET_MS: Millis = 30_000;

/// Consecutive failed bring-up steps that count as one stack failure.
pub const FAILED_STEPS_PER_HEALTH_FAILURE: u32 = 5;

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
                next.drbd.as_mut()?.role = Role::Primary;
            }
            StackAction::Demote => next.drbd.as_mut()?.role = Role::Secondary,
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

    fn all_up(&self) -> bool {
        let s = self.stack;
        s.mounted && s.nfsd && s.exported && s.vip
    }
}

/// Why a stack step did not succeed. The state machine treats them differently (see the
/// module documentation); the stack implementation says which one it was.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StepError {
    /// No answer within the limit (the agent's, or a tool's own deadline): the component
    /// hangs, and what the step did is unknown — it may still land.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The component declined the step in its current state and changed nothing (DRBD
    /// refused the state change; in-flight volume calls did not drain before an unmount).
    #[error("refused: {0}")]
    Refused(String),
    /// Anything else: a tool failed, or its outcome could not be confirmed.
    #[error("failed: {0}")]
    Failed(String),
}

/// Why a Lease write did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// Someone wrote the Lease since it was read: nothing changed, decide again.
    Conflict,
    /// No answer, or an error answer (the write may or may not have landed).
    Failed(String),
}

/// A Lease write for the I/O layer to send: a compare-and-swap of `record` on
/// `record.version`. Its outcome goes back to [`AgentState::lease_written`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseWrite {
    pub action: LeaseAction,
    /// The whole record to write.
    pub record: LeaseRecord,
    /// An acquisition (the Lease object's acquireTime is set, for humans).
    pub acquire: bool,
    /// When the write was built (this node's clock): a successful renewal counts from
    /// its *sending* time, so the holder's view of its Lease never outlives the server's.
    pub sent: Millis,
    /// The tenure this node has once the write succeeds (acquire and renew).
    tenure: Tenure,
}

/// What a lease-lane tick decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseTick {
    /// Freeze I/O or reboot, now (why).
    pub last_resort: Option<String>,
    pub write: Option<LeaseWrite>,
    /// The decision's phase or reason differs from the previous tick's (worth a log line).
    pub changed: bool,
}

/// Something the I/O layer should log (the state machine itself has no logger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The active stack reported a health problem; `failures` counted so far.
    Unhealthy { failures: u32, problem: String },
    /// Running pieces of the active stack went down (`pieces` names them).
    Regressed {
        failures: u32,
        pieces: Vec<&'static str>,
    },
    /// The stack stayed healthy long enough: this many failures no longer count.
    FailuresForgotten { forgotten: u32 },
    /// The VIP came up after an acquisition, this long after it.
    TakeoverDone { took_ms: Millis },
    /// Bring-up steps keep failing (or one timed out): counted as a stack failure.
    BringUpFailing { failures: u32 },
    /// A forced promotion's acquisition clears the fence record naming this node.
    FenceRecordOverridden { outdated: Option<String> },
    /// The Lease write succeeded.
    Written { action: LeaseAction },
}

/// Everything the agent remembers, and the rules by which it changes.
///
/// Fields are public for status and metrics (and the simulator's checks); only the
/// methods below change them.
#[derive(Debug, Clone, Default)]
pub struct AgentState {
    /// The Lease as last read or written; `None` until the first read.
    pub lease: Option<LeaseView>,
    /// This node's tenure; the agent persists it whenever [`AgentState::lease_written`]
    /// returns one.
    pub tenure: Tenure,
    /// What the stack lane last saw (or predicted after a successful step).
    pub observation: StackObservation,
    /// A stack step is running, or its outcome has not been looked at yet.
    pub stack_busy: bool,
    /// When `observation` was last a real look.
    pub observed_at: Millis,
    /// Stack failures while active: two make the node hand over.
    pub health_failures: u32,
    /// Since when the active stack has been fully up and healthy.
    pub healthy_since: Option<Millis>,
    pub request: Request,
    /// The last lease-lane decision (what "holding" means for the stack lane).
    pub last_decision: Decision,
    pub lease_error: Option<String>,
    pub last_step_error: Option<String>,
    /// Consecutive failed stack steps while bringing the stack up.
    pub failed_steps: u32,
    /// Acquisitions by this node.
    pub acquisitions: u64,
    /// When this node last acquired the Lease, until the VIP is up.
    pub acquired_at: Option<Millis>,
    /// Acquisition → VIP up, for the last takeover.
    pub last_takeover_ms: Option<Millis>,
    pub last_resorts: u64,
    /// The time of the latest event (the agent's status overwrites it with the clock).
    pub now: Millis,
    /// This node cannot trust its clock or boot id: it stays standby for good.
    pub local_fault: Option<LocalFault>,
    /// The phase of the decision that chose the running step.
    step_phase: Option<Phase>,
}

impl AgentState {
    /// The state of an agent that starts with this persisted tenure.
    pub fn restored(tenure: Tenure, local_fault: Option<LocalFault>) -> Self {
        Self {
            // Without a trustworthy boot id no persisted tenure can be trusted.
            tenure: if local_fault.is_some() {
                Tenure::default()
            } else {
                tenure
            },
            local_fault,
            ..Default::default()
        }
    }

    /// What [`decide`] sees now.
    pub fn observed(&self, now: Millis) -> Observed {
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
            local_fault: self.local_fault,
        }
    }

    /// The decision for `now`, without changing anything.
    pub fn decide(&self, config: &HaConfig, now: Millis) -> Decision {
        decide(&self.observed(now), config)
    }

    /// An operator request (switchover, force-promote).
    pub fn request(&mut self, request: Request) {
        self.request = request;
    }

    /// The monotonic clock could not be read. The node cannot judge any Lease age, so it
    /// stands down and never acquires again (until the agent restarts); decisions go on
    /// with the last time it could read, so the teardown still runs.
    pub fn clock_unreadable(&mut self) {
        self.local_fault = Some(LocalFault::ClockUnreadable);
    }

    fn advance(&mut self, now: Millis) {
        self.now = self.now.max(now);
    }

    /// A fresh read of the Lease.
    pub fn lease_read(&mut self, record: LeaseRecord, now: Millis) {
        self.advance(now);
        self.lease_error = None;
        LeaseView::observe(&mut self.lease, record, now);
    }

    /// The Lease could not be read: the view stays as it was and ages.
    pub fn lease_read_failed(&mut self, error: String) {
        self.lease_error = Some(error);
    }

    /// The lease lane's decision: a last resort to run, a write to send.
    /// `fresh_tenure_id` names the tenure an acquisition would write (a random id).
    pub fn lease_tick(
        &mut self,
        config: &HaConfig,
        now: Millis,
        fresh_tenure_id: impl FnOnce() -> String,
    ) -> (LeaseTick, Vec<Note>) {
        self.advance(now);
        let decision = self.decide(config, now);
        let mut notes = Vec::new();
        let last_resort = decision.last_resort.clone();
        if last_resort.is_some() {
            self.last_resorts += 1;
        }
        let write = match (&decision.lease, &self.lease) {
            (Some(action), Some(view)) => Some(self.build_write(
                config,
                action.clone(),
                &view.record,
                now,
                fresh_tenure_id,
                &mut notes,
            )),
            _ => None,
        };
        // A switchover is over once this node no longer holds the Lease, even when the
        // answer to its release was lost (the release landed, the agent never heard):
        // kept, the request would make this node hand over again right after its next
        // acquisition, with no operator asking. (Found by the simulator's lost answers.)
        if decision.phase.is_standby() && self.request == Request::Switchover {
            self.request = Request::None;
        }
        let changed = self.last_decision.phase != decision.phase
            || self.last_decision.reason != decision.reason;
        self.last_decision = decision;
        (
            LeaseTick {
                last_resort,
                write,
                changed,
            },
            notes,
        )
    }

    /// How each Lease action changes the record.
    fn build_write(
        &self,
        config: &HaConfig,
        action: LeaseAction,
        seen: &LeaseRecord,
        now: Millis,
        fresh_tenure_id: impl FnOnce() -> String,
        notes: &mut Vec<Note>,
    ) -> LeaseWrite {
        let me = &config.node;
        let mut record = seen.clone();
        let mut tenure = Tenure {
            id: self.tenure.id.clone(),
            renewed_at: Some(now),
        };
        match &action {
            LeaseAction::Acquire => {
                let id = format!("{me}-{}", fresh_tenure_id());
                record.holder = Some(me.clone());
                record.tenure = id.clone();
                record.last_primary = Some(me.clone());
                record.handover_to = None;
                if self.request == Request::ForcePromote {
                    // The administrator overrides the fence record: keeping it would make
                    // this node stand itself down again right after the forced promotion.
                    notes.push(Note::FenceRecordOverridden {
                        outdated: record.outdated.take(),
                    });
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
            LeaseAction::RecordPeerOutdated => record.outdated = Some(config.peer.clone()),
        }
        LeaseWrite {
            acquire: action == LeaseAction::Acquire,
            action,
            record,
            sent: now,
            tenure,
        }
    }

    /// The outcome of a [`LeaseWrite`]. Returns the tenure to persist, if it changed.
    pub fn lease_written(
        &mut self,
        write: LeaseWrite,
        result: Result<String, WriteError>,
        now: Millis,
    ) -> (Option<Tenure>, Vec<Note>) {
        self.advance(now);
        let mut notes = Vec::new();
        let version = match result {
            Ok(version) => version,
            Err(WriteError::Conflict) => return (None, notes),
            Err(WriteError::Failed(error)) => {
                self.lease_error = Some(error);
                return (None, notes);
            }
        };
        let LeaseWrite {
            action,
            mut record,
            sent,
            tenure,
            ..
        } = write;
        record.version = version;
        let persist = match &action {
            LeaseAction::Acquire | LeaseAction::Renew => {
                self.tenure = tenure;
                Some(self.tenure.clone())
            }
            LeaseAction::Release { .. } => {
                self.tenure.id = None;
                if self.request == Request::Switchover {
                    self.request = Request::None;
                }
                self.health_failures = 0;
                Some(self.tenure.clone())
            }
            LeaseAction::ClearOutdated | LeaseAction::RecordPeerOutdated => None,
        };
        if action == LeaseAction::Acquire {
            self.acquisitions += 1;
            self.acquired_at = Some(sent);
        }
        if action != LeaseAction::Renew {
            notes.push(Note::Written { action });
        }
        self.lease = Some(LeaseView {
            record,
            changed_at: now,
        });
        self.lease_error = None;
        (persist, notes)
    }

    /// A stack observation: a real look (`real`) or the prediction after a successful
    /// step. Counts health failures of the active stack and forgets them again.
    pub fn stack_observed(
        &mut self,
        config: &HaConfig,
        observation: StackObservation,
        real: bool,
        now: Millis,
    ) -> Vec<Note> {
        self.advance(now);
        let mut notes = Vec::new();
        if real {
            let before = self.observation.stack;
            let holding = self.last_decision.phase.is_active();
            let after = observation.stack;
            // A piece that was up and is down again while active is a stack failure: the
            // next steps restart it once; a second one makes the node hand over.
            let went_down: Vec<&'static str> = [
                (before.mounted && !after.mounted, "filesystem"),
                (before.nfsd && !after.nfsd, "nfsd"),
                (before.exported && !after.exported, "exports"),
                (before.vip && !after.vip, "VIP"),
            ]
            .into_iter()
            .filter_map(|(down, piece)| down.then_some(piece))
            .collect();
            let regressed = !went_down.is_empty();
            if holding
                && !self.stack_busy
                && let Some(problem) = &observation.unhealthy
            {
                self.health_failures += if problem.lasting {
                    config.health_failures_to_step_down
                } else {
                    1
                };
                notes.push(Note::Unhealthy {
                    failures: self.health_failures,
                    problem: problem.problem.clone(),
                });
            }
            if holding && regressed && !self.stack_busy {
                self.health_failures += 1;
                notes.push(Note::Regressed {
                    failures: self.health_failures,
                    pieces: went_down,
                });
            }
            // Failures were failures of the active stack: once this node has stood down
            // and let go of the Lease, a standby may be needed again.
            let is_down =
                !after.any_up() && observation.drbd.is_none_or(|d| d.role != Role::Primary);
            let holder = self
                .lease
                .as_ref()
                .is_some_and(|v| v.record.holder.as_deref() == Some(config.node.as_str()));
            if is_down && !holder {
                self.health_failures = 0;
            }
            // Failures are counted against a window: one nfsd hiccup an hour ago and
            // another now are two restarts, not a reason to hand over.
            if holding && observation.all_up() && !regressed && observation.unhealthy.is_none() {
                let since = *self.healthy_since.get_or_insert(now);
                let healthy_for = now.checked_sub(since);
                if self.health_failures > 0 && healthy_for.is_some_and(|t| t >= HEALTH_FORGET_MS) {
                    notes.push(Note::FailuresForgotten {
                        forgotten: self.health_failures,
                    });
                    self.health_failures = 0;
                }
            } else {
                self.healthy_since = None;
            }
        }
        if observation.stack.vip
            && let Some(acquired) = self.acquired_at.take()
        {
            // An acquisition "in the future" has no measurable takeover time.
            if let Some(took_ms) = now.checked_sub(acquired) {
                self.last_takeover_ms = Some(took_ms);
                notes.push(Note::TakeoverDone { took_ms });
            }
        }
        if self.request == Request::ForcePromote
            && observation.drbd.is_some_and(|d| d.role == Role::Primary)
        {
            self.request = Request::None;
        }
        self.observation = observation;
        // Only a real look is fresh (unfencing the peer needs one).
        if real {
            self.observed_at = now;
        }
        notes
    }

    /// The stack lane's next step, if any, and the decision that chose it; the stack
    /// counts as busy from here until the next observation.
    pub fn next_step(&mut self, config: &HaConfig, now: Millis) -> Option<(StackAction, Decision)> {
        self.advance(now);
        self.stack_busy = false;
        // After an agent restart, wait for the first Lease read while the persisted
        // renewal may still be valid: tearing down a healthy active would be an outage.
        // (A renewal of unknown age may be valid too.)
        let may_still_hold = match Renewal::of(&self.tenure, now) {
            Renewal::Never => false,
            Renewal::Ago(a) => a < config.renew_deadline,
            Renewal::Unknown => true,
        };
        if self.lease.is_none() && may_still_hold {
            return None;
        }
        let decision = self.decide(config, now);
        let step = decision.stack.first()?.clone();
        self.stack_busy = true;
        self.step_phase = Some(decision.phase);
        Some((step, decision))
    }

    /// The outcome of the step [`AgentState::next_step`] returned. On success, the
    /// observation to decide the next step from at once (`None`: look first).
    pub fn step_finished(
        &mut self,
        step: &StackAction,
        result: Result<(), StepError>,
        now: Millis,
    ) -> (Option<StackObservation>, Vec<Note>) {
        self.advance(now);
        let mut notes = Vec::new();
        let bringing_up = self.step_phase.take().is_some_and(Phase::is_active);
        match result {
            Ok(()) => {
                self.last_step_error = None;
                self.failed_steps = 0;
                (self.observation.after(step), notes)
            }
            Err(error) => {
                self.last_step_error = Some(format!("{step:?}: {error}"));
                // A bring-up step that keeps failing (bad filesystem, wrong interface)
                // counts as a stack failure, so the peer gets its chance.
                if bringing_up {
                    let counts = match error {
                        StepError::Timeout(_) => true,
                        StepError::Refused(_) | StepError::Failed(_) => {
                            self.failed_steps += 1;
                            self.failed_steps >= FAILED_STEPS_PER_HEALTH_FAILURE
                        }
                    };
                    if counts {
                        self.failed_steps = 0;
                        self.health_failures += 1;
                        notes.push(Note::BringUpFailing {
                            failures: self.health_failures,
                        });
                    }
                }
                (None, notes)
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! The pure core of hanfs's HA role manager: no I/O, no clocks, no tokio, no kube. Time
//! comes in with every event, as this node's monotonic milliseconds.
//!
//! Module map (what each part owns):
//! - [`decide`]: `decide(observed, config) -> Decision`: which Lease write and which
//!   stack steps now, with a typed [`Phase`]; the fence-peer rule.
//! - [`machine`]: [`AgentState`], everything the agent remembers between decisions
//!   (the Lease as last seen, its tenure, health-failure counting and forgetting,
//!   failed bring-up steps, the gate after a restart, how each Lease write changes the
//!   record): events in, decisions out. The agent in `drbd-backend` is a thin I/O loop
//!   around it, and the simulator in `tests/sim` drives the very same type, so the
//!   property tests check the code that runs.

pub mod decide;
pub mod machine;

pub use decide::{
    Decision, Disk, DrbdView, FenceDecision, HaConfig, Ineligible, LeaseAction, LeaseRecord,
    LeaseView, LocalFault, Millis, Observed, Phase, Renewal, Request, Role, StackAction, StackView,
    StandDown, Tenure, decide, fence_decision,
};
pub use machine::{
    AgentState, LeaseTick, LeaseWrite, Note, StackObservation, StepError, Unhealthy, WriteError,
};

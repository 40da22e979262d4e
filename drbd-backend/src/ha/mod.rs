//! The HA role manager's I/O: which of the two storage servers serves the export.
//!
//! - [`decide`]: the pure decision core, re-exported from `ha-core` (where the agent's
//!   state machine and the simulator that checks it live too).
//! - [`agent`]: the I/O loop around `ha_core::AgentState`: a lease lane and a stack
//!   lane, the clocks, the persisted tenure.
//! - [`fence`]: the fence-peer handler DRBD calls: the fence record in the Lease.
//! - [`system`]: the production stack: DRBD, filesystem, nfsd, VIP through the drivers.

pub use ha_core::decide;

pub mod agent;
pub mod fence;
pub mod system;

//! The HA role manager: which of the two storage servers serves the export.
//!
//! - [`decide`]: the pure core, `(observed, config) -> actions`: no I/O, no clocks.
//! - [`agent`]: the loop around it: a lease lane and a stack lane, persisted tenure.
//! - [`fence`]: the fence-peer handler DRBD calls: the fence record in the Lease.
//! - [`sim`]: a two-node world (lease store, DRBD replication, partitions, crashes,
//!   slow and failing actions) that drives `decide` and checks the safety rules; used
//!   by the property tests.
//! - [`system`]: the production stack: DRBD, filesystem, nfsd, VIP through the drivers.

pub mod agent;
pub mod decide;
pub mod fence;
pub mod sim;
pub mod system;

//! The HA role manager: which of the two storage servers serves the export.
//!
//! - [`decide`]: the pure core, `(observed, config) -> actions`: no I/O, no clocks.
//! - [`sim`]: a two-node world (lease store, DRBD replication, partitions, crashes,
//!   slow and failing actions) that drives `decide` and checks the safety rules; used
//!   by the property tests.

pub mod decide;
pub mod sim;

//! Drivers: one module per outside thing the HA agent observes or acts on. Each keeps
//! its parsing pure (tested with literal input) and its I/O behind timeouts.
//!
//! - [`command`]: running an external tool: stdin closed, a timeout, the child killed
//!   on timeout, exit status and stderr in the error.

pub mod command;

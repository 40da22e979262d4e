//! Shared by the hanfs binaries, and nothing else:
//!
//! - [`command`]: the one runner for external commands (deadline, process-group kill,
//!   captured output, typed errors); async, with a blocking form for test harnesses.
//! - [`ids`]: names and ids that can only hold valid values (volume directories,
//!   volume and snapshot ids, the cluster id). Every gRPC edge parses into these.
//! - [`node_id`]: node ids that carry the node's NFS address (`<name>@<ip>`), and
//!   client CIDRs; the node plugin reports them, the controller and backend parse them.
//! - [`endpoint`]: `unix://` and `tcp://` endpoints: serving a tonic router with a
//!   shutdown signal, and dialling one.
//! - [`credentials`]: the volume API's credentials: mutual TLS on TCP (server and
//!   client side, from PEM files), the bearer token file, the transport rule.
//! - [`identity`]: the CSI Identity service both CSI binaries serve.
//! - [`logging`]: tracing setup (text or JSON).
//! - [`rpc_trace`]: the tower layer that logs every CSI call once (method, request with
//!   secrets redacted, gRPC code, duration); both CSI binaries wrap their services in it.
//! - [`mountinfo`]: pure parser of `/proc/self/mountinfo` and lookups in the table
//!   (what is mounted where, from which device); the node and the backend both read it.

pub mod command;
pub mod credentials;
pub mod endpoint;
pub mod identity;
pub mod ids;
pub mod logging;
pub mod memory;
pub mod mountinfo;
pub mod node_id;
pub mod rpc_trace;

/// The CSI driver name unless configured otherwise.
pub const DEFAULT_DRIVER_NAME: &str = "hanfs.csi.io";
/// The version all hanfs binaries report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

//! Generated gRPC code for the two APIs hanfs speaks.
//!
//! - [`csi::v1`]: the Container Storage Interface, spec v1.13.0, compiled from the
//!   spec's own `csi.proto` (fetched at build time, see `build.rs`).
//! - [`pluginregistration`]: kubelet's plugin-registration API (`k8s.io/kubelet`
//!   v0.37.2, `pkg/apis/pluginregistration/v1/api.proto`, fetched at build time): the
//!   node plugin serves it so kubelet finds the CSI socket without node-driver-registrar.
//! - [`backend::v1`]: our volume API between the CSI controller and the storage
//!   servers (`backend.proto` in this crate).
//!
//! CSI messages that carry secrets get a generated `Debug` that prints no secret (found
//! in the descriptors by build.rs, see [`redact`]), so logging a request can never leak
//! one; [`redact::debug_request`] prints any CSI request from its wire bytes that way.

pub mod csi {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("csi.v1");
    }
}

/// Upstream's package is `pluginregistration` (no `v1`), and the wire names follow it.
pub mod pluginregistration {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("pluginregistration");
}

pub mod backend {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("hanfs.backend.v1");
    }
}

pub mod redact;

/// The compiled descriptors of every file above (CSI, plugin registration, backend), as
/// build.rs encoded them: tests walk them to generate requests for every RPC and field.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));

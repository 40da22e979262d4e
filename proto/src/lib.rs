//! Generated gRPC code for the two APIs hanfs speaks.
//!
//! - [`csi::v1`]: the Container Storage Interface, spec v1.12.0, compiled from the
//!   spec's own `csi.proto` (fetched at build time, see `build.rs`).
//! - [`backend::v1`]: our volume API between the CSI controller and the storage
//!   servers (`backend.proto` in this crate).
//!
//! CSI requests that carry `secrets` get a hand-written `Debug` (module `redact`) that
//! prints no secret, so logging a request can never leak one.

pub mod csi {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("csi.v1");
    }
}

pub mod backend {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("hanfs.backend.v1");
    }
}

mod redact;

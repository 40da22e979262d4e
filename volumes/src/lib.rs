//! The volume service: volumes are directories `<export>/volumes/<dir>`, snapshots are
//! directories `<export>/snapshots/<name>`.
//!
//! - [`layout`]: where everything lives, and the sweep of leftovers after a crash.
//! - [`meta`]: per-volume and per-snapshot records, written atomically.
//! - [`quota`]: project ids and project quota limits (XFS `prjquota`, ext4 `project`).
//! - [`copy`]: tree copies by reflink (`FICLONE`) with a reported full-copy fallback.
//! - [`safe_fs`]: walks of tenant-written trees by directory descriptors (`openat2`,
//!   no symlink ever followed), shared by the copies and the usage walk.
//! - [`locks`]: per-name locks so that concurrent calls on one name answer ABORTED.
//! - [`exports`]: per-volume export ACLs: publish records, the export table derived
//!   from them (pure), and [`exports::ExportControl`], which applies it through a sink.
//! - [`health`]: pure: a volume's health problems from what the store observed.
//! - [`store`]: [`VolumeStore`], the operations themselves.
//! - [`api`]: the gRPC server for `backend.proto`: validated names at the edge, blocking
//!   work off the async runtime, [`VolumeError`] mapped to status codes in one place.
//!
//! Crash safety: every create builds in `.hanfs/tmp/` and `rename`s into place, every
//! delete `rename`s into `.hanfs/trash/` before removing; so a volume is either
//! complete or absent, and a restart sweeps what an interrupted call left behind,
//! clearing the quota limits of the projects those leftovers held (`store::sweep`).

pub mod api;
pub mod copy;
pub mod error;
pub mod exports;
pub mod health;
pub mod layout;
pub mod locks;
pub mod meta;
pub mod quota;
pub mod safe_fs;
pub mod store;

pub use error::VolumeError;
pub use store::{StoreConfig, VolumeStore};

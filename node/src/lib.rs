//! The hanfs CSI node plugin: CSI Identity + Node, mounting volume directories.
//!
//! - [`config`]: what the plugin is told at start ([`NodeConfig`], [`Transport`]).
//! - [`service`]: the CSI Node RPCs ([`NodeService`]); stateless, mountinfo is the truth.
//! - [`mount_spec`]: pure: which mount(2) arguments a publish needs (bind or NFSv4).
//! - [`target_path`]: checks that publish targets stay below the allowed roots.
//! - [`syscall_helper`]: mount/umount/statfs in a child process with a deadline, and
//!   the hidden `helper` subcommand that child runs.
//! - [`stats`]: pure: NodeGetVolumeStats usage and VolumeCondition from statfs.
//! - [`error`]: the service's errors and their one mapping to CSI status codes.

pub mod config;
pub mod error;
pub mod mount_spec;
pub mod service;
pub mod stats;
pub mod syscall_helper;
pub mod target_path;

pub use config::{NodeConfig, Transport};
pub use service::NodeService;

use hanfs_common::endpoint::{EndpointError, Listener};
use hanfs_common::identity::{IdentityService, ReadinessCheck};
use hanfs_proto::csi::v1::identity_server::IdentityServer;
use hanfs_proto::csi::v1::node_server::NodeServer;
use std::future::Future;
use std::sync::Arc;
use tonic::transport::server::Router;

/// Probe's answer: in local mode the export root must exist; over NFS there is nothing
/// to check before a volume is published (the server may legitimately be failing over).
pub fn readiness(config: &NodeConfig) -> ReadinessCheck {
    let export_root = match &config.transport {
        Transport::Local { export_root } => Some(export_root.clone()),
        Transport::Nfs { .. } => None,
    };
    Arc::new(move || {
        let export_root = export_root.clone();
        Box::pin(async move {
            let Some(root) = export_root else {
                return Ok(());
            };
            match tokio::fs::metadata(&root).await {
                Ok(meta) if meta.is_dir() => Ok(()),
                Ok(_) => Err(format!("export root {} is not a directory", root.display())),
                Err(err) => Err(format!("export root {}: {err}", root.display())),
            }
        })
    })
}

/// Identity + Node, ready to serve.
pub fn router(config: NodeConfig) -> Router {
    let identity = IdentityService::new(config.driver_name.clone(), readiness(&config));
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_service(NodeServer::new(NodeService::new(config)))
}

/// Serves Identity + Node on `listener` until `shutdown` completes.
pub async fn run(
    config: NodeConfig,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), EndpointError> {
    tracing::info!(
        driver = %config.driver_name,
        node_id = %config.node_id,
        cluster = %config.cluster_id,
        transport = ?config.transport,
        endpoint = %listener.local_endpoint(),
        "serving CSI Identity and Node"
    );
    hanfs_common::endpoint::serve(router(config), listener, shutdown).await
}

//! `hanfs-controller`: CSI Identity + Controller on a unix socket, calling the backend
//! volume API (at the VIP, or a unix socket in local mode).

use clap::Parser;
use hanfs_common::endpoint::{self, Endpoint, Listener};
use hanfs_common::identity::{IdentityService, ReadinessCheck};
use hanfs_common::ids::ClusterId;
use hanfs_controller::params::ExportConfig;
use hanfs_controller::service::ControllerService;
use hanfs_proto::backend::v1::StatusRequest;
use hanfs_proto::csi::v1::controller_server::ControllerServer;
use hanfs_proto::csi::v1::identity_server::IdentityServer;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(
    name = "hanfs-controller",
    version,
    about = "hanfs CSI controller: provisions volumes on the HA NFS export"
)]
struct Args {
    /// Where the CSI services listen.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// The CSI driver name.
    #[arg(long, default_value = hanfs_common::DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// This installation's id; part of every volume id.
    #[arg(long, env = "HANFS_CLUSTER_ID")]
    cluster_id: String,
    /// The backend volume API: tcp://<VIP>:9820, or unix:///path in local mode.
    #[arg(long, env = "HANFS_BACKEND")]
    backend: String,
    /// File holding the backend's bearer token.
    #[arg(long, env = "HANFS_BACKEND_TOKEN_FILE")]
    backend_token_file: Option<PathBuf>,
    /// The NFS server nodes mount (the VIP). Omit in local mode.
    #[arg(long, env = "HANFS_NFS_SERVER")]
    nfs_server: Option<String>,
    /// The exported path on the NFS server.
    #[arg(long, env = "HANFS_NFS_SHARE", default_value = "/export")]
    nfs_share: String,
    /// Log JSON lines instead of text.
    #[arg(long)]
    json_logs: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    hanfs_common::logging::init(args.json_logs);
    let cluster = ClusterId::parse(&args.cluster_id)?;
    let token = match &args.backend_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("reading backend token file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let backend =
        hanfs_controller::backend::connect(&Endpoint::parse(&args.backend)?, token.as_deref())?;
    let export = ExportConfig {
        server: args.nfs_server,
        share: args.nfs_share,
    };

    let probe_backend = backend.clone();
    let readiness: ReadinessCheck = Arc::new(move || {
        let mut backend = probe_backend.clone();
        Box::pin(async move {
            backend
                .status(StatusRequest {})
                .await
                .map(|_| ())
                .map_err(|s| format!("backend volume API: {}", s.message()))
        })
    });
    let identity = IdentityService::new(args.driver_name, readiness);
    let controller = ControllerService::new(cluster, export, backend);

    let listener = Listener::bind(&Endpoint::parse(&args.endpoint)?).await?;
    tracing::info!(endpoint = %listener.local_endpoint(), backend = %args.backend, "controller serving");
    let router = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_service(ControllerServer::new(controller));
    endpoint::serve(router, listener, endpoint::shutdown_signal()).await?;
    Ok(())
}

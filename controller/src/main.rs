//! `hanfs-controller`: CSI Identity + Controller on a unix socket, calling the backend
//! volume API (at the VIP, or a unix socket in local mode).

use clap::Parser;
use common::endpoint::{self, Endpoint, Listener};
use common::identity::{IdentityService, ReadinessCheck};
use common::ids::ClusterId;
use common::rpc_trace::traced;
use controller::health::{self, HealthConfig};
use controller::params::ExportConfig;
use controller::service::ControllerService;
use proto::backend::v1::StatusRequest;
use proto::csi::v1::controller_server::ControllerServer;
use proto::csi::v1::identity_server::IdentityServer;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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
    #[arg(long, default_value = common::DEFAULT_DRIVER_NAME)]
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
    /// Also serve grpc.health.v1 (only that) here, e.g. tcp://127.0.0.1:9808, for
    /// kubelet's `livenessProbe.grpc`/`readinessProbe.grpc`, which cannot dial a unix
    /// socket. The CSI endpoint serves it too. SERVING while the backend answers.
    #[arg(long)]
    health_listen: Option<String>,
    /// How often the health check calls the backend.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    health_interval_secs: u64,
    /// Longest one health check may wait for the backend before it counts as failed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    health_timeout_secs: u64,
    /// Log JSON lines instead of text.
    #[arg(long)]
    json_logs: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    common::logging::init(args.json_logs);
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
    let backend = controller::backend::connect(&Endpoint::parse(&args.backend)?, token.as_deref())?;
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
    let health_config = HealthConfig {
        interval: Duration::from_secs(args.health_interval_secs),
        timeout: Duration::from_secs(args.health_timeout_secs),
    };
    let (reporter, health_server) = health::not_serving_yet().await;
    let checker_backend = backend.clone();
    let controller = ControllerService::new(cluster, export, backend);

    let listener = Listener::bind(&Endpoint::parse(&args.endpoint)?).await?;
    let health_listener = match &args.health_listen {
        Some(text) => Some(
            Listener::bind(&Endpoint::parse(text).map_err(|e| format!("--health-listen: {e}"))?)
                .await?,
        ),
        None => None,
    };
    tracing::info!(endpoint = %listener.local_endpoint(), backend = %args.backend, "controller serving");

    // One signal stops the CSI server, the health server and the checker.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    };
    let router = tonic::transport::Server::builder()
        .add_service(traced(IdentityServer::new(identity)))
        .add_service(traced(ControllerServer::new(controller)))
        .add_service(health_server.clone());
    let mut csi = tokio::spawn(endpoint::serve(router, listener, stopped(stop_rx.clone())));
    let mut health_tcp = health_listener.map(|listener| {
        tracing::info!(endpoint = %listener.local_endpoint(), "serving grpc.health.v1");
        let router = tonic::transport::Server::builder().add_service(health_server);
        tokio::spawn(endpoint::serve(router, listener, stopped(stop_rx.clone())))
    });
    let checker = tokio::spawn(health::keep_up_to_date(
        reporter,
        checker_backend,
        health_config,
        stop_rx,
    ));
    // Until a signal, or until a server ends by itself (then the process ends with it).
    let ended_early = tokio::select! {
        _ = endpoint::shutdown_signal() => None,
        ended = &mut csi => Some(ended),
        ended = async {
            match health_tcp.as_mut() {
                Some(handle) => handle.await,
                None => std::future::pending().await,
            }
        } => {
            health_tcp = None;
            Some(ended)
        }
    };
    stop_tx.send_replace(true);
    let _ = checker.await;
    if let Some(ended) = ended_early {
        ended??;
        return Err("a gRPC server stopped by itself".into());
    }
    if let Some(health_tcp) = health_tcp {
        health_tcp.await??;
    }
    csi.await??;
    Ok(())
}

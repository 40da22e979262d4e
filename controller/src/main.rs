//! `hanfs-controller`: CSI Identity + Controller on a unix socket, calling the backend
//! volume API (at the VIP, or a unix socket in local mode).

use clap::Parser;
use common::endpoint::{self, Endpoint, Listener};
use common::identity::{IdentityService, ReadinessCheck};
use common::ids::ClusterId;
use common::rpc_trace::traced;
use controller::deadline::with_caller_deadline;
use controller::health::{self, HealthConfig};
use controller::params::ExportConfig;
use controller::service::ControllerService;
use proto::backend::v1::StatusRequest;
use proto::csi::v1::controller_server::ControllerServer;
use proto::csi::v1::group_controller_server::GroupControllerServer;
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
    /// File holding the backend's bearer token (a second factor next to the client
    /// certificate). An empty file is an error.
    #[arg(long, env = "HANFS_BACKEND_TOKEN_FILE")]
    backend_token_file: Option<PathBuf>,
    /// Mutual TLS to the backend, required when --backend is tcp://: the backend's CA,
    /// and this controller's client certificate and key.
    #[command(flatten)]
    tls: common::credentials::TlsArgs,
    /// The name the backend's certificate must carry, when it is not the host of
    /// --backend (default: that host, i.e. the VIP).
    #[arg(long, env = "HANFS_BACKEND_TLS_SERVER_NAME")]
    backend_tls_server_name: Option<String>,
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
    /// HTTP/2 keepalive to the backend: a PING after this many seconds without frames
    /// (also while idle); a connection whose PING is not answered within
    /// --backend-keepalive-timeout-secs is dropped, so calls to a server that died fail
    /// over instead of waiting forever.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    backend_keepalive_secs: u64,
    /// Seconds a keepalive PING to the backend may go unanswered.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    backend_keepalive_timeout_secs: u64,
    /// Longest one backend call may take when the CSI caller's deadline allows more.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    backend_call_timeout_secs: u64,
}

type MainResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn main() -> MainResult {
    // Before any thread exists (threads pick their malloc arena on first use).
    common::memory::limit_arenas(common::memory::ARENAS);
    // One thread: the controller only forwards calls to the backend (no blocking call,
    // no block_in_place; its CPU per call is encoding and TLS), so more workers would
    // only add stacks and, under load, malloc arenas.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::spawn(common::memory::trim_periodically(
            common::memory::TRIM_PERIOD,
        ));
        serve().await
    })
}

async fn serve() -> MainResult {
    let args = Args::parse();
    common::logging::init(args.json_logs);
    let cluster = ClusterId::parse(&args.cluster_id)?;
    let token = common::credentials::read_optional_token(args.backend_token_file.as_deref())?;
    let tls = match args.tls.files() {
        Some(files) => Some(common::credentials::ClientTls::load(
            &files,
            args.backend_tls_server_name.as_deref(),
        )?),
        None => None,
    };
    let call_config = controller::backend::CallConfig {
        keepalive_interval: Duration::from_secs(args.backend_keepalive_secs),
        keepalive_timeout: Duration::from_secs(args.backend_keepalive_timeout_secs),
        call_timeout: Duration::from_secs(args.backend_call_timeout_secs),
        ..Default::default()
    };
    let backend = controller::backend::connect_secured(
        &Endpoint::parse(&args.backend)?,
        token.as_deref(),
        tls.as_ref(),
        &call_config,
    )?;
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
    let group_controller =
        controller::group::GroupControllerService::new(cluster.clone(), backend.clone());
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
        .add_service(traced(with_caller_deadline(ControllerServer::new(
            controller,
        ))))
        .add_service(traced(with_caller_deadline(GroupControllerServer::new(
            group_controller,
        ))))
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

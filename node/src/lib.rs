//! The hanfs CSI node plugin: CSI Identity + Node, mounting volume directories.
//!
//! - [`access_mode`]: pure: which publishes a single-writer access mode allows.
//! - [`config`]: what the plugin is told at start ([`NodeConfig`], [`Transport`]).
//! - [`service`]: the CSI Node RPCs ([`NodeService`]); stateless, mountinfo is the truth.
//! - [`mount_spec`]: pure: which mount(2) arguments a publish needs (bind or NFSv4).
//! - [`mount_table`]: one read of mountinfo per call, parsing only the lines a
//!   question needs (nodes carry thousands of mounts).
//! - [`target_path`]: checks that publish targets stay below the allowed roots.
//! - [`syscall_helper`]: mount/umount/statfs in a child process with a deadline, and
//!   the hidden `helper` subcommand that child runs.
//! - [`stats`]: pure: NodeGetVolumeStats usage from statfs.
//! - [`volume_health`]: pure: NodeGetVolumeHealth / NodeGetStorageHealth entries from
//!   the bounded probes (statfs in the helper, TCP connect, stat).
//! - [`error`]: the service's errors and their one mapping to CSI status codes.
//! - [`registration`]: kubelet plugin registration (instead of node-driver-registrar).
//! - [`health`]: `grpc.health.v1` kept up to date by a background check (instead of
//!   the livenessprobe sidecar).

pub mod access_mode;
pub mod config;
pub mod error;
pub mod health;
pub mod mount_spec;
pub mod mount_table;
pub mod registration;
pub mod service;
pub mod stats;
pub mod syscall_helper;
pub mod target_path;
pub mod volume_health;

pub use config::{NodeConfig, Transport};
pub use service::NodeService;

use common::endpoint::{EndpointError, Listener, serve};
use common::identity::{IdentityService, ReadinessCheck};
use common::rpc_trace::traced;
use health::HealthConfig;
use proto::csi::v1::identity_server::IdentityServer;
use proto::csi::v1::node_server::NodeServer;
use registration::{RegistrationConfig, RegistrationError, RegistrationService, RegistrationState};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;

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
        .add_service(traced(IdentityServer::new(identity)))
        .add_service(traced(NodeServer::new(NodeService::new(config))))
}

/// What the plugin serves besides Identity + Node + Health on the CSI socket.
#[derive(Default)]
pub struct Extras {
    /// kubelet plugin registration; `None`: not served.
    pub registration: Option<RegistrationConfig>,
    /// A second listener serving only `grpc.health.v1`: kubelet's gRPC probes dial TCP,
    /// not the CSI unix socket.
    pub health_listener: Option<Listener>,
    pub health: HealthConfig,
}

#[derive(Debug, Error)]
pub enum ServeError {
    /// A gRPC server failed.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The registration socket could not be created.
    #[error("kubelet registration: {0}")]
    Registration(#[from] RegistrationError),
    /// A server task panicked or ended without being told to.
    #[error("{0}")]
    Task(String),
}

/// Serves Identity + Node + Health on `listener` until `shutdown` completes.
pub async fn run(
    config: NodeConfig,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    run_with(config, listener, Extras::default(), shutdown).await
}

/// Serves the CSI socket and the `extras` until `shutdown` completes (or one server
/// fails), then stops them all and waits for them: the registration socket is removed
/// on the way out, which tells kubelet the driver is gone from this node.
pub async fn run_with(
    config: NodeConfig,
    listener: Listener,
    extras: Extras,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let csi_endpoint = listener.local_endpoint();
    tracing::info!(
        driver = %config.driver_name,
        node_id = %config.node_id,
        cluster = %config.cluster_id,
        transport = ?config.transport,
        endpoint = %csi_endpoint,
        "serving CSI Identity and Node"
    );
    let registration_dir = extras.registration.as_ref().map(|r| r.dir.clone());
    let driver_name = config.driver_name.clone();
    // Bound before anything is spawned, so a bad directory fails the start plainly.
    let registration = match &extras.registration {
        Some(reg) => {
            let listener = registration::bind(&reg.dir, &config.driver_name)?;
            let (state_tx, state_rx) = watch::channel(RegistrationState::Pending);
            let service =
                RegistrationService::new(&config.driver_name, &reg.kubelet_csi_endpoint, state_tx);
            tracing::info!(
                kubelet_csi_endpoint = %reg.kubelet_csi_endpoint.display(),
                "serving kubelet plugin registration"
            );
            Some((listener, service, state_rx))
        }
        None => None,
    };

    let (reporter, health_server) = tonic_health::server::health_reporter();
    // Not SERVING until the first check has passed.
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    };
    let mut servers = JoinSet::new();
    servers.spawn(serve(
        router(config).add_service(health_server.clone()),
        listener,
        stopped(stop_rx.clone()),
    ));
    let mut registration_state = None;
    if let Some((listener, service, state_rx)) = registration {
        servers.spawn(registration::serve(
            service,
            listener,
            stopped(stop_rx.clone()),
        ));
        registration_state = Some(state_rx);
    }
    if let Some(listener) = extras.health_listener {
        tracing::info!(endpoint = %listener.local_endpoint(), "serving grpc.health.v1");
        let router = tonic::transport::Server::builder().add_service(health_server);
        servers.spawn(serve(router, listener, stopped(stop_rx.clone())));
    }
    let checker = tokio::spawn(health::keep_up_to_date(
        reporter,
        csi_endpoint,
        registration_state,
        extras.health,
        stop_rx,
    ));

    let mut result = tokio::select! {
        _ = shutdown => Ok(()),
        Some(ended) = servers.join_next() => match ended {
            Ok(Ok(())) => Err(ServeError::Task("a gRPC server stopped by itself".into())),
            Ok(Err(err)) => Err(err.into()),
            Err(err) => Err(ServeError::Task(format!("a gRPC server task failed: {err}"))),
        },
    };
    stop_tx.send_replace(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(ended) = servers.join_next().await {
            let err = match ended {
                Ok(Ok(())) => continue,
                Ok(Err(err)) => err.into(),
                Err(err) => ServeError::Task(format!("a gRPC server task failed: {err}")),
            };
            if result.is_ok() {
                result = Err(err);
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "gRPC connections still open {DRAIN_TIMEOUT:?} after shutdown began; closing them"
        );
        servers.abort_all();
        // An aborted server does not remove its socket; kubelet must not find this one.
        if let Some(dir) = &registration_dir
            && let Ok(path) = registration::socket_path(dir, &driver_name)
        {
            let _ = std::fs::remove_file(path);
        }
    }
    let _ = checker.await;
    result
}

/// How long shutdown waits for clients to finish their calls: a graceful stop waits for
/// every connection to close, and one client that keeps its connection must not keep
/// the plugin from exiting until kubelet's SIGKILL.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

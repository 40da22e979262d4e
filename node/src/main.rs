//! `hanfs-node`: the CSI node plugin binary. Parses flags and serves; the hidden
//! `helper` subcommand runs one mount-path syscall for the plugin (see `syscall_helper`).

use clap::{Parser, Subcommand, ValueEnum};
use common::endpoint::{Endpoint, Listener, shutdown_signal};
use common::ids::ClusterId;
use node::config::{DEFAULT_NFS_OPTIONS, DEFAULT_NFS_SHARE, DEFAULT_TARGET_ROOT};
use node::health::HealthConfig;
use node::registration::RegistrationConfig;
use node::syscall_helper::{HelperCommand, run_helper};
use node::{Extras, NodeConfig, Transport, mount_spec};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "hanfs-node",
    version,
    about = "hanfs CSI node plugin",
    subcommand_negates_reqs = true
)]
struct Args {
    /// CSI endpoint to serve on.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// This node's id (the Kubernetes node name); defaults to the host name.
    #[arg(long, env = "NODE_ID")]
    node_id: Option<String>,
    /// The address this node's NFS client mounts from (the chart passes the pod's
    /// status.hostIP). NodeGetInfo then reports `<node-id>@<address>`, and
    /// ControllerPublishVolume admits that address to the volume's export. Without it
    /// the node id is the bare name, which ControllerPublish answers NOT_FOUND.
    #[arg(long, env = "NODE_ADDRESS")]
    node_address: Option<std::net::IpAddr>,
    #[arg(long, default_value = common::DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// The hanfs cluster whose volumes this node mounts.
    #[arg(long, required = true)]
    cluster_id: Option<String>,
    #[arg(long, value_enum, default_value = "nfs")]
    transport: TransportKind,
    /// Local transport: the exported directory (volumes are `<root>/volumes/<dir>`).
    #[arg(long, required_if_eq("transport", "local"))]
    local_export_root: Option<PathBuf>,
    /// NFS transport: the server when the volume context names none.
    #[arg(long)]
    nfs_server: Option<String>,
    /// NFS transport: the export path when the volume context names none.
    #[arg(long, default_value = DEFAULT_NFS_SHARE)]
    nfs_share: String,
    /// NFS mount option (repeatable); when given, replaces the defaults
    /// (vers=4.2,proto=tcp,hard,timeo=50,retrans=2,noresvport).
    #[arg(long = "nfs-mount-option")]
    nfs_mount_options: Vec<String>,
    /// Publish targets must lie below one of these (repeatable).
    #[arg(long = "allowed-target-root", default_value = DEFAULT_TARGET_ROOT)]
    allowed_target_roots: Vec<PathBuf>,
    #[arg(long, default_value_t = 30)]
    mount_timeout_secs: u64,
    #[arg(long, default_value_t = 10)]
    stats_timeout_secs: u64,
    /// kubelet's plugin-registration directory (e.g. /var/lib/kubelet/plugins_registry):
    /// serve registration on `<dir>/<driver-name>-reg.sock` there, so no
    /// node-driver-registrar sidecar is needed. Without it no registration is served.
    #[arg(long)]
    registration_dir: Option<PathBuf>,
    /// The CSI socket's path as kubelet sees it (e.g.
    /// /var/lib/kubelet/plugins/hanfs.csi.io/csi.sock); defaults to the path of --endpoint.
    #[arg(long)]
    kubelet_csi_endpoint: Option<String>,
    /// Also serve grpc.health.v1 (only that) here, e.g. tcp://127.0.0.1:9808, for
    /// kubelet's `livenessProbe.grpc`, which cannot dial a unix socket. The CSI socket
    /// serves it too.
    #[arg(long)]
    health_listen: Option<String>,
    /// How often the health check runs.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    health_interval_secs: u64,
    /// Longest one health check may take before it counts as failed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    health_timeout_secs: u64,
    /// Log JSON lines instead of text.
    #[arg(long)]
    json_logs: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportKind {
    Local,
    Nfs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Internal: one syscall on a mount path, run by the plugin in a child process.
    #[command(hide = true, subcommand)]
    Helper(HelperCommand),
}

/// Registration and health settings; `endpoint` is the parsed --endpoint.
fn extras_config(
    args: &Args,
    endpoint: &Endpoint,
) -> Result<(Option<RegistrationConfig>, Option<Endpoint>, HealthConfig), String> {
    let registration = match &args.registration_dir {
        None => None,
        Some(dir) => {
            let kubelet_csi_endpoint = match &args.kubelet_csi_endpoint {
                Some(text) => match Endpoint::parse(text) {
                    Ok(Endpoint::Unix(path)) => path,
                    _ => {
                        return Err(format!(
                            "--kubelet-csi-endpoint {text:?} must be a unix socket path"
                        ));
                    }
                },
                None => match endpoint {
                    Endpoint::Unix(path) => path.clone(),
                    Endpoint::Tcp(_) => {
                        return Err("--registration-dir with a tcp:// --endpoint needs \
                                    --kubelet-csi-endpoint (kubelet dials CSI drivers on unix sockets)"
                            .into());
                    }
                },
            };
            Some(RegistrationConfig {
                dir: dir.clone(),
                kubelet_csi_endpoint,
            })
        }
    };
    let health_listen = match &args.health_listen {
        Some(text) => Some(Endpoint::parse(text).map_err(|e| format!("--health-listen: {e}"))?),
        None => None,
    };
    let health = HealthConfig {
        interval: Duration::from_secs(args.health_interval_secs),
        timeout: Duration::from_secs(args.health_timeout_secs),
    };
    Ok((registration, health_listen, health))
}

fn node_config(args: Args) -> Result<NodeConfig, String> {
    let cluster = args.cluster_id.ok_or("--cluster-id is required")?;
    let cluster_id = ClusterId::parse(&cluster).map_err(|e| format!("--cluster-id: {e}"))?;
    let transport = match args.transport {
        TransportKind::Local => Transport::Local {
            export_root: args
                .local_export_root
                .ok_or("--transport local needs --local-export-root")?,
        },
        TransportKind::Nfs => {
            let options = if args.nfs_mount_options.is_empty() {
                DEFAULT_NFS_OPTIONS
                    .iter()
                    .map(|o| (*o).to_owned())
                    .collect()
            } else {
                args.nfs_mount_options
            };
            for option in &options {
                mount_spec::check_option(option).map_err(|e| format!("--nfs-mount-option: {e}"))?;
            }
            Transport::Nfs {
                default_server: args.nfs_server,
                default_share: args.nfs_share,
                options,
            }
        }
    };
    let node_id = match args.node_id {
        Some(id) if !id.is_empty() => id,
        _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .map_err(|e| format!("no --node-id and no host name: {e}"))?,
    };
    let node_id = match args.node_address {
        Some(address) => common::node_id::NodeId::new(&node_id, address)
            .map_err(|e| format!("--node-id with --node-address: {e}"))?
            .to_string(),
        None => node_id,
    };
    let helper_binary = std::env::current_exe()
        .map_err(|e| format!("cannot find this binary for the helper: {e}"))?;
    Ok(NodeConfig {
        driver_name: args.driver_name,
        node_id,
        cluster_id,
        transport,
        allowed_target_roots: args.allowed_target_roots,
        mount_timeout: Duration::from_secs(args.mount_timeout_secs),
        stats_timeout: Duration::from_secs(args.stats_timeout_secs),
        helper_binary,
    })
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(Command::Helper(command)) = args.command.take() {
        return run_helper(command);
    }
    // Before any thread exists (see common::memory).
    common::memory::limit_arenas(common::memory::ARENAS);
    common::logging::init(args.json_logs);
    let endpoint = match Endpoint::parse(&args.endpoint) {
        Ok(endpoint) => endpoint,
        Err(err) => return fail(&err.to_string()),
    };
    let (registration, health_listen, health) = match extras_config(&args, &endpoint) {
        Ok(extras) => extras,
        Err(err) => return fail(&err),
    };
    let config = match node_config(args) {
        Ok(config) => config,
        Err(err) => return fail(&err),
    };
    // Two workers whatever the node's core count: a call is little CPU around awaits
    // (mount-path syscalls run in helper processes that are awaited, never waited for
    // on a worker; directory work runs on the blocking pool), and every worker costs a
    // stack and, under load, an arena.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("starting the runtime: {err}")),
    };
    let served = runtime.block_on(async {
        tokio::spawn(common::memory::trim_periodically(
            common::memory::TRIM_PERIOD,
        ));
        let listener = Listener::bind(&endpoint).await?;
        let health_listener = match &health_listen {
            Some(endpoint) => Some(Listener::bind(endpoint).await?),
            None => None,
        };
        let extras = Extras {
            registration,
            health_listener,
            health,
        };
        node::run_with(config, listener, extras, shutdown_signal()).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err.to_string()),
    }
}

/// Logging is set up by then, so the reason goes to the log (text or JSON) on stderr.
fn fail(message: &str) -> ExitCode {
    tracing::error!("{message}");
    ExitCode::FAILURE
}

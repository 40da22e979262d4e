//! `hanfsctl`: runs hanfs in local mode and drives it the way Kubernetes would, through
//! the CSI sockets (and the backend API for status).
//!
//! - `local up`: starts hanfs-backend, hanfs-controller and hanfs-node on one machine
//!   (no Kubernetes, no DRBD) and keeps them running until Ctrl-C.
//! - `volume`, `snapshot`, `publish`, `unpublish`, `stats`, `status`: one CSI call each.

mod calls;
mod local;
mod size;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "hanfsctl", version, about = "hanfs admin CLI")]
struct Cli {
    /// The local-mode state directory: export, sockets, mount targets.
    #[arg(
        long,
        global = true,
        env = "HANFS_LOCAL_DIR",
        default_value = "/tmp/hanfs-local"
    )]
    dir: PathBuf,
    /// The cluster id local mode runs with.
    #[arg(long, global = true, env = "HANFS_CLUSTER_ID", default_value = "local")]
    cluster_id: String,
    /// The controller's CSI endpoint (default: local mode's socket under --dir).
    #[arg(long, global = true, env = "HANFS_CONTROLLER_ENDPOINT")]
    controller: Option<String>,
    /// The node plugin's CSI endpoint, e.g. tcp://10.0.0.7:10000 (default: local mode's
    /// socket under --dir).
    #[arg(long, global = true, env = "HANFS_NODE_ENDPOINT")]
    node: Option<String>,
    /// The backend volume API `status` asks, e.g. tcp://10.0.0.100:9820 (default: local
    /// mode's socket under --dir). On TCP it needs --tls-ca/--tls-cert/--tls-key.
    #[arg(long, global = true, env = "HANFS_BACKEND")]
    backend: Option<String>,
    /// File holding the backend's bearer token, when it wants one.
    #[arg(long, global = true, env = "HANFS_BACKEND_TOKEN_FILE")]
    backend_token_file: Option<PathBuf>,
    /// Mutual TLS to the backend: its CA, and a client certificate and key from the
    /// installation's CA (the chart's `<release>-tls` Secret holds one).
    #[command(flatten)]
    tls: common::credentials::TlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Local mode: run backend, controller and node plugin on this machine.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
    /// Create, inspect, expand and delete volumes (CSI Controller calls).
    Volume {
        #[command(subcommand)]
        command: calls::VolumeCommand,
    },
    /// Create, list and delete snapshots.
    Snapshot {
        #[command(subcommand)]
        command: calls::SnapshotCommand,
    },
    /// Mount a volume on a directory (CSI NodePublishVolume).
    Publish {
        volume_id: String,
        target: PathBuf,
        #[arg(long)]
        readonly: bool,
        /// Stage the volume here first (NodeStageVolume), as kubelet does, and publish
        /// a bind mount of it.
        #[arg(long)]
        staging: Option<PathBuf>,
        /// Volume context entry, key=value (repeatable), sent with NodeStageVolume and
        /// NodePublishVolume as kubelet sends a PV's `volumeAttributes`; e.g. a static
        /// PV: --context server=10.0.0.100 --context share=/export --context subDir=data.
        #[arg(long = "context", value_name = "KEY=VALUE", value_parser = calls::key_value)]
        context: Vec<(String, String)>,
    },
    /// Unmount it again (CSI NodeUnpublishVolume; NodeUnstageVolume with --staging).
    Unpublish {
        volume_id: String,
        target: PathBuf,
        #[arg(long)]
        staging: Option<PathBuf>,
    },
    /// Usage and health of a mounted volume (CSI NodeGetVolumeStats).
    Stats { volume_id: String, target: PathBuf },
    /// Whether the node plugin reaches the storage right now (CSI NodeGetStorageHealth):
    /// `storage: normal` or one line per problem; a failover in progress shows here.
    StorageHealth,
    /// Backend state: filesystem, quota and reflink support, capacity, counts.
    Status,
}

#[derive(Debug, Subcommand)]
enum LocalCommand {
    /// Start everything and wait for Ctrl-C.
    Up {
        /// Directory with the hanfs binaries (default: next to hanfsctl).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
}

fn backend_access(cli: &Cli) -> Result<calls::BackendAccess, Box<dyn std::error::Error>> {
    use common::credentials::{ClientTls, read_optional_token};
    Ok(calls::BackendAccess {
        token: read_optional_token(cli.backend_token_file.as_deref())?,
        tls: cli
            .tls
            .files()
            .map(|files| ClientTls::load(&files, None))
            .transpose()?,
    })
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let sockets = match local::Sockets::under(&cli.dir)
        .with_overrides(cli.controller.as_deref(), cli.node.as_deref())
        .and_then(|sockets| sockets.with_backend(cli.backend.as_deref()))
    {
        Ok(sockets) => sockets,
        Err(error) => {
            eprintln!("hanfsctl: {error}");
            std::process::exit(2);
        }
    };
    let access = match backend_access(&cli) {
        Ok(access) => access,
        Err(error) => {
            eprintln!("hanfsctl: {error}");
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        Command::Local {
            command: LocalCommand::Up { bin_dir },
        } => local::up(&cli.dir, &cli.cluster_id, bin_dir).await,
        Command::Volume { command } => calls::volume(&sockets, command).await,
        Command::Snapshot { command } => calls::snapshot(&sockets, command).await,
        Command::Publish {
            volume_id,
            target,
            readonly,
            staging,
            context,
        } => {
            calls::publish(
                &sockets,
                &volume_id,
                &target,
                readonly,
                staging.as_deref(),
                context,
            )
            .await
        }
        Command::Unpublish {
            volume_id,
            target,
            staging,
        } => calls::unpublish(&sockets, &volume_id, &target, staging.as_deref()).await,
        Command::Stats { volume_id, target } => calls::stats(&sockets, &volume_id, &target).await,
        Command::StorageHealth => calls::storage_health(&sockets).await,
        Command::Status => calls::status(&sockets, &access).await,
    };
    if let Err(error) = result {
        eprintln!("hanfsctl: {error}");
        std::process::exit(1);
    }
}

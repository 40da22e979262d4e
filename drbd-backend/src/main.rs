//! `hanfs-backend`: serves the volume API over an export directory.

use clap::{Parser, ValueEnum};
use hanfs_backend::volumes::store::CapacityPolicy;
use hanfs_backend::volumes::{StoreConfig, VolumeStore};
use hanfs_common::endpoint::{self, Endpoint, Listener};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Policy {
    /// A volume is created only if its full size is still unpromised.
    Reserve,
    /// Sizes are limits only; the export may be overcommitted.
    Thin,
}

#[derive(Debug, Parser)]
#[command(
    name = "hanfs-backend",
    version,
    about = "hanfs storage-server agent: the volume API over an export directory"
)]
struct Args {
    /// The exported directory (volumes live in <export-root>/volumes/<dir>).
    #[arg(long, env = "HANFS_EXPORT_ROOT")]
    export_root: PathBuf,
    /// Where the volume API listens: unix:///path.sock or tcp://host:port.
    #[arg(
        long,
        env = "HANFS_BACKEND_LISTEN",
        default_value = "tcp://0.0.0.0:9820"
    )]
    listen: String,
    /// File holding the bearer token callers must present (none: no authentication,
    /// only sensible on a unix socket).
    #[arg(long, env = "HANFS_BACKEND_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "reserve")]
    capacity_policy: Policy,
    /// Size of a volume whose request names no size.
    #[arg(long, default_value_t = 1 << 30)]
    default_volume_bytes: i64,
    /// Permission bits of a new volume's root directory (octal).
    #[arg(long, default_value = "0777", value_parser = parse_octal)]
    default_mode: u32,
    /// Log JSON lines instead of text.
    #[arg(long)]
    json_logs: bool,
}

fn parse_octal(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{text:?} is not an octal mode like 0777"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    hanfs_common::logging::init(args.json_logs);
    let token = match &args.auth_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("reading token file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let endpoint = Endpoint::parse(&args.listen)?;
    if token.is_none() && matches!(endpoint, Endpoint::Tcp(_)) {
        tracing::warn!(
            "the volume API listens on TCP without a token: anyone who reaches it can delete volumes"
        );
    }
    let config = StoreConfig {
        root: args.export_root,
        capacity_policy: match args.capacity_policy {
            Policy::Reserve => CapacityPolicy::Reserve,
            Policy::Thin => CapacityPolicy::Thin,
        },
        default_volume_bytes: args.default_volume_bytes,
        default_mode: args.default_mode,
        copy_hook: None,
    };
    let store = Arc::new(tokio::task::spawn_blocking(move || VolumeStore::open(config)).await??);
    let listener = Listener::bind(&endpoint).await?;
    tracing::info!(endpoint = %listener.local_endpoint(), "volume API serving");
    let router =
        tonic::transport::Server::builder().add_service(hanfs_backend::api::service(store, token));
    endpoint::serve(router, listener, endpoint::shutdown_signal()).await?;
    Ok(())
}

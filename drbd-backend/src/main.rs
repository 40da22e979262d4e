//! `hanfs-backend`: the storage-server binary.
//!
//! - no subcommand: serve the volume API over a plain export directory (local mode);
//! - `agent`: the HA agent of a storage server (DRBD, nfsd, VIP, Lease) with the volume
//!   API on the active node, the admin socket and `/metrics`;
//! - `fence-peer`: DRBD's fence-peer handler;
//! - `status`, `switchover`, `force-promote`: talk to a running agent.

use clap::{Args, Parser, Subcommand, ValueEnum};
use common::credentials::{self, TlsArgs};
use common::endpoint::{self, Endpoint, Listener};
use drbd_backend::admin::AdminService;
use drbd_backend::agent_config::AgentFile;
use drbd_backend::drivers::drbd::{self, Drbd};
use drbd_backend::drivers::fs_mount::FsMount;
use drbd_backend::drivers::lease::LeaseClient;
use drbd_backend::drivers::nfsd::{Nfsd, NfsdConfig};
use drbd_backend::drivers::vip::Vip;
use drbd_backend::ha::agent::{Agent, AgentConfig};
use drbd_backend::ha::system::SystemStack;
use drbd_backend::metrics;
use drbd_backend::servers::{self, Servers};
use proto::backend::v1 as pb;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use volumes::api::{self, StoreSlot};
use volumes::store::CapacityPolicy;
use volumes::{StoreConfig, VolumeStore};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
#[command(
    name = "hanfs-backend",
    version,
    about = "hanfs storage server: volume API, HA agent, admin commands"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HA agent of a storage server.
    Agent {
        /// The agent's JSON configuration.
        #[arg(long, default_value = "/etc/hanfs/agent.json")]
        config: PathBuf,
        #[arg(long)]
        json_logs: bool,
    },
    /// DRBD's fence-peer handler: record the peer as outdated in the Lease.
    FencePeer {
        #[arg(long, default_value = "/etc/hanfs/agent.json")]
        config: PathBuf,
    },
    /// Show the agent's state.
    Status {
        #[arg(long, default_value = "/run/hanfs/admin.sock")]
        socket: PathBuf,
    },
    /// Hand the service to the peer (run on the active node).
    Switchover {
        #[arg(long, default_value = "/run/hanfs/admin.sock")]
        socket: PathBuf,
    },
    /// Become active even if this node's data may be stale (disaster recovery).
    ForcePromote {
        #[arg(long, default_value = "/run/hanfs/admin.sock")]
        socket: PathBuf,
        /// Required: writes acknowledged by the peer since the last resync may be lost.
        #[arg(long)]
        accept_data_loss: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Policy {
    /// A volume is created only if its full size is still unpromised.
    Reserve,
    /// Sizes are limits only; the export may be overcommitted.
    Thin,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The exported directory (volumes live in <export-root>/volumes/<dir>).
    #[arg(long, env = "HANFS_EXPORT_ROOT")]
    export_root: Option<PathBuf>,
    /// Where the volume API listens: unix:///path.sock or tcp://host:port.
    #[arg(
        long,
        env = "HANFS_BACKEND_LISTEN",
        default_value = "tcp://0.0.0.0:9820"
    )]
    listen: String,
    /// File holding the bearer token callers must present, a second factor next to the
    /// client certificate (none: the certificate alone on TCP, file permissions on a
    /// unix socket). An empty file is an error.
    #[arg(long, env = "HANFS_BACKEND_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// Mutual TLS, required when --listen is tcp://: the clients' CA, and this server's
    /// certificate (naming the VIP) and key.
    #[command(flatten)]
    tls: TlsArgs,
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
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Agent { config, json_logs }) => {
            common::logging::init(json_logs);
            run_agent(&config).await
        }
        Some(Command::FencePeer { config }) => {
            common::logging::init(false);
            let code = fence_peer(&config).await;
            std::process::exit(code);
        }
        Some(Command::Status { socket }) => status(&socket).await,
        Some(Command::Switchover { socket }) => switchover(&socket).await,
        Some(Command::ForcePromote {
            socket,
            accept_data_loss,
        }) => force_promote(&socket, accept_data_loss).await,
    };
    if let Err(error) = result {
        eprintln!("hanfs-backend: {error}");
        std::process::exit(1);
    }
}

async fn serve(args: ServeArgs) -> Result<(), Error> {
    common::logging::init(args.json_logs);
    let export_root = args
        .export_root
        .ok_or("--export-root is required (or use a subcommand, see --help)")?;
    let token = credentials::read_optional_token(args.auth_token_file.as_deref())?;
    let endpoint = Endpoint::parse(&args.listen)?;
    // Before the store opens: bad credentials stop the server with nothing touched.
    let mut server = servers::volume_api_server(&endpoint, args.tls.files().as_ref())?;
    let config = StoreConfig {
        root: export_root,
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
    let router = server.add_service(api::service(store, token));
    endpoint::serve(router, listener, endpoint::shutdown_signal()).await?;
    Ok(())
}

async fn kube_client(file: &AgentFile) -> Result<kube::Client, Error> {
    let config = match &file.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

fn lease_client(file: &AgentFile, client: kube::Client) -> LeaseClient {
    LeaseClient::new(
        client,
        &file.lease.namespace,
        &file.lease.name,
        &file.node,
        Duration::from_millis(file.lease.duration_ms),
        // A Lease call must answer well within a renew interval.
        Duration::from_millis(file.lease.duration_ms / 6),
    )
}

/// Sets every thread of this process to `nice` (Linux keeps a nice value per thread; the
/// runtime's threads exist already, and threads and tools started later inherit it). A
/// refusal (no CAP_SYS_NICE) is logged, not fatal: the agent works, only less surely
/// under CPU starvation.
fn set_priority(nice: i32) {
    let tasks = match std::fs::read_dir("/proc/self/task") {
        Ok(tasks) => tasks,
        Err(error) => {
            tracing::warn!(%error, nice, "cannot list this process's threads: priority unchanged");
            return;
        }
    };
    let mut refused = Vec::new();
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::id_t>().ok())
        else {
            continue;
        };
        // SAFETY: setpriority takes plain integers and touches no memory of ours.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
        if rc != 0 {
            refused.push(format!("{tid}: {}", std::io::Error::last_os_error()));
        }
    }
    if refused.is_empty() {
        tracing::info!(nice, "agent priority set");
    } else {
        tracing::warn!(
            nice,
            ?refused,
            "could not set the agent's priority on every thread"
        );
    }
}

async fn run_agent(path: &Path) -> Result<(), Error> {
    let file = AgentFile::load(path)?;
    set_priority(file.nice);
    // Credentials first: a bad file stops the agent before it touches DRBD or the Lease.
    let token = credentials::read_optional_token(file.volume_api.token_file.as_deref())?;
    let volume_endpoint = Endpoint::parse(&file.volume_api.listen)?;
    let mut volume_server =
        servers::volume_api_server(&volume_endpoint, file.volume_api.tls_files().as_ref())?;
    // 0700: it holds the tenure and (by default) the admin socket.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&file.state_dir)
        .map_err(|e| format!("creating state dir {}: {e}", file.state_dir.display()))?;
    let lease = lease_client(&file, kube_client(&file).await?);
    let drbd = Drbd {
        drbdadm: "drbdadm".into(),
        drbdsetup: "drbdsetup".into(),
        resource: file.drbd.resource.clone(),
        timeout: Duration::from_secs(10),
    };
    let warnings = match drbd.dump_config().await {
        Ok(text) => drbd::unsafe_options(&text),
        Err(e) => vec![format!("cannot read the DRBD configuration: {e}")],
    };
    for warning in &warnings {
        tracing::warn!(%warning, "unsafe DRBD configuration");
    }
    let mut mount = FsMount::new(
        &file.drbd.device,
        &file.filesystem.mountpoint,
        &file.filesystem.fstype,
    );
    mount.options = file.filesystem.options.clone();
    let mut nfsd_config = NfsdConfig::new(&file.filesystem.mountpoint, &file.nfsd.scope);
    nfsd_config.lease_secs = file.nfsd.lease_secs;
    nfsd_config.grace_secs = file.nfsd.grace_secs;
    nfsd_config.threads = file.nfsd.threads;
    nfsd_config.root_squash = file.nfsd.root_squash;
    nfsd_config.exports_file = file.nfsd.exports_file.clone();
    let nfsd = Nfsd::new(nfsd_config)?;
    let allowed_clients = file.nfsd.allowed_cidrs()?;
    let vip = Vip::new(
        file.vip.address,
        file.vip.prefix_len,
        file.vip.interface.clone(),
    );
    let slot = Arc::new(StoreSlot::default());
    // Publish calls and the takeover's export step apply the table through nfsd.
    slot.set_exports(volumes::exports::ExportControl::new(
        allowed_clients,
        Some(Arc::new(nfsd.clone())),
    ));
    let policy = if file.volume_api.thin {
        CapacityPolicy::Thin
    } else {
        CapacityPolicy::Reserve
    };
    let stack = SystemStack::new(
        drbd,
        mount,
        nfsd,
        vip,
        slot.clone(),
        policy,
        file.volume_api.default_volume_bytes,
        file.last_resort,
    );
    stack.keep_warm().await;
    let ha = file.ha();
    let agent = Agent::new(
        AgentConfig {
            ha: ha.clone(),
            tick: Duration::from_millis(250),
            state_dir: file.state_dir.clone(),
            step_timeout: Duration::from_secs(30),
        },
        lease,
        stack,
    );
    let handle = agent.handle();

    // Every server is watched: should one stop, the agent stops and exits non-zero (the
    // roles stay as on SIGTERM; the restarted agent resumes its tenure and rebinds).
    let mut servers = Servers::default();

    // The volume API listens on every node; only the active one has the store open.
    let volume_listener = Listener::bind(&volume_endpoint).await?;
    let router = volume_server.add_service(api::service_for_slot(slot.clone(), token));
    servers.spawn(
        "volume API",
        endpoint::serve(router, volume_listener, std::future::pending()),
    );

    // The admin socket can force-promote: only root reaches it (0600 in a 0700 directory).
    // Remote admin has no listener of its own: run these commands over ssh on the node.
    let own_directory = file.admin_socket.parent() == Some(file.state_dir.as_path());
    let admin_listener = servers::bind_admin_socket(&file.admin_socket, own_directory).await?;
    let admin_router = tonic::transport::Server::builder().add_service(AdminService::server(
        ha.clone(),
        handle.clone(),
        warnings,
    ));
    servers.spawn(
        "admin",
        endpoint::serve(admin_router, admin_listener, std::future::pending()),
    );

    if let Some(address) = &file.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| format!("binding metrics {address}: {e}"))?;
        let sample_slot = slot.clone();
        // statfs/read_dir of the export, on the sampler's thread, never in a scrape.
        let sampler = metrics::Sampler::start(
            "export-sampler",
            Duration::from_secs(5),
            Duration::from_secs(20),
            move || {
                let store = sample_slot.get().ok()?;
                store
                    .status()
                    .inspect_err(|e| tracing::warn!(error = %e, "sampling the export failed"))
                    .ok()
                    .map(|s| s.volume_count)
            },
        )
        .map_err(|e| format!("starting the export sampler: {e}"))?;
        let status_handle = handle.clone();
        let registry = metrics::registry(metrics::Sources {
            config: ha.clone(),
            status: Box::new(move || status_handle.status()),
            // The sampler lives as long as the registry, i.e. the metrics server.
            export: Box::new(move || sampler.latest()),
        });
        servers.spawn("metrics", metrics::serve(listener, Arc::new(registry)));
    }
    tracing::info!(node = %file.node, peer = %file.peer, "HA agent running");
    let mut stopped = None;
    agent
        .run(async {
            tokio::select! {
                () = endpoint::shutdown_signal() => {}
                server = servers.first_stopped() => {
                    tracing::error!(%server, "a server of the agent stopped: stopping the agent");
                    stopped = Some(server);
                }
            }
        })
        .await;
    match stopped {
        Some(server) => Err(server.to_string().into()),
        None => Ok(()),
    }
}

async fn fence_peer(path: &Path) -> i32 {
    let file = match AgentFile::load(path) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("fence-peer: {e}");
            return drbd_backend::ha::fence::EXIT_REFUSED;
        }
    };
    let client = match kube_client(&file).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("fence-peer: {e}");
            return drbd_backend::ha::fence::EXIT_REFUSED;
        }
    };
    let lease = lease_client(&file, client);
    // DRBD holds I/O frozen while this runs; it must answer before the renew deadline.
    let patience = Duration::from_millis(file.lease.duration_ms * 2 / 3);
    let (code, message) = drbd_backend::ha::fence::fence_peer(
        &lease,
        &file.node,
        &file.peer,
        &file.state_dir,
        patience,
    )
    .await;
    eprintln!("fence-peer: {message}");
    code
}

fn admin_client(
    socket: &Path,
) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>, Error> {
    Ok(pb::admin_client::AdminClient::new(endpoint::connect_lazy(
        &Endpoint::Unix(socket.to_owned()),
    )?))
}

fn described(status: tonic::Status) -> Error {
    format!("{:?}: {}", status.code(), status.message()).into()
}

async fn status(socket: &Path) -> Result<(), Error> {
    let s = admin_client(socket)?
        .status(pb::AdminStatusRequest {})
        .await
        .map_err(described)?
        .into_inner();
    println!("node:        {} (peer {})", s.node, s.peer);
    println!("state:       {}", s.summary);
    println!(
        "drbd:        {} {} / peer {} {} ({})",
        s.drbd_role,
        s.disk,
        s.peer_role,
        s.peer_disk,
        if s.connected {
            "connected"
        } else {
            "NOT connected"
        }
    );
    println!(
        "stack:       mounted={} nfsd={} exported={} vip={}",
        s.mounted, s.nfsd, s.exported, s.vip
    );
    println!(
        "lease:       holder {} ({} ms {})",
        if s.lease_holder.is_empty() {
            "nobody"
        } else {
            &s.lease_holder
        },
        s.lease_remaining_ms.abs(),
        if s.lease_remaining_ms >= 0 {
            "left"
        } else {
            "overdue"
        }
    );
    if !s.outdated.is_empty() {
        println!("fenced:      {} is marked outdated", s.outdated);
    }
    println!(
        "takeovers:   {} (last: {})",
        s.acquisitions,
        if s.last_takeover_ms < 0 {
            "none".to_string()
        } else {
            format!("{} ms", s.last_takeover_ms)
        }
    );
    for warning in &s.warnings {
        println!("WARNING:     {warning}");
    }
    for (what, text) in [
        ("lease error", &s.lease_error),
        ("step error", &s.last_step_error),
    ] {
        if !text.is_empty() {
            println!("{what}: {text}");
        }
    }
    Ok(())
}

async fn switchover(socket: &Path) -> Result<(), Error> {
    let r = admin_client(socket)?
        .switchover(pb::SwitchoverRequest {})
        .await
        .map_err(described)?
        .into_inner();
    println!("{}", r.message);
    Ok(())
}

async fn force_promote(socket: &Path, accept_data_loss: bool) -> Result<(), Error> {
    let r = admin_client(socket)?
        .force_promote(pb::ForcePromoteRequest { accept_data_loss })
        .await
        .map_err(described)?
        .into_inner();
    println!("{}", r.message);
    Ok(())
}

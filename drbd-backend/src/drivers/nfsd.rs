//! The kernel NFS server, set up for fast client recovery (DESIGN.md §4):
//! - client-tracking state (the `nfsdcld` database) on the replicated filesystem, so
//!   the new server knows its clients, they reclaim, and grace ends early;
//! - the same `fsid=` on both nodes (no stale file handles);
//! - NFSv4.1+ only by default (v3/NLM would force the whole grace period);
//! - lease and grace times set before nfsd starts (nfsd accepts 10..=3600 s);
//! - the same NFSv4 server scope on both nodes: rpc.nfsd runs in its own UTS namespace
//!   with the VIP's name as hostname, so clients see the same server after failover.
//!
//! - per-volume export ACLs (DESIGN.md §8): nothing exports the whole tree; each
//!   published volume is one line of [`NfsdConfig::exports_file`]
//!   (`/etc/exports.d/hanfs.exports`) admitting its nodes' addresses, rendered from the
//!   publish records ([`render_exports`]) and applied with one `exportfs -r`.
//!
//! Each step is its own function; the agent orders them (start: [`Nfsd::keep_warm`],
//! [`Nfsd::prepare_state_dir`], [`Nfsd::start_cld`], [`Nfsd::write_times`],
//! [`Nfsd::start`], [`Nfsd::apply_table`]; stop: [`Nfsd::unexport`], [`Nfsd::stop`],
//! then drop the [`Daemon`]). Command lines, the exports file and `exportfs -v` parsing
//! are pure functions.

use crate::drivers::command::{self, CommandError};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;
use volumes::exports::{ApplyFuture, ExportSink, ExportTable};

/// nfsd's bounds for `nfsv4leasetime` and `nfsv4gracetime` (fs/nfsd/nfsctl.c).
pub const MIN_LEASE_GRACE_SECS: u32 = 10;
pub const MAX_LEASE_GRACE_SECS: u32 = 3600;

/// How long [`Nfsd::start_cld`] watches nfsdcld for an immediate failure.
const CLD_SETTLE: Duration = Duration::from_millis(300);
/// Lines of nfsdcld's stderr kept for the error when it dies at start.
const CLD_STDERR_TAIL: usize = 20;

#[derive(Debug, Error)]
pub enum NfsdError {
    /// A configuration value nfsd (or the safety design) does not accept.
    #[error("invalid nfsd setting {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    /// A tool (rpc.nfsd, exportfs, modprobe, mount, unshare) failed, timed out, or
    /// could not start.
    #[error("{step}: {source}")]
    Command {
        step: &'static str,
        #[source]
        source: CommandError,
    },
    /// Reading or writing a file (under /proc/fs/nfsd, the state dir, …) failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file operation did not finish in time (a hung filesystem).
    #[error("{action} {path} did not finish within {timeout:?}")]
    TimedOut {
        action: &'static str,
        path: PathBuf,
        timeout: Duration,
    },
    /// A value read from /proc/fs/nfsd is not what nfsd writes there.
    #[error("unexpected content in {path}: {content:?}")]
    BadProcValue { path: PathBuf, content: String },
    /// Lease and grace times can only be set while nfsd is stopped.
    #[error(
        "nfsd is running ({threads} threads): lease and grace times must be written before it starts"
    )]
    AlreadyRunning { threads: u32 },
    /// `cld_dir` exists and is neither a directory nor a symlink.
    #[error("{path} is in the way of the nfsdcld state symlink")]
    CldDirInTheWay { path: PathBuf },
    /// A helper daemon (nfsdcld, rpc.mountd) could not be started.
    #[error("starting {program}: {source}")]
    DaemonSpawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A helper daemon exited right after starting.
    #[error("{name} exited at start ({status}): {stderr}")]
    DaemonExited {
        name: &'static str,
        status: String,
        stderr: String,
    },
}

/// Where the tools are (tests point these at test doubles).
#[derive(Debug, Clone)]
pub struct NfsdTools {
    pub rpc_nfsd: PathBuf,
    pub rpc_mountd: PathBuf,
    pub exportfs: PathBuf,
    pub nfsdcld: PathBuf,
    pub unshare: PathBuf,
    /// Runs `hostname <scope> && exec rpc.nfsd …` inside the new UTS namespace.
    pub sh: PathBuf,
    pub hostname: PathBuf,
    pub modprobe: PathBuf,
    pub mount: PathBuf,
}

impl Default for NfsdTools {
    fn default() -> NfsdTools {
        NfsdTools {
            rpc_nfsd: "rpc.nfsd".into(),
            rpc_mountd: "rpc.mountd".into(),
            exportfs: "exportfs".into(),
            nfsdcld: "nfsdcld".into(),
            unshare: "unshare".into(),
            sh: "/bin/sh".into(),
            hostname: "hostname".into(),
            modprobe: "modprobe".into(),
            mount: "mount".into(),
        }
    }
}

/// How nfsd serves the export. Build with [`NfsdConfig::new`], adjust, then hand to
/// [`Nfsd::new`], which checks it.
#[derive(Debug, Clone)]
pub struct NfsdConfig {
    /// The replicated filesystem's mount point; volumes are `<export_path>/volumes/<dir>`.
    pub export_path: PathBuf,
    /// Options of every volume export besides `rw`/`ro`, the squash flag and `fsid=`
    /// (those come from the publication, [`NfsdConfig::root_squash`] and the volume's
    /// record). `insecure` is needed for clients mounting with `noresvport`.
    pub options: Vec<String>,
    /// `root_squash` (default): root on a client acts as nobody, so a node's root can
    /// neither chown tenants' files nor bypass the project quota (on ext4 root writes
    /// through nfsd did). `false` exports `no_root_squash`, for workloads that must
    /// chown as root.
    pub root_squash: bool,
    /// The exports file hanfs owns; `exportfs -r` reads it with `/etc/exports`.
    pub exports_file: PathBuf,
    /// `nfsv4leasetime`, seconds.
    pub lease_secs: u32,
    /// `nfsv4gracetime`, seconds (at least the lease, so every client can reclaim).
    pub grace_secs: u32,
    pub threads: u32,
    /// The hostname nfsd sees (the VIP's name): the NFSv4 server scope.
    pub server_scope: String,
    /// The nfsdcld database on the replicated filesystem (`<fs>/.hanfs/nfsdcld`).
    pub state_dir: PathBuf,
    /// Where nfsdcld keeps its database (`/var/lib/nfs/nfsdcld`); made a symlink to
    /// `state_dir`. A symlink rather than a bind mount: a bind mount would keep the
    /// replicated filesystem busy after the export's own unmount.
    pub cld_dir: PathBuf,
    /// Serve NFSv4.1 and 4.2 only (`-N 3 -N 4 -V 4.1 -V 4.2`; `-N 2` fails on kernels
    /// built without v2). `false` leaves the versions to the kernel's defaults.
    pub v41_only: bool,
    pub tools: NfsdTools,
    /// The nfsd control filesystem (`/proc/fs/nfsd`).
    pub procfs: PathBuf,
    /// The RPC pipe filesystem nfsdcld talks to the kernel through
    /// (`/run/rpc_pipefs` on Debian); mounted by `keep_warm` when a minimal system has not.
    pub rpc_pipefs: PathBuf,
    /// Deadline for each command and each file operation.
    pub timeout: Duration,
}

impl NfsdConfig {
    /// Defaults: `sync,insecure,no_subtree_check,root_squash` per volume export, lease
    /// and grace 10 s (the tuned prototype's values), 8 threads, v4.1+ only, state in
    /// `<export>/.hanfs/nfsdcld`, exports in `/etc/exports.d/hanfs.exports`.
    pub fn new(export_path: impl Into<PathBuf>, server_scope: impl Into<String>) -> NfsdConfig {
        let export_path = export_path.into();
        NfsdConfig {
            state_dir: export_path.join(".hanfs/nfsdcld"),
            export_path,
            options: ["sync", "insecure", "no_subtree_check"]
                .map(String::from)
                .to_vec(),
            root_squash: true,
            exports_file: "/etc/exports.d/hanfs.exports".into(),
            lease_secs: 10,
            grace_secs: 10,
            threads: 8,
            server_scope: server_scope.into(),
            cld_dir: "/var/lib/nfs/nfsdcld".into(),
            v41_only: true,
            tools: NfsdTools::default(),
            procfs: "/proc/fs/nfsd".into(),
            // Debian's /etc/nfs.conf default (`pipefs-directory`); passed to nfsdcld
            // explicitly so both agree whatever nfs.conf says.
            rpc_pipefs: "/run/rpc_pipefs".into(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Checks every value against what nfsd and exportfs accept.
    pub fn validate(&self) -> Result<(), NfsdError> {
        let invalid = |field, reason: String| Err(NfsdError::InvalidConfig { field, reason });
        for (field, path) in [
            ("export_path", &self.export_path),
            ("exports_file", &self.exports_file),
            ("state_dir", &self.state_dir),
            ("cld_dir", &self.cld_dir),
            ("procfs", &self.procfs),
        ] {
            if !path.is_absolute() {
                return invalid(field, format!("{} is not an absolute path", path.display()));
            }
        }
        for (field, secs) in [
            ("lease_secs", self.lease_secs),
            ("grace_secs", self.grace_secs),
        ] {
            if !(MIN_LEASE_GRACE_SECS..=MAX_LEASE_GRACE_SECS).contains(&secs) {
                return invalid(
                    field,
                    format!(
                        "{secs} s is outside nfsd's {MIN_LEASE_GRACE_SECS}..={MAX_LEASE_GRACE_SECS} s"
                    ),
                );
            }
        }
        if self.grace_secs < self.lease_secs {
            return invalid(
                "grace_secs",
                format!(
                    "{} s is shorter than the {} s lease: a client renews once per lease and could miss the \
                     whole grace period",
                    self.grace_secs, self.lease_secs
                ),
            );
        }
        if !(1..=1024).contains(&self.threads) {
            return invalid("threads", format!("{} is outside 1..=1024", self.threads));
        }
        let scope = &self.server_scope;
        let scope_ok = !scope.is_empty()
            && scope.len() <= 64
            && !scope.starts_with(['-', '.'])
            && scope
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !scope_ok {
            return invalid(
                "server_scope",
                format!("{scope:?} is not a hostname of at most 64 characters"),
            );
        }
        let word_ok = |w: &str| {
            !w.is_empty() && !w.contains(|c: char| c.is_whitespace() || "(),".contains(c))
        };
        // The exports file is whitespace-separated: a path with a blank would split.
        if !self
            .export_path
            .to_str()
            .is_some_and(|p| word_ok(p) && !p.contains('"'))
        {
            return invalid(
                "export_path",
                format!(
                    "{} cannot appear in an exports file (blanks, quotes, parentheses or commas)",
                    self.export_path.display()
                ),
            );
        }
        for option in &self.options {
            if !word_ok(option) {
                return invalid("options", format!("{option:?} is not one export option"));
            }
            let set_elsewhere = option.starts_with("fsid=")
                || ["rw", "ro", "root_squash", "no_root_squash"].contains(&option.as_str());
            if set_elsewhere {
                return invalid(
                    "options",
                    format!(
                        "{option:?} is set per volume (fsid from its record, rw/ro from the \
                         publication, squashing from root_squash)"
                    ),
                );
            }
        }
        Ok(())
    }

    /// The options of one client of one volume export.
    fn client_options(&self, readonly: bool, fsid: &str) -> String {
        let mut options = vec![if readonly { "ro" } else { "rw" }.to_owned()];
        options.extend(self.options.iter().cloned());
        options.push(
            if self.root_squash {
                "root_squash"
            } else {
                "no_root_squash"
            }
            .into(),
        );
        options.push(format!("fsid={fsid}"));
        options.join(",")
    }
}

/// The first line of the exports file hanfs writes.
pub const EXPORTS_HEADER: &str =
    "# Written by hanfs-backend from the publish records on the replicated disk; do not edit.";

/// The exports file for `table` (pure): one line per published volume,
/// `<path> <address>(<options>) …`, in the table's (sorted) order. A path that could not
/// be written safely is left out and logged (it cannot occur for names hanfs made).
pub fn render_exports(config: &NfsdConfig, table: &ExportTable) -> String {
    let mut text = String::with_capacity(64 + table.volumes.len() * 160);
    text.push_str(EXPORTS_HEADER);
    text.push('\n');
    for volume in &table.volumes {
        let Some(path) = volume
            .path
            .to_str()
            .filter(|p| !p.contains(|c: char| c.is_whitespace() || "\"(),#".contains(c)))
        else {
            tracing::error!(path = %volume.path.display(), "volume path cannot go into an exports file: not exported");
            continue;
        };
        text.push_str(path);
        for (address, readonly) in &volume.clients {
            text.push(' ');
            text.push_str(&address.to_string());
            text.push('(');
            text.push_str(&config.client_options(*readonly, &volume.fsid));
            text.push(')');
        }
        text.push('\n');
    }
    text
}

/// The (path, client) pairs an exports file of ours lists (pure; the inverse of
/// [`render_exports`] for what [`Nfsd::is_exported`] compares).
pub fn parse_exports_file(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(path) = words.next() else { continue };
        for client in words {
            let client = client.split_once('(').map_or(client, |(c, _)| c);
            pairs.push((path.to_owned(), client.to_owned()));
        }
    }
    pairs
}

/// The pairs of `wanted` the kernel's table (`exportfs -v`) lacks.
pub fn missing_exports(
    wanted: &[(String, String)],
    kernel: &[ExportEntry],
) -> Vec<(String, String)> {
    wanted
        .iter()
        .filter(|(path, client)| {
            !kernel
                .iter()
                .any(|e| &e.path == path && &e.client == client)
        })
        .cloned()
        .collect()
}

/// The arguments of rpc.nfsd: version flags, then the thread count.
pub fn rpc_nfsd_args(config: &NfsdConfig) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    if config.v41_only {
        args.extend(["-N", "3", "-N", "4", "-V", "4.1", "-V", "4.2"].map(String::from));
    }
    args.push(config.threads.to_string());
    args
}

/// The shell script run in the new UTS namespace. Values arrive as positional
/// parameters, never in the script text, so no name can inject shell syntax.
pub const UTS_SCRIPT: &str = r#""$1" "$2" && shift 2 && exec "$@""#;

/// The command that starts nfsd under the shared server identity:
/// `unshare --uts sh -c '"$1" "$2" && shift 2 && exec "$@"' hanfs-nfsd <hostname>
/// <scope> <rpc.nfsd> <args…>`. nfsd takes its server scope from the hostname of the
/// process that starts it; the namespace keeps the node's own hostname unchanged.
pub fn start_command(config: &NfsdConfig) -> (PathBuf, Vec<OsString>) {
    let tools = &config.tools;
    let mut args: Vec<OsString> = vec![
        "--uts".into(),
        tools.sh.clone().into(),
        "-c".into(),
        UTS_SCRIPT.into(),
        "hanfs-nfsd".into(), // $0 of the script
        tools.hostname.clone().into(),
        config.server_scope.clone().into(),
        tools.rpc_nfsd.clone().into(),
    ];
    args.extend(rpc_nfsd_args(config).into_iter().map(OsString::from));
    (tools.unshare.clone(), args)
}

/// One line of the kernel's export table as `exportfs -v` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportEntry {
    pub path: String,
    /// As printed: `<world>` stands for `*`.
    pub client: String,
    /// Empty for plain `exportfs` output.
    pub options: Vec<String>,
}

impl ExportEntry {
    /// Whether this entry is for the client spec `spec` (`*` matches `<world>`).
    pub fn client_is(&self, spec: &str) -> bool {
        self.client == spec || (spec == "*" && self.client == "<world>")
    }
}

/// Parses `exportfs -v` (nfs-utils `exportfs.c`, `dump()`): each export is
/// `%-14s\t<client>(<options>)`, or for paths longer than 14 characters the path alone
/// and `\t\t<client>(<options>)` on the next line. `*` prints as `<world>`.
pub fn parse_exportfs_verbose(text: &str) -> Vec<ExportEntry> {
    let mut entries = Vec::new();
    let mut pending_path: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let (path, client_part) = if line.starts_with(char::is_whitespace) {
            // Continuation: the client of the path on the line before.
            match pending_path.take() {
                Some(path) => (path, line.trim()),
                None => continue,
            }
        } else if let Some((path, rest)) = line.split_once('\t') {
            (path.trim_end().to_owned(), rest.trim())
        } else {
            pending_path = Some(line.trim_end().to_owned());
            continue;
        };
        let (client, options) = match client_part.split_once('(') {
            Some((client, rest)) => {
                let opts = rest.strip_suffix(')').unwrap_or(rest);
                (
                    client.to_owned(),
                    opts.split(',')
                        .filter(|o| !o.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            }
            None => (client_part.to_owned(), Vec::new()),
        };
        entries.push(ExportEntry {
            path,
            client,
            options,
        });
    }
    entries
}

/// A running nfsdcld (in the foreground, supervised). Killed on drop.
#[derive(Debug)]
pub struct Daemon {
    name: &'static str,
    child: tokio::process::Child,
    /// Forwards the daemon's stderr to the log; ends when the daemon does.
    _stderr: JoinHandle<VecDeque<String>>,
}

impl Daemon {
    /// The daemon's pid (None once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the daemon and waits for it. Neither nfsdcld (every upcall is committed
    /// before the reply) nor rpc.mountd keeps state worth a graceful stop.
    pub async fn stop(mut self) -> Result<(), NfsdError> {
        tracing::info!(daemon = self.name, "stopping");
        let _ = self.child.start_kill();
        self.child
            .wait()
            .await
            .map(drop)
            .map_err(|source| NfsdError::Io {
                action: "wait for a stopped daemon",
                path: PathBuf::new(),
                source,
            })
    }
}

/// The NFS server of this node, with a checked configuration.
#[derive(Debug, Clone)]
pub struct Nfsd {
    config: NfsdConfig,
    /// Held (by every clone) from writing the exports file until `exportfs -r` has applied
    /// it, and while the health check compares the two: between those steps the file
    /// lists entries the kernel does not have yet, and the check must not read that as
    /// "exports went down" (a burst of publishes once made the active stand down).
    exports: Arc<tokio::sync::Mutex<()>>,
}

impl Nfsd {
    pub fn new(config: NfsdConfig) -> Result<Nfsd, NfsdError> {
        config.validate()?;
        Ok(Nfsd {
            config,
            exports: Arc::default(),
        })
    }

    pub fn config(&self) -> &NfsdConfig {
        &self.config
    }

    async fn run(
        &self,
        step: &'static str,
        program: &Path,
        args: &[OsString],
    ) -> Result<String, NfsdError> {
        // Health checks run these every tick: only changes deserve an info line.
        tracing::debug!(step, program = %program.display(), ?args, "nfsd");
        command::run(&program.to_string_lossy(), args, self.config.timeout)
            .await
            .map(|out| out.stdout)
            .map_err(|source| NfsdError::Command { step, source })
    }

    /// Runs blocking file work off the runtime under the deadline.
    async fn blocking<T: Send + 'static>(
        &self,
        action: &'static str,
        path: &Path,
        work: impl FnOnce() -> Result<T, NfsdError> + Send + 'static,
    ) -> Result<T, NfsdError> {
        match tokio::time::timeout(self.config.timeout, tokio::task::spawn_blocking(work)).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(NfsdError::Io {
                action,
                path: path.to_owned(),
                source: std::io::Error::other(join),
            }),
            Err(_) => Err(NfsdError::TimedOut {
                action,
                path: path.to_owned(),
                timeout: self.config.timeout,
            }),
        }
    }

    /// On the standby: load nfsd and mount its control filesystem without starting
    /// any thread, so a takeover skips module loading (~1 s measured).
    pub async fn keep_warm(&self) -> Result<(), NfsdError> {
        self.run(
            "modprobe nfsd",
            &self.config.tools.modprobe,
            &["nfsd".into()],
        )
        .await?;
        let threads = self.config.procfs.join("threads");
        if !tokio::fs::try_exists(&threads).await.unwrap_or(false) {
            let args: Vec<OsString> = vec![
                "-t".into(),
                "nfsd".into(),
                "nfsd".into(),
                self.config.procfs.clone().into(),
            ];
            self.run("mount the nfsd filesystem", &self.config.tools.mount, &args)
                .await?;
        }
        // nfsdcld waits on <rpc_pipefs>/nfsd; without the pipe filesystem it exits at once.
        let pipes = &self.config.rpc_pipefs;
        if !tokio::fs::try_exists(pipes.join("nfsd"))
            .await
            .unwrap_or(false)
        {
            tokio::fs::create_dir_all(pipes)
                .await
                .map_err(|source| NfsdError::Io {
                    action: "creating the rpc_pipefs mount point",
                    path: pipes.clone(),
                    source,
                })?;
            let args: Vec<OsString> = vec![
                "-t".into(),
                "rpc_pipefs".into(),
                "sunrpc".into(),
                pipes.clone().into(),
            ];
            self.run("mount rpc_pipefs", &self.config.tools.mount, &args)
                .await?;
        }
        Ok(())
    }

    /// Creates the nfsdcld state directory on the replicated filesystem (mode 0700:
    /// clients mounting the export root must not read it) and points `cld_dir` at it.
    /// A local database already at `cld_dir` is moved aside, never deleted. Run before
    /// nfsdcld starts.
    pub async fn prepare_state_dir(&self) -> Result<(), NfsdError> {
        let state_dir = self.config.state_dir.clone();
        let cld_dir = self.config.cld_dir.clone();
        self.blocking("prepare", &self.config.state_dir, move || {
            link_state_dir(&state_dir, &cld_dir)
        })
        .await
    }

    /// Starts `nfsdcld -F -p <rpc_pipefs> -s <cld_dir>` as a supervised child. Fails if it exits within
    /// a moment (e.g. rpc_pipefs not mounted, database unreadable).
    pub async fn start_cld(&self) -> Result<Daemon, NfsdError> {
        let args: Vec<OsString> = vec![
            "-F".into(),
            "-p".into(),
            self.config.rpc_pipefs.clone().into(),
            "-s".into(),
            self.config.cld_dir.clone().into(),
        ];
        self.start_daemon("nfsdcld", &self.config.tools.nfsdcld, &args)
            .await
    }

    /// Starts `rpc.mountd -F` as a supervised child. NFSv4 needs it too: the kernel asks
    /// it (through the export cache upcall) which exports exist, and without an answer
    /// every request waits — a mount simply hangs.
    pub async fn start_mountd(&self) -> Result<Daemon, NfsdError> {
        let mut args: Vec<OsString> = vec!["-F".into()];
        if self.config.v41_only {
            args.extend(["-N", "2", "-N", "3"].map(OsString::from));
        }
        self.start_daemon("rpc.mountd", &self.config.tools.rpc_mountd, &args)
            .await
    }

    /// Runs a daemon as long as we serve. Not command::run, but the same care: stdin
    /// closed, killed on drop, stderr kept for the error; fails if it exits at once.
    async fn start_daemon(
        &self,
        name: &'static str,
        program: &Path,
        args: &[OsString],
    ) -> Result<Daemon, NfsdError> {
        tracing::info!(program = %program.display(), ?args, "starting {name}");
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NfsdError::DaemonSpawn {
                program: program.to_string_lossy().into_owned(),
                source,
            })?;
        let stderr_task = tokio::spawn(forward_stderr(name, child.stderr.take()));
        match tokio::time::timeout(CLD_SETTLE, child.wait()).await {
            Err(_) => Ok(Daemon {
                name,
                child,
                _stderr: stderr_task,
            }),
            Ok(status) => {
                let status = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("wait failed: {e}"),
                };
                let tail = tokio::time::timeout(Duration::from_secs(1), stderr_task).await;
                let stderr = match tail {
                    Ok(Ok(lines)) => Vec::from(lines).join("\n"),
                    _ => String::new(),
                };
                Err(NfsdError::DaemonExited {
                    name,
                    status,
                    stderr,
                })
            }
        }
    }

    /// Writes `nfsv4leasetime` and `nfsv4gracetime`. nfsd takes them only while it
    /// has no threads, so this must run before [`Nfsd::start`].
    pub async fn write_times(&self) -> Result<(), NfsdError> {
        if let Some(threads) = self.read_threads().await?
            && threads > 0
        {
            return Err(NfsdError::AlreadyRunning { threads });
        }
        for (file, secs) in [
            ("nfsv4leasetime", self.config.lease_secs),
            ("nfsv4gracetime", self.config.grace_secs),
        ] {
            let path = self.config.procfs.join(file);
            let write_path = path.clone();
            self.blocking("write", &path, move || {
                // One write(2): nfsd's control files parse each write on its own.
                std::fs::write(&write_path, format!("{secs}\n")).map_err(|source| NfsdError::Io {
                    action: "write",
                    path: write_path.clone(),
                    source,
                })
            })
            .await?;
        }
        Ok(())
    }

    /// Starts nfsd threads under the shared hostname ([`start_command`]).
    pub async fn start(&self) -> Result<(), NfsdError> {
        let (program, args) = start_command(&self.config);
        self.run("start rpc.nfsd in a UTS namespace", &program, &args)
            .await
            .map(drop)
    }

    /// Makes the kernel export exactly `table`: writes the exports file atomically
    /// (temp file, fsync, rename) and runs one `exportfs -r`, which adds and removes
    /// entries to match the files — one exec for the whole table, however many volumes.
    pub async fn apply_table(&self, table: &ExportTable) -> Result<(), NfsdError> {
        let _applying = self.exports.lock().await;
        let text = render_exports(&self.config, table);
        let path = self.config.exports_file.clone();
        let write_path = path.clone();
        self.blocking("write", &path, move || write_atomically(&write_path, &text))
            .await?;
        self.run(
            "export (exportfs -r)",
            &self.config.tools.exportfs,
            &["-r".into()],
        )
        .await
        .map(drop)
    }

    /// Removes the exports file and runs `exportfs -r`: the kernel drops every volume
    /// export (and keeps whatever else `/etc/exports` lists).
    pub async fn unexport(&self) -> Result<(), NfsdError> {
        let _applying = self.exports.lock().await;
        self.remove_exports_file().await?;
        self.run(
            "unexport (exportfs -r)",
            &self.config.tools.exportfs,
            &["-r".into()],
        )
        .await
        .map(drop)
    }

    async fn remove_exports_file(&self) -> Result<(), NfsdError> {
        let path = self.config.exports_file.clone();
        let remove_path = path.clone();
        self.blocking("remove", &path, move || {
            match std::fs::remove_file(&remove_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NfsdError::Io {
                    action: "remove",
                    path: remove_path.clone(),
                    source: e,
                }),
                _ => Ok(()),
            }
        })
        .await
    }

    /// `rpc.nfsd 0` (no threads: clients get no answer and retry, the VIP moves), then
    /// `exportfs -ua`, and the exports file goes (so a standby never re-exports a stale
    /// table). All run even if one fails; the first error is returned.
    pub async fn stop(&self) -> Result<(), NfsdError> {
        let stopped = self
            .run(
                "stop nfsd threads",
                &self.config.tools.rpc_nfsd,
                &["0".into()],
            )
            .await;
        let _applying = self.exports.lock().await;
        let unexported = self
            .run("unexport all", &self.config.tools.exportfs, &["-ua".into()])
            .await;
        let removed = self.remove_exports_file().await;
        stopped?;
        unexported?;
        removed
    }

    async fn read_threads(&self) -> Result<Option<u32>, NfsdError> {
        let path = self.config.procfs.join("threads");
        let read_path = path.clone();
        let text = self
            .blocking("read", &path, move || {
                match std::fs::read_to_string(&read_path) {
                    Ok(text) => Ok(Some(text)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(NfsdError::Io {
                        action: "read",
                        path: read_path.clone(),
                        source,
                    }),
                }
            })
            .await?;
        text.map(|t| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| NfsdError::BadProcValue {
                    path: path.clone(),
                    content: t,
                })
        })
        .transpose()
    }

    /// Running nfsd threads (`<procfs>/threads`); 0 when stopped.
    pub async fn threads(&self) -> Result<u32, NfsdError> {
        let path = self.config.procfs.join("threads");
        self.read_threads().await?.ok_or_else(|| NfsdError::Io {
            action: "read",
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "nfsd filesystem not mounted",
            ),
        })
    }

    /// Whether this node applied a table (the exports file exists) and the kernel
    /// exports every (volume, client) it lists (`exportfs -v`). An empty table counts as
    /// exported once applied: there is nothing a client may mount yet.
    pub async fn is_exported(&self) -> Result<bool, NfsdError> {
        // Never between an apply's file write and its exportfs (see `exports`).
        let _consistent = self.exports.lock().await;
        let path = self.config.exports_file.clone();
        let read_path = path.clone();
        let text = self
            .blocking("read", &path, move || {
                match std::fs::read_to_string(&read_path) {
                    Ok(text) => Ok(Some(text)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(NfsdError::Io {
                        action: "read",
                        path: read_path.clone(),
                        source,
                    }),
                }
            })
            .await?;
        let Some(text) = text else { return Ok(false) };
        let out = self
            .run("list exports", &self.config.tools.exportfs, &["-v".into()])
            .await?;
        let missing = missing_exports(&parse_exports_file(&text), &parse_exportfs_verbose(&out));
        if let Some((path, client)) = missing.first() {
            tracing::debug!(%path, %client, missing = missing.len(), "exports file not fully applied");
        }
        Ok(missing.is_empty())
    }
}

/// Logs nfsdcld's stderr and keeps its last lines.
async fn forward_stderr(
    name: &'static str,
    stderr: Option<tokio::process::ChildStderr>,
) -> VecDeque<String> {
    let mut tail = VecDeque::new();
    let Some(stderr) = stderr else { return tail };
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(daemon = name, "{line}");
        if tail.len() == CLD_STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    tail
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> NfsdError + 'a {
    move |source| NfsdError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Replaces `path` with `text` so a reader (exportfs) sees the old file or the new one.
fn write_atomically(path: &Path, text: &str) -> Result<(), NfsdError> {
    use std::io::Write;
    let parent = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(NfsdError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        });
    }
    Ok(())
}

/// Creates `state_dir` (0700) and makes `cld_dir` a symlink to it.
fn link_state_dir(state_dir: &Path, cld_dir: &Path) -> Result<(), NfsdError> {
    std::fs::create_dir_all(state_dir).map_err(io_err("create", state_dir))?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err("chmod 0700", state_dir))?;
    match std::fs::symlink_metadata(cld_dir) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if std::fs::read_link(cld_dir).map_err(io_err("read link", cld_dir))? == state_dir {
                return Ok(());
            }
            std::fs::remove_file(cld_dir).map_err(io_err("remove old link", cld_dir))?;
        }
        Ok(meta) if meta.is_dir() => {
            let empty = std::fs::read_dir(cld_dir)
                .map_err(io_err("list", cld_dir))?
                .next()
                .is_none();
            if empty {
                std::fs::remove_dir(cld_dir).map_err(io_err("remove empty", cld_dir))?;
            } else {
                // A node-local database from before hanfs: keep it, out of the way.
                let aside = aside_name(cld_dir);
                tracing::warn!(from = %cld_dir.display(), to = %aside.display(),
                    "moving a node-local nfsdcld database aside");
                std::fs::rename(cld_dir, &aside).map_err(io_err("move aside", cld_dir))?;
            }
        }
        Ok(_) => {
            return Err(NfsdError::CldDirInTheWay {
                path: cld_dir.to_owned(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = cld_dir.parent() {
                std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
            }
        }
        Err(source) => {
            return Err(NfsdError::Io {
                action: "stat",
                path: cld_dir.to_owned(),
                source,
            });
        }
    }
    std::os::unix::fs::symlink(state_dir, cld_dir).map_err(io_err("symlink", cld_dir))
}

/// `<cld_dir>.hanfs-local`, or with `.N` appended if taken.
fn aside_name(cld_dir: &Path) -> PathBuf {
    let base = {
        let mut name = cld_dir.as_os_str().to_owned();
        name.push(".hanfs-local");
        PathBuf::from(name)
    };
    let mut candidate = base.clone();
    let mut n = 1;
    while std::fs::symlink_metadata(&candidate).is_ok() {
        let mut name = base.as_os_str().to_owned();
        name.push(format!(".{n}"));
        candidate = PathBuf::from(name);
        n += 1;
    }
    candidate
}

/// The agent's export sink: publish and unpublish calls, and the takeover's export
/// step, apply the table through nfsd.
impl ExportSink for Nfsd {
    fn apply(&self, table: ExportTable) -> ApplyFuture<'_> {
        Box::pin(async move { self.apply_table(&table).await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_export_the_documented_options() {
        let c = NfsdConfig::new("/srv/export", "nfs.example.com");
        c.validate().unwrap();
        assert_eq!(
            c.client_options(false, "u-1"),
            "rw,sync,insecure,no_subtree_check,root_squash,fsid=u-1"
        );
        assert_eq!(c.exports_file, Path::new("/etc/exports.d/hanfs.exports"));
        assert_eq!(c.state_dir, Path::new("/srv/export/.hanfs/nfsdcld"));
    }

    #[test]
    fn aside_names_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let cld = dir.path().join("nfsdcld");
        assert_eq!(aside_name(&cld), dir.path().join("nfsdcld.hanfs-local"));
        std::fs::create_dir(dir.path().join("nfsdcld.hanfs-local")).unwrap();
        assert_eq!(aside_name(&cld), dir.path().join("nfsdcld.hanfs-local.1"));
    }
}

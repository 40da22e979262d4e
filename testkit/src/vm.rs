//! Clusters of small Debian VMs (qemu, TCG) on a private bridge, for tests that need real
//! kernels: DRBD, kernel nfsd, NFS clients, hard kills.
//!
//! The guest image comes from `e2e/vm/build-image.sh` (Debian bookworm, kernel 6.1 with
//! drbd 8.4 / nfsd / 9p, drbd-utils, nfs-kernel-server; built once into
//! `${HANFS_CACHE:-$HOME/.cache/hanfs}/vm-<recipe hash>/`). `e2e/vm/vm.sh` creates the
//! network namespace (bridge `br0` + one tap per VM) and runs each qemu; this module owns
//! their lifetime and talks to the guests through a 9p mailbox (see `e2e/vm/guest-init.sh`).
//!
//! ```no_run
//! use std::time::Duration;
//! use testkit::vm::{Cluster, ClusterSpec, VmSpec};
//! let cluster = Cluster::start(ClusterSpec::new(vec![
//!     VmSpec::new("storage-a", "10.80.0.11".parse()?).with_data_disk(512),
//!     VmSpec::new("client", "10.80.0.21".parse()?),
//! ]))?;
//! let a = cluster.vm("storage-a");
//! let out = a.run("modprobe drbd && cat /proc/drbd", Duration::from_secs(30))?;
//! a.kill()?;      // SIGKILL its qemu: a hard crash
//! a.restart()?;   // same data disk, fresh root overlay
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Dropping the [`Cluster`] SIGKILLs every qemu, deletes the namespace and the work folder
//! (data disks, logs; set `HANFS_VM_KEEP=1` to keep it). The cached image stays.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cmd::{self, CmdError};
use crate::netns;
use crate::process::Supervised;

/// The bridge's address (the host side of the cluster network) unless the spec says otherwise.
pub const DEFAULT_BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 80, 0, 1);
/// Prefix length of the cluster network unless the spec says otherwise.
pub const DEFAULT_PREFIX_LEN: u8 = 24;
/// Guest memory unless the spec says otherwise.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// Bound on booting all VMs until their mailboxes answer (three boot in ~15 s here).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// `timeout -s KILL` around every qemu: the backstop if everything else fails.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(2 * 60 * 60);
/// Bound on `build-image.sh` (a cold build is ~2 minutes here; a warm cache returns at once).
const BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// Bound on one `vm.sh net-up` / `net-down`.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long past an exec's timeout the host waits for the guest to report the kill.
const EXEC_SLACK: Duration = Duration::from_secs(10);
/// How long a killed qemu may take to disappear (and release its disk locks).
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Console lines quoted in boot errors and on a panicking drop.
const CONSOLE_TAIL: usize = 40;

/// Distinguishes clusters of one process.
static SEQ: AtomicU32 = AtomicU32::new(0);

/// Errors from building, starting, using or stopping VMs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `e2e/vm/build-image.sh` failed or timed out.
    #[error("building the VM image (e2e/vm/build-image.sh): {0}")]
    Build(#[source] CmdError),
    /// Copying a VM's prepared data disk image ([`VmSpec::with_data_disk_image`]) failed.
    #[error("copying a data disk image: {0}")]
    DataDisk(#[source] CmdError),
    /// Creating or deleting the network namespace failed.
    #[error("VM network (e2e/vm/vm.sh): {0}")]
    Net(#[source] CmdError),
    /// `vm.sh qemu` could not be started.
    #[error("starting VM {vm}: {source}")]
    Spawn {
        vm: String,
        #[source]
        source: CmdError,
    },
    /// A file of the work folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The spec is unusable (duplicate names, a name the kernel command line cannot carry...).
    #[error("bad cluster spec: {0}")]
    Spec(String),
    /// A VM did not boot far enough to answer its mailbox; `console` is the end of its
    /// serial console.
    #[error("VM {vm} did not boot: {reason}\n--- console (tail) ---\n{console}")]
    Boot {
        vm: String,
        reason: String,
        console: String,
    },
    /// The VM's qemu is not running (killed, or it died: see its console log).
    #[error("VM {vm} is not running\n--- console (tail) ---\n{console}")]
    NotRunning { vm: String, console: String },
    /// The guest killed the script when its timeout passed (what it printed until then
    /// is kept).
    #[error(
        "script on {vm} did not finish within {after:?} (killed); stdout: {stdout}; stderr: {stderr}"
    )]
    ExecTimeout {
        vm: String,
        after: Duration,
        stdout: String,
        stderr: String,
    },
    /// The guest did not answer at all (its mailbox loop is stuck or the guest hangs).
    #[error("VM {vm} did not answer its mailbox within {after:?}")]
    NoAnswer { vm: String, after: Duration },
    /// [`Vm::run`]: the script exited non-zero.
    #[error("script on {vm} failed (exit {rc}); stdout: {stdout}; stderr: {stderr}")]
    Failed {
        vm: String,
        rc: i32,
        stdout: String,
        stderr: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a script run in a guest left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Exit code (128 + signal number if a signal ended it).
    pub rc: i32,
    pub stdout: String,
    pub stderr: String,
    /// Host-side round trip, from dropping the request to reading the answer.
    pub elapsed: Duration,
}

impl ExecResult {
    /// Whether the script exited 0.
    pub fn success(&self) -> bool {
        self.rc == 0
    }
}

/// One VM of a [`ClusterSpec`].
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Hostname (`uname -n`), also the key for [`Cluster::vm`]: lowercase letters, digits, `-`.
    pub name: String,
    /// Address of the guest's `eth0`, in the bridge's subnet.
    pub ip: Ipv4Addr,
    /// Size of a blank sparse data disk (`/dev/vdb`), if any. It persists across
    /// [`Vm::kill`] + [`Vm::restart`] (no snapshot), not beyond the cluster.
    pub data_disk_mib: Option<u64>,
    /// A prepared disk image the data disk starts as (copied, sparse, at cluster start),
    /// instead of a blank one; [`VmSpec::data_disk_mib`] is then ignored.
    pub data_disk_image: Option<PathBuf>,
    pub memory_mib: u32,
    /// Virtual CPUs (TCG runs each on a host thread of its own).
    pub cpus: u32,
}

impl VmSpec {
    /// A VM without data disk and with [`DEFAULT_MEMORY_MIB`].
    pub fn new(name: &str, ip: Ipv4Addr) -> Self {
        VmSpec {
            name: name.to_owned(),
            ip,
            data_disk_mib: None,
            data_disk_image: None,
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: 1,
        }
    }

    /// Adds a blank data disk of `mib` MiB (`/dev/vdb` in the guest).
    #[must_use]
    pub fn with_data_disk(mut self, mib: u64) -> Self {
        self.data_disk_mib = Some(mib);
        self
    }

    /// The data disk (`/dev/vdb`) starts as a copy of `image` (e.g. a filesystem prepared
    /// on the host, where the work is many times faster than in a TCG guest).
    #[must_use]
    pub fn with_data_disk_image(mut self, image: impl Into<PathBuf>) -> Self {
        self.data_disk_image = Some(image.into());
        self
    }

    #[must_use]
    pub fn with_cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    #[must_use]
    pub fn with_memory(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }
}

/// What [`Cluster::start`] starts.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub vms: Vec<VmSpec>,
    /// The bridge's address, also the host side's address in the cluster namespace.
    pub bridge_ip: Ipv4Addr,
    pub prefix_len: u8,
    /// A host folder every guest sees read-only at `/hanfs/bin` (on its `PATH`), e.g. the
    /// repo's `target/debug` or a staging folder the test fills.
    pub host_dir: Option<PathBuf>,
    /// Bound on booting all VMs (and on each [`Vm::restart`]).
    pub boot_timeout: Duration,
    /// Hard bound on each qemu's life (`timeout -s KILL`).
    pub lifetime: Duration,
}

impl ClusterSpec {
    /// These VMs on [`DEFAULT_BRIDGE_IP`]/[`DEFAULT_PREFIX_LEN`], no host folder.
    pub fn new(vms: Vec<VmSpec>) -> Self {
        ClusterSpec {
            vms,
            bridge_ip: DEFAULT_BRIDGE_IP,
            prefix_len: DEFAULT_PREFIX_LEN,
            host_dir: None,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            lifetime: DEFAULT_LIFETIME,
        }
    }

    /// Shares `dir` read-only with every guest at `/hanfs/bin`.
    #[must_use]
    pub fn with_host_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.host_dir = Some(dir.into());
        self
    }

    #[must_use]
    pub fn with_bridge(mut self, ip: Ipv4Addr, prefix_len: u8) -> Self {
        self.bridge_ip = ip;
        self.prefix_len = prefix_len;
        self
    }

    #[must_use]
    pub fn with_boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = timeout;
        self
    }
}

/// Builds the guest image unless cached (see `e2e/vm/build-image.sh`) and returns its
/// folder (`vmlinuz`, `initrd.img`, `root.ext4`, `kernel-version`).
pub fn image() -> Result<PathBuf, Error> {
    let out = cmd::run(
        Command::new("bash").arg(crate::e2e_path("vm/build-image.sh")),
        BUILD_TIMEOUT,
    )
    .map_err(Error::Build)?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(
        text.lines().last().unwrap_or_default().trim(),
    ))
}

fn vm_script() -> Command {
    let mut c = Command::new("bash");
    c.arg(crate::e2e_path("vm/vm.sh"));
    c
}

/// Everything `vm.sh qemu` needs to (re)start one VM.
#[derive(Debug, Clone)]
struct Launch {
    image: PathBuf,
    ns: String,
    tap: String,
    cidr: String,
    hosts: String,
    host_dir: Option<PathBuf>,
    memory_mib: u32,
    cpus: u32,
    lifetime: Duration,
    boot_timeout: Duration,
}

/// One running (or killed) VM of a [`Cluster`].
#[derive(Debug)]
pub struct Vm {
    name: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    data_disk: Option<PathBuf>,
    launch: Launch,
    /// `vm.sh qemu`, leading a process group with `timeout` and qemu; `None` once killed.
    qemu: Mutex<Option<Supervised>>,
    seq: AtomicU64,
}

impl Vm {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The guest's `eth0` address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The serial console log (kernel messages, the init's messages), appended across
    /// restarts.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The host side of the guest's `/hanfs/share` (read-write 9p): a way to hand files in
    /// and out. `mailbox/` in it belongs to [`Vm::exec`].
    pub fn share_dir(&self) -> PathBuf {
        self.dir.join("share")
    }

    /// The data disk's image file on the host (`/dev/vdb` in the guest), if it has one.
    pub fn data_disk(&self) -> Option<&Path> {
        self.data_disk.as_deref()
    }

    /// Whether its qemu is running (not killed, not exited).
    pub fn is_running(&self) -> bool {
        self.lock().as_ref().is_some_and(|p| !p.has_exited())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Supervised>> {
        self.qemu
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mailbox(&self) -> PathBuf {
        self.dir.join("share/mailbox")
    }

    /// Runs `script` with bash in the guest (as root, cwd `/`, stdin `/dev/null`), bounded
    /// by `timeout` (the guest SIGKILLs its process group then: [`Error::ExecTimeout`]).
    /// A non-zero exit is a normal result; see [`Vm::run`] for the strict variant.
    ///
    /// Execs may run concurrently (from several threads). A daemon started by a script
    /// must detach and redirect its output (`setsid -f cmd >/var/log/x 2>&1`).
    pub fn exec(&self, script: &str, timeout: Duration) -> Result<ExecResult, Error> {
        if !self.is_running() {
            return Err(self.not_running());
        }
        let mb = self.mailbox();
        let id = format!(
            "h{}-{}",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let file = |ext: &str| mb.join(format!("{id}.{ext}"));
        let secs = timeout.as_secs_f64().ceil().max(1.0);
        let tmp = file("sh.tmp");
        fs::write(&tmp, format!("# hanfs-timeout={secs}\n{script}\n")).map_err(io_err(&tmp))?;
        let start = Instant::now();
        fs::rename(&tmp, file("sh")).map_err(io_err(&tmp))?;
        let deadline = start + timeout + EXEC_SLACK;
        let rc_file = file("rc");
        let mut polls = 0u32;
        loop {
            if rc_file.exists() {
                break;
            }
            polls += 1;
            if polls.is_multiple_of(20) && !self.is_running() {
                let _ = fs::remove_file(file("sh"));
                return Err(self.not_running());
            }
            if Instant::now() >= deadline {
                // Unclaimed, it must not run later; claimed, the guest cleans up itself.
                let _ = fs::remove_file(file("sh"));
                return Err(Error::NoAnswer {
                    vm: self.name.clone(),
                    after: timeout + EXEC_SLACK,
                });
            }
            thread::sleep(Duration::from_millis(5));
        }
        let elapsed = start.elapsed();
        let read = |ext: &str| {
            let p = file(ext);
            let text = fs::read(&p).map_err(io_err(&p));
            let _ = fs::remove_file(&p);
            text.map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let rc_text = read("rc")?;
        let stdout = read("out")?;
        let stderr = read("err")?;
        let rc = rc_text.trim().parse().map_err(|_| Error::Io {
            path: rc_file.clone(),
            source: io::Error::other(format!("bad exit code {rc_text:?}")),
        })?;
        // timeout -s KILL exits 137 when it had to kill the script.
        if rc == 137 && elapsed >= timeout {
            return Err(Error::ExecTimeout {
                vm: self.name.clone(),
                after: timeout,
                stdout,
                stderr,
            });
        }
        Ok(ExecResult {
            rc,
            stdout,
            stderr,
            elapsed,
        })
    }

    /// [`Vm::exec`], and a non-zero exit is an error ([`Error::Failed`]); returns stdout.
    pub fn run(&self, script: &str, timeout: Duration) -> Result<String, Error> {
        let r = self.exec(script, timeout)?;
        if r.success() {
            Ok(r.stdout)
        } else {
            Err(Error::Failed {
                vm: self.name.clone(),
                rc: r.rc,
                stdout: r.stdout,
                stderr: r.stderr,
            })
        }
    }

    /// SIGKILLs the VM's qemu at once (a hard crash: no flush, no shutdown; what the guest
    /// wrote to its data disk before stays, as after a power cut of a host with a
    /// write-through disk) and waits until it is gone. Does nothing if it is not running.
    pub fn kill(&self) -> Result<(), Error> {
        let mut guard = self.lock();
        // qemu first and alone: its parent (`timeout`) reaps it, so no zombie is left to
        // init, and vm.sh then exits by itself.
        if let Some(pid) = self.qemu_pid() {
            let _ = kill(pid, Signal::SIGKILL);
            let start = Instant::now();
            // Gone, not just a zombie: `timeout` must reap it before vm.sh goes.
            while Path::new(&format!("/proc/{pid}")).exists()
                && (alive(pid) || start.elapsed() < Duration::from_secs(1))
            {
                if start.elapsed() >= KILL_WAIT {
                    return Err(Error::Io {
                        path: self.dir.join("qemu.pid"),
                        source: io::Error::other(format!("qemu {pid} survives SIGKILL")),
                    });
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
        // Then vm.sh and whatever is left of its group (everything, if qemu had not even
        // written its pidfile yet).
        if let Some(mut p) = guard.take()
            && let Err(e) = p.stop(Duration::from_secs(2))
        {
            eprintln!("testkit: stopping vm.sh of {}: {e}", self.name);
        }
        Ok(())
    }

    /// Kills the VM if it runs, boots it again with the same disks (a fresh root overlay,
    /// the same data disk) and waits until its mailbox answers. Returns the boot time.
    pub fn restart(&self) -> Result<Duration, Error> {
        self.kill()?;
        let start = Instant::now();
        self.spawn()?;
        self.wait_ready(start + self.launch.boot_timeout)?;
        Ok(start.elapsed())
    }

    /// The qemu pid from its pidfile, if that process still runs qemu for this VM.
    fn qemu_pid(&self) -> Option<Pid> {
        let pidfile = self.dir.join("qemu.pid");
        let pid: i32 = fs::read_to_string(&pidfile).ok()?.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let needle = pidfile.to_string_lossy();
        String::from_utf8_lossy(&cmdline)
            .contains(needle.as_ref())
            .then_some(Pid::from_raw(pid))
    }

    /// Starts `vm.sh qemu` (after clearing the mailbox and the ready flag of a former run).
    fn spawn(&self) -> Result<(), Error> {
        let mut guard = self.lock();
        let mb = self.mailbox();
        if mb.exists() {
            fs::remove_dir_all(&mb).map_err(io_err(&mb))?;
        }
        fs::create_dir_all(&mb).map_err(io_err(&mb))?;
        let ready = self.dir.join("share/ready");
        let _ = fs::remove_file(&ready);
        let log_path = self.dir.join("qemu.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        let log2 = log.try_clone().map_err(io_err(&log_path))?;
        let l = &self.launch;
        let mut c = vm_script();
        c.arg("qemu")
            .arg(&l.image)
            .arg(&self.dir)
            .args([&l.ns, &l.tap, &self.name, &l.cidr])
            .env("OWNER_PID", std::process::id().to_string())
            .env("HANFS_VM_HOSTS", &l.hosts)
            .env("HANFS_VM_MEM", l.memory_mib.to_string())
            .env("HANFS_VM_CPUS", l.cpus.to_string())
            .env("HANFS_VM_LIFETIME", l.lifetime.as_secs().max(1).to_string())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        match &l.host_dir {
            Some(d) => c.env("HANFS_VM_HOSTDIR", d),
            None => c.env_remove("HANFS_VM_HOSTDIR"),
        };
        let p = Supervised::spawn(&format!("qemu {}", self.name), &mut c).map_err(|source| {
            Error::Spawn {
                vm: self.name.clone(),
                source,
            }
        })?;
        *guard = Some(p);
        Ok(())
    }

    /// Waits for the guest's ready flag, then for a mailbox round trip.
    fn wait_ready(&self, deadline: Instant) -> Result<(), Error> {
        let ready = self.dir.join("share/ready");
        while !ready.exists() {
            if !self.is_running() {
                return Err(self.boot_error("qemu exited"));
            }
            if Instant::now() >= deadline {
                return Err(self.boot_error("no ready flag before the boot timeout"));
            }
            thread::sleep(Duration::from_millis(20));
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        match self.exec("true", left) {
            Ok(r) if r.success() => Ok(()),
            Ok(r) => Err(self.boot_error(&format!("mailbox test exited {}", r.rc))),
            Err(e) => Err(self.boot_error(&format!("mailbox test: {e}"))),
        }
    }

    fn boot_error(&self, reason: &str) -> Error {
        Error::Boot {
            vm: self.name.clone(),
            reason: reason.to_owned(),
            console: console_tail(&self.console_log(), CONSOLE_TAIL),
        }
    }

    fn not_running(&self) -> Error {
        Error::NotRunning {
            vm: self.name.clone(),
            console: console_tail(&self.console_log(), CONSOLE_TAIL),
        }
    }
}

/// The last `n` lines of a console log (empty if there is none).
pub fn console_tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Alive and not a zombie.
fn alive(pid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// N VMs on a bridge inside a private network namespace `hanfs-t-<pid>-vm<seq>` (so
/// [`netns::cleanup_stale`] removes it, with its qemus, if the owner crashed).
///
/// Dropping it SIGKILLs every qemu, deletes the namespace and the work folder.
#[derive(Debug)]
pub struct Cluster {
    ns: String,
    bridge_ip: Ipv4Addr,
    prefix_len: u8,
    workdir: PathBuf,
    image: PathBuf,
    vms: Vec<Vm>,
    boot_time: Duration,
    net_up: bool,
    destroyed: bool,
}

impl Cluster {
    /// Builds the image if needed ([`image`]), creates the namespace (bridge with
    /// `spec.bridge_ip`, a tap per VM), boots every VM and waits (bounded by
    /// `spec.boot_timeout`) until each guest's mailbox answers. On failure everything
    /// started so far is stopped again.
    pub fn start(spec: ClusterSpec) -> Result<Cluster, Error> {
        validate(&spec)?;
        let image = image()?;
        netns::cleanup_stale().map_err(|e| match e {
            netns::Error::Cmd(c) => Error::Net(c),
            other => Error::Spec(other.to_string()),
        })?;
        remove_stale_workdirs();
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let ns = format!("{}{pid}-vm{seq}", netns::PREFIX);
        let workdir = std::env::temp_dir().join(format!("hanfs-vm-{pid}-{seq}"));
        if workdir.exists() {
            fs::remove_dir_all(&workdir).map_err(io_err(&workdir))?;
        }
        fs::create_dir_all(&workdir).map_err(io_err(&workdir))?;
        let mut cluster = Cluster {
            ns,
            bridge_ip: spec.bridge_ip,
            prefix_len: spec.prefix_len,
            workdir,
            image,
            vms: Vec::new(),
            boot_time: Duration::ZERO,
            net_up: false,
            destroyed: false,
        };
        cmd::run(
            vm_script().args([
                "net-up",
                &cluster.ns,
                &format!("{}/{}", spec.bridge_ip, spec.prefix_len),
                &spec.vms.len().to_string(),
            ]),
            SCRIPT_TIMEOUT,
        )
        .map_err(Error::Net)?;
        cluster.net_up = true;

        let hosts = spec
            .vms
            .iter()
            .map(|v| format!("{}:{}", v.name, v.ip))
            .collect::<Vec<_>>()
            .join(",");
        for (i, v) in spec.vms.iter().enumerate() {
            let dir = cluster.workdir.join(&v.name);
            fs::create_dir_all(dir.join("share/mailbox")).map_err(io_err(&dir))?;
            let data_disk = match (&v.data_disk_image, v.data_disk_mib) {
                (Some(image), _) => {
                    let path = dir.join("data.img");
                    // cp keeps the image's holes; fs::copy would write them out.
                    cmd::run(
                        Command::new("cp")
                            .arg("--sparse=always")
                            .arg(image)
                            .arg(&path),
                        Duration::from_secs(120),
                    )
                    .map_err(Error::DataDisk)?;
                    Some(path)
                }
                (None, Some(mib)) => {
                    let path = dir.join("data.img");
                    let f = fs::File::create(&path).map_err(io_err(&path))?;
                    f.set_len(mib * 1024 * 1024).map_err(io_err(&path))?;
                    Some(path)
                }
                (None, None) => None,
            };
            cluster.vms.push(Vm {
                name: v.name.clone(),
                ip: v.ip,
                dir,
                data_disk,
                launch: Launch {
                    image: cluster.image.clone(),
                    ns: cluster.ns.clone(),
                    tap: format!("tap{i}"),
                    cidr: format!("{}/{}", v.ip, spec.prefix_len),
                    hosts: hosts.clone(),
                    host_dir: spec.host_dir.clone(),
                    memory_mib: v.memory_mib,
                    cpus: v.cpus,
                    lifetime: spec.lifetime,
                    boot_timeout: spec.boot_timeout,
                },
                qemu: Mutex::new(None),
                seq: AtomicU64::new(0),
            });
        }
        let start = Instant::now();
        for vm in &cluster.vms {
            vm.spawn()?;
        }
        let deadline = start + spec.boot_timeout;
        for vm in &cluster.vms {
            vm.wait_ready(deadline)?;
        }
        cluster.boot_time = start.elapsed();
        Ok(cluster)
    }

    /// The network namespace holding the bridge: run host-side processes (kube-apiserver,
    /// the controller, csi-sanity) in it, e.g. with [`Cluster::command_in`].
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// The bridge's address in [`Cluster::netns`]; every guest reaches it.
    pub fn bridge_ip(&self) -> Ipv4Addr {
        self.bridge_ip
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The VM named `name`. Panics if there is none (a test bug).
    pub fn vm(&self, name: &str) -> &Vm {
        self.vms
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no VM named {name}"))
    }

    pub fn vms(&self) -> &[Vm] {
        &self.vms
    }

    /// From the start of the first qemu until every mailbox answered.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The image folder in use (see [`image`]).
    pub fn image_dir(&self) -> &Path {
        &self.image
    }

    /// The work folder: one subfolder per VM (console.log, qemu.log, share/, data.img).
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// `cmd` rewritten to run inside the cluster's namespace (see [`netns::command_in`]).
    pub fn command_in(&self, cmd: &Command) -> Command {
        netns::command_in(&self.ns, cmd)
    }

    /// Runs `cmd` inside the cluster's namespace within `timeout`; fails on a non-zero exit.
    pub fn run_in(&self, cmd: &Command, timeout: Duration) -> Result<Output, CmdError> {
        cmd::run(&mut self.command_in(cmd), timeout)
    }

    /// Stops everything (what Drop does) and returns the first error instead of printing it.
    pub fn destroy(mut self) -> Result<(), Error> {
        self.destroy_inner()
    }

    fn destroy_inner(&mut self) -> Result<(), Error> {
        if self.destroyed {
            return Ok(());
        }
        self.destroyed = true;
        let mut first: Option<Error> = None;
        for vm in &self.vms {
            if let Err(e) = vm.kill() {
                first.get_or_insert(e);
            }
        }
        if self.net_up
            && let Err(e) = cmd::run(vm_script().args(["net-down", &self.ns]), SCRIPT_TIMEOUT)
        {
            first.get_or_insert(Error::Net(e));
        }
        if std::env::var_os("HANFS_VM_KEEP").is_some_and(|v| v != "0") {
            eprintln!("testkit: keeping VM work folder {}", self.workdir.display());
        } else if let Err(e) = fs::remove_dir_all(&self.workdir) {
            first.get_or_insert(Error::Io {
                path: self.workdir.clone(),
                source: e,
            });
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() && !self.destroyed {
            let mut msg = String::new();
            for vm in &self.vms {
                let _ = write!(
                    msg,
                    "\n--- {} console (tail of {}) ---\n{}",
                    vm.name,
                    vm.console_log().display(),
                    console_tail(&vm.console_log(), CONSOLE_TAIL)
                );
            }
            eprintln!("testkit: VM cluster dropped while panicking:{msg}");
        }
        if let Err(e) = self.destroy_inner() {
            eprintln!("testkit: stopping VM cluster {}: {e}", self.ns);
        }
    }
}

fn validate(spec: &ClusterSpec) -> Result<(), Error> {
    if spec.vms.is_empty() || spec.vms.len() > 32 {
        return Err(Error::Spec(format!(
            "{} VMs (1-32 allowed)",
            spec.vms.len()
        )));
    }
    for (i, v) in spec.vms.iter().enumerate() {
        let ok = !v.name.is_empty()
            && v.name.len() <= 63
            && v.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(Error::Spec(format!("bad VM name {:?}", v.name)));
        }
        if spec.vms[..i]
            .iter()
            .any(|o| o.name == v.name || o.ip == v.ip)
        {
            return Err(Error::Spec(format!("duplicate VM name or ip: {}", v.name)));
        }
        if v.ip == spec.bridge_ip {
            return Err(Error::Spec(format!("{} has the bridge's address", v.name)));
        }
    }
    if let Some(d) = &spec.host_dir
        && !d.is_dir()
    {
        return Err(Error::Spec(format!(
            "host_dir {} is not a folder",
            d.display()
        )));
    }
    Ok(())
}

/// Removes `$TMPDIR/hanfs-vm-<pid>-<seq>` folders whose owner process is gone.
fn remove_stale_workdirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("hanfs-vm-") else {
            continue;
        };
        let Some(Ok(pid)) = rest.split('-').next().map(str::parse::<u32>) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

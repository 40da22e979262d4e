//! A real kube-apiserver (with etcd, and optionally kube-controller-manager) inside a
//! network namespace, for tests that need the Kubernetes API: Leases, CSI objects, PV
//! binding, a kubeconfig for the controller and the CSI sidecars.
//!
//! The binaries come from `e2e/kube/build.sh` (built from the Go module proxy into
//! `${HANFS_CACHE:-$HOME/.cache/hanfs}/kube-<version>/` once); `e2e/kube/start.sh` runs
//! and stops the servers. This module supervises that script.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd::{self, CmdError};
use crate::netns;
use crate::process::Supervised;

/// The apiserver's secure port.
pub const PORT: u16 = 6443;
/// Bound on `build.sh`: a cold build is minutes on 2 cores; a warm cache returns at once.
const BUILD_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// What start.sh allows etcd + kube-apiserver to become ready (its `READY_TIMEOUT`).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long we wait for start.sh beyond its own readiness bound before giving up on it.
const READY_SLACK: Duration = Duration::from_secs(15);
/// SIGTERM-to-SIGKILL grace for start.sh: it stops the apiserver then etcd, each within
/// 15 s + 5 s after SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(45);
/// Bound on [`KubeApiServer::curl`].
pub const CURL_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from building, starting, using or stopping the apiserver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `e2e/kube/build.sh` failed or timed out.
    #[error("building kube-apiserver + etcd (e2e/kube/build.sh): {0}")]
    Build(#[source] CmdError),
    /// start.sh could not be started.
    #[error("running e2e/kube/start.sh: {0}")]
    Spawn(#[source] CmdError),
    /// start.sh exited or did not report ready in time; `log` is the tail of its output.
    #[error("etcd + kube-apiserver did not start: {reason}\n{log}")]
    Start { reason: String, log: String },
    /// Reading or writing a file in the work directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// curl failed (connection refused or timed out, e.g. across a cut link).
    #[error("curl from namespace {ns}: {source}")]
    Curl {
        ns: String,
        #[source]
        source: CmdError,
    },
    /// curl's output did not end in an HTTP status code.
    #[error("unexpected curl output: {0}")]
    BadResponse(String),
    /// start.sh did not stop cleanly (it was SIGKILLed, or exited with an error).
    #[error("stopping etcd + kube-apiserver: {0}")]
    Stop(String),
}

/// What runs besides etcd + kube-apiserver, and how the apiserver is configured.
/// `Options::default()` is what [`KubeApiServer::start`] runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Also run kube-controller-manager (PV binder, expander, attach/detach, protection
    /// finalizers, VolumeAttributesClass protection, service accounts, namespaces, GC); the
    /// start waits for its `/healthz`.
    pub controller_manager: bool,
    /// The controller manager's `--controllers` instead of start.sh's volume-flow list
    /// (`"*"` for every default controller: Deployments, DaemonSets, nodes, ...).
    pub controllers: Option<String>,
    /// Also run kube-scheduler (for pods on a real kubelet).
    pub scheduler: bool,
    /// The apiserver's `--runtime-config`, e.g.
    /// `storage.k8s.io/v1beta1/volumeattributesclasses=true`.
    pub runtime_config: Option<String>,
    /// Serve APIs whose removal release is this one (the apiserver's
    /// `KUBE_APISERVER_SERVE_REMOVED_APIS_FOR_ONE_RELEASE`): v1.37 removes
    /// `storage.k8s.io/v1beta1` VolumeAttributesClass, which csi-resizer v1.14 still reads.
    pub serve_removed_apis: bool,
}

/// Builds the binaries unless cached (see `e2e/kube/build.sh`) and returns their folder,
/// holding `kube-apiserver`, `kube-controller-manager` and `etcd`. `$KUBE_BIN_DIR`, if
/// set, names a folder of prebuilt binaries instead (as for start.sh).
pub fn binaries() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("KUBE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let out = cmd::run(
        Command::new("bash").arg(crate::e2e_path("kube/build.sh")),
        BUILD_TIMEOUT,
    )
    .map_err(Error::Build)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = text.lines().last().unwrap_or_default().trim();
    Ok(PathBuf::from(dir))
}

/// etcd (on 127.0.0.1:2379 of the namespace) and kube-apiserver (on `https://<ip>:6443`)
/// running in a network namespace, token-authenticated, `AlwaysAllow`-authorized.
///
/// Dropping it stops the apiserver, then etcd (SIGTERM, bounded wait, SIGKILL). Drop it
/// before the [`netns::Topology`] whose namespace it runs in.
#[derive(Debug)]
pub struct KubeApiServer {
    /// start.sh, leading a process group with etcd and kube-apiserver; stopping it stops
    /// them in order, and its group SIGKILL is the backstop.
    script: Supervised,
    ns: String,
    ip: Ipv4Addr,
    workdir: PathBuf,
    token: String,
    etcd_pid: u32,
    apiserver_pid: u32,
    /// Set when started with [`Options::controller_manager`].
    controller_manager_pid: Option<u32>,
    startup: Duration,
    /// Set by [`KubeApiServer::stop`], so Drop does not report the same outcome twice.
    stopped: bool,
}

impl KubeApiServer {
    /// Builds the binaries if needed ([`binaries`]), starts etcd and kube-apiserver in
    /// namespace `core_ns` with the apiserver bound to `listen_ip`, and waits (bounded) until
    /// `/readyz` answers and the `default` namespace exists. `workdir` receives the etcd
    /// data, certificates, logs and the kubeconfig.
    pub fn start(core_ns: &str, listen_ip: Ipv4Addr, workdir: &Path) -> Result<Self, Error> {
        Self::start_with(core_ns, listen_ip, workdir, &Options::default())
    }

    /// [`KubeApiServer::start`] with `options` (kube-controller-manager, runtime config).
    pub fn start_with(
        core_ns: &str,
        listen_ip: Ipv4Addr,
        workdir: &Path,
        options: &Options,
    ) -> Result<Self, Error> {
        let bin = binaries()?;
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        fs::create_dir_all(workdir).map_err(io_err(workdir))?;
        let workdir = workdir.canonicalize().map_err(io_err(workdir))?;
        let ready = workdir.join("ready");
        // A `ready` from an earlier run in this folder must not pass for this one.
        match fs::remove_file(&ready) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&ready)(e)),
            _ => {}
        }
        let log_path = workdir.join("start.log");
        let log = fs::File::create(&log_path).map_err(io_err(&log_path))?;
        let log2 = log.try_clone().map_err(io_err(&log_path))?;

        let t0 = Instant::now();
        let mut command = Command::new("bash");
        let flag = |on: bool| if on { "1" } else { "0" };
        command
            .env("WITH_CONTROLLER_MANAGER", flag(options.controller_manager))
            .env("WITH_SCHEDULER", flag(options.scheduler))
            .env(
                "APISERVER_SERVE_REMOVED_APIS",
                flag(options.serve_removed_apis),
            )
            .env(
                "APISERVER_RUNTIME_CONFIG",
                options.runtime_config.as_deref().unwrap_or_default(),
            );
        if let Some(controllers) = &options.controllers {
            command.env("KCM_CONTROLLERS", controllers);
        }
        let mut script = Supervised::spawn(
            "e2e/kube/start.sh",
            command
                .arg(crate::e2e_path("kube/start.sh"))
                .arg(core_ns)
                .arg(listen_ip.to_string())
                .arg(&workdir)
                .env("KUBE_BIN_DIR", &bin)
                .env("READY_TIMEOUT", READY_TIMEOUT.as_secs().to_string())
                // If this process dies without running Drop (Ctrl-C, SIGKILL), start.sh
                // notices within a second and stops the servers itself.
                .env("OWNER_PID", std::process::id().to_string())
                .stdout(log)
                .stderr(log2),
        )
        .map_err(Error::Spawn)?;
        let failed = |script: &mut Supervised, reason: String| {
            let _ = script.stop(STOP_GRACE);
            let log = fs::read(&log_path)
                .map(|b| cmd::tail(&b))
                .unwrap_or_default();
            Err(Error::Start { reason, log })
        };
        while !ready.exists() {
            if script.has_exited() {
                let status = script.stop(Duration::ZERO);
                return failed(&mut script, format!("start.sh exited ({status:?})"));
            }
            if t0.elapsed() > READY_TIMEOUT + READY_SLACK {
                return failed(&mut script, format!("not ready after {:?}", t0.elapsed()));
            }
            thread::sleep(Duration::from_millis(100));
        }
        let startup = t0.elapsed();

        let read = |name: &str| {
            let path = workdir.join(name);
            fs::read_to_string(&path)
                .map(|s| s.trim().to_owned())
                .map_err(io_err(&path))
        };
        let pid = |name: &str| -> Result<u32, Error> {
            read(name)?
                .parse()
                .map_err(|_| Error::BadResponse(format!("bad pid in {name}")))
        };
        let controller_manager_pid = if options.controller_manager {
            Some(pid("kube-controller-manager.pid")?)
        } else {
            None
        };
        Ok(KubeApiServer {
            token: read("token")?,
            etcd_pid: pid("etcd.pid")?,
            apiserver_pid: pid("kube-apiserver.pid")?,
            controller_manager_pid,
            script,
            ns: core_ns.to_owned(),
            ip: listen_ip,
            workdir,
            startup,
            stopped: false,
        })
    }

    /// `https://<listen-ip>:6443`.
    pub fn server_url(&self) -> String {
        format!("https://{}:{PORT}", self.ip)
    }

    /// The kubeconfig (server URL, CA data, admin token; context namespace `default`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.workdir.join("kubeconfig")
    }

    /// PEM of the CA that signed the apiserver's serving certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.workdir.join("ca.crt")
    }

    /// The admin bearer token (member of `system:masters`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The namespace the servers run in.
    pub fn core_ns(&self) -> &str {
        &self.ns
    }

    /// The address the apiserver listens on.
    pub fn listen_ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Work directory: `etcd/`, `certs/`, `<server>.log`, `start.log`, `kubeconfig`.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// Pid of etcd.
    pub fn etcd_pid(&self) -> u32 {
        self.etcd_pid
    }

    /// Pid of kube-apiserver.
    pub fn apiserver_pid(&self) -> u32 {
        self.apiserver_pid
    }

    /// Pid of kube-controller-manager, if it was asked for.
    pub fn controller_manager_pid(&self) -> Option<u32> {
        self.controller_manager_pid
    }

    /// The end of one server's log: `etcd`, `kube-apiserver` or
    /// `kube-controller-manager`; for failure messages.
    pub fn log_tail(&self, server: &str) -> String {
        fs::read(self.workdir.join(format!("{server}.log")))
            .map(|b| cmd::tail(&b))
            .unwrap_or_else(|e| format!("(no {server}.log: {e})"))
    }

    /// From spawning start.sh to ready (includes etcd start and the apiserver's bootstrap).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Whether start.sh still runs (it exits when any of its servers dies).
    pub fn is_running(&self) -> bool {
        !self.script.has_exited()
    }

    /// One API call from the core namespace: returns (HTTP status, body). A JSON `body` is
    /// sent as `application/json`, or as `application/merge-patch+json` for `PATCH`.
    pub fn curl(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), Error> {
        self.curl_in(&self.ns, method, path, body, CURL_TIMEOUT)
    }

    /// [`KubeApiServer::curl`] from namespace `ns` (e.g. a topology member), giving up after
    /// `timeout` (an [`Error::Curl`] then).
    pub fn curl_in(
        &self,
        ns: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
        timeout: Duration,
    ) -> Result<(u16, String), Error> {
        let ct = if method.eq_ignore_ascii_case("PATCH") {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        self.request(ns, method, path, body.map(|b| (Body::Text(b), ct)), timeout)
    }

    /// One API call from the core namespace whose body is the file `body` (e.g. a YAML
    /// manifest too big for a command line), sent as `content_type`
    /// (`application/yaml` works for create); returns (HTTP status, response body).
    pub fn curl_file(
        &self,
        method: &str,
        path: &str,
        body: &Path,
        content_type: &str,
    ) -> Result<(u16, String), Error> {
        self.request(
            &self.ns,
            method,
            path,
            Some((Body::File(body), content_type)),
            CURL_TIMEOUT,
        )
    }

    fn request(
        &self,
        ns: &str,
        method: &str,
        path: &str,
        body: Option<(Body<'_>, &str)>,
        timeout: Duration,
    ) -> Result<(u16, String), Error> {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            &format!("{:.3}", timeout.as_secs_f64()),
        ])
        .arg("--cacert")
        .arg(self.ca_cert())
        // The token comes from a file, so it never shows in a process listing.
        .arg("-H")
        .arg(format!("@{}", self.workdir.join("auth-header").display()))
        .args(["-X", method, "-w", "\n%{http_code}"]);
        if let Some((body, ct)) = body {
            c.args(["-H", &format!("Content-Type: {ct}")]);
            match body {
                Body::Text(text) => c.args(["--data-raw", text]),
                Body::File(file) => c.arg("--data-binary").arg(format!("@{}", file.display())),
            };
        }
        c.arg(format!("{}{path}", self.server_url()));
        let out = cmd::run(
            &mut netns::command_in(ns, &c),
            timeout + Duration::from_secs(5),
        )
        .map_err(|source| Error::Curl {
            ns: ns.to_owned(),
            source,
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code = code
            .trim()
            .parse()
            .map_err(|_| Error::BadResponse(text.clone().into_owned()))?;
        Ok((code, body.to_owned()))
    }

    /// Stops kube-controller-manager (if running), the apiserver, then etcd (what Drop
    /// does), reporting an unclean stop.
    pub fn stop(mut self) -> Result<(), Error> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), Error> {
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
        let status: ExitStatus = self
            .script
            .stop(STOP_GRACE)
            .map_err(|e| Error::Stop(e.to_string()))?;
        // 143: start.sh's exit after its SIGTERM trap stopped both servers.
        match status.code() {
            Some(143) => Ok(()),
            _ => Err(Error::Stop(format!(
                "start.sh ended with {status}; see {}",
                self.workdir.join("start.log").display()
            ))),
        }
    }
}

/// A request body: inline, or read by curl from a file.
enum Body<'a> {
    Text(&'a str),
    File(&'a Path),
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("testkit: {e}");
        }
    }
}

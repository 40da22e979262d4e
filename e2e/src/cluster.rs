//! One hanfs installation on the VM cluster, brought up the way an admin would:
//! storage-a and storage-b (DRBD 8.4 protocol C + resource-and-stonith with our
//! fence-peer handler, XFS with project quotas and reflink, `hanfs-backend agent`), a
//! kube-apiserver + etcd on the host side of the private bridge holding the Lease, the
//! controller on the host calling the volume API at the VIP, and the node plugin in the
//! client VM mounting over NFS. The agents do every promotion; this module only
//! provisions the disks once and starts the processes.

use crate::{Clock, Error};
use std::collections::HashMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::kube::{KubeApiServer, Options};
use testkit::process::Supervised;
use testkit::vm::{Cluster, ClusterSpec, Vm, VmSpec};

pub const VIP: &str = "10.80.0.100";
pub const STORAGE: [&str; 2] = ["storage-a", "storage-b"];
pub const STORAGE_IPS: [&str; 2] = ["10.80.0.11", "10.80.0.12"];
pub const CLIENT: &str = "client";
pub const CLIENT_IP: &str = "10.80.0.20";
/// Where the node plugin in the client VM serves CSI (TCP: csi-sanity and hanfsctl call
/// it from the host side of the bridge).
pub const NODE_PORT: u16 = 10000;
pub const CLUSTER_ID: &str = "e2e";
/// Where the stand-alone node plugin (csi-sanity, the VM-level trials) stages and publishes
/// in the client VM: laid out like kubelet's root, but not kubelet's, which the client's
/// real kubelet owns (it would take these for orphaned pod folders).
pub const STANDALONE_ROOT: &str = "/var/lib/hanfs-e2e";
/// The Lease duration the agents run with unless `HANFS_E2E_LEASE_MS` says otherwise: the
/// default an admin gets (`lease.duration_ms` in the agent config, `ha.lease.durationMs`
/// in the chart).
pub const LEASE_MS: u64 = 6000;

/// The Lease duration of this run: `HANFS_E2E_LEASE_MS` (to measure another duration, as
/// the soak does), else [`LEASE_MS`]. The agent refuses less than 1500 ms.
pub fn lease_ms() -> Result<u64, Error> {
    match std::env::var("HANFS_E2E_LEASE_MS") {
        Err(std::env::VarError::NotPresent) => Ok(LEASE_MS),
        Err(e) => Err(format!("HANFS_E2E_LEASE_MS: {e}").into()),
        Ok(v) => match v.parse::<u64>() {
            Ok(ms) if ms >= 1500 => Ok(ms),
            Ok(ms) => Err(format!("HANFS_E2E_LEASE_MS={ms}: the agent needs at least 1500").into()),
            Err(e) => Err(format!("HANFS_E2E_LEASE_MS={v:?}: {e}").into()),
        },
    }
}
/// Bound on a returning node's resync before a step fails ([`HanfsCluster::wait_in_sync`];
/// a full 512 MiB resync takes ~20 s here).
pub const RESYNC_LIMIT: Duration = Duration::from_secs(300);

/// Size of each storage VM's DRBD backing disk.
pub const DATA_DISK_MIB: u64 = 512;

/// The client VM's memory and data disk (containerd's store) as a kubelet node.
pub const CLIENT_MEMORY_MIB: u32 = 2048;
pub const CLIENT_DISK_MIB: u64 = 4096;
/// Two vCPUs for the client: with kubelet, containerd, kube-proxy, three sidecars and the
/// plugins on one TCG vCPU its load stayed above 10 and the sidecars' CSI connections timed
/// out ("Lost connection to CSI driver, exiting").
pub const CLIENT_CPUS: u32 = 2;

pub const LONG: Duration = Duration::from_secs(120);
pub const SHORT: Duration = Duration::from_secs(30);

/// How the storage agents serve volumes. The default (`thick`, `root_squash`) is the
/// agent's own; the storage e2e suite needs [`Exports::STORAGE_SUITE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exports {
    /// Sizes are limits only (the storage e2e suite asks for more GiB in total than a
    /// test VM's 512 MiB export holds; they never fill them).
    pub thin: bool,
    /// `root_squash` on every volume export. Off, root on the node is root on the server,
    /// so kubelet's chown applies a pod's fsGroup (the chart then says `File`).
    pub root_squash: bool,
}

impl Exports {
    pub const DEFAULT: Exports = Exports {
        thin: false,
        root_squash: true,
    };
    /// The suite's fsgroup patterns check that kubelet applied fsGroup: no root_squash.
    pub const STORAGE_SUITE: Exports = Exports {
        thin: true,
        root_squash: false,
    };
}

fn agent_config(node: &str, peer: &str, exports: Exports) -> Result<String, Error> {
    let lease_ms = lease_ms()?;
    let Exports { thin, root_squash } = exports;
    Ok(format!(
        r#"{{
  "node": "{node}", "peer": "{peer}",
  "lease": {{ "namespace": "default", "name": "hanfs-export", "duration_ms": {lease_ms} }},
  "kubeconfig": "/hanfs/share/kubeconfig",
  "state_dir": "/run/hanfs", "admin_socket": "/run/hanfs/admin.sock",
  "volume_api": {{ "listen": "tcp://0.0.0.0:9820", "token_file": "/hanfs/share/backend-token", "thin": {thin},
    "tls": {{ "ca_file": "/hanfs/share/tls/ca.crt", "cert_file": "/hanfs/share/tls/tls.crt", "key_file": "/hanfs/share/tls/tls.key" }} }},
  "drbd": {{ "resource": "r0", "device": "/dev/drbd0" }},
  "filesystem": {{ "mountpoint": "/export", "fstype": "xfs", "options": ["prjquota"] }},
  "nfsd": {{ "scope": "hanfs-nfs", "lease_secs": 10, "grace_secs": 10, "threads": 8, "root_squash": {root_squash} }},
  "vip": {{ "address": "{VIP}", "prefix_len": 24, "interface": "eth0" }},
  "last_resort": "reboot"
}}"#
    ))
}

/// Where [`write_pki`] puts the storage servers' and the controller's TLS files (under the
/// cluster's work dir; each holds `ca.crt`, `tls.crt`, `tls.key`).
pub const TLS_SERVER_DIR: &str = "tls/server";
pub const TLS_CONTROLLER_DIR: &str = "tls/controller";

/// The installation's mutual-TLS material, made as an admin would: one CA; the storage
/// servers' certificate names the VIP (what the controller dials) and each node's own
/// address (for `hanfsctl status` against one node); the controller's is a client
/// certificate from the same CA (the chart's controller in `kube_pods` presents it too).
fn write_pki(workdir: &Path) -> Result<(), Error> {
    use testkit::certs::{self, Ca, Validity};
    let ca = Ca::new("hanfs e2e CA").map_err(|e| e.to_string())?;
    let mut names = vec![VIP];
    names.extend(STORAGE_IPS);
    names.extend(STORAGE);
    let server = ca.server(&names).map_err(|e| e.to_string())?;
    let controller = ca
        .client("hanfs-controller", Validity::Current)
        .map_err(|e| e.to_string())?;
    certs::write_dir(&workdir.join(TLS_SERVER_DIR), &ca.cert_pem, &server)
        .map_err(|e| e.to_string())?;
    certs::write_dir(&workdir.join(TLS_CONTROLLER_DIR), &ca.cert_pem, &controller)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The three TLS file paths in `dir`.
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn common_tls_files(dir: &Path) -> TlsPaths {
    TlsPaths {
        ca: dir.join("ca.crt"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    }
}

/// Copies the plain files of `from` into `to` (created), keeping their modes.
pub fn copy_dir_files(from: &Path, to: &Path) -> Result<(), Error> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// The three VMs on the private bridge; the storage VMs with a blank data disk each.
pub fn vm_spec(bins: &Path, client_disk: Option<&Path>) -> ClusterSpec {
    let mut client = VmSpec::new(CLIENT, Ipv4Addr::new(10, 80, 0, 20))
        .with_memory(CLIENT_MEMORY_MIB)
        .with_cpus(CLIENT_CPUS)
        .with_data_disk(CLIENT_DISK_MIB);
    if let Some(disk) = client_disk {
        client = client.with_data_disk_image(disk);
    }
    ClusterSpec::new(vec![
        VmSpec::new("storage-a", Ipv4Addr::new(10, 80, 0, 11)).with_data_disk(DATA_DISK_MIB),
        VmSpec::new("storage-b", Ipv4Addr::new(10, 80, 0, 12)).with_data_disk(DATA_DISK_MIB),
        // The client is also a kubelet node (containerd, kubelet, the chart's pods): more
        // memory, and a data disk holding containerd's store (prepared on the host).
        client,
    ])
    .with_host_dir(bins)
}

/// The repository root and the release binaries the guests run.
pub fn repo_and_bins() -> Result<(PathBuf, PathBuf), Error> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    let bins = repo.join("target/release");
    for bin in [
        "hanfs-backend",
        "hanfs-controller",
        "hanfs-node",
        "hanfsctl",
    ] {
        if !bins.join(bin).exists() {
            return Err(format!(
                "{} is missing: build release binaries first (cargo build --release --bins)",
                bins.join(bin).display()
            )
            .into());
        }
    }
    Ok((repo, bins))
}

/// DRBD up on a (re)booted storage VM: its root disk is fresh at every boot, the data
/// disk keeps the replicated data and DRBD's metadata.
pub fn drbd_up(vm: &Vm, resource_file: &str, create_md: bool) -> Result<(), Error> {
    let create_md = if create_md {
        "drbdadm create-md --force r0 >/dev/null 2>&1"
    } else {
        "true"
    };
    vm.run(
        &format!(
            "cp /hanfs/share/{resource_file} /etc/drbd.d/r0.res && modprobe drbd && {create_md} && drbdadm up r0"
        ),
        LONG,
    )?;
    Ok(())
}

/// Maps the data disk through device-mapper (`/dev/mapper/hanfs-data`, linear over
/// `/dev/vdb`) so [`fail_data_disk`] can make it fail under DRBD. Idempotent. The guests
/// run no udev: dmsetup makes the device node itself.
pub fn map_data_disk(vm: &Vm) -> Result<(), Error> {
    vm.run(
        r#"export DM_DISABLE_UDEV=1; modprobe dm-mod; [ -e /dev/mapper/hanfs-data ] || dmsetup create hanfs-data --table "0 $(blockdev --getsz /dev/vdb) linear /dev/vdb 0""#,
        SHORT,
    )?;
    Ok(())
}

/// Every I/O on the data disk fails from now on (the "error" target), as on a dead disk.
pub fn fail_data_disk(vm: &Vm) -> Result<(), Error> {
    vm.run(
        r#"export DM_DISABLE_UDEV=1; size=$(blockdev --getsz /dev/mapper/hanfs-data) && dmsetup suspend --noflush hanfs-data && dmsetup load hanfs-data --table "0 $size error" && dmsetup resume hanfs-data"#,
        SHORT,
    )?;
    Ok(())
}

/// Declares the two blank disks in sync (no initial full resync) and makes the
/// filesystem once: provisioning, before any agent runs.
pub fn provision_filesystem(vm: &Vm) -> Result<(), Error> {
    vm.run(
        "for i in $(seq 1 100); do grep -q 'cs:Connected' /proc/drbd && break; sleep 0.1; done; \
         drbdadm -- --clear-bitmap new-current-uuid r0 && drbdadm primary r0 && \
         mkfs.xfs -f -q /dev/drbd0 && drbdadm secondary r0",
        LONG,
    )?;
    Ok(())
}

/// Counts DRBD's "Split-Brain detected" kernel messages per boot of each storage VM, so
/// a reading after every scenario reports only what is new.
#[derive(Debug, Default)]
pub struct SplitBrainCounter {
    seen: HashMap<(String, String), usize>,
}

impl SplitBrainCounter {
    /// New "Split-Brain detected" messages on the running storage VMs since the last call.
    pub fn new_events(&mut self, cluster: &Cluster) -> Result<usize, Error> {
        let mut new = 0;
        for name in STORAGE {
            let vm = cluster.vm(name);
            if !vm.is_running() {
                continue;
            }
            let out = vm.run(
                "cat /proc/sys/kernel/random/boot_id; dmesg | grep -c 'Split-Brain detected' || true",
                SHORT,
            )?;
            let mut lines = out.lines();
            // An unreadable count fails the trial instead of passing as "no split-brain".
            let boot = lines
                .next()
                .ok_or_else(|| format!("{name}: no boot id in {out:?}"))?
                .trim()
                .to_owned();
            let count: usize = lines
                .next()
                .ok_or_else(|| format!("{name}: no split-brain count in {out:?}"))?
                .trim()
                .parse()
                .map_err(|e| format!("{name}: split-brain count in {out:?}: {e}"))?;
            let before = self
                .seen
                .insert((name.to_owned(), boot), count)
                .unwrap_or(0);
            new += count.saturating_sub(before);
        }
        Ok(new)
    }
}

/// The running installation. Fields drop in order: controller, API server, VMs.
pub struct HanfsCluster {
    pub clock: Clock,
    pub repo: PathBuf,
    pub bins: PathBuf,
    /// What the agents were configured with (the chart's values must say the same).
    pub exports: Exports,
    controller: Option<Supervised>,
    api: Option<KubeApiServer>,
    cluster: Cluster,
}

impl HanfsCluster {
    /// Boots everything and returns once one storage VM serves the VIP and the node
    /// plugin and controller answer.
    pub fn start(clock: Clock) -> Result<Self, Error> {
        Self::start_with(clock, None, Exports::DEFAULT)
    }

    /// [`HanfsCluster::start`] with the client's data disk starting as `client_disk` (the
    /// kubelet node's containerd store, see `kube_pods::Artifacts`), and the agents
    /// serving as `exports` says.
    pub fn start_with(
        clock: Clock,
        client_disk: Option<&Path>,
        exports: Exports,
    ) -> Result<Self, Error> {
        let (repo, bins) = repo_and_bins()?;
        let cluster = Cluster::start(vm_spec(&bins, client_disk))?;
        clock.log(&format!(
            "3 VMs up in {:.1}s",
            cluster.boot_time().as_secs_f64()
        ));
        let kube_dir = cluster.workdir().join("kube");
        fs::create_dir_all(&kube_dir)?;
        // With a kubelet node to come (client_disk), the whole control plane: every default
        // controller (Deployments, DaemonSets, the PV binder, ...) and the scheduler.
        let options = Options {
            controller_manager: client_disk.is_some(),
            controllers: client_disk.map(|_| "*".to_owned()),
            scheduler: client_disk.is_some(),
            ..Options::default()
        };
        let api =
            KubeApiServer::start_with(cluster.netns(), cluster.bridge_ip(), &kube_dir, &options)?;
        clock.log(&format!(
            "kube-apiserver ready in {:.1}s",
            api.startup_time().as_secs_f64()
        ));
        let mut hc = HanfsCluster {
            clock,
            repo,
            bins,
            exports,
            controller: None,
            api: Some(api),
            cluster,
        };
        hc.install()?;
        Ok(hc)
    }

    fn install(&mut self) -> Result<(), Error> {
        let resource = fs::read_to_string(self.repo.join("e2e/storage/drbd-r0.res"))?;
        let token = format!("e2e-{}", std::process::id());
        fs::write(self.workdir().join("backend-token"), &token)?;
        write_pki(self.workdir())?;
        let kubeconfig = self
            .api
            .as_ref()
            .ok_or("the API server is gone")?
            .kubeconfig()
            .to_owned();
        for (i, name) in STORAGE.iter().enumerate() {
            let share = self.vm(name).share_dir();
            fs::write(share.join("r0.res"), &resource)?;
            fs::copy(&kubeconfig, share.join("kubeconfig"))?;
            fs::write(share.join("backend-token"), &token)?;
            copy_dir_files(&self.workdir().join(TLS_SERVER_DIR), &share.join("tls"))?;
            fs::write(
                share.join("agent.json"),
                agent_config(name, STORAGE[1 - i], self.exports)?,
            )?;
        }
        crate::writer::install(self.client())?;
        for name in STORAGE {
            map_data_disk(self.vm(name))?;
            drbd_up(self.vm(name), "r0.res", true)?;
        }
        provision_filesystem(self.vm("storage-a"))?;
        self.clock
            .log("DRBD r0 connected, UpToDate/UpToDate, XFS made");
        for name in STORAGE {
            start_agent(self.vm(name))?;
        }
        let (first, took) = self.wait_active(None, LONG)?;
        self.clock.log(&format!(
            "{first} active {:.1}s after the agents started",
            took.as_secs_f64()
        ));
        self.start_node_plugin()?;
        self.start_controller()?;
        self.clock
            .log("node plugin (client VM) and controller (host) answer");
        Ok(())
    }

    /// The node plugin in the client VM: NFS transport, defaults for everything else, plus
    /// the folder csi-sanity's paths live in (see [`crate::sanity`]).
    fn start_node_plugin(&self) -> Result<(), Error> {
        let sanity = self.sanity_dir();
        fs::create_dir_all(&sanity)?;
        let sanity = sanity.display();
        // The node id carries the address the client mounts from (`client@10.80.0.20`):
        // ControllerPublish admits exactly that address to a volume's export.
        let client_ip = self.client().ip();
        self.client().run(
            &format!(
                "mkdir -p {sanity} {STANDALONE_ROOT} && mount --bind /hanfs/share/sanity {sanity} && \
                 setsid -f hanfs-node --endpoint tcp://0.0.0.0:{NODE_PORT} --node-id {CLIENT} \
                   --node-address {client_ip} \
                   --cluster-id {CLUSTER_ID} --transport nfs --nfs-server {VIP} \
                   --allowed-target-root {STANDALONE_ROOT} --allowed-target-root {sanity} \
                   >>/hanfs/share/node.log 2>&1"
            ),
            SHORT,
        )?;
        self.wait_ready("node plugin", || {
            self.hanfsctl_raw(&["--node", &self.node_endpoint(), "stats", "probe", "/x"])
        })
    }

    fn start_controller(&mut self) -> Result<(), Error> {
        let tls_client = common_tls_files(&self.workdir().join(TLS_CONTROLLER_DIR));
        let socket = self.workdir().join("controller.sock");
        let log = fs::File::create(self.workdir().join("controller.log"))?;
        let mut cmd = Command::new(self.bins.join("hanfs-controller"));
        cmd.args([
            "--endpoint",
            &format!("unix://{}", socket.display()),
            "--cluster-id",
            CLUSTER_ID,
            "--backend",
            &format!("tcp://{VIP}:9820"),
            "--backend-token-file",
            &self.workdir().join("backend-token").display().to_string(),
            "--tls-ca",
            &tls_client.ca.display().to_string(),
            "--tls-cert",
            &tls_client.cert.display().to_string(),
            "--tls-key",
            &tls_client.key.display().to_string(),
            "--nfs-server",
            VIP,
            "--nfs-share",
            "/export",
        ]);
        // command_in copies program, arguments and environment, not stdio.
        let mut in_netns = self.cluster.command_in(&cmd);
        in_netns.stdout(log.try_clone()?).stderr(log);
        self.controller = Some(Supervised::spawn("hanfs-controller", &mut in_netns)?);
        self.wait_ready("controller", || self.hanfsctl(&["volume", "list"]))
    }

    /// Polls `probe` until the server answers (a refusal of the probe's made-up
    /// arguments counts: it came from the server).
    fn wait_ready(
        &self,
        what: &str,
        probe: impl Fn() -> Result<String, Error>,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < SHORT {
            match probe() {
                Ok(_) => return Ok(()),
                Err(e)
                    if ["NotFound", "InvalidArgument"]
                        .iter()
                        .any(|code| e.to_string().contains(code)) =>
                {
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Err(format!("{what} did not answer within {SHORT:?}: {last}").into())
    }

    pub fn vm(&self, name: &str) -> &Vm {
        self.cluster.vm(name)
    }

    /// The API server holding the Lease (and the Kubernetes objects of `kube_pods`).
    pub fn api(&self) -> Result<&KubeApiServer, Error> {
        Ok(self.api.as_ref().ok_or("the API server is gone")?)
    }

    pub fn client(&self) -> &Vm {
        self.cluster.vm(CLIENT)
    }

    pub fn vms(&self) -> &Cluster {
        &self.cluster
    }

    pub fn workdir(&self) -> &Path {
        self.cluster.workdir()
    }

    /// Host path of the folder the client VM also sees at the same path (a bind mount of
    /// its 9p share), so csi-sanity's mkdir/stat on the host match the node's paths.
    pub fn sanity_dir(&self) -> PathBuf {
        self.client().share_dir().join("sanity")
    }

    pub fn controller_endpoint(&self) -> String {
        format!(
            "unix://{}",
            self.workdir().join("controller.sock").display()
        )
    }

    pub fn node_endpoint(&self) -> String {
        format!("tcp://{CLIENT_IP}:{NODE_PORT}")
    }

    /// Runs hanfsctl in the cluster's namespace against the controller and node plugin.
    pub fn hanfsctl(&self, args: &[&str]) -> Result<String, Error> {
        let mut all = vec![
            "--controller".to_owned(),
            self.controller_endpoint(),
            "--node".to_owned(),
            self.node_endpoint(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.hanfsctl_raw(&refs)
    }

    /// A maker of the command [`Self::hanfsctl`] runs (in the cluster's namespace, against
    /// the controller and node plugin), for a thread that runs it repeatedly.
    pub fn hanfsctl_command(&self, args: &[&str]) -> impl Fn() -> Command + Send + 'static {
        let mut cmd = Command::new(self.bins.join("hanfsctl"));
        cmd.args([
            "--controller",
            &self.controller_endpoint(),
            "--node",
            &self.node_endpoint(),
        ])
        .args(args);
        let wrapped = self.cluster.command_in(&cmd);
        let program = wrapped.get_program().to_owned();
        let argv: Vec<std::ffi::OsString> = wrapped.get_args().map(ToOwned::to_owned).collect();
        move || {
            let mut cmd = Command::new(&program);
            cmd.args(&argv).stdin(Stdio::null());
            cmd
        }
    }

    fn hanfsctl_raw(&self, args: &[&str]) -> Result<String, Error> {
        let mut cmd = Command::new(self.bins.join("hanfsctl"));
        cmd.args(args).stdin(Stdio::null());
        let out = testkit::cmd::output(&mut self.cluster.command_in(&cmd), LONG)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "hanfsctl {}: {}{}",
                args.join(" "),
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(stdout)
    }

    /// The storage VM that serves (its agent reports the VIP), if any.
    pub fn active(&self, skip: Option<&str>) -> Option<String> {
        STORAGE
            .iter()
            .find(|name| {
                Some(**name) != skip
                    && self.vm(name).is_running()
                    && self
                        .vm(name)
                        .exec("hanfs-backend status 2>&1", SHORT)
                        .is_ok_and(|s| {
                            s.stdout.contains("vip=true")
                                && s.stdout.contains("state:       active")
                        })
            })
            .map(|name| (*name).to_owned())
    }

    pub fn wait_active(
        &self,
        skip: Option<&str>,
        limit: Duration,
    ) -> Result<(String, Duration), Error> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(name) = self.active(skip) {
                return Ok((name, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(format!("no storage VM became active within {limit:?}").into())
    }

    /// `hanfs-backend status` on a storage VM.
    pub fn status(&self, name: &str) -> Result<String, Error> {
        Ok(self.vm(name).run("hanfs-backend status 2>&1", SHORT)?)
    }

    /// Restarts a killed storage VM the way its boot would: DRBD up, agent started.
    pub fn restart_storage(&self, name: &str) -> Result<(), Error> {
        let vm = self.vm(name);
        if vm.is_running() {
            vm.kill()?;
        }
        vm.restart()?;
        map_data_disk(vm)?;
        drbd_up(vm, "r0.res", false)?;
        start_agent(vm)?;
        Ok(())
    }

    /// Brings a killed storage node back ([`Self::restart_storage`]) and waits until the
    /// survivor reports both disks UpToDate: whatever runs next may fail over again and
    /// needs a peer with current data. Returns the resync time.
    pub fn rejoin_storage(&self, name: &str, survivor: &str) -> Result<Duration, Error> {
        self.restart_storage(name)?;
        self.wait_in_sync(survivor, RESYNC_LIMIT)
    }

    /// Waits until DRBD on `name` is connected and both disks are UpToDate.
    pub fn wait_in_sync(&self, name: &str, limit: Duration) -> Result<Duration, Error> {
        let started = Instant::now();
        loop {
            let state = self.vm(name).exec("cat /proc/drbd", SHORT)?;
            if state.stdout.contains("cs:Connected")
                && state.stdout.contains("ds:UpToDate/UpToDate")
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                return Err(
                    format!("{name} did not resync within {limit:?}: {}", state.stdout).into(),
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Creates a volume through the controller and publishes it in the client VM as
    /// kubelet would (stage once, bind per pod). Returns (volume id, target path).
    pub fn published_volume(&self, name: &str, size: &str) -> Result<(String, String), Error> {
        let created = self.hanfsctl(&["volume", "create", name, "--size", size])?;
        let id = first_word(&created)?;
        let staging =
            format!("{STANDALONE_ROOT}/plugins/kubernetes.io/csi/hanfs/{name}/globalmount");
        let target =
            format!("{STANDALONE_ROOT}/pods/{name}/volumes/kubernetes.io~csi/{name}/mount");
        self.client()
            .run(&format!("mkdir -p {staging} $(dirname {target})"), SHORT)?;
        self.hanfsctl(&["publish", &id, &target, "--staging", &staging])?;
        Ok((id, target))
    }

    /// The end of the node plugin's and controller's logs, the client's kernel log, and
    /// last (a CI report keeps only the tail of the output) each storage node's DRBD state
    /// and agent log: what to read when a step failed.
    pub fn dump_logs(&self) {
        for (what, path) in [
            ("node plugin", self.client().share_dir().join("node.log")),
            ("controller", self.workdir().join("controller.log")),
        ] {
            print_log_tail(what, &path, 10, false);
        }
        match self.client().exec("dmesg | tail -10", SHORT) {
            Ok(out) => eprintln!("---- client dmesg ----\n{}", out.stdout),
            Err(e) => eprintln!("---- client: {e}"),
        }
        for name in STORAGE {
            let vm = self.vm(name);
            if vm.is_running() {
                match vm.exec("cat /proc/drbd", SHORT) {
                    Ok(out) => eprintln!("---- {name} /proc/drbd ----\n{}", out.stdout),
                    Err(e) => eprintln!("---- {name} /proc/drbd: {e}"),
                }
            } else {
                eprintln!("---- {name}: not running");
            }
            let what = format!("{name} agent");
            print_log_tail(&what, &vm.share_dir().join("agent.log"), 40, true);
        }
        hold_if_asked(self.workdir());
    }

    /// Stops the controller, the API server and the VMs, reporting the first error.
    pub fn destroy(mut self) -> Result<(), Error> {
        if let Some(mut controller) = self.controller.take() {
            let _ = controller.stop(Duration::from_secs(5));
        }
        drop(self.api.take());
        self.keep_agent_logs();
        self.cluster.destroy()?;
        Ok(())
    }

    /// Copies both agents' logs (DEBUG lines left out) to `target/e2e-logs/<stamp>/`
    /// before the VMs' temp dirs go: a slow stand-down or takeover is only explained by
    /// the agents' step lines. Keeps the newest [`KEPT_LOG_RUNS`] runs; a failure to copy
    /// is printed, never fatal (the run's verdict is not about its logs).
    fn keep_agent_logs(&self) {
        let root = self.repo.join("target/e2e-logs");
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let dir = root.join(stamp.to_string());
        if let Err(e) = fs::create_dir_all(&dir) {
            eprintln!("agent logs not kept: {}: {e}", dir.display());
            return;
        }
        for name in STORAGE {
            let from = self.vm(name).share_dir().join("agent.log");
            let kept = fs::read_to_string(&from).map(|log| {
                log.lines()
                    .filter(|line| !line.contains("DEBUG"))
                    .flat_map(|line| [line, "\n"])
                    .collect::<String>()
            });
            let to = dir.join(format!("{name}-agent.log"));
            if let Err(e) = kept.and_then(|text| fs::write(&to, text)) {
                eprintln!("agent log of {name} not kept ({}): {e}", from.display());
            }
        }
        self.clock
            .log(&format!("agent logs kept in {}", dir.display()));
        prune_oldest(&root, KEPT_LOG_RUNS);
    }
}

/// How many runs' agent logs `target/e2e-logs` keeps.
const KEPT_LOG_RUNS: usize = 10;

/// Removes all but the `keep` newest run folders under `root` (named by their stamps).
fn prune_oldest(root: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let mut runs: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect();
    runs.sort();
    for (_, path) in runs.iter().rev().skip(keep) {
        let _ = fs::remove_dir_all(path);
    }
}

/// Prints the last `lines` lines of a log on stderr, DEBUG lines left out when asked
/// (an agent logs a DEBUG line per renewal: the tail would show nothing else).
fn print_log_tail(what: &str, path: &Path, lines: usize, skip_debug: bool) {
    let filter = if skip_debug { " without DEBUG" } else { "" };
    eprintln!("---- {what} log (last {lines} lines{filter}) ----");
    let log = fs::read_to_string(path).unwrap_or_else(|e| {
        eprintln!("(cannot read {}: {e})", path.display());
        String::new()
    });
    let kept: Vec<&str> = log
        .lines()
        .filter(|line| !(skip_debug && line.contains("DEBUG")))
        .collect();
    for line in &kept[kept.len().saturating_sub(lines)..] {
        eprintln!("{line}");
    }
}

/// With `HANFS_E2E_HOLD_SECS` set, keeps the cluster alive (bounded) for a look:
/// `e2e/vm/vm.sh exec <workdir>/<vm>` works meanwhile.
pub fn hold_if_asked(workdir: &Path) {
    if let Ok(hold) = std::env::var("HANFS_E2E_HOLD_SECS") {
        let secs = hold.parse().unwrap_or(0u64).min(1800);
        eprintln!("holding the cluster in {} for {secs} s", workdir.display());
        std::thread::sleep(Duration::from_secs(secs));
    }
}

pub fn start_agent(vm: &Vm) -> Result<(), Error> {
    vm.run(
        "mkdir -p /etc/hanfs /export /run/hanfs && cp /hanfs/share/agent.json /etc/hanfs/agent.json && \
         setsid -f hanfs-backend agent --config /etc/hanfs/agent.json >>/hanfs/share/agent.log 2>&1",
        SHORT,
    )?;
    Ok(())
}

/// The first word of a CLI line (hanfsctl prints ids first).
pub fn first_word(text: &str) -> Result<String, Error> {
    text.split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| format!("expected an id, got {text:?}").into())
}

/// Runs one command built by [`HanfsCluster::hanfsctl_command`] within `limit`: its stdout
/// when it exited 0, else what it printed (stdout and stderr) or why it could not run.
/// The load scenarios record failures as data instead of stopping at the first one.
pub fn hanfsctl_outcome(make: &impl Fn() -> Command, limit: Duration) -> Result<String, String> {
    let mut cmd = make();
    match testkit::cmd::output(&mut cmd, limit) {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_runs_and_other_files() {
        let root = std::env::temp_dir().join(format!("hanfs-prune-{}", std::process::id()));
        for stamp in [5, 30, 7, 100, 12] {
            fs::create_dir_all(root.join(stamp.to_string())).unwrap();
        }
        fs::create_dir_all(root.join("notes")).unwrap();
        prune_oldest(&root, 2);
        let mut left: Vec<String> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(left, ["100", "30", "notes"]);
    }
}

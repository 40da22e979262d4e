//! The production [`Stack`]: DRBD, the replicated filesystem, nfsd, the VIP and tickle
//! ACKs through the drivers — plus the volume store, which opens after the filesystem
//! is mounted and closes before it is unmounted, so the volume API answers only on
//! the active node.
//!
//! Proven for real in the VM cluster (DRBD and nfsd are not in this host's kernel);
//! the agent loop above it is tested against a real kube-apiserver with a double.

use super::agent::{Stack, StackObservation, StepError, Unhealthy};
use crate::drivers::drbd::{self, ConnectionState, DiskState, Drbd, DrbdError};
use crate::drivers::fs_mount::{FsError, FsMount, UnmountOutcome};
use crate::drivers::nfsd::{Daemon, Nfsd, NfsdError};
use crate::drivers::tickle;
use crate::drivers::vip::{GarpConfig, Vip, VipError};
use ha_core::{Disk, DrbdView, Role, StackAction, StackView};
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use volumes::api::StoreSlot;
use volumes::store::CapacityPolicy;
use volumes::{StoreConfig, VolumeStore};

/// Deadline of the write probe on the replicated filesystem.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the write probe runs.
const PROBE_INTERVAL_MS: u64 = 1000;
/// How long a stand-down waits for in-flight volume-API calls before it unmounts.
/// Below the step timeout, so a drain that does not finish is reported as a refusal
/// rather than cut short by the agent's deadline.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Which [`StepError`] a driver error is: refusals where the component said no in its
/// current state and changed nothing, timeouts where a deadline passed, failures else.
trait StepErrorOf: std::fmt::Display {
    fn kind(&self) -> Kind {
        Kind::Failed
    }
    fn step_error(&self) -> StepError {
        let text = self.to_string();
        match self.kind() {
            Kind::Refused => StepError::Refused(text),
            Kind::TimedOut => StepError::Timeout(text),
            Kind::Failed => StepError::Failed(text),
        }
    }
}

enum Kind {
    Refused,
    TimedOut,
    Failed,
}

// A tool's own deadline is a `Timeout` like the agent's: the component hangs, and what
// the kernel did with the request is unknown even though the tool was killed.
impl StepErrorOf for DrbdError {
    fn kind(&self) -> Kind {
        match self {
            DrbdError::StateChangeRefused { .. } => Kind::Refused,
            DrbdError::Command { source, .. } if source.is_timeout() => Kind::TimedOut,
            _ => Kind::Failed,
        }
    }
}

impl StepErrorOf for FsError {
    fn kind(&self) -> Kind {
        match self {
            FsError::MountpointTaken { .. } => Kind::Refused,
            FsError::Command { source, .. } if source.is_timeout() => Kind::TimedOut,
            _ => Kind::Failed,
        }
    }
}

impl StepErrorOf for NfsdError {
    fn kind(&self) -> Kind {
        match self {
            NfsdError::TimedOut { .. } => Kind::TimedOut,
            NfsdError::Command { source, .. } if source.is_timeout() => Kind::TimedOut,
            _ => Kind::Failed,
        }
    }
}

impl StepErrorOf for VipError {
    fn kind(&self) -> Kind {
        match self {
            VipError::OnOtherInterface { .. } | VipError::OtherPrefix { .. } => Kind::Refused,
            VipError::TimedOut { .. } => Kind::TimedOut,
            _ => Kind::Failed,
        }
    }
}

fn step_error(e: impl StepErrorOf) -> StepError {
    e.step_error()
}

fn now_ms() -> u64 {
    // An unreadable clock makes every periodic job due (safe: they only cost work).
    super::agent::monotonic_ms().unwrap_or(u64::MAX)
}

/// What the node does when it is still Primary at a point where the peer may be active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LastResort {
    /// Immediate reboot through sysrq: nothing written after it can be acknowledged.
    Reboot,
    /// Only log (test rigs that must not reboot; unsafe in production).
    LogOnly,
}

pub struct SystemStack {
    pub drbd: Drbd,
    pub mount: FsMount,
    pub nfsd: Nfsd,
    pub vip: Vip,
    /// Where the active keeps its NFS clients' connections (on the replicated disk).
    pub clients_file: PathBuf,
    pub nfs_port: u16,
    pub store_slot: Arc<StoreSlot>,
    pub capacity_policy: CapacityPolicy,
    pub default_volume_bytes: i64,
    pub last_resort: LastResort,
    /// nfsdcld and rpc.mountd while nfsd runs.
    daemons: tokio::sync::Mutex<Vec<Daemon>>,
    /// When the client list was last saved (monotonic ms).
    clients_saved_at: AtomicU64,
    /// When the filesystem was last probed for writes (monotonic ms).
    probed_at: AtomicU64,
}

impl SystemStack {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        drbd: Drbd,
        mount: FsMount,
        nfsd: Nfsd,
        vip: Vip,
        store_slot: Arc<StoreSlot>,
        capacity_policy: CapacityPolicy,
        default_volume_bytes: i64,
        last_resort: LastResort,
    ) -> Self {
        let clients_file = mount.mountpoint.join(".hanfs/nfs-clients.json");
        Self {
            drbd,
            mount,
            nfsd,
            vip,
            clients_file,
            nfs_port: 2049,
            store_slot,
            capacity_policy,
            default_volume_bytes,
            last_resort,
            daemons: tokio::sync::Mutex::new(Vec::new()),
            clients_saved_at: AtomicU64::new(0),
            probed_at: AtomicU64::new(0),
        }
    }

    /// Loads nfsd's modules and tools on the standby, so a takeover does not wait for them.
    pub async fn keep_warm(&self) {
        if let Err(e) = self.nfsd.keep_warm().await {
            tracing::warn!(error = %e, "could not pre-load nfsd");
        }
    }

    /// The active refreshes the list of its NFS clients' connections every few seconds,
    /// so the next active can tickle them right after taking the VIP.
    async fn save_clients(&self) {
        let now = now_ms();
        if now.saturating_sub(self.clients_saved_at.load(Ordering::Relaxed)) < 3000 {
            return;
        }
        self.clients_saved_at.store(now, Ordering::Relaxed);
        let server = SocketAddrV4::new(self.vip.address, self.nfs_port);
        let path = self.clients_file.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let connections = tickle::read_established(server)?;
            tickle::save(&path, &connections).map(|()| connections.len())
        })
        .await;
        match saved {
            Ok(Ok(count)) => tracing::debug!(count, "saved the NFS client list"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not save the NFS client list"),
            Err(e) => tracing::warn!(error = %e, "saving the NFS client list panicked"),
        }
    }

    async fn open_store(&self) -> Result<(), StepError> {
        let config = StoreConfig {
            root: self.mount.mountpoint.clone(),
            capacity_policy: self.capacity_policy,
            default_volume_bytes: self.default_volume_bytes,
            default_mode: 0o777,
            copy_hook: None,
        };
        let store = tokio::task::spawn_blocking(move || VolumeStore::open(config))
            .await
            .map_err(|e| StepError::Failed(e.to_string()))?
            .map_err(|e| StepError::Failed(format!("opening the volume store: {e}")))?;
        self.store_slot.set(Some(Arc::new(store)));
        Ok(())
    }

    async fn send_tickles(&self) -> Result<(), String> {
        // (Its errors are only logged: the VIP is up either way.)
        let path = self.clients_file.clone();
        let report = tokio::task::spawn_blocking(move || {
            let connections = tickle::load(&path)?;
            tickle::send_tickles(&connections)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        tracing::info!(
            sent = report.sent,
            failed = report.failures.len(),
            "tickle ACKs sent to the NFS clients"
        );
        Ok(())
    }
}

fn role_of(role: Option<&drbd::Role>) -> Role {
    match role {
        Some(drbd::Role::Primary) => Role::Primary,
        Some(drbd::Role::Secondary) => Role::Secondary,
        _ => Role::Unknown,
    }
}

fn disk_of(disk: Option<&DiskState>) -> Disk {
    match disk {
        Some(DiskState::UpToDate) => Disk::UpToDate,
        Some(DiskState::Consistent) => Disk::Consistent,
        Some(DiskState::Outdated) => Disk::Outdated,
        Some(DiskState::Inconsistent) => Disk::Inconsistent,
        Some(DiskState::Diskless) => Disk::Diskless,
        _ => Disk::Unknown,
    }
}

impl Stack for SystemStack {
    async fn observe(&self) -> StackObservation {
        // The probes are independent; two of them spawn tools (drbdsetup, exportfs), so
        // running them together shortens every observation, hence every takeover step.
        let (drbd_status, mounted, threads, exported, vip) = tokio::join!(
            self.drbd.status(),
            self.mount.is_mounted(),
            self.nfsd.threads(),
            self.nfsd.is_exported(),
            self.vip.is_present(),
        );
        let drbd = match drbd_status {
            Ok(status) if status.resource_up => {
                let connected = matches!(status.connection, Some(ConnectionState::Connected));
                Some(DrbdView {
                    role: role_of(status.role.as_ref()),
                    disk: disk_of(status.disk.as_ref()),
                    connected,
                    peer_role: if connected {
                        role_of(status.peer_role.as_ref())
                    } else {
                        Role::Unknown
                    },
                    peer_disk: if connected {
                        disk_of(status.peer_disk.as_ref())
                    } else {
                        Disk::Unknown
                    },
                    io_frozen: status.suspended.contains(&drbd::SuspendReason::Fencing),
                })
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot observe DRBD");
                None
            }
        };
        let mounted = mounted.unwrap_or(false);
        let stack = StackView {
            mounted,
            nfsd: threads.is_ok_and(|t| t > 0),
            exported: exported.unwrap_or(false),
            vip: vip.unwrap_or(false),
        };
        // Mounted is what mountinfo says (teardown must unmount it either way); whether
        // it still takes writes is a health question, asked with a short deadline so a
        // hung disk cannot stall the observation.
        // Once a second is enough (the "every second or so"): each probe is an
        // fsync'ed write that DRBD replicates.
        let now = now_ms();
        let due = now.saturating_sub(self.probed_at.load(Ordering::Relaxed)) >= PROBE_INTERVAL_MS;
        let unhealthy = if mounted && due {
            self.probed_at.store(now, Ordering::Relaxed);
            crate::drivers::fs_mount::probe_writable(&self.mount.mountpoint, PROBE_TIMEOUT)
                .await
                .err()
                .map(|e| Unhealthy {
                    lasting: e.is_lasting(),
                    problem: format!("the replicated filesystem does not take writes: {e}"),
                })
        } else {
            None
        };
        if stack.vip {
            self.save_clients().await;
        }
        StackObservation {
            drbd,
            stack,
            unhealthy,
        }
    }

    async fn run(&self, step: &StackAction) -> Result<(), StepError> {
        match step {
            StackAction::Promote => self.drbd.promote().await.map_err(step_error),
            StackAction::PromoteForced { reason } => {
                tracing::warn!(%reason, "forced promotion");
                self.drbd.force_promote().await.map_err(step_error)
            }
            StackAction::Mount => {
                self.mount.mount().await.map_err(step_error)?;
                self.open_store().await
            }
            StackAction::StartNfsd => {
                self.nfsd.prepare_state_dir().await.map_err(step_error)?;
                let mut daemons = self.daemons.lock().await;
                // A retried start must not leave a second copy running.
                for daemon in daemons.drain(..) {
                    let _ = daemon.stop().await;
                }
                // Started together: each start waits a moment to see the daemon stay up,
                // and those waits need not add up. Both are up before rpc.nfsd starts
                // (nfsd looks for nfsdcld once, at start). A daemon started next to a
                // failed one is dropped, which kills it.
                let (cld, mountd) = tokio::join!(self.nfsd.start_cld(), self.nfsd.start_mountd());
                daemons.push(cld.map_err(step_error)?);
                daemons.push(mountd.map_err(step_error)?);
                drop(daemons);
                self.nfsd.write_times().await.map_err(step_error)?;
                self.nfsd.start().await.map_err(step_error)
            }
            // The table comes from the publish records on the replicated disk (the store
            // opened at Mount), so a new active exports exactly what the old one did.
            StackAction::Export => {
                let table = self.store_slot.apply_exports().await.map_err(|s| {
                    StepError::Failed(format!("exporting the volumes: {}", s.message()))
                })?;
                tracing::info!(
                    volumes = table.volumes.len(),
                    admissions = table.admissions(),
                    "export table applied"
                );
                Ok(())
            }
            StackAction::AddVip => {
                self.vip.add().await.map_err(step_error)?;
                // One gratuitous ARP before the tickles, or clients answer the dead MAC.
                self.vip
                    .announce(&GarpConfig::once())
                    .await
                    .map_err(step_error)?;
                // The VIP is up either way; a failed tickle only costs clients a retransmit.
                if let Err(error) = self.send_tickles().await {
                    tracing::warn!(%error, "could not send tickle ACKs");
                }
                Ok(())
            }
            StackAction::RemoveVip => self.vip.remove().await.map(|_| ()).map_err(step_error),
            StackAction::Unexport => self.nfsd.unexport().await.map_err(step_error),
            StackAction::StopNfsd => {
                self.nfsd.stop().await.map_err(step_error)?;
                for daemon in self.daemons.lock().await.drain(..) {
                    daemon.stop().await.map_err(step_error)?;
                }
                Ok(())
            }
            StackAction::Unmount => {
                // New volume calls get UNAVAILABLE from here on; the ones in flight (a
                // long clone) finish first. If they do not, the step is refused and
                // retried: an unmount now would only be lazy, reported as success
                // while the copy still writes to a detached filesystem.
                self.store_slot
                    .close(DRAIN_TIMEOUT)
                    .await
                    .map_err(|busy| StepError::Refused(busy.to_string()))?;
                // nfsd's helpers keep files open on the filesystem (nfsdcld its
                // database). A teardown skips StopNfsd when nfsd's threads are already
                // gone (nfsd killed); without this the unmount would only be lazy and
                // DRBD would refuse to demote a device held open.
                for daemon in self.daemons.lock().await.drain(..) {
                    daemon.stop().await.map_err(step_error)?;
                }
                match self.mount.unmount().await.map_err(step_error)? {
                    // Something still holds the filesystem: DRBD will refuse the demotion
                    // until it lets go, and the demotion is retried.
                    UnmountOutcome::Lazy => {
                        tracing::warn!("unmount was only lazy: the device is still held open")
                    }
                    UnmountOutcome::NotMounted | UnmountOutcome::Clean | UnmountOutcome::Forced => {
                    }
                }
                Ok(())
            }
            StackAction::Demote => self.drbd.demote().await.map_err(step_error),
            StackAction::ResumeIo => self.drbd.resume_io().await.map_err(step_error),
        }
    }

    async fn last_resort(&self, reason: &str) {
        match self.last_resort {
            LastResort::Reboot => {
                tracing::error!(%reason, "LAST RESORT: rebooting now");
                // sysrq 'b': immediate reboot without sync — the point is that nothing
                // more is written or acknowledged from this node.
                let _ = std::fs::write("/proc/sys/kernel/sysrq", "1");
                if let Err(e) = std::fs::write("/proc/sysrq-trigger", "b") {
                    tracing::error!(error = %e, "sysrq reboot refused; trying reboot(2)");
                    // reboot(2) only ever returns an error.
                    let Err(e) =
                        nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
                    tracing::error!(error = %e, "reboot(2) refused too: THIS NODE MAY STILL WRITE; freezing DRBD I/O");
                    let _ = crate::drivers::command::run(
                        "drbdadm",
                        ["suspend-io", self.drbd.resource.as_str()],
                        Duration::from_secs(5),
                    )
                    .await;
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            LastResort::LogOnly => {
                tracing::error!(%reason, "LAST RESORT needed but configured log-only: this node may now be a second writer");
            }
        }
    }
}

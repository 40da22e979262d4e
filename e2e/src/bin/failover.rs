//! Failover on the real data path: two storage VMs (DRBD 8.4 protocol C, XFS, kernel
//! nfsd) run the hanfs agent against a real kube-apiserver; a client VM mounts the VIP
//! over NFS v4.2 and writes fsync'ed, numbered records while the active is hard-killed
//! (qemu SIGKILL) or switched over. The agents do every promotion; this program only
//! provisions, injects the fault and measures on the client's clock.
//!
//! Prints one table row per trial: client-observed stall (last ack before the fault to
//! first ack after), acknowledged records lost, I/O errors, locks lost.
//!
//! Usage: `e2e/run-failover.sh` (builds release binaries first). Needs root, qemu, Go.

use hanfs_testkit::kube::KubeApiServer;
use hanfs_testkit::vm::{Cluster, ClusterSpec, Vm, VmSpec};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

const VIP: &str = "10.80.0.100";
const STORAGE: [&str; 2] = ["storage-a", "storage-b"];
const LONG: Duration = Duration::from_secs(120);
const SHORT: Duration = Duration::from_secs(30);

const WRITER: &str = r#"
import fcntl, os, sys, time
path, log, duration, lock = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "lock"
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
if lock:
    fcntl.lockf(fd, fcntl.LOCK_EX)
out = open(log, "w", buffering=1)
end = time.monotonic() + duration
i = 0
while time.monotonic() < end:
    i += 1
    try:
        os.write(fd, f"{i}\n".encode())
        os.fsync(fd)
        out.write(f"ack {i} {time.monotonic():.3f}\n")
    except OSError as e:
        out.write(f"err {i} {time.monotonic():.3f} {e.errno}\n")
        time.sleep(0.2)
    time.sleep(0.05)
out.write("done\n")
"#;

fn log(t0: Instant, what: &str) {
    eprintln!("[{:>7.1}s] {what}", t0.elapsed().as_secs_f64());
}

fn storage_config(node: &str, peer: &str) -> String {
    format!(
        r#"{{
  "node": "{node}", "peer": "{peer}",
  "lease": {{ "namespace": "default", "name": "hanfs-export", "duration_ms": 6000 }},
  "kubeconfig": "/hanfs/share/kubeconfig",
  "state_dir": "/run/hanfs", "admin_socket": "/run/hanfs/admin.sock",
  "volume_api": {{ "listen": "tcp://0.0.0.0:9820" }},
  "drbd": {{ "resource": "r0", "device": "/dev/drbd0" }},
  "filesystem": {{ "mountpoint": "/export", "fstype": "xfs", "options": ["prjquota"] }},
  "nfsd": {{ "scope": "hanfs-nfs", "lease_secs": 10, "grace_secs": 10, "threads": 8 }},
  "vip": {{ "address": "{VIP}", "prefix_len": 24, "interface": "eth0" }},
  "last_resort": "reboot"
}}"#
    )
}

/// DRBD up on a (re)booted storage VM: its root disk is fresh at every boot, the data
/// disk keeps the replicated data and DRBD's metadata.
fn drbd_up(vm: &Vm, create: bool) -> Result<(), Error> {
    let create_md = if create {
        "drbdadm create-md --force r0 >/dev/null 2>&1"
    } else {
        "true"
    };
    vm.run(
        &format!(
            "cp /hanfs/share/r0.res /etc/drbd.d/r0.res && modprobe drbd && {create_md} && drbdadm up r0"
        ),
        LONG,
    )?;
    Ok(())
}

fn start_agent(vm: &Vm) -> Result<(), Error> {
    vm.run(
        "mkdir -p /etc/hanfs /export /run/hanfs && cp /hanfs/share/agent.json /etc/hanfs/agent.json && \
         (setsid hanfs-backend agent --config /etc/hanfs/agent.json >>/hanfs/share/agent.log 2>&1 &)",
        SHORT,
    )?;
    Ok(())
}

/// The storage VM that serves (its agent reports the VIP), if any.
fn active(cluster: &Cluster, skip: Option<&str>) -> Option<String> {
    for name in STORAGE {
        if Some(name) == skip || !cluster.vm(name).is_running() {
            continue;
        }
        let status = cluster
            .vm(name)
            .exec("hanfs-backend status 2>&1", SHORT)
            .ok()?;
        if status.stdout.contains("vip=true") && status.stdout.contains("state:       active") {
            return Some(name.to_owned());
        }
    }
    None
}

fn wait_active(
    cluster: &Cluster,
    skip: Option<&str>,
    limit: Duration,
) -> Result<(String, Duration), Error> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(name) = active(cluster, skip) {
            return Ok((name, started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!("no storage VM became active within {limit:?}").into())
}

struct Trial {
    name: String,
    stall_s: f64,
    acked: usize,
    lost: usize,
    io_errors: usize,
    locks_lost: usize,
}

/// Runs the writer on the client for `seconds`, calls `fault` after `fault_after`, and
/// measures what the writer saw.
/// What the client's writer does in one trial.
struct Writer<'a> {
    file: &'a str,
    /// Hold a POSIX (fcntl) lock on the file for the whole run.
    lock: bool,
    seconds: u32,
    /// When the fault is injected after the writer started.
    fault_after: Duration,
}

fn trial(
    t0: Instant,
    client: &Vm,
    name: &str,
    writer: Writer<'_>,
    fault: impl FnOnce() -> Result<(), Error>,
) -> Result<Trial, Error> {
    let Writer {
        file,
        lock,
        seconds,
        fault_after,
    } = writer;
    client.run(
        &format!("dmesg -c >/dev/null; rm -f /root/acks.log /mnt/vol/{file}"),
        SHORT,
    )?;
    client.run(
        &format!(
            "(setsid python3 /hanfs/share/writer.py /mnt/vol/{file} /root/acks.log {seconds} {} >/root/writer.out 2>&1 &)",
            if lock { "lock" } else { "nolock" }
        ),
        SHORT,
    )?;
    std::thread::sleep(fault_after);
    log(t0, &format!("{name}: fault"));
    fault()?;
    let deadline = Instant::now() + Duration::from_secs(seconds as u64 + 120);
    loop {
        let tail = client.exec("tail -1 /root/acks.log", SHORT)?;
        if tail.stdout.trim() == "done" {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{name}: the writer did not finish").into());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let acks = client.run("cat /root/acks.log", SHORT)?;
    let written = client.run(&format!("cat /mnt/vol/{file}"), LONG)?;
    let locks_lost = client
        .run("dmesg | grep -c 'lost .* lock' || true", SHORT)?
        .trim()
        .parse()
        .unwrap_or(0);
    let present: std::collections::HashSet<&str> = written.lines().collect();
    let mut acked = Vec::new();
    let mut io_errors = 0;
    for line in acks.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["ack", n, t] => acked.push((n.to_string(), t.parse::<f64>()?)),
            ["err", ..] => io_errors += 1,
            _ => {}
        }
    }
    let lost = acked
        .iter()
        .filter(|(n, _)| !present.contains(n.as_str()))
        .count();
    let stall_s = acked
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .fold(0.0, f64::max);
    Ok(Trial {
        name: name.to_owned(),
        stall_s,
        acked: acked.len(),
        lost,
        io_errors,
        locks_lost,
    })
}

fn main() -> Result<(), Error> {
    let t0 = Instant::now();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bins = repo.join("target/release");
    if !bins.join("hanfs-backend").exists() {
        return Err("build release binaries first: cargo build --release --bins".into());
    }
    let spec = ClusterSpec::new(vec![
        VmSpec::new("storage-a", Ipv4Addr::new(10, 80, 0, 11)).with_data_disk(512),
        VmSpec::new("storage-b", Ipv4Addr::new(10, 80, 0, 12)).with_data_disk(512),
        VmSpec::new("client", Ipv4Addr::new(10, 80, 0, 20)),
    ])
    .with_host_dir(&bins);
    let cluster = Cluster::start(spec)?;
    log(
        t0,
        &format!("3 VMs up in {:.1}s", cluster.boot_time().as_secs_f64()),
    );
    let workdir = cluster.workdir().join("kube");
    std::fs::create_dir_all(&workdir)?;
    let api = KubeApiServer::start(cluster.netns(), cluster.bridge_ip(), &workdir)?;
    log(
        t0,
        &format!(
            "kube-apiserver ready in {:.1}s",
            api.startup_time().as_secs_f64()
        ),
    );

    let resource = std::fs::read_to_string(repo.join("e2e/storage/drbd-r0.res"))?;
    for (i, name) in STORAGE.iter().enumerate() {
        let share = cluster.vm(name).share_dir();
        std::fs::write(share.join("r0.res"), &resource)?;
        std::fs::copy(api.kubeconfig(), share.join("kubeconfig"))?;
        std::fs::write(
            share.join("agent.json"),
            storage_config(name, STORAGE[1 - i]),
        )?;
    }
    std::fs::write(cluster.vm("client").share_dir().join("writer.py"), WRITER)?;
    for name in STORAGE {
        drbd_up(cluster.vm(name), true)?;
    }
    // Fresh blank disks: declare them in sync instead of a full initial resync, then
    // make the filesystem once (provisioning, before any agent runs).
    cluster.vm("storage-a").run(
        "sleep 3; drbdadm -- --clear-bitmap new-current-uuid r0 && drbdadm primary r0 && \
         mkfs.xfs -f -q /dev/drbd0 && drbdadm secondary r0",
        LONG,
    )?;
    log(t0, "DRBD r0 connected, UpToDate/UpToDate, XFS made");
    for name in STORAGE {
        start_agent(cluster.vm(name))?;
    }
    let (first, took) = wait_active(&cluster, None, LONG)?;
    log(
        t0,
        &format!(
            "{first} active {:.1}s after the agents started",
            took.as_secs_f64()
        ),
    );

    // A volume directory as the volume API makes them (mode 0777: the export squashes root).
    cluster.vm(&first).run(
        "mkdir -p -m 0777 /export/volumes/e2e && chmod 0777 /export/volumes/e2e",
        SHORT,
    )?;
    let client = cluster.vm("client");
    client.run(
        &format!(
            "mkdir -p /mnt/vol && mount -t nfs4 -o vers=4.2,proto=tcp,hard,timeo=50,retrans=2,noresvport {VIP}:/export/volumes/e2e /mnt/vol"
        ),
        LONG,
    )?;
    log(t0, "client mounted the VIP over NFS 4.2");

    let result = scenarios(t0, &cluster, &first);
    if result.is_err() {
        // What the agents and the client saw, before the cluster goes away.
        for name in STORAGE {
            let log = std::fs::read_to_string(cluster.vm(name).share_dir().join("agent.log"))
                .unwrap_or_default();
            let interesting: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("DEBUG"))
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .take(40)
                .collect();
            eprintln!("---- {name} agent log (newest first) ----");
            for line in interesting {
                eprintln!("{line}");
            }
        }
        match cluster
            .vm("client")
            .exec("dmesg | tail -20; tail -5 /root/acks.log", SHORT)
        {
            Ok(out) => eprintln!("---- client ----\n{}{}", out.stdout, out.stderr),
            Err(e) => eprintln!("---- client: {e}"),
        }
        if let Ok(hold) = std::env::var("HANFS_E2E_HOLD_SECS") {
            // Keep the cluster for a look (bounded): vm.sh exec <workdir>/<vm> works meanwhile.
            eprintln!(
                "holding the cluster in {} for {hold} s",
                cluster.workdir().display()
            );
            std::thread::sleep(Duration::from_secs(hold.parse().unwrap_or(0).min(900)));
        }
    }
    let trials = result?;
    println!("| trial | stall (s) | acked | lost | I/O errors | locks lost |");
    println!("|---|---|---|---|---|---|");
    for t in &trials {
        println!(
            "| {} | {:.2} | {} | {} | {} | {} |",
            t.name, t.stall_s, t.acked, t.lost, t.io_errors, t.locks_lost
        );
    }
    let failed = trials
        .iter()
        .filter(|t| t.lost > 0 || t.io_errors > 0 || t.locks_lost > 0)
        .count();
    for name in STORAGE {
        let tail = std::fs::read_to_string(cluster.vm(name).share_dir().join("agent.log"))
            .unwrap_or_default();
        let takeovers: Vec<&str> = tail.lines().filter(|l| l.contains("takeover_ms")).collect();
        eprintln!("{name}: {takeovers:?}");
    }
    drop(api);
    cluster.destroy()?;
    println!(
        "failover: {} passed, {failed} failed",
        trials.len() - failed
    );
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn scenarios(t0: Instant, cluster: &Cluster, first: &str) -> Result<Vec<Trial>, Error> {
    let client = cluster.vm("client");
    let mut trials: Vec<Trial> = Vec::new();
    let report = |t: &Trial| {
        eprintln!(
            "[{:>7.1}s] {}: stall {:.2} s, {} acked, {} lost, {} I/O errors, {} locks lost",
            t0.elapsed().as_secs_f64(),
            t.name,
            t.stall_s,
            t.acked,
            t.lost,
            t.io_errors,
            t.locks_lost
        )
    };
    // 1. Hard kill of the active VM, with a POSIX lock held.
    let killed = first.to_owned();
    trials.push(trial(
        t0,
        client,
        "hard kill (lock held)",
        Writer {
            file: "kill.log",
            lock: true,
            seconds: 45,
            fault_after: Duration::from_secs(10),
        },
        || {
            cluster.vm(&killed).kill()?;
            Ok(())
        },
    )?);
    report(&trials[0]);
    let (second, _) = wait_active(cluster, Some(&killed), LONG)?;
    log(t0, &format!("{second} is active after the kill"));

    // The killed node comes back as standby and resyncs.
    cluster.vm(&killed).restart()?;
    drbd_up(cluster.vm(&killed), false)?;
    start_agent(cluster.vm(&killed))?;
    let resynced = Instant::now();
    loop {
        let state = cluster.vm(&killed).exec("cat /proc/drbd", SHORT)?;
        if state.stdout.contains("ds:UpToDate/UpToDate") {
            break;
        }
        if resynced.elapsed() > Duration::from_secs(300) {
            return Err(format!("{killed} did not resync: {}", state.stdout).into());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    log(
        t0,
        &format!(
            "{killed} back as standby, resynced in {:.1}s",
            resynced.elapsed().as_secs_f64()
        ),
    );

    // 2. Planned switchover back.
    trials.push(trial(
        t0,
        client,
        "planned switchover",
        Writer {
            file: "switch.log",
            lock: false,
            seconds: 30,
            fault_after: Duration::from_secs(8),
        },
        || {
            cluster.vm(&second).run("hanfs-backend switchover", SHORT)?;
            Ok(())
        },
    )?);
    report(&trials[1]);
    let (third, _) = wait_active(cluster, Some(&second), LONG)?;
    log(t0, &format!("{third} is active after the switchover"));

    Ok(trials)
}

//! The baseline: the hand-built HA-NFS setup people run today (`../shared/reference`),
//! on the same VMs, disks and DRBD protocol as hanfs, hard-killed the same way.
//!
//! What makes it "stock" (`e2e/stock/stock-node.sh`, `e2e/stock/stock-r0.res`): no
//! fencing; nfsd's client-tracking state on each node's own root disk; each node's own
//! hostname as the server identity; a keepalived-like takeover after 3 missed 1 s
//! adverts with `drbdadm primary --force`; the client mounts with default options
//! (`mount -t nfs4 VIP:/path`: hard, timeo=600).

use crate::cluster::{LONG, SHORT, VIP, drbd_up, provision_filesystem, repo_and_bins, vm_spec};
use crate::writer::{self, Trial, Writer, run_trial};
use crate::{Clock, Error};
use std::time::{Duration, Instant};
use testkit::vm::Cluster;

const MOUNT: &str = "/mnt/stock";

/// Boots a fresh cluster with the stock setup, runs `trials` hard kills of the master
/// (restarting the killed node as the new backup in between) and tears it down.
pub fn hard_kill(clock: Clock, locks: &[bool]) -> Result<Vec<Trial>, Error> {
    let (repo, bins) = repo_and_bins()?;
    let cluster = Cluster::start(vm_spec(&bins, None))?;
    clock.log(&format!(
        "stock: 3 VMs up in {:.1}s",
        cluster.boot_time().as_secs_f64()
    ));
    let result = run(&clock, &repo, &cluster, locks);
    if result.is_err() {
        for name in crate::cluster::STORAGE {
            let log = std::fs::read_to_string(cluster.vm(name).share_dir().join("stock.log"))
                .unwrap_or_else(|e| format!("(unreadable: {e})"));
            eprintln!("---- {name} stock takeover log ----\n{log}");
        }
        crate::cluster::hold_if_asked(cluster.workdir());
    }
    cluster.destroy()?;
    result
}

fn run(
    clock: &Clock,
    repo: &std::path::Path,
    cluster: &Cluster,
    locks: &[bool],
) -> Result<Vec<Trial>, Error> {
    let storage = crate::cluster::STORAGE;
    let ips = crate::cluster::STORAGE_IPS;
    for name in storage {
        let share = cluster.vm(name).share_dir();
        std::fs::copy(
            repo.join("e2e/stock/stock-r0.res"),
            share.join("stock-r0.res"),
        )?;
        std::fs::copy(
            repo.join("e2e/stock/stock-node.sh"),
            share.join("stock-node.sh"),
        )?;
    }
    writer::install(cluster.vm("client"))?;
    for name in storage {
        drbd_up(cluster.vm(name), "stock-r0.res", true)?;
    }
    provision_filesystem(cluster.vm(storage[0]))?;
    cluster.vm(storage[0]).run(
        &format!(
            "bash /hanfs/share/stock-node.sh master {VIP} >>/hanfs/share/stock.log 2>&1 && \
             mkdir -p -m 0777 /export/volumes/e2e && chmod 0777 /export/volumes/e2e"
        ),
        LONG,
    )?;
    start_backup(cluster, storage[1], ips[0])?;
    let client = cluster.vm("client");
    client.run(
        &format!("mkdir -p {MOUNT} && mount -t nfs4 {VIP}:/export/volumes/e2e {MOUNT}"),
        LONG,
    )?;
    let options = client.run(&format!("grep ' {MOUNT} ' /proc/mounts"), SHORT)?;
    clock.log(&format!(
        "stock: client mounted with defaults: {}",
        options.trim()
    ));

    // A freshly started nfsd refuses new opens and locks for its grace period (stock:
    // 90 s); a writer started inside it would wait for its lock instead of writing.
    let grace_s: u64 = cluster
        .vm(storage[0])
        .run("cat /proc/fs/nfsd/nfsv4gracetime", SHORT)?
        .trim()
        .parse()?;
    let mut serving_since = Instant::now();
    let mut results = Vec::new();
    let mut master = 0;
    for (i, &lock) in locks.iter().enumerate() {
        let backup = 1 - master;
        let out_of_grace = Duration::from_secs(grace_s + 5);
        if let Some(left) = out_of_grace.checked_sub(serving_since.elapsed()) {
            clock.log(&format!(
                "stock: waiting {:.0} s for the server's {grace_s} s grace period to end",
                left.as_secs_f64()
            ));
            std::thread::sleep(left);
        }
        let mut trial = run_trial(
            clock,
            client,
            "stock",
            "hard-kill",
            MOUNT,
            Writer {
                lock,
                seconds: 120,
                fault_after: Duration::from_secs(10),
            },
            || {
                cluster.vm(storage[master]).kill()?;
                Ok(())
            },
        )?;
        wait_serving(cluster, storage[backup], LONG)?;
        serving_since = Instant::now();
        trial
            .notes
            .push(format!("{} → {}", storage[master], storage[backup]));
        clock.log(&format!("stock trial {}: {:?}", i + 1, trial));
        results.push(trial);
        if i + 1 < locks.len() {
            // The killed node returns as the new backup and resyncs from the new master.
            let vm = cluster.vm(storage[master]);
            vm.restart()?;
            drbd_up(vm, "stock-r0.res", false)?;
            start_backup(cluster, storage[master], ips[backup])?;
            master = backup;
        }
    }
    Ok(results)
}

fn start_backup(cluster: &Cluster, name: &str, master_ip: &str) -> Result<(), Error> {
    cluster.vm(name).run(
        &format!(
            "setsid -f bash /hanfs/share/stock-node.sh backup {VIP} {master_ip} >>/hanfs/share/stock.log 2>&1"
        ),
        SHORT,
    )?;
    Ok(())
}

/// Waits until `name` holds the VIP (its takeover script ran).
fn wait_serving(cluster: &Cluster, name: &str, limit: Duration) -> Result<(), Error> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let out = cluster
            .vm(name)
            .exec(&format!("ip -4 addr show dev eth0 | grep -c {VIP}"), SHORT)?;
        if out.stdout.trim() == "1" {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!("stock: {name} did not take over within {limit:?}").into())
}

//! The bench in the VM cluster (issue 12): hanfs and csi-driver-nfs side by side against
//! the same HA export, driven by one `hanfs-bench` in the client VM.
//!
//! Both controllers run in the client VM, beside the bench, as a chart runs them on a
//! node: hanfs-controller (mTLS to the backend at the VIP) and, when its binary is given,
//! the peer's `nfsplugin` (its CreateVolume mounts the export to make a directory). The
//! node plugin is the cluster's (also in the client VM). For the data path three
//! directories are compared: a hanfs volume published through CSI, a plain
//! `mount -t nfs4` of [`PEER_SHARE`] with default options, and a volume the peer published.
//! The plain mount and the peer need an export of their own to mount: hanfs exports only
//! each volume, to the nodes it is published to. The bench exports one directory of the
//! same filesystem, [`PEER_SHARE`], to the client address for the run, in its own
//! exports file on the active server. It is `insecure` as hanfs's own entries are: the
//! client shares one connection per server among its NFS mounts, and hanfs mounts with
//! `noresvport`, so a `secure` export sees an unprivileged source port and the mount
//! fails with EPERM (seen here, with the plain mount and hanfs's own volume alike).
//!
//! Nothing of the peer is part of hanfs: its binary is taken by path
//! (`--peer-nfsplugin`, see bench/README.md) and copied into the VM for the run.

use crate::Clock;
use crate::Error;
use crate::cluster::{
    CLIENT, CLIENT_IP, CLUSTER_ID, HanfsCluster, SHORT, TLS_CONTROLLER_DIR, VIP, copy_dir_files,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the bench's sockets and mounts live in the client VM.
const RUN_DIR: &str = "/run/hanfs-bench";
const PLAIN_MOUNT: &str = "/mnt/bench-plain";
/// The same directory mounted with hanfs-node's own options (is it the options?).
const PLAIN_HANFS_OPTIONS_MOUNT: &str = "/mnt/bench-plain-hanfs-options";
/// The hanfs volume's export mounted by `mount -t nfs4` (is it the volume: quota, export?).
const VOLUME_PLAIN_MOUNT: &str = "/mnt/bench-volume-plain";
const PEER_TARGET: &str = "/mnt/bench-peer";
/// The directory the plain mount and the peer use, beside `/export/volumes`.
pub const PEER_SHARE: &str = "/export/bench-peer";
/// The bench's own exports file on the active (the agent's `exportfs -r` keeps it).
const EXPORTS_FILE: &str = "/etc/exports.d/hanfs-bench.exports";
/// The whole bench run in the VM may take this long (the peer mounts NFS per create).
const BENCH_LIMIT: Duration = Duration::from_secs(60 * 60);

pub struct Options {
    pub peer_nfsplugin: Option<PathBuf>,
    /// Further hanfs-bench options (e.g. `--ops 64 --volumes 500`).
    pub bench_args: Vec<String>,
    /// Where the bench's tables and pictures are copied on the host.
    pub out: PathBuf,
    /// Only the data path (no provisioning and footprint rows).
    pub data_path_only: bool,
}

/// Boots the cluster, runs the bench, copies its output to `opts.out`, tears down.
/// Returns what hanfs-bench printed (the tables).
pub fn run(clock: Clock, opts: &Options) -> Result<String, Error> {
    if let Some(path) = &opts.peer_nfsplugin
        && !path.is_file()
    {
        return Err(format!("--peer-nfsplugin {}: no such file", path.display()).into());
    }
    let hc = HanfsCluster::start(clock)?;
    let result = run_on(&hc, opts);
    if result.is_err() {
        hc.dump_logs();
        for log in ["bench.log", "bench-controller.log", "peer.log"] {
            let path = hc.client().share_dir().join(log);
            if let Ok(text) = fs::read_to_string(&path) {
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- {log} (last lines)");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
    hc.destroy()?;
    result
}

fn run_on(hc: &HanfsCluster, opts: &Options) -> Result<String, Error> {
    let client = hc.client();
    let share = client.share_dir();
    export_peer_share(hc)?;
    start_controller(hc, &share)?;
    let peer = match &opts.peer_nfsplugin {
        Some(path) => {
            start_peer(hc, &share, path)?;
            true
        }
        None => false,
    };
    hc.clock
        .log("bench: hanfs-controller and the peer up in the client VM");

    // The data-path directories: hanfs's through CSI, the plain mount, the peer's. The
    // export is 448 MiB and hanfs reserves what it promises: 96 MiB here leaves room for
    // a few hundred 1 MiB volumes (`--volumes`) beside a 64 MiB data file.
    let (_, hanfs_dir) = hc.published_volume("bench-data", "96Mi")?;
    client.run(
        &format!(
            "mkdir -p {PLAIN_MOUNT} && mount -t nfs4 {VIP}:{PEER_SHARE} {PLAIN_MOUNT} && \
             mkdir -p {PLAIN_MOUNT}/bench-plain"
        ),
        SHORT,
    )?;
    // Two more, to tell what a difference comes from: the plain directory mounted with
    // hanfs-node's options, and hanfs's volume mounted plainly (its export admits the
    // client since the publish above).
    let hanfs_options = node::config::DEFAULT_NFS_OPTIONS.join(",");
    let volume_source = client.run(
        "awk '$2 ~ \"/bench-data/globalmount$\" {print $1}' /proc/mounts",
        SHORT,
    )?;
    let volume_source = volume_source
        .lines()
        .next()
        .filter(|s| s.starts_with(&format!("{VIP}:/")))
        .ok_or_else(|| format!("no NFS mount of bench-data in the client: {volume_source:?}"))?
        .to_owned();
    client.run(
        &format!(
            "mkdir -p {PLAIN_HANFS_OPTIONS_MOUNT} {VOLUME_PLAIN_MOUNT} && \
             mount -t nfs4 -o {hanfs_options} {VIP}:{PEER_SHARE} {PLAIN_HANFS_OPTIONS_MOUNT} && \
             mkdir -p {PLAIN_HANFS_OPTIONS_MOUNT}/bench-plain-hanfs-options && \
             mount -t nfs4 {volume_source} {VOLUME_PLAIN_MOUNT}"
        ),
        SHORT,
    )?;
    let mut data_paths = vec![
        format!("hanfs={hanfs_dir}"),
        format!("plain-nfs4={PLAIN_MOUNT}/bench-plain"),
        format!("plain-nfs4, hanfs options={PLAIN_HANFS_OPTIONS_MOUNT}/bench-plain-hanfs-options"),
        format!("hanfs volume, plain mount={VOLUME_PLAIN_MOUNT}"),
    ];
    if peer {
        publish_peer_volume(hc)?;
        data_paths.push(format!("csi-driver-nfs={PEER_TARGET}"));
    }
    let mounts = client.run("grep ' nfs4 ' /proc/mounts", SHORT)?;
    hc.clock
        .log(&format!("bench: data-path mounts in the client:\n{mounts}"));

    let mut argv = vec![
        "hanfs-bench".to_owned(),
        "--skip-local".into(),
        "--bin-dir".into(),
        "/hanfs/bin".into(),
        "--out".into(),
        "/hanfs/share/bench-out".into(),
    ];
    if !opts.data_path_only {
        argv.extend([
            "--vm".into(),
            "--hanfs-controller".into(),
            format!("unix://{RUN_DIR}/controller.sock"),
        ]);
    }
    if peer && !opts.data_path_only {
        argv.extend([
            "--peer-controller".into(),
            format!("unix://{RUN_DIR}/peer.sock"),
            "--peer-param".into(),
            format!("server={VIP}"),
            "--peer-param".into(),
            format!("share={PEER_SHARE}"),
            "--peer-nfsplugin".into(),
            "/usr/local/bin/nfsplugin".into(),
        ]);
    }
    for dir in &data_paths {
        argv.extend(["--data-path".into(), dir.clone()]);
    }
    argv.extend(opts.bench_args.iter().cloned());
    for word in &argv {
        if word.contains('\'') {
            return Err(format!("bench argument {word:?}: no quotes, please").into());
        }
    }
    let line = argv
        .iter()
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(" ");
    hc.clock.log(&format!(
        "bench: running in the client VM: {}",
        argv.join(" ")
    ));
    let started = Instant::now();
    let out = client.run(&format!("{line} 2>>/hanfs/share/bench.log"), BENCH_LIMIT)?;
    hc.clock.log(&format!(
        "bench: done in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    copy_dir_files(&share.join("bench-out"), &opts.out)?;
    // Each round's figures are in the bench's log (stderr).
    fs::copy(share.join("bench.log"), opts.out.join("bench.log"))?;
    Ok(out)
}

/// [`PEER_SHARE`] to the client address only, for the plain mount and the peer.
fn export_peer_share(hc: &HanfsCluster) -> Result<(), Error> {
    let active = hc.active(None).ok_or("no active storage server")?;
    hc.vm(&active).run(
        &format!(
            "mkdir -p /etc/exports.d {PEER_SHARE} && \
             echo '{PEER_SHARE} {CLIENT_IP}(rw,no_root_squash,no_subtree_check,sync,insecure)' > {EXPORTS_FILE} && \
             exportfs -r && exportfs -v | grep -qE '^{PEER_SHARE}([[:space:]]|$)'"
        ),
        SHORT,
    )?;
    Ok(())
}

/// hanfs-controller in the client VM, with the controller's TLS material and the token.
fn start_controller(hc: &HanfsCluster, share: &Path) -> Result<(), Error> {
    let tls = share.join("bench-tls");
    fs::create_dir_all(&tls)?;
    for file in ["ca.crt", "tls.crt", "tls.key"] {
        fs::copy(
            hc.workdir().join(TLS_CONTROLLER_DIR).join(file),
            tls.join(file),
        )?;
    }
    fs::copy(
        hc.workdir().join("backend-token"),
        share.join("bench-token"),
    )?;
    hc.client().run(
        &format!(
            "mkdir -p {RUN_DIR} && setsid -f hanfs-controller \
               --endpoint unix://{RUN_DIR}/controller.sock --cluster-id {CLUSTER_ID} \
               --backend tcp://{VIP}:9820 --backend-token-file /hanfs/share/bench-token \
               --tls-ca /hanfs/share/bench-tls/ca.crt --tls-cert /hanfs/share/bench-tls/tls.crt \
               --tls-key /hanfs/share/bench-tls/tls.key \
               --nfs-server {VIP} --nfs-share /export \
               >>/hanfs/share/bench-controller.log 2>&1"
        ),
        SHORT,
    )?;
    wait_socket(
        hc,
        &format!("{RUN_DIR}/controller.sock"),
        "hanfs-controller",
    )
}

/// The peer's nfsplugin in the client VM; its defaults point at /tmp and
/// unix://tmp/csi.sock, so both are given; it opens no TCP port.
fn start_peer(hc: &HanfsCluster, share: &Path, path: &Path) -> Result<(), Error> {
    fs::copy(path, share.join("nfsplugin"))?;
    hc.client().run(
        &format!(
            "install -m 0755 /hanfs/share/nfsplugin /usr/local/bin/nfsplugin && \
             mkdir -p {RUN_DIR}/peer-work && setsid -f /usr/local/bin/nfsplugin \
               --endpoint=unix://{RUN_DIR}/peer.sock --nodeid={CLIENT} \
               --working-mount-dir={RUN_DIR}/peer-work >>/hanfs/share/peer.log 2>&1"
        ),
        SHORT,
    )?;
    wait_socket(hc, &format!("{RUN_DIR}/peer.sock"), "nfsplugin")
}

/// A volume the peer created and mounted, as kubelet would have it do (the context is
/// what its CreateVolume returns: server, share, subdir = the name).
fn publish_peer_volume(hc: &HanfsCluster) -> Result<(), Error> {
    let peer = format!("--controller unix://{RUN_DIR}/peer.sock --node unix://{RUN_DIR}/peer.sock");
    let created = hc.client().run(
        &format!(
            "hanfsctl {peer} volume create bench-peer-data --size 256Mi \
               --param server={VIP} --param share={PEER_SHARE}"
        ),
        SHORT,
    )?;
    let id = crate::cluster::first_word(&created)?;
    hc.client().run(
        &format!(
            "hanfsctl {peer} publish '{id}' {PEER_TARGET} --context server={VIP} \
               --context share={PEER_SHARE} --context subdir=bench-peer-data"
        ),
        SHORT,
    )?;
    Ok(())
}

fn wait_socket(hc: &HanfsCluster, socket: &str, what: &str) -> Result<(), Error> {
    let started = Instant::now();
    while started.elapsed() < SHORT {
        if hc
            .client()
            .exec(&format!("test -S {socket}"), SHORT)?
            .success()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(format!("{what} made no socket {socket} within {SHORT:?}").into())
}

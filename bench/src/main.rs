//! `hanfs-bench`: provisioning and footprint, hanfs vs csi-driver-nfs, one table and
//! the pictures. See bench/README.md.
//!
//! On a host (default) it starts hanfs local mode itself and, given
//! `--peer-nfsplugin PATH`, the peer's nfsplugin (Identity and footprint only: its
//! CreateVolume mounts NFS). With `--vm` it starts nothing of hanfs's VM setup: it drives
//! the controllers named by `--hanfs-controller` / `--peer-controller` (e.g. inside the
//! client VM, where the peer can mount the HA export) and measures the footprint of
//! whichever of the processes run on the machine it runs on.

use bench::load::Driver;
use bench::measure::{self, Idle, Plan, Provisioning};
use bench::report::{Cell, Table};
use bench::targets::{LocalMode, Peer};
use bench::{datapath, plot, procfs, records, stats};
use clap::Parser;
use common::endpoint::Endpoint;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
#[command(
    name = "hanfs-bench",
    about = "hanfs vs csi-driver-nfs: provisioning, footprint, pictures"
)]
struct Args {
    /// The peer: csi-driver-nfs's nfsplugin binary (v4.13.4). Without it the bench
    /// measures hanfs alone and says the peer is missing.
    #[arg(long)]
    peer_nfsplugin: Option<PathBuf>,
    /// Where hanfsctl and the hanfs binaries are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the pictures and table.md go.
    #[arg(long, default_value = "bench/out")]
    out: PathBuf,
    /// Requests in flight, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 32])]
    concurrency: Vec<usize>,
    /// CreateVolume calls per concurrency level (then as many DeleteVolume).
    #[arg(long, default_value_t = 256)]
    ops: usize,
    /// Volumes present for the "with N present" figures and ListVolumes.
    #[arg(long, default_value_t = 2000)]
    volumes: usize,
    /// Calls one at a time beside the N present volumes.
    #[arg(long, default_value_t = 100)]
    populated_ops: usize,
    /// ListVolumes max_entries.
    #[arg(long, default_value_t = 100)]
    page: i32,
    /// Each volume's requested size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    volume_bytes: i64,
    /// Idle footprint window in seconds.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
    /// Local mode's export on a plain directory instead of a loop-mounted XFS image.
    #[arg(long)]
    plain_dir: bool,
    /// The e2e matrix's records (e2e run with HANFS_E2E_RECORDS_DIR): draws the
    /// failover timeline from them.
    #[arg(long)]
    records: Option<PathBuf>,
    /// images/build.py's output folder (default: the newest complete
    /// ${HANFS_CACHE:-~/.cache/hanfs}/images-*).
    #[arg(long)]
    images_dir: Option<PathBuf>,
    /// Drive given endpoints instead of the peer's host-only part: needs
    /// --hanfs-controller and/or --peer-controller.
    #[arg(long)]
    vm: bool,
    /// (--vm) hanfs's CSI controller endpoint, unix:///path or tcp://host:port.
    #[arg(long, requires = "vm")]
    hanfs_controller: Option<String>,
    /// (--vm) The peer's CSI controller endpoint.
    #[arg(long, requires = "vm")]
    peer_controller: Option<String>,
    /// (--vm) StorageClass parameter for the peer's CreateVolume, key=value (csi-driver-nfs
    /// needs server= and share=).
    #[arg(long = "peer-param", value_parser = key_value, requires = "vm")]
    peer_params: Vec<(String, String)>,
    /// (--vm) StorageClass parameter for hanfs's CreateVolume, key=value.
    #[arg(long = "hanfs-param", value_parser = key_value, requires = "vm")]
    hanfs_params: Vec<(String, String)>,
    /// Skip hanfs local mode (e.g. in --vm runs where only the VM figures matter).
    #[arg(long)]
    skip_local: bool,
    /// A directory the data-path workload runs in, NAME=DIR (repeatable): e.g.
    /// hanfs=<a volume hanfs published>, plain=<a plain `mount -t nfs4` of the same
    /// export>, csi-driver-nfs=<a volume the peer published>. The first is compared
    /// with each of the others. Needs root (it drops the page cache before reads).
    #[arg(long = "data-path", value_parser = key_value)]
    data_paths: Vec<(String, String)>,
    /// Data path: the sequential file's size in MiB (random I/O lands inside it).
    #[arg(long, default_value_t = 64)]
    data_mib: u64,
    /// Data path: random 4 KiB writes, then as many random reads.
    #[arg(long, default_value_t = 1024)]
    data_random_ops: usize,
    /// Data path: 4 KiB write + fsync pairs timed one by one.
    #[arg(long, default_value_t = 200)]
    data_fsyncs: usize,
    /// Data path: rounds over all targets (rotated order); each figure is the median.
    #[arg(long, default_value_t = 3)]
    data_rounds: usize,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

/// A column of the table: one driver, its processes on this machine, its binaries.
struct Column {
    name: String,
    /// The controller to drive, or why provisioning is not measured.
    driver: Result<Driver, String>,
    /// role ("controller", "node", "backend") → pid on this machine, or why not.
    procs: BTreeMap<&'static str, Result<i32, String>>,
    /// role → binary whose size is reported.
    bins: BTreeMap<&'static str, Option<PathBuf>>,
    /// role → image name in images.json.
    images: BTreeMap<&'static str, String>,
}

const ROLES: [&str; 3] = ["controller", "node", "backend"];

fn hanfs_binary(role: &str) -> &'static str {
    match role {
        "controller" => "hanfs-controller",
        "node" => "hanfs-node",
        _ => "hanfs-backend",
    }
}

fn bin_dir(args: &Args) -> Result<PathBuf, Error> {
    match &args.bin_dir {
        Some(dir) => Ok(dir.clone()),
        None => Ok(std::env::current_exe()?
            .parent()
            .ok_or("hanfs-bench has no parent directory")?
            .to_owned()),
    }
}

/// The newest images/build.py output with a `.complete` marker.
fn images_dir(args: &Args) -> Option<PathBuf> {
    if let Some(dir) = &args.images_dir {
        return Some(dir.clone());
    }
    let cache = std::env::var_os("HANFS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/hanfs")))?;
    std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("images-") && !n.ends_with(".lock"))
                && p.join(".complete").exists()
                && p.join("images.json").exists()
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// name → (compressed, unpacked) bytes from images.json.
fn image_sizes(dir: &Path) -> Result<BTreeMap<String, (u64, u64)>, Error> {
    let path = dir.join("images.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for image in doc["images"]
        .as_array()
        .ok_or_else(|| format!("{}: no images list", path.display()))?
    {
        let field = |k: &str| {
            image[k]
                .as_u64()
                .ok_or_else(|| format!("{}: image without {k}", path.display()))
        };
        let name = image["name"]
            .as_str()
            .ok_or_else(|| format!("{}: image without name", path.display()))?;
        out.insert(
            name.to_owned(),
            (field("compressed_bytes")?, field("unpacked_bytes")?),
        );
    }
    Ok(out)
}

fn mib(kib: u64) -> Cell {
    Cell::Value(kib as f64 / 1024.0)
}

fn missing(why: &str) -> Cell {
    Cell::Missing(why.to_owned())
}

/// Only processes on this machine; in --vm runs a missing one is "not here", not an error.
fn find_one(name: &str) -> Result<i32, String> {
    match procfs::find(name, None).as_slice() {
        [pid] => Ok(*pid),
        [] => Err("not on this machine".into()),
        many => Err(format!("{} {name} processes", many.len())),
    }
}

fn build_table(
    columns: &[Column],
    idle: &BTreeMap<String, BTreeMap<String, Idle>>,
    provisioning: &BTreeMap<String, Result<Provisioning, String>>,
    plan: &Plan,
    images: &Result<BTreeMap<String, (u64, u64)>, String>,
) -> Table {
    let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    // The ratio compares hanfs (first column) with the peer (last) when there is one.
    let ratios = (columns.len() > 1 && columns.last().is_some_and(|c| c.name == "csi-driver-nfs"))
        .then(|| (0, columns.len() - 1))
        .into_iter()
        .collect();
    let mut table = Table::new(names, ratios);
    let per_column = |f: &dyn Fn(&Column) -> Cell| columns.iter().map(f).collect::<Vec<_>>();
    let prov = |c: &Column| {
        provisioning
            .get(&c.name)
            .cloned()
            .unwrap_or(Err("not run".into()))
    };

    for (i, &conc) in plan.concurrency.iter().enumerate() {
        for op in ["CreateVolume", "DeleteVolume"] {
            let pick = |p: &Provisioning| {
                let level = &p.levels[i];
                if op == "CreateVolume" {
                    level.create.clone()
                } else {
                    level.delete.clone()
                }
            };
            table.row(
                format!("{op} ×{conc} in flight: volumes/s"),
                per_column(&|c| match prov(c) {
                    Ok(p) => Cell::Value(pick(&p).per_second()),
                    Err(why) => missing(&why),
                }),
            );
            table.row(
                format!("{op} ×{conc} in flight: p50 ms"),
                per_column(&|c| match prov(c) {
                    Ok(p) => Cell::Value(stats::ms(pick(&p).p50)),
                    Err(why) => missing(&why),
                }),
            );
            table.row(
                format!("{op} ×{conc} in flight: p99 ms"),
                per_column(&|c| match prov(c) {
                    Ok(p) => Cell::Value(stats::ms(pick(&p).p99)),
                    Err(why) => missing(&why),
                }),
            );
        }
    }
    let n = plan.populate;
    for (op, pick) in [
        (
            "CreateVolume",
            (|p: &Provisioning| p.create_populated.clone()) as fn(&Provisioning) -> stats::Summary,
        ),
        ("DeleteVolume", |p: &Provisioning| {
            p.delete_populated.clone()
        }),
    ] {
        table.row(
            format!("{op} beside {n} volumes, one at a time: p50 ms"),
            per_column(&|c| match prov(c) {
                Ok(p) => Cell::Value(stats::ms(pick(&p).p50)),
                Err(why) => missing(&why),
            }),
        );
        table.row(
            format!("{op} beside {n} volumes, one at a time: p99 ms"),
            per_column(&|c| match prov(c) {
                Ok(p) => Cell::Value(stats::ms(pick(&p).p99)),
                Err(why) => missing(&why),
            }),
        );
    }
    for (label, f) in [
        ("ListVolumes through all, pages of {page}: total ms", 0),
        ("ListVolumes per page: p50 ms", 1),
        ("ListVolumes per page: p99 ms", 2),
        ("ListVolumes: volumes listed", 3),
    ] {
        table.row(
            label.replace("{page}", &plan.page.to_string()),
            per_column(&|c| match prov(c) {
                Ok(p) => match &p.list {
                    Ok((count, pages)) => Cell::Value(match f {
                        0 => stats::ms(pages.wall),
                        1 => stats::ms(pages.p50),
                        2 => stats::ms(pages.p99),
                        _ => *count as f64,
                    }),
                    Err(why) => missing(why),
                },
                Err(why) => missing(&why),
            }),
        );
    }

    let top = plan.concurrency.iter().max().copied().unwrap_or(1);
    for role in ROLES {
        let pid_of = |c: &Column| c.procs.get(role).cloned().unwrap_or(Err("—".into()));
        table.row(
            format!("{role}: idle RSS MiB"),
            per_column(&|c| match pid_of(c) {
                Ok(_) => idle
                    .get(&c.name)
                    .and_then(|m| m.get(role))
                    .map(|i| mib(i.rss_kib))
                    .unwrap_or_else(|| missing("not sampled")),
                Err(why) => missing(&why),
            }),
        );
        table.row(
            format!("{role}: idle CPU % of a core"),
            per_column(&|c| match pid_of(c) {
                Ok(_) => idle
                    .get(&c.name)
                    .and_then(|m| m.get(role))
                    .map(|i| Cell::Value(i.cpu_percent))
                    .unwrap_or_else(|| missing("not sampled")),
                Err(why) => missing(&why),
            }),
        );
        let loaded =
            |c: &Column, f: &dyn Fn(&measure::UnderLoad) -> Cell| match (pid_of(c), prov(c)) {
                (Err(why), _) => missing(&why),
                (_, Err(why)) => missing(&why),
                (Ok(_), Ok(p)) => p
                    .under_load
                    .get(role)
                    .map(f)
                    .unwrap_or_else(|| missing("not sampled")),
            };
        table.row(
            format!("{role}: peak RSS MiB, ×{top} in flight"),
            per_column(&|c| loaded(c, &|u| mib(u.peak_rss_kib))),
        );
        table.row(
            format!("{role}: CPU ms per 1000 calls, ×{top} in flight"),
            per_column(&|c| {
                loaded(c, &|u| {
                    Cell::Value(u.cpu.as_secs_f64() * 1000.0 * 1000.0 / u.calls.max(1) as f64)
                })
            }),
        );
        table.row(
            format!("{role}: binary MiB"),
            per_column(&|c| match c.bins.get(role) {
                Some(Some(path)) => match std::fs::metadata(path) {
                    Ok(m) => Cell::Value(m.len() as f64 / (1 << 20) as f64),
                    Err(e) => Cell::Missing(format!("{}: {e}", path.display())),
                },
                _ => missing("—"),
            }),
        );
        table.row(
            format!("{role}: image MiB (compressed / unpacked)"),
            per_column(&|c| match (c.images.get(role), images) {
                (None, _) => missing("no image here"),
                (Some(_), Err(why)) => missing(why),
                (Some(name), Ok(sizes)) => match sizes.get(name) {
                    Some((packed, unpacked)) => Cell::Missing(format!(
                        "{:.1} / {:.1}",
                        *packed as f64 / (1 << 20) as f64,
                        *unpacked as f64 / (1 << 20) as f64
                    )),
                    None => Cell::Missing(format!("{name} not in images.json")),
                },
            }),
        );
    }
    table
}

async fn run(args: Args) -> Result<(), Error> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        return Err("--concurrency needs numbers above 0".into());
    }
    if args.ops == 0 || args.volumes == 0 || args.populated_ops == 0 || args.page <= 0 {
        return Err("--ops, --volumes, --populated-ops and --page must be above 0".into());
    }
    if args.vm && args.hanfs_controller.is_none() && args.peer_controller.is_none() {
        return Err("--vm needs --hanfs-controller and/or --peer-controller".into());
    }
    let bins = bin_dir(&args)?;
    let work = tempfile::Builder::new().prefix("hanfs-bench.").tempdir()?;
    let mut plan_concurrency = args.concurrency.clone();
    plan_concurrency.sort_unstable();
    plan_concurrency.dedup();
    let plan = Plan {
        concurrency: plan_concurrency,
        ops: args.ops,
        populate: args.volumes,
        populated_ops: args.populated_ops,
        page: args.page,
        run_id: format!("{:x}", std::process::id()),
    };
    let images = images_dir(&args)
        .ok_or_else(|| "no images/build.py output found".to_owned())
        .and_then(|dir| image_sizes(&dir).map_err(|e| e.to_string()));
    let hanfs_images: BTreeMap<&'static str, String> = ROLES
        .iter()
        .map(|r| (*r, hanfs_binary(r).to_owned()))
        .collect();
    let hanfs_bins: BTreeMap<&'static str, Option<PathBuf>> = ROLES
        .iter()
        .map(|r| (*r, Some(bins.join(hanfs_binary(r)))))
        .collect();

    let mut columns = Vec::new();
    // Kept alive for the whole run; dropped (stopped) at the end or on error.
    let mut local = None;
    let mut peer = None;

    if args.vm
        && let Some(ep) = &args.hanfs_controller
    {
        let endpoint = Endpoint::parse(ep).map_err(|e| format!("--hanfs-controller: {e}"))?;
        let params = args.hanfs_params.iter().cloned().collect::<HashMap<_, _>>();
        columns.push(Column {
            name: "hanfs".into(),
            driver: Ok(Driver::connect(
                "hanfs",
                &endpoint,
                params,
                args.volume_bytes,
            )?),
            procs: ROLES
                .iter()
                .map(|r| (*r, find_one(hanfs_binary(r))))
                .collect(),
            bins: hanfs_bins.clone(),
            images: hanfs_images.clone(),
        });
    }
    if !args.skip_local {
        let dir = work.path().join("local");
        std::fs::create_dir_all(&dir)?;
        let xfs = !args.plain_dir;
        let started = LocalMode::start(&bins, &dir, xfs)?;
        eprintln!(
            "bench: hanfs local mode up, export on {} (pids {:?})",
            started.export_fs, started.pids
        );
        let name = if args.vm {
            "hanfs local"
        } else {
            "hanfs (local mode)"
        };
        columns.push(Column {
            name: name.into(),
            driver: Ok(Driver::connect(
                name,
                &started.controller,
                HashMap::new(),
                args.volume_bytes,
            )?),
            procs: ROLES
                .iter()
                .map(|r| (*r, Ok(started.pids[hanfs_binary(r)])))
                .collect(),
            bins: hanfs_bins.clone(),
            images: hanfs_images.clone(),
        });
        local = Some(started);
    }
    let peer_bins = |path: Option<PathBuf>| -> BTreeMap<&'static str, Option<PathBuf>> {
        [
            ("controller", path.clone()),
            ("node", path),
            ("backend", None),
        ]
        .into_iter()
        .collect()
    };
    match (&args.peer_controller, &args.peer_nfsplugin) {
        (Some(ep), path) => {
            let endpoint = Endpoint::parse(ep).map_err(|e| format!("--peer-controller: {e}"))?;
            let params = args.peer_params.iter().cloned().collect::<HashMap<_, _>>();
            let pid = find_one("nfsplugin");
            columns.push(Column {
                name: "csi-driver-nfs".into(),
                driver: Ok(Driver::connect(
                    "csi-driver-nfs",
                    &endpoint,
                    params,
                    args.volume_bytes,
                )?),
                procs: [
                    ("controller", pid.clone()),
                    ("node", pid),
                    ("backend", Err("none (kernel nfsd)".into())),
                ]
                .into_iter()
                .collect(),
                bins: peer_bins(path.clone()),
                images: BTreeMap::new(),
            });
        }
        (None, Some(path)) => {
            let dir = work.path().join("peer");
            std::fs::create_dir_all(&dir)?;
            let started = Peer::start(path, &dir)?;
            let channel = common::endpoint::connect_lazy(&started.endpoint)?;
            let (name, version) = Driver::plugin_info(channel, "csi-driver-nfs").await?;
            eprintln!("bench: peer up: {name} {version} (pid {})", started.pid);
            columns.push(Column {
                name: "csi-driver-nfs".into(),
                // Its CreateVolume mounts the NFS share to make the directory: this
                // host has no NFS client, so any figure here would be made up.
                driver: Err("needs --vm".into()),
                procs: [
                    ("controller", Ok(started.pid)),
                    ("node", Ok(started.pid)),
                    ("backend", Err("none (kernel nfsd)".into())),
                ]
                .into_iter()
                .collect(),
                bins: peer_bins(Some(path.clone())),
                images: BTreeMap::new(),
            });
            peer = Some(started);
        }
        (None, None) => {}
    }
    if columns.is_empty() {
        if args.data_paths.is_empty() {
            return Err(
                "nothing to measure (--skip-local without --vm endpoints or --data-path)".into(),
            );
        }
        return data_path(&args);
    }

    // Identity answers on every driver we measure (a dead socket must not read as idle).
    for c in &columns {
        if let Ok(driver) = &c.driver {
            let (name, version) = Driver::plugin_info(driver.channel(), &c.name).await?;
            eprintln!("bench: {}: {name} {version}", c.name);
        }
    }
    let idle_procs = |c: &Column| -> Vec<(String, i32)> {
        c.procs
            .iter()
            .filter_map(|(role, pid)| pid.as_ref().ok().map(|p| (role.to_string(), *p)))
            .collect()
    };
    // Let start-up allocations settle before the idle window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut idle = BTreeMap::new();
    let all: Vec<(String, i32)> = columns
        .iter()
        .flat_map(|c| {
            idle_procs(c)
                .into_iter()
                .map(|(r, p)| (format!("{}\u{0}{r}", c.name), p))
        })
        .collect();
    let sampled = measure::idle(&all, Duration::from_secs(args.idle_secs)).await?;
    for (key, value) in sampled {
        if let Some((column, role)) = key.split_once('\u{0}') {
            idle.entry(column.to_owned())
                .or_insert_with(BTreeMap::new)
                .insert(role.to_owned(), value);
        }
    }

    let mut provisioning = BTreeMap::new();
    for c in &columns {
        let result = match &c.driver {
            Ok(driver) => {
                let procs = idle_procs(c);
                Ok(measure::provisioning(driver, &plan, &procs).await?)
            }
            Err(why) => Err(why.clone()),
        };
        provisioning.insert(c.name.clone(), result);
    }
    if let Some(local) = local.as_mut()
        && !local.alive()
    {
        return Err("hanfs local mode exited during the run".into());
    }
    if let Some(peer) = peer.as_mut()
        && !peer.alive()
    {
        return Err("nfsplugin exited during the run".into());
    }

    let table = build_table(&columns, &idle, &provisioning, &plan, &images);
    let rendered = table.render();
    println!("{rendered}");
    if columns.iter().all(|c| c.name != "csi-driver-nfs") {
        println!(
            "peer missing: csi-driver-nfs was not measured (give --peer-nfsplugin PATH; see bench/README.md)"
        );
    } else if !args.vm {
        println!(
            "peer provisioning needs --vm: nfsplugin's CreateVolume mounts the NFS share, and this host has no NFS client"
        );
    }
    if let Some(local) = &local {
        println!(
            "hanfs local mode: export on {}; {} volumes of {} bytes present for the populated rows",
            local.export_fs, plan.populate, args.volume_bytes
        );
    }
    println!(
        "image sizes from: {}",
        match &images {
            Ok(_) => images_dir(&args)
                .map_or_else(|| "(no folder)".to_owned(), |d| d.display().to_string()),
            Err(why) => why.clone(),
        }
    );

    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("table.md"), &rendered)?;
    let series: Vec<plot::Throughput> = columns
        .iter()
        .filter_map(|c| {
            let p = provisioning.get(&c.name)?.as_ref().ok()?;
            Some(plot::Throughput {
                target: c.name.clone(),
                points: p
                    .levels
                    .iter()
                    .map(|l| (l.concurrency, l.create.per_second(), l.delete.per_second()))
                    .collect(),
            })
        })
        .collect();
    let chart = args.out.join("provisioning.svg");
    plot::provisioning_chart(&chart, &series)?;
    println!("picture: {}", chart.display());
    if let Some(dir) = &args.records {
        let path = timeline(dir, &args.out)?;
        println!("picture: {}", path.display());
    } else {
        println!(
            "failover timeline: not drawn (give --records DIR from an e2e VM run with HANFS_E2E_RECORDS_DIR=DIR)"
        );
    }
    if !args.data_paths.is_empty() {
        data_path(&args)?;
    }
    drop(peer);
    drop(local);
    Ok(())
}

/// The data-path table: every `--data-path` target in turns, the first compared with
/// each of the others; printed and written to `data-path.md`.
fn data_path(args: &Args) -> Result<(), Error> {
    if args.data_rounds == 0 {
        return Err("--data-rounds must be above 0".into());
    }
    let targets: Vec<(String, PathBuf)> = args
        .data_paths
        .iter()
        .map(|(name, dir)| (name.clone(), PathBuf::from(dir)))
        .collect();
    let workload = datapath::Workload {
        file_bytes: args.data_mib << 20,
        random_ops: args.data_random_ops,
        fsyncs: args.data_fsyncs,
    };
    let figures = datapath::compare(
        &targets,
        &workload,
        args.data_rounds,
        &datapath::drop_caches,
    )?;
    let names: Vec<String> = figures.iter().map(|(n, _)| n.clone()).collect();
    let ratios = (1..names.len()).map(|i| (0, i)).collect();
    let mut table = Table::new(names, ratios);
    type Pick = fn(&datapath::Figures) -> f64;
    let rows: [(String, Pick); 6] = [
        (
            format!("sequential write of {} MiB + fsync: MiB/s", args.data_mib),
            |f| f.seq_write_mib_s,
        ),
        ("sequential read, cold cache: MiB/s".into(), |f| {
            f.seq_read_mib_s
        }),
        (
            format!(
                "random 4 KiB writes ({}) + fsync: per s",
                args.data_random_ops
            ),
            |f| f.random_write_iops,
        ),
        ("random 4 KiB reads, cold cache: per s".into(), |f| {
            f.random_read_iops
        }),
        (
            "4 KiB write + fsync: p50 ms (lower is better)".into(),
            |f| stats::ms(f.fsync_p50),
        ),
        (
            "4 KiB write + fsync: p99 ms (lower is better)".into(),
            |f| stats::ms(f.fsync_p99),
        ),
    ];
    for (label, pick) in rows {
        table.row(
            label,
            figures.iter().map(|(_, f)| Cell::Value(pick(f))).collect(),
        );
    }
    let rendered = table.render();
    println!("data path, median of {} rounds:", args.data_rounds);
    println!("{rendered}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("data-path.md"), &rendered)?;
    Ok(())
}

/// The failover timeline from the e2e records: every hard-kill trial of hanfs and of
/// the stock setup, 5 s before to 30 s after the kill.
fn timeline(dir: &Path, out: &Path) -> Result<PathBuf, Error> {
    let trials = records::load_dir(dir)?;
    let lines: Vec<plot::Timeline> = trials
        .iter()
        .filter(|t| t.scenario == "hard-kill")
        .map(|t| plot::Timeline {
            setup: t.setup.clone(),
            label: format!("{} hard kill", t.setup),
            points: records::timeline(t, 5.0, 30.0),
        })
        .collect();
    if lines.is_empty() {
        return Err(format!("{}: no hard-kill records", dir.display()).into());
    }
    let path = out.join("failover-timeline.svg");
    std::fs::create_dir_all(out)?;
    plot::failover_timeline(&path, &lines)?;
    Ok(path)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hanfs-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

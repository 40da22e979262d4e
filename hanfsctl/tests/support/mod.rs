//! Shared by the kill-point and load tests: the real binaries as child processes, an
//! export on a real XFS loop mount, a normalised view of the export tree and of the
//! mount table to diff, and a seeded PRNG whose seed is printed.
//!
//! Needs root (loop mounts, bind mounts) and the three binaries built next to hanfsctl
//! (`cargo build --bins`, which `cargo test --workspace` does).

#![allow(dead_code)] // each test binary uses its own part of this module

use common::mountinfo;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const HANFSCTL: &str = env!("CARGO_BIN_EXE_hanfsctl");

/// A binary built next to hanfsctl.
pub fn binary(name: &str) -> PathBuf {
    let path = Path::new(HANFSCTL).parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{name} is not built next to hanfsctl: run `cargo build --bins` first"
    );
    path
}

/// xorshift64*: enough for spreading kill offsets; the seed is printed so a failing run
/// can be replayed with `HANFS_SEED=<seed>`.
pub struct Rng(u64);

impl Rng {
    pub fn from_env(test: &str) -> Self {
        let seed = std::env::var("HANFS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        println!("{test}: seed {seed} (replay with HANFS_SEED={seed})");
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, window)`.
    pub fn offset_within(&mut self, window: Duration) -> Duration {
        let nanos = window.as_nanos().max(1) as u64;
        Duration::from_nanos(self.next_u64() % nanos)
    }
}

/// A tempdir whose `export/` is an XFS image loop-mounted (reflink, project ids: the
/// filesystem production uses), or a plain directory where XFS cannot be mounted. On
/// drop everything mounted below the tempdir is unmounted, deepest first, also when
/// the test failed halfway.
pub struct Scratch {
    pub root: PathBuf,
    pub export: PathBuf,
    pub xfs: bool,
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    pub fn new(image_bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let export = root.join("export");
        std::fs::create_dir(&export).unwrap();
        let image = root.join("export.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(image_bytes)
            .unwrap();
        let quiet = |cmd: &mut Command| {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .map(|o| {
                    (
                        o.status.success(),
                        String::from_utf8_lossy(&o.stderr).into_owned(),
                    )
                })
                .unwrap_or_else(|e| (false, e.to_string()))
        };
        let (made, why) = quiet(
            Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image),
        );
        let xfs = made && {
            let (mounted, why) = quiet(
                Command::new("mount")
                    .args(["-o", "loop"])
                    .arg(&image)
                    .arg(&export),
            );
            if !mounted {
                eprintln!("XFS loop mount failed ({why}); using a plain directory");
            }
            mounted
        };
        if !made {
            eprintln!("mkfs.xfs failed ({why}); using a plain directory");
        }
        // The loop device holds the image open; unlinked now, it goes with the unmount.
        let _ = std::fs::remove_file(&image);
        Self {
            root,
            export,
            xfs,
            dir: Some(dir),
        }
    }

    /// Paths inside the tempdir.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        unmount_below(&self.root);
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// Lazily unmounts every mount at or below `dir` in this mount namespace.
pub fn unmount_below(dir: &Path) {
    for _ in 0..10_000 {
        let Ok(table) = mountinfo::read_self() else {
            return;
        };
        let Some(deepest) = mountinfo::mounts_below(&table, dir).into_iter().next() else {
            return;
        };
        if let Err(e) = nix::mount::umount2(&deepest, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("cleanup: unmounting {}: {e}", deepest.display());
            return;
        }
    }
}

/// A child process SIGKILLed and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// Starts `program` with stdin closed and stderr appended to `log`.
    pub fn spawn(program: &Path, args: &[String], log: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Self {
            name: program.file_name().unwrap().to_string_lossy().into_owned(),
            child,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits (bounded) until `socket` accepts connections; panics if the process exits.
    pub fn wait_for_socket(&mut self, socket: &Path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited during start-up: {status}", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not serve {} within 20 s",
                self.name,
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the process to end after someone killed it.
    pub fn reap(&mut self) {
        let _ = self.child.wait();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGKILLs `pid` at `at` from a spinning thread: thread sleeps overshoot by 50 µs and
/// more, which is a large part of a call that takes a millisecond or two.
pub fn kill_at(pid: i32, at: Instant) -> std::thread::JoinHandle<Instant> {
    std::thread::spawn(move || {
        while Instant::now() < at {
            std::hint::spin_loop();
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        Instant::now()
    })
}

/// Every entry below `export`, keyed by relative path, described by type, mode, size,
/// content hash and project id. Records are parsed and printed without their creation
/// time, and project ids are named after the volume whose record holds them, so two
/// trees built by the same operations compare equal even though the ids and times
/// differ. The project-id counter is left out (ids burnt by a crash are not reused, by
/// design); [`project_ids_are_consistent`] checks it instead.
pub fn tree(export: &Path) -> BTreeMap<String, String> {
    let projects = project_names(export);
    let label = |id: u32| match id {
        0 => "-".to_string(),
        id => projects
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("ORPHAN-PROJECT-{id}")),
    };
    let mut out = BTreeMap::new();
    let mut stack = vec![export.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(export).unwrap().display().to_string();
            if rel == ".hanfs/next-project-id" {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o7777;
            let project = if meta.is_dir() || meta.is_file() {
                volumes::quota::project_of(&path)
                    .map(label)
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let what = if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {mode:o} proj={project}")
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap_or_default();
                format!("link -> {}", target.display())
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                let body = if rel.starts_with(".hanfs/meta/") && rel.ends_with(".json") {
                    normalised_record(&bytes, &label)
                } else {
                    format!("{} bytes, fnv {:016x}", bytes.len(), fnv(&bytes))
                };
                format!("file {mode:o} uid={} proj={project}: {body}", meta.uid())
            } else {
                format!("special {:o}", meta.mode())
            };
            out.insert(rel, what);
        }
    }
    out
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn normalised_record(bytes: &[u8], label: &dyn Fn(u32) -> String) -> String {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(mut record)) => {
            record.remove("created_unix_nanos");
            if let Some(id) = record.get("project_id").and_then(|v| v.as_u64()) {
                record.insert("project_id".into(), label(id as u32).into());
            }
            serde_json::Value::Object(record).to_string()
        }
        _ => format!("UNPARSEABLE RECORD {:?}", String::from_utf8_lossy(bytes)),
    }
}

/// Project id -> "project of volume <dir>", from the volume records.
fn project_names(export: &Path) -> BTreeMap<u32, String> {
    let mut names = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(export.join(".hanfs/meta/volumes")) else {
        return names;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(dir) = name.strip_suffix(".json") else {
            continue;
        };
        if let Ok(bytes) = std::fs::read(entry.path())
            && let Ok(record) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && let Some(id) = record.get("project_id").and_then(|v| v.as_u64())
            && id != 0
        {
            names.insert(id as u32, format!("project of {dir}"));
        }
    }
    names
}

/// Every volume's directory carries its record's project id, no two records share one,
/// and the counter is past all of them (a reused id would merge two volumes' quotas).
pub fn project_ids_are_consistent(export: &Path) -> Result<(), String> {
    let counter: u32 = std::fs::read(export.join(".hanfs/next-project-id"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(1000);
    let mut seen = BTreeMap::new();
    let records = export.join(".hanfs/meta/volumes");
    for entry in std::fs::read_dir(&records)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = name.trim_end_matches(".json").to_owned();
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(entry.path()).map_err(|e| format!("{name}: {e}"))?,
        )
        .map_err(|e| format!("{name}: {e}"))?;
        let id = record["project_id"].as_u64().unwrap_or(0) as u32;
        if id == 0 {
            continue;
        }
        if let Some(other) = seen.insert(id, dir.clone()) {
            return Err(format!("project {id} is held by both {other} and {dir}"));
        }
        if id >= counter {
            return Err(format!(
                "project {id} of {dir} is not below the counter {counter}"
            ));
        }
        let on_disk = volumes::quota::project_of(&export.join("volumes").join(&dir))
            .map_err(|e| format!("{dir}: {e}"))?;
        if on_disk != id {
            return Err(format!(
                "volumes/{dir} carries project {on_disk}, its record {id}"
            ));
        }
    }
    Ok(())
}

/// What differs between two trees, one line per path.
pub fn diff(expected: &BTreeMap<String, String>, actual: &BTreeMap<String, String>) -> String {
    let mut lines = Vec::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => lines.push(format!("- {path}: {want}")),
            Some(got) if got != want => lines.push(format!("~ {path}: {want}\n    now {got}")),
            _ => {}
        }
    }
    for (path, got) in actual {
        if !expected.contains_key(path) {
            lines.push(format!("+ {path}: {got}"));
        }
    }
    lines.join("\n")
}

/// A short name for the state a kill left behind, relative to the states before and
/// after the operation: the top-level paths that differ, with random suffixes folded.
pub fn phase(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> String {
    if now == before {
        return "untouched".into();
    }
    if now == after {
        return "done".into();
    }
    let mut changed: Vec<String> = Vec::new();
    let mut paths: Vec<&String> = before.keys().chain(now.keys()).collect();
    paths.sort();
    paths.dedup();
    for path in paths {
        let (b, n) = (before.get(path), now.get(path));
        if b == n {
            continue;
        }
        if changed.iter().any(|c| path.starts_with(&format!("{c}/"))) {
            continue;
        }
        changed.push(path.clone());
    }
    let mut shown: Vec<String> = changed
        .iter()
        .map(|p| {
            let folded = fold_suffix(p);
            if after.get(p) == now.get(p) {
                format!("={folded}")
            } else if now.contains_key(p) {
                format!("+{folded}")
            } else {
                format!("-{folded}")
            }
        })
        .collect();
    shown.dedup();
    shown.join(" ")
}

/// `vol-x.0123abcd...` -> `vol-x.*`, `x.json.tmp-0123...` -> `x.json.tmp-*`.
fn fold_suffix(path: &str) -> String {
    path.split('/')
        .map(|part| match part.rfind(['.', '-']) {
            Some(i) if part.len() - i > 16 => format!("{}*", &part[..=i]),
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The mounts at or below `dir` as (mount point, root, device, ro), sorted: what two
/// mount tables are compared by.
pub fn mounts_below(mountinfo_path: &Path, dir: &Path) -> Vec<String> {
    let table = mountinfo::parse(&std::fs::read(mountinfo_path).unwrap_or_default());
    let mut out: Vec<String> = table
        .iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .map(|m| {
            format!(
                "{} <- {} [{}] {}",
                m.mount_point.display(),
                m.root.display(),
                m.device(),
                if m.mount_read_only() { "ro" } else { "rw" }
            )
        })
        .collect();
    out.sort();
    out
}

/// (VmRSS, VmHWM) in KiB, open descriptors and threads of `pid`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub fds: usize,
    pub threads: u64,
}

pub fn usage(pid: i32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Usage {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
        threads: field("Threads:"),
    }
}

/// Processes whose command line mentions `needle` (leaked helpers).
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let me = std::process::id() as i32;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            found.push((pid, text));
        }
    }
    found
}

//! The data path: what a pod gets through a mounted volume. Sequential write and read,
//! random 4 KiB writes and reads, and the latency of a small write + fsync, in one
//! directory per target (a hanfs volume, a plain NFS mount of the same export, the
//! peer's volume). Every target runs the same workload in turns, several rounds in a
//! rotated order, and each figure is the median of its rounds: a slow moment of the
//! machine then costs every target alike.
//!
//! Reads come after the page cache is dropped (`/proc/sys/vm/drop_caches`), or they
//! would measure memory; a target where that fails is an error, never a figure.

use crate::stats;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One block of random 4 KiB I/O.
const SMALL: usize = 4096;
/// Sequential I/O goes in blocks of this size.
const BLOCK: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Workload {
    /// Size of the sequential file (the random I/O lands inside it too).
    pub file_bytes: u64,
    /// Random 4 KiB writes, then as many random reads.
    pub random_ops: usize,
    /// Small write + fsync pairs timed one by one.
    pub fsyncs: usize,
}

/// One target's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub seq_write_mib_s: f64,
    pub seq_read_mib_s: f64,
    pub random_write_iops: f64,
    pub random_read_iops: f64,
    pub fsync_p50: Duration,
    pub fsync_p99: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DataPathError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: read back {got} of {want} bytes", path.display())]
    ShortRead { path: PathBuf, got: u64, want: u64 },
    #[error("the workload is empty (file size, random ops and fsyncs must be above 0)")]
    Empty,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DataPathError + 'a {
    move |source| DataPathError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A small xorshift generator: the same offsets on every target, no dependency.
struct Offsets(u64);

impl Offsets {
    fn next_block(&mut self, blocks: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % blocks
    }
}

/// Drops clean pages, dentries and inodes (needs root), after a sync so dirty pages
/// are clean first.
pub fn drop_caches() -> io::Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64().max(1e-9)
}

/// Runs the workload once in `dir` (which must exist); leaves nothing behind, also
/// when a step fails.
pub fn run_once(
    dir: &Path,
    w: &Workload,
    drop_cache: &dyn Fn() -> io::Result<()>,
) -> Result<Figures, DataPathError> {
    if w.file_bytes < BLOCK as u64 || w.random_ops == 0 || w.fsyncs == 0 {
        return Err(DataPathError::Empty);
    }
    let data = dir.join(".hanfs-bench-data");
    let sync = dir.join(".hanfs-bench-fsync");
    let result = measure(&data, &sync, w, drop_cache);
    // Best effort: a failed measurement's error says more than a failed cleanup.
    let _ = std::fs::remove_file(&data);
    let _ = std::fs::remove_file(&sync);
    result
}

fn measure(
    data: &Path,
    sync: &Path,
    w: &Workload,
    drop_cache: &dyn Fn() -> io::Result<()>,
) -> Result<Figures, DataPathError> {
    let blocks = w.file_bytes / BLOCK as u64;
    let bytes = blocks * BLOCK as u64;
    // A pattern that no filesystem can compress or deduplicate into nothing.
    let block: Vec<u8> = (0..BLOCK).map(|i| (i * 31 % 251) as u8).collect();

    let started = Instant::now();
    let mut file = File::create(data).map_err(io_err("creating", data))?;
    for _ in 0..blocks {
        file.write_all(&block).map_err(io_err("writing", data))?;
    }
    file.sync_all().map_err(io_err("fsync of", data))?;
    drop(file);
    let seq_write = started.elapsed();

    drop_pages(drop_cache, data)?;
    let started = Instant::now();
    let mut file = File::open(data).map_err(io_err("opening", data))?;
    let mut buf = vec![0u8; BLOCK];
    let mut got = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err("reading", data))?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let seq_read = started.elapsed();
    if got != bytes {
        return Err(DataPathError::ShortRead {
            path: data.to_owned(),
            got,
            want: bytes,
        });
    }

    let small_blocks = bytes / SMALL as u64;
    let small = vec![0x5au8; SMALL];
    let mut offsets = Offsets(0x9e37_79b9_7f4a_7c15);
    let file = OpenOptions::new()
        .write(true)
        .open(data)
        .map_err(io_err("opening", data))?;
    let started = Instant::now();
    for _ in 0..w.random_ops {
        let at = offsets.next_block(small_blocks) * SMALL as u64;
        file.write_all_at(&small, at)
            .map_err(io_err("writing", data))?;
    }
    file.sync_all().map_err(io_err("fsync of", data))?;
    let random_write = started.elapsed();
    drop(file);

    drop_pages(drop_cache, data)?;
    let file = File::open(data).map_err(io_err("opening", data))?;
    let mut small_buf = vec![0u8; SMALL];
    let started = Instant::now();
    for _ in 0..w.random_ops {
        let at = offsets.next_block(small_blocks) * SMALL as u64;
        file.read_exact_at(&mut small_buf, at)
            .map_err(io_err("reading", data))?;
    }
    let random_read = started.elapsed();
    drop(file);

    let mut file = File::create(sync).map_err(io_err("creating", sync))?;
    let mut latencies = Vec::with_capacity(w.fsyncs);
    for _ in 0..w.fsyncs {
        let started = Instant::now();
        file.write_all(&small).map_err(io_err("writing", sync))?;
        file.sync_data().map_err(io_err("fsync of", sync))?;
        latencies.push(started.elapsed());
    }
    let fsync = stats::summarize(latencies, Duration::ZERO).ok_or(DataPathError::Empty)?;

    Ok(Figures {
        seq_write_mib_s: mib_per_s(bytes, seq_write),
        seq_read_mib_s: mib_per_s(bytes, seq_read),
        random_write_iops: w.random_ops as f64 / random_write.as_secs_f64().max(1e-9),
        random_read_iops: w.random_ops as f64 / random_read.as_secs_f64().max(1e-9),
        fsync_p50: fsync.p50,
        fsync_p99: fsync.p99,
    })
}

fn drop_pages(drop_cache: &dyn Fn() -> io::Result<()>, data: &Path) -> Result<(), DataPathError> {
    drop_cache().map_err(io_err("dropping the page cache before reading", data))
}

/// The rounds' median of each figure (the upper one of an even count).
pub fn median(rounds: &[Figures]) -> Option<Figures> {
    fn mid<T: Copy + PartialOrd>(mut v: Vec<T>) -> Option<T> {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v.get(v.len() / 2).copied()
    }
    let of = |f: fn(&Figures) -> f64| mid(rounds.iter().map(f).collect());
    let of_time = |f: fn(&Figures) -> Duration| mid(rounds.iter().map(f).collect());
    Some(Figures {
        seq_write_mib_s: of(|f| f.seq_write_mib_s)?,
        seq_read_mib_s: of(|f| f.seq_read_mib_s)?,
        random_write_iops: of(|f| f.random_write_iops)?,
        random_read_iops: of(|f| f.random_read_iops)?,
        fsync_p50: of_time(|f| f.fsync_p50)?,
        fsync_p99: of_time(|f| f.fsync_p99)?,
    })
}

/// Every target `rounds` times, round r starting at target r (mod n), so no target is
/// always first or last; the median of each target's rounds. One warm-up pass over all
/// targets goes first and is not counted: the first writes after a boot ran at about
/// half speed on whichever target came first (12.6 against 17.0 MiB/s, VM cluster).
pub fn compare(
    targets: &[(String, PathBuf)],
    w: &Workload,
    rounds: usize,
    drop_cache: &dyn Fn() -> io::Result<()>,
) -> Result<Vec<(String, Figures)>, DataPathError> {
    for (name, dir) in targets {
        let warm = run_once(dir, w, drop_cache)?;
        eprintln!(
            "bench: data path warm-up {name} (not counted): write {:.1} MiB/s, read {:.1} MiB/s",
            warm.seq_write_mib_s, warm.seq_read_mib_s
        );
    }
    let n = targets.len();
    let mut per_target: Vec<Vec<Figures>> = vec![Vec::new(); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let (name, dir) = &targets[i];
            let figures = run_once(dir, w, drop_cache)?;
            eprintln!(
                "bench: data path round {} {name}: write {:.1} MiB/s, read {:.1} MiB/s, \
                 4 KiB write {:.0}/s, read {:.0}/s, fsync p50 {:.2} ms",
                round + 1,
                figures.seq_write_mib_s,
                figures.seq_read_mib_s,
                figures.random_write_iops,
                figures.random_read_iops,
                stats::ms(figures.fsync_p50)
            );
            per_target[i].push(figures);
        }
    }
    targets
        .iter()
        .zip(per_target)
        .map(|((name, _), rounds)| {
            median(&rounds)
                .map(|m| (name.clone(), m))
                .ok_or(DataPathError::Empty)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn small() -> Workload {
        Workload {
            file_bytes: 2 << 20,
            random_ops: 64,
            fsyncs: 8,
        }
    }

    #[test]
    fn a_run_measures_every_figure_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let drops = std::cell::Cell::new(0);
        let f = run_once(dir.path(), &small(), &|| {
            drops.set(drops.get() + 1);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            drops.get(),
            2,
            "the cache is dropped before each read phase"
        );
        for v in [
            f.seq_write_mib_s,
            f.seq_read_mib_s,
            f.random_write_iops,
            f.random_read_iops,
        ] {
            assert!(v.is_finite() && v > 0.0, "{f:?}");
        }
        assert!(f.fsync_p50 <= f.fsync_p99);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_failed_cache_drop_is_an_error_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let err = run_once(dir.path(), &small(), &|| {
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        })
        .unwrap_err();
        assert!(err.to_string().contains("dropping the page cache"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let missing = run_once(&dir.path().join("gone"), &small(), &|| Ok(())).unwrap_err();
        assert!(missing.to_string().contains("creating"), "{missing}");
        assert!(matches!(
            run_once(
                dir.path(),
                &Workload {
                    fsyncs: 0,
                    ..small()
                },
                &|| Ok(())
            ),
            Err(DataPathError::Empty)
        ));
    }

    #[test]
    fn median_per_figure_and_rotated_rounds() {
        let f = |w: f64| Figures {
            seq_write_mib_s: w,
            seq_read_mib_s: w * 2.0,
            random_write_iops: w,
            random_read_iops: w,
            fsync_p50: Duration::from_millis(w as u64),
            fsync_p99: Duration::from_millis(w as u64),
        };
        let m = median(&[f(3.0), f(1.0), f(2.0)]).unwrap();
        assert_eq!(m, f(2.0));
        assert!(median(&[]).is_none());

        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let targets = vec![
            ("a".to_owned(), a.path().to_owned()),
            ("b".to_owned(), b.path().to_owned()),
        ];
        let out = compare(&targets, &small(), 2, &|| Ok(())).unwrap();
        assert_eq!(
            out.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }
}

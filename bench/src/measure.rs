//! One bench run: what is measured on each driver, in which order.
//!
//! 1. Idle footprint of every process, all drivers at once (RSS now, CPU over a window).
//! 2. Per concurrency level: a batch of CreateVolume, then DeleteVolume of what it made.
//!    The highest level is also the "under load" window: RSS sampled every 100 ms and
//!    the CPU time it took.
//! 3. The export populated with N volumes; then CreateVolume / DeleteVolume one at a
//!    time beside them, and ListVolumes paging through all of them (every populated id
//!    must be listed, once); then the N are deleted.
//!
//! Any failed call ends the run with an error (after deleting what the bench created):
//! figures from a batch with failures would be fiction.

use crate::load::{Driver, LoadError};
use crate::procfs::{self, ProcError, Sample};
use crate::stats::Summary;
use proto::csi::v1::controller_service_capability::rpc::Type as Cap;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MeasureError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("footprint of {role} (pid {pid}): {source}")]
    Proc {
        role: String,
        pid: i32,
        #[source]
        source: ProcError,
    },
}

/// The knobs of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Requests in flight, ascending (the last is the "under load" level).
    pub concurrency: Vec<usize>,
    /// Calls per batch at each level.
    pub ops: usize,
    /// Volumes already present for the populated figures.
    pub populate: usize,
    /// Calls one at a time beside the populated volumes.
    pub populated_ops: usize,
    /// ListVolumes max_entries.
    pub page: i32,
    /// A tag unique to this run, in every volume name.
    pub run_id: String,
}

/// Idle footprint of one process.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    pub rss_kib: u64,
    /// CPU used over the idle window, as % of one core.
    pub cpu_percent: f64,
}

/// Footprint of one process under the highest concurrency.
#[derive(Debug, Clone, Copy)]
pub struct UnderLoad {
    pub peak_rss_kib: u64,
    pub cpu: Duration,
    pub calls: usize,
}

/// Results of one concurrency level.
#[derive(Debug, Clone)]
pub struct Level {
    pub concurrency: usize,
    pub create: Summary,
    pub delete: Summary,
}

/// Everything measured over one driver's controller.
#[derive(Debug, Clone)]
pub struct Provisioning {
    pub levels: Vec<Level>,
    pub populated: usize,
    pub create_populated: Summary,
    pub delete_populated: Summary,
    /// Per-page latencies, or why ListVolumes was not measured.
    pub list: Result<(usize, Summary), String>,
    /// role → footprint during the highest level.
    pub under_load: BTreeMap<String, UnderLoad>,
}

/// Idle footprint of each (role, pid), sampled at once over `window`.
pub async fn idle(
    procs: &[(String, i32)],
    window: Duration,
) -> Result<BTreeMap<String, Idle>, MeasureError> {
    let sample_all = || -> Result<Vec<Sample>, MeasureError> {
        procs
            .iter()
            .map(|(role, pid)| {
                procfs::sample(*pid).map_err(|source| MeasureError::Proc {
                    role: role.clone(),
                    pid: *pid,
                    source,
                })
            })
            .collect()
    };
    let before = sample_all()?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = sample_all()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(procs
        .iter()
        .zip(before.iter().zip(after.iter()))
        .map(|((role, _), (b, a))| {
            let cpu = a.cpu.saturating_sub(b.cpu).as_secs_f64();
            (
                role.clone(),
                Idle {
                    rss_kib: a.rss_kib,
                    cpu_percent: 100.0 * cpu / seconds,
                },
            )
        })
        .collect())
}

/// Samples RSS of `procs` every 100 ms until stopped; the first unreadable sample is
/// kept as the error (a process that died under load voids the figures).
struct Sampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<BTreeMap<String, u64>, MeasureError>>,
    cpu_before: Vec<Duration>,
    procs: Vec<(String, i32)>,
}

fn sample(role: &str, pid: i32) -> Result<Sample, MeasureError> {
    procfs::sample(pid).map_err(|source| MeasureError::Proc {
        role: role.to_owned(),
        pid,
        source,
    })
}

impl Sampler {
    fn start(procs: &[(String, i32)]) -> Result<Self, MeasureError> {
        let cpu_before = procs
            .iter()
            .map(|(role, pid)| sample(role, *pid).map(|s| s.cpu))
            .collect::<Result<Vec<_>, _>>()?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let watched = procs.to_vec();
        let task = tokio::spawn(async move {
            let mut peaks = BTreeMap::<String, u64>::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                for (role, pid) in &watched {
                    let s = sample(role, *pid)?;
                    let peak = peaks.entry(role.clone()).or_default();
                    *peak = (*peak).max(s.rss_kib);
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
            }
            Ok(peaks)
        });
        Ok(Self {
            stop,
            task,
            cpu_before,
            procs: procs.to_vec(),
        })
    }

    async fn finish(self, calls: usize) -> Result<BTreeMap<String, UnderLoad>, MeasureError> {
        let _ = self.stop.send(true);
        let peaks = match self.task.await {
            Ok(result) => result?,
            Err(join) => {
                return Err(MeasureError::Load(LoadError::Broken {
                    target: "sampler".into(),
                    what: join.to_string(),
                }));
            }
        };
        let mut out = BTreeMap::new();
        for ((role, pid), before) in self.procs.iter().zip(self.cpu_before) {
            let now = sample(role, *pid)?;
            out.insert(
                role.clone(),
                UnderLoad {
                    peak_rss_kib: peaks
                        .get(role)
                        .copied()
                        .unwrap_or(now.rss_kib)
                        .max(now.rss_kib),
                    cpu: now.cpu.saturating_sub(before),
                    calls,
                },
            );
        }
        Ok(out)
    }
}

/// Runs the plan against `driver`, with `procs` the processes whose footprint under
/// load is measured (may be empty). On failure what the bench created is deleted first.
pub async fn provisioning(
    driver: &Driver,
    plan: &Plan,
    procs: &[(String, i32)],
) -> Result<Provisioning, MeasureError> {
    let result = run(driver, plan, procs).await;
    if result.is_err() {
        let stuck = driver.cleanup().await;
        if !stuck.is_empty() {
            eprintln!(
                "bench: {}: {} volumes could not be deleted after the failure: {:?}",
                driver.target,
                stuck.len(),
                &stuck[..stuck.len().min(5)]
            );
        }
    }
    result
}

async fn run(
    driver: &Driver,
    plan: &Plan,
    procs: &[(String, i32)],
) -> Result<Provisioning, MeasureError> {
    let names = |tag: &str, count: usize| -> Vec<String> {
        (0..count)
            .map(|i| format!("bench-{}-{tag}-{i}", plan.run_id))
            .collect()
    };
    let top = plan.concurrency.iter().copied().max().unwrap_or(1);
    let mut levels = Vec::new();
    let mut under_load = BTreeMap::new();
    for &c in &plan.concurrency {
        let sampler = if c == top {
            Some(Sampler::start(procs)?)
        } else {
            None
        };
        let (ids, create) = driver
            .create_batch(names(&format!("c{c}"), plan.ops), c)
            .await?;
        let delete = driver.delete_batch(ids, c).await?;
        if let Some(sampler) = sampler {
            under_load = sampler.finish(create.calls + delete.calls).await?;
        }
        eprintln!(
            "bench: {} c={c}: {:.0} creates/s, {:.0} deletes/s",
            driver.target,
            create.per_second(),
            delete.per_second()
        );
        levels.push(Level {
            concurrency: c,
            create,
            delete,
        });
    }

    let started = Instant::now();
    let (populated, _) = driver
        .create_batch(names("pop", plan.populate), top)
        .await?;
    eprintln!(
        "bench: {}: {} volumes present ({:.1} s)",
        driver.target,
        populated.len(),
        started.elapsed().as_secs_f64()
    );
    let (ids, create_populated) = driver
        .create_batch(names("beside", plan.populated_ops), 1)
        .await?;
    let delete_populated = driver.delete_batch(ids, 1).await?;
    let list = if driver.offers(Cap::ListVolumes).await? {
        // Bounded: twice the pages the volumes need, plus what others put there.
        let limit = 2 * (plan.populate / plan.page.max(1) as usize + 1) + 1000;
        let (listed, pages) = driver.list_all(plan.page, limit).await?;
        let missing: Vec<&String> = populated
            .iter()
            .filter(|id| !listed.contains(*id))
            .collect();
        if !missing.is_empty() {
            return Err(LoadError::Broken {
                target: driver.target.clone(),
                what: format!(
                    "ListVolumes left out {} of the {} volumes present, e.g. {:?}",
                    missing.len(),
                    populated.len(),
                    missing[0]
                ),
            }
            .into());
        }
        Ok((listed.len(), pages))
    } else {
        Err("LIST_VOLUMES not offered".to_owned())
    };
    driver.delete_batch(populated, top).await?;
    let left = driver.live();
    if !left.is_empty() {
        return Err(LoadError::Broken {
            target: driver.target.clone(),
            what: format!("{} volumes still live after the run", left.len()),
        }
        .into());
    }
    Ok(Provisioning {
        levels,
        populated: plan.populate,
        create_populated,
        delete_populated,
        list,
        under_load,
    })
}

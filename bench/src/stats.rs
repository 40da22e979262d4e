//! Latency summaries: percentiles by the nearest-rank method over every sample (no
//! histogram buckets: a few thousand samples per run are cheap to sort, and exact
//! ranks keep p99 honest at small counts).

use std::time::Duration;

/// What one batch of calls at one concurrency measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub calls: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Wall time from the first call's start to the last call's end.
    pub wall: Duration,
}

impl Summary {
    /// Completed calls per second of wall time.
    pub fn per_second(&self) -> f64 {
        if self.wall.is_zero() {
            return 0.0;
        }
        self.calls as f64 / self.wall.as_secs_f64()
    }
}

/// The nearest-rank percentile `p` (0 < p <= 100) of sorted samples: the smallest value
/// that at least p % of the samples do not exceed.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Summarises latencies; `None` for no samples (a batch that measured nothing must not
/// print as zeros).
pub fn summarize(mut latencies: Vec<Duration>, wall: Duration) -> Option<Summary> {
    latencies.sort();
    Some(Summary {
        calls: latencies.len(),
        p50: percentile(&latencies, 50.0)?,
        p99: percentile(&latencies, 99.0)?,
        max: *latencies.last()?,
        wall,
    })
}

/// Milliseconds with two decimals, for tables.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn millis(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted = millis(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&sorted, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&sorted, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&sorted, 100.0), Some(Duration::from_millis(100)));
        // With few samples p99 is the maximum, not an interpolation below it.
        let few = millis(&[1, 2, 30]);
        assert_eq!(percentile(&few, 99.0), Some(Duration::from_millis(30)));
        assert_eq!(percentile(&few, 50.0), Some(Duration::from_millis(2)));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&few, 0.0), None);
        assert_eq!(percentile(&few, 101.0), None);
    }

    #[test]
    fn summary_sorts_and_counts_throughput() {
        let s = summarize(millis(&[30, 10, 20, 40]), Duration::from_secs(2)).unwrap();
        assert_eq!(s.calls, 4);
        assert_eq!(s.p50, Duration::from_millis(20));
        assert_eq!(s.p99, Duration::from_millis(40));
        assert_eq!(s.max, Duration::from_millis(40));
        assert!((s.per_second() - 2.0).abs() < 1e-9);
        assert!(summarize(Vec::new(), Duration::from_secs(1)).is_none());
    }
}

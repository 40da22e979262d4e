//! glibc malloc settings for the daemons (hanfs-node, hanfs-controller), which idle most
//! of their life and serve bursts.
//!
//! glibc gives each thread that allocates under contention an arena of its own (up to
//! 8 per core), and frees memory back to the kernel only from the top of a heap. After
//! a burst of publishes on many runtime and blocking threads, the freed memory then
//! stays resident, spread over many arenas: the load run (2,000 volumes) left the node
//! at 72 MB after teardown, from 18 MB before. Two arenas are plenty for a handful of
//! threads doing small allocations, and a periodic `malloc_trim` hands freed pages back
//! once a burst is over. Elsewhere than glibc both are no-ops.

use std::time::Duration;

/// How many malloc arenas the process may use; set before any thread starts.
pub const ARENAS: i32 = 2;

/// How often freed memory is handed back to the kernel.
pub const TRIM_PERIOD: Duration = Duration::from_secs(10);

/// Limits glibc's malloc arenas to `max`. Call first thing in `main`, before any thread
/// exists (threads pick their arena on their first allocation).
pub fn limit_arenas(max: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt(3) only sets a malloc parameter; it takes no pointers and is
    // called before other threads exist.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, max);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = max;
}

/// Returns the free memory of every arena to the kernel (`malloc_trim(0)`), whatever
/// its place in the heap (glibc ≥ 2.8 releases whole free pages inside a heap too).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim(3) takes no pointers; it locks each arena while it walks it,
    // so it is safe beside allocating threads.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims every `period`, forever (spawn it; it ends with the runtime). A trim of a heap
/// with nothing free costs microseconds, so running it while busy is harmless.
pub async fn trim_periodically(period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trim after a burst of freed allocations leaves less resident than before it.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trim_returns_freed_memory() {
        let rss = || {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap()
        };
        // Many small blocks (below the mmap threshold), freed all but the last, so the
        // heap's top stays in use and only a trim can release the pages below it.
        let mut blocks: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 1000]).collect();
        let last = blocks.pop();
        drop(blocks);
        let before = rss();
        trim();
        let after = rss();
        drop(last);
        assert!(
            after + 10_000 < before,
            "RSS {before} KiB before the trim, {after} KiB after"
        );
    }
}

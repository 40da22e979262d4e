//! Running test code inside a network namespace (a [`crate::netns::Topology`] member,
//! say) without leaving the test's own.
//!
//! `setns(2)` moves only the calling thread, so every call here starts a fresh thread that
//! enters the namespace first and runs the work there; the test's thread never moves.
//! Sockets made on that thread (a listener, a netlink handle, a Kubernetes client's
//! connections) keep their namespace and may be used from any thread afterwards.

use std::fs::File;
use std::path::Path;
use std::thread::JoinHandle;

use nix::sched::{CloneFlags, setns};

/// Where `ip netns add` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Moves the calling thread into network namespace `ns` (a name under `/run/netns`).
pub fn enter(ns: &str) -> std::io::Result<()> {
    let file = File::open(Path::new(NETNS_DIR).join(ns))?;
    setns(file, CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

/// Enters `ns` or panics: the namespace is the test's own, so failing to enter it is a
/// setup failure.
fn enter_or_panic(ns: &str) {
    if let Err(e) = enter(ns) {
        panic!("entering network namespace {ns}: {e}");
    }
}

/// Runs `f` on a fresh thread inside `ns` and returns its value; a panic in `f` is
/// resumed on the caller's thread. `f` may borrow from the caller.
pub fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            enter_or_panic(ns);
            f()
        });
        match worker.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Starts `f` on a thread inside `ns` and returns at once, for work that outlives the
/// call (an agent that runs until told to stop). The thread panics if `ns` cannot be
/// entered; `join` reports it.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter_or_panic(&ns);
        f()
    })
}

/// Runs `future` to completion on a new current-thread tokio runtime (timers and I/O
/// enabled) on the calling thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a current-thread runtime")
        .block_on(future)
}

/// Runs the future that `make` returns to completion inside `ns` ([`in_namespace`] +
/// [`block_on`]). The future is made on the namespace's thread, so it need not be `Send`
/// and anything it opens, even before its first poll, opens in `ns`.
pub fn block_on_in<T: Send, F: Future<Output = T>>(ns: &str, make: impl FnOnce() -> F + Send) -> T {
    in_namespace(ns, || block_on(make()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::Topology;

    /// The network namespace the calling thread is in (its `nsfs` inode).
    fn current() -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/thread-self/ns/net").map_or(0, |m| m.ino())
    }

    #[test]
    fn a_missing_namespace_is_an_error() {
        let err = enter("hanfs-t-no-such-namespace").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    #[should_panic(expected = "entering network namespace hanfs-t-no-such-namespace")]
    fn in_namespace_panics_when_it_cannot_enter() {
        in_namespace("hanfs-t-no-such-namespace", || ());
    }

    #[test]
    fn work_runs_inside_the_namespace_and_the_caller_stays_out() {
        let topo = Topology::new(1).unwrap();
        let ns = topo.member_ns(0);
        let outer = current();
        let inner = in_namespace(ns, current);
        assert_ne!(inner, outer);
        assert_eq!(current(), outer);
        assert_eq!(spawn_in(ns, current).join().unwrap(), inner);
        // The member's address exists only inside; a socket bound there stays usable here.
        let ip = topo.member_ip(0);
        let listener = block_on_in(ns, || async move {
            assert_eq!(current(), inner);
            std::net::TcpListener::bind((ip, 0))
        })
        .unwrap();
        assert!(std::net::TcpListener::bind((ip, 0)).is_err());
        assert_eq!(listener.local_addr().unwrap().ip(), ip);
    }

    #[test]
    fn a_panic_in_the_work_reaches_the_caller() {
        let topo = Topology::new(1).unwrap();
        let panic = std::panic::catch_unwind(|| {
            in_namespace(topo.member_ns(0), || panic!("from the work"));
        })
        .unwrap_err();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"from the work"));
    }
}

//! `drivers::vip` against the real kernel, inside network namespaces this test creates
//! (veth pairs between them, nothing attached to a host interface). Needs root.
//!
//! Each namespace is entered by a helper thread (`setns` moves only the calling thread),
//! which runs a current-thread tokio runtime for the async calls; sockets made there
//! keep their namespace and may be used from the test thread afterwards.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failure by design

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hanfs_backend::drivers::vip::{Added, GarpConfig, Removed, Vip, VipError};

// ---- network namespace helper (same in driver_tickle.rs) ----

static NEXT: AtomicU32 = AtomicU32::new(0);
/// Marks this file's namespaces: `hanfs-t-vip<pid>x<n><role>`.
const MARK: &str = "hanfs-t-vip";

/// Runs `ip args…` with a deadline; panics with stderr on failure.
fn ip(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["10", "ip"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes namespaces of this file left by a run that was killed (its pid is gone),
/// since a killed run cannot drop them.
fn remove_stale_namespaces() {
    for line in ip(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(MARK) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('x') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stdin(Stdio::null())
                .status();
        }
    }
}

/// A test's unique number: distinct names, and distinct subnets for readability.
fn unique() -> u32 {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    if n == 0 {
        remove_stale_namespaces();
    }
    n
}

/// A network namespace deleted on drop (also when the test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn new(test: u32, role: &str) -> Netns {
        let name = format!("{MARK}{}x{test}{role}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a fresh thread that has entered this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let worker = s.spawn(move || {
                enter_netns(&File::open(&path).expect("open netns"));
                f()
            });
            match worker.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs the future made by `f` on a current-thread runtime inside this namespace.
    fn block_on<T: Send, F: Future<Output = T>>(&self, f: impl FnOnce() -> F + Send) -> T {
        self.run(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .status();
    }
}

#[allow(unsafe_code)]
fn enter_netns(ns: &File) {
    // SAFETY: setns takes a descriptor that stays open for the call and changes only the
    // calling thread's network namespace (a helper thread, never the test's own).
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// The MAC that `ns` has for `address` on eth0, if any.
fn neighbour_mac(ns: &Netns, address: Ipv4Addr) -> Option<String> {
    let out = ns.ip(&["neigh", "show", &address.to_string(), "dev", "eth0"]);
    let mut words = out.split_whitespace();
    words.by_ref().find(|w| *w == "lladdr")?;
    words.next().map(str::to_owned)
}

/// Polls (bounded: 40 × 25 ms) until `ns` maps `address` to `mac`.
fn wait_for_neighbour(ns: &Netns, address: Ipv4Addr, mac: &str) -> bool {
    for _ in 0..40 {
        if neighbour_mac(ns, address).as_deref() == Some(mac) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

// ---- tests ----

struct Pair {
    a: Netns,
    b: Netns,
    x: u32,
}

/// A (10.78.x.1, MAC 02:78:00:00:xx:0a) ↔ veth ↔ B (10.78.x.2, MAC …:0b).
fn pair() -> Pair {
    let test = unique();
    let x = test % 250 + 1;
    let a = Netns::new(test, "a");
    let b = Netns::new(test, "b");
    let mac_a = format!("02:78:00:00:{x:02x}:0a");
    let mac_b = format!("02:78:00:00:{x:02x}:0b");
    a.ip(&[
        "link", "add", "eth0", "address", &mac_a, "type", "veth", "peer", "name", "eth0",
        "address", &mac_b, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", &format!("10.78.{x}.1/24"), "dev", "eth0"]);
    b.ip(&["addr", "add", &format!("10.78.{x}.2/24"), "dev", "eth0"]);
    a.ip(&["link", "set", "eth0", "up"]);
    b.ip(&["link", "set", "eth0", "up"]);
    Pair { a, b, x }
}

#[test]
fn add_is_idempotent_announces_serves_and_removes() {
    let Pair { a, b, x } = pair();
    let address = Ipv4Addr::new(10, 78, x as u8, 100);
    let vip = Vip::new(address, 24, "eth0");
    let mac_a = format!("02:78:00:00:{x:02x}:0a");
    // B remembers the VIP at some other MAC, as a client does after a failover.
    let old_mac = "02:00:00:00:00:99";
    b.ip(&[
        "neigh",
        "replace",
        &address.to_string(),
        "lladdr",
        old_mac,
        "dev",
        "eth0",
        "nud",
        "stale",
    ]);

    let (before, first, present, second) = a.block_on(|| async {
        let before = vip.is_present().await.unwrap();
        let first = vip.add().await.unwrap();
        let present = vip.is_present().await.unwrap();
        let second = vip.add().await.unwrap();
        (before, first, present, second)
    });
    assert!(!before);
    assert_eq!(first, Added::New);
    assert!(present);
    assert_eq!(second, Added::AlreadyPresent);
    assert!(
        a.ip(&["-4", "addr", "show", "dev", "eth0"])
            .contains(&format!("{address}/24"))
    );

    // Adding the address sent no ARP (the kernel sends none), so B still has the old MAC…
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(neighbour_mac(&b, address).as_deref(), Some(old_mac));
    // …until our gratuitous ARP (two rounds, both forms) replaces it.
    let config = GarpConfig {
        repeat: 1,
        interval: Duration::from_millis(50),
        reply_form: true,
    };
    a.block_on(|| vip.announce(&config)).unwrap();
    assert!(
        wait_for_neighbour(&b, address, &mac_a),
        "B did not learn A's MAC: {:?}",
        neighbour_mac(&b, address)
    );

    // B reaches a service on the VIP.
    let listener = a.run(|| TcpListener::bind(SocketAddrV4::new(address, 2049)).unwrap());
    let mut client = b.run(|| {
        TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(address, 2049)),
            Duration::from_secs(2),
        )
        .unwrap()
    });
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (mut server, peer) = listener.accept().unwrap();
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(Ipv4Addr::new(10, 78, x as u8, 2))
    );
    server.write_all(b"k").unwrap();
    let mut byte = [0u8; 1];
    client.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"k");

    let (removed, present, again) = a.block_on(|| async {
        let removed = vip.remove().await.unwrap();
        let present = vip.is_present().await.unwrap();
        let again = vip.remove().await.unwrap();
        (removed, present, again)
    });
    assert_eq!(removed, Removed::Removed);
    assert!(!present);
    assert_eq!(again, Removed::WasAbsent);
    assert!(
        a.ip(&["-4", "addr", "show", "dev", "eth0"])
            .contains(&format!("10.78.{x}.1/24")),
        "own address kept"
    );
}

#[test]
fn the_vip_on_another_interface_is_refused() {
    let Pair { a, x, .. } = pair();
    // A second interface in A (this kernel has no `dummy` module: a veth pair inside A).
    a.ip(&[
        "link", "add", "dum0", "type", "veth", "peer", "name", "dum1",
    ]);
    a.ip(&["link", "set", "dum0", "up"]);
    let address = Ipv4Addr::new(10, 78, x as u8, 100);
    let on_eth0 = Vip::new(address, 24, "eth0");
    let on_dum0 = Vip::new(address, 24, "dum0");
    let other_prefix = Vip::new(address, 32, "eth0");

    let (refused, present_dum0, removed_dum0, present_eth0, prefix) = a.block_on(|| async {
        assert_eq!(on_eth0.add().await.unwrap(), Added::New);
        let refused = on_dum0.add().await;
        let present_dum0 = on_dum0.is_present().await.unwrap();
        // Removing from dum0 must not touch the copy on eth0.
        let removed_dum0 = on_dum0.remove().await.unwrap();
        let present_eth0 = on_eth0.is_present().await.unwrap();
        let prefix = other_prefix.add().await;
        (refused, present_dum0, removed_dum0, present_eth0, prefix)
    });
    match refused {
        Err(VipError::OnOtherInterface {
            interface, wanted, ..
        }) => {
            assert_eq!(interface, "eth0");
            assert_eq!(wanted, "dum0");
        }
        other => panic!("expected OnOtherInterface, got {other:?}"),
    }
    assert!(!present_dum0);
    assert_eq!(removed_dum0, Removed::WasAbsent);
    assert!(present_eth0);
    assert!(
        matches!(
            prefix,
            Err(VipError::OtherPrefix {
                present: 24,
                wanted: 32,
                ..
            })
        ),
        "{prefix:?}"
    );
    assert!(
        !a.ip(&["-4", "addr", "show", "dev", "dum0"])
            .contains(&address.to_string()),
        "no second copy"
    );
}

#[test]
fn a_missing_interface_is_a_clear_error() {
    let test = unique();
    let a = Netns::new(test, "a");
    let vip = Vip::new(Ipv4Addr::new(10, 78, 250, 100), 24, "nosuch0");
    let (add, present, announce, remove) = a.block_on(|| async {
        (
            vip.add().await,
            vip.is_present().await,
            vip.announce(&GarpConfig::once()).await,
            vip.remove().await,
        )
    });
    for result in [add.map(|_| ()), present.map(|_| ()), announce] {
        match result {
            Err(e @ VipError::InterfaceNotFound { .. }) => {
                assert!(e.to_string().contains("nosuch0"), "{e}")
            }
            other => panic!("expected InterfaceNotFound, got {other:?}"),
        }
    }
    // Standing down never fails on a VIP that cannot be there.
    assert_eq!(remove.unwrap(), Removed::WasAbsent);
}

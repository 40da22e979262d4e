//! The tickle ACK end to end, inside network namespaces this test creates: a client C
//! and two servers S1, S2, each joined by a veth to one bridge in a fourth namespace
//! (nothing attached to a host interface). Needs root.
//!
//! S1 holds the VIP and an open server socket; the takeover moves the VIP to S2 while
//! S1 stays silent (as a crashed node would), S2 sends one gratuitous ARP and then a
//! tickle to one of the client's two connections: that one is reset at once, the other
//! stays open (the control).

#![allow(clippy::unwrap_used)] // test helpers panic on setup failure by design

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hanfs_backend::drivers::tickle::{self, Connection, NFS_PORT};
use hanfs_backend::drivers::vip::{GarpConfig, Vip};

// ---- network namespace helper (same in driver_vip.rs) ----

static NEXT: AtomicU32 = AtomicU32::new(0);
/// Marks this file's namespaces: `hanfs-t-tk<pid>x<n><role>`.
const MARK: &str = "hanfs-t-tk";

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

// ---- test ----

/// C, S1, S2 on a bridge in BR; C = 10.79.x.10, S1 = .1, S2 = .2; MACs 02:79:00:00:xx:{0a,01,02}.
struct Lan {
    c: Netns,
    s1: Netns,
    s2: Netns,
    /// Holds the bridge: dropping it deletes the namespace and every veth with it.
    bridge: Netns,
    x: u32,
}

fn lan() -> Lan {
    let test = unique();
    let x = test % 250 + 1;
    let bridge = Netns::new(test, "br");
    bridge.ip(&["link", "add", "br0", "type", "bridge"]);
    bridge.ip(&["link", "set", "br0", "up"]);
    let mut hosts = Vec::new();
    for (role, last) in [("c", 10u8), ("s1", 1), ("s2", 2)] {
        let ns = Netns::new(test, role);
        let mac = format!("02:79:00:00:{x:02x}:{last:02x}");
        ns.ip(&[
            "link",
            "add",
            "eth0",
            "address",
            &mac,
            "type",
            "veth",
            "peer",
            "name",
            role,
            "netns",
            &bridge.name,
        ]);
        bridge.ip(&["link", "set", role, "master", "br0", "up"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("10.79.{x}.{last}/24"),
            "dev",
            "eth0",
        ]);
        ns.ip(&["link", "set", "eth0", "up"]);
        hosts.push(ns);
    }
    let s2 = hosts.pop().expect("three hosts");
    let s1 = hosts.pop().expect("three hosts");
    let c = hosts.pop().expect("three hosts");
    Lan {
        c,
        s1,
        s2,
        bridge,
        x,
    }
}

/// Accepts one connection, bounded: 100 × 20 ms.
fn accept_bounded(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    listener.set_nonblocking(true).unwrap();
    for _ in 0..100 {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false).unwrap();
                return (stream, peer);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    panic!("no connection to accept within 2 s");
}

/// One byte each way, so both ends are established and idle afterwards.
fn exchange(client: &mut TcpStream, server: &mut TcpStream) {
    let mut byte = [0u8; 1];
    client.write_all(b"q").unwrap();
    server.read_exact(&mut byte).unwrap();
    server.write_all(b"r").unwrap();
    client.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"r");
}

#[test]
fn a_tickle_resets_the_clients_connection_to_the_dead_server_and_only_that_one() {
    let Lan {
        c,
        s1,
        s2,
        bridge: _bridge,
        x,
    } = lan();
    let address = Ipv4Addr::new(10, 79, x as u8, 100);
    let server_end = SocketAddrV4::new(address, NFS_PORT);
    let vip = Vip::new(address, 24, "eth0");
    let timeout = Duration::from_secs(2);

    // S1 is active: VIP and an NFS-port listener; the client opens two connections.
    s1.block_on(|| async {
        vip.add().await.unwrap();
        vip.announce(&GarpConfig::once()).await.unwrap();
    });
    let listener = s1.run(|| TcpListener::bind(server_end).unwrap());
    let (mut tickled, mut control) = c.run(|| {
        let connect = || TcpStream::connect_timeout(&SocketAddr::V4(server_end), timeout).unwrap();
        (connect(), connect())
    });
    // S1's ends stay open (and S1 silent) until the test ends, as on a crashed node.
    let mut s1_ends = Vec::new();
    for _ in 0..2 {
        let (stream, peer) = accept_bounded(&listener);
        stream.set_read_timeout(Some(timeout)).unwrap();
        s1_ends.push((stream, peer));
    }
    for client in [&mut tickled, &mut control] {
        client.set_read_timeout(Some(timeout)).unwrap();
        let local = client.local_addr().unwrap();
        let (server, _) = s1_ends
            .iter_mut()
            .find(|(_, peer)| *peer == local)
            .expect("accepted");
        exchange(client, server);
    }
    let client_end = |s: &TcpStream| match s.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        other => panic!("not IPv4: {other}"),
    };
    let (tickled_end, control_end) = (client_end(&tickled), client_end(&control));

    // The active's list, from S1's own socket table, through the file on "shared" disk.
    let listed = s1.run(|| tickle::read_established(server_end).unwrap());
    let mut expected = vec![
        Connection {
            client: tickled_end,
            server: server_end,
        },
        Connection {
            client: control_end,
            server: server_end,
        },
    ];
    expected.sort();
    assert_eq!(listed, expected);
    let disk = tempfile::tempdir().unwrap();
    let file = disk.path().join("tickles.json");
    tickle::save(&file, &listed).unwrap();

    // Takeover: the VIP leaves S1 without S1 closing anything, S2 takes it and announces.
    s1.block_on(|| vip.remove()).unwrap();
    s2.block_on(|| async {
        vip.add().await.unwrap();
        vip.announce(&GarpConfig::once()).await.unwrap();
    });
    // The gratuitous ARP went first: the client's answer to the tickle will reach S2.
    let mac_s2 = format!("02:79:00:00:{x:02x}:02");
    assert!(
        wait_for_neighbour(&c, address, &mac_s2),
        "C still maps the VIP to {:?}",
        neighbour_mac(&c, address)
    );
    let loaded = tickle::load(&file).unwrap();
    assert_eq!(loaded, listed);
    // Only the first connection is tickled; the second is the control.
    let to_tickle: Vec<Connection> = loaded
        .into_iter()
        .filter(|conn| conn.client == tickled_end)
        .collect();
    let report = s2.run(|| tickle::send_tickles(&to_tickle).unwrap());
    assert_eq!(report.sent, 1);
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    let wait = Duration::from_secs(1);
    let mut byte = [0u8; 1];
    tickled.set_read_timeout(Some(wait)).unwrap();
    let started = Instant::now();
    let result = tickled.read(&mut byte);
    let elapsed = started.elapsed();
    match result {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => {
            panic!("expected the tickled connection to be reset, got {other:?} after {elapsed:?}")
        }
    }
    assert!(elapsed < wait, "reset after {elapsed:?}");

    // The control waited at least as long (the tickled read above, then its own wait),
    // and is still open: no RST, no data.
    control.set_read_timeout(Some(wait)).unwrap();
    match control.read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the untickled connection should be idle and open, got {other:?}"),
    }
    let still = c.run(|| {
        let table = std::fs::read_to_string(tickle::PROC_NET_TCP).unwrap();
        tickle::established_to(&table, control_end)
    });
    assert_eq!(
        still,
        vec![Connection {
            client: server_end,
            server: control_end
        }],
        "control still established"
    );
    drop(s1_ends);
}

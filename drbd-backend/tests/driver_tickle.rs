//! The tickle ACK end to end, inside network namespaces this test creates (a
//! `testkit` topology): a client C and two servers S1, S2, each joined by a veth
//! to one bridge in a fourth namespace (nothing attached to a host interface). Needs root.
//!
//! S1 holds the VIP and an open server socket; the takeover moves the VIP to S2 while
//! S1 stays silent (as a crashed node would), S2 sends one gratuitous ARP and then a
//! tickle to one of the client's two connections: that one is reset at once, the other
//! stays open (the control).

#![allow(clippy::unwrap_used)] // test helpers panic on setup failure by design

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use drbd_backend::drivers::tickle::{self, Connection, NFS_PORT};
use drbd_backend::drivers::vip::{GarpConfig, Vip};
use testkit::netns::{self, Topology};
use testkit::thread_ns::{block_on_in, in_namespace};

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
    // C, S1, S2 on the topology's bridge.
    let topo = Topology::new(3).unwrap();
    let (c, s1, s2) = (topo.member_ns(0), topo.member_ns(1), topo.member_ns(2));
    let address = topo.subnet_ip(100);
    let server_end = SocketAddrV4::new(address, NFS_PORT);
    let vip = Vip::new(address, 24, "eth0");
    let timeout = Duration::from_secs(2);

    // S1 is active: VIP and an NFS-port listener; the client opens two connections.
    block_on_in(s1, || async {
        vip.add().await.unwrap();
        vip.announce(&GarpConfig::once()).await.unwrap();
    });
    let listener = in_namespace(s1, || TcpListener::bind(server_end).unwrap());
    let (mut tickled, mut control) = in_namespace(c, || {
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
    let listed = in_namespace(s1, || tickle::read_established(server_end).unwrap());
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
    block_on_in(s1, || vip.remove()).unwrap();
    block_on_in(s2, || async {
        vip.add().await.unwrap();
        vip.announce(&GarpConfig::once()).await.unwrap();
    });
    // The gratuitous ARP went first: the client's answer to the tickle will reach S2.
    let mac_s2 = netns::link_mac(s2, "eth0").unwrap();
    assert!(
        netns::wait_for_neighbour(c, "eth0", address, &mac_s2, Duration::from_secs(1)).unwrap(),
        "C still maps the VIP to {:?}",
        netns::neighbour_mac(c, "eth0", address)
    );
    let loaded = tickle::load(&file).unwrap();
    assert_eq!(loaded, listed);
    // Only the first connection is tickled; the second is the control.
    let to_tickle: Vec<Connection> = loaded
        .into_iter()
        .filter(|conn| conn.client == tickled_end)
        .collect();
    let report = in_namespace(s2, || tickle::send_tickles(&to_tickle).unwrap());
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
    let still = in_namespace(c, || {
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

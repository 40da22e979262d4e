//! `drivers::vip` against the real kernel, inside private network namespaces
//! ([`Topology`]: members on veth pairs to a bridge, nothing attached to a host
//! interface). Needs root.
//!
//! Each namespace is entered by a helper thread (`testkit::thread_ns`), which runs a
//! current-thread tokio runtime for the async calls; sockets made there keep their
//! namespace and may be used from the test thread afterwards.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failure by design

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use drbd_backend::drivers::vip::{Added, GarpConfig, Removed, Vip, VipError};
use testkit::netns::{self, Topology};
use testkit::thread_ns::{block_on_in, in_namespace};

/// `ip -n <ns> <args…>`; panics on failure.
fn ip(ns: &str, args: &[&str]) -> String {
    netns::ip(ns, args).unwrap()
}

/// The MAC that `ns` has for `address` on eth0, if any.
fn neighbour_mac(ns: &str, address: std::net::Ipv4Addr) -> Option<String> {
    netns::neighbour_mac(ns, "eth0", address).unwrap()
}

#[test]
fn add_is_idempotent_announces_serves_and_removes() {
    let topo = Topology::new(2).unwrap();
    let (a, b) = (topo.member_ns(0), topo.member_ns(1));
    let address = topo.subnet_ip(100);
    let vip = Vip::new(address, 24, "eth0");
    let mac_a = netns::link_mac(a, "eth0").unwrap();
    // B remembers the VIP at some other MAC, as a client does after a failover.
    let old_mac = "02:00:00:00:00:99";
    ip(
        b,
        &[
            "neigh",
            "replace",
            &address.to_string(),
            "lladdr",
            old_mac,
            "dev",
            "eth0",
            "nud",
            "stale",
        ],
    );

    let (before, first, present, second) = block_on_in(a, || async {
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
    assert!(ip(a, &["-4", "addr", "show", "dev", "eth0"]).contains(&format!("{address}/24")));

    // Adding the address sent no ARP (the kernel sends none), so B still has the old MAC…
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(neighbour_mac(b, address).as_deref(), Some(old_mac));
    // …until our gratuitous ARP (two rounds, both forms) replaces it.
    let config = GarpConfig {
        repeat: 1,
        interval: Duration::from_millis(50),
        reply_form: true,
    };
    block_on_in(a, || vip.announce(&config)).unwrap();
    assert!(
        netns::wait_for_neighbour(b, "eth0", address, &mac_a, Duration::from_secs(1)).unwrap(),
        "B did not learn A's MAC: {:?}",
        neighbour_mac(b, address)
    );

    // B reaches a service on the VIP.
    let listener = in_namespace(a, || {
        TcpListener::bind(SocketAddrV4::new(address, 2049)).unwrap()
    });
    let mut client = in_namespace(b, || {
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
    assert_eq!(peer.ip(), IpAddr::V4(topo.member_ip(1)));
    server.write_all(b"k").unwrap();
    let mut byte = [0u8; 1];
    client.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"k");

    let (removed, present, again) = block_on_in(a, || async {
        let removed = vip.remove().await.unwrap();
        let present = vip.is_present().await.unwrap();
        let again = vip.remove().await.unwrap();
        (removed, present, again)
    });
    assert_eq!(removed, Removed::Removed);
    assert!(!present);
    assert_eq!(again, Removed::WasAbsent);
    assert!(
        ip(a, &["-4", "addr", "show", "dev", "eth0"])
            .contains(&format!("{}/24", topo.member_ip(0))),
        "own address kept"
    );
}

#[test]
fn the_vip_on_another_interface_is_refused() {
    let topo = Topology::new(1).unwrap();
    let a = topo.member_ns(0);
    // A second interface in A (this kernel has no `dummy` module: a veth pair inside A).
    ip(
        a,
        &[
            "link", "add", "dum0", "type", "veth", "peer", "name", "dum1",
        ],
    );
    ip(a, &["link", "set", "dum0", "up"]);
    let address = topo.subnet_ip(100);
    let on_eth0 = Vip::new(address, 24, "eth0");
    let on_dum0 = Vip::new(address, 24, "dum0");
    let other_prefix = Vip::new(address, 32, "eth0");

    let (refused, present_dum0, removed_dum0, present_eth0, prefix) = block_on_in(a, || async {
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
        !ip(a, &["-4", "addr", "show", "dev", "dum0"]).contains(&address.to_string()),
        "no second copy"
    );
}

#[test]
fn a_missing_interface_is_a_clear_error() {
    let topo = Topology::new(1).unwrap();
    let vip = Vip::new(topo.subnet_ip(100), 24, "nosuch0");
    let (add, present, announce, remove) = block_on_in(topo.member_ns(0), || async {
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

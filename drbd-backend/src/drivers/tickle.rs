//! Tickle ACKs (DESIGN.md §4), as CTDB and the `portblock` resource agent send them:
//! after a takeover the new active sends every NFS client a bare ACK from VIP:2049 with
//! bogus sequence numbers. The client answers with its real numbers, this node's kernel
//! has no such socket and resets it, and the client reconnects at once instead of
//! waiting for its next retransmit.
//!
//! Three parts:
//! - the connection list: [`established_to`] (pure, over the text of `/proc/net/tcp`)
//!   and [`read_established`]; the active [`save`]s it on the replicated disk every few
//!   seconds, the new active [`load`]s it after taking the VIP;
//! - the packet: [`tickle_ack`] (pure);
//! - the sender: [`send_tickles`], one raw IPv4 packet per connection.
//!
//! Order on takeover: add the VIP, send **one gratuitous ARP first**
//! (`drivers::vip::Vip::announce` with `GarpConfig::once()`), then [`send_tickles`] —
//! otherwise the clients' answers may still go to the dead node's MAC and nobody resets
//! them. One tickle per connection is enough: a client answers at most one
//! out-of-window segment per 500 ms (`net.ipv4.tcp_invalid_ratelimit`) anyway.
//!
//! Network namespace: [`read_established`] and [`send_tickles`] act in the namespace of
//! the *calling thread* (see `drivers::vip`).

use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The NFS port the list is about.
pub const NFS_PORT: u16 = 2049;

/// `/proc/net` is a link to `/proc/self/net`, the network namespace of the *process's
/// main thread*; a thread that entered another namespace must read `thread-self`.
pub const PROC_NET_TCP: &str = "/proc/thread-self/net/tcp";

/// Version of the saved file's format.
const FILE_VERSION: u32 = 1;

/// `TCP_ESTABLISHED` in `/proc/net/tcp`'s `st` column.
const TCP_ESTABLISHED: u8 = 0x01;

#[derive(Debug, Error)]
pub enum TickleError {
    /// Reading the kernel's socket table failed.
    #[error("reading {path}: {source}")]
    ReadTable {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    /// Writing, syncing or renaming the saved list failed.
    #[error("saving the connection list to {path}: {source}")]
    Save {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading the saved list failed (other than it not existing).
    #[error("loading the connection list from {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The saved list is not valid JSON of the expected shape.
    #[error("the connection list in {path} is malformed: {source}")]
    Malformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The saved list was written by an incompatible version.
    #[error("the connection list in {path} has version {found}, expected {FILE_VERSION}")]
    Version { path: PathBuf, found: u32 },
    /// The raw socket could not be opened (it needs CAP_NET_RAW).
    #[error("opening a raw IPv4 socket: {0}")]
    Socket(#[source] io::Error),
}

/// A line of `/proc/net/tcp` that could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("bad /proc/net/tcp line ({reason}): {line:?}")]
pub struct ParseLineError {
    pub line: String,
    pub reason: &'static str,
}

/// One TCP connection of an NFS client to the VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Connection {
    /// The client's address and port (the tickle's destination).
    pub client: SocketAddrV4,
    /// VIP:2049 (the tickle's source).
    pub server: SocketAddrV4,
}

/// One IPv4 TCP socket from the kernel's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    /// The kernel's `TCP_*` state number (1 = established).
    pub state: u8,
}

/// Parses `ADDR:PORT` as printed by the kernel: the address is the `__be32` printed as a
/// native-endian `%08X` (so `0100007F` is 127.0.0.1 on little-endian hosts), the port
/// is in host order.
fn parse_endpoint(field: &str) -> Option<SocketAddrV4> {
    let (address, port) = field.split_once(':')?;
    if address.len() != 8 || port.len() != 4 {
        return None;
    }
    let raw = u32::from_str_radix(address, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(raw.to_ne_bytes()), port))
}

/// Parses one data line of `/proc/net/tcp`
/// (`sl local_address rem_address st tx_queue:rx_queue …`); the columns after `st`
/// are ignored.
pub fn parse_line(line: &str) -> Result<TcpSocket, ParseLineError> {
    let bad = |reason| ParseLineError {
        line: line.to_owned(),
        reason,
    };
    let mut fields = line.split_whitespace();
    let slot = fields.next().ok_or_else(|| bad("empty"))?;
    if !slot.ends_with(':') {
        return Err(bad("no slot number"));
    }
    let local = fields
        .next()
        .and_then(parse_endpoint)
        .ok_or_else(|| bad("local address"))?;
    let remote = fields
        .next()
        .and_then(parse_endpoint)
        .ok_or_else(|| bad("remote address"))?;
    let state = fields
        .next()
        .and_then(|s| u8::from_str_radix(s, 16).ok())
        .ok_or_else(|| bad("state"))?;
    Ok(TcpSocket {
        local,
        remote,
        state,
    })
}

/// The established connections whose local end is `server` (VIP:2049), from the whole
/// text of `/proc/net/tcp`, sorted and without duplicates. The header line is skipped;
/// bad lines are logged and skipped. IPv4 only: nfsd's IPv6 listeners are v6-only, so
/// IPv4 clients always appear here and never in `tcp6`.
pub fn established_to(proc_net_tcp: &str, server: SocketAddrV4) -> Vec<Connection> {
    let mut connections: Vec<Connection> = proc_net_tcp
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with("sl"))
        .filter_map(|line| match parse_line(line) {
            Ok(socket) => Some(socket),
            Err(e) => {
                tracing::warn!(error = %e, "skipping a line of /proc/net/tcp");
                None
            }
        })
        .filter(|s| s.state == TCP_ESTABLISHED && s.local == server)
        .map(|s| Connection {
            client: s.remote,
            server: s.local,
        })
        .collect();
    connections.sort();
    connections.dedup();
    connections
}

/// [`established_to`] over this thread's network namespace's table.
pub fn read_established(server: SocketAddrV4) -> Result<Vec<Connection>, TickleError> {
    let text = fs::read_to_string(PROC_NET_TCP).map_err(|source| TickleError::ReadTable {
        path: PROC_NET_TCP,
        source,
    })?;
    Ok(established_to(&text, server))
}

#[derive(Serialize, Deserialize)]
struct SavedList {
    version: u32,
    connections: Vec<Connection>,
}

/// Writes the list to `path` atomically: a temporary file in the same directory,
/// fsync'd, renamed over `path`, then the directory fsync'd — a crash leaves the old
/// list or the new one, never half of one. Blocking (the fsyncs wait for the replicated
/// disk): call it from `spawn_blocking` in async code.
pub fn save(path: &Path, connections: &[Connection]) -> Result<(), TickleError> {
    let save_error = |source| TickleError::Save {
        path: path.to_owned(),
        source,
    };
    let json = serde_json::to_vec(&SavedList {
        version: FILE_VERSION,
        connections: connections.to_vec(),
    })
    .map_err(|e| save_error(io::Error::other(e)))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| save_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut temp_name = file_name.to_owned();
    temp_name.push(format!(".tmp.{}", std::process::id()));
    let temp = dir.join(temp_name);
    if let Err(source) = replace_durably(&temp, path, dir, &json) {
        // Best effort: the temp file may not exist or already be renamed.
        let _ = fs::remove_file(&temp);
        return Err(save_error(source));
    }
    Ok(())
}

fn replace_durably(temp: &Path, path: &Path, dir: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = fs::File::create(temp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(temp, path)?;
    // The rename is durable only once the directory entry is.
    fs::File::open(dir)?.sync_all()
}

/// Reads a list written by [`save`]. A missing file is an empty list (no active has
/// saved one yet: nothing to tickle).
pub fn load(path: &Path) -> Result<Vec<Connection>, TickleError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TickleError::Load {
                path: path.to_owned(),
                source,
            });
        }
    };
    let saved: SavedList =
        serde_json::from_slice(&bytes).map_err(|source| TickleError::Malformed {
            path: path.to_owned(),
            source,
        })?;
    if saved.version != FILE_VERSION {
        return Err(TickleError::Version {
            path: path.to_owned(),
            found: saved.version,
        });
    }
    Ok(saved.connections)
}

const IPV4_HEADER_LEN: usize = 20;
const TCP_HEADER_LEN: usize = 20;
const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_ACK: u8 = 0x10;
/// Any plausible window; the client ignores the segment's contents except to answer it.
const TICKLE_WINDOW: u16 = 1234;

/// The RFC 1071 Internet checksum over `chunks` taken as one byte sequence (each chunk
/// here has even length).
fn internet_checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = match pair {
                [hi, lo] => u16::from_be_bytes([*hi, *lo]),
                [hi] => u16::from_be_bytes([*hi, 0]),
                _ => 0,
            };
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A tickle: a complete IPv4 packet (header included) with a TCP segment from `server`
/// (VIP:2049) to `client`, only ACK set, sequence and acknowledgement numbers 0 (bogus:
/// out of the client's window, so it answers with a duplicate ACK carrying its real
/// numbers, which this node's kernel resets). DF set, IP ID 0 (RFC 6864 allows that
/// for atomic datagrams), TTL 64, both checksums filled in.
pub fn tickle_ack(server: SocketAddrV4, client: SocketAddrV4) -> Vec<u8> {
    let total_len = (IPV4_HEADER_LEN + TCP_HEADER_LEN) as u16;
    let mut ip = [0u8; IPV4_HEADER_LEN];
    ip[0] = 0x45; // version 4, header length 5 words
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[6] = 0x40; // DF, fragment offset 0
    ip[8] = 64;
    ip[9] = IPPROTO_TCP;
    ip[12..16].copy_from_slice(&server.ip().octets());
    ip[16..20].copy_from_slice(&client.ip().octets());
    let ip_checksum = internet_checksum(&[&ip]);
    ip[10..12].copy_from_slice(&ip_checksum.to_be_bytes());

    let mut tcp = [0u8; TCP_HEADER_LEN];
    tcp[0..2].copy_from_slice(&server.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&client.port().to_be_bytes());
    // seq (4..8) and ack (8..12) stay 0.
    tcp[12] = ((TCP_HEADER_LEN / 4) as u8) << 4;
    tcp[13] = TCP_FLAG_ACK;
    tcp[14..16].copy_from_slice(&TICKLE_WINDOW.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&server.ip().octets());
    pseudo[4..8].copy_from_slice(&client.ip().octets());
    pseudo[9] = IPPROTO_TCP;
    pseudo[10..12].copy_from_slice(&(TCP_HEADER_LEN as u16).to_be_bytes());
    let tcp_checksum = internet_checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&tcp_checksum.to_be_bytes());

    let mut packet = Vec::with_capacity(total_len as usize);
    packet.extend_from_slice(&ip);
    packet.extend_from_slice(&tcp);
    packet
}

/// One connection whose tickle could not be sent.
#[derive(Debug)]
pub struct TickleFailure {
    pub connection: Connection,
    pub error: io::Error,
}

/// What [`send_tickles`] did.
#[derive(Debug, Default)]
pub struct SendReport {
    /// Tickles handed to the kernel.
    pub sent: usize,
    /// The ones it refused (e.g. no route to that client); the others were still sent.
    pub failures: Vec<TickleFailure>,
}

/// Sends one [`tickle_ack`] per connection from a raw IPv4 socket, without blocking.
/// Call it only after the VIP is on this node and **one gratuitous ARP has gone out**
/// (see the module doc). Fails as a whole only when the socket cannot be opened.
pub fn send_tickles(connections: &[Connection]) -> Result<SendReport, TickleError> {
    let socket = raw::RawIpv4Socket::open().map_err(TickleError::Socket)?;
    let mut report = SendReport::default();
    for connection in connections {
        let packet = tickle_ack(connection.server, connection.client);
        match socket.send(&packet, *connection.client.ip()) {
            Ok(()) => report.sent += 1,
            Err(error) => {
                tracing::warn!(client = %connection.client, %error, "tickle ACK not sent");
                report.failures.push(TickleFailure {
                    connection: *connection,
                    error,
                });
            }
        }
    }
    tracing::info!(
        sent = report.sent,
        failed = report.failures.len(),
        "tickle ACKs sent"
    );
    Ok(report)
}

/// The raw socket, through `nix`: no `unsafe` here.
mod raw {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sendto, socket,
    };
    use std::io;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::os::fd::{AsRawFd, OwnedFd};

    /// `socket(AF_INET, SOCK_RAW, IPPROTO_RAW)`: send-only, `IP_HDRINCL` implied, so the
    /// packet goes out with the header we built (the kernel rewrites only the header
    /// checksum and, were it 0, the total length).
    pub(super) struct RawIpv4Socket(OwnedFd);

    impl RawIpv4Socket {
        pub(super) fn open() -> io::Result<Self> {
            let fd = socket(
                AddressFamily::Inet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::Raw,
            )?;
            Ok(RawIpv4Socket(fd))
        }

        /// MSG_DONTWAIT: a full send buffer is reported, never waited for, so the
        /// takeover path cannot stall on it.
        pub(super) fn send(&self, packet: &[u8], destination: Ipv4Addr) -> io::Result<()> {
            // The port is meaningless for a raw socket; the kernel routes by address.
            let to = SockaddrIn::from(SocketAddrV4::new(destination, 0));
            sendto(self.0.as_raw_fd(), packet, &to, MsgFlags::MSG_DONTWAIT)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(a), port)
    }

    // In the kernel's format (little-endian host): VIP 10.77.0.100, one nfsd
    // listener, two established clients, one in TIME_WAIT (06), one to port 22.
    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0801 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21874 1 0000000000000000 100 0 0 10 0
   1: 64004D0A:0801 0B004D0A:03B8 01 00000000:00000000 02:000A6E1C 00000000     0        0 0 2 0000000000000000 20 4 31 10 -1
   2: 64004D0A:0801 0C004D0A:0320 01 00000000:00000000 02:000A6E1C 00000000     0        0 0 2 0000000000000000 20 4 31 10 -1
   3: 64004D0A:0801 0B004D0A:03B9 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   4: 64004D0A:0016 0B004D0A:D431 01 00000000:00000000 02:000A6E1C 00000000     0        0 31337 2 0000000000000000 20 4 31 10 -1
";

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_a_line_with_little_endian_addresses() {
        let line = "   1: 64004D0A:0801 0B004D0A:03B8 01 00000000:00000000 02:000A6E1C 00000000     0        0 0 2";
        let socket = parse_line(line).unwrap();
        assert_eq!(socket.local, v4([10, 77, 0, 100], 2049));
        assert_eq!(socket.remote, v4([10, 77, 0, 11], 952));
        assert_eq!(socket.state, 1);
        let loopback = parse_line("0: 0100007F:0801 0100007F:A2C4 01").unwrap();
        assert_eq!(loopback.local, v4([127, 0, 0, 1], 2049));
        assert_eq!(loopback.remote, v4([127, 0, 0, 1], 0xA2C4));
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn keeps_only_established_connections_to_the_vip_port() {
        let vip = v4([10, 77, 0, 100], NFS_PORT);
        assert_eq!(
            established_to(TABLE, vip),
            vec![
                Connection {
                    client: v4([10, 77, 0, 11], 952),
                    server: vip
                },
                Connection {
                    client: v4([10, 77, 0, 12], 800),
                    server: vip
                },
            ]
        );
        assert!(established_to(TABLE, v4([10, 77, 0, 101], NFS_PORT)).is_empty());
    }

    #[test]
    fn bad_lines_are_errors_and_are_skipped() {
        for line in [
            "",
            "   1:",
            "1: 64004D0A:0801",
            "1: 64004D0A0801 0B004D0A:03B8 01",
            "1: 64004D0A:0801 0B004D0A:03B8 zz",
        ] {
            assert!(parse_line(line).is_err(), "{line:?}");
        }
        let text = format!("{TABLE}garbage here\n   9: 64004D0A:0801\n");
        assert_eq!(
            established_to(&text, v4([10, 77, 0, 100], NFS_PORT)).len(),
            2
        );
    }

    #[test]
    fn save_then_load_round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tickles.json");
        assert!(
            load(&path).unwrap().is_empty(),
            "a missing file is an empty list"
        );
        let vip = v4([10, 77, 0, 100], NFS_PORT);
        let list = vec![Connection {
            client: v4([10, 77, 0, 11], 952),
            server: vip,
        }];
        save(&path, &list).unwrap();
        assert_eq!(load(&path).unwrap(), list);
        save(&path, &[]).unwrap();
        assert!(load(&path).unwrap().is_empty());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("tickles.json")]);
    }

    #[test]
    fn load_rejects_other_versions_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tickles.json");
        fs::write(&path, br#"{"version":2,"connections":[]}"#).unwrap();
        assert!(matches!(
            load(&path),
            Err(TickleError::Version { found: 2, .. })
        ));
        fs::write(&path, b"{not json").unwrap();
        assert!(matches!(load(&path), Err(TickleError::Malformed { .. })));
    }

    #[test]
    fn the_file_format_is_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let vip = v4([10, 77, 0, 100], NFS_PORT);
        save(
            &path,
            &[Connection {
                client: v4([10, 77, 0, 11], 952),
                server: vip,
            }],
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            r#"{"version":1,"connections":[{"client":"10.77.0.11:952","server":"10.77.0.100:2049"}]}"#
        );
    }

    /// RFC 1071 the slow, obvious way, independent of `internet_checksum`: one's
    /// complement addition of 16-bit words with end-around carry at every step.
    fn rfc1071(bytes: &[u8]) -> u16 {
        let mut sum: u16 = 0;
        for i in (0..bytes.len()).step_by(2) {
            let word = (u16::from(bytes[i]) << 8) | u16::from(*bytes.get(i + 1).unwrap_or(&0));
            let (s, carry) = sum.overflowing_add(word);
            sum = s + u16::from(carry);
        }
        !sum
    }

    #[test]
    fn checksum_matches_a_textbook_ipv4_header() {
        // The header from Wikipedia's "Internet checksum" example: checksum 0xB861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&[&header]), 0xb861);
        assert_eq!(rfc1071(&header), 0xb861);
    }

    #[test]
    fn tickle_is_the_hand_assembled_packet() {
        let server = v4([10, 79, 1, 100], 2049);
        let client = v4([10, 79, 1, 20], 0xd431);
        #[rustfmt::skip]
        let mut expected: Vec<u8> = vec![
            0x45, 0x00, 0x00, 0x28, // version/IHL, TOS, total length 40
            0x00, 0x00, 0x40, 0x00, // ID 0, DF
            0x40, 0x06, 0x00, 0x00, // TTL 64, TCP, checksum (below)
            10, 79, 1, 100,         // source: VIP
            10, 79, 1, 20,          // destination: client
            0x08, 0x01, 0xd4, 0x31, // ports 2049 -> 54321
            0, 0, 0, 0,             // seq
            0, 0, 0, 0,             // ack
            0x50, 0x10, 0x04, 0xd2, // data offset 5, ACK, window 1234
            0x00, 0x00, 0x00, 0x00, // checksum (below), urgent pointer
        ];
        let ip_sum = rfc1071(&expected[..20]);
        expected[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let mut pseudo = vec![10, 79, 1, 100, 10, 79, 1, 20, 0, 6, 0, 20];
        pseudo.extend_from_slice(&expected[20..]);
        let tcp_sum = rfc1071(&pseudo);
        expected[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
        // Known-good values (also computed with Python's straightforward RFC 1071 sum).
        assert_eq!(ip_sum, 0x23bb);
        assert_eq!(tcp_sum, 0xb7ba);
        assert_eq!(tickle_ack(server, client), expected);
    }

    #[test]
    fn tickle_checksums_verify_to_zero() {
        let packet = tickle_ack(v4([192, 0, 2, 1], 2049), v4([198, 51, 100, 7], 65535));
        assert_eq!(rfc1071(&packet[..20]), 0, "IPv4 header sums to all ones");
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&packet[12..20]);
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&packet[20..]);
        assert_eq!(
            rfc1071(&pseudo),
            0,
            "TCP segment with pseudo-header sums to all ones"
        );
    }
}

//! The virtual IP that NFS clients mount: added and removed with rtnetlink, announced
//! with gratuitous ARP from an `AF_PACKET` socket (rtnetlink sends none, and Linux
//! sends none when an IPv4 address is added).
//!
//! Everything here acts on the network namespace of the *calling thread*: the netlink
//! and packet sockets are opened on it, and a socket keeps the namespace it was opened
//! in. The agent may therefore call these from any tokio runtime, as long as that thread
//! is in the namespace that should hold the VIP (normally the whole process is).
//!
//! Taking over (DESIGN.md §4): [`Vip::add`], then [`Vip::announce`] with
//! [`GarpConfig::once`] *before* sending tickle ACKs (`drivers::tickle`), so that the
//! clients' answers reach this node's MAC and not the dead node's; then, if wanted, the
//! repeats with [`Vip::announce`] in the background. Standing down: [`Vip::remove`].
//!
//! Kernel quirk worth knowing: if the VIP is the *primary* address of its subnet on the
//! interface (no other address of that subnet was there first), deleting it also deletes
//! the secondaries of that subnet unless `net.ipv4.conf.<if>.promote_secondaries=1`.
//! Give the interface its own fixed address in the VIP's subnet.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use thiserror::Error;
use tokio::task::JoinHandle;

/// Deadline for one whole operation (connect, look up, change, dump).
pub const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;
const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;

#[derive(Debug, Error)]
pub enum VipError {
    /// No interface of that name in this network namespace.
    #[error("interface {interface} not found")]
    InterfaceNotFound { interface: String },
    /// The VIP is already assigned to another interface of this host; a second copy
    /// would answer ARP from two places.
    #[error("VIP {address} is already on interface {interface}, not on {wanted}")]
    OnOtherInterface {
        address: Ipv4Addr,
        interface: String,
        wanted: String,
    },
    /// The VIP is on the right interface but with another prefix length.
    #[error("VIP {address} is on {interface} as /{present}, configured /{wanted}")]
    OtherPrefix {
        address: Ipv4Addr,
        interface: String,
        present: u8,
        wanted: u8,
    },
    /// The interface has no Ethernet address, so gratuitous ARP cannot be sent on it.
    #[error("interface {interface} has no Ethernet address (got {len} bytes)")]
    NoHardwareAddress { interface: String, len: usize },
    /// Opening the netlink socket failed.
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a netlink request.
    #[error("netlink {what} for {address} on {interface}: {source}")]
    Netlink {
        what: &'static str,
        address: Ipv4Addr,
        interface: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// The operation did not finish within its deadline.
    #[error("{what} for VIP {address} on {interface} did not finish within {timeout:?}")]
    TimedOut {
        what: &'static str,
        address: Ipv4Addr,
        interface: String,
        timeout: Duration,
    },
    /// Sending a gratuitous ARP frame failed.
    #[error("sending gratuitous ARP for {address} on {interface}: {source}")]
    Garp {
        address: Ipv4Addr,
        interface: String,
        #[source]
        source: io::Error,
    },
}

/// What [`Vip::add`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The address was added now.
    New,
    /// It was already on the interface with this prefix; nothing changed.
    AlreadyPresent,
}

/// What [`Vip::remove`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// The address was on the interface and is now gone.
    Removed,
    /// It was not there (or the interface itself is gone); nothing changed.
    WasAbsent,
}

/// How many gratuitous ARPs [`Vip::announce`] sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GarpConfig {
    /// Rounds after the first one (0: send once). A lost announcement leaves a client
    /// talking to the dead node's MAC until its neighbour entry is re-probed (seconds).
    pub repeat: u32,
    /// Pause between rounds.
    pub interval: Duration,
    /// Also send the ARP reply form in each round (some switches and old stacks only
    /// learn from replies); the request form (RFC 5227 §2.3 announcement) is always sent.
    pub reply_form: bool,
}

impl GarpConfig {
    /// One request-form announcement, no repeats: what goes out before the tickle ACKs.
    pub fn once() -> Self {
        GarpConfig {
            repeat: 0,
            interval: Duration::ZERO,
            reply_form: false,
        }
    }
}

impl Default for GarpConfig {
    fn default() -> Self {
        GarpConfig {
            repeat: 0,
            interval: Duration::from_secs(1),
            reply_form: false,
        }
    }
}

/// The VIP as configured: an IPv4 address with its prefix on a named interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// The interface that carries the VIP (looked up by name in the calling thread's
    /// network namespace on every call, so a re-created interface is found again).
    pub interface: String,
}

/// A netlink connection whose driver task is aborted when this is dropped (also when
/// the operation is cancelled by its timeout), so no task outlives the call.
struct Netlink {
    handle: rtnetlink::Handle,
    task: JoinHandle<()>,
}

impl Netlink {
    fn open() -> Result<Self, VipError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(VipError::Socket)?;
        let task = tokio::spawn(connection);
        Ok(Netlink { handle, task })
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An interface as netlink reports it.
struct Link {
    index: u32,
    mac: Vec<u8>,
}

fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

fn link_from(message: LinkMessage) -> Link {
    let mac = message
        .attributes
        .into_iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => Some(mac),
            _ => None,
        })
        .unwrap_or_default();
    Link {
        index: message.header.index,
        mac,
    }
}

/// The IPv4 address an address message carries (`IFA_LOCAL`, which differs from
/// `IFA_ADDRESS` only on point-to-point links, where `IFA_ADDRESS` is the peer).
fn local_v4(message: &AddressMessage) -> Option<Ipv4Addr> {
    let mut fallback = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(IpAddr::V4(a)) => return Some(*a),
            AddressAttribute::Address(IpAddr::V4(a)) => fallback = Some(*a),
            _ => {}
        }
    }
    fallback
}

impl Vip {
    pub fn new(address: Ipv4Addr, prefix_len: u8, interface: impl Into<String>) -> Self {
        Vip {
            address,
            prefix_len,
            interface: interface.into(),
        }
    }

    fn netlink_error(&self, what: &'static str, source: rtnetlink::Error) -> VipError {
        VipError::Netlink {
            what,
            address: self.address,
            interface: self.interface.clone(),
            source,
        }
    }

    async fn with_timeout<T>(
        &self,
        what: &'static str,
        work: impl Future<Output = Result<T, VipError>>,
    ) -> Result<T, VipError> {
        match tokio::time::timeout(NETLINK_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => Err(VipError::TimedOut {
                what,
                address: self.address,
                interface: self.interface.clone(),
                timeout: NETLINK_TIMEOUT,
            }),
        }
    }

    /// Adds the VIP to its interface. Idempotent: already there with this prefix is
    /// `Ok(Added::AlreadyPresent)`. Refuses ([`VipError::OnOtherInterface`]) when the
    /// address is on another interface of this host. Sends no ARP: see [`Vip::announce`].
    pub async fn add(&self) -> Result<Added, VipError> {
        self.with_timeout("add", async {
            let nl = Netlink::open()?;
            let link = self.link(&nl).await?.ok_or_else(|| self.not_found())?;
            if self.check_existing(&nl, link.index).await? {
                return Ok(Added::AlreadyPresent);
            }
            let request =
                nl.handle
                    .address()
                    .add(link.index, IpAddr::V4(self.address), self.prefix_len);
            match request.execute().await {
                Ok(()) => {
                    tracing::info!(vip = %self.address, interface = %self.interface, "VIP added");
                    Ok(Added::New)
                }
                // Someone added it between our dump and our add: judge what is there now.
                Err(e) if errno(&e) == Some(EEXIST) => {
                    if self.check_existing(&nl, link.index).await? {
                        Ok(Added::AlreadyPresent)
                    } else {
                        Err(self.netlink_error("add address", e))
                    }
                }
                Err(e) => Err(self.netlink_error("add address", e)),
            }
        })
        .await
    }

    /// Removes the VIP from its interface. Idempotent: absent is `Ok(Removed::WasAbsent)`,
    /// and so is a missing interface (its addresses went with it), so that standing down
    /// never fails on something already done.
    pub async fn remove(&self) -> Result<Removed, VipError> {
        self.with_timeout("remove", async {
            let nl = Netlink::open()?;
            let Some(link) = self.link(&nl).await? else {
                tracing::warn!(interface = %self.interface, "VIP interface is gone; nothing to remove");
                return Ok(Removed::WasAbsent);
            };
            let mut outcome = Removed::WasAbsent;
            for message in self.addresses(&nl).await? {
                if message.header.index != link.index {
                    continue;
                }
                match nl.handle.address().del(message).execute().await {
                    Ok(()) => outcome = Removed::Removed,
                    Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => {}
                    Err(e) => return Err(self.netlink_error("delete address", e)),
                }
            }
            if outcome == Removed::Removed {
                tracing::info!(vip = %self.address, interface = %self.interface, "VIP removed");
            }
            Ok(outcome)
        })
        .await
    }

    /// Whether the VIP is on its interface (with any prefix length).
    pub async fn is_present(&self) -> Result<bool, VipError> {
        self.with_timeout("is_present", async {
            let nl = Netlink::open()?;
            let link = self.link(&nl).await?.ok_or_else(|| self.not_found())?;
            Ok(self
                .addresses(&nl)
                .await?
                .iter()
                .any(|m| m.header.index == link.index))
        })
        .await
    }

    /// Sends gratuitous ARP for the VIP out of its interface: `1 + config.repeat` rounds,
    /// `config.interval` apart. Each round is sent as a whole even if an earlier one
    /// failed; the first error is returned at the end. Only the netlink look-up has the
    /// [`NETLINK_TIMEOUT`]; the frames go out without blocking.
    pub async fn announce(&self, config: &GarpConfig) -> Result<(), VipError> {
        let link = self
            .with_timeout("interface look-up", async {
                let nl = Netlink::open()?;
                self.link(&nl).await?.ok_or_else(|| self.not_found())
            })
            .await?;
        let mac: [u8; 6] =
            link.mac
                .as_slice()
                .try_into()
                .map_err(|_| VipError::NoHardwareAddress {
                    interface: self.interface.clone(),
                    len: link.mac.len(),
                })?;
        let mut frames = vec![gratuitous_arp_frame(mac, self.address)];
        if config.reply_form {
            frames.push(gratuitous_arp_reply_frame(mac, self.address));
        }
        let mut first_error = None;
        for round in 0..=config.repeat {
            if round > 0 {
                tokio::time::sleep(config.interval).await;
            }
            if let Err(source) = raw::send_frames(link.index, &frames) {
                tracing::warn!(vip = %self.address, interface = %self.interface, round, error = %source, "gratuitous ARP failed");
                first_error.get_or_insert(VipError::Garp {
                    address: self.address,
                    interface: self.interface.clone(),
                    source,
                });
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn not_found(&self) -> VipError {
        VipError::InterfaceNotFound {
            interface: self.interface.clone(),
        }
    }

    /// The named interface, `None` when it does not exist.
    async fn link(&self, nl: &Netlink) -> Result<Option<Link>, VipError> {
        let mut links = nl
            .handle
            .link()
            .get()
            .match_name(self.interface.clone())
            .execute();
        match links.try_next().await {
            Ok(Some(message)) => Ok(Some(link_from(message))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(self.netlink_error("get link", e)),
        }
    }

    /// Every IPv4 address entry of this namespace that carries the VIP.
    async fn addresses(&self, nl: &Netlink) -> Result<Vec<AddressMessage>, VipError> {
        let mut request = nl.handle.address().get();
        request.message_mut().header.family = AddressFamily::Inet;
        let all: Vec<AddressMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.netlink_error("dump addresses", e))?;
        Ok(all
            .into_iter()
            .filter(|m| local_v4(m) == Some(self.address))
            .collect())
    }

    /// `Ok(true)` when the VIP is already on `index` with our prefix, `Ok(false)` when
    /// it is nowhere, an error when it is elsewhere or with another prefix.
    async fn check_existing(&self, nl: &Netlink, index: u32) -> Result<bool, VipError> {
        let existing = self.addresses(nl).await?;
        if let Some(other) = existing.iter().find(|m| m.header.index != index) {
            let interface = self.link_name(nl, other.header.index).await;
            return Err(VipError::OnOtherInterface {
                address: self.address,
                interface,
                wanted: self.interface.clone(),
            });
        }
        match existing.first() {
            None => Ok(false),
            Some(m) if m.header.prefix_len == self.prefix_len => Ok(true),
            Some(m) => Err(VipError::OtherPrefix {
                address: self.address,
                interface: self.interface.clone(),
                present: m.header.prefix_len,
                wanted: self.prefix_len,
            }),
        }
    }

    /// The name of interface `index`, or `#<index>` if it cannot be read (only used
    /// for the error message).
    async fn link_name(&self, nl: &Netlink, index: u32) -> String {
        let mut links = nl.handle.link().get().match_index(index).execute();
        if let Ok(Some(message)) = links.try_next().await {
            for attribute in message.attributes {
                if let LinkAttribute::IfName(name) = attribute {
                    return name;
                }
            }
        }
        format!("#{index}")
    }
}

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
const BROADCAST: [u8; 6] = [0xff; 6];

fn arp_frame(op: u16, mac: [u8; 6], ip: Ipv4Addr, target_mac: [u8; 6]) -> [u8; 42] {
    let mut f = [0u8; 42];
    // Ethernet: broadcast destination, our source, type ARP.
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // ARP (RFC 826) for Ethernet/IPv4.
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&target_mac);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// A gratuitous ARP in request form (an RFC 5227 §2.3 announcement): Ethernet broadcast,
/// sender and target IP both `ip`, target MAC zero. Linux receivers update an existing
/// neighbour entry from it (and create one only with `arp_accept`).
pub fn gratuitous_arp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    arp_frame(ARPOP_REQUEST, mac, ip, [0; 6])
}

/// The reply form of the same announcement (`arping -A`): target MAC = sender MAC, as
/// Linux requires for a reply to count as gratuitous.
pub fn gratuitous_arp_reply_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    arp_frame(ARPOP_REPLY, mac, ip, mac)
}

/// The packet socket, through `nix`. One `unsafe` call is left: nix has no safe
/// constructor for a link-layer address (`LinkAddr`), so it is read from a
/// `sockaddr_ll` built here field by field.
mod raw {
    use nix::sys::socket::{
        AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, SockaddrLike, sendto, socket,
    };
    use std::io;
    use std::os::fd::AsRawFd;

    /// Where the frames go: out of interface `ifindex`, Ethernet broadcast.
    fn broadcast_on(ifindex: i32) -> io::Result<LinkAddr> {
        let mut sll_addr = [0u8; 8];
        sll_addr[..6].copy_from_slice(&super::BROADCAST);
        let to = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: super::ETH_P_ARP.to_be(),
            sll_ifindex: ifindex,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 6,
            sll_addr,
        };
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `to` is a fully initialised sockaddr_ll that outlives the call, and
        // `len` is its exact size; from_raw copies it and checks family and length.
        #[allow(unsafe_code)]
        let address = unsafe { LinkAddr::from_raw((&raw const to).cast(), Some(len)) };
        address.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
    }

    /// Sends each complete Ethernet frame once out of interface `ifindex`.
    pub(super) fn send_frames(ifindex: u32, frames: &[[u8; 42]]) -> io::Result<()> {
        let ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let to = broadcast_on(ifindex)?;
        // Protocol 0: this socket only sends, the kernel queues nothing for it to read.
        let socket = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        for frame in frames {
            // MSG_DONTWAIT: a fresh socket's send buffer holds these frames easily;
            // should it ever be full we report it rather than block the runtime.
            sendto(socket.as_raw_fd(), frame, &to, MsgFlags::MSG_DONTWAIT)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x78, 0x00, 0x00, 0x00, 0x0a];
    const IP: Ipv4Addr = Ipv4Addr::new(10, 78, 1, 100);

    #[test]
    fn request_form_frame_byte_for_byte() {
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // Ethernet destination: broadcast
            0x02, 0x78, 0x00, 0x00, 0x00, 0x0a, // Ethernet source
            0x08, 0x06,                         // EtherType ARP
            0x00, 0x01,                         // hardware type Ethernet
            0x08, 0x00,                         // protocol type IPv4
            0x06, 0x04,                         // address lengths
            0x00, 0x01,                         // op: request
            0x02, 0x78, 0x00, 0x00, 0x00, 0x0a, // sender MAC
            10, 78, 1, 100,                     // sender IP = VIP
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // target MAC: zero (RFC 5227)
            10, 78, 1, 100,                     // target IP = VIP
        ];
        assert_eq!(gratuitous_arp_frame(MAC, IP), expected);
    }

    #[test]
    fn reply_form_frame_byte_for_byte() {
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x02, 0x78, 0x00, 0x00, 0x00, 0x0a,
            0x08, 0x06,
            0x00, 0x01,
            0x08, 0x00,
            0x06, 0x04,
            0x00, 0x02,                         // op: reply
            0x02, 0x78, 0x00, 0x00, 0x00, 0x0a,
            10, 78, 1, 100,
            0x02, 0x78, 0x00, 0x00, 0x00, 0x0a, // target MAC = sender MAC
            10, 78, 1, 100,
        ];
        assert_eq!(gratuitous_arp_reply_frame(MAC, IP), expected);
    }

    #[test]
    fn garp_defaults_send_once() {
        assert_eq!(GarpConfig::default().repeat, 0);
        assert_eq!(GarpConfig::once().repeat, 0);
    }
}

//! Node ids that carry the node's NFS address, and the client CIDRs exports admit.
//!
//! A CSI node id is what NodeGetInfo returns and what ControllerPublishVolume receives
//! (through the CO). hanfs writes it as `<name>@<ip>`, e.g. `worker-3@10.0.0.23` or
//! `worker-3@fd00::23`: the controller stays stateless (DESIGN.md §8) yet knows which
//! address to add to a volume's export entry. The name is the Kubernetes node name; the
//! address is the one the node's NFS client connects from (the pod's `status.hostIP`
//! on a hostNetwork DaemonSet).
//!
//! A node id without `@` is not one of ours (a node plugin started without
//! `--node-address`, or an id invented by a test): [`NodeIdError::means_unknown_node`]
//! is true, and ControllerPublish answers NOT_FOUND. An id with a malformed name or
//! address is INVALID_ARGUMENT.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use thiserror::Error;

/// CSI NodeGetInfo: "The size of this field SHALL NOT exceed 256 bytes."
pub const MAX_NODE_ID_LEN: usize = 256;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NodeIdError {
    /// The node id is empty.
    #[error("node id is empty")]
    Empty,
    /// Longer than CSI allows.
    #[error("node id is {len} bytes long; at most {MAX_NODE_ID_LEN} are allowed")]
    TooLong { len: usize },
    /// No `@<address>` part: not an id a hanfs node plugin with an address hands out.
    #[error(
        "node id {shown:?} carries no NFS address (hanfs node ids are <name>@<ip>): start that node's \
         hanfs-node with --node-address (the chart sets it from status.hostIP)"
    )]
    NoAddress { shown: String },
    /// The name part is empty or has characters outside `[A-Za-z0-9._-]`.
    #[error(
        "node id {shown:?}: the name before '@' must be a node name (letters, digits, '.', '_', '-', \
         starting with a letter or digit)"
    )]
    BadName { shown: String },
    /// The part after `@` is not an IPv4 or IPv6 address.
    #[error("node id {shown:?}: {address:?} after '@' is not an IPv4 or IPv6 address")]
    BadAddress { shown: String, address: String },
}

impl NodeIdError {
    /// True when the id is well-formed for CSI but names no node hanfs can serve:
    /// ControllerPublish answers NOT_FOUND for those ("node does not exist").
    pub fn means_unknown_node(&self) -> bool {
        matches!(self, NodeIdError::NoAddress { .. })
    }
}

/// Shows at most 80 characters of untrusted input in an error message.
fn shown(input: &str) -> String {
    let mut s: String = input.chars().take(80).collect();
    if s.len() < input.len() {
        s.push('…');
    }
    s
}

/// `<name>@<ip>`: a node and the address its NFS client mounts from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId {
    name: String,
    address: IpAddr,
}

impl NodeId {
    /// Builds the id a node plugin reports. The name is checked like a parsed one.
    pub fn new(name: &str, address: IpAddr) -> Result<Self, NodeIdError> {
        Self::parse(&format!("{name}@{address}"))
    }

    pub fn parse(id: &str) -> Result<Self, NodeIdError> {
        if id.is_empty() {
            return Err(NodeIdError::Empty);
        }
        if id.len() > MAX_NODE_ID_LEN {
            return Err(NodeIdError::TooLong { len: id.len() });
        }
        // IPv6 addresses contain no '@', names may not: the first '@' splits.
        let Some((name, address)) = id.split_once('@') else {
            return Err(NodeIdError::NoAddress { shown: shown(id) });
        };
        let mut chars = name.chars();
        let name_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(NodeIdError::BadName { shown: shown(id) });
        }
        // `parse` accepts only the canonical textual forms (no zone ids, no brackets,
        // no ports), which is what an exports file takes.
        let address: IpAddr = address.parse().map_err(|_| NodeIdError::BadAddress {
            shown: shown(id),
            address: shown(address),
        })?;
        Ok(Self {
            name: name.to_owned(),
            address,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn address(&self) -> IpAddr {
        self.address
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.address)
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{shown:?} is not a CIDR (expected e.g. 10.0.0.0/16 or fd00::/64): {reason}")]
pub struct CidrError {
    shown: String,
    reason: &'static str,
}

/// A client network exports may admit, e.g. `10.0.0.0/16`. Host bits must be zero, so
/// a typo such as `10.0.0.5/16` is refused instead of silently meaning `10.0.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Every IPv4 and every IPv6 address.
    pub fn any() -> [Cidr; 2] {
        [
            Cidr {
                network: IpAddr::from([0u8; 4]),
                prefix: 0,
            },
            Cidr {
                network: IpAddr::from([0u16; 8]),
                prefix: 0,
            },
        ]
    }

    pub fn parse(text: &str) -> Result<Self, CidrError> {
        let err = |reason| CidrError {
            shown: shown(text),
            reason,
        };
        let (network, prefix) = text.split_once('/').ok_or_else(|| err("no '/<prefix>'"))?;
        let network: IpAddr = network.parse().map_err(|_| err("not an IP address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| err("the prefix length is out of range"))?;
        let cidr = Cidr { network, prefix };
        if cidr.masked(network) != Some(network) {
            return Err(err("host bits are set"));
        }
        Ok(cidr)
    }

    /// `address` with the host bits cleared, if it is of the same family.
    fn masked(&self, address: IpAddr) -> Option<IpAddr> {
        match (self.network, address) {
            (IpAddr::V4(_), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)))
            }
            (IpAddr::V6(_), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                Some(IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)))
            }
            _ => None,
        }
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        self.masked(address) == Some(self.network)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_round_trip_for_both_families() {
        for text in ["worker-3@10.0.0.23", "node.example.com@fd00::23"] {
            let id = NodeId::parse(text).unwrap();
            assert_eq!(id.to_string(), text);
        }
        let id = NodeId::new("client", "10.80.0.20".parse().unwrap()).unwrap();
        assert_eq!(id.name(), "client");
        assert_eq!(id.address(), "10.80.0.20".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn an_id_without_an_address_is_an_unknown_node_and_a_bad_one_is_invalid() {
        let unknown = NodeId::parse("some-fake-node-id").unwrap_err();
        assert!(unknown.means_unknown_node(), "{unknown:?}");
        assert!(unknown.to_string().contains("--node-address"), "{unknown}");
        for bad in [
            "n@999.1.1.1",
            "n@10.0.0.1:2049",
            "n@[fd00::1]",
            "n@fe80::1%eth0",
            "n@",
            "n@x@10.0.0.1",
        ] {
            let err = NodeId::parse(bad).unwrap_err();
            assert!(
                matches!(err, NodeIdError::BadAddress { .. }),
                "{bad}: {err:?}"
            );
            assert!(!err.means_unknown_node());
        }
        for bad in ["@10.0.0.1", "-n@10.0.0.1", "a b@10.0.0.1", "a/b@10.0.0.1"] {
            let err = NodeId::parse(bad).unwrap_err();
            assert!(matches!(err, NodeIdError::BadName { .. }), "{bad}: {err:?}");
        }
        assert_eq!(NodeId::parse("").unwrap_err(), NodeIdError::Empty);
        let long = format!("{}@10.0.0.1", "a".repeat(300));
        assert!(matches!(
            NodeId::parse(&long).unwrap_err(),
            NodeIdError::TooLong { .. }
        ));
    }

    #[test]
    fn cidrs_contain_their_addresses_only() {
        let net = Cidr::parse("10.80.0.0/24").unwrap();
        assert!(net.contains("10.80.0.20".parse().unwrap()));
        assert!(!net.contains("10.80.1.20".parse().unwrap()));
        assert!(!net.contains("fd00::1".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/64").unwrap();
        assert!(v6.contains("fd00::1".parse().unwrap()));
        assert!(!v6.contains("fd01::1".parse().unwrap()));
        let host = Cidr::parse("10.0.0.5/32").unwrap();
        assert!(host.contains("10.0.0.5".parse().unwrap()));
        assert!(!host.contains("10.0.0.6".parse().unwrap()));
        let [v4_any, v6_any] = Cidr::any();
        assert!(v4_any.contains("1.2.3.4".parse().unwrap()));
        assert!(v6_any.contains("::1".parse().unwrap()));
        assert_eq!(net.to_string(), "10.80.0.0/24");
        for bad in ["10.0.0.5/16", "10.0.0.0", "10.0.0.0/33", "x/8", "*", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_ids_never_panics_and_round_trips(input in ".{0,300}") {
            if let Ok(id) = NodeId::parse(&input) {
                prop_assert_eq!(NodeId::parse(&id.to_string()).unwrap(), id);
            }
        }
    }
}

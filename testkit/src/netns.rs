//! Private network topologies: a "core" namespace with a bridge, N member namespaces on
//! veth pairs, partitions by taking a member's bridge port down. Layout and commands live in
//! `e2e/netns/netns.sh`; this module owns the lifetime.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::cmd::{self, CmdError};

/// Prefix of every namespace this crate creates.
pub const PREFIX: &str = "hanfs-t-";
/// Prefix length of the topology's /24.
pub const PREFIX_LEN: u8 = 24;
/// Bound on one `netns.sh` call (`up` with many members is the slowest, ~20 ms a member).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one `ip` call.
const IP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`wait_for_neighbour`] looks.
const NEIGHBOUR_POLL: Duration = Duration::from_millis(25);

/// Distinguishes topologies of one process; with the pid it makes the namespace names unique.
static SEQ: AtomicU32 = AtomicU32::new(0);

/// Errors from creating or changing a topology.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `netns.sh` (or a command run in a namespace) failed or timed out.
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// `netns.sh up` printed something this module does not understand.
    #[error("unexpected output from netns.sh up: {0}")]
    Parse(String),
    /// A member index past the end.
    #[error("no member {index} (topology has {members})")]
    NoMember { index: usize, members: usize },
    /// `ip link` shows no MAC address for the interface.
    #[error("no MAC address for {dev} in {ns}")]
    NoMac { ns: String, dev: String },
}

/// One member namespace.
#[derive(Debug, Clone)]
struct Member {
    ns: String,
    ip: Ipv4Addr,
}

/// A private network: namespace `hanfs-t-<pid>-<seq>-core` holds bridge `br0` with
/// `10.77.<net>.1/24`; member *i* is namespace `hanfs-t-<pid>-<seq>-m<i>` with `eth0`
/// `10.77.<net>.<11+i>/24`, joined to the bridge by a veth pair (bridge port `v<i>`).
///
/// Topologies never see each other or a host interface, so their subnets may overlap; the
/// `<net>` octet only varies to make captures and logs easier to tell apart.
///
/// Dropping it kills every process still inside its namespaces and deletes them.
#[derive(Debug)]
pub struct Topology {
    /// `<pid>-<seq>`: the pid marks the owner, so [`cleanup_stale`] can tell a crashed run's
    /// leftovers from a concurrent test's live topology.
    id: String,
    core_ns: String,
    core_ip: Ipv4Addr,
    members: Vec<Member>,
    /// Set once the namespaces are deleted ([`Topology::destroy`]), so Drop does not repeat it.
    destroyed: bool,
}

impl Topology {
    /// Creates a core namespace and `members` member namespaces. Removes stale topologies
    /// of dead processes first ([`cleanup_stale`]).
    pub fn new(members: usize) -> Result<Self, Error> {
        cleanup_stale()?;
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{pid}-{seq}");
        let net = (pid.wrapping_mul(31).wrapping_add(seq.wrapping_mul(7))) % 250 + 1;
        let out = cmd::run(
            script().args(["up", &id, &net.to_string(), &members.to_string()]),
            SCRIPT_TIMEOUT,
        )
        .inspect_err(|_| {
            // The script rolls back its own failures, but not being killed on timeout; our
            // pid is alive, so cleanup_stale would not take these either.
            let _ = cmd::run(script().args(["down", &id]), SCRIPT_TIMEOUT);
        })?;
        // From here on, Drop cleans up even if parsing fails.
        let mut topo = Topology {
            id,
            core_ns: String::new(),
            core_ip: Ipv4Addr::UNSPECIFIED,
            members: Vec::new(),
            destroyed: false,
        };
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["core", ns, ip] => {
                    topo.core_ns = (*ns).to_owned();
                    topo.core_ip = ip.parse().map_err(|_| Error::Parse(line.to_owned()))?;
                }
                ["member", i, ns, ip] if i.parse() == Ok(topo.members.len()) => {
                    topo.members.push(Member {
                        ns: (*ns).to_owned(),
                        ip: ip.parse().map_err(|_| Error::Parse(line.to_owned()))?,
                    });
                }
                _ => return Err(Error::Parse(line.to_owned())),
            }
        }
        if topo.core_ns.is_empty() || topo.members.len() != members {
            return Err(Error::Parse(text.into_owned()));
        }
        Ok(topo)
    }

    /// `<pid>-<seq>`, the part shared by all namespace names of this topology.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The core namespace (bridge, servers such as kube-apiserver).
    pub fn core_ns(&self) -> &str {
        &self.core_ns
    }

    /// The bridge's address in the core namespace; every member reaches it.
    pub fn core_ip(&self) -> Ipv4Addr {
        self.core_ip
    }

    /// Number of member namespaces.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Member `i`'s namespace. Panics if `i >= members()` (a test bug).
    pub fn member_ns(&self, i: usize) -> &str {
        &self.members[i].ns
    }

    /// Member `i`'s address on `eth0`. Panics if `i >= members()` (a test bug).
    pub fn member_ip(&self, i: usize) -> Ipv4Addr {
        self.members[i].ip
    }

    /// Address `.host` in the topology's /24, for one a test adds itself (a VIP); the
    /// core has `.1`, the members `.11` upwards.
    pub fn subnet_ip(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.core_ip.octets();
        Ipv4Addr::new(a, b, c, host)
    }

    /// All namespaces of this topology, core first.
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.core_ns.clone())
            .chain(self.members.iter().map(|m| m.ns.clone()))
            .collect()
    }

    /// `cmd` rewritten to run inside `ns` (see [`command_in`]).
    pub fn command_in(&self, ns: &str, cmd: &Command) -> Command {
        command_in(ns, cmd)
    }

    /// Runs `cmd` inside `ns` within `timeout`; fails on a non-zero exit (see [`cmd::run`]).
    pub fn run_in(&self, ns: &str, cmd: &Command, timeout: Duration) -> Result<Output, Error> {
        Ok(cmd::run(&mut command_in(ns, cmd), timeout)?)
    }

    /// Partitions member `i` from everything: its bridge port goes down. The member keeps
    /// its address and route, so its packets are silently lost and connections stall,
    /// as on a broken link (not a fast "unreachable" error).
    pub fn cut(&self, i: usize) -> Result<(), Error> {
        self.link(i, "cut")
    }

    /// Undoes [`Topology::cut`] (and forgets neighbour entries that failed meanwhile, so
    /// the next connect works at once).
    pub fn heal(&self, i: usize) -> Result<(), Error> {
        self.link(i, "heal")
    }

    fn link(&self, i: usize, verb: &str) -> Result<(), Error> {
        if i >= self.members.len() {
            return Err(Error::NoMember {
                index: i,
                members: self.members.len(),
            });
        }
        cmd::run(
            script().args([verb, &self.id, &i.to_string()]),
            SCRIPT_TIMEOUT,
        )?;
        Ok(())
    }

    /// Kills the processes inside the namespaces and deletes them; what Drop does, with the
    /// error returned instead of printed.
    pub fn destroy(mut self) -> Result<(), Error> {
        self.destroy_inner()
    }

    fn destroy_inner(&mut self) -> Result<(), Error> {
        if self.destroyed {
            return Ok(());
        }
        self.destroyed = true;
        cmd::run(script().args(["down", &self.id]), SCRIPT_TIMEOUT)?;
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(e) = self.destroy_inner() {
            eprintln!(
                "testkit: deleting network namespaces {PREFIX}{}-*: {e}",
                self.id
            );
        }
    }
}

/// `cmd` (program, arguments, environment, working directory) wrapped in
/// `ip netns exec <ns>`. Stdio settings are not copied; set them on the result.
pub fn command_in(ns: &str, cmd: &Command) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        c.current_dir(dir);
    }
    c
}

/// Removes `hanfs-t-*` namespaces whose owning process (the pid in the name) is gone,
/// killing what still runs in them. Returns how many were removed. [`Topology::new`] calls
/// it, so a crashed earlier run never blocks the next one.
pub fn cleanup_stale() -> Result<usize, Error> {
    let out = cmd::run(script().arg("cleanup-stale"), SCRIPT_TIMEOUT)?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "removed N stale namespace(s)"
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// The `hanfs-t-*` namespaces that exist now (of any owner).
pub fn list() -> Result<Vec<String>, Error> {
    let out = cmd::run(script().arg("list"), SCRIPT_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Pids of the processes inside namespace `ns`.
pub fn pids(ns: &str) -> Result<Vec<u32>, Error> {
    let out = cmd::run(
        Command::new("ip").args(["netns", "pids", ns]),
        SCRIPT_TIMEOUT,
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Runs `ip -n <ns> <args…>` and returns its stdout.
pub fn ip(ns: &str, args: &[&str]) -> Result<String, Error> {
    let out = cmd::run(Command::new("ip").args(["-n", ns]).args(args), IP_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The MAC address of interface `dev` in `ns`.
pub fn link_mac(ns: &str, dev: &str) -> Result<String, Error> {
    word_after(&ip(ns, &["-o", "link", "show", "dev", dev])?, "link/ether").ok_or_else(|| {
        Error::NoMac {
            ns: ns.to_owned(),
            dev: dev.to_owned(),
        }
    })
}

/// The MAC that `ns` has for `address` on `dev` in its neighbour (ARP) table, if any.
pub fn neighbour_mac(ns: &str, dev: &str, address: Ipv4Addr) -> Result<Option<String>, Error> {
    let out = ip(ns, &["neigh", "show", &address.to_string(), "dev", dev])?;
    Ok(word_after(&out, "lladdr"))
}

/// Polls (every 25 ms, up to `timeout`) until `ns` maps `address` on `dev` to `mac`;
/// whether it did.
pub fn wait_for_neighbour(
    ns: &str,
    dev: &str,
    address: Ipv4Addr,
    mac: &str,
    timeout: Duration,
) -> Result<bool, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        if neighbour_mac(ns, dev, address)?.as_deref() == Some(mac) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(NEIGHBOUR_POLL);
    }
}

/// The word after `key` in `text`.
fn word_after(text: &str, key: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    words.by_ref().find(|w| *w == key)?;
    words.next().map(str::to_owned)
}

fn script() -> Command {
    let path: PathBuf = crate::e2e_path("netns/netns.sh");
    let mut c = Command::new("bash");
    c.arg(path);
    c
}

//! DRBD: observing one resource through `drbdsetup events2` and acting on it with
//! `drbdadm`.
//!
//! - [`parse_events2_line`] turns one `events2` line into an [`Event`] (pure).
//! - [`DrbdStatus`] is the state of the resource folded from events (pure): the agent's
//!   decision function reads it, never the raw lines.
//! - [`Drbd`] runs the tools: a `--now` snapshot ([`Drbd::status`]) and the commands
//!   the agent runs (promote, demote, resume I/O, dump the configuration). Bringing a
//!   resource up and connecting it is the operator's (or the test rig's) `drbdadm`.
//! - [`unsafe_options`] reads `drbdadm dump` text and names the options that undermine
//!   the safety rules of DESIGN.md §4 (pure).
//!
//! Both kernels we meet print the same `events2` grammar, because the userland is the
//! same (drbd-utils 9.x):
//! - DRBD 9 kernel → `drbdsetup` (drbd-utils `user/v9/drbdsetup_events2.c`): real node
//!   ids and connection names, `may_promote`/`promotion_score` on resources,
//!   `quorum`/`client`/`open` on devices, `path` objects, `done:` while resyncing.
//! - in-tree DRBD 8.4 kernel (Debian's) → drbdadm/drbdsetup exec `drbdsetup-84`
//!   (drbd-utils `user/v84/drbdsetup.c`, `print_notifications`/`event_key`): 8.4 has no
//!   node ids, so it prints a fake `peer-node-id:0` and `conn-name:peer` on connection,
//!   peer-device and helper lines, `minor:` on device and peer-device lines, no `done:`
//!   (only `out-of-sync:` with `--statistics`), and maps 8.4 connection states onto the
//!   DRBD 9 names (`WFConnection` → `Connecting`, `Connected` → `replication:Established`,
//!   but a disconnected peer device shows the 8.4 state, e.g. `replication:WFConnection`).

use crate::drivers::command::{self, CommandError};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

// ---------------------------------------------------------------------------------------
// One events2 line
// ---------------------------------------------------------------------------------------

/// What happened to the object named on the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Part of the initial state dump (all of `--now` output).
    Exists,
    Create,
    Change,
    Destroy,
    /// A user-mode helper (e.g. `fence-peer`) is being called.
    Call,
    /// A user-mode helper returned (`status:` holds its exit code).
    Response,
    /// DRBD 9.2+: a resource got a new name.
    Rename,
}

impl Action {
    fn parse(word: &str) -> Option<Action> {
        Some(match word {
            "exists" => Action::Exists,
            "create" => Action::Create,
            "change" => Action::Change,
            "destroy" => Action::Destroy,
            "call" => Action::Call,
            "response" => Action::Response,
            "rename" => Action::Rename,
            _ => return None,
        })
    }
}

/// Which DRBD object the line is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Resource,
    Device,
    Connection,
    PeerDevice,
    Path,
    Helper,
    /// An object type newer than this code; its fields are kept.
    Other(String),
}

impl Object {
    fn parse(word: &str) -> Object {
        match word {
            "resource" => Object::Resource,
            "device" => Object::Device,
            "connection" => Object::Connection,
            "peer-device" => Object::PeerDevice,
            "path" => Object::Path,
            "helper" => Object::Helper,
            other => Object::Other(other.to_owned()),
        }
    }
}

/// The `key:value` pairs of a line, in order. Unknown keys are kept, so newer drbd-utils
/// releases that add fields do not break parsing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// The value of `key`, if the line has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// What one line says.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// `<action> <object> key:value…`
    Object {
        action: Action,
        object: Object,
        fields: Fields,
    },
    /// `exists -`: the initial state dump is complete (the end of `--now` output; in
    /// streaming mode, changes follow).
    InitialStateDone,
    /// `- skipped N`: N notifications were lost (netlink buffer overrun); the folded
    /// state may be wrong until it is read afresh.
    Skipped(u64),
}

/// One parsed `drbdsetup events2` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The `--timestamps` prefix as printed (`2024-05-02T10:11:12.123456+02:00`).
    pub timestamp: Option<String>,
    pub kind: EventKind,
}

impl Event {
    /// A field of an object line (`None` for the markers).
    pub fn field(&self, key: &str) -> Option<&str> {
        match &self.kind {
            EventKind::Object { fields, .. } => fields.get(key),
            _ => None,
        }
    }
}

/// A line that is not `events2` output.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("not a drbdsetup events2 line ({reason}): {line:?}")]
pub struct ParseError {
    pub line: String,
    pub reason: &'static str,
}

/// Parses one line of `drbdsetup events2 [--now] [--timestamps] [--statistics]`.
pub fn parse_events2_line(line: &str) -> Result<Event, ParseError> {
    let err = |reason| ParseError {
        line: line.to_owned(),
        reason,
    };
    let mut words = line.split_ascii_whitespace().peekable();
    let mut timestamp = None;
    if words.peek().is_some_and(|w| looks_like_timestamp(w)) {
        timestamp = words.next().map(str::to_owned);
    }
    let Some(first) = words.next() else {
        return Err(err("empty line"));
    };
    if first == "-" {
        // `- skipped N`, printed by drbdsetup when netlink sequence numbers jump.
        return match (
            words.next(),
            words.next().map(str::parse::<u64>),
            words.next(),
        ) {
            (Some("skipped"), Some(Ok(n)), None) => Ok(Event {
                timestamp,
                kind: EventKind::Skipped(n),
            }),
            _ => Err(err("a line starting with '-' must be '- skipped N'")),
        };
    }
    let action = Action::parse(first).ok_or_else(|| err("unknown action"))?;
    let object = words
        .next()
        .ok_or_else(|| err("no object after the action"))?;
    if object == "-" {
        if action != Action::Exists || words.next().is_some() {
            return Err(err("'-' object is only valid as 'exists -'"));
        }
        return Ok(Event {
            timestamp,
            kind: EventKind::InitialStateDone,
        });
    }
    if !object.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        return Err(err("object name is not a lowercase word"));
    }
    let mut fields = Vec::new();
    for word in words {
        // Split at the first ':' only: path addresses are `local:ipv4:10.0.0.1:7789`.
        let (key, value) = word
            .split_once(':')
            .ok_or_else(|| err("field without ':'"))?;
        let key_ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !key_ok {
            return Err(err("bad field name"));
        }
        fields.push((key.to_owned(), value.to_owned()));
    }
    Ok(Event {
        timestamp,
        kind: EventKind::Object {
            action,
            object: Object::parse(object),
            fields: Fields(fields),
        },
    })
}

/// `%04u-%02u-%02uT%02u:%02u:%02u.%06u%+03d:%02u` as drbdsetup prints it.
fn looks_like_timestamp(word: &str) -> bool {
    let b = word.as_bytes();
    b.len() >= 19
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
}

// ---------------------------------------------------------------------------------------
// State values
// ---------------------------------------------------------------------------------------

/// A node's role (`role:` of a resource = ours; `role:` of a connection = the peer's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Primary,
    Secondary,
    /// DRBD's own "Unknown" (the peer's role while disconnected).
    Unknown,
    Other(String),
}

impl Role {
    pub fn parse(s: &str) -> Role {
        match s {
            "Primary" => Role::Primary,
            "Secondary" => Role::Secondary,
            "Unknown" => Role::Unknown,
            other => Role::Other(other.to_owned()),
        }
    }
}

/// A disk state (`disk:` ours, `peer-disk:` the peer's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskState {
    Diskless,
    Attaching,
    Detaching,
    Failed,
    Negotiating,
    Inconsistent,
    Outdated,
    /// The peer's disk while disconnected ("DUnknown").
    DUnknown,
    Consistent,
    UpToDate,
    Other(String),
}

impl DiskState {
    pub fn parse(s: &str) -> DiskState {
        match s {
            "Diskless" => DiskState::Diskless,
            "Attaching" => DiskState::Attaching,
            "Detaching" => DiskState::Detaching,
            "Failed" => DiskState::Failed,
            "Negotiating" => DiskState::Negotiating,
            "Inconsistent" => DiskState::Inconsistent,
            "Outdated" => DiskState::Outdated,
            "DUnknown" => DiskState::DUnknown,
            "Consistent" => DiskState::Consistent,
            "UpToDate" => DiskState::UpToDate,
            other => DiskState::Other(other.to_owned()),
        }
    }
}

/// The state of the connection to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not trying to connect (after `disconnect`, a split brain, or an auth failure).
    StandAlone,
    Disconnecting,
    Unconnected,
    Timeout,
    BrokenPipe,
    NetworkFailure,
    ProtocolError,
    TearDown,
    /// Trying to reach the peer (8.4's raw name: `WFConnection`).
    Connecting,
    Connected,
    Other(String),
}

impl ConnectionState {
    pub fn parse(s: &str) -> ConnectionState {
        match s {
            "StandAlone" => ConnectionState::StandAlone,
            "Disconnecting" => ConnectionState::Disconnecting,
            "Unconnected" => ConnectionState::Unconnected,
            "Timeout" => ConnectionState::Timeout,
            "BrokenPipe" => ConnectionState::BrokenPipe,
            "NetworkFailure" => ConnectionState::NetworkFailure,
            "ProtocolError" => ConnectionState::ProtocolError,
            "TearDown" => ConnectionState::TearDown,
            // drbdsetup-84 translates C_WF_CONNECTION to "Connecting"; the raw 8.4 name is
            // accepted too in case a tool prints it untranslated.
            "Connecting" | "WFConnection" => ConnectionState::Connecting,
            // 8.4 keeps one state per connection *and* volume; should a connection line
            // ever carry a per-volume state, every one of them implies a live connection.
            "Connected" | "WFReportParams" | "StartingSyncS" | "StartingSyncT" | "WFBitMapS"
            | "WFBitMapT" | "WFSyncUUID" | "SyncSource" | "SyncTarget" | "VerifyS" | "VerifyT"
            | "PausedSyncS" | "PausedSyncT" | "Ahead" | "Behind" => ConnectionState::Connected,
            other => ConnectionState::Other(other.to_owned()),
        }
    }
}

/// The replication state of the peer device (`replication:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationState {
    /// Not replicating (no connection).
    Off,
    /// Connected and in sync.
    Established,
    StartingSyncSource,
    StartingSyncTarget,
    WFBitMapS,
    WFBitMapT,
    WFSyncUUID,
    SyncSource,
    SyncTarget,
    VerifyS,
    VerifyT,
    PausedSyncS,
    PausedSyncT,
    Ahead,
    Behind,
    Other(String),
}

impl ReplicationState {
    pub fn parse(s: &str) -> ReplicationState {
        use ReplicationState as R;
        match s {
            // drbdsetup-84 prints the 8.4 connection state of a disconnected volume here
            // (only WFReportParams→Off and Connected→Established are translated).
            "Off" | "StandAlone" | "Disconnecting" | "Unconnected" | "Timeout" | "BrokenPipe"
            | "NetworkFailure" | "ProtocolError" | "TearDown" | "WFConnection"
            | "WFReportParams" => R::Off,
            "Established" | "Connected" => R::Established,
            "StartingSyncSource" | "StartingSyncS" => R::StartingSyncSource,
            "StartingSyncTarget" | "StartingSyncT" => R::StartingSyncTarget,
            "WFBitMapS" => R::WFBitMapS,
            "WFBitMapT" => R::WFBitMapT,
            "WFSyncUUID" => R::WFSyncUUID,
            "SyncSource" => R::SyncSource,
            "SyncTarget" => R::SyncTarget,
            "VerifyS" => R::VerifyS,
            "VerifyT" => R::VerifyT,
            "PausedSyncS" => R::PausedSyncS,
            "PausedSyncT" => R::PausedSyncT,
            "Ahead" => R::Ahead,
            "Behind" => R::Behind,
            other => R::Other(other.to_owned()),
        }
    }

    /// A resync is running, starting, or paused.
    pub fn is_resync(&self) -> bool {
        use ReplicationState as R;
        matches!(
            self,
            R::StartingSyncSource
                | R::StartingSyncTarget
                | R::WFBitMapS
                | R::WFBitMapT
                | R::WFSyncUUID
                | R::SyncSource
                | R::SyncTarget
                | R::PausedSyncS
                | R::PausedSyncT
        )
    }
}

/// Why I/O on the resource is frozen (`suspended:` is a comma list, or `no`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuspendReason {
    /// `drbdadm suspend-io`.
    User,
    /// `on-no-data-accessible suspend-io` and no UpToDate data reachable.
    NoData,
    /// `fencing resource-and-stonith`: frozen until the fence-peer handler answers.
    Fencing,
    /// DRBD 9 quorum lost with `on-no-quorum suspend-io`.
    Quorum,
    Other(String),
}

fn parse_suspended(s: &str) -> Vec<SuspendReason> {
    if s == "no" {
        return Vec::new();
    }
    s.split(',')
        .filter(|r| !r.is_empty())
        .map(|r| match r {
            "user" => SuspendReason::User,
            "no-data" => SuspendReason::NoData,
            "fencing" => SuspendReason::Fencing,
            "quorum" => SuspendReason::Quorum,
            other => SuspendReason::Other(other.to_owned()),
        })
        .collect()
}

fn parse_yes_no(s: &str) -> Option<bool> {
    match s {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// The folded state
// ---------------------------------------------------------------------------------------

/// The state of one resource, folded from `events2` lines.
///
/// hanfs runs one volume (0) between two nodes, so there is one device and at most one
/// connection: lines about other volumes are ignored, and the last connection line
/// wins. `None` means DRBD has not reported that object (or destroyed it), which is not
/// the same as any state value: a resource with no connection configured is not
/// StandAlone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrbdStatus {
    /// The kernel knows the resource (`drbdadm up` has run and `down` has not).
    pub resource_up: bool,
    pub role: Option<Role>,
    /// Empty when I/O flows.
    pub suspended: Vec<SuspendReason>,
    /// DRBD 9 only: DRBD's own opinion on whether promotion would succeed.
    pub may_promote: Option<bool>,
    /// Our disk.
    pub disk: Option<DiskState>,
    /// DRBD 9 only.
    pub quorum: Option<bool>,
    pub connection: Option<ConnectionState>,
    /// The connection went StandAlone because of a split brain (`sync-state:SplitBrain`,
    /// DRBD 9 only; on 8.4 only the kernel log says so).
    pub split_brain: bool,
    pub peer_role: Option<Role>,
    pub peer_disk: Option<DiskState>,
    pub replication: Option<ReplicationState>,
    /// Resync progress in percent (DRBD 9 prints `done:` while resyncing; 8.4 does not).
    pub sync_percent: Option<f64>,
    /// KiB still to resync (`out-of-sync:`, with `--statistics`, both kernels).
    pub out_of_sync_kib: Option<u64>,
    /// The initial state dump ended (`exists -` seen).
    pub complete: bool,
    /// Notifications were lost (`- skipped`): read the state afresh before trusting it.
    pub stale: bool,
}

impl DrbdStatus {
    /// Folds one event into the state.
    pub fn apply(&mut self, event: &Event) {
        let (action, object, fields) = match &event.kind {
            EventKind::InitialStateDone => {
                self.complete = true;
                return;
            }
            EventKind::Skipped(_) => {
                self.stale = true;
                return;
            }
            EventKind::Object {
                action,
                object,
                fields,
            } => (action, object, fields),
        };
        let destroyed = *action == Action::Destroy;
        let other_volume = fields.get("volume").is_some_and(|v| v != "0");
        match object {
            Object::Resource => self.apply_resource(destroyed, fields),
            Object::Device if !other_volume => {
                if destroyed {
                    self.disk = None;
                    self.quorum = None;
                    return;
                }
                if let Some(disk) = fields.get("disk") {
                    self.disk = Some(DiskState::parse(disk));
                }
                if let Some(q) = fields.get("quorum").and_then(parse_yes_no) {
                    self.quorum = Some(q);
                }
            }
            Object::Connection => {
                if destroyed {
                    self.clear_connection();
                    return;
                }
                if let Some(state) = fields.get("connection") {
                    self.connection = Some(ConnectionState::parse(state));
                    // sync-state is printed only alongside a StandAlone state.
                    self.split_brain = fields.get("sync-state") == Some("SplitBrain");
                }
                // `role:` on a connection line is the peer's role (conn_role in both
                // drbdsetup versions). Should a tool print ours as `role:` and the peer's
                // as `peer-role:`, the explicit one wins.
                if let Some(role) = fields.get("peer-role").or_else(|| fields.get("role")) {
                    self.peer_role = Some(Role::parse(role));
                }
            }
            Object::PeerDevice if !other_volume => {
                if destroyed {
                    self.peer_disk = None;
                    self.replication = None;
                    self.sync_percent = None;
                    self.out_of_sync_kib = None;
                    return;
                }
                if let Some(repl) = fields.get("replication") {
                    let repl = ReplicationState::parse(repl);
                    if !repl.is_resync() {
                        self.sync_percent = None;
                    }
                    self.replication = Some(repl);
                }
                if let Some(disk) = fields.get("peer-disk") {
                    self.peer_disk = Some(DiskState::parse(disk));
                }
                if let Some(done) = fields.get("done").and_then(|d| d.parse::<f64>().ok()) {
                    self.sync_percent = Some(done);
                }
                if let Some(oos) = fields
                    .get("out-of-sync")
                    .and_then(|d| d.parse::<u64>().ok())
                {
                    self.out_of_sync_kib = Some(oos);
                }
            }
            // Paths, helper calls, other volumes and future objects do not change the
            // summary.
            _ => {}
        }
    }

    fn apply_resource(&mut self, destroyed: bool, fields: &Fields) {
        if destroyed {
            *self = DrbdStatus {
                complete: self.complete,
                stale: self.stale,
                ..DrbdStatus::default()
            };
            return;
        }
        self.resource_up = true;
        if let Some(role) = fields.get("role") {
            self.role = Some(Role::parse(role));
        }
        if let Some(s) = fields.get("suspended") {
            self.suspended = parse_suspended(s);
        }
        if let Some(p) = fields.get("may_promote").and_then(parse_yes_no) {
            self.may_promote = Some(p);
        }
    }

    fn clear_connection(&mut self) {
        self.connection = None;
        self.split_brain = false;
        self.peer_role = None;
        self.peer_disk = None;
        self.replication = None;
        self.sync_percent = None;
        self.out_of_sync_kib = None;
    }

    /// Folds a whole `drbdsetup events2 --now` dump. Lines that do not parse are logged
    /// and skipped (forward compatibility); check [`DrbdStatus::complete`].
    pub fn from_now_dump<'a>(lines: impl IntoIterator<Item = &'a str>) -> DrbdStatus {
        let mut status = DrbdStatus::default();
        for line in lines {
            if line.trim().is_empty() {
                continue;
            }
            match parse_events2_line(line) {
                Ok(event) => status.apply(&event),
                Err(err) => tracing::warn!(%err, "skipping a drbdsetup events2 line"),
            }
        }
        status
    }

    pub fn is_primary(&self) -> bool {
        self.role == Some(Role::Primary)
    }

    pub fn is_connected(&self) -> bool {
        self.connection == Some(ConnectionState::Connected)
    }

    pub fn local_up_to_date(&self) -> bool {
        self.disk == Some(DiskState::UpToDate)
    }

    pub fn peer_up_to_date(&self) -> bool {
        self.peer_disk == Some(DiskState::UpToDate)
    }

    pub fn io_suspended(&self) -> bool {
        !self.suspended.is_empty()
    }
}

// ---------------------------------------------------------------------------------------
// Running drbdadm / drbdsetup
// ---------------------------------------------------------------------------------------

#[derive(Debug, Error)]
pub enum DrbdError {
    /// drbdadm does not know the resource: it is not in the configuration files.
    #[error(
        "DRBD resource {resource:?} is not defined in the drbd configuration ({action}): {stderr}"
    )]
    NoSuchResource {
        resource: String,
        action: &'static str,
        stderr: String,
    },
    /// The configuration has the resource but the kernel does not (`drbdadm up` not run).
    #[error("DRBD resource {resource:?} is not up in the kernel ({action}): {stderr}")]
    ResourceDown {
        resource: String,
        action: &'static str,
        stderr: String,
    },
    /// DRBD refused the state change, e.g. promoting without UpToDate data, or while the
    /// peer is Primary.
    #[error("DRBD refused {action} of resource {resource:?}: {stderr}")]
    StateChangeRefused {
        resource: String,
        action: &'static str,
        stderr: String,
    },
    /// Any other failure of a DRBD tool (missing, timed out, failed).
    #[error("{action} of DRBD resource {resource:?}: {source}")]
    Command {
        resource: String,
        action: &'static str,
        #[source]
        source: CommandError,
    },
    /// `drbdsetup events2 --now` printed no `exists -` terminator.
    #[error("drbdsetup events2 --now {resource} ended without 'exists -'; output: {output:?}")]
    IncompleteDump { resource: String, output: String },
}

/// Which error a failed DRBD tool's stderr means.
fn classify(resource: &str, action: &'static str, source: CommandError) -> DrbdError {
    let resource = resource.to_owned();
    if let CommandError::Failed { stderr, .. } = &source {
        let stderr = stderr.clone();
        // drbdadm: "'r0' not defined in your config (for this host)."
        if stderr.contains("not defined in your config") {
            return DrbdError::NoSuchResource {
                resource,
                action,
                stderr,
            };
        }
        // kernel: "(158) Unknown resource"; drbdsetup: "r0: No such resource".
        if stderr.contains("Unknown resource") || stderr.contains("No such resource") {
            return DrbdError::ResourceDown {
                resource,
                action,
                stderr,
            };
        }
        // drbdsetup: "0: State change failed: (-2) Need access to UpToDate data".
        if stderr.contains("State change failed") {
            return DrbdError::StateChangeRefused {
                resource,
                action,
                stderr,
            };
        }
    }
    DrbdError::Command {
        resource,
        action,
        source,
    }
}

/// One DRBD resource and the tools to drive it.
#[derive(Debug, Clone)]
pub struct Drbd {
    /// `drbdadm` (a test double in tests).
    pub drbdadm: PathBuf,
    /// `drbdsetup` (a test double in tests).
    pub drbdsetup: PathBuf,
    pub resource: String,
    /// Deadline for each command; the child is killed when it passes.
    pub timeout: Duration,
}

impl Drbd {
    async fn drbdadm(
        &self,
        action: &'static str,
        args: &[&str],
    ) -> Result<command::Output, DrbdError> {
        let mut argv: Vec<&str> = args.to_vec();
        argv.push(&self.resource);
        tracing::info!(resource = %self.resource, ?argv, "drbdadm");
        command::run(&self.drbdadm.to_string_lossy(), &argv, self.timeout)
            .await
            .map_err(|source| classify(&self.resource, action, source))
    }

    /// The resource's state now (`drbdsetup events2 --now --statistics <res>`). A resource
    /// the kernel does not know comes back with `resource_up == false` (whether
    /// drbdsetup prints an empty dump or fails with "No such resource").
    pub async fn status(&self) -> Result<DrbdStatus, DrbdError> {
        let run = command::run(
            &self.drbdsetup.to_string_lossy(),
            ["events2", "--now", "--statistics", &self.resource],
            self.timeout,
        )
        .await;
        let out = match run.map_err(|source| classify(&self.resource, "events2 --now", source)) {
            Ok(out) => out,
            Err(DrbdError::ResourceDown { .. }) => {
                return Ok(DrbdStatus {
                    complete: true,
                    ..DrbdStatus::default()
                });
            }
            Err(err) => return Err(err),
        };
        let status = DrbdStatus::from_now_dump(out.stdout.lines());
        if !status.complete {
            return Err(DrbdError::IncompleteDump {
                resource: self.resource.clone(),
                output: out.stdout,
            });
        }
        Ok(status)
    }

    /// `drbdadm primary`. DRBD refuses without UpToDate data or with a Primary peer.
    pub async fn promote(&self) -> Result<(), DrbdError> {
        self.drbdadm("promote", &["primary"]).await.map(drop)
    }

    /// `drbdadm primary --force`: promotes even Outdated/Inconsistent data. Disaster
    /// recovery only (DESIGN.md §4 rule 4): whatever the peer wrote since our data was
    /// last current is lost once the peer resyncs from us.
    pub async fn force_promote(&self) -> Result<(), DrbdError> {
        tracing::warn!(
            resource = %self.resource,
            "FORCED promotion: this node's data may be stale; writes only the peer has are lost"
        );
        self.drbdadm("forced promote", &["primary", "--force"])
            .await
            .map(drop)
    }

    /// `drbdadm secondary`. Fails while the device is open (mounted).
    pub async fn demote(&self) -> Result<(), DrbdError> {
        self.drbdadm("demote", &["secondary"]).await.map(drop)
    }

    /// `drbdadm resume-io`: let frozen I/O continue (after the fence record is written).
    pub async fn resume_io(&self) -> Result<(), DrbdError> {
        self.drbdadm("resume-io", &["resume-io"]).await.map(drop)
    }

    /// `drbdadm dump <res>`: the effective configuration, for [`unsafe_options`].
    pub async fn dump_config(&self) -> Result<String, DrbdError> {
        self.drbdadm("dump", &["dump"]).await.map(|out| out.stdout)
    }
}

// ---------------------------------------------------------------------------------------
// Configuration check
// ---------------------------------------------------------------------------------------

/// `after-sb-*` policies that resolve a split brain by throwing away one side's writes
/// automatically. `disconnect`, `discard-zero-changes` (only discards a side that wrote
/// nothing), `consensus` and `call-pri-lost-after-sb` keep or defer to a safe 0pri policy.
fn discards_data(policy: &str) -> bool {
    matches!(
        policy,
        "discard-younger-primary"
            | "discard-older-primary"
            | "discard-least-changes"
            | "discard-secondary"
            | "violently-as0p"
    ) || policy.starts_with("discard-node-")
}

/// Warnings for options that undermine DESIGN.md §4's safety rules, from `drbdadm dump
/// <res>` output (use that, not `drbdsetup show`: only drbdadm knows the handlers, and
/// `drbdsetup show` omits default values). Pure; one sentence per finding.
///
/// Checked: fencing must be `resource-and-stonith` (or `resource-only`), no
/// `allow-two-primaries`, protocol C, a `fence-peer` handler, and no `after-sb-*`
/// policy that discards data automatically. Works for DRBD 8.4 (fencing in `disk {}`)
/// and 9 (fencing in `net {}`) alike.
pub fn unsafe_options(config_text: &str) -> Vec<String> {
    let mut warnings: Vec<String> = Vec::new();
    let mut warn = |w: String| {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    };
    let mut fencing_seen = false;
    let mut fence_peer_seen = false;
    for stmt in config_statements(config_text) {
        let Some((key, rest)) = stmt.words.split_first() else {
            continue;
        };
        let value = rest.first().map(String::as_str);
        match key.as_str() {
            "fencing" => {
                fencing_seen = true;
                match value {
                    Some("resource-and-stonith") | Some("resource-only") => {}
                    other => warn(format!(
                        "fencing is {:?}, not resource-and-stonith: on a lost connection the primary \
                         keeps writing without recording that the peer is outdated, so the peer may \
                         later be promoted with stale data",
                        other.unwrap_or("")
                    )),
                }
            }
            "allow-two-primaries" if value.is_none_or(|v| v == "yes") => warn(
                "allow-two-primaries is enabled: both nodes could be Primary and write at once \
                 (split brain by configuration)"
                    .to_owned(),
            ),
            "protocol" if value.is_some_and(|v| !v.eq_ignore_ascii_case("C")) => warn(format!(
                "protocol {} is asynchronous: writes acknowledged to NFS clients may not have \
                 reached the peer and are lost at failover; use protocol C",
                value.unwrap_or("")
            )),
            "fence-peer" if stmt.in_section("handlers") => fence_peer_seen = true,
            k @ ("after-sb-0pri" | "after-sb-1pri" | "after-sb-2pri") => {
                if let Some(v) = value.filter(|v| discards_data(v)) {
                    warn(format!(
                        "{k} {v} resolves a split brain by discarding one node's writes \
                         automatically; use disconnect (or discard-zero-changes for after-sb-0pri)"
                    ));
                }
            }
            _ => {}
        }
    }
    if !fencing_seen {
        warn(
            "fencing is not set (default dont-care): on a lost connection the primary keeps \
             writing without recording that the peer is outdated; set fencing resource-and-stonith"
                .to_owned(),
        );
    }
    if !fence_peer_seen {
        warn(
            "no fence-peer handler: nothing records in the Lease that the peer is outdated \
             before frozen I/O resumes"
                .to_owned(),
        );
    }
    warnings
}

/// One `key value…;` statement of a drbd.conf-style text and the sections around it.
#[derive(Debug)]
struct ConfigStatement {
    words: Vec<String>,
    /// Enclosing section headers, outermost first (`resource r0`, `handlers`, …).
    sections: Vec<String>,
}

impl ConfigStatement {
    fn in_section(&self, name: &str) -> bool {
        self.sections
            .iter()
            .any(|s| s.split_whitespace().next() == Some(name))
    }
}

/// Splits drbd.conf syntax into statements: `#` comments, `"quoted words"`, `{ }`
/// sections, `;` terminators. Tolerant: unbalanced braces do not fail.
fn config_statements(text: &str) -> Vec<ConfigStatement> {
    let mut out = Vec::new();
    let mut sections: Vec<String> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars();
    let flush_word = |word: &mut String, words: &mut Vec<String>| {
        if !word.is_empty() {
            words.push(std::mem::take(word));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                flush_word(&mut word, &mut words);
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    word.push(c);
                }
                // An empty quoted string is still a word.
                words.push(std::mem::take(&mut word));
            }
            '{' => {
                flush_word(&mut word, &mut words);
                sections.push(words.join(" "));
                words.clear();
            }
            '}' => {
                flush_word(&mut word, &mut words);
                if !words.is_empty() {
                    out.push(ConfigStatement {
                        words: std::mem::take(&mut words),
                        sections: sections.clone(),
                    });
                }
                sections.pop();
            }
            ';' => {
                flush_word(&mut word, &mut words);
                if !words.is_empty() {
                    out.push(ConfigStatement {
                        words: std::mem::take(&mut words),
                        sections: sections.clone(),
                    });
                }
            }
            c if c.is_whitespace() => flush_word(&mut word, &mut words),
            c => word.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(line: &str) -> (Action, Object, Fields) {
        match parse_events2_line(line).unwrap().kind {
            EventKind::Object {
                action,
                object,
                fields,
            } => (action, object, fields),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn markers_and_timestamps() {
        assert_eq!(
            parse_events2_line("exists -").unwrap().kind,
            EventKind::InitialStateDone
        );
        assert_eq!(
            parse_events2_line("- skipped 12").unwrap().kind,
            EventKind::Skipped(12)
        );
        // --timestamps prefix as printed by both drbdsetup versions
        // ("%04u-%02u-%02uT%02u:%02u:%02u.%06u%+03d:%02u ").
        let e = parse_events2_line(
            "2024-05-02T10:11:12.123456+02:00 change resource name:r0 role:Primary",
        )
        .unwrap();
        assert_eq!(
            e.timestamp.as_deref(),
            Some("2024-05-02T10:11:12.123456+02:00")
        );
        assert_eq!(e.field("role"), Some("Primary"));
        let e = parse_events2_line("2024-05-02T10:11:12.000001-05:00 exists -").unwrap();
        assert_eq!(e.kind, EventKind::InitialStateDone);
    }

    #[test]
    fn path_addresses_split_at_the_first_colon() {
        let (_, obj, f) = object(
            "exists path name:r0 peer-node-id:1 conn-name:beta local:ipv4:10.0.0.1:7789 \
             peer:ipv4:10.0.0.2:7789 established:yes",
        );
        assert_eq!(obj, Object::Path);
        assert_eq!(f.get("local"), Some("ipv4:10.0.0.1:7789"));
        assert_eq!(f.get("peer"), Some("ipv4:10.0.0.2:7789"));
    }

    #[test]
    fn garbage_is_rejected_with_the_line() {
        for line in [
            "",
            "   ",
            "hello world",
            "exists resource r0",
            "exists resource name:r0 :x",
            "change - name:r0",
            "- skipped",
            "- skipped many",
            "exists Resource name:r0",
        ] {
            let err = parse_events2_line(line).unwrap_err();
            assert_eq!(err.line, line);
        }
    }

    #[test]
    fn states_map_both_kernels_names() {
        assert_eq!(
            ConnectionState::parse("WFConnection"),
            ConnectionState::Connecting
        );
        assert_eq!(
            ConnectionState::parse("Connecting"),
            ConnectionState::Connecting
        );
        assert_eq!(
            ReplicationState::parse("WFConnection"),
            ReplicationState::Off
        );
        assert_eq!(
            ReplicationState::parse("StartingSyncS"),
            ReplicationState::StartingSyncSource
        );
        assert_eq!(
            DiskState::parse("Frobbed"),
            DiskState::Other("Frobbed".into())
        );
        assert_eq!(
            parse_suspended("user,fencing"),
            vec![SuspendReason::User, SuspendReason::Fencing]
        );
        assert!(parse_suspended("no").is_empty());
    }

    #[test]
    fn destroy_clears_what_it_names() {
        let mut s = DrbdStatus::from_now_dump([
            "exists resource name:r0 role:Primary suspended:no",
            "exists connection name:r0 peer-node-id:0 conn-name:peer connection:Connected role:Secondary",
            "exists peer-device name:r0 peer-node-id:0 conn-name:peer volume:0 minor:0 replication:Established peer-disk:UpToDate",
            "exists -",
        ]);
        assert!(s.is_connected() && s.peer_up_to_date());
        s.apply(
            &parse_events2_line("destroy connection name:r0 peer-node-id:0 conn-name:peer")
                .unwrap(),
        );
        assert_eq!(
            (
                s.connection.clone(),
                s.peer_disk.clone(),
                s.replication.clone()
            ),
            (None, None, None)
        );
        assert!(s.is_primary());
        s.apply(&parse_events2_line("destroy resource name:r0").unwrap());
        assert!(!s.resource_up && s.role.is_none() && s.complete);
    }

    #[test]
    fn split_brain_is_remembered_until_the_connection_state_changes() {
        let mut s = DrbdStatus::default();
        s.apply(
            &parse_events2_line(
                "change connection name:r0 peer-node-id:1 conn-name:beta connection:StandAlone sync-state:SplitBrain",
            )
            .unwrap(),
        );
        assert!(s.split_brain);
        s.apply(
            &parse_events2_line(
                "change connection name:r0 peer-node-id:1 conn-name:beta role:Unknown",
            )
            .unwrap(),
        );
        assert!(s.split_brain);
        s.apply(
            &parse_events2_line(
                "change connection name:r0 peer-node-id:1 conn-name:beta connection:Connecting",
            )
            .unwrap(),
        );
        assert!(!s.split_brain);
    }

    #[test]
    fn config_statements_handle_comments_quotes_and_nesting() {
        let stmts = config_statements(
            "# comment { ;\nresource r0 {\n handlers { fence-peer \"/usr/bin/x --a;b\"; } # x\n net { protocol C; }\n}\n",
        );
        let words: Vec<_> = stmts.iter().map(|s| s.words.join(" ")).collect();
        assert_eq!(words, ["fence-peer /usr/bin/x --a;b", "protocol C"]);
        assert!(stmts[0].in_section("handlers"));
        assert!(!stmts[1].in_section("handlers"));
    }
}

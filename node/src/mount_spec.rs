//! What to mount for a volume: pure decisions, no I/O.
//!
//! From the transport, the volume (a hanfs volume or a static one, see below), the volume
//! context (the controller puts the VIP in `server` and the export path in `share`),
//! `readonly` and the capability's `mount_flags` (the StorageClass's `mountOptions`), this
//! module decides the mount(2) arguments. The caller resolves host names and checks that
//! sources exist.
//!
//! mount(8) splits `-o` into VFS flags (`ro`, `nosuid`, ...) and filesystem options; a
//! raw mount(2) must do the same, because the NFS option parser rejects `nosuid`.
//!
//! # Static volumes (csi-driver-nfs style PersistentVolumes)
//!
//! A volume whose context has `subDir` (key matched case-insensitively, as csi-driver-nfs
//! and the controller's StorageClass parameters do) is *static*: an administrator wrote its
//! PV for a directory that already exists, and its handle is any string (csi-driver-nfs
//! uses `server#share#subdir[#uuid]`), never parsed as a hanfs id. Its directory is:
//!
//! - NFS transport: `<server>:<share>/<subDir>`, `server`/`share` from the context (keys
//!   case-insensitive), else the node's `--nfs-server`/`--nfs-share`.
//! - Local transport: `<local-export-root>/<subDir>`. The export root *is* the one share
//!   local mode serves, so `server` and `share` are checked like over NFS (a PV that is
//!   malformed there is malformed here) but do not move the directory. The resolved
//!   directory must lie strictly inside the export root after symlinks are resolved
//!   ([`check_confined`]).
//!
//! `subDir` must be relative (no leading `/`), name at least one directory, have no `.`,
//! `..` or whitespace-only components (runs of `/` and a trailing `/` are normalized
//! away), no `,` `:` or control characters, components of at most 255 bytes and at most
//! [`MAX_SUB_DIR_LEN`] bytes in all ([`SubDir::parse`]). The handle must not start with `v1/`:
//! NodeGetVolumeStats and NodeExpandVolume get no volume context, so the handle alone
//! must tell a static volume from a hanfs one ([`is_hanfs_shaped`]).

use common::ids::{VolumeDir, VolumeId};
use common::mountinfo::MountInfo;
use nix::mount::MsFlags;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Volume context key for the NFS server (the storage servers' VIP).
pub const CONTEXT_SERVER: &str = "server";
/// Volume context key for the export path on the NFS server.
pub const CONTEXT_SHARE: &str = "share";
/// Volume context key of a static volume's directory below the share (csi-driver-nfs's).
pub const CONTEXT_SUB_DIR: &str = "subDir";

/// Longest `subDir` accepted; the whole `host:/share/subDir` must fit the page mount(2)
/// copies its source into, with room for the share and server.
pub const MAX_SUB_DIR_LEN: usize = 1024;
/// Longest component of `subDir` (NAME_MAX).
pub const MAX_SUB_DIR_COMPONENT_LEN: usize = 255;
/// Longest static volume handle accepted. Longer than hanfs's own 128-byte ids, because a
/// csi-driver-nfs handle embeds server, share and subDir.
pub const MAX_STATIC_HANDLE_LEN: usize = 2048;
/// The prefix of every hanfs volume id (`v1/<cluster>/<dir>`).
const HANFS_ID_PREFIX: &str = "v1/";

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MountSpecError {
    /// A mount option that is empty or could smuggle in further options.
    #[error("mount option {option:?} is not allowed: {reason}")]
    BadOption {
        option: String,
        reason: &'static str,
    },
    /// Neither the volume context nor the node's flags name an NFS server.
    #[error(
        "no NFS server: the volume context has no {CONTEXT_SERVER:?} and the node has no --nfs-server"
    )]
    NoServer,
    /// The server name could be anything but a host name or an address.
    #[error("NFS server {0:?} is not a host name or IP address")]
    BadServer(String),
    /// The export path is not a clean absolute path.
    #[error("NFS share {0:?} must be an absolute path without '..', ',' or ':'")]
    BadShare(String),
    /// A static volume's `subDir` that could escape the share or confuse the mount.
    #[error("volume context subDir {shown:?} is not allowed: {reason}")]
    BadSubDir { shown: String, reason: &'static str },
    /// The same key twice, spelled differently, with different values.
    #[error(
        "volume context has both {first:?} and {second:?} with different values (keys are case-insensitive); keep one"
    )]
    AmbiguousContext { first: String, second: String },
    /// A static volume's handle that cannot be used.
    #[error("volume id {shown:?} cannot name a static volume: {reason}")]
    BadStaticHandle { shown: String, reason: &'static str },
    /// A static volume's directory that resolves (through a symlink) out of the export.
    #[error(
        "subDir {sub_dir:?} resolves to {} which is not inside the export root {}; symlinks must not lead out of the export",
        resolved.display(),
        root.display()
    )]
    OutsideExport {
        sub_dir: String,
        resolved: PathBuf,
        root: PathBuf,
    },
}

/// Shows at most 80 characters of untrusted input in an error message.
fn shown(input: &str) -> String {
    let mut s: String = input.chars().take(80).collect();
    if s.len() < input.len() {
        s.push('…');
    }
    s
}

/// A static volume's directory below the share: relative, components joined by single
/// `/`, none of them `.`, `..` or empty, safe to join to a share or an export root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubDir(String);

impl SubDir {
    /// Checks and normalizes a `subDir` from the volume context (see the module docs).
    pub fn parse(raw: &str) -> Result<Self, MountSpecError> {
        let bad = |reason| {
            Err(MountSpecError::BadSubDir {
                shown: shown(raw),
                reason,
            })
        };
        if raw.len() > MAX_SUB_DIR_LEN {
            return bad("it is longer than 1024 bytes");
        }
        if raw.chars().any(char::is_control) {
            return bad("it contains control characters");
        }
        if raw.contains(',') || raw.contains(':') {
            return bad("',' and ':' would be misread in the mount source or options");
        }
        if raw.starts_with('/') {
            return bad("it must be relative to the share (no leading '/')");
        }
        let mut parts = Vec::new();
        for part in raw.split('/') {
            match part {
                // Runs of '/' and a trailing '/' are normalized away.
                "" => {}
                "." | ".." => return bad("'.' and '..' components are not allowed"),
                part if part.len() > MAX_SUB_DIR_COMPONENT_LEN => {
                    return bad("a component is longer than 255 bytes");
                }
                part if part.trim().is_empty() => {
                    return bad("a component is only whitespace");
                }
                part => parts.push(part),
            }
        }
        if parts.is_empty() {
            return bad("it is empty; name a directory below the share");
        }
        Ok(Self(parts.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<Path> for SubDir {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

/// Whether `volume_id` has the shape of a hanfs volume id, so it is parsed as one and
/// never taken for a static volume's handle.
pub fn is_hanfs_shaped(volume_id: &str) -> bool {
    volume_id.starts_with(HANFS_ID_PREFIX)
}

/// A static volume's handle, as the PV's `volumeHandle` gives it: any string of at most
/// [`MAX_STATIC_HANDLE_LEN`] bytes without control characters (so also no NUL) that does
/// not look like a hanfs id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticHandle(String);

impl StaticHandle {
    pub fn parse(volume_id: &str) -> Result<Self, MountSpecError> {
        let bad = |reason| {
            Err(MountSpecError::BadStaticHandle {
                shown: shown(volume_id),
                reason,
            })
        };
        if volume_id.is_empty() {
            return bad("it is empty");
        }
        if volume_id.len() > MAX_STATIC_HANDLE_LEN {
            return bad("it is longer than 2048 bytes");
        }
        if volume_id.chars().any(char::is_control) {
            return bad("it contains control characters");
        }
        if is_hanfs_shaped(volume_id) {
            return bad(
                "ids starting with 'v1/' are hanfs volume ids; give the static PV another volumeHandle, e.g. <server>#<share>#<subDir>",
            );
        }
        Ok(Self(volume_id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StaticHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A static volume: a directory below the share that existed before its PV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticVolume {
    pub handle: StaticHandle,
    pub sub_dir: SubDir,
    /// The context's `server` (any key case), if it names one.
    pub server: Option<String>,
    /// The context's `share` (any key case), if it names one.
    pub share: Option<String>,
}

/// The value of `key` in the volume context, the key matched case-insensitively; the
/// same key spelled twice with different values is refused rather than picked at random.
fn context_value<'a>(
    context: &'a HashMap<String, String>,
    key: &str,
) -> Result<Option<&'a str>, MountSpecError> {
    let mut found: Option<(&String, &String)> = None;
    for (k, v) in context {
        if !k.eq_ignore_ascii_case(key) {
            continue;
        }
        match found {
            Some((first, value)) if value != v => {
                // Sorted, so the message does not depend on the map's order.
                let (first, second) = if first < k { (first, k) } else { (k, first) };
                return Err(MountSpecError::AmbiguousContext {
                    first: first.clone(),
                    second: second.clone(),
                });
            }
            Some(_) => {}
            None => found = Some((k, v)),
        }
    }
    Ok(found.map(|(_, v)| v.as_str()))
}

/// The static volume a request names, if its context has `subDir`; `None` for a hanfs
/// volume (the id is then parsed as `v1/<cluster>/<dir>` as before).
pub fn static_volume(
    volume_id: &str,
    context: &HashMap<String, String>,
) -> Result<Option<StaticVolume>, MountSpecError> {
    let Some(sub_dir) = context_value(context, CONTEXT_SUB_DIR)? else {
        return Ok(None);
    };
    let nonempty = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_owned);
    Ok(Some(StaticVolume {
        handle: StaticHandle::parse(volume_id)?,
        sub_dir: SubDir::parse(sub_dir)?,
        server: nonempty(context_value(context, CONTEXT_SERVER)?),
        share: nonempty(context_value(context, CONTEXT_SHARE)?),
    }))
}

/// The volume a stage or publish names: a hanfs volume, or a static one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeRef {
    Hanfs(VolumeId),
    Static(StaticVolume),
}

impl VolumeRef {
    /// Where the volume's directory is on the NFS server.
    pub fn nfs_location(
        &self,
        volume_context: &HashMap<String, String>,
        default_server: Option<&str>,
        default_share: &str,
    ) -> Result<NfsLocation, MountSpecError> {
        match self {
            VolumeRef::Hanfs(_) => nfs_location(volume_context, default_server, default_share),
            VolumeRef::Static(v) => checked_location(
                v.server.as_deref().or(default_server),
                v.share.as_deref().unwrap_or(default_share),
            ),
        }
    }

    /// The volume's path on the server: `<share>/volumes/<dir>` or `<share>/<subDir>`.
    pub fn nfs_path(&self, location: &NfsLocation) -> String {
        match self {
            VolumeRef::Hanfs(id) => location.volume_path(&id.dir),
            VolumeRef::Static(v) => format!("{}/{}", location.share, v.sub_dir),
        }
    }

    /// The volume's directory in local mode, before symlinks are resolved.
    pub fn local_source(&self, export_root: &Path) -> PathBuf {
        match self {
            VolumeRef::Hanfs(id) => local_source(export_root, &id.dir),
            VolumeRef::Static(v) => export_root.join(&v.sub_dir),
        }
    }
}

impl fmt::Display for VolumeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeRef::Hanfs(id) => id.fmt(f),
            VolumeRef::Static(v) => write!(f, "{} (subDir {})", v.handle, v.sub_dir),
        }
    }
}

/// Whether `resolved` (canonical) lies strictly inside `root` (canonical): a static
/// volume's directory may not be the export itself (that would hand every volume to one
/// PV) nor, through a symlink, anything outside it.
pub fn check_confined(
    root: &Path,
    resolved: &Path,
    sub_dir: &SubDir,
) -> Result<(), MountSpecError> {
    if resolved != root && resolved.starts_with(root) {
        Ok(())
    } else {
        Err(MountSpecError::OutsideExport {
            sub_dir: sub_dir.to_string(),
            resolved: resolved.to_owned(),
            root: root.to_owned(),
        })
    }
}

/// How the source reaches the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A bind mount of a local directory; the VFS flags need a second, remounting
    /// mount(2) (`MS_REMOUNT|MS_BIND|flags`), since a bind mount ignores them.
    Bind,
    /// An NFSv4 mount with this option string (the `data` argument of mount(2)).
    Nfs4 { data: String },
}

/// The arguments of the mount(2) call(s) for one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// A canonical directory (bind) or `host:/path` (NFS).
    pub source: String,
    pub kind: MountKind,
    /// VFS flags (`MS_RDONLY`, `MS_NOSUID`, ...); never `MS_BIND`/`MS_REMOUNT`.
    pub flags: MsFlags,
    /// Options the caller gave that this transport has no use for (NFS options in
    /// local mode); the caller logs them.
    pub ignored: Vec<String>,
}

impl MountSpec {
    pub fn read_only(&self) -> bool {
        self.flags.contains(MsFlags::MS_RDONLY)
    }

    pub fn fs_type(&self) -> Option<&'static str> {
        match self.kind {
            MountKind::Bind => None,
            MountKind::Nfs4 { .. } => Some("nfs4"),
        }
    }
}

/// VFS options as mount(8) knows them: name, flag, whether the name sets or clears it.
const VFS_OPTIONS: &[(&str, MsFlags, bool)] = &[
    ("ro", MsFlags::MS_RDONLY, true),
    ("rw", MsFlags::MS_RDONLY, false),
    ("nosuid", MsFlags::MS_NOSUID, true),
    ("suid", MsFlags::MS_NOSUID, false),
    ("nodev", MsFlags::MS_NODEV, true),
    ("dev", MsFlags::MS_NODEV, false),
    ("noexec", MsFlags::MS_NOEXEC, true),
    ("exec", MsFlags::MS_NOEXEC, false),
    ("sync", MsFlags::MS_SYNCHRONOUS, true),
    ("async", MsFlags::MS_SYNCHRONOUS, false),
    ("dirsync", MsFlags::MS_DIRSYNC, true),
    ("noatime", MsFlags::MS_NOATIME, true),
    ("atime", MsFlags::MS_NOATIME, false),
    ("nodiratime", MsFlags::MS_NODIRATIME, true),
    ("diratime", MsFlags::MS_NODIRATIME, false),
    ("relatime", MsFlags::MS_RELATIME, true),
    ("norelatime", MsFlags::MS_RELATIME, false),
    ("strictatime", MsFlags::MS_STRICTATIME, true),
    ("nostrictatime", MsFlags::MS_STRICTATIME, false),
    ("lazytime", MsFlags::MS_LAZYTIME, true),
    ("nolazytime", MsFlags::MS_LAZYTIME, false),
];

/// Options only mount(8) and fstab care about; the kernel would reject them.
fn is_userspace_only(option: &str) -> bool {
    matches!(
        option,
        "defaults" | "_netdev" | "nofail" | "auto" | "noauto" | "user" | "nouser" | "users"
    ) || option.starts_with("x-")
        || option.starts_with("comment=")
}

/// The VFS flags a remount or the helper's command line carries, by name.
pub fn flag_names(flags: MsFlags) -> Vec<&'static str> {
    VFS_OPTIONS
        .iter()
        .filter(|(_, flag, sets)| *sets && flags.contains(*flag))
        .map(|(name, _, _)| *name)
        .collect()
}

/// The inverse of [`flag_names`]; `None` for a name that is not a VFS flag.
pub fn flag_from_name(name: &str) -> Option<MsFlags> {
    VFS_OPTIONS
        .iter()
        .find(|(n, _, sets)| *n == name && *sets)
        .map(|(_, flag, _)| *flag)
}

/// Rejects options that would change more than themselves once joined with ','.
pub fn check_option(option: &str) -> Result<(), MountSpecError> {
    let bad = |reason| {
        Err(MountSpecError::BadOption {
            option: option.to_owned(),
            reason,
        })
    };
    if option.is_empty() {
        return bad("it is empty");
    }
    if let Some(value) = selinux_context_value(option) {
        return check_selinux_context(value).or_else(bad);
    }
    if option.contains(',') {
        return bad("',' would add further options; give each option as its own list item");
    }
    if option.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains whitespace or control characters");
    }
    // The kernel's option splitter (vfs_parse_comma_sep) keeps commas inside double
    // quotes, so a stray quote would swallow the options after it, the driver's addr=
    // too (found by fuzz/nfs_options). Only SELinux contexts are quoted, above.
    if option.contains('"') {
        return bad("'\"' is only allowed around a SELinux context");
    }
    if option.starts_with('=') || option.matches('=').count() > 1 {
        return bad("an option is `name` or `name=value`");
    }
    Ok(())
}

/// The SELinux mount options (kubelet adds `context=` to NodeStage and NodePublish when
/// the CSIDriver has `seLinuxMount: true` and the node runs SELinux). Their values are
/// SELinux labels, whose MCS part has commas (`s0:c1,c2`), so kubelet double-quotes them.
const SELINUX_CONTEXT_OPTIONS: &[&str] = &["context", "fscontext", "defcontext", "rootcontext"];

/// The value of a SELinux context option, quotes included; `None` for other options.
fn selinux_context_value(option: &str) -> Option<&str> {
    let (name, value) = option.split_once('=')?;
    SELINUX_CONTEXT_OPTIONS.contains(&name).then_some(value)
}

/// A context value must be one double-quoted label (or a bare one without commas): the
/// kernel's SELinux option parser takes everything between the quotes, commas too, and
/// strips the quotes, so a stray quote would swallow the options after it.
fn check_selinux_context(value: &str) -> Result<(), &'static str> {
    let label = match value.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or("a quoted SELinux context must end with '\"'")?,
        None if value.contains(',') => {
            return Err("a SELinux context with ',' must be double-quoted");
        }
        None => value,
    };
    if label.is_empty() {
        return Err("the SELinux context is empty");
    }
    if label.contains('"') || label.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a SELinux context has no quotes, whitespace or control characters inside");
    }
    if label.split(':').count() < 3 {
        return Err("a SELinux context is user:role:type[:level]");
    }
    Ok(())
}

/// Which default an option overrides: `nfsvers=4.1` replaces `vers=4.2`, `soft`
/// replaces `hard`, `resvport` replaces `noresvport`.
fn option_key(option: &str) -> &str {
    match option.split_once('=') {
        Some((name, _)) => match name {
            "nfsvers" => "vers",
            name => name,
        },
        None => match option {
            "soft" | "softerr" => "hard",
            "tcp" | "udp" | "rdma" => "proto",
            flag => flag.strip_prefix("no").unwrap_or(flag),
        },
    }
}

/// Splits user options into VFS flags and filesystem options.
fn split_options(
    mount_flags: &[String],
    readonly: bool,
) -> Result<(MsFlags, Vec<String>), MountSpecError> {
    let mut flags = MsFlags::empty();
    let mut fs_options = Vec::new();
    for option in mount_flags {
        check_option(option)?;
        if let Some((_, flag, sets)) = VFS_OPTIONS.iter().find(|(name, ..)| name == option) {
            flags.set(*flag, *sets);
        } else if !is_userspace_only(option) {
            fs_options.push(option.clone());
        }
    }
    // CSI `readonly` wins over an `rw` among the options.
    if readonly {
        flags.insert(MsFlags::MS_RDONLY);
    }
    Ok((flags, fs_options))
}

/// `<export_root>/volumes/<dir>`.
pub fn local_source(export_root: &Path, dir: &VolumeDir) -> PathBuf {
    export_root.join("volumes").join(dir)
}

/// A bind mount of `source` (an existing, canonical directory).
pub fn local(
    source: &Path,
    mount_flags: &[String],
    readonly: bool,
) -> Result<MountSpec, MountSpecError> {
    let (flags, ignored) = split_options(mount_flags, readonly)?;
    Ok(MountSpec {
        source: source.to_string_lossy().into_owned(),
        kind: MountKind::Bind,
        flags,
        ignored,
    })
}

/// Where a volume's NFS export lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsLocation {
    /// A host name or an IP address (IPv6 without brackets).
    pub server: String,
    /// The export path, absolute, without a trailing '/'.
    pub share: String,
}

impl NfsLocation {
    /// The server as an address, if it is one (else it needs resolving).
    pub fn server_ip(&self) -> Option<IpAddr> {
        self.server.parse().ok()
    }

    /// The path of a volume on the server: `<share>/volumes/<dir>`.
    pub fn volume_path(&self, dir: &VolumeDir) -> String {
        format!("{}/volumes/{dir}", self.share)
    }
}

/// The server and share for a hanfs volume: the volume context's, else the node's
/// defaults. The keys are matched exactly, as the controller writes them.
pub fn nfs_location(
    volume_context: &HashMap<String, String>,
    default_server: Option<&str>,
    default_share: &str,
) -> Result<NfsLocation, MountSpecError> {
    let nonempty = |key| {
        volume_context
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    checked_location(
        nonempty(CONTEXT_SERVER).or(default_server),
        nonempty(CONTEXT_SHARE).unwrap_or(default_share),
    )
}

/// Checks a server (a host name or an address, IPv6 perhaps in brackets) and a share (a
/// clean absolute path).
fn checked_location(server: Option<&str>, share: &str) -> Result<NfsLocation, MountSpecError> {
    let server = server.ok_or(MountSpecError::NoServer)?;
    let bare = server
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(server);
    let host_ok = !bare.is_empty()
        && bare.len() <= 253
        && (bare.parse::<IpAddr>().is_ok()
            || bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
    if !host_ok {
        return Err(MountSpecError::BadServer(server.to_owned()));
    }
    check_share(share)?;
    Ok(NfsLocation {
        server: bare.to_owned(),
        share: share.trim_end_matches('/').to_owned(),
    })
}

fn check_share(share: &str) -> Result<(), MountSpecError> {
    let share_ok = share.starts_with('/')
        && !share.split('/').any(|part| part == "..")
        && !share
            .chars()
            .any(|c| c == ',' || c == ':' || c.is_whitespace() || c.is_control());
    if share_ok {
        Ok(())
    } else {
        Err(MountSpecError::BadShare(share.to_owned()))
    }
}

/// Local transport: a static volume's `server` and `share` do not move its directory (the
/// export root is the one share), but are held to the rules they meet over NFS.
pub fn check_static_location_syntax(volume: &StaticVolume) -> Result<(), MountSpecError> {
    if let Some(server) = &volume.server {
        checked_location(Some(server), "/")?;
    }
    if let Some(share) = &volume.share {
        check_share(share)?;
    }
    Ok(())
}

/// An NFSv4 mount of `path` (see [`VolumeRef::nfs_path`]) from `location`, whose server
/// resolved to `addr`.
///
/// `base_options` are the node's (trusted, checked at start); `mount_flags` override
/// same-named ones. A raw mount(2) of `nfs4` needs `addr=`: mount.nfs normally adds it,
/// and without it the kernel fails with "bad option", so the driver owns it.
///
/// All volumes of one export share one NFS superblock on this node, so the first mount's
/// `timeo`/`retrans`/`noresvport` apply to every later mount of the same server unless
/// `nosharecache` is given; options that differ per StorageClass only take effect for
/// the first volume mounted.
pub fn nfs(
    location: &NfsLocation,
    addr: IpAddr,
    path: &str,
    base_options: &[String],
    mount_flags: &[String],
    readonly: bool,
) -> Result<MountSpec, MountSpecError> {
    let (flags, user_options) = split_options(mount_flags, readonly)?;
    if let Some(addr) = user_options.iter().find(|o| option_key(o) == "addr") {
        return Err(MountSpecError::BadOption {
            option: addr.clone(),
            reason: "addr= is set by the driver from the volume's server",
        });
    }
    let mut options: Vec<String> = base_options
        .iter()
        .filter(|base| {
            !user_options
                .iter()
                .any(|user| option_key(user) == option_key(base))
        })
        .cloned()
        .collect();
    options.extend(user_options);
    options.push(format!("addr={addr}"));

    let host = match location.server_ip() {
        Some(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => location.server.clone(),
    };
    Ok(MountSpec {
        source: format!("{host}:{path}"),
        kind: MountKind::Nfs4 {
            data: options.join(","),
        },
        flags,
        ignored: Vec::new(),
    })
}

/// The path part of an NFS mount source (`host:/path` → `/path`).
pub fn nfs_source_path(source: &str) -> Option<&str> {
    source.rfind(":/").map(|at| &source[at + 1..])
}

/// Where an NFS mount of one volume must come from: which server and which path on it.
/// A mount at the same target with the same `/volumes/<dir>` tail from another server
/// or another export is another volume, not this one already published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsOrigin {
    /// The server as the volume context (or the node's default) names it; hanfs mounts
    /// with exactly this as the source's host, so its own mounts show it.
    pub server: String,
    /// The server's address, when the name is one (no DNS lookup for the comparison).
    pub addr: Option<IpAddr>,
    /// The path on the server, `<share>/volumes/<dir>` or `<share>/<subDir>`.
    pub path: String,
}

impl NfsOrigin {
    pub fn new(location: &NfsLocation, path: String) -> Self {
        NfsOrigin {
            server: location.server.clone(),
            addr: location.server_ip(),
            path,
        }
    }
}

/// Why the NFS mount `mounted` does not come from `wanted`, or `None` when it does.
///
/// The kernel shows an NFS mount's source as it was given to mount(2), `host:/path`
/// (IPv6 in brackets), and the address it connected to as the superblock option
/// `addr=`. The server matches when the host equals the wanted name (case-insensitive:
/// DNS names), or when the wanted server is an address and either the host or `addr=`
/// is that address. The path is compared whole, by components.
pub fn nfs_origin_mismatch(mounted: &MountInfo, wanted: &NfsOrigin) -> Option<String> {
    let Some(at) = mounted.source.rfind(":/") else {
        return Some(format!("{:?} is not an NFS source", mounted.source));
    };
    let (host, path) = (&mounted.source[..at], &mounted.source[at + 1..]);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let super_addr = mounted
        .super_options
        .iter()
        .find_map(|o| o.strip_prefix("addr="))
        .and_then(|a| a.parse::<IpAddr>().ok());
    let same_server = host.eq_ignore_ascii_case(&wanted.server)
        || wanted
            .addr
            .is_some_and(|addr| host.parse().ok() == Some(addr) || super_addr == Some(addr));
    if !same_server {
        return Some(format!("mounted from server {host}, not {}", wanted.server));
    }
    if Path::new(path) != Path::new(&wanted.path) {
        return Some(format!(
            "mounted from {path} on {host}, not {}",
            wanted.path
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fuzz/nfs_options: `"&` passed check_option, and the kernel would have read
    /// `"&,addr=10.0.0.1` as one quoted option, dropping the driver's addr=.
    #[test]
    fn a_stray_quote_cannot_swallow_later_options() {
        for option in ["\"&", "x\"", "vers=\"4.2\""] {
            assert!(check_option(option).is_err(), "{option:?} was accepted");
        }
        assert!(check_option("context=\"system_u:object_r:a_t:s0:c1,c2\"").is_ok());
    }
    use crate::config::DEFAULT_NFS_OPTIONS;

    fn dir() -> VolumeDir {
        VolumeDir::parse("pvc-1").unwrap()
    }

    fn vol_path() -> String {
        location().volume_path(&dir())
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn defaults() -> Vec<String> {
        strings(DEFAULT_NFS_OPTIONS)
    }

    fn location() -> NfsLocation {
        NfsLocation {
            server: "10.0.0.100".into(),
            share: "/export".into(),
        }
    }

    fn data(spec: &MountSpec) -> &str {
        match &spec.kind {
            MountKind::Nfs4 { data } => data,
            MountKind::Bind => panic!("not nfs"),
        }
    }

    #[test]
    fn local_is_a_bind_mount_read_only_when_asked() {
        let source = local_source(Path::new("/srv/export"), &dir());
        assert_eq!(source, Path::new("/srv/export/volumes/pvc-1"));
        let spec = local(&source, &[], false).unwrap();
        assert_eq!(spec.kind, MountKind::Bind);
        assert_eq!(spec.source, "/srv/export/volumes/pvc-1");
        assert!(spec.flags.is_empty() && !spec.read_only());
        assert!(spec.fs_type().is_none());
        assert!(local(&source, &[], true).unwrap().read_only());
    }

    #[test]
    fn selinux_context_reaches_the_nfs_mount_data_and_is_reported_ignored_on_binds() {
        let context = r#"context="system_u:object_r:container_file_t:s0:c12,c345""#;
        let location = NfsLocation {
            server: "10.0.0.9".into(),
            share: "/export".into(),
        };
        let base = vec!["vers=4.2".to_string(), "hard".to_string()];
        let spec = nfs(
            &location,
            "10.0.0.9".parse().unwrap(),
            "/export/volumes/pvc-1",
            &base,
            &[context.to_string()],
            false,
        )
        .unwrap();
        let MountKind::Nfs4 { data } = &spec.kind else {
            panic!("{spec:?}")
        };
        assert_eq!(
            data,
            r#"vers=4.2,hard,context="system_u:object_r:container_file_t:s0:c12,c345",addr=10.0.0.9"#
        );
        // A bind mount shares its source's superblock, whose label cannot change.
        let bind = local(
            Path::new("/export/volumes/pvc-1"),
            &[context.to_string()],
            false,
        )
        .unwrap();
        assert_eq!(bind.ignored, vec![context.to_string()]);
        for ok in [
            r#"fscontext="system_u:object_r:nfs_t:s0""#,
            "rootcontext=system_u:object_r:nfs_t:s0",
        ] {
            check_option(ok).unwrap();
        }
        for bad in [
            r#"context="system_u:object_r:t:s0:c1,c2"#,
            "context=system_u:object_r:t:s0:c1,c2",
            r#"context="system_u:object_r:t:s0",hard"#,
            r#"context="a b:c:d""#,
            r#"context="""#,
            r#"context="justatype""#,
        ] {
            assert!(check_option(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_applies_vfs_flags_and_reports_nfs_options_as_ignored() {
        let spec = local(
            Path::new("/x"),
            &strings(&["ro", "nosuid", "hard", "_netdev"]),
            false,
        )
        .unwrap();
        assert_eq!(spec.flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(spec.ignored, vec!["hard"]);
    }

    #[test]
    fn nfs_defaults_and_addr() {
        let ip = "10.0.0.100".parse().unwrap();
        let spec = nfs(&location(), ip, &vol_path(), &defaults(), &[], false).unwrap();
        assert_eq!(spec.source, "10.0.0.100:/export/volumes/pvc-1");
        assert_eq!(spec.fs_type(), Some("nfs4"));
        assert_eq!(
            data(&spec),
            "vers=4.2,proto=tcp,hard,timeo=50,retrans=2,noresvport,addr=10.0.0.100"
        );
        assert!(!spec.read_only());
    }

    #[test]
    fn nfs_user_options_override_same_keys_and_vfs_flags_leave_the_data() {
        let ip = "10.0.0.100".parse().unwrap();
        let user = strings(&[
            "nfsvers=4.1",
            "soft",
            "timeo=600",
            "resvport",
            "ro",
            "noatime",
            "nconnect=4",
            "nofail",
        ]);
        let spec = nfs(&location(), ip, &vol_path(), &defaults(), &user, false).unwrap();
        assert_eq!(
            data(&spec),
            "proto=tcp,retrans=2,nfsvers=4.1,soft,timeo=600,resvport,nconnect=4,addr=10.0.0.100"
        );
        assert_eq!(spec.flags, MsFlags::MS_RDONLY | MsFlags::MS_NOATIME);
        assert_eq!(flag_names(spec.flags), vec!["ro", "noatime"]);
    }

    #[test]
    fn readonly_wins_over_rw() {
        let ip = "10.0.0.100".parse().unwrap();
        let spec = nfs(
            &location(),
            ip,
            &vol_path(),
            &defaults(),
            &strings(&["rw"]),
            true,
        )
        .unwrap();
        assert!(spec.read_only());
    }

    #[test]
    fn injection_attempts_are_rejected() {
        let ip = "10.0.0.100".parse().unwrap();
        for bad in [
            "hard,addr=6.6.6.6",
            "",
            "a=b=c",
            "=x",
            "timeo=5\0",
            "vers=4.2 ",
            "a\nb",
        ] {
            let err = nfs(
                &location(),
                ip,
                &vol_path(),
                &defaults(),
                &strings(&[bad]),
                false,
            )
            .unwrap_err();
            assert!(
                matches!(err, MountSpecError::BadOption { .. }),
                "{bad:?}: {err}"
            );
            assert!(
                local(Path::new("/x"), &strings(&[bad]), false).is_err(),
                "{bad:?}"
            );
        }
        let err = nfs(
            &location(),
            ip,
            &vol_path(),
            &defaults(),
            &strings(&["addr=6.6.6.6"]),
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("set by the driver"), "{err}");
    }

    #[test]
    fn location_prefers_the_volume_context() {
        let context: HashMap<String, String> = [
            ("server".into(), "vip.example".into()),
            ("share".into(), "/data/".into()),
        ]
        .into();
        let loc = nfs_location(&context, Some("10.0.0.1"), "/export").unwrap();
        assert_eq!(
            loc,
            NfsLocation {
                server: "vip.example".into(),
                share: "/data".into()
            }
        );
        assert!(loc.server_ip().is_none());
        let loc = nfs_location(&HashMap::new(), Some("10.0.0.1"), "/export").unwrap();
        assert_eq!(loc.volume_path(&dir()), "/export/volumes/pvc-1");
        assert_eq!(
            nfs_location(&HashMap::new(), None, "/export"),
            Err(MountSpecError::NoServer)
        );
    }

    #[test]
    fn location_rejects_odd_servers_and_shares() {
        let with = |k: &str, v: &str| -> HashMap<String, String> { [(k.into(), v.into())].into() };
        for server in ["a,b", "a b", "host/x", "a:b", "[]"] {
            let err = nfs_location(&with("server", server), None, "/export").unwrap_err();
            assert!(matches!(err, MountSpecError::BadServer(_)), "{server:?}");
        }
        for share in ["export", "/a/../b", "/a,b", "/a:b"] {
            let err = nfs_location(&with("share", share), Some("h"), "/export").unwrap_err();
            assert!(matches!(err, MountSpecError::BadShare(_)), "{share:?}");
        }
    }

    #[test]
    fn ipv6_servers_are_bracketed_in_the_source() {
        let context: HashMap<String, String> = [("server".into(), "[fd00::5]".into())].into();
        let loc = nfs_location(&context, None, "/export").unwrap();
        let ip = loc.server_ip().unwrap();
        let spec = nfs(&loc, ip, &loc.volume_path(&dir()), &defaults(), &[], false).unwrap();
        assert_eq!(spec.source, "[fd00::5]:/export/volumes/pvc-1");
        assert!(data(&spec).ends_with(",addr=fd00::5"));
        assert_eq!(nfs_source_path(&spec.source), Some("/export/volumes/pvc-1"));
    }

    #[test]
    fn flag_names_round_trip() {
        for (name, _, sets) in VFS_OPTIONS.iter().filter(|o| o.2) {
            assert!(sets);
            let flag = flag_from_name(name).unwrap();
            assert_eq!(flag_names(flag), vec![*name]);
        }
        assert_eq!(flag_from_name("rw"), None);
    }

    fn context(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn static_of(pairs: &[(&str, &str)]) -> StaticVolume {
        static_volume("10.0.0.100#/export#legacy", &context(pairs))
            .unwrap()
            .expect("a subDir makes the volume static")
    }

    #[test]
    fn sub_dirs_are_normalized() {
        for (raw, clean) in [
            ("legacy", "legacy"),
            ("volumes/legacy-data", "volumes/legacy-data"),
            ("a//b///c", "a/b/c"),
            ("a/b/", "a/b"),
            ("with space/ü", "with space/ü"),
            ("..hidden/x..y", "..hidden/x..y"),
        ] {
            assert_eq!(SubDir::parse(raw).unwrap().as_str(), clean, "{raw:?}");
        }
        let longest = [
            "a".repeat(255),
            "b".repeat(255),
            "c".repeat(255),
            "d".repeat(256),
        ]
        .join("/");
        assert_eq!(longest.len(), MAX_SUB_DIR_LEN);
        assert!(SubDir::parse(&longest).is_err(), "a 256-byte component");
        let longest = [
            "a".repeat(255),
            "b".repeat(255),
            "c".repeat(255),
            "d".repeat(255),
        ]
        .join("/")
            + "/";
        assert_eq!(SubDir::parse(&longest).unwrap().as_str().len(), 1023);
    }

    #[test]
    fn sub_dirs_that_could_escape_or_confuse_are_refused() {
        for (raw, why) in [
            ("../etc", "'..'"),
            ("a/../../b", "'..'"),
            ("a/..", "'..'"),
            ("..", "'..'"),
            ("./a", "'.'"),
            ("a/./b", "'.'"),
            ("/etc", "relative"),
            ("//etc", "relative"),
            ("", "empty"),
            ("/", "relative"),
            ("///", "relative"),
            ("a,b", "','"),
            ("a:b", "':'"),
            ("a\0b", "control"),
            ("a\nb", "control"),
            ("a\tb", "control"),
            ("a/\u{7f}", "control"),
            ("a/ /b", "whitespace"),
        ] {
            let err = SubDir::parse(raw).unwrap_err();
            assert!(
                matches!(err, MountSpecError::BadSubDir { .. }) && err.to_string().contains(why),
                "{raw:?}: {err}"
            );
        }
        let long = "a/".repeat(600);
        let err = SubDir::parse(&long).unwrap_err();
        assert!(err.to_string().contains("1024"), "{err}");
        // The message shows a bounded prefix of the input, not all of it.
        assert!(err.to_string().len() < 300, "{err}");
    }

    #[test]
    fn only_a_sub_dir_makes_a_volume_static() {
        assert_eq!(
            static_volume("v1/c/pvc-1", &context(&[("server", "h"), ("share", "/x")])),
            Ok(None)
        );
        for key in ["subDir", "subdir", "SUBDIR", "SubDir"] {
            let v = static_volume("any-handle", &context(&[(key, "volumes/a")]))
                .unwrap()
                .unwrap();
            assert_eq!(v.sub_dir.as_str(), "volumes/a", "{key}");
            assert_eq!(v.handle.as_str(), "any-handle");
            assert_eq!((v.server, v.share), (None, None));
        }
        let v = static_of(&[
            ("Server", "10.0.0.100"),
            ("SHARE", "/export"),
            ("subDir", "volumes/legacy-data"),
        ]);
        assert_eq!(v.server.as_deref(), Some("10.0.0.100"));
        assert_eq!(v.share.as_deref(), Some("/export"));
        // An empty subDir is a static volume with a bad subDir, not a hanfs volume.
        assert!(matches!(
            static_volume("h", &context(&[("subDir", "")])),
            Err(MountSpecError::BadSubDir { .. })
        ));
    }

    #[test]
    fn keys_spelled_twice_must_agree() {
        let err = static_volume("h", &context(&[("subDir", "a"), ("subdir", "b")])).unwrap_err();
        assert_eq!(
            err,
            MountSpecError::AmbiguousContext {
                first: "subDir".into(),
                second: "subdir".into()
            }
        );
        let err = static_volume(
            "h",
            &context(&[("subDir", "a"), ("server", "x"), ("SERVER", "y")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("case-insensitive"), "{err}");
        let same = static_volume("h", &context(&[("subDir", "a"), ("subdir", "a")]));
        assert_eq!(same.unwrap().unwrap().sub_dir.as_str(), "a");
    }

    #[test]
    fn static_handles_are_bounded_printable_and_not_hanfs_ids() {
        let ctx = context(&[("subDir", "a")]);
        for ok in [
            "10.0.0.100#/export#legacy-data",
            "nfs-server.default.svc.cluster.local/share##",
            "s1/c/snap",
            "v1",
            "uuid-0b1c",
        ] {
            assert!(static_volume(ok, &ctx).is_ok(), "{ok:?}");
        }
        assert!(static_volume(&"x".repeat(MAX_STATIC_HANDLE_LEN), &ctx).is_ok());
        for (bad, why) in [
            ("", "empty"),
            ("a\0b", "control"),
            ("a\nb", "control"),
            ("v1/c/pvc-1", "v1/"),
            ("v1/other/x", "v1/"),
        ] {
            let err = static_volume(bad, &ctx).unwrap_err();
            assert!(
                matches!(err, MountSpecError::BadStaticHandle { .. })
                    && err.to_string().contains(why),
                "{bad:?}: {err}"
            );
        }
        let err = static_volume(&"x".repeat(MAX_STATIC_HANDLE_LEN + 1), &ctx).unwrap_err();
        assert!(err.to_string().contains("2048"), "{err}");
        assert!(is_hanfs_shaped("v1/c/d") && !is_hanfs_shaped("10.0.0.1#/e#d"));
    }

    #[test]
    fn static_volumes_mount_share_and_sub_dir() {
        let volume = VolumeRef::Static(static_of(&[
            ("server", "10.0.0.100"),
            ("share", "/export/"),
            ("subDir", "volumes//legacy-data/"),
        ]));
        let loc = volume
            .nfs_location(&HashMap::new(), Some("10.9.9.9"), "/other")
            .unwrap();
        assert_eq!(loc, location());
        let path = volume.nfs_path(&loc);
        assert_eq!(path, "/export/volumes/legacy-data");
        let ip = loc.server_ip().unwrap();
        let spec = nfs(&loc, ip, &path, &defaults(), &[], false).unwrap();
        assert_eq!(spec.source, "10.0.0.100:/export/volumes/legacy-data");
        assert_eq!(
            volume.local_source(Path::new("/srv/export")),
            Path::new("/srv/export/volumes/legacy-data")
        );
        assert!(volume.to_string().contains("10.0.0.100#/export#legacy"));

        // Without server/share in the context, the node's defaults.
        let volume = VolumeRef::Static(static_of(&[("subDir", "legacy")]));
        let loc = volume
            .nfs_location(&HashMap::new(), Some("vip.example"), "/export")
            .unwrap();
        assert_eq!(volume.nfs_path(&loc), "/export/legacy");
        assert_eq!(
            volume.nfs_location(&HashMap::new(), None, "/export"),
            Err(MountSpecError::NoServer)
        );

        // A static volume's server and share are checked like a hanfs volume's.
        let volume = VolumeRef::Static(static_of(&[("subDir", "a"), ("share", "/a/../b")]));
        assert!(matches!(
            volume.nfs_location(&HashMap::new(), Some("h"), "/export"),
            Err(MountSpecError::BadShare(_))
        ));
        let VolumeRef::Static(v) = &volume else {
            unreachable!()
        };
        assert!(check_static_location_syntax(v).is_err());
        assert!(
            check_static_location_syntax(&static_of(&[("subDir", "a"), ("server", "a,b")]))
                .is_err()
        );
        assert!(
            check_static_location_syntax(&static_of(&[
                ("subDir", "a"),
                ("server", "[fd00::5]"),
                ("share", "/export")
            ]))
            .is_ok()
        );
    }

    #[test]
    fn hanfs_volumes_keep_their_paths() {
        let volume = VolumeRef::Hanfs(VolumeId::new(
            common::ids::ClusterId::parse("c").unwrap(),
            dir(),
        ));
        let ctx = context(&[("server", "10.0.0.100"), ("share", "/export")]);
        let loc = volume.nfs_location(&ctx, None, "/x").unwrap();
        assert_eq!(volume.nfs_path(&loc), "/export/volumes/pvc-1");
        assert_eq!(
            volume.local_source(Path::new("/srv")),
            Path::new("/srv/volumes/pvc-1")
        );
        assert_eq!(volume.to_string(), "v1/c/pvc-1");
        // Keys of hanfs volumes' contexts stay exact: the controller writes them.
        let ctx = context(&[("SERVER", "10.0.0.100")]);
        assert_eq!(
            volume.nfs_location(&ctx, None, "/x"),
            Err(MountSpecError::NoServer)
        );
    }

    #[test]
    fn confinement_is_strictly_inside_the_root() {
        let sub = SubDir::parse("a").unwrap();
        let root = Path::new("/srv/export");
        assert!(check_confined(root, Path::new("/srv/export/a"), &sub).is_ok());
        assert!(check_confined(root, Path::new("/srv/export/volumes/x/y"), &sub).is_ok());
        for escaped in ["/srv/export", "/srv/exported", "/srv", "/etc", "/"] {
            let err = check_confined(root, Path::new(escaped), &sub).unwrap_err();
            assert!(
                matches!(err, MountSpecError::OutsideExport { .. }),
                "{escaped}: {err}"
            );
        }
    }

    fn nfs_mount(source: &str, addr: &str) -> MountInfo {
        let line = format!(
            "36 25 0:45 / /var/lib/kubelet/pods/p/mount rw,relatime shared:1 - nfs4 {source} \
             rw,vers=4.2,hard,noresvport,proto=tcp,timeo=50,retrans=2,sec=sys,\
             clientaddr=10.0.0.5,local_lock=none,addr={addr}"
        );
        common::mountinfo::parse_line(line.as_bytes()).unwrap()
    }

    fn origin(server: &str, path: &str) -> NfsOrigin {
        NfsOrigin::new(
            &NfsLocation {
                server: server.into(),
                share: "/export".into(),
            },
            path.into(),
        )
    }

    #[test]
    fn an_nfs_mount_matches_only_its_own_server_and_path() {
        let wanted = origin("10.0.0.100", "/export/volumes/pvc-1");
        let mounted = nfs_mount("10.0.0.100:/export/volumes/pvc-1", "10.0.0.100");
        assert_eq!(nfs_origin_mismatch(&mounted, &wanted), None);
        let trailing = nfs_mount("10.0.0.100:/export/volumes/pvc-1/", "10.0.0.100");
        assert_eq!(nfs_origin_mismatch(&trailing, &wanted), None);

        let other_server = nfs_mount("10.0.0.200:/export/volumes/pvc-1", "10.0.0.200");
        let why = nfs_origin_mismatch(&other_server, &wanted).unwrap();
        assert!(why.contains("server 10.0.0.200"), "{why}");
        let other_export = nfs_mount("10.0.0.100:/other/volumes/pvc-1", "10.0.0.100");
        let why = nfs_origin_mismatch(&other_export, &wanted).unwrap();
        assert!(why.contains("/other/volumes/pvc-1"), "{why}");
    }

    #[test]
    fn the_server_matches_by_name_or_by_address() {
        // Mounted by name: the name is what hanfs passes, whatever it resolves to now.
        let by_name = nfs_mount("NFS.example:/export/volumes/pvc-1", "10.0.0.100");
        let wanted = origin("nfs.example", "/export/volumes/pvc-1");
        assert_eq!(nfs_origin_mismatch(&by_name, &wanted), None);
        // The context names the address the name-mount connected to.
        let wanted_ip = origin("10.0.0.100", "/export/volumes/pvc-1");
        assert_eq!(nfs_origin_mismatch(&by_name, &wanted_ip), None);
        let wanted_other_ip = origin("10.0.0.7", "/export/volumes/pvc-1");
        assert!(nfs_origin_mismatch(&by_name, &wanted_other_ip).is_some());
        // A name that differs is another server (no DNS lookup to decide).
        let wanted_other_name = origin("nfs-b.example", "/export/volumes/pvc-1");
        assert!(nfs_origin_mismatch(&by_name, &wanted_other_name).is_some());
        // IPv6 shows in brackets.
        let v6 = nfs_mount("[fd00::1]:/export/volumes/pvc-1", "fd00::1");
        assert_eq!(
            nfs_origin_mismatch(&v6, &origin("fd00::1", "/export/volumes/pvc-1")),
            None
        );
        assert!(nfs_origin_mismatch(&v6, &origin("fd00::2", "/export/volumes/pvc-1")).is_some());
    }
}

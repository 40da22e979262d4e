//! What to mount for a volume: pure decisions, no I/O.
//!
//! From the transport, the volume directory, the volume context (the controller puts
//! the VIP in `server` and the export path in `share`), `readonly` and the capability's
//! `mount_flags` (the StorageClass's `mountOptions`), this module decides the mount(2)
//! arguments. The caller resolves host names and checks that sources exist.
//!
//! mount(8) splits `-o` into VFS flags (`ro`, `nosuid`, ...) and filesystem options; a
//! raw mount(2) must do the same, because the NFS option parser rejects `nosuid`.

use hanfs_common::ids::VolumeDir;
use nix::mount::MsFlags;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Volume context key for the NFS server (the storage servers' VIP).
pub const CONTEXT_SERVER: &str = "server";
/// Volume context key for the export path on the NFS server.
pub const CONTEXT_SHARE: &str = "share";

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
    if option.contains(',') {
        return bad("',' would add further options; give each option as its own list item");
    }
    if option.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains whitespace or control characters");
    }
    if option.starts_with('=') || option.matches('=').count() > 1 {
        return bad("an option is `name` or `name=value`");
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

/// The server and share for a volume: the volume context's, else the node's defaults.
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
    let server = nonempty(CONTEXT_SERVER)
        .or(default_server)
        .ok_or(MountSpecError::NoServer)?;
    let share = nonempty(CONTEXT_SHARE).unwrap_or(default_share);

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

    let share_ok = share.starts_with('/')
        && !share.split('/').any(|part| part == "..")
        && !share
            .chars()
            .any(|c| c == ',' || c == ':' || c.is_whitespace() || c.is_control());
    if !share_ok {
        return Err(MountSpecError::BadShare(share.to_owned()));
    }
    Ok(NfsLocation {
        server: bare.to_owned(),
        share: share.trim_end_matches('/').to_owned(),
    })
}

/// An NFSv4 mount of the volume from `location`, whose server resolved to `addr`.
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
    dir: &VolumeDir,
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
        source: format!("{host}:{}", location.volume_path(dir)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_NFS_OPTIONS;

    fn dir() -> VolumeDir {
        VolumeDir::parse("pvc-1").unwrap()
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
        let spec = nfs(&location(), ip, &dir(), &defaults(), &[], false).unwrap();
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
        let spec = nfs(&location(), ip, &dir(), &defaults(), &user, false).unwrap();
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
            &dir(),
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
                &dir(),
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
            &dir(),
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
        let spec = nfs(&loc, ip, &dir(), &defaults(), &[], false).unwrap();
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
}

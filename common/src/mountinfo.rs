//! Parsing `/proc/self/mountinfo` (proc(5)), one line at a time, and looking things up
//! in the parsed table. Everything but [`read_self`] is pure.
//!
//! Reading mountinfo never touches a mounted filesystem (the kernel prints what it
//! keeps in memory), so it is safe to do in-process even when an NFS server or a DRBD
//! device hangs; that is why every "is it mounted?" question is answered here and not
//! with stat(2).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// A mountinfo line that does not have proc(5)'s shape; each variant carries the line.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum MountinfoError {
    /// A line with fewer fields than proc(5) promises (or without the `-` separator).
    #[error("mountinfo line has too few fields: {0:?}")]
    TooFewFields(String),
    /// A numeric field that is not a number.
    #[error("mountinfo line has a bad {field}: {line:?}")]
    BadNumber { field: &'static str, line: String },
}

impl MountinfoError {
    /// The offending line (lossily decoded).
    pub fn line(&self) -> &str {
        match self {
            MountinfoError::TooFewFields(line) | MountinfoError::BadNumber { line, .. } => line,
        }
    }
}

/// One mount as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    /// `st_dev` of files on this mount: for disk filesystems the block device's
    /// major:minor; the same for all bind mounts of one filesystem.
    pub major: u32,
    pub minor: u32,
    /// The directory of the filesystem that is mounted here (`/` unless a bind mount
    /// or an NFS mount of a subdirectory on a shared superblock).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`/`ro`, `nosuid`, `noatime`, ...).
    pub mount_options: Vec<String>,
    /// `shared:N`, `master:N`, ... (zero or more).
    pub optional_fields: Vec<String>,
    pub fstype: String,
    /// `/dev/vda`, `/dev/drbd0`, `server:/export/volumes/x`, ...; may be empty on pseudo
    /// filesystems.
    pub source: String,
    /// Per-superblock options (for NFS: `vers=4.2,addr=...`).
    pub super_options: Vec<String>,
}

impl MountInfo {
    /// `major:minor`, as the kernel prints it.
    pub fn device(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }

    /// Whether writes are refused: read-only per mount or per superblock (as after an
    /// `errors=remount-ro`).
    pub fn read_only(&self) -> bool {
        self.mount_read_only() || self.super_options.iter().any(|o| o == "ro")
    }

    /// Whether this mount itself is read-only (as a `ro` bind remount makes it),
    /// whatever the superblock says.
    pub fn mount_read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro")
    }

    pub fn is_nfs(&self) -> bool {
        self.fstype == "nfs" || self.fstype == "nfs4"
    }
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash); anything else is kept as it is. Paths need not be UTF-8.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = field[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn path_field(field: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&unescape(field)))
}

fn text_field(field: &[u8]) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

fn options(field: &[u8]) -> Vec<String> {
    text_field(field)
        .split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses one line:
/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
/// Optional fields before the `-` are collected (there may be none or several).
pub fn parse_line(line: &[u8]) -> Result<MountInfo, MountinfoError> {
    let shown = || String::from_utf8_lossy(line).into_owned();
    let too_few = || MountinfoError::TooFewFields(shown());
    let bad = |field| MountinfoError::BadNumber {
        field,
        line: shown(),
    };
    // Single spaces separate the fields (the kernel escapes spaces inside them), so an
    // empty field is a real one: only the source may be empty, on pseudo filesystems
    // mounted with an empty source string.
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let sep = fields.iter().position(|f| *f == b"-").ok_or_else(too_few)?;
    // Six fixed fields before the optional ones; fstype and source after the separator.
    if sep < 6 || fields.len() < sep + 3 || fields[..6].iter().any(|f| f.is_empty()) {
        return Err(too_few());
    }
    let number = |field: &'static str, value: &[u8]| {
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| bad(field))
    };
    let (major, minor) = std::str::from_utf8(fields[2])
        .ok()
        .and_then(|d| d.split_once(':'))
        .ok_or_else(|| bad("major:minor"))?;
    Ok(MountInfo {
        mount_id: number("mount id", fields[0])?,
        parent_id: number("parent id", fields[1])?,
        major: number("major", major.as_bytes())?,
        minor: number("minor", minor.as_bytes())?,
        root: path_field(fields[3]),
        mount_point: path_field(fields[4]),
        mount_options: options(fields[5]),
        optional_fields: fields[6..sep]
            .iter()
            .filter(|f| !f.is_empty())
            .map(|f| text_field(f))
            .collect(),
        fstype: text_field(fields[sep + 1]),
        source: text_field(fields[sep + 2]),
        super_options: fields.get(sep + 3).map(|f| options(f)).unwrap_or_default(),
    })
}

/// The non-blank lines of a mountinfo text, parsed.
fn lines(text: &[u8]) -> impl Iterator<Item = Result<MountInfo, MountinfoError>> {
    text.split(|b| *b == b'\n')
        .filter(|line| !line.trim_ascii().is_empty())
        .map(parse_line)
}

/// Parses a whole mountinfo text; lines that do not parse are logged and skipped
/// (a format change must not make every mount invisible).
pub fn parse(text: &[u8]) -> Vec<MountInfo> {
    lines(text)
        .filter_map(|parsed| {
            parsed
                .inspect_err(|err| tracing::warn!(%err, "skipping unparseable mountinfo line"))
                .ok()
        })
        .collect()
}

/// Parses a whole mountinfo text; the first line that does not parse is the error (for
/// callers that must not act on a partial table).
pub fn parse_strict(text: &[u8]) -> Result<Vec<MountInfo>, MountinfoError> {
    lines(text).collect()
}

/// The mount table of this process's mount namespace ([`parse`]).
pub fn read_self() -> std::io::Result<Vec<MountInfo>> {
    Ok(parse(&std::fs::read(SELF_MOUNTINFO)?))
}

/// All mounts whose mount point is exactly `path`, bottom first (the kernel lists a
/// mount after the one it covers).
pub fn mounts_at<'a>(mounts: &'a [MountInfo], path: &Path) -> Vec<&'a MountInfo> {
    mounts.iter().filter(|m| m.mount_point == path).collect()
}

/// The mount that is visible at `path` when several are stacked there: the one no
/// other mount at the same point sits on.
pub fn topmost_at<'a>(mounts: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    let stack = mounts_at(mounts, path);
    stack
        .iter()
        .find(|m| !stack.iter().any(|other| other.parent_id == m.mount_id))
        .or(stack.last())
        .copied()
}

/// Where `path` (an existing, canonical path) lives: the device (`major:minor`) and the
/// directory inside that filesystem. A bind mount of `path` shows exactly these as its
/// [`MountInfo::device`] and `root`, which is how a bind mount is traced back to its
/// source.
pub fn origin_of(mounts: &[MountInfo], path: &Path) -> Option<(String, PathBuf)> {
    // The deepest mount point containing `path`; among equals the last (topmost) one.
    let mount = mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .fold(None::<&MountInfo>, |best, m| match best {
            Some(b) if b.mount_point.components().count() > m.mount_point.components().count() => {
                Some(b)
            }
            _ => Some(m),
        })?;
    let relative = path.strip_prefix(&mount.mount_point).ok()?;
    Some((mount.device(), mount.root.join(relative)))
}

/// All mount points at or below `dir`, deepest first (the order to unmount them in).
pub fn mounts_below(mounts: &[MountInfo], dir: &Path) -> Vec<PathBuf> {
    let mut below: Vec<PathBuf> = mounts
        .iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .map(|m| m.mount_point.clone())
        .collect();
    below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    below
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from real systems.
    const ROOT: &str = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard";
    const BIND: &str = "612 27 254:0 /tmp/.tmpAbc/export/volumes/pvc-1 /tmp/.tmpAbc/target\\040dir rw,relatime shared:1 - ext4 /dev/vda rw,discard";
    const BIND_RO: &str = "613 612 254:0 /tmp/.tmpAbc/export/volumes/pvc-2 /tmp/.tmpAbc/target\\040dir ro,relatime shared:1 - ext4 /dev/vda rw,discard";
    const NFS: &str = "845 29 0:52 / /var/lib/kubelet/pods/1f2e/volumes/kubernetes.io~csi/pvc-7/mount rw,relatime shared:456 - nfs4 10.0.0.100:/export/volumes/pvc-7 rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,noresvport,proto=tcp,timeo=50,retrans=2,sec=sys,clientaddr=10.0.0.11,local_lock=none,addr=10.0.0.100";

    #[test]
    fn parses_a_plain_line() {
        let m = parse_line(ROOT.as_bytes()).unwrap();
        assert_eq!(
            (m.mount_id, m.parent_id, m.device().as_str()),
            (27, 1, "254:0")
        );
        assert_eq!(m.mount_point, Path::new("/"));
        assert_eq!(m.fstype, "ext4");
        assert_eq!(m.source, "/dev/vda");
        assert!(!m.read_only());
        assert_eq!(m.super_options, vec!["rw", "discard"]);
    }

    #[test]
    fn parses_proc5_example_and_optional_fields() {
        let m = parse_line(
            b"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!((m.mount_id, m.parent_id, m.major, m.minor), (36, 35, 98, 0));
        assert_eq!(m.root, Path::new("/mnt1"));
        assert_eq!(m.mount_point, Path::new("/mnt2"));
        assert_eq!(m.mount_options, ["rw", "noatime"]);
        assert_eq!(m.optional_fields, ["master:1"]);
        assert_eq!(
            (m.fstype.as_str(), m.source.as_str()),
            ("ext3", "/dev/root")
        );
        assert_eq!(m.super_options, ["rw", "errors=continue"]);
        assert!(!m.read_only());

        let m = parse_line(b"22 1 252:0 / / rw,relatime - ext4 /dev/vda rw,discard").unwrap();
        assert!(m.optional_fields.is_empty());
        let m = parse_line(
            b"90 22 147:0 / /srv/export ro,relatime shared:50 master:3 - xfs /dev/drbd0 ro,attr2",
        )
        .unwrap();
        assert_eq!(m.optional_fields, ["shared:50", "master:3"]);
        assert!(m.read_only());
    }

    #[test]
    fn parses_a_bind_mount_with_escapes_and_optional_fields() {
        let m = parse_line(BIND.as_bytes()).unwrap();
        assert_eq!(m.root, Path::new("/tmp/.tmpAbc/export/volumes/pvc-1"));
        assert_eq!(m.mount_point, Path::new("/tmp/.tmpAbc/target dir"));
        assert!(!m.is_nfs());
        assert!(parse_line(BIND_RO.as_bytes()).unwrap().read_only());
    }

    #[test]
    fn read_only_per_mount_or_per_superblock() {
        let ro_bind = parse_line(BIND_RO.as_bytes()).unwrap();
        assert!(ro_bind.mount_read_only() && ro_bind.read_only());
        // After errors=remount-ro only the superblock may say so.
        let m = parse_line(b"90 22 147:0 / /srv/export rw - xfs /dev/drbd0 ro,attr2").unwrap();
        assert!(!m.mount_read_only());
        assert!(m.read_only());
    }

    #[test]
    fn parses_an_nfs4_line() {
        let m = parse_line(NFS.as_bytes()).unwrap();
        assert!(m.is_nfs());
        assert_eq!(m.source, "10.0.0.100:/export/volumes/pvc-7");
        assert_eq!(m.root, Path::new("/"));
        assert!(m.super_options.contains(&"vers=4.2".to_owned()));
        assert!(m.super_options.contains(&"addr=10.0.0.100".to_owned()));
    }

    #[test]
    fn unescapes_octal_and_keeps_other_backslashes() {
        assert_eq!(unescape(br"a\040b\011c\012d\134e"), b"a b\tc\nd\\e");
        assert_eq!(unescape(br"a\x\04"), br"a\x\04");
        assert_eq!(
            unescape(br"\777"),
            br"\777",
            "out of byte range stays literal"
        );
    }

    #[test]
    fn octal_escapes_are_decoded() {
        let m = parse_line(
            br"41 27 7:1 / /tmp/with\040space\011tab\012nl\134bs rw,relatime - ext4 /dev/loop1 rw",
        )
        .unwrap();
        assert_eq!(m.mount_point, Path::new("/tmp/with space\ttab\nnl\\bs"));
        assert_eq!(unescape(br"a\\b"), br"a\\b");
        assert_eq!(unescape(br"end\04"), br"end\04");
        assert_eq!(unescape(br"\377"), [0xff]);
    }

    #[test]
    fn rejects_short_or_malformed_lines_and_skips_them_in_a_table() {
        assert!(matches!(
            parse_line(b"1 2 3"),
            Err(MountinfoError::TooFewFields(_))
        ));
        assert!(matches!(
            parse_line(b"1 2 0:1 / / rw - ext4"),
            Err(MountinfoError::TooFewFields(_))
        ));
        assert!(matches!(
            parse_line(b"x 2 0:1 / / rw - ext4 /dev/x rw"),
            Err(MountinfoError::BadNumber {
                field: "mount id",
                ..
            })
        ));
        let table = format!("{ROOT}\ngarbage\n{BIND}\n");
        assert_eq!(parse(table.as_bytes()).len(), 2);
    }

    #[test]
    fn bad_lines_are_errors_with_the_line() {
        for line in [
            "",
            "x 35 98:0 / / rw - ext4 /dev/x rw",
            "36 35 98 / / rw - ext4 /dev/x rw",
            "36 35 98:0 / / rw shared:1",
        ] {
            let err = parse_line(line.as_bytes()).unwrap_err();
            assert_eq!(err.line(), line);
        }
        assert_eq!(
            parse_strict(b"\n22 1 252:0 / / rw - ext4 /dev/vda rw\n\n")
                .unwrap()
                .len(),
            1
        );
        assert!(parse_strict(format!("{ROOT}\ngarbage\n").as_bytes()).is_err());
    }

    #[test]
    fn a_line_without_super_options_still_parses() {
        let m = parse_line(b"30 27 0:40 / /mnt rw - tmpfs tmpfs").unwrap();
        assert!(m.super_options.is_empty());
    }

    #[test]
    fn an_empty_source_is_tolerated() {
        let m = parse_line(b"31 27 0:41 / /mnt rw - tmpfs  rw,size=64k").unwrap();
        assert_eq!(m.source, "");
        assert_eq!(m.super_options, ["rw", "size=64k"]);
    }

    #[test]
    fn finds_the_stack_and_its_top() {
        let table = parse(format!("{ROOT}\n{BIND}\n{BIND_RO}\n").as_bytes());
        let target = Path::new("/tmp/.tmpAbc/target dir");
        assert_eq!(mounts_at(&table, target).len(), 2);
        assert_eq!(topmost_at(&table, target).unwrap().mount_id, 613);
        assert!(topmost_at(&table, Path::new("/tmp")).is_none());
        assert_eq!(
            mounts_below(&table, Path::new("/tmp/.tmpAbc")),
            vec![
                PathBuf::from("/tmp/.tmpAbc/target dir"),
                PathBuf::from("/tmp/.tmpAbc/target dir")
            ]
        );
    }

    #[test]
    fn traces_a_path_to_its_filesystem_and_directory() {
        let sub = "50 27 8:16 /exports /srv rw - xfs /dev/sdb rw";
        let table = parse(format!("{ROOT}\n{sub}\n").as_bytes());
        assert_eq!(
            origin_of(&table, Path::new("/srv/volumes/a")),
            Some(("8:16".to_owned(), PathBuf::from("/exports/volumes/a")))
        );
        assert_eq!(
            origin_of(&table, Path::new("/tmp/x")),
            Some(("254:0".to_owned(), PathBuf::from("/tmp/x")))
        );
    }
}

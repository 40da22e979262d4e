//! One read of `/proc/self/mountinfo`, asked only what a call needs.
//!
//! A kubelet node carries thousands of mounts, and every publish, unpublish and stats
//! call asks about one or two paths. Parsing every line into a [`MountInfo`] (a dozen
//! allocations each) per question made NodeUnpublishVolume take seconds at 2,000
//! mounts. So a [`MountTable`] keeps the raw text and parses only the lines whose
//! mount point can answer the question; the mount point is unescaped into one reused
//! buffer and compared as a `Path` (the same comparison `common::mountinfo` makes after
//! its full parse), so the answers are exactly those of the full table. The lookups
//! themselves are `common::mountinfo`'s, run on the matching lines.
//!
//! Like `common::mountinfo`, this never touches a mounted filesystem: the kernel prints
//! the table from memory, so a hung NFS server cannot block it.

use common::mountinfo::{self, MountInfo};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The size of the last table read, so the next read allocates once (procfs files
/// report size 0, and growing the buffer from nothing copies a 2,000-line table
/// several times over).
static LAST_SIZE: AtomicUsize = AtomicUsize::new(16 << 10);

/// The raw text of one read of a mountinfo file.
pub struct MountTable {
    text: Vec<u8>,
}

impl MountTable {
    /// Reads this process's mount table.
    pub fn read_self() -> std::io::Result<Self> {
        Self::read(Path::new(mountinfo::SELF_MOUNTINFO))
    }

    pub fn read(path: &Path) -> std::io::Result<Self> {
        use std::io::Read;
        let mut text = Vec::with_capacity(LAST_SIZE.load(Ordering::Relaxed) + (4 << 10));
        std::fs::File::open(path)?.read_to_end(&mut text)?;
        LAST_SIZE.store(text.len(), Ordering::Relaxed);
        Ok(Self { text })
    }

    pub fn from_text(text: impl Into<Vec<u8>>) -> Self {
        Self { text: text.into() }
    }

    /// Every line parsed, lazily and in table order; lines that do not parse are
    /// logged and skipped, as [`mountinfo::parse`] does.
    pub fn parsed(&self) -> impl Iterator<Item = MountInfo> + '_ {
        self.lines().filter_map(parse)
    }

    /// The mounts whose mount point is exactly `path`, in table order (bottom first).
    pub fn at(&self, path: &Path) -> Vec<MountInfo> {
        self.where_mount_point(|mount_point| mount_point == path)
    }

    /// The mounts whose mount point contains `path` (`/` included), in table order.
    pub fn containing(&self, path: &Path) -> Vec<MountInfo> {
        self.where_mount_point(|mount_point| path.starts_with(mount_point))
    }

    /// [`mountinfo::topmost_at`] of the full table.
    pub fn topmost_at(&self, path: &Path) -> Option<MountInfo> {
        let stack = self.at(path);
        mountinfo::topmost_at(&stack, path).cloned()
    }

    /// [`mountinfo::origin_of`] of the full table: the deepest mount containing `path`
    /// is among those whose mount point contains it, in the same order.
    pub fn origin_of(&self, path: &Path) -> Option<(String, PathBuf)> {
        mountinfo::origin_of(&self.containing(path), path)
    }

    fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.text
            .split(|b| *b == b'\n')
            .filter(|line| !line.trim_ascii().is_empty())
    }

    /// The parsed lines whose (unescaped) mount point passes `wanted`. Only those are
    /// parsed; the others cost a scan for their fifth field and one unescape into a
    /// buffer reused across lines.
    fn where_mount_point(&self, wanted: impl Fn(&Path) -> bool) -> Vec<MountInfo> {
        let mut buffer = Vec::with_capacity(256);
        self.lines()
            .filter(|line| {
                // Single spaces separate the fields (see mountinfo::parse_line); the
                // mount point is the fifth. A line without one cannot parse anyway.
                let Some(field) = line.split(|b| *b == b' ').nth(4) else {
                    return false;
                };
                unescape_into(field, &mut buffer);
                wanted(Path::new(OsStr::from_bytes(&buffer)))
            })
            .filter_map(parse)
            .collect()
    }
}

fn parse(line: &[u8]) -> Option<MountInfo> {
    mountinfo::parse_line(line)
        .inspect_err(|err| tracing::warn!(%err, "skipping unparseable mountinfo line"))
        .ok()
}

/// [`mountinfo::unescape`] into `out` (cleared first), so a scan allocates once.
fn unescape_into(field: &[u8], out: &mut Vec<u8>) {
    out.clear();
    // Most fields have no escape at all.
    if !field.contains(&b'\\') {
        out.extend_from_slice(field);
        return;
    }
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(octal) = field.get(i + 1..i + 4)
            && octal.iter().all(|b| (b'0'..=b'7').contains(b))
            && let Ok(byte) = u8::try_from(
                octal
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0')),
            )
        {
            out.push(byte);
            i += 4;
            continue;
        }
        out.push(field[i]);
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
40 27 0:41 / /tmp rw,nosuid shared:2 - tmpfs tmpfs rw
50 40 254:0 /srv/export/volumes/a /tmp/pods/a rw,relatime shared:1 - ext4 /dev/vda rw
51 50 254:0 /srv/export/volumes/b /tmp/pods/a ro,relatime shared:1 - ext4 /dev/vda rw
52 40 254:0 /srv/export/volumes/c /tmp/pods/with\\040space rw - ext4 /dev/vda rw
garbage line
53 40 0:52 / /tmp/pods/ab rw - nfs4 10.0.0.1:/export/volumes/ab rw,vers=4.2
60 27 8:16 /exports /srv rw - xfs /dev/sdb rw

";

    /// Every question answered from the raw text equals the one answered from the
    /// whole parsed table.
    #[test]
    fn answers_equal_those_of_the_full_table() {
        let table = MountTable::from_text(TABLE);
        let full = mountinfo::parse(TABLE.as_bytes());
        assert_eq!(table.parsed().collect::<Vec<_>>(), full);
        for path in [
            "/",
            "/tmp",
            "/tmp/pods",
            "/tmp/pods/a",
            "/tmp/pods/a/",
            "/tmp/pods/ab",
            "/tmp/pods/with space",
            "/tmp/pods/with\\040space",
            "/tmp/pods/a/deeper/x",
            "/srv/volumes/a",
            "/srvx",
            "/nowhere",
        ] {
            let path = Path::new(path);
            let at: Vec<MountInfo> = mountinfo::mounts_at(&full, path)
                .into_iter()
                .cloned()
                .collect();
            assert_eq!(table.at(path), at, "{path:?}");
            assert_eq!(
                table.topmost_at(path).as_ref(),
                mountinfo::topmost_at(&full, path),
                "{path:?}"
            );
            assert_eq!(
                table.origin_of(path),
                mountinfo::origin_of(&full, path),
                "{path:?}"
            );
        }
        assert_eq!(
            table.topmost_at(Path::new("/tmp/pods/a")).unwrap().mount_id,
            51
        );
        assert_eq!(
            table.origin_of(Path::new("/srv/volumes/a")),
            Some(("8:16".to_owned(), PathBuf::from("/exports/volumes/a")))
        );
    }

    #[test]
    fn unescapes_as_the_full_parser_does() {
        let mut out = Vec::new();
        for field in [
            &br"a\040b\011c\012d\134e"[..],
            br"a\x\04",
            br"\777",
            br"end\04",
            br"\377",
            br"plain",
            b"",
        ] {
            unescape_into(field, &mut out);
            assert_eq!(out, mountinfo::unescape(field), "{field:?}");
        }
    }

    #[test]
    fn reads_a_real_table() {
        let table = MountTable::read_self().unwrap();
        assert!(table.topmost_at(Path::new("/")).is_some());
        // The same text, fully parsed (a second read could race a mount elsewhere).
        assert_eq!(
            table.parsed().collect::<Vec<_>>(),
            mountinfo::parse(&table.text)
        );
    }
}

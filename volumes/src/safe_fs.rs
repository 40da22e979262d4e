//! Walking a tree that tenants write while we read it, as root, without ever being led
//! outside it (DESIGN.md §8).
//!
//! Snapshots, clones and usage walks run over volume directories that clients change
//! over NFS at the same time. Checking a path and then opening it again by name is a
//! TOCTOU hole: between the two a tenant swaps a directory or file for a symlink and the
//! second lookup lands on a host file. So nothing here resolves a path twice:
//! - every child is looked up once, by name, beneath its parent's descriptor
//!   (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV` and
//!   `O_PATH | O_NOFOLLOW`), which pins its inode: a symlink is pinned as the link
//!   itself, and whatever the tenant renames afterwards, the pinned inode's type and
//!   content are what we copy;
//! - a pinned directory is opened through its own descriptor (`openat(fd, ".")`), a
//!   pinned regular file through `/proc/self/fd` (the one way to reopen exactly that
//!   inode). Opening by name with `O_RDONLY` instead would let a tenant swap in a FIFO
//!   (blocks the walk) or a device node (opening some has side effects) in the window.
//!
//! A live tree also loses entries between a listing and their lookup, and a directory
//! may be removed while we list it. Both read as [`Lookup::Vanished`] or a shorter
//! listing, as `cp -a` of a live tree would skip them; only errors that are not the
//! tenant's doing reach the caller.

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Every lookup stays beneath its directory, follows no symlink (not even a trailing
/// one: `O_NOFOLLOW` with `O_PATH` pins the link itself) and crosses no mount.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_XDEV);

/// `openat2` answers EAGAIN when a concurrent rename might have raced its `..`
/// checks; our lookups have no `..`, so this bound is never expected to matter.
const EAGAIN_RETRIES: usize = 3;

/// What a walk keeps of an entry's `stat`: taken from the pinned inode, so it
/// describes what is copied even if the name now points elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    /// In 512-byte units, as `st_blocks`.
    pub blocks: u64,
    dev: u64,
    ino: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// Sockets, FIFOs, device nodes.
    Special,
}

impl Attrs {
    // The `stat` field widths differ between architectures; on some of them these
    // casts are identities.
    #[allow(clippy::unnecessary_cast)]
    fn of(stat: &rustix::fs::Stat) -> Self {
        let kind = match FileType::from_raw_mode(stat.st_mode as _) {
            FileType::Directory => Kind::Dir,
            FileType::RegularFile => Kind::File,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Special,
        };
        Self {
            kind,
            mode: (stat.st_mode as u32) & 0o7777,
            uid: stat.st_uid as u32,
            gid: stat.st_gid as u32,
            mtime_sec: stat.st_mtime as i64,
            mtime_nsec: stat.st_mtime_nsec as i64,
            blocks: stat.st_blocks as u64,
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
        }
    }
}

impl Attrs {
    /// The same from std's metadata (of one of hanfs's own paths).
    pub fn of_metadata(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let kind = match meta.file_type() {
            t if t.is_dir() => Kind::Dir,
            t if t.is_file() => Kind::File,
            t if t.is_symlink() => Kind::Symlink,
            _ => Kind::Special,
        };
        Self {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            blocks: meta.blocks(),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// An entry pinned by an `O_PATH` descriptor: its inode can no longer change under us,
/// whatever happens to its name.
#[derive(Debug)]
pub struct Pinned {
    fd: OwnedFd,
    pub attrs: Attrs,
}

/// The result of looking a name up beneath a directory.
#[derive(Debug)]
pub enum Lookup {
    Found(Pinned),
    /// Gone between the listing and the lookup (removed or renamed away).
    Vanished,
    /// Something is mounted on it: not part of this filesystem's tree.
    Mountpoint,
}

fn to_io(errno: Errno) -> io::Error {
    io::Error::from(errno)
}

/// Opens a directory of hanfs's own layout (a volume's or a copy's root). The path is
/// ours, not a tenant's, but its last component is still not followed.
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        // The stat is for the message only; nothing is opened through it.
        Errno::LOOP | Errno::NOTDIR
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a symbolic link, not a directory (hanfs never follows links in the export)",
            )
        }
        e => to_io(e),
    })
}

/// Pins `name` beneath `dir` (see the module comment).
pub fn pin(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Lookup> {
    let mut tries = 0;
    let fd = loop {
        match rustix::fs::openat2(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        ) {
            Ok(fd) => break fd,
            Err(Errno::NOENT) => return Ok(Lookup::Vanished),
            Err(Errno::XDEV) => return Ok(Lookup::Mountpoint),
            Err(Errno::AGAIN) if tries < EAGAIN_RETRIES => tries += 1,
            Err(e) => return Err(to_io(e)),
        }
    };
    let stat = rustix::fs::fstat(&fd).map_err(to_io)?;
    Ok(Lookup::Found(Pinned {
        attrs: Attrs::of(&stat),
        fd,
    }))
}

impl Pinned {
    /// Opens the pinned directory for listing and for lookups beneath it.
    pub fn open_dir(&self) -> io::Result<OwnedFd> {
        rustix::fs::openat(
            &self.fd,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(to_io)
    }

    /// Opens the pinned regular file for reading (and reflinking: `FICLONE` wants a
    /// readable source).
    pub fn open_file(&self) -> io::Result<File> {
        if self.attrs.kind != Kind::File {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only a pinned regular file is opened for reading",
            ));
        }
        // The magic link resolves to the pinned inode itself, not to any name.
        let link = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let fd = rustix::fs::open(
            link.as_str(),
            OFlags::RDONLY | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            io::Error::new(
                to_io(e).kind(),
                format!("reopening a pinned file through {link} (is /proc mounted?): {e}"),
            )
        })?;
        let reopened = Attrs::of(&rustix::fs::fstat(&fd).map_err(to_io)?);
        if (reopened.dev, reopened.ino) != (self.attrs.dev, self.attrs.ino) {
            // Only a /proc that is not procfs could do this.
            return Err(io::Error::other(format!(
                "{link} did not reopen the pinned file"
            )));
        }
        Ok(File::from(fd))
    }

    /// The target of the pinned symlink, read from the link itself.
    pub fn read_link(&self) -> io::Result<CString> {
        rustix::fs::readlinkat(&self.fd, c"", Vec::new()).map_err(to_io)
    }
}

/// The names in `dir`, without `.` and `..`. A directory removed while we list it
/// (getdents answers ENOENT) has no more entries: what was read so far is the listing.
pub fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    let entries = match rustix::fs::Dir::read_from(dir) {
        Ok(entries) => entries,
        Err(Errno::NOENT) => return Ok(names),
        Err(e) => return Err(to_io(e)),
    };
    for entry in entries {
        match entry {
            Ok(entry) => {
                let name = entry.file_name();
                if name != c"." && name != c".." {
                    names.push(name.to_owned());
                }
            }
            Err(Errno::NOENT) => break,
            Err(e) => return Err(to_io(e)),
        }
    }
    Ok(names)
}

/// `path` + `name`, for messages and the copy hook (never used to open anything).
pub fn child_path(parent: &Path, name: &CStr) -> PathBuf {
    parent.join(OsStr::from_bytes(name.to_bytes()))
}

/// Creates directory `name` beneath `dir` and opens it. Private until its attributes
/// are set (the caller does that when its content is in).
pub fn create_dir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).map_err(to_io)?;
    rustix::fs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
    .map_err(to_io)
}

/// Creates regular file `name` beneath `dir`; fails with `AlreadyExists` rather than
/// opening anything that is there.
pub fn create_file(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
        RESOLVE,
    )
    .map(File::from)
    .map_err(to_io)
}

/// Creates symlink `name` beneath `dir` pointing at `target` (never resolved).
pub fn create_symlink(dir: BorrowedFd<'_>, name: &CStr, target: &CStr) -> io::Result<()> {
    rustix::fs::symlinkat(target, dir, name).map_err(to_io)
}

/// The mtime of `attrs`; the access time is left as the copy made it.
fn times(attrs: &Attrs) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: attrs.mtime_sec,
            tv_nsec: attrs.mtime_nsec as _,
        },
    }
}

/// Owner, permission bits and mtime of `attrs` onto an open file or directory. The
/// owner goes first: `chown` clears setuid and setgid bits, `chmod` then restores them.
pub fn set_attrs(fd: impl AsFd, attrs: &Attrs) -> io::Result<()> {
    let fd = fd.as_fd();
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(attrs.uid)),
        Some(rustix::fs::Gid::from_raw(attrs.gid)),
    )
    .map_err(to_io)?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(attrs.mode as _)).map_err(to_io)?;
    rustix::fs::futimens(fd, &times(attrs)).map_err(to_io)
}

/// Owner and mtime of `attrs` onto symlink `name` beneath `dir` (a symlink has no
/// permission bits of its own).
pub fn set_link_attrs(dir: BorrowedFd<'_>, name: &CStr, attrs: &Attrs) -> io::Result<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(attrs.uid)),
        Some(rustix::fs::Gid::from_raw(attrs.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(to_io)?;
    rustix::fs::utimensat(dir, name, &times(attrs), AtFlags::SYMLINK_NOFOLLOW).map_err(to_io)
}

/// One directory being walked: its open descriptor, the names still to visit, and the
/// visitor's state for it (a copy's target directory).
struct Level<S> {
    fd: OwnedFd,
    names: std::vec::IntoIter<CString>,
    path: PathBuf,
    /// The directory's own attributes; `None` for the root (the caller owns it).
    attrs: Option<Attrs>,
    state: S,
}

/// What a walk does with each entry. Directories are visited on the way down
/// ([`Visit::enter_dir`]) and once more after their content ([`Visit::leave_dir`]), so a
/// copy can set a directory's mtime after filling it.
pub trait Visit {
    /// Per-directory state, e.g. the copy's open target directory.
    type Dir;
    /// A directory entry; `Some(state)` walks into it.
    fn enter_dir(
        &mut self,
        parent: &Self::Dir,
        name: &CStr,
        path: &Path,
        attrs: &Attrs,
    ) -> io::Result<Option<Self::Dir>>;
    /// After all of a directory's entries.
    fn leave_dir(&mut self, dir: Self::Dir, path: &Path, attrs: &Attrs) -> io::Result<()>;
    /// Any entry that is not a directory (regular file, symlink or special file).
    fn entry(
        &mut self,
        parent: &Self::Dir,
        name: &CStr,
        path: &Path,
        entry: Pinned,
    ) -> io::Result<()>;
    /// An entry that vanished or is a mount point: not visited.
    fn skipped(&mut self, path: &Path, lookup: &Lookup);
}

/// Walks the tree beneath `root` depth first, without recursion (a tenant's deep tree
/// cannot overflow the stack) and without following any symlink. Errors carry the path
/// of the entry they happened at.
pub fn walk<V: Visit>(root: &Path, state: V::Dir, visit: &mut V) -> io::Result<V::Dir> {
    let fd = open_root(root).map_err(at(root, "opening"))?;
    let names = list(fd.as_fd()).map_err(at(root, "listing"))?;
    let mut stack = vec![Level {
        fd,
        names: names.into_iter(),
        path: root.to_owned(),
        attrs: None,
        state,
    }];
    loop {
        let top = stack.last_mut().expect("the root leaves the stack last");
        let Some(name) = top.names.next() else {
            let done = stack.pop().expect("the stack is not empty here");
            match done.attrs {
                Some(attrs) => visit.leave_dir(done.state, &done.path, &attrs)?,
                None => return Ok(done.state),
            }
            continue;
        };
        let path = child_path(&top.path, &name);
        let pinned = match pin(top.fd.as_fd(), &name).map_err(at(&path, "looking up"))? {
            Lookup::Found(pinned) => pinned,
            other => {
                visit.skipped(&path, &other);
                continue;
            }
        };
        if pinned.attrs.kind != Kind::Dir {
            visit.entry(&top.state, &name, &path, pinned)?;
            continue;
        }
        let attrs = pinned.attrs;
        let fd = pinned.open_dir().map_err(at(&path, "opening"))?;
        drop(pinned);
        let Some(state) = visit.enter_dir(&top.state, &name, &path, &attrs)? else {
            continue;
        };
        let names = list(fd.as_fd()).map_err(at(&path, "listing"))?;
        stack.push(Level {
            fd,
            names: names.into_iter(),
            path,
            attrs: Some(attrs),
            state,
        });
    }
}

/// Adds what was being done, and where, to an error (its kind is kept, so callers can
/// still tell ENOSPC from EIO).
pub fn at(path: &Path, doing: &'static str) -> impl FnOnce(io::Error) -> io::Error {
    let path = path.to_owned();
    move |e| io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

/// Tries to make `dst` share `src`'s blocks (`FICLONE`). `Ok(false)` when the
/// filesystem cannot, so the caller copies instead.
pub fn reflink(src: &File, dst: &File) -> io::Result<bool> {
    match rustix::fs::ioctl_ficlone(dst, src) {
        Ok(()) => Ok(true),
        Err(Errno::OPNOTSUPP | Errno::NOTTY | Errno::XDEV | Errno::INVAL | Errno::NOSYS) => {
            Ok(false)
        }
        Err(e) => Err(to_io(e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn found(lookup: Lookup) -> Pinned {
        match lookup {
            Lookup::Found(p) => p,
            other => panic!("expected an entry, got {other:?}"),
        }
    }

    #[test]
    fn a_symlink_is_pinned_as_the_link_and_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("l")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("d")).unwrap();
        let root = open_root(dir.path()).unwrap();

        let link = found(pin(root.as_fd(), c"l").unwrap());
        assert_eq!(link.attrs.kind, Kind::Symlink);
        assert_eq!(
            link.read_link().unwrap().to_bytes(),
            outside.path().join("secret").as_os_str().as_bytes()
        );
        assert_eq!(
            link.open_file().unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let dir_link = found(pin(root.as_fd(), c"d").unwrap());
        assert_eq!(dir_link.attrs.kind, Kind::Symlink);
        // A directory lookup through the link is refused, not followed.
        assert_eq!(
            rustix::fs::openat2(&root, c"d/secret", OFlags::RDONLY, Mode::empty(), RESOLVE)
                .unwrap_err(),
            Errno::LOOP
        );
    }

    #[test]
    fn a_pinned_file_keeps_its_inode_when_the_name_is_swapped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"tenant").unwrap();
        std::fs::write(dir.path().join("host"), b"host").unwrap();
        let root = open_root(dir.path()).unwrap();
        let pinned = found(pin(root.as_fd(), c"f").unwrap());
        // The tenant swaps the name for a symlink after our lookup.
        std::fs::remove_file(dir.path().join("f")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("host"), dir.path().join("f")).unwrap();
        let mut content = String::new();
        io::Read::read_to_string(&mut pinned.open_file().unwrap(), &mut content).unwrap();
        assert_eq!(content, "tenant");
    }

    #[test]
    fn vanished_names_and_removed_directories_are_not_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("gone")).unwrap();
        let root = open_root(dir.path()).unwrap();
        assert!(matches!(
            pin(root.as_fd(), c"never-there").unwrap(),
            Lookup::Vanished
        ));
        let gone = found(pin(root.as_fd(), c"gone").unwrap());
        let gone_fd = gone.open_dir().unwrap();
        std::fs::remove_dir(dir.path().join("gone")).unwrap();
        assert_eq!(list(gone_fd.as_fd()).unwrap(), Vec::<CString>::new());
    }

    #[test]
    fn a_fifo_is_pinned_without_opening_it() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("p"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let root = open_root(dir.path()).unwrap();
        // Opening a FIFO for reading would block until a writer came; pinning does not.
        let fifo = found(pin(root.as_fd(), c"p").unwrap());
        assert_eq!(fifo.attrs.kind, Kind::Special);
        assert!(fifo.open_file().is_err());
    }

    #[test]
    fn creating_over_an_existing_name_fails_instead_of_opening_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("x"), dir.path().join("f")).unwrap();
        let root = open_root(dir.path()).unwrap();
        assert_eq!(
            create_file(root.as_fd(), c"f").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert!(
            !outside.path().join("x").exists(),
            "nothing created through the link"
        );
    }
}

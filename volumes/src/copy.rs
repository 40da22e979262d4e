//! Copies a directory tree for snapshots and clones: each regular file by reflink
//! (`FICLONE`: instant, blocks shared until written) where the filesystem can, else by
//! a full copy, counted so the caller reports which one happened (never silently).
//!
//! The source is usually a live volume that a tenant writes over NFS while we copy it
//! as root, so the walk goes by directory descriptors and never follows a symlink
//! ([`crate::safe_fs`]). Like `cp -a` of a live tree, an entry that vanishes between
//! the listing and its copy is skipped, and one that changed type is copied as what it
//! is when pinned; only errors that are not the tenant's doing (ENOSPC, EIO, ...) fail.
//!
//! Kept: directory structure, file contents, symlinks (as symlinks), permission bits,
//! owner and group, modification times. Sockets, FIFOs and device nodes are not copied
//! (a volume's data does not need them; they are counted as skipped and logged by the
//! caller), nor is anything mounted inside the tree.

use crate::safe_fs::{self, Attrs, Kind, Lookup, Pinned, Visit};
use std::ffi::CStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

/// Called with each regular file's source path after the walk has decided to copy it
/// and before it opens it: the window a tenant's swap would have to hit (lets tests
/// race that window on purpose, or pause a copy midway).
pub type CopyHook = Arc<dyn Fn(&Path) + Send + Sync>;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    pub reflinked_files: u64,
    pub copied_files: u64,
    pub copied_bytes: u64,
    /// Sockets, FIFOs, device nodes and mount points.
    pub skipped_special: u64,
    /// Entries that were gone (removed or renamed away) by the time they were copied.
    pub skipped_vanished: u64,
}

/// Tries to make `dst` share `src`'s blocks. `Ok(false)` when the filesystem cannot.
pub fn reflink(src: &File, dst: &File) -> io::Result<bool> {
    safe_fs::reflink(src, dst)
}

/// Probes whether files in `dir` can be reflinked (creates and removes two files).
pub fn probe_reflink(dir: &Path) -> io::Result<bool> {
    let src_path = dir.join(format!(".reflink-probe-src.{}", std::process::id()));
    let dst_path = dir.join(format!(".reflink-probe-dst.{}", std::process::id()));
    let result = (|| {
        fs::write(&src_path, b"hanfs reflink probe")?;
        let src = File::open(&src_path)?;
        let dst = File::create(&dst_path)?;
        reflink(&src, &dst)
    })();
    let _ = fs::remove_file(&src_path);
    let _ = fs::remove_file(&dst_path);
    result
}

/// Copies the *contents* of `src` into the existing (empty) directory `dst`; the roots'
/// own attributes are the caller's.
pub fn copy_tree(src: &Path, dst: &Path, hook: Option<&CopyHook>) -> io::Result<CopyStats> {
    let target = safe_fs::open_root(dst).map_err(safe_fs::at(dst, "opening the copy"))?;
    let mut copier = Copier {
        hook,
        stats: CopyStats::default(),
    };
    safe_fs::walk(src, target, &mut copier)?;
    Ok(copier.stats)
}

/// The copy as a [`Visit`]: each directory's state is the open target directory.
struct Copier<'a> {
    hook: Option<&'a CopyHook>,
    stats: CopyStats,
}

impl Copier<'_> {
    /// A name already taken in the target: the listing returned it twice (a live
    /// directory renamed into itself while listed). The first copy stands.
    fn duplicate(&mut self, e: &io::Error) -> bool {
        if e.kind() == io::ErrorKind::AlreadyExists {
            self.stats.skipped_vanished += 1;
            return true;
        }
        false
    }

    fn copy_file(
        &mut self,
        target_dir: &OwnedFd,
        name: &CStr,
        path: &Path,
        entry: &Pinned,
    ) -> io::Result<()> {
        if let Some(hook) = self.hook {
            hook(path);
        }
        let mut from = entry.open_file().map_err(safe_fs::at(path, "opening"))?;
        let mut to = match safe_fs::create_file(target_dir.as_fd(), name) {
            Ok(to) => to,
            Err(e) if self.duplicate(&e) => return Ok(()),
            Err(e) => return Err(safe_fs::at(path, "creating the copy of")(e)),
        };
        if reflink(&from, &to).map_err(safe_fs::at(path, "reflinking"))? {
            self.stats.reflinked_files += 1;
        } else {
            // std::io::copy uses copy_file_range where it can. A file the tenant
            // truncates meanwhile just ends early, as it would for `cp`.
            self.stats.copied_bytes +=
                io::copy(&mut from, &mut to).map_err(safe_fs::at(path, "copying"))?;
            self.stats.copied_files += 1;
        }
        safe_fs::set_attrs(&to, &entry.attrs).map_err(safe_fs::at(path, "setting attributes of"))
    }

    fn copy_symlink(
        &mut self,
        target_dir: &OwnedFd,
        name: &CStr,
        path: &Path,
        entry: &Pinned,
    ) -> io::Result<()> {
        let target = entry
            .read_link()
            .map_err(safe_fs::at(path, "reading link"))?;
        match safe_fs::create_symlink(target_dir.as_fd(), name, &target) {
            Ok(()) => {}
            Err(e) if self.duplicate(&e) => return Ok(()),
            Err(e) => return Err(safe_fs::at(path, "creating the copy of")(e)),
        }
        safe_fs::set_link_attrs(target_dir.as_fd(), name, &entry.attrs)
            .map_err(safe_fs::at(path, "setting attributes of"))
    }
}

impl Visit for Copier<'_> {
    type Dir = OwnedFd;

    fn enter_dir(
        &mut self,
        parent: &OwnedFd,
        name: &CStr,
        path: &Path,
        _attrs: &Attrs,
    ) -> io::Result<Option<OwnedFd>> {
        match safe_fs::create_dir(parent.as_fd(), name) {
            Ok(dir) => Ok(Some(dir)),
            Err(e) if self.duplicate(&e) => Ok(None),
            Err(e) => Err(safe_fs::at(path, "creating the copy of")(e)),
        }
    }

    fn leave_dir(&mut self, dir: OwnedFd, path: &Path, attrs: &Attrs) -> io::Result<()> {
        // Last, so that filling the directory did not move its mtime.
        safe_fs::set_attrs(&dir, attrs).map_err(safe_fs::at(path, "setting attributes of"))
    }

    fn entry(
        &mut self,
        parent: &OwnedFd,
        name: &CStr,
        path: &Path,
        entry: Pinned,
    ) -> io::Result<()> {
        match entry.attrs.kind {
            Kind::File => self.copy_file(parent, name, path, &entry),
            Kind::Symlink => self.copy_symlink(parent, name, path, &entry),
            Kind::Special | Kind::Dir => {
                self.stats.skipped_special += 1;
                Ok(())
            }
        }
    }

    fn skipped(&mut self, _path: &Path, lookup: &Lookup) {
        match lookup {
            Lookup::Mountpoint => self.stats.skipped_special += 1,
            _ => self.stats.skipped_vanished += 1,
        }
    }
}

/// Mode, owner and mtime of `meta` onto `path`, one of hanfs's own directories (a
/// copy's root), opened without following a symlink.
pub fn copy_attributes(meta: &fs::Metadata, path: &Path) -> io::Result<()> {
    let dir = safe_fs::open_root(path)?;
    safe_fs::set_attrs(&dir, &Attrs::of_metadata(meta))
}

/// Bytes allocated under `dir` (like `du -s`), for usage where no quota counts it.
/// Walks like the copy does: by descriptors, never following a tenant's symlink.
pub fn allocated_bytes(dir: &Path) -> io::Result<u64> {
    struct Usage(u64);
    impl Visit for Usage {
        type Dir = ();
        fn enter_dir(
            &mut self,
            _: &(),
            _: &CStr,
            _: &Path,
            attrs: &Attrs,
        ) -> io::Result<Option<()>> {
            self.0 += attrs.blocks * 512;
            Ok(Some(()))
        }
        fn leave_dir(&mut self, _: (), _: &Path, _: &Attrs) -> io::Result<()> {
            Ok(())
        }
        fn entry(&mut self, _: &(), _: &CStr, _: &Path, entry: Pinned) -> io::Result<()> {
            self.0 += entry.attrs.blocks * 512;
            Ok(())
        }
        fn skipped(&mut self, _: &Path, _: &Lookup) {}
    }
    let mut usage = Usage(0);
    safe_fs::walk(dir, (), &mut usage)?;
    Ok(usage.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn copies_a_tree_with_contents_links_and_modes() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("a/b")).unwrap();
        fs::write(src.path().join("a/b/file"), b"hello").unwrap();
        fs::set_permissions(
            src.path().join("a/b/file"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        fs::set_permissions(src.path().join("a/b"), fs::Permissions::from_mode(0o2750)).unwrap();
        std::os::unix::fs::symlink("b/file", src.path().join("a/link")).unwrap();
        nix::unistd::mkfifo(&src.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let old = nix::sys::time::TimeSpec::new(1_000_000, 5);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &src.path().join("a/b"),
            &old,
            &old,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();

        let stats = copy_tree(src.path(), dst.path(), None).unwrap();
        assert_eq!(fs::read(dst.path().join("a/b/file")).unwrap(), b"hello");
        assert_eq!(
            fs::read_link(dst.path().join("a/link")).unwrap(),
            Path::new("b/file")
        );
        assert_eq!(fs::read(dst.path().join("a/link")).unwrap(), b"hello");
        assert_eq!(
            fs::metadata(dst.path().join("a/b/file")).unwrap().mode() & 0o7777,
            0o640
        );
        let b = fs::metadata(dst.path().join("a/b")).unwrap();
        assert_eq!(b.mode() & 0o7777, 0o2750);
        assert_eq!(
            (b.mtime(), b.mtime_nsec()),
            (1_000_000, 5),
            "mtime after content"
        );
        assert_eq!(stats.reflinked_files + stats.copied_files, 1);
        assert_eq!(stats.skipped_special, 1);
        assert!(!dst.path().join("fifo").exists());
    }

    #[test]
    fn symlinks_out_of_the_tree_are_copied_as_links_and_never_followed() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"host secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), src.path().join("dir-link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), src.path().join("file-link"))
            .unwrap();

        let stats = copy_tree(src.path(), dst.path(), None).unwrap();
        for name in ["dir-link", "file-link"] {
            let meta = fs::symlink_metadata(dst.path().join(name)).unwrap();
            assert!(meta.file_type().is_symlink(), "{name} stays a symlink");
        }
        assert_eq!(
            stats.reflinked_files + stats.copied_files,
            0,
            "nothing read"
        );
        assert!(allocated_bytes(src.path()).unwrap() < 1 << 20);
    }

    #[test]
    fn a_file_swapped_for_a_symlink_in_the_copy_window_copies_the_pinned_file() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"host secret").unwrap();
        fs::write(src.path().join("f"), b"tenant").unwrap();
        let (root, secret) = (src.path().to_owned(), outside.path().join("secret"));
        // The tenant wins the race: the name is a symlink by the time the file is opened.
        let hook: CopyHook = Arc::new(move |path| {
            let _ = fs::remove_file(path);
            std::os::unix::fs::symlink(&secret, root.join("f")).unwrap();
        });
        copy_tree(src.path(), dst.path(), Some(&hook)).unwrap();
        assert_eq!(fs::read(dst.path().join("f")).unwrap(), b"tenant");
    }

    #[test]
    fn an_entry_that_vanishes_before_its_copy_is_skipped() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::write(src.path().join("f"), b"tenant").unwrap();
        fs::create_dir(src.path().join("d")).unwrap();
        fs::write(src.path().join("d/g"), b"tenant").unwrap();
        let root = src.path().to_owned();
        // The first file the walk opens takes everything else with it.
        let hook: CopyHook = Arc::new(move |_| {
            let _ = fs::remove_dir_all(root.join("d"));
            let _ = fs::remove_file(root.join("f"));
        });
        let stats = copy_tree(src.path(), dst.path(), Some(&hook)).unwrap();
        assert_eq!(stats.reflinked_files + stats.copied_files, 1);
    }

    #[test]
    fn a_missing_target_root_fails_with_its_path_named() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("f"), b"x").unwrap();
        let dst = tempfile::tempdir().unwrap();
        let err = copy_tree(src.path(), &dst.path().join("absent"), None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("opening the copy"), "{err}");
    }
}

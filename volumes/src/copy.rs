//! Copies a directory tree for snapshots and clones: each regular file by reflink
//! (`FICLONE`: instant, blocks shared until written) where the filesystem can, else by
//! a full copy, counted so the caller reports which one happened (never silently).
//!
//! Kept: directory structure, file contents, symlinks, permission bits, owner and group,
//! modification times. Sockets, FIFOs and device nodes are not copied (a volume's data
//! does not need them; they are counted as skipped and logged by the caller).
#![allow(unsafe_code)]

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

/// `_IOW(0x94, 9, int)` from `<linux/fs.h>`.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Called with each file's source path before it is copied (lets tests pause a copy
/// midway to race it against other calls).
pub type CopyHook = Arc<dyn Fn(&Path) + Send + Sync>;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    pub reflinked_files: u64,
    pub copied_files: u64,
    pub copied_bytes: u64,
    pub skipped_special: u64,
}

/// Tries to make `dst` share `src`'s blocks. `Ok(false)` when the filesystem cannot.
pub fn reflink(src: &File, dst: &File) -> std::io::Result<bool> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both are open.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EXDEV | libc::EINVAL | libc::ENOSYS) => {
            Ok(false)
        }
        _ => Err(err),
    }
}

/// Probes whether files in `dir` can be reflinked (creates and removes two files).
pub fn probe_reflink(dir: &Path) -> std::io::Result<bool> {
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

/// Copies the *contents* of `src` into the existing directory `dst`.
pub fn copy_tree(src: &Path, dst: &Path, hook: Option<&CopyHook>) -> std::io::Result<CopyStats> {
    let mut stats = CopyStats::default();
    copy_dir_contents(src, dst, hook, &mut stats)?;
    Ok(stats)
}

fn copy_dir_contents(
    src: &Path,
    dst: &Path,
    hook: Option<&CopyHook>,
    stats: &mut CopyStats,
) -> std::io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&from)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir(&to)?;
            copy_dir_contents(&from, &to, hook, stats)?;
            copy_attributes(&meta, &to)?;
        } else if kind.is_file() {
            if let Some(hook) = hook {
                hook(&from);
            }
            copy_file(&from, &to, stats)?;
            copy_attributes(&meta, &to)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &to,
                Some(meta.uid().into()),
                Some(meta.gid().into()),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(std::io::Error::from)?;
        } else {
            stats.skipped_special += 1;
        }
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path, stats: &mut CopyStats) -> std::io::Result<()> {
    let src = File::open(from)?;
    let mut dst = File::create(to)?;
    if reflink(&src, &dst)? {
        stats.reflinked_files += 1;
        return Ok(());
    }
    let mut src = src;
    // std::io::copy uses copy_file_range where it can.
    stats.copied_bytes += std::io::copy(&mut src, &mut dst)?;
    stats.copied_files += 1;
    Ok(())
}

/// Mode, owner and mtime of `meta` onto `path` (a file or directory, not a symlink).
pub fn copy_attributes(meta: &fs::Metadata, path: &Path) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    let mtime = nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &nix::sys::time::TimeSpec::UTIME_OMIT,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(std::io::Error::from)
}

/// Bytes allocated under `dir` (like `du -s`), for usage where no quota counts it.
pub fn allocated_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = fs::symlink_metadata(entry.path())?;
        total += meta.blocks() * 512;
        if meta.is_dir() {
            total += allocated_bytes(&entry.path())?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        std::os::unix::fs::symlink("b/file", src.path().join("a/link")).unwrap();
        nix::unistd::mkfifo(&src.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();

        let stats = copy_tree(src.path(), dst.path(), None).unwrap();
        assert_eq!(fs::read(dst.path().join("a/b/file")).unwrap(), b"hello");
        assert_eq!(fs::read(dst.path().join("a/link")).unwrap(), b"hello");
        assert_eq!(
            fs::metadata(dst.path().join("a/b/file")).unwrap().mode() & 0o777,
            0o640
        );
        assert_eq!(stats.reflinked_files + stats.copied_files, 1);
        assert_eq!(stats.skipped_special, 1);
        assert!(!dst.path().join("fifo").exists());
    }
}

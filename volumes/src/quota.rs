//! Project ids and project quota limits: each volume directory is its own project, so
//! its size is enforced by the filesystem (XFS `prjquota`, ext4 `project,quota`) and
//! `df` of the mounted volume shows the volume, not the whole export.
//!
//! Support is detected, never assumed: a kernel without `CONFIG_QUOTA`/`CONFIG_XFS_QUOTA`
//! (like the CI host's) or a filesystem mounted without project quotas makes
//! [`QuotaSupport::detect`] say so with the reason, and volumes are then created
//! without enforced limits (reported in Status and each Volume).
//!
//! Raw ioctls and `quotactl_fd(2)` need `unsafe`; each call site is a single syscall
//! on a struct that lives for the duration of the call.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `struct fsxattr` from `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `_IOR('X', 31, struct fsxattr)` and `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
/// New files and directories inherit the directory's project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

/// `struct if_dqblk` from `<linux/quota.h>`; block limits are in 1 KiB units.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct IfDqblk {
    bhardlimit: u64,
    bsoftlimit: u64,
    curspace: u64,
    ihardlimit: u64,
    isoftlimit: u64,
    curinodes: u64,
    btime: u64,
    itime: u64,
    valid: u32,
}

const PRJQUOTA: u32 = 2;
const Q_GETINFO: u32 = 0x80_0005;
const Q_GETQUOTA: u32 = 0x80_0007;
const Q_SETQUOTA: u32 = 0x80_0008;
const QIF_BLIMITS: u32 = 1;
const QUOTA_BLOCK: u64 = 1024;

fn qcmd(cmd: u32, kind: u32) -> libc::c_int {
    ((cmd << 8) | (kind & 0xff)) as libc::c_int
}

fn quotactl_fd(fd: &File, cmd: u32, id: u32, addr: *mut libc::c_void) -> std::io::Result<()> {
    // SAFETY: `fd` is an open descriptor; `addr` is null or points to a live struct of
    // the type the command expects, for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_raw_fd(),
            qcmd(cmd, PRJQUOTA) as libc::c_uint,
            id,
            addr,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn get_fsxattr(file: &File) -> std::io::Result<FsXattr> {
    let mut attr = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR writes one `struct fsxattr` into `attr`.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            FS_IOC_FSGETXATTR,
            &mut attr as *mut FsXattr,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(attr)
    }
}

fn set_fsxattr(file: &File, attr: &FsXattr) -> std::io::Result<()> {
    // SAFETY: FS_IOC_FSSETXATTR reads one `struct fsxattr` from `attr`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FSSETXATTR, attr as *const FsXattr) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// What the export's filesystem can do with project quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaSupport {
    /// Directories can carry project ids (XFS; ext4 with the `project` feature).
    pub project_ids: bool,
    /// Limits on those projects are enforced (project quota accounting is on).
    pub enforced: bool,
    /// Why, in words an admin can act on.
    pub detail: String,
}

impl QuotaSupport {
    /// Probes `root` (the export root) for project ids and project quota enforcement,
    /// creating a throwaway directory in `scratch` (same filesystem) to try tagging it.
    pub fn detect(root: &Path, scratch: &Path) -> Self {
        let file = match File::open(root) {
            Ok(f) => f,
            Err(e) => return Self::none(format!("cannot open {}: {e}", root.display())),
        };
        let project_ids = can_tag_projects(scratch);
        let mut info = [0u8; 64];
        match quotactl_fd(&file, Q_GETINFO, 0, info.as_mut_ptr().cast()) {
            Ok(()) if project_ids => Self {
                project_ids,
                enforced: true,
                detail: "project quotas enforced: each volume's size is a hard limit".into(),
            },
            Ok(()) => Self::none("quota is on but directories cannot carry project ids".into()),
            Err(e) => {
                let why = match e.raw_os_error() {
                    Some(libc::ENOSYS) => "the kernel has no quota support (CONFIG_QUOTA / quotactl_fd missing)".to_string(),
                    Some(libc::ESRCH) => "project quota accounting is off on this filesystem: mount XFS with -o prjquota (ext4: tune2fs -O project,quota and mount with prjquota)".to_string(),
                    Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL) => "this filesystem does not support project quotas (use XFS with prjquota)".to_string(),
                    _ => format!("quotactl failed: {e}"),
                };
                Self {
                    project_ids,
                    enforced: false,
                    detail: format!("sizes NOT enforced: {why}"),
                }
            }
        }
    }

    fn none(detail: String) -> Self {
        Self {
            project_ids: false,
            enforced: false,
            detail: format!("sizes NOT enforced: {detail}"),
        }
    }
}

/// ext4 without the `project` feature reads project ids but refuses to set them, so
/// only a real attempt tells.
fn can_tag_projects(scratch: &Path) -> bool {
    let probe = scratch.join(format!(".project-probe.{}", std::process::id()));
    let ok = std::fs::create_dir(&probe).is_ok() && assign_project(&probe, 1).is_ok();
    let _ = std::fs::remove_dir(&probe);
    ok
}

/// Makes `dir` project `id` with inheritance, so everything created inside belongs to it.
pub fn assign_project(dir: &Path, id: u32) -> std::io::Result<()> {
    let file = File::open(dir)?;
    let mut attr = get_fsxattr(&file)?;
    attr.projid = id;
    attr.xflags |= FS_XFLAG_PROJINHERIT;
    set_fsxattr(&file, &attr)
}

/// Sets the hard block limit of project `id` to `bytes` (rounded up to 1 KiB).
/// `fs` is any open file on the filesystem (the export root).
pub fn set_limit(fs: &Path, id: u32, bytes: u64) -> std::io::Result<()> {
    let file = File::open(fs)?;
    let blocks = bytes.div_ceil(QUOTA_BLOCK);
    let mut quota = IfDqblk {
        bhardlimit: blocks,
        bsoftlimit: blocks,
        valid: QIF_BLIMITS,
        ..Default::default()
    };
    quotactl_fd(&file, Q_SETQUOTA, id, (&mut quota as *mut IfDqblk).cast())
}

/// The project id of `dir` (0: none).
pub fn project_of(dir: &Path) -> std::io::Result<u32> {
    Ok(get_fsxattr(&File::open(dir)?)?.projid)
}

/// The hard block limit of project `id` in bytes (0: no limit).
pub fn limit(fs: &Path, id: u32) -> std::io::Result<u64> {
    let file = File::open(fs)?;
    let mut quota = IfDqblk::default();
    quotactl_fd(&file, Q_GETQUOTA, id, (&mut quota as *mut IfDqblk).cast())?;
    Ok(quota.bhardlimit.saturating_mul(QUOTA_BLOCK))
}

/// Bytes charged to project `id`.
pub fn usage(fs: &Path, id: u32) -> std::io::Result<u64> {
    let file = File::open(fs)?;
    let mut quota = IfDqblk::default();
    quotactl_fd(&file, Q_GETQUOTA, id, (&mut quota as *mut IfDqblk).cast())?;
    Ok(quota.curspace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_the_kernel_abi() {
        // The ioctl numbers encode sizeof(struct fsxattr) = 28.
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!((FS_IOC_FSGETXATTR >> 16) & 0x3fff, 28);
        // struct if_dqblk: 8 u64 + u32, padded to 72.
        assert_eq!(std::mem::size_of::<IfDqblk>(), 72);
        assert_eq!(qcmd(Q_SETQUOTA, PRJQUOTA), 0x8000_0802_u32 as i32);
    }

    #[test]
    fn detection_on_a_plain_directory_reports_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let support = QuotaSupport::detect(dir.path(), dir.path());
        // Whatever this kernel can do, the answer comes with words an admin can act on.
        assert!(!support.detail.is_empty());
        if !support.enforced {
            assert!(
                support.detail.contains("NOT enforced"),
                "{}",
                support.detail
            );
        }
    }
}

//! What the volume tests on a real XFS filesystem share: a loop-mounted image that is
//! unmounted when the test ends, also when it fails. Needs root and `mkfs.xfs`
//! (xfsprogs, which `.ci/run` installs).

#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::{Path, PathBuf};
use std::process::Command;

/// Unmounts the image when the test ends, also when it fails.
pub struct LoopMount {
    pub mountpoint: PathBuf,
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mountpoint).status();
        // If something still holds it, detach lazily: a leaked mount breaks the next run.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Runs `cmd`, panicking with its stderr when it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh XFS filesystem (reflink on) of `bytes`, as `<dir>/export.img` mounted on
/// `<dir>/export`.
pub fn mount_xfs(dir: &Path, bytes: u64) -> LoopMount {
    let image = dir.join("export.img");
    let mountpoint = dir.join("export");
    std::fs::create_dir(&mountpoint).unwrap();
    std::fs::File::create(&image)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    run(Command::new("mkfs.xfs")
        .args(["-q", "-m", "reflink=1"])
        .arg(&image));
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&mountpoint));
    LoopMount { mountpoint }
}

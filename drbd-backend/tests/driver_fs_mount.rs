//! The mount driver against real mounts: a loop-mounted ext4 image (standing in for
//! /dev/drbd0) and tmpfs, in a tempdir. Needs root, `losetup`, `mkfs.ext4`.
//! Whatever happens, the guard kills helper processes, lazily unmounts everything under
//! the tempdir and detaches the loop device.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failure by design

use common::mountinfo;
use drbd_backend::drivers::fs_mount::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Scratch {
    dir: tempfile::TempDir,
    loop_device: Option<PathBuf>,
    children: Vec<Child>,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
            loop_device: None,
            children: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh ext4 image on a loop device, and an empty mount point `mnt`.
    fn ext4(&mut self) -> FsMount {
        let image = self.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        self.loop_device = Some(device.clone());
        let mountpoint = self.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let mut m = FsMount::new(device, mountpoint, "ext4");
        m.options = vec!["noatime".into()];
        m.timeout = Duration::from_secs(20);
        m
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deepest (latest) mounts first; lazy so that nothing can make this fail.
        let mut ours: Vec<PathBuf> = mountinfo::read_self()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(self.dir.path()))
            .collect();
        ours.reverse();
        for mountpoint in ours {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&mountpoint)
                .stderr(Stdio::null())
                .status();
        }
        if let Some(device) = &self.loop_device {
            let _ = Command::new("losetup")
                .arg("-d")
                .arg(device)
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn mount_probe_remount_read_only_and_unmount() {
    let mut scratch = Scratch::new();
    let m = scratch.ext4();
    assert!(!m.is_mounted().await.unwrap());
    m.mount().await.unwrap();
    assert!(m.is_mounted().await.unwrap());
    let entry = m.mounted().await.unwrap().unwrap();
    assert_eq!(entry.fstype, "ext4");
    assert_eq!(Path::new(&entry.source), m.device);
    assert!(
        entry.mount_options.iter().any(|o| o == "noatime"),
        "{entry:?}"
    );
    // Mounting again from the same device is a no-op.
    m.mount().await.unwrap();
    assert_eq!(m.mounted().await.unwrap().unwrap().mount_id, entry.mount_id);

    m.probe_writable().await.unwrap();
    assert!(
        !m.mountpoint.join(PROBE_FILE).exists(),
        "the probe file must be removed"
    );

    // What ext4's errors=remount-ro (or an admin) does to a failing filesystem.
    run(Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&m.mountpoint));
    assert!(m.mounted().await.unwrap().unwrap().read_only());
    let err = m.probe_writable().await.unwrap_err();
    match &err {
        FsError::ProbeFailed { step, source, path } => {
            assert_eq!(*step, "create");
            assert_eq!(source.raw_os_error(), Some(libc::EROFS), "{source}");
            assert_eq!(path, &m.mountpoint.join(PROBE_FILE));
        }
        other => panic!("wrong error: {other:?}"),
    }

    assert_eq!(m.unmount().await.unwrap(), UnmountOutcome::Clean);
    assert!(!m.is_mounted().await.unwrap());
    assert_eq!(m.unmount().await.unwrap(), UnmountOutcome::NotMounted);
}

#[tokio::test]
async fn a_busy_mount_falls_back_to_a_lazy_unmount() {
    let mut scratch = Scratch::new();
    let m = scratch.ext4();
    m.mount().await.unwrap();
    // A process whose working directory is inside keeps the filesystem busy.
    let holder = Command::new("sleep")
        .arg("60")
        .current_dir(&m.mountpoint)
        .spawn()
        .unwrap();
    scratch.children.push(holder);
    let started = Instant::now();
    assert_eq!(m.unmount().await.unwrap(), UnmountOutcome::Lazy);
    assert!(!m.is_mounted().await.unwrap());
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn a_mount_point_taken_by_something_else_is_refused() {
    let scratch = Scratch::new();
    let mountpoint = scratch.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "hanfs-test-other"])
        .arg(&mountpoint));
    let m = FsMount::new("/dev/hanfs-test-no-such-device", &mountpoint, "ext4");
    let err = m.mount().await.unwrap_err();
    assert!(
        matches!(&err, FsError::MountpointTaken { found_source, .. } if found_source == "hanfs-test-other"),
        "{err}"
    );

    // The same source text counts as ours when the device is not a block device.
    let tmpfs = FsMount::new("hanfs-test-other", &mountpoint, "tmpfs");
    tmpfs.mount().await.unwrap();
    tmpfs.probe_writable().await.unwrap();
    assert_eq!(tmpfs.unmount().await.unwrap(), UnmountOutcome::Clean);
}

#[tokio::test]
async fn mount_failures_carry_the_command_and_stderr() {
    let scratch = Scratch::new();
    let mountpoint = scratch.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let m = FsMount::new(scratch.path().join("no-such-device"), &mountpoint, "ext4");
    let err = m.mount().await.unwrap_err();
    assert!(
        matches!(
            &err,
            FsError::Command {
                action: "mount",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no-such-device"), "{err}");

    let relative = FsMount::new("/dev/null", "relative/mnt", "ext4");
    assert!(matches!(
        relative.is_mounted().await.unwrap_err(),
        FsError::RelativeMountpoint(_)
    ));
}

#[tokio::test]
async fn a_hung_write_probe_times_out_without_blocking_the_runtime() {
    let scratch = Scratch::new();
    // Opening a FIFO for writing blocks until a reader comes: as good as a hung disk.
    let fifo = scratch.path().join(PROBE_FILE);
    run(Command::new("mkfifo").arg(&fifo));
    let started = Instant::now();
    let err = probe_writable(scratch.path(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(&err, FsError::ProbeTimedOut { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Release the stuck probe thread (it then fails at fsync and ends).
    let _reader = std::fs::File::open(&fifo).unwrap();
}

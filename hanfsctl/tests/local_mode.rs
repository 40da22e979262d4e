//! The README's local mode, end to end: `hanfsctl local up` starts the three real
//! binaries, and the CLI walks a volume through its life the way a newcomer would.

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HANFSCTL: &str = env!("CARGO_BIN_EXE_hanfsctl");

/// Stops local mode and lazily unmounts anything left under the test dir, also when
/// the test fails halfway.
struct LocalMode {
    child: Child,
    dir: PathBuf,
}

impl Drop for LocalMode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for line in mounts.lines() {
            if let Some(target) = line.split(' ').nth(1)
                && target.starts_with(self.dir.to_str().unwrap())
            {
                let _ = Command::new("umount").arg("-l").arg(target).status();
            }
        }
    }
}

fn run_ctl(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(HANFSCTL)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ctl(dir: &Path, args: &[&str]) -> String {
    let out = run_ctl(dir, args);
    assert!(
        out.status.success(),
        "hanfsctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ctl_fails(dir: &Path, args: &[&str]) -> String {
    let out = run_ctl(dir, args);
    assert!(!out.status.success(), "hanfsctl {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn start(dir: &Path) -> LocalMode {
    let bin_dir = Path::new(HANFSCTL).parent().unwrap();
    for bin in ["hanfs-backend", "hanfs-controller", "hanfs-node"] {
        assert!(
            bin_dir.join(bin).exists(),
            "{bin} is not built next to hanfsctl: run `cargo build --bins` first"
        );
    }
    let mut child = Command::new(HANFSCTL)
        .arg("--dir")
        .arg(dir)
        .args(["local", "up"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let local = LocalMode {
        child,
        dir: dir.to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("local mode is up") => return local,
            Ok(_) => {}
            Err(e) => panic!("local mode did not come up: {e}"),
        }
    }
}

#[test]
fn a_volume_lives_its_whole_life_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut local = start(dir);

    let created = ctl(dir, &["volume", "create", "demo", "--size", "100Mi"]);
    assert!(created.starts_with("v1/local/demo  100.0Mi"), "{created}");
    let target = dir.join("mnt/demo");
    ctl(dir, &["publish", "v1/local/demo", target.to_str().unwrap()]);
    std::fs::write(target.join("hello.txt"), "hello").unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("export/volumes/demo/hello.txt")).unwrap(),
        "hello"
    );

    let snap = ctl(
        dir,
        &[
            "snapshot",
            "create",
            "demo-snap",
            "--volume",
            "v1/local/demo",
        ],
    );
    assert!(
        snap.starts_with("s1/local/demo-snap  of v1/local/demo"),
        "{snap}"
    );
    std::fs::write(target.join("hello.txt"), "changed").unwrap();
    ctl(
        dir,
        &[
            "volume",
            "create",
            "restored",
            "--from-snapshot",
            "s1/local/demo-snap",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("export/volumes/restored/hello.txt")).unwrap(),
        "hello"
    );

    let stats = ctl(dir, &["stats", "v1/local/demo", target.to_str().unwrap()]);
    assert!(stats.contains("health: normal"), "{stats}");
    let status = ctl(dir, &["status"]);
    assert!(status.contains("volumes:    2   snapshots: 1"), "{status}");
    assert!(status.contains("quota:"), "{status}");

    // Mistakes get messages that say what to do.
    let err = ctl_fails(dir, &["publish", "v1/local/demo", "/etc/hanfs-test"]);
    assert!(err.contains("InvalidArgument"), "{err}");
    let err = ctl_fails(dir, &["volume", "create", "../x"]);
    assert!(err.contains("may only contain"), "{err}");

    ctl(
        dir,
        &["unpublish", "v1/local/demo", target.to_str().unwrap()],
    );
    assert!(!target.exists());
    ctl(dir, &["volume", "delete", "v1/local/demo"]);
    ctl(dir, &["volume", "delete", "v1/local/restored"]);
    ctl(dir, &["snapshot", "delete", "s1/local/demo-snap"]);
    assert_eq!(ctl(dir, &["volume", "list"]), "");

    // SIGTERM stops all three cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(local.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = local.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "local mode did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        !dir.join("sockets/node.sock").exists(),
        "sockets are removed on shutdown"
    );
}

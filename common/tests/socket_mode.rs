//! CSI sockets (controller, node) and local mode's volume API socket are all bound by
//! `Listener::bind`: each must be mode 0600 from the moment it exists, so that an
//! unprivileged user on the node cannot connect and ask for any volume to be mounted.

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use common::endpoint::{Endpoint, Listener};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

/// Tries to connect to `socket` as user `nobody`; Ok(()) when it connected, else the
/// error text python printed.
fn connect_as_nobody(socket: &Path) -> Result<(), String> {
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "/usr/bin/python3", "-c"])
        .arg(
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.connect(sys.argv[1])\n",
        )
        .arg(socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn a_unix_socket_is_0600_and_an_unprivileged_user_cannot_connect() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: runuser needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Anyone may walk the directory: only the socket's own mode may keep them out.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("sub/csi.sock");
    let listener = Listener::bind(&Endpoint::Unix(socket.clone()))
        .await
        .unwrap();

    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "socket mode");
    // Nothing of the private staging directory is left next to it.
    let names: Vec<_> = std::fs::read_dir(socket.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["csi.sock"]);

    // Its owner connects (the CO's sidecars and kubelet run as root) ...
    std::os::unix::net::UnixStream::connect(&socket).expect("root connects");
    // ... nobody else does.
    let refused = connect_as_nobody(&socket).expect_err("nobody connected to a 0600 socket");
    assert!(refused.contains("PermissionError"), "{refused}");

    // The control: the same socket opened to all lets nobody in, so the refusal above
    // was the socket's mode and not something else in the way.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    connect_as_nobody(&socket).expect("nobody connects to a 0666 socket");
    drop(listener);
}

#[tokio::test]
async fn binding_leaves_no_staging_directory_behind_on_success_or_failure() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let listener = Listener::bind(&Endpoint::Unix(socket.clone()))
        .await
        .unwrap();
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names(dir.path()), ["csi.sock"]);
    // A directory too deep for a socket address (108 bytes) makes bind(2) fail in the
    // staging directory, which must go with it.
    let deep = dir.path().join("d".repeat(100));
    let err = Listener::bind(&Endpoint::Unix(deep.join("csi.sock")))
        .await
        .err()
        .expect("a socket path beyond 108 bytes cannot be bound");
    assert!(err.to_string().contains("binding"), "{err}");
    assert_eq!(names(&deep), Vec::<String>::new());
    drop(listener);
}

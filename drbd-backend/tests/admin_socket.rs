//! The admin socket (it can force-promote a node) as `hanfs-backend agent` binds it
//! (`servers::bind_admin_socket`): 0600 in a 0700 directory, 0600 from the first moment
//! the path exists; the real `hanfs-backend status` client works as root and is refused
//! as an unprivileged user (run as `nobody` through setuid in the child), through the
//! directory and, with the directory opened up, by the socket's own mode.
//!
//! Needs root (to bind as root and to setuid the client to nobody).

#![allow(clippy::unwrap_used)] // test helpers panic on setup failure by design

use drbd_backend::servers::{AdminSocketError, bind_admin_socket};
use proto::backend::v1 as pb;
use proto::backend::v1::admin_server::{Admin, AdminServer};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

const NOBODY: u32 = 65534;

/// Answers like an agent would, enough for `hanfs-backend status` to print; what is under
/// test is who can reach it.
struct StubAdmin;

#[tonic::async_trait]
impl Admin for StubAdmin {
    async fn status(
        &self,
        _: Request<pb::AdminStatusRequest>,
    ) -> Result<Response<pb::AdminStatus>, Status> {
        Ok(Response::new(pb::AdminStatus {
            node: "storage-a".into(),
            peer: "storage-b".into(),
            summary: "standby (test)".into(),
            ..Default::default()
        }))
    }
    async fn switchover(
        &self,
        _: Request<pb::SwitchoverRequest>,
    ) -> Result<Response<pb::SwitchoverResponse>, Status> {
        Err(Status::failed_precondition("test"))
    }
    async fn force_promote(
        &self,
        _: Request<pb::ForcePromoteRequest>,
    ) -> Result<Response<pb::ForcePromoteResponse>, Status> {
        Err(Status::failed_precondition("test"))
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// `hanfs-backend status --socket <path>`, as root or as `nobody`; bounded.
fn status_as(socket: &Path, uid: Option<u32>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hanfs-backend"));
    cmd.args(["status", "--socket"])
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("hanfs-backend status hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn only_root_reaches_the_admin_socket() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root");
    let outer = tempfile::tempdir().unwrap();
    // Anyone may traverse the outer directory: what refuses must be ours.
    std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = outer.path().join("run-hanfs");
    let socket = dir.join("admin.sock");

    // Watch the path from another thread while it is created: the first sight of it must
    // already be 0600 (a bind followed by chmod would show the umask's mode first).
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (socket, stop) = (socket.clone(), stop.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(10) {
                if let Ok(meta) = std::fs::symlink_metadata(&socket) {
                    return Some(meta.permissions().mode() & 0o777);
                }
                std::hint::spin_loop();
            }
            None
        })
    };
    let listener = bind_admin_socket(&socket, false).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let first_seen = watcher.join().unwrap();
    assert_eq!(
        first_seen,
        Some(0o600),
        "the socket's mode when it first appeared"
    );
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&socket), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec!["admin.sock"], "no staging leftovers");

    let router = tonic::transport::Server::builder().add_service(AdminServer::new(StubAdmin));
    let server = tokio::spawn(common::endpoint::serve(
        router,
        listener,
        std::future::pending(),
    ));

    let socket_for_blocking = socket.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || status_as(&socket_for_blocking, None))
        .await
        .unwrap();
    assert!(ok, "root is served: {out}");
    assert!(out.contains("storage-a"), "{out}");

    let mut refused = 0;
    let s = socket.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || status_as(&s, Some(NOBODY)))
        .await
        .unwrap();
    assert!(!ok, "nobody must be refused: {out}");
    assert!(out.contains("Permission denied"), "{out}");
    refused += 1;

    // Even with the directory opened up, the socket's own mode refuses.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = socket.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || status_as(&s, Some(NOBODY)))
        .await
        .unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(!ok, "nobody must be refused by the socket's mode: {out}");
    assert!(out.contains("Permission denied"), "{out}");
    refused += 1;
    println!("admin socket: root served, unprivileged user refused {refused} of 2 ways");
    server.abort();
}

#[tokio::test]
async fn a_shared_or_foreign_directory_is_refused_and_the_own_one_tightened() {
    let outer = tempfile::tempdir().unwrap();
    let wide = outer.path().join("wide");
    std::fs::create_dir(&wide).unwrap();
    std::fs::set_permissions(&wide, std::fs::Permissions::from_mode(0o755)).unwrap();

    // Someone else's directory (say /run): refused, left as it was, no socket made.
    let err = bind_admin_socket(&wide.join("admin.sock"), false)
        .await
        .err()
        .expect("a 0755 directory that is not the agent's own");
    assert!(matches!(err, AdminSocketError::Untrusted { .. }), "{err}");
    assert!(err.to_string().contains("chmod 700"), "{err}");
    assert_eq!(mode(&wide), 0o755);
    assert!(!wide.join("admin.sock").exists());

    // The agent's own state directory (kubelet's hostPath makes it 0755): tightened.
    let listener = bind_admin_socket(&wide.join("admin.sock"), true)
        .await
        .unwrap();
    assert_eq!(mode(&wide), 0o700);
    drop(listener);

    // A symlinked directory is refused, own or not.
    let link = outer.path().join("link");
    std::os::unix::fs::symlink(&wide, &link).unwrap();
    let err = bind_admin_socket(&link.join("admin.sock"), true)
        .await
        .err()
        .expect("a symlink");
    assert!(err.to_string().contains("not a directory"), "{err}");

    // A directory owned by another user is refused.
    if nix::unistd::geteuid().is_root() {
        let foreign = outer.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(
            &foreign,
            Some(nix::unistd::Uid::from_raw(NOBODY)),
            Some(nix::unistd::Gid::from_raw(NOBODY)),
        )
        .unwrap();
        let err = bind_admin_socket(&foreign.join("admin.sock"), true)
            .await
            .err()
            .expect("owned by nobody");
        assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
    }
}

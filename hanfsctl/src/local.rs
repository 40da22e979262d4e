//! Local mode: the three hanfs binaries on one machine, wired by unix sockets, serving
//! a plain directory (no Kubernetes, no DRBD, no NFS: the node bind-mounts).
//!
//! ```text
//! <dir>/export/        the export (volumes/, snapshots/, .hanfs/)
//! <dir>/mnt/           where `hanfsctl publish` may mount volumes
//! <dir>/sockets/       backend.sock, controller.sock, node.sock
//! ```

use common::endpoint::Endpoint;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long the binaries get to create their sockets.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long they get to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Sockets {
    pub backend: Endpoint,
    pub controller: Endpoint,
    pub node: Endpoint,
}

impl Sockets {
    pub fn under(dir: &Path) -> Self {
        let socket = |name: &str| Endpoint::Unix(dir.join("sockets").join(name));
        Self {
            backend: socket("backend.sock"),
            controller: socket("controller.sock"),
            node: socket("node.sock"),
        }
    }

    /// Replaces the controller and node endpoints where the user named others (a real
    /// deployment instead of local mode).
    pub fn with_overrides(
        mut self,
        controller: Option<&str>,
        node: Option<&str>,
    ) -> Result<Self, Error> {
        if let Some(text) = controller {
            self.controller =
                Endpoint::parse(text).map_err(|e| format!("--controller {text:?}: {e}"))?;
        }
        if let Some(text) = node {
            self.node = Endpoint::parse(text).map_err(|e| format!("--node {text:?}: {e}"))?;
        }
        Ok(self)
    }

    /// Replaces the backend endpoint (`status` against a storage server's VIP).
    pub fn with_backend(mut self, backend: Option<&str>) -> Result<Self, Error> {
        if let Some(text) = backend {
            self.backend = Endpoint::parse(text).map_err(|e| format!("--backend {text:?}: {e}"))?;
        }
        Ok(self)
    }
}

fn socket_path(endpoint: &Endpoint) -> &Path {
    match endpoint {
        Endpoint::Unix(path) => path,
        Endpoint::Tcp(_) => Path::new(""),
    }
}

/// A started binary, SIGKILLed if dropped without a clean stop.
struct Running {
    name: &'static str,
    child: Child,
}

fn spawn(bin_dir: &Path, name: &'static str, args: &[String]) -> Result<Running, Error> {
    let program = bin_dir.join(name);
    let child = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "starting {}: {e} (build it first: cargo build --release)",
                program.display()
            )
        })?;
    Ok(Running { name, child })
}

async fn wait_for_socket(running: &mut Running, socket: &Path) -> Result<(), Error> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if socket.exists() {
            return Ok(());
        }
        if let Some(status) = running.child.try_wait()? {
            return Err(format!("{} exited during start-up ({status})", running.name).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "{} did not create {} within {START_TIMEOUT:?}",
        running.name,
        socket.display()
    )
    .into())
}

async fn stop(mut running: Running) {
    if let Some(pid) = running.child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(STOP_TIMEOUT, running.child.wait())
        .await
        .is_err()
    {
        eprintln!(
            "{} did not stop within {STOP_TIMEOUT:?}: killing it",
            running.name
        );
        let _ = running.child.kill().await;
    }
}

pub async fn up(dir: &Path, cluster_id: &str, bin_dir: Option<PathBuf>) -> Result<(), Error> {
    let bin_dir = match bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .ok_or("hanfsctl has no parent directory")?
            .to_owned(),
    };
    let export = dir.join("export");
    let mounts = dir.join("mnt");
    for path in [&export, &mounts, &dir.join("sockets")] {
        std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    }
    let sockets = Sockets::under(dir);
    let s = |p: &Path| p.display().to_string();

    let mut started = Vec::new();
    let result = async {
        let mut backend = spawn(
            &bin_dir,
            "hanfs-backend",
            &[
                "--export-root".into(),
                s(&export),
                "--listen".into(),
                sockets.backend.to_string(),
                "--capacity-policy".into(),
                "reserve".into(),
            ],
        )?;
        wait_for_socket(&mut backend, socket_path(&sockets.backend)).await?;
        started.push(backend);
        let mut controller = spawn(
            &bin_dir,
            "hanfs-controller",
            &[
                "--endpoint".into(),
                sockets.controller.to_string(),
                "--cluster-id".into(),
                cluster_id.into(),
                "--backend".into(),
                sockets.backend.to_string(),
            ],
        )?;
        wait_for_socket(&mut controller, socket_path(&sockets.controller)).await?;
        started.push(controller);
        let mut node = spawn(
            &bin_dir,
            "hanfs-node",
            &[
                "--endpoint".into(),
                sockets.node.to_string(),
                "--cluster-id".into(),
                cluster_id.into(),
                "--node-id".into(),
                "local".into(),
                // Local mode's node id `local@127.0.0.1`: ControllerPublish records it
                // (no nfsd here, so nothing is exported; the node bind-mounts).
                "--node-address".into(),
                "127.0.0.1".into(),
                "--transport".into(),
                "local".into(),
                "--local-export-root".into(),
                s(&export),
                "--allowed-target-root".into(),
                s(&mounts),
            ],
        )?;
        wait_for_socket(&mut node, socket_path(&sockets.node)).await?;
        started.push(node);
        Ok::<_, Error>(())
    }
    .await;
    if let Err(error) = result {
        for running in started.into_iter().rev() {
            stop(running).await;
        }
        return Err(error);
    }

    let dir_flag = if dir == Path::new("/tmp/hanfs-local") {
        String::new()
    } else {
        format!(" --dir {}", dir.display())
    };
    println!(
        "hanfs local mode is up (export {}, cluster id {cluster_id:?}).",
        export.display()
    );
    println!(
        "CSI sockets: controller {}, node {}",
        sockets.controller, sockets.node
    );
    println!("Try, in another shell:");
    println!("  hanfsctl{dir_flag} volume create demo --size 100Mi");
    println!(
        "  hanfsctl{dir_flag} publish v1/{cluster_id}/demo {}/demo",
        mounts.display()
    );
    println!("  echo hello > {}/demo/hello.txt", mounts.display());
    println!("  hanfsctl{dir_flag} snapshot create demo-snap --volume v1/{cluster_id}/demo");
    println!(
        "  hanfsctl{dir_flag} stats v1/{cluster_id}/demo {}/demo",
        mounts.display()
    );
    println!("  hanfsctl{dir_flag} status");
    println!(
        "  hanfsctl{dir_flag} unpublish v1/{cluster_id}/demo {}/demo",
        mounts.display()
    );
    println!("  hanfsctl{dir_flag} volume delete v1/{cluster_id}/demo");
    println!("Ctrl-C stops hanfs.");

    let exited = async {
        // Whichever binary dies first ends local mode: a half-running driver misleads.
        let mut polls = tokio::time::interval(Duration::from_millis(500));
        loop {
            polls.tick().await;
            for running in started.iter_mut() {
                if let Ok(Some(status)) = running.child.try_wait() {
                    return format!("{} exited ({status})", running.name);
                }
            }
        }
    };
    tokio::select! {
        _ = common::endpoint::shutdown_signal() => {}
        reason = exited => eprintln!("stopping local mode: {reason}"),
    }
    for running in started.into_iter().rev() {
        stop(running).await;
    }
    println!(
        "hanfs local mode stopped; data stays in {}",
        export.display()
    );
    Ok(())
}

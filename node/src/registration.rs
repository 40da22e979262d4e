//! Kubelet plugin registration, served by the plugin itself instead of the
//! node-driver-registrar sidecar (whose images and modules cannot be had here, see
//! DESIGN.md §7).
//!
//! kubelet's plugin watcher watches `<kubelet-dir>/plugins_registry/` for unix sockets.
//! For a new one it calls `GetInfo` (type, driver name, where the CSI socket is),
//! registers the driver (calling NodeGetInfo on that CSI socket), and reports the outcome
//! with `NotifyRegistrationStatus`. Removing the socket deregisters the driver, so the
//! socket lives exactly as long as the plugin serves.
//!
//! A failed registration is kept in [`RegistrationState`]; the health service turns
//! NOT_SERVING on it (see [`crate::health`]) rather than the process exiting, because:
//! kubelet's plugin manager retries a failed registration by itself, and a later success
//! makes us healthy again without a restart; an exit would also cut short CSI calls in
//! flight (an unmount halfway) for a condition that a restart may not even fix; and if
//! it persists, kubelet's gRPC liveness probe on the health service restarts the
//! container, which is what the upstream registrar's exit achieves.
//!
//! kubelet sends the socket's path as the HTTP/2 `:authority`, which h2 rejects, so every
//! connection goes through [`h2_authority`] on its way to the tonic server.

mod h2_authority;

use common::endpoint::EndpointError;
use proto::pluginregistration::registration_server::{Registration, RegistrationServer};
use proto::pluginregistration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

/// `PluginInfo.type` of a CSI driver (`k8s.io/kubelet/pkg/apis/pluginregistration/v1`'s
/// `CSIPlugin` constant).
pub const CSI_PLUGIN_TYPE: &str = "CSIPlugin";

/// CSI spec versions kubelet may speak to us; kubelet picks the highest it knows.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

/// Registration is served when this is configured.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// kubelet's `plugins_registry` directory, as this process sees it.
    pub dir: PathBuf,
    /// The CSI socket's path as kubelet sees it (a container usually mounts kubelet's
    /// `plugins/<driver>/` at another path, so it differs from our `--endpoint`).
    pub kubelet_csi_endpoint: PathBuf,
}

/// What kubelet last reported through `NotifyRegistrationStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    /// kubelet has not reported yet (it may not have noticed the socket).
    Pending,
    /// kubelet registered the driver.
    Registered,
    /// kubelet could not register the driver, with its reason.
    Failed(String),
}

#[derive(Debug, Error)]
pub enum RegistrationError {
    /// The driver name cannot be used in the socket's file name.
    #[error("driver name {0:?} cannot name the registration socket (empty, or has '/' or a NUL)")]
    DriverName(String),
    /// Something other than a socket sits where the registration socket should go.
    #[error("refusing to replace {}: it exists and is not a socket", path.display())]
    NotASocket { path: PathBuf },
    /// A filesystem step of creating the socket failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RegistrationError {
    let path = path.to_owned();
    move |source| RegistrationError::Io {
        action,
        path,
        source,
    }
}

/// `<dir>/<driver-name>-reg.sock`, the name node-driver-registrar uses, so that a
/// cluster moving between the two keeps one socket per driver.
pub fn socket_path(dir: &Path, driver_name: &str) -> Result<PathBuf, RegistrationError> {
    if driver_name.is_empty() || driver_name.contains(['/', '\0']) {
        return Err(RegistrationError::DriverName(driver_name.to_owned()));
    }
    Ok(dir.join(format!("{driver_name}-reg.sock")))
}

/// Binds the registration socket with mode 0600 before kubelet can see it.
///
/// The socket is bound inside a private (0700) staging directory, chmod-ed, then renamed
/// into place: it never exists under its final name with a looser mode, and no process
/// umask is changed (that would race with other threads creating files). The staging
/// directory's name starts with '.', which kubelet's plugin watcher skips, so kubelet
/// never tries the socket while it is staged. A stale socket at the final name (a
/// previous run that was killed) is removed; anything else there is left alone.
pub fn bind(dir: &Path, driver_name: &str) -> Result<RegistrationListener, RegistrationError> {
    let path = socket_path(dir, driver_name)?;
    std::fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(&path).map_err(io_error("removing stale socket", &path))?;
        }
        Ok(_) => return Err(RegistrationError::NotASocket { path }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_error("inspecting", &path)(err)),
    }
    // In a container our pid is often the same after a restart, so a leftover of a
    // killed run may be there under this very name.
    let staging = dir.join(format!(".{driver_name}-reg.{}.tmp", std::process::id()));
    if std::fs::symlink_metadata(&staging).is_ok() {
        std::fs::remove_dir_all(&staging).map_err(io_error("removing leftover", &staging))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io_error("creating", &staging))?;
    let bound = bind_staged(&staging, &path);
    // Empty on success (the socket moved out); on failure the half-made socket goes too.
    let _ = std::fs::remove_dir_all(&staging);
    let listener = bound?;
    tracing::info!(socket = %path.display(), "registration socket ready for kubelet");
    Ok(RegistrationListener { listener, path })
}

/// The bound registration socket, for [`serve`].
#[derive(Debug)]
pub struct RegistrationListener {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

/// Per-connection buffer between the shim and tonic: a few frames' worth.
const DUPLEX_BUFFER: usize = 64 * 1024;
/// Connections handed to tonic but not yet picked up; kubelet makes one at a time.
const PENDING_CONNECTIONS: usize = 16;

/// Serves `service` on the registration socket until `shutdown` completes, then stops
/// accepting, removes the socket (kubelet deregisters the driver) and drains calls.
///
/// Each accepted connection is piped through [`h2_authority::pipe`] to one end of an
/// in-memory duplex whose other end tonic serves, so no second socket exists.
pub async fn serve(
    service: RegistrationService,
    listener: RegistrationListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), EndpointError> {
    let RegistrationListener { listener, path } = listener;
    let endpoint = format!("unix://{}", path.display());
    let (conn_tx, conn_rx) =
        mpsc::channel::<std::io::Result<tokio::io::DuplexStream>>(PENDING_CONNECTIONS);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let accept = async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop_rx.wait_for(|stop| *stop) => break,
            };
            let client = match accepted {
                Ok((client, _)) => client,
                Err(err) => {
                    // EMFILE and the like pass; a pause keeps the loop from spinning.
                    tracing::warn!(error = %err, "accepting a registration connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (ours, tonics) = tokio::io::duplex(DUPLEX_BUFFER);
            if conn_tx.send(Ok(tonics)).await.is_err() {
                break;
            }
            tokio::spawn(async move {
                match h2_authority::pipe(client, ours).await {
                    Ok(0) => {}
                    Ok(replaced) => tracing::debug!(
                        replaced,
                        "replaced a socket-path :authority in kubelet's registration calls"
                    ),
                    Err(err) => {
                        tracing::warn!(error = %err, "registration connection ended")
                    }
                }
            });
        }
        // Unlinked before the drain, so kubelet sees the driver gone at once and no new
        // connection can arrive that nobody would accept.
        drop(listener);
        let _ = std::fs::remove_file(&path);
    };
    let server = tonic::transport::Server::builder()
        .add_service(RegistrationServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(conn_rx),
            async move {
                shutdown.await;
                stop_tx.send_replace(true);
            },
        );
    let (result, ()) = tokio::join!(server, accept);
    result.map_err(|source| EndpointError::Serve { endpoint, source })
}

fn bind_staged(staging: &Path, path: &Path) -> Result<tokio::net::UnixListener, RegistrationError> {
    let staged = staging.join("reg.sock");
    let listener =
        std::os::unix::net::UnixListener::bind(&staged).map_err(io_error("binding", &staged))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error("setting mode 0600 on", &staged))?;
    listener
        .set_nonblocking(true)
        .map_err(io_error("making non-blocking", &staged))?;
    let listener =
        tokio::net::UnixListener::from_std(listener).map_err(io_error("registering", &staged))?;
    std::fs::rename(&staged, path).map_err(io_error("moving the socket to", path))?;
    Ok(listener)
}

/// The `pluginregistration.Registration` service kubelet calls.
pub struct RegistrationService {
    info: PluginInfo,
    /// Written on every NotifyRegistrationStatus; the health checker watches it.
    state: watch::Sender<RegistrationState>,
}

impl RegistrationService {
    pub fn new(
        driver_name: &str,
        kubelet_csi_endpoint: &Path,
        state: watch::Sender<RegistrationState>,
    ) -> Self {
        Self {
            info: PluginInfo {
                r#type: CSI_PLUGIN_TYPE.to_owned(),
                name: driver_name.to_owned(),
                endpoint: kubelet_csi_endpoint.to_string_lossy().into_owned(),
                supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
            },
            state,
        }
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        tracing::info!(
            driver = %self.info.name,
            endpoint = %self.info.endpoint,
            "kubelet asked for plugin info"
        );
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        let state = if status.plugin_registered {
            tracing::info!(driver = %self.info.name, "kubelet registered the driver");
            RegistrationState::Registered
        } else {
            tracing::error!(
                driver = %self.info.name,
                error = %status.error,
                "kubelet failed to register the driver; health turns NOT_SERVING until it succeeds"
            );
            RegistrationState::Failed(status.error)
        };
        self.state.send_replace(state);
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn socket_name_follows_the_driver_name() {
        assert_eq!(
            socket_path(Path::new("/r"), "hanfs.csi.io").unwrap(),
            PathBuf::from("/r/hanfs.csi.io-reg.sock")
        );
        for bad in ["", "a/b", "../x", "a\0b"] {
            assert!(socket_path(Path::new("/r"), bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn binds_0600_replaces_a_stale_socket_and_keeps_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d-reg.sock");
        drop(bind(dir.path(), "d").unwrap());
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        drop(bind(dir.path(), "d").expect("a stale socket is replaced"));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no staging directory is left behind");

        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "keep me").unwrap();
        let err = bind(dir.path(), "d").err().unwrap();
        assert!(matches!(err, RegistrationError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }
}

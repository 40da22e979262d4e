//! gRPC endpoints: `unix:///path/to.sock` (CSI sockets, local mode) or
//! `tcp://host:port` (the backend's volume API at the VIP).
//!
//! Binding is separate from serving so that tests bind their own listeners, and the
//! shutdown future is passed in so that callers decide when a server stops.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::server::Router;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

#[derive(Debug, Error)]
pub enum EndpointError {
    /// Neither `unix://` nor `tcp://`.
    #[error("endpoint {0:?} must look like unix:///path/to.sock or tcp://host:port")]
    Malformed(String),
    /// Something other than a socket sits where the socket should go.
    #[error("refusing to replace {path}: it exists and is not a socket")]
    NotASocket { path: PathBuf },
    /// Binding failed.
    #[error("binding {endpoint}: {source}")]
    Bind {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving gRPC on {endpoint}: {source}")]
    Serve {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// Dialling failed.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Where a gRPC server listens or a client dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Self, EndpointError> {
        if let Some(path) = text.strip_prefix("unix://") {
            // Both unix:///abs/path and unix://relative are seen in the wild.
            if path.is_empty() {
                return Err(EndpointError::Malformed(text.to_owned()));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = text.strip_prefix("tcp://") {
            if addr.is_empty() || !addr.contains(':') {
                return Err(EndpointError::Malformed(text.to_owned()));
            }
            return Ok(Endpoint::Tcp(addr.to_owned()));
        }
        if text.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(text)));
        }
        Err(EndpointError::Malformed(text.to_owned()))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// A bound listener, ready to serve.
pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    pub async fn bind(endpoint: &Endpoint) -> Result<Self, EndpointError> {
        let bind_err = |source| EndpointError::Bind {
            endpoint: endpoint.to_string(),
            source,
        };
        match endpoint {
            Endpoint::Unix(path) => {
                remove_stale_socket(path)?;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(bind_err)?;
                }
                Ok(Listener::Unix(
                    bind_private(path).map_err(bind_err)?,
                    path.clone(),
                ))
            }
            Endpoint::Tcp(addr) => Ok(Listener::Tcp(
                TcpListener::bind(addr).await.map_err(bind_err)?,
            )),
        }
    }

    /// The address actually bound (a tcp port 0 becomes the real port).
    pub fn local_endpoint(&self) -> Endpoint {
        match self {
            Listener::Unix(_, path) => Endpoint::Unix(path.clone()),
            Listener::Tcp(listener) => Endpoint::Tcp(
                listener
                    .local_addr()
                    .map(|a: SocketAddr| a.to_string())
                    .unwrap_or_else(|_| "unknown:0".into()),
            ),
        }
    }
}

/// Binds a unix socket that is mode 0600 from the moment it appears at `path`.
///
/// bind(2) creates the socket file with the process umask (often 0755/0775: anyone may
/// connect, and a CSI socket lets its caller mount any volume), and tokio binds and
/// listens in one call, so there is no moment to chmod before it is reachable. Changing
/// the umask would race every other thread creating files. So the socket is bound in a
/// fresh 0700 directory next to `path` (same filesystem), chmod'ed there, where nobody
/// else can reach it, and renamed into place: a connect by path follows the inode.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Short: the staged path must fit a socket address (108 bytes) wherever the final
    // one does, give or take a few bytes.
    let mut random = uuid::Uuid::new_v4().simple().to_string();
    random.truncate(8);
    let staging = parent.join(format!(".{random}"));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let staged = staging.join("s");
    let bound = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let listener = UnixListener::from_std(listener)?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    // Empty after the rename; on failure it holds at most the staged socket.
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&staging);
    bound
}

/// A socket left by a previous run is removed; anything else at that path is not ours.
fn remove_stale_socket(path: &Path) -> Result<(), EndpointError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| EndpointError::Bind {
                endpoint: format!("unix://{}", path.display()),
                source,
            })
        }
        Ok(_) => Err(EndpointError::NotASocket {
            path: path.to_owned(),
        }),
        Err(_) => Ok(()),
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then drains in-flight calls.
pub async fn serve(
    router: Router,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), EndpointError> {
    let endpoint = listener.local_endpoint().to_string();
    let result = match listener {
        Listener::Unix(listener, path) => {
            let result = router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                .await;
            let _ = std::fs::remove_file(&path);
            result
        }
        Listener::Tcp(listener) => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await
        }
    };
    result.map_err(|source| EndpointError::Serve { endpoint, source })
}

/// Dials `endpoint` lazily: the first call connects, and a lost connection is
/// re-established on the next call (the VIP may have moved to the other server).
pub fn connect_lazy(endpoint: &Endpoint) -> Result<Channel, EndpointError> {
    connect_lazy_with(endpoint, Ok)
}

/// [`connect_lazy`] with the channel's settings (keepalives, timeouts, ...) adjusted by
/// `configure` first; the 5 s connect timeout is preset and may be overridden.
pub fn connect_lazy_with(
    endpoint: &Endpoint,
    configure: impl FnOnce(TonicEndpoint) -> Result<TonicEndpoint, tonic::transport::Error>,
) -> Result<Channel, EndpointError> {
    let err = |source| EndpointError::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    match endpoint {
        Endpoint::Tcp(addr) => Ok(configure(
            TonicEndpoint::from_shared(format!("http://{addr}"))
                .map_err(err)?
                .connect_timeout(std::time::Duration::from_secs(5)),
        )
        .map_err(err)?
        .connect_lazy()),
        Endpoint::Unix(path) => {
            let path = path.clone();
            // The URI is ignored by the connector; tonic needs a syntactically valid one.
            Ok(configure(TonicEndpoint::from_static("http://[::]:50051"))
                .map_err(err)?
                .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                })))
        }
    }
}

/// Resolves when the process gets SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still dies by the default action.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_endpoint_forms() {
        assert_eq!(
            Endpoint::parse("unix:///csi/csi.sock").unwrap(),
            Endpoint::Unix("/csi/csi.sock".into())
        );
        assert_eq!(
            Endpoint::parse("/csi/csi.sock").unwrap(),
            Endpoint::Unix("/csi/csi.sock".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://10.0.0.5:9800").unwrap(),
            Endpoint::Tcp("10.0.0.5:9800".into())
        );
        for bad in [
            "",
            "unix://",
            "tcp://",
            "tcp://host",
            "http://x:1",
            "csi.sock",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn binding_replaces_a_stale_socket_but_not_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("a.sock");
        let endpoint = Endpoint::Unix(sock.clone());
        drop(Listener::bind(&endpoint).await.unwrap());
        assert!(sock.exists(), "a dropped listener leaves its socket file");
        drop(
            Listener::bind(&endpoint)
                .await
                .expect("stale socket is replaced"),
        );

        let file = dir.path().join("data");
        std::fs::write(&file, "keep me").unwrap();
        let err = Listener::bind(&Endpoint::Unix(file.clone()))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, EndpointError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(file).unwrap(), "keep me");
    }
}

//! The agent's servers (volume API, admin socket, metrics) are spawned tasks; an agent
//! whose volume API task has died would keep holding the Lease and the VIP while every
//! controller call fails. [`Servers`] keeps their handles, and [`Servers::first_stopped`]
//! resolves as soon as any of them ends — returned, failed or panicked — so the agent
//! can stop and exit non-zero instead of running on without it.
//!
//! How two of them are reachable is decided here too: the volume API's transport
//! ([`volume_api_server`]: mutual TLS on TCP) and the admin socket's permissions
//! ([`bind_admin_socket`]).

use common::credentials::{self, CredentialError, TlsFiles};
use common::endpoint::{Endpoint, Listener};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use tokio::task::JoinSet;

/// The volume API's server builder for `endpoint`: mutual TLS on TCP (a client without a
/// certificate from `tls`' CA fails the handshake, before any call), plaintext on a unix
/// socket; TCP without TLS files is refused. Local mode and the agent both build it here.
pub fn volume_api_server(
    endpoint: &Endpoint,
    tls: Option<&TlsFiles>,
) -> Result<tonic::transport::Server, CredentialError> {
    credentials::server_for(endpoint, tls, "the volume API")
}

/// The admin socket's directory is wrong in a way the agent will not fix by itself.
#[derive(Debug, thiserror::Error)]
pub enum AdminSocketError {
    /// The socket path has no parent directory.
    #[error("the admin socket {0} has no directory")]
    NoDirectory(PathBuf),
    /// Creating, inspecting or tightening the directory failed.
    #[error("the admin socket's directory {path}: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The directory is not ours to trust (a symlink, another owner, or shared).
    #[error("the admin socket's directory {path} {problem}")]
    Untrusted { path: PathBuf, problem: String },
    /// Binding the socket failed.
    #[error(transparent)]
    Bind(#[from] common::endpoint::EndpointError),
}

/// Binds the admin socket (which can force-promote a node) so that only its owner can
/// reach it: the socket is mode 0600 from the moment it appears (`Listener::bind` binds it
/// in a private directory and renames it into place), inside a directory of mode 0700
/// owned by this user. A missing directory is created 0700. An existing one that is wider
/// is tightened only when `own_directory` (the agent's own state directory, which kubelet
/// or an old version may have created 0755); any other wider, foreign-owned or symlinked
/// directory is refused, since tightening a shared directory such as /run would break
/// everything else in it.
pub async fn bind_admin_socket(
    path: &Path,
    own_directory: bool,
) -> Result<Listener, AdminSocketError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => return Err(AdminSocketError::NoDirectory(path.to_owned())),
    };
    let io = |source| AdminSocketError::Directory {
        path: dir.clone(),
        source,
    };
    let untrusted = |problem: String| AdminSocketError::Untrusted {
        path: dir.clone(),
        problem,
    };
    let created = match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Parents missing too (e.g. /run/hanfs on a fresh tmpfs): all of them 0700.
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&dir)
                .map_err(io)?;
            true
        }
        Err(e) => return Err(io(e)),
    };
    let meta = std::fs::symlink_metadata(&dir).map_err(io)?;
    if !meta.file_type().is_dir() {
        return Err(untrusted(
            "is not a directory (a symlink or a file): point admin_socket into a directory of its own".into(),
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(untrusted(format!(
            "belongs to uid {}, not to this agent (uid {me}): put the socket in a directory the agent owns",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode != 0o700 {
        if created || own_directory {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
            if !created {
                tracing::warn!(dir = %dir.display(), mode = format!("{mode:04o}"), "tightened the admin socket's directory to 0700");
            }
        } else {
            return Err(untrusted(format!(
                "is mode {mode:04o}: it must be 0700 (chmod 700 {}, or give admin_socket a directory of its own)",
                dir.display()
            )));
        }
    }
    Ok(Listener::bind(&Endpoint::Unix(path.to_owned())).await?)
}

/// Which server ended, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub name: &'static str,
    pub reason: String,
}

impl Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the {} server stopped: {}", self.name, self.reason)
    }
}

/// The spawned servers. Dropping it aborts them.
#[derive(Default)]
pub struct Servers {
    tasks: JoinSet<Stopped>,
    /// Names by task id, to name one that panicked (a panic returns no value).
    names: Vec<(tokio::task::Id, &'static str)>,
}

impl Servers {
    /// Spawns `server` (a future that runs as long as it serves) as `name`.
    pub fn spawn<E: Display>(
        &mut self,
        name: &'static str,
        server: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(async move {
            let reason = match server.await {
                Ok(()) => "it returned (it should serve until the agent stops)".to_owned(),
                Err(e) => format!("it failed: {e}"),
            };
            Stopped { name, reason }
        });
        self.names.push((handle.id(), name));
    }

    /// Resolves when the first server ends; never, while all of them serve (or if none
    /// was spawned).
    pub async fn first_stopped(&mut self) -> Stopped {
        match self.tasks.join_next_with_id().await {
            Some(Ok((_, stopped))) => stopped,
            Some(Err(error)) => {
                let name = self
                    .names
                    .iter()
                    .find(|(id, _)| *id == error.id())
                    .map_or("unknown", |(_, name)| name);
                Stopped {
                    name,
                    reason: if error.is_panic() {
                        "it panicked".to_owned()
                    } else {
                        format!("its task ended: {error}")
                    },
                }
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn serving() -> impl Future<Output = Result<(), String>> {
        std::future::pending()
    }

    #[tokio::test]
    async fn the_first_server_to_fail_is_named_with_its_error() {
        let mut servers = Servers::default();
        servers.spawn("admin", serving());
        servers.spawn("volume API", async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err::<(), _>("accept: too many open files")
        });
        servers.spawn("metrics", serving());
        let stopped = tokio::time::timeout(Duration::from_secs(5), servers.first_stopped())
            .await
            .expect("the failed server is noticed");
        assert_eq!(stopped.name, "volume API");
        assert!(stopped.reason.contains("too many open files"), "{stopped}");
    }

    #[tokio::test]
    async fn a_panic_or_a_clean_return_counts_as_stopped_too() {
        let mut servers = Servers::default();
        servers.spawn("metrics", async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            Ok::<(), String>(())
        });
        let stopped = tokio::time::timeout(Duration::from_secs(5), servers.first_stopped())
            .await
            .unwrap();
        assert_eq!(
            (stopped.name, stopped.reason.as_str()),
            ("metrics", "it panicked")
        );

        let mut servers = Servers::default();
        servers.spawn("admin", async { Ok::<(), String>(()) });
        let stopped = servers.first_stopped().await;
        assert_eq!(stopped.name, "admin");
        assert!(stopped.reason.contains("returned"), "{stopped}");
    }

    #[tokio::test]
    async fn while_all_serve_nothing_is_reported() {
        let mut servers = Servers::default();
        servers.spawn("admin", serving());
        servers.spawn("volume API", serving());
        assert!(
            tokio::time::timeout(Duration::from_millis(100), servers.first_stopped())
                .await
                .is_err()
        );
        let mut none = Servers::default();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), none.first_stopped())
                .await
                .is_err()
        );
    }
}

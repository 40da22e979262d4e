//! The agent's servers (volume API, admin socket, metrics) are spawned tasks; an agent
//! whose volume API task has died would keep holding the Lease and the VIP while every
//! controller call fails. [`Servers`] keeps their handles, and [`Servers::first_stopped`]
//! resolves as soon as any of them ends — returned, failed or panicked — so the agent
//! can stop and exit non-zero instead of running on without it.

use std::fmt::Display;
use tokio::task::JoinSet;

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

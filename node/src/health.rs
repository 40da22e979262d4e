//! The node plugin's `grpc.health.v1` answer, for kubelet's native gRPC liveness probe
//! (instead of the livenessprobe sidecar, see DESIGN.md §7).
//!
//! SERVING means: the CSI socket answers Identity.Probe (which also checks the local
//! export root in local mode), and kubelet has not reported a failed registration. A
//! background task decides it every `interval` and at once when kubelet reports, so a
//! probe only reads the last verdict and never waits on the check itself.

use crate::registration::RegistrationState;
use common::endpoint::{Endpoint, connect_lazy};
use proto::csi::v1::ProbeRequest;
use proto::csi::v1::identity_client::IdentityClient;
use std::time::Duration;
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How often, and how long one check may take.
#[derive(Debug, Clone, Copy)]
pub struct HealthConfig {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
        }
    }
}

/// Pure: the verdict from the self-probe and kubelet's last report (`None`: registration
/// is not served here).
pub fn verdict(
    probe: Result<(), String>,
    registration: Option<&RegistrationState>,
) -> Result<(), String> {
    probe.map_err(|e| format!("CSI socket: {e}"))?;
    match registration {
        Some(RegistrationState::Failed(error)) => {
            Err(format!("kubelet failed to register the driver: {error}"))
        }
        _ => Ok(()),
    }
}

/// Calls Identity.Probe on our own CSI socket, bounded by `timeout`.
///
/// Each check dials anew: a connection kept open would keep answering after the socket
/// file was removed, while kubelet (which dials by path) could no longer reach us.
async fn self_probe(csi: &Endpoint, timeout: Duration) -> Result<(), String> {
    let channel = connect_lazy(csi).map_err(|e| e.to_string())?;
    let mut client = IdentityClient::new(channel);
    match tokio::time::timeout(timeout, client.probe(ProbeRequest {})).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(format!("Probe: {}", status.message())),
        Err(_) => Err(format!("Probe did not answer within {timeout:?}")),
    }
}

/// Keeps the overall ("") health status up to date until `stop` turns true.
pub async fn keep_up_to_date(
    reporter: HealthReporter,
    csi: Endpoint,
    mut registration: Option<watch::Receiver<RegistrationState>>,
    config: HealthConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut last: Option<Result<(), String>> = None;
    loop {
        let state = registration.as_ref().map(|r| r.borrow().clone());
        let now = verdict(self_probe(&csi, config.timeout).await, state.as_ref());
        if last.as_ref() != Some(&now) {
            match &now {
                Ok(()) => tracing::info!("health: SERVING"),
                Err(reason) => tracing::warn!(%reason, "health: NOT_SERVING"),
            }
            let status = match now {
                Ok(()) => ServingStatus::Serving,
                Err(_) => ServingStatus::NotServing,
            };
            reporter.set_service_status("", status).await;
        }
        last = Some(now);
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(config.interval) => {}
            changed = async {
                match registration.as_mut() {
                    Some(r) => r.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                // The registration server is gone (shutting down): stop watching it.
                if changed.is_err() {
                    registration = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_registration_or_probe_is_not_serving() {
        assert_eq!(verdict(Ok(()), None), Ok(()));
        assert_eq!(verdict(Ok(()), Some(&RegistrationState::Pending)), Ok(()));
        assert_eq!(
            verdict(Ok(()), Some(&RegistrationState::Registered)),
            Ok(())
        );
        let failed = RegistrationState::Failed("x".into());
        assert!(verdict(Ok(()), Some(&failed)).is_err_and(|e| e.contains("x")));
        assert!(
            verdict(Err("gone".into()), Some(&RegistrationState::Registered))
                .is_err_and(|e| e.contains("gone"))
        );
    }
}

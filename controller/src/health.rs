//! The controller's `grpc.health.v1` answer, for kubelet's native gRPC probe (instead of
//! the livenessprobe sidecar, see DESIGN.md §7).
//!
//! The controller is stateless and every CSI call goes to the backend, so it is healthy
//! exactly while the backend's volume API answers: SERVING while a `Status` call (a
//! statfs and two directory listings on the storage server, the same call CSI Probe
//! makes) succeeds within the timeout, NOT_SERVING otherwise (unreachable, not active,
//! wrong token, hung). A background task decides it every `interval`, so a probe only
//! reads the last verdict and a hung backend never hangs a probe.
//!
//! A failover makes the backend unreachable for some seconds: a liveness probe on this
//! needs `periodSeconds × failureThreshold` well above the failover time, or the
//! controller is restarted for the storage servers' trouble.

use crate::backend::BackendClient;
use proto::backend::v1::StatusRequest;
use std::time::Duration;
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
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

/// One backend `Status` call, bounded by `timeout`.
pub async fn check_backend(backend: &BackendClient, timeout: Duration) -> Result<(), String> {
    let mut backend = backend.clone();
    match tokio::time::timeout(timeout, backend.status(StatusRequest {})).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(format!(
            "backend volume API: {:?}: {}",
            status.code(),
            status.message()
        )),
        Err(_) => Err(format!(
            "backend volume API did not answer Status within {timeout:?}"
        )),
    }
}

/// The reporter and the service to add to each server; NOT_SERVING until
/// [`keep_up_to_date`] has seen a check pass (the crate's default would be SERVING).
pub async fn not_serving_yet() -> (HealthReporter, HealthServer<impl Health>) {
    let (reporter, server) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    (reporter, server)
}

/// Keeps the overall ("") health status up to date until `stop` turns true.
pub async fn keep_up_to_date(
    reporter: HealthReporter,
    backend: BackendClient,
    config: HealthConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut last: Option<Result<(), String>> = None;
    loop {
        let now = check_backend(&backend, config.timeout).await;
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
        }
    }
}

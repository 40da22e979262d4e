//! The agent's admin surface: `status`, `switchover`, `force-promote` over gRPC on a
//! unix socket. The metrics (`crate::metrics`) report from the same [`status_of`].

use crate::ha::agent::{AgentHandle, AgentStatus};
use crate::ha::decide::{Disk, HaConfig, Request, Role};
use proto::backend::v1 as pb;
use proto::backend::v1::admin_server::{Admin, AdminServer};
use std::sync::Arc;
use tonic::{Request as GrpcRequest, Response, Status};

pub struct AdminService {
    config: HaConfig,
    handle: AgentHandle,
    /// Warnings found at start (e.g. DRBD options that undermine safety).
    warnings: Arc<Vec<String>>,
}

impl AdminService {
    pub fn new(config: HaConfig, handle: AgentHandle, warnings: Vec<String>) -> Self {
        Self {
            config,
            handle,
            warnings: Arc::new(warnings),
        }
    }

    pub fn server(
        config: HaConfig,
        handle: AgentHandle,
        warnings: Vec<String>,
    ) -> AdminServer<Self> {
        AdminServer::new(Self::new(config, handle, warnings))
    }
}

fn role_name(role: Option<Role>) -> String {
    role.map_or("unknown".into(), |r| format!("{r:?}"))
}

fn disk_name(disk: Option<Disk>) -> String {
    disk.map_or("unknown".into(), |d| format!("{d:?}"))
}

/// The status an operator sees, from the agent's shared state.
pub fn status_of(config: &HaConfig, status: &AgentStatus, warnings: &[String]) -> pb::AdminStatus {
    let drbd = status.observation.drbd;
    let stack = status.observation.stack;
    let record = status.lease.as_ref().map(|v| &v.record);
    let holder = record.and_then(|r| r.holder.clone()).unwrap_or_default();
    let remaining = match (&status.lease, status.tenure.renewed_at) {
        (Some(_), Some(renewed)) if holder == config.node => {
            config.renew_deadline as i64 - status.now.saturating_sub(renewed) as i64
        }
        (Some(view), _) => {
            config.lease_duration as i64 - status.now.saturating_sub(view.changed_at) as i64
        }
        _ => 0,
    };
    let mut all_warnings = warnings.to_vec();
    if let Some(r) = record
        && r.outdated.as_deref() == Some(config.node.as_str())
    {
        all_warnings.push("this node is marked OUTDATED in the Lease: it will not become active until it has resynced".into());
    }
    pb::AdminStatus {
        node: config.node.clone(),
        peer: config.peer.clone(),
        summary: status.last_decision.reason.clone(),
        drbd_role: role_name(drbd.map(|d| d.role)),
        disk: disk_name(drbd.map(|d| d.disk)),
        connected: drbd.is_some_and(|d| d.connected),
        peer_role: role_name(drbd.map(|d| d.peer_role)),
        peer_disk: disk_name(drbd.map(|d| d.peer_disk)),
        mounted: stack.mounted,
        nfsd: stack.nfsd,
        exported: stack.exported,
        vip: stack.vip,
        lease_holder: holder,
        lease_remaining_ms: remaining,
        outdated: record.and_then(|r| r.outdated.clone()).unwrap_or_default(),
        last_primary: record
            .and_then(|r| r.last_primary.clone())
            .unwrap_or_default(),
        acquisitions: status.acquisitions,
        last_takeover_ms: status.last_takeover_ms.map_or(-1, |t| t as i64),
        last_resorts: status.last_resorts,
        warnings: all_warnings,
        lease_error: status.lease_error.clone().unwrap_or_default(),
        last_step_error: status.last_step_error.clone().unwrap_or_default(),
        request: format!("{:?}", status.request),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _: GrpcRequest<pb::AdminStatusRequest>,
    ) -> Result<Response<pb::AdminStatus>, Status> {
        Ok(Response::new(status_of(
            &self.config,
            &self.handle.status(),
            &self.warnings,
        )))
    }

    async fn switchover(
        &self,
        _: GrpcRequest<pb::SwitchoverRequest>,
    ) -> Result<Response<pb::SwitchoverResponse>, Status> {
        let status = self.handle.status();
        let holder = status.lease.as_ref().and_then(|v| v.record.holder.clone());
        if holder.as_deref() != Some(self.config.node.as_str()) {
            return Err(Status::failed_precondition(format!(
                "{} is not active (Lease holder: {}); run switchover on the active node",
                self.config.node,
                holder.as_deref().unwrap_or("nobody")
            )));
        }
        // A hand-over the peer cannot take (stale or unreachable) would only cause an
        // outage until this node re-acquires after expiry.
        let drbd = status.observation.drbd;
        let peer_ready = drbd.is_some_and(|d| d.connected && d.peer_disk == Disk::UpToDate);
        let peer_fenced = status
            .lease
            .as_ref()
            .is_some_and(|v| v.record.outdated.as_deref() == Some(self.config.peer.as_str()));
        if !peer_ready || peer_fenced {
            return Err(Status::failed_precondition(format!(
                "{} cannot take over now (replication {}, peer disk {}{}); wait until it has resynced",
                self.config.peer,
                if drbd.is_some_and(|d| d.connected) {
                    "connected"
                } else {
                    "NOT connected"
                },
                disk_name(drbd.map(|d| d.peer_disk)),
                if peer_fenced {
                    ", marked outdated in the Lease"
                } else {
                    ""
                }
            )));
        }
        self.handle.request(Request::Switchover);
        Ok(Response::new(pb::SwitchoverResponse {
            message: format!(
                "{} is standing down and will hand the Lease to {}",
                self.config.node, self.config.peer
            ),
        }))
    }

    async fn force_promote(
        &self,
        request: GrpcRequest<pb::ForcePromoteRequest>,
    ) -> Result<Response<pb::ForcePromoteResponse>, Status> {
        if !request.into_inner().accept_data_loss {
            return Err(Status::failed_precondition(
                "force-promote makes this node Primary even if its data is stale: writes the peer acknowledged since \
                 the last resync may be LOST, and if the peer is still running this creates a DRBD split brain to \
                 resolve by hand. Repeat with --accept-data-loss if the peer is gone for good.",
            ));
        }
        self.handle.request(Request::ForcePromote);
        Ok(Response::new(pb::ForcePromoteResponse {
            message: format!(
                "{}: force-promote requested; it still waits for the Lease (never two actives) and then promotes regardless of data currency",
                self.config.node
            ),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> AdminService {
        AdminService::new(
            HaConfig::with_lease("a", "b", 6000),
            AgentHandle::default(),
            vec!["fencing is off".into()],
        )
    }

    #[tokio::test]
    async fn switchover_is_refused_on_a_standby_with_the_reason() {
        let err = service()
            .switchover(GrpcRequest::new(pb::SwitchoverRequest {}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("not active"), "{}", err.message());
    }

    #[tokio::test]
    async fn force_promote_demands_the_flag_and_says_what_it_risks() {
        let svc = service();
        let err = svc
            .force_promote(GrpcRequest::new(pb::ForcePromoteRequest {
                accept_data_loss: false,
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            err.message().contains("LOST") && err.message().contains("split brain"),
            "{}",
            err.message()
        );
        assert_eq!(svc.handle.status().request, Request::None);
        svc.force_promote(GrpcRequest::new(pb::ForcePromoteRequest {
            accept_data_loss: true,
        }))
        .await
        .unwrap();
        assert_eq!(svc.handle.status().request, Request::ForcePromote);
    }

    #[tokio::test]
    async fn status_reports_a_standby() {
        let svc = service();
        let status = svc
            .status(GrpcRequest::new(pb::AdminStatusRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((status.node.as_str(), status.peer.as_str()), ("a", "b"));
        assert_eq!(status.warnings, vec!["fencing is off"]);
        assert_eq!(status.last_takeover_ms, -1);
    }
}

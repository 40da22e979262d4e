//! The CSI Identity service, served by both the controller and the node binary.

use proto::csi::v1::identity_server::Identity;
use proto::csi::v1::plugin_capability::{self, service};
use proto::csi::v1::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Answers Probe: `Ok(())` when the plugin can serve, else the reason.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Both binaries report the capabilities of the plugin as a whole (CSI: "the Plugin"),
/// which has a Controller service and online expansion even where one process serves
/// only the Node half: COs ask each socket, and a node socket that denied the
/// controller would make them skip controller-backed flows.
pub struct IdentityService {
    driver_name: String,
    readiness: ReadinessCheck,
}

impl IdentityService {
    pub fn new(driver_name: String, readiness: ReadinessCheck) -> Self {
        Self {
            driver_name,
            readiness,
        }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.driver_name.clone(),
            vendor_version: crate::VERSION.to_owned(),
            manifest: [("project".to_string(), "hanfs".to_string())].into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let capabilities = vec![
            PluginCapability {
                r#type: Some(plugin_capability::Type::Service(
                    plugin_capability::Service {
                        r#type: service::Type::ControllerService as i32,
                    },
                )),
            },
            // Group snapshots (hanfs-controller's GroupController service).
            PluginCapability {
                r#type: Some(plugin_capability::Type::Service(
                    plugin_capability::Service {
                        r#type: service::Type::GroupControllerService as i32,
                    },
                )),
            },
            PluginCapability {
                r#type: Some(plugin_capability::Type::VolumeExpansion(
                    plugin_capability::VolumeExpansion {
                        r#type: plugin_capability::volume_expansion::Type::Online as i32,
                    },
                )),
            },
        ];
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        match (self.readiness)().await {
            Ok(()) => Ok(Response::new(ProbeResponse { ready: Some(true) })),
            Err(reason) => {
                tracing::warn!(%reason, "probe: not ready");
                Err(Status::failed_precondition(format!("not ready: {reason}")))
            }
        }
    }
}

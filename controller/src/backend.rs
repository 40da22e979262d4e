//! The client of the backend volume API, with the bearer token on every call.

use common::endpoint::{self, Endpoint};
use proto::backend::v1::volumes_client::VolumesClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

#[derive(Clone)]
pub struct AddToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

pub type BackendClient = VolumesClient<InterceptedService<Channel, AddToken>>;

/// Dials the backend lazily: the first call connects, and after a failover the next
/// call reaches whichever server holds the VIP now.
pub fn connect(
    endpoint: &Endpoint,
    token: Option<&str>,
) -> Result<BackendClient, Box<dyn std::error::Error + Send + Sync>> {
    let channel = endpoint::connect_lazy(endpoint)?;
    let header = match token {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .map_err(|_| "the backend token contains characters not allowed in a header")?,
        ),
        None => None,
    };
    Ok(VolumesClient::with_interceptor(
        channel,
        AddToken { header },
    ))
}

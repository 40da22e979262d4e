//! The load generator: CreateVolume / DeleteVolume / ListVolumes against any CSI
//! controller over its gRPC socket, at a fixed number of requests in flight.
//!
//! All requests share one HTTP/2 channel, as csi-provisioner's do. Every call must
//! succeed: a failed call makes the batch's figures meaningless, so it ends the run
//! with the call's gRPC code. Every volume the bench created and has not deleted is
//! remembered, so [`Driver::cleanup`] can remove what a failed run left behind.

use crate::stats::{Summary, summarize};
use common::endpoint::{Endpoint, connect_lazy};
use proto::csi::v1 as csi;
use proto::csi::v1::controller_client::ControllerClient;
use proto::csi::v1::identity_client::IdentityClient;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tonic::transport::Channel;

/// How long one call may take before it counts as failed (a hung driver must not hang
/// the bench).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Error)]
pub enum LoadError {
    /// The endpoint cannot be dialled.
    #[error("{target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: common::endpoint::EndpointError,
    },
    /// A call failed; the figures of its batch cannot be trusted.
    #[error("{target}: {op} {what} failed: {code:?}: {message}")]
    Call {
        target: String,
        op: &'static str,
        what: String,
        code: tonic::Code,
        message: String,
    },
    /// The driver answered, but not what the spec promises (e.g. a volume missing from
    /// ListVolumes).
    #[error("{target}: {what}")]
    Broken { target: String, what: String },
}

impl LoadError {
    fn broken(target: &str, what: String) -> Self {
        LoadError::Broken {
            target: target.to_owned(),
            what,
        }
    }
}

/// One CSI driver under load.
#[derive(Clone)]
pub struct Driver {
    /// The name the tables use ("hanfs", "csi-driver-nfs").
    pub target: String,
    channel: Channel,
    /// StorageClass parameters every CreateVolume carries.
    params: HashMap<String, String>,
    bytes: i64,
    /// Volume ids created by this bench and not yet deleted.
    live: Arc<Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("target", &self.target)
            .finish()
    }
}

fn capability() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

impl Driver {
    pub fn connect(
        target: &str,
        endpoint: &Endpoint,
        params: HashMap<String, String>,
        bytes: i64,
    ) -> Result<Self, LoadError> {
        let channel = connect_lazy(endpoint).map_err(|source| LoadError::Connect {
            target: target.to_owned(),
            source,
        })?;
        Ok(Self {
            target: target.to_owned(),
            channel,
            params,
            bytes,
            live: Arc::default(),
        })
    }

    fn failed(&self, op: &'static str, what: &str, status: tonic::Status) -> LoadError {
        LoadError::Call {
            target: self.target.clone(),
            op,
            what: what.to_owned(),
            code: status.code(),
            message: status.message().to_owned(),
        }
    }

    /// GetPluginInfo: name and version, so the table says what really answered.
    pub async fn plugin_info(
        channel: Channel,
        target: &str,
    ) -> Result<(String, String), LoadError> {
        let info = IdentityClient::new(channel)
            .get_plugin_info(request(csi::GetPluginInfoRequest {}))
            .await
            .map_err(|status| LoadError::Call {
                target: target.to_owned(),
                op: "GetPluginInfo",
                what: String::new(),
                code: status.code(),
                message: status.message().to_owned(),
            })?
            .into_inner();
        Ok((info.name, info.vendor_version))
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Whether the controller advertises `capability` (ControllerGetCapabilities).
    pub async fn offers(
        &self,
        capability: csi::controller_service_capability::rpc::Type,
    ) -> Result<bool, LoadError> {
        let caps = ControllerClient::new(self.channel.clone())
            .controller_get_capabilities(request(csi::ControllerGetCapabilitiesRequest {}))
            .await
            .map_err(|s| self.failed("ControllerGetCapabilities", "", s))?
            .into_inner();
        Ok(caps.capabilities.iter().any(|c| {
            matches!(&c.r#type,
                Some(csi::controller_service_capability::Type::Rpc(rpc)) if rpc.r#type == capability as i32)
        }))
    }

    async fn create(&self, name: String) -> Result<String, LoadError> {
        let response = ControllerClient::new(self.channel.clone())
            .create_volume(request(csi::CreateVolumeRequest {
                name: name.clone(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: self.bytes,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![capability()],
                parameters: self.params.clone(),
                ..Default::default()
            }))
            .await
            .map_err(|s| self.failed("CreateVolume", &name, s))?
            .into_inner();
        let id = response
            .volume
            .map(|v| v.volume_id)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                LoadError::broken(&self.target, format!("CreateVolume {name}: no volume id"))
            })?;
        self.remember(&id, true);
        Ok(id)
    }

    async fn delete(&self, id: String) -> Result<String, LoadError> {
        ControllerClient::new(self.channel.clone())
            .delete_volume(request(csi::DeleteVolumeRequest {
                volume_id: id.clone(),
                secrets: Default::default(),
            }))
            .await
            .map_err(|s| self.failed("DeleteVolume", &id, s))?;
        self.remember(&id, false);
        Ok(id)
    }

    fn remember(&self, id: &str, live: bool) {
        // A poisoned set only means another task panicked mid-insert; the ids are
        // still right, and cleanup must not be skipped because of it.
        let mut set = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live {
            set.insert(id.to_owned());
        } else {
            set.remove(id);
        }
    }

    /// Creates one volume per name, `concurrency` in flight; returns their ids (in
    /// completion order) and the latencies.
    pub async fn create_batch(
        &self,
        names: Vec<String>,
        concurrency: usize,
    ) -> Result<(Vec<String>, Summary), LoadError> {
        let this = self.clone();
        self.batch("CreateVolume", names, concurrency, move |name| {
            let this = this.clone();
            async move { this.create(name).await }
        })
        .await
    }

    /// Deletes the volumes, `concurrency` in flight.
    pub async fn delete_batch(
        &self,
        ids: Vec<String>,
        concurrency: usize,
    ) -> Result<Summary, LoadError> {
        let this = self.clone();
        let (_, summary) = self
            .batch("DeleteVolume", ids, concurrency, move |id| {
                let this = this.clone();
                async move { this.delete(id).await }
            })
            .await?;
        Ok(summary)
    }

    /// Runs `call` over `inputs` with `concurrency` workers taking from one queue; the
    /// first failure stops the workers from taking more and is returned.
    async fn batch<F, Fut>(
        &self,
        op: &'static str,
        inputs: Vec<String>,
        concurrency: usize,
        call: F,
    ) -> Result<(Vec<String>, Summary), LoadError>
    where
        F: Fn(String) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<String, LoadError>> + Send,
    {
        let queue = Arc::new(Mutex::new(VecDeque::from(inputs)));
        let started = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..concurrency.max(1) {
            let queue = queue.clone();
            let call = call.clone();
            workers.spawn(async move {
                let mut done = Vec::new();
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                    let Some(input) = next else {
                        return Ok(done);
                    };
                    let t = Instant::now();
                    match call(input).await {
                        Ok(output) => done.push((output, t.elapsed())),
                        Err(e) => {
                            queue.lock().unwrap_or_else(|p| p.into_inner()).clear();
                            return Err(e);
                        }
                    }
                }
            });
        }
        let mut outputs = Vec::new();
        let mut latencies = Vec::new();
        let mut first_error = None;
        while let Some(joined) = workers.join_next().await {
            match joined {
                Ok(Ok(done)) => {
                    for (output, latency) in done {
                        outputs.push(output);
                        latencies.push(latency);
                    }
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(join) => {
                    first_error.get_or_insert(LoadError::broken(
                        &self.target,
                        format!("{op} worker panicked: {join}"),
                    ));
                }
            }
        }
        let wall = started.elapsed();
        if let Some(e) = first_error {
            return Err(e);
        }
        let summary = summarize(latencies, wall).ok_or_else(|| {
            LoadError::broken(&self.target, format!("{op}: the batch had no requests"))
        })?;
        Ok((outputs, summary))
    }

    /// Pages through ListVolumes with `max_entries` per page; returns the ids listed and
    /// the latency per page. A page that repeats an id, or a token that never ends
    /// (more pages than `limit_pages`), is a broken driver.
    pub async fn list_all(
        &self,
        max_entries: i32,
        limit_pages: usize,
    ) -> Result<(BTreeSet<String>, Summary), LoadError> {
        let mut client = ControllerClient::new(self.channel.clone());
        let mut ids = BTreeSet::new();
        let mut latencies = Vec::new();
        let mut token = String::new();
        let started = Instant::now();
        loop {
            if latencies.len() >= limit_pages {
                return Err(LoadError::broken(
                    &self.target,
                    format!("ListVolumes did not end within {limit_pages} pages"),
                ));
            }
            let t = Instant::now();
            let page = client
                .list_volumes(request(csi::ListVolumesRequest {
                    max_entries,
                    starting_token: token.clone(),
                }))
                .await
                .map_err(|s| {
                    self.failed("ListVolumes", &format!("page {}", latencies.len() + 1), s)
                })?
                .into_inner();
            latencies.push(t.elapsed());
            if page.entries.len() > max_entries as usize {
                return Err(LoadError::broken(
                    &self.target,
                    format!(
                        "ListVolumes returned {} entries for max_entries {max_entries}",
                        page.entries.len()
                    ),
                ));
            }
            for entry in page.entries {
                // An entry without a volume cannot be counted: a listing that holds one
                // is broken, never a volume named "".
                let id = match entry.volume {
                    Some(volume) if !volume.volume_id.is_empty() => volume.volume_id,
                    _ => {
                        return Err(LoadError::broken(
                            &self.target,
                            "ListVolumes listed an entry without a volume id".into(),
                        ));
                    }
                };
                if !ids.insert(id.clone()) {
                    return Err(LoadError::broken(
                        &self.target,
                        format!("ListVolumes listed {id:?} twice"),
                    ));
                }
            }
            if page.next_token.is_empty() {
                break;
            }
            token = page.next_token;
        }
        let summary = summarize(latencies, started.elapsed())
            .ok_or_else(|| LoadError::broken(&self.target, "ListVolumes: no page".into()))?;
        Ok((ids, summary))
    }

    /// The ids this bench created and has not deleted.
    pub fn live(&self) -> Vec<String> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Deletes every volume this bench created and has not deleted (after a failure, so
    /// a run leaves nothing behind on a real export); returns the ones that would not go.
    pub async fn cleanup(&self) -> Vec<String> {
        let mut stuck = Vec::new();
        for id in self.live() {
            if self.delete(id.clone()).await.is_err() {
                stuck.push(id);
            }
        }
        stuck
    }
}

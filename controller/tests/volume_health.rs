//! ControllerGetVolumeHealth / ControllerListVolumeHealth through the real gRPC stack:
//! the CSI controller on a unix socket, calling a real backend volume API over another,
//! over a real export tree. A volume whose directory is removed behind the driver's back
//! shows INACCESSIBLE and DATA_LOSS, is listed, and clears when it is deleted.

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use common::endpoint::{self, Endpoint, Listener};
use common::ids::ClusterId;
use controller::params::ExportConfig;
use controller::service::ControllerService;
use proto::csi::v1 as csi;
use proto::csi::v1::controller_client::ControllerClient;
use proto::csi::v1::controller_server::ControllerServer;
use std::sync::Arc;
use tonic::Code;
use tonic::transport::Channel;
use volumes::store::CapacityPolicy;
use volumes::{StoreConfig, VolumeStore};

struct Harness {
    dir: tempfile::TempDir,
    client: ControllerClient<Channel>,
    _stop: tokio::sync::watch::Sender<()>,
}

fn stopped(
    rx: &tokio::sync::watch::Receiver<()>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move { while rx.changed().await.is_ok() {} }
}

impl Harness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let export = dir.path().join("export");
        std::fs::create_dir(&export).unwrap();
        let store = VolumeStore::open(StoreConfig {
            root: export,
            capacity_policy: CapacityPolicy::Thin,
            default_volume_bytes: 1 << 20,
            default_mode: 0o777,
            copy_hook: None,
        })
        .unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
        let backend_endpoint = Endpoint::Unix(dir.path().join("backend.sock"));
        let listener = Listener::bind(&backend_endpoint).await.unwrap();
        let router = tonic::transport::Server::builder().add_service(volumes::api::service(
            Arc::new(store),
            Some("secret".into()),
        ));
        tokio::spawn(endpoint::serve(router, listener, stopped(&stop_rx)));
        let backend = controller::backend::connect(&backend_endpoint, Some("secret")).unwrap();
        let controller = ControllerService::new(
            ClusterId::parse("test").unwrap(),
            ExportConfig::default(),
            backend,
        );
        let controller_endpoint = Endpoint::Unix(dir.path().join("controller.sock"));
        let listener = Listener::bind(&controller_endpoint).await.unwrap();
        let router =
            tonic::transport::Server::builder().add_service(ControllerServer::new(controller));
        tokio::spawn(endpoint::serve(router, listener, stopped(&stop_rx)));
        let client = ControllerClient::new(endpoint::connect_lazy(&controller_endpoint).unwrap());
        Self {
            dir,
            client,
            _stop: stop_tx,
        }
    }

    async fn create(&mut self, name: &str) -> String {
        let capability = csi::VolumeCapability {
            access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(csi::volume_capability::AccessMode {
                mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
            }),
        };
        self.client
            .create_volume(csi::CreateVolumeRequest {
                name: name.into(),
                volume_capabilities: vec![capability],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id
    }

    async fn health(&mut self, id: &str) -> Result<csi::VolumeHealth, tonic::Status> {
        self.client
            .controller_get_volume_health(csi::ControllerGetVolumeHealthRequest {
                volume_id: id.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().volume_health.unwrap())
    }

    async fn list(&mut self, max: i32, token: &str) -> csi::ControllerListVolumeHealthResponse {
        self.client
            .controller_list_volume_health(csi::ControllerListVolumeHealthRequest {
                max_entries: max,
                starting_token: token.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }
}

fn kinds(health: &csi::VolumeHealth) -> Vec<(csi::VolumeHealthErrorType, String)> {
    health
        .health_statuses
        .iter()
        .map(|e| (e.status(), e.reason.clone()))
        .collect()
}

#[tokio::test]
async fn a_volume_removed_behind_the_drivers_back_shows_inaccessible_and_data_loss() {
    let mut h = Harness::start().await;
    let ok = h.create("healthy").await;
    let doomed = h.create("doomed").await;

    let health = h.health(&ok).await.unwrap();
    assert_eq!(health.volume_id, ok);
    assert!(health.health_statuses.is_empty(), "{health:?}");
    assert!(h.list(0, "").await.entries.is_empty());

    let dir = doomed.rsplit('/').next().unwrap().to_owned();
    std::fs::remove_dir_all(h.dir.path().join("export/volumes").join(&dir)).unwrap();
    let health = h.health(&doomed).await.unwrap();
    use csi::VolumeHealthErrorType::*;
    assert_eq!(
        kinds(&health),
        [
            (Inaccessible, "VolumeDirectoryMissing".to_string()),
            (DataLoss, "VolumeDirectoryMissing".to_string())
        ]
    );
    let listed = h.list(0, "").await;
    assert_eq!(listed.entries.len(), 1, "{listed:?}");
    assert_eq!(listed.entries[0].volume_id, doomed);
    assert!(h.health(&ok).await.unwrap().health_statuses.is_empty());

    // Deleting the lost volume removes its record: then it is simply gone.
    h.client
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: doomed.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(h.health(&doomed).await.unwrap_err().code(), Code::NotFound);
    assert!(h.list(0, "").await.entries.is_empty());
}

#[tokio::test]
async fn a_volume_made_by_hand_is_degraded_and_the_list_pages() {
    let mut h = Harness::start().await;
    for name in ["hand-a", "hand-b", "hand-c"] {
        std::fs::create_dir(h.dir.path().join("export/volumes").join(name)).unwrap();
    }
    let health = h.health("v1/test/hand-b").await.unwrap();
    assert_eq!(
        kinds(&health),
        [(csi::VolumeHealthErrorType::Degraded, "NoRecord".to_string())]
    );
    let first = h.list(2, "").await;
    assert_eq!(first.entries.len(), 2);
    assert!(!first.next_token.is_empty());
    let second = h.list(2, &first.next_token).await;
    assert_eq!(second.entries.len(), 1);
    assert_eq!(second.entries[0].volume_id, "v1/test/hand-c");
    assert!(second.next_token.is_empty());

    let bad = h
        .client
        .controller_list_volume_health(csi::ControllerListVolumeHealthRequest {
            starting_token: "nonsense".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad.code(),
        Code::Aborted,
        "CSI: an invalid starting_token is ABORTED"
    );
    assert_eq!(
        h.health("").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        h.health("v1/test/never-made").await.unwrap_err().code(),
        Code::NotFound
    );
}

//! Bad input through the real gRPC stack: the CSI controller on a unix socket, calling
//! a real backend over another unix socket, over a real directory tree. Each case checks
//! the status code, that the message says what to fix, and that nothing was left behind.

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use common::endpoint::{self, Endpoint, Listener};
use common::ids::ClusterId;
use controller::params::ExportConfig;
use controller::service::ControllerService;
use proto::csi::v1 as csi;
use proto::csi::v1::controller_client::ControllerClient;
use proto::csi::v1::controller_server::ControllerServer;
use std::collections::HashMap;
use std::path::PathBuf;
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
        let router = tonic::transport::Server::builder()
            .add_service(common::rpc_trace::traced(ControllerServer::new(controller)));
        tokio::spawn(endpoint::serve(router, listener, stopped(&stop_rx)));

        let client = ControllerClient::new(endpoint::connect_lazy(&controller_endpoint).unwrap());
        Self {
            dir,
            client,
            _stop: stop_tx,
        }
    }

    fn export(&self) -> PathBuf {
        self.dir.path().join("export")
    }

    /// Names of everything under the export besides the fixed skeleton.
    fn contents(&self) -> Vec<String> {
        let mut found = Vec::new();
        for sub in [
            "volumes",
            "snapshots",
            ".hanfs/tmp",
            ".hanfs/trash",
            ".hanfs/meta/volumes",
            ".hanfs/meta/snapshots",
        ] {
            for entry in std::fs::read_dir(self.export().join(sub)).unwrap() {
                found.push(format!(
                    "{sub}/{}",
                    entry.unwrap().file_name().to_string_lossy()
                ));
            }
        }
        found
    }

    async fn create(
        &mut self,
        name: &str,
        params: &[(&str, &str)],
        range: Option<(i64, i64)>,
    ) -> Result<csi::Volume, tonic::Status> {
        self.client
            .create_volume(csi::CreateVolumeRequest {
                name: name.into(),
                capacity_range: range.map(|(required_bytes, limit_bytes)| csi::CapacityRange {
                    required_bytes,
                    limit_bytes,
                }),
                volume_capabilities: vec![mount_capability()],
                parameters: params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<HashMap<_, _>>(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().volume.unwrap())
    }
}

/// Resolves when the harness is dropped (its sender goes away).
fn stopped(
    rx: &tokio::sync::watch::Receiver<()>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move { while rx.changed().await.is_ok() {} }
}

fn mount_capability() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

fn assert_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, says: &str) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status.message().contains(says),
        "message {:?} should mention {says:?}",
        status.message()
    );
}

#[tokio::test]
async fn hostile_names_are_invalid_argument_and_leave_nothing() {
    let mut h = Harness::start().await;
    let huge = "a".repeat(4096);
    for (name, says) in [
        ("../escape", "may only contain"),
        ("a/b", "may only contain"),
        ("nul\0byte", "may only contain"),
        (".hidden", "must start with a letter or digit"),
        ("", "empty"),
        (huge.as_str(), "at most 253"),
    ] {
        assert_code(h.create(name, &[], None).await, Code::InvalidArgument, says);
    }
    assert!(h.contents().is_empty(), "{:?}", h.contents());
}

#[tokio::test]
async fn hostile_and_foreign_ids() {
    let mut h = Harness::start().await;
    let get = |id: &str| csi::ControllerGetVolumeRequest {
        volume_id: id.into(),
    };
    let r = h
        .client
        .controller_get_volume(get("v1/test/../../etc"))
        .await;
    assert_code(r, Code::InvalidArgument, "may only contain");
    let r = h
        .client
        .controller_get_volume(get("v1/other-cluster/pvc-1"))
        .await;
    assert_code(
        r,
        Code::NotFound,
        "belongs to hanfs cluster \"other-cluster\"",
    );
    let r = h.client.controller_get_volume(get("pvc-1")).await;
    assert_code(r, Code::NotFound, "not an id made by hanfs");
    // Deleting what this cluster never made succeeds (CSI: absent is deleted) and
    // touches nothing; a traversal id is refused outright.
    h.client
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "v1/other-cluster/pvc-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = h
        .client
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "v1/test/..".into(),
            ..Default::default()
        })
        .await;
    assert_code(r, Code::InvalidArgument, "may only contain");
    let long_id = format!("v1/test/{}", "a".repeat(200));
    let r = h.client.controller_get_volume(get(&long_id)).await;
    assert_code(r, Code::InvalidArgument, "at most 128");
}

#[tokio::test]
async fn capacities_out_of_range() {
    let mut h = Harness::start().await;
    assert_code(
        h.create("pvc-neg", &[], Some((-1, 0))).await,
        Code::InvalidArgument,
        "negative",
    );
    assert_code(
        h.create("pvc-inv", &[], Some((10, 5))).await,
        Code::InvalidArgument,
        "exceed limit",
    );
    assert_code(
        h.create("pvc-max", &[], Some((i64::MAX, 0))).await,
        Code::OutOfRange,
        "largest supported",
    );
    assert!(h.contents().is_empty(), "{:?}", h.contents());

    let volume = h.create("pvc-ok", &[], Some((1 << 20, 0))).await.unwrap();
    let expand = |required_bytes, limit_bytes| csi::ControllerExpandVolumeRequest {
        volume_id: volume.volume_id.clone(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes,
            limit_bytes,
        }),
        ..Default::default()
    };
    assert_code(
        h.client.controller_expand_volume(expand(-5, 0)).await,
        Code::InvalidArgument,
        "negative",
    );
    assert_code(
        h.client.controller_expand_volume(expand(i64::MAX, 0)).await,
        Code::OutOfRange,
        "largest supported",
    );
    let grown = h
        .client
        .controller_expand_volume(expand(2 << 20, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 2 << 20);
    assert!(!grown.node_expansion_required);
}

#[tokio::test]
async fn unknown_parameters_and_block_access_are_refused() {
    let mut h = Harness::start().await;
    assert_code(
        h.create("pvc-p", &[("fsType", "xfs")], None).await,
        Code::InvalidArgument,
        "unknown parameter \"fsType\"",
    );
    assert_code(
        h.create("pvc-p", &[("onDelete", "shred")], None).await,
        Code::InvalidArgument,
        "delete, retain, archive",
    );
    assert_code(
        h.create("pvc-p", &[("server", "10.1.1.1")], None).await,
        Code::InvalidArgument,
        "local mode",
    );
    assert_code(
        h.create("pvc-p", &[("subDir", "${pvc.metadata.name}")], None)
            .await,
        Code::InvalidArgument,
        "--extra-create-metadata",
    );
    let block = csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Block(Default::default())),
        access_mode: mount_capability().access_mode,
    };
    let r = h
        .client
        .create_volume(csi::CreateVolumeRequest {
            name: "pvc-b".into(),
            volume_capabilities: vec![block],
            ..Default::default()
        })
        .await;
    assert_code(r, Code::InvalidArgument, "volumeMode: Filesystem");
    assert!(h.contents().is_empty(), "{:?}", h.contents());
}

#[tokio::test]
async fn sub_dir_templates_name_the_directory() {
    let mut h = Harness::start().await;
    let params = [
        ("subDir", "${pvc.metadata.namespace}-${pvc.metadata.name}"),
        ("csi.storage.k8s.io/pvc/name", "data"),
        ("csi.storage.k8s.io/pvc/namespace", "shop"),
        ("csi.storage.k8s.io/pv/name", "pvc-42"),
        ("mountPermissions", "0700"),
    ];
    let volume = h.create("pvc-42", &params, None).await.unwrap();
    assert_eq!(volume.volume_id, "v1/test/shop-data");
    let meta = std::fs::metadata(h.export().join("volumes/shop-data")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
        0o700
    );
    // Another PVC rendering to the same directory must not get this one's data.
    let mut clash = params;
    clash[4] = ("mountPermissions", "0700");
    assert_code(
        h.create("pvc-43", &clash, None).await,
        Code::AlreadyExists,
        "already belongs",
    );
    let traversal = [
        ("subDir", "${pvc.metadata.name}"),
        ("csi.storage.k8s.io/pvc/name", "../../etc"),
    ];
    assert_code(
        h.create("pvc-44", &traversal, None).await,
        Code::InvalidArgument,
        "a '/'",
    );
}

#[tokio::test]
async fn snapshots_of_missing_or_foreign_volumes_are_not_found() {
    let mut h = Harness::start().await;
    let snap = |source: &str| csi::CreateSnapshotRequest {
        name: "snap-1".into(),
        source_volume_id: source.into(),
        ..Default::default()
    };
    assert_code(
        h.client.create_snapshot(snap("v1/test/pvc-missing")).await,
        Code::NotFound,
        "does not exist",
    );
    assert_code(
        h.client.create_snapshot(snap("v1/elsewhere/pvc-1")).await,
        Code::NotFound,
        "elsewhere",
    );
    let restore = csi::CreateVolumeRequest {
        name: "pvc-r".into(),
        volume_capabilities: vec![mount_capability()],
        volume_content_source: Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Snapshot(
                csi::volume_content_source::SnapshotSource {
                    snapshot_id: "s1/test/snap-missing".into(),
                },
            )),
        }),
        ..Default::default()
    };
    assert_code(
        h.client.create_volume(restore).await,
        Code::NotFound,
        "snapshot snap-missing does not exist",
    );
    assert!(h.contents().is_empty(), "{:?}", h.contents());
}

#[tokio::test]
async fn a_wrong_backend_token_is_unauthenticated() {
    let h = Harness::start().await;
    let endpoint = Endpoint::Unix(h.dir.path().join("backend.sock"));
    let mut wrong = controller::backend::connect(&endpoint, Some("guess")).unwrap();
    let r = wrong.status(proto::backend::v1::StatusRequest {}).await;
    assert_code(r, Code::Unauthenticated, "wrong backend token");
    let mut none = controller::backend::connect(&endpoint, None).unwrap();
    assert_code(
        none.status(proto::backend::v1::StatusRequest {}).await,
        Code::Unauthenticated,
        "Bearer",
    );
}

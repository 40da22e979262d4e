//! The GroupController through the real gRPC stack: the CSI controller and group
//! controller on a unix socket, a real backend over another, a real directory tree.
//! Group snapshots are created, restored from, refused where CSI says so, and deleted;
//! bad input gets the spec's code and leaves nothing behind.

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use common::endpoint::{self, Endpoint, Listener};
use common::ids::ClusterId;
use controller::group::GroupControllerService;
use controller::params::ExportConfig;
use controller::service::ControllerService;
use proto::csi::v1 as csi;
use proto::csi::v1::controller_client::ControllerClient;
use proto::csi::v1::controller_server::ControllerServer;
use proto::csi::v1::group_controller_client::GroupControllerClient;
use proto::csi::v1::group_controller_server::GroupControllerServer;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::Code;
use tonic::transport::Channel;
use volumes::store::CapacityPolicy;
use volumes::{StoreConfig, VolumeStore};

struct Harness {
    dir: tempfile::TempDir,
    controller: ControllerClient<Channel>,
    group: GroupControllerClient<Channel>,
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
        let cluster = ClusterId::parse("test").unwrap();
        let group = GroupControllerService::new(cluster.clone(), backend.clone());
        let controller = ControllerService::new(cluster, ExportConfig::default(), backend);
        let controller_endpoint = Endpoint::Unix(dir.path().join("controller.sock"));
        let listener = Listener::bind(&controller_endpoint).await.unwrap();
        let router = tonic::transport::Server::builder()
            .add_service(common::rpc_trace::traced(ControllerServer::new(controller)))
            .add_service(common::rpc_trace::traced(GroupControllerServer::new(group)));
        tokio::spawn(endpoint::serve(router, listener, stopped(&stop_rx)));
        let channel = endpoint::connect_lazy(&controller_endpoint).unwrap();
        Self {
            dir,
            controller: ControllerClient::new(channel.clone()),
            group: GroupControllerClient::new(channel),
            _stop: stop_tx,
        }
    }

    fn export(&self) -> PathBuf {
        self.dir.path().join("export")
    }

    /// Everything under the export's snapshot and scratch areas.
    fn snapshot_state(&self) -> Vec<String> {
        let mut found = Vec::new();
        for sub in [
            "snapshots",
            ".hanfs/tmp",
            ".hanfs/meta/snapshots",
            ".hanfs/meta/groups",
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

    async fn volume(&mut self, name: &str, text: &str) -> String {
        let volume = self
            .controller
            .create_volume(csi::CreateVolumeRequest {
                name: name.into(),
                volume_capabilities: vec![mount_capability()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        std::fs::write(self.export().join("volumes").join(name).join("f"), text).unwrap();
        volume.volume_id
    }

    async fn create_group(
        &mut self,
        name: &str,
        sources: &[&str],
    ) -> Result<csi::VolumeGroupSnapshot, tonic::Status> {
        self.group
            .create_volume_group_snapshot(csi::CreateVolumeGroupSnapshotRequest {
                name: name.into(),
                source_volume_ids: sources.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().group_snapshot.unwrap())
    }
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
async fn group_snapshots_are_created_restored_and_deleted_as_the_spec_says() {
    let mut h = Harness::start().await;
    let caps = h
        .group
        .group_controller_get_capabilities(csi::GroupControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.capabilities.len(), 1);

    let a = h.volume("pvc-a", "alpha").await;
    let b = h.volume("pvc-b", "beta").await;
    let group = h.create_group("groupsnapshot-1", &[&a, &b]).await.unwrap();
    assert_eq!(group.group_snapshot_id, "g1/test/groupsnapshot-1");
    assert!(group.ready_to_use);
    assert_eq!(group.snapshots.len(), 2);
    for s in &group.snapshots {
        assert_eq!(s.group_snapshot_id, group.group_snapshot_id);
        assert!(
            s.snapshot_id.starts_with("s1/test/groupsnapshot-1-"),
            "{}",
            s.snapshot_id
        );
        assert!(s.ready_to_use);
    }
    let member_of_b = group
        .snapshots
        .iter()
        .find(|s| s.source_volume_id == b)
        .unwrap()
        .snapshot_id
        .clone();
    let member_ids: Vec<String> = group
        .snapshots
        .iter()
        .map(|s| s.snapshot_id.clone())
        .collect();

    // Idempotent by name and members; other members are ALREADY_EXISTS.
    let again = h.create_group("groupsnapshot-1", &[&b, &a]).await.unwrap();
    assert_eq!(again.group_snapshot_id, group.group_snapshot_id);
    assert_eq!(again.creation_time, group.creation_time);
    assert_code(
        h.create_group("groupsnapshot-1", &[&a]).await,
        Code::AlreadyExists,
        "already exists",
    );

    // Get: with the right member list, without one, and with a wrong one.
    let got = h
        .group
        .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: group.group_snapshot_id.clone(),
            snapshot_ids: member_ids.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(got.snapshots.len(), 2);
    assert_code(
        h.group
            .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: group.group_snapshot_id.clone(),
                snapshot_ids: vec![member_ids[0].clone()],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "not the members",
    );

    // Members are snapshots: listed with their group, restorable, not deletable alone.
    let listed = h
        .controller
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: member_of_b.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.entries[0]
            .snapshot
            .as_ref()
            .unwrap()
            .group_snapshot_id,
        group.group_snapshot_id
    );
    h.controller
        .create_volume(csi::CreateVolumeRequest {
            name: "restored".into(),
            volume_capabilities: vec![mount_capability()],
            volume_content_source: Some(csi::VolumeContentSource {
                r#type: Some(csi::volume_content_source::Type::Snapshot(
                    csi::volume_content_source::SnapshotSource {
                        snapshot_id: member_of_b.clone(),
                    },
                )),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(h.export().join("volumes/restored/f")).unwrap(),
        "beta"
    );
    assert_code(
        h.controller
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: member_of_b.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "delete the group",
    );

    // Delete: a wrong member list is refused, the right one deletes group and members.
    assert_code(
        h.group
            .delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: group.group_snapshot_id.clone(),
                snapshot_ids: vec!["s1/test/other".into()],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "not the members",
    );
    h.group
        .delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: group.group_snapshot_id.clone(),
            snapshot_ids: member_ids,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_code(
        h.group
            .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: group.group_snapshot_id.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "does not exist",
    );
    let listed = h
        .controller
        .list_snapshots(csi::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.entries.is_empty(), "{listed:?}");
    // Idempotent.
    h.group
        .delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: group.group_snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(h.snapshot_state(), Vec::<String>::new());
}

#[tokio::test]
async fn bad_group_requests_get_the_spec_codes_and_leave_nothing() {
    let mut h = Harness::start().await;
    let a = h.volume("pvc-a", "alpha").await;

    assert_code(
        h.create_group("", &[&a]).await,
        Code::InvalidArgument,
        "name",
    );
    assert_code(
        h.create_group("g", &[]).await,
        Code::InvalidArgument,
        "source_volume_ids",
    );
    assert_code(
        h.create_group("g", &[&a, &a]).await,
        Code::InvalidArgument,
        "twice",
    );
    assert_code(
        h.create_group("g", &[&a, "v1/test/pvc-missing"]).await,
        Code::NotFound,
        "pvc-missing",
    );
    assert_code(
        h.create_group("g", &[&a, "v1/other-cluster/pvc-x"]).await,
        Code::NotFound,
        "other-cluster",
    );
    assert_code(
        h.create_group("g", &[&a, "v1/test/../etc"]).await,
        Code::InvalidArgument,
        "volume directory name",
    );
    let unknown = h
        .group
        .create_volume_group_snapshot(csi::CreateVolumeGroupSnapshotRequest {
            name: "g".into(),
            source_volume_ids: vec![a.clone()],
            parameters: [("compress".to_string(), "yes".to_string())].into(),
            ..Default::default()
        })
        .await;
    assert_code(unknown, Code::InvalidArgument, "compress");
    assert_eq!(h.snapshot_state(), Vec::<String>::new());

    // Get and Delete: empty id INVALID_ARGUMENT; an id hanfs never made NOT_FOUND / OK.
    assert_code(
        h.group
            .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest::default())
            .await,
        Code::InvalidArgument,
        "group_snapshot_id",
    );
    for foreign in ["fake-volume-id", "g1/other/g", "s1/test/g"] {
        assert_code(
            h.group
                .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
                    group_snapshot_id: foreign.into(),
                    ..Default::default()
                })
                .await,
            Code::NotFound,
            "does not exist",
        );
        h.group
            .delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: foreign.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert_code(
        h.group
            .delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest::default())
            .await,
        Code::InvalidArgument,
        "group_snapshot_id",
    );
    assert_code(
        h.group
            .delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: "g1/test/..".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "snapshot name",
    );
    assert_eq!(h.snapshot_state(), Vec::<String>::new());
}

//! ControllerPublishVolume / ControllerUnpublishVolume through the real gRPC stack: the
//! CSI controller on a unix socket, the real volume API on another, over a real
//! directory tree. The export sink stands in for nfsd (which cannot run here; the VM
//! scenario `acl` proves the kernel side): it keeps every table it is given, so each
//! case can check what would have been exported. Each bad input checks its code, that
//! the message says what to fix, and that neither the records on disk nor the export
//! table changed.

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use common::endpoint::{self, Endpoint, Listener};
use common::ids::ClusterId;
use common::node_id::Cidr;
use controller::params::ExportConfig;
use controller::service::ControllerService;
use proto::csi::v1 as csi;
use proto::csi::v1::controller_client::ControllerClient;
use proto::csi::v1::controller_server::ControllerServer;
use proto::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tonic::Code;
use tonic::transport::Channel;
use volumes::api::StoreSlot;
use volumes::exports::{ApplyFuture, ExportControl, ExportSink, ExportTable};
use volumes::store::CapacityPolicy;
use volumes::{StoreConfig, VolumeStore};

/// Keeps the tables applied; fails while `broken` is set.
#[derive(Default)]
struct KeptTables {
    tables: Mutex<Vec<ExportTable>>,
    broken: AtomicBool,
}

impl ExportSink for KeptTables {
    fn apply(&self, table: ExportTable) -> ApplyFuture<'_> {
        Box::pin(async move {
            if self.broken.load(Ordering::SeqCst) {
                return Err("exportfs -r: exit status 1".into());
            }
            self.tables.lock().unwrap().push(table);
            Ok(())
        })
    }
}

struct Harness {
    dir: tempfile::TempDir,
    client: ControllerClient<Channel>,
    sink: Arc<KeptTables>,
    _stop: tokio::sync::watch::Sender<()>,
}

const NODE_A: &str = "worker-a@10.80.0.20";
const NODE_B: &str = "worker-b@10.80.0.21";

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
        let sink = Arc::new(KeptTables::default());
        let slot = Arc::new(StoreSlot::with(Arc::new(store)));
        slot.set_exports(ExportControl::new(
            vec![Cidr::parse("10.80.0.0/24").unwrap()],
            Some(sink.clone()),
        ));

        let backend_endpoint = Endpoint::Unix(dir.path().join("backend.sock"));
        let listener = Listener::bind(&backend_endpoint).await.unwrap();
        let router = tonic::transport::Server::builder()
            .add_service(volumes::api::service_for_slot(slot, Some("secret".into())));
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
            sink,
            _stop: stop_tx,
        }
    }

    fn records_dir(&self) -> PathBuf {
        self.dir.path().join("export/.hanfs/meta/publish")
    }

    /// Every publish record's name and content: what a takeover would rebuild from.
    fn records(&self) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = match std::fs::read_dir(self.records_dir()) {
            Ok(entries) => entries
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read_to_string(e.path()).unwrap(),
                    )
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        found.sort();
        found
    }

    fn tables(&self) -> Vec<ExportTable> {
        self.sink.tables.lock().unwrap().clone()
    }

    /// The addresses the last applied table admits to `dir`, with their read-only flag.
    fn admitted(&self, dir: &str) -> Vec<(String, bool)> {
        let tables = self.tables();
        let Some(last) = tables.last() else {
            return Vec::new();
        };
        last.volumes
            .iter()
            .filter(|v| v.path.ends_with(format!("volumes/{dir}")))
            .flat_map(|v| v.clients.iter().map(|(a, ro)| (a.to_string(), *ro)))
            .collect()
    }

    async fn create(&mut self, name: &str) -> String {
        self.client
            .create_volume(csi::CreateVolumeRequest {
                name: name.into(),
                volume_capabilities: vec![capability(Mode::MultiNodeMultiWriter)],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id
    }

    async fn publish(
        &mut self,
        volume_id: &str,
        node_id: &str,
        readonly: bool,
        mode: Mode,
    ) -> Result<(), tonic::Status> {
        self.client
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: volume_id.into(),
                node_id: node_id.into(),
                volume_capability: Some(capability(mode)),
                readonly,
                ..Default::default()
            })
            .await
            .map(drop)
    }

    async fn unpublish(&mut self, volume_id: &str, node_id: &str) -> Result<(), tonic::Status> {
        self.client
            .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                volume_id: volume_id.into(),
                node_id: node_id.into(),
                ..Default::default()
            })
            .await
            .map(drop)
    }
}

fn stopped(
    rx: &tokio::sync::watch::Receiver<()>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move { while rx.changed().await.is_ok() {} }
}

fn capability(mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

#[tokio::test]
async fn publish_and_read_only_publish_are_advertised() {
    let mut h = Harness::start().await;
    let caps = h
        .client
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    use csi::controller_service_capability::rpc::Type;
    for wanted in [Type::PublishUnpublishVolume, Type::PublishReadonly] {
        assert!(
            caps.iter().any(|c| matches!(
                &c.r#type,
                Some(csi::controller_service_capability::Type::Rpc(r)) if r.r#type == wanted as i32
            )),
            "{wanted:?} not in {caps:?}"
        );
    }
}

#[tokio::test]
async fn publish_admits_the_node_and_unpublish_removes_it() {
    let mut h = Harness::start().await;
    let id = h.create("pvc-acl").await;
    assert!(h.records().is_empty());

    h.publish(&id, NODE_A, false, Mode::MultiNodeMultiWriter)
        .await
        .unwrap();
    assert_eq!(h.admitted("pvc-acl"), [("10.80.0.20".to_owned(), false)]);
    let records = h.records();
    assert_eq!(records.len(), 1);
    assert!(records[0].1.contains(NODE_A), "{records:?}");

    // A repeat is OK, writes nothing new, and the table stays the same.
    h.publish(&id, NODE_A, false, Mode::MultiNodeMultiWriter)
        .await
        .unwrap();
    assert_eq!(h.records(), records);
    assert_eq!(h.admitted("pvc-acl"), [("10.80.0.20".to_owned(), false)]);

    // A second node (multi-node mode), read-only.
    h.publish(&id, NODE_B, true, Mode::MultiNodeMultiWriter)
        .await
        .unwrap();
    assert_eq!(
        h.admitted("pvc-acl"),
        [
            ("10.80.0.20".to_owned(), false),
            ("10.80.0.21".to_owned(), true)
        ]
    );

    h.unpublish(&id, NODE_A).await.unwrap();
    assert_eq!(h.admitted("pvc-acl"), [("10.80.0.21".to_owned(), true)]);
    // An empty node id unpublishes every node (CSI); the record goes with the last one.
    h.unpublish(&id, "").await.unwrap();
    assert!(h.admitted("pvc-acl").is_empty());
    assert!(h.tables().last().unwrap().volumes.is_empty());
    assert!(h.records().is_empty());
}

#[tokio::test]
async fn bad_publishes_are_refused_and_change_nothing() {
    let mut h = Harness::start().await;
    let id = h.create("pvc-bad").await;
    h.publish(&id, NODE_A, false, Mode::SingleNodeWriter)
        .await
        .unwrap();
    let records = h.records();
    let tables = h.tables();

    // (code, what the message must say, the call)
    let cases: Vec<(Code, &str, String, String, bool, Mode)> = vec![
        // Unknown node: an id without the address a hanfs node plugin reports.
        (
            Code::NotFound,
            "--node-address",
            id.clone(),
            "some-fake-node-id".into(),
            false,
            Mode::SingleNodeWriter,
        ),
        // A malformed address.
        (
            Code::InvalidArgument,
            "10.80.0.300",
            id.clone(),
            "worker-a@10.80.0.300".into(),
            false,
            Mode::SingleNodeWriter,
        ),
        // A volume that does not exist (a well-formed id of this cluster).
        (
            Code::NotFound,
            "does not exist",
            "v1/test/pvc-missing".into(),
            NODE_A.into(),
            false,
            Mode::SingleNodeWriter,
        ),
        // A volume id of another cluster names no volume of ours.
        (
            Code::NotFound,
            "other",
            "v1/other/pvc-bad".into(),
            NODE_A.into(),
            false,
            Mode::SingleNodeWriter,
        ),
        // Published read-write to this node already: read-only is ALREADY_EXISTS.
        (
            Code::AlreadyExists,
            "unpublish it",
            id.clone(),
            NODE_A.into(),
            true,
            Mode::SingleNodeWriter,
        ),
        // A single-node volume already on another node.
        (
            Code::FailedPrecondition,
            NODE_A,
            id.clone(),
            NODE_B.into(),
            false,
            Mode::SingleNodeWriter,
        ),
        // An address outside the allowed client networks.
        (
            Code::FailedPrecondition,
            "10.80.0.0/24",
            id.clone(),
            "outsider@192.0.2.7".into(),
            false,
            Mode::MultiNodeMultiWriter,
        ),
        (
            Code::InvalidArgument,
            "node_id is required",
            id.clone(),
            String::new(),
            false,
            Mode::SingleNodeWriter,
        ),
        (
            Code::InvalidArgument,
            "volume_id is required",
            String::new(),
            NODE_A.into(),
            false,
            Mode::SingleNodeWriter,
        ),
    ];
    for (code, says, volume_id, node_id, readonly, mode) in cases {
        let status = h
            .publish(&volume_id, &node_id, readonly, mode)
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            code,
            "{volume_id} -> {node_id}: {}",
            status.message()
        );
        assert!(
            status.message().contains(says),
            "{volume_id} -> {node_id}: {:?} should say {says:?}",
            status.message()
        );
        assert_eq!(h.records(), records, "records changed by {node_id}");
        assert_eq!(h.tables(), tables, "export table changed by {node_id}");
    }

    // No capability at all.
    let status = h
        .client
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: id.clone(),
            node_id: NODE_A.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("volume_capability"));
    assert_eq!(h.records(), records);
    assert_eq!(h.tables(), tables);
}

#[tokio::test]
async fn unpublish_of_what_was_never_published_is_ok_and_changes_nothing() {
    let mut h = Harness::start().await;
    let id = h.create("pvc-never").await;
    let other = h.create("pvc-other").await;
    h.publish(&other, NODE_A, false, Mode::MultiNodeMultiWriter)
        .await
        .unwrap();
    let records = h.records();
    let admitted = h.admitted("pvc-other");
    for (volume_id, node_id) in [
        (id.as_str(), NODE_A),
        (other.as_str(), NODE_B),
        (other.as_str(), "some-fake-node-id"),
        ("v1/test/pvc-missing", NODE_A),
        ("v1/other-cluster/pvc-x", NODE_A),
        ("not-an-id-of-ours", NODE_A),
    ] {
        h.unpublish(volume_id, node_id)
            .await
            .unwrap_or_else(|s| panic!("{volume_id} from {node_id}: {s:?}"));
        assert_eq!(h.records(), records, "{volume_id} from {node_id}");
        assert_eq!(h.admitted("pvc-other"), admitted);
    }
    let status = h.unpublish("", NODE_A).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// The record is written first and the table applied after: when applying fails the
/// call fails (the CO retries), the record stays, and the retry applies it.
#[tokio::test]
async fn a_failed_apply_keeps_the_record_and_the_retry_exports_it() {
    let mut h = Harness::start().await;
    let id = h.create("pvc-retry").await;
    h.sink.broken.store(true, Ordering::SeqCst);
    let status = h
        .publish(&id, NODE_A, false, Mode::MultiNodeMultiWriter)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("retry"), "{}", status.message());
    assert_eq!(h.records().len(), 1, "the publication is recorded");
    assert!(h.admitted("pvc-retry").is_empty());

    h.sink.broken.store(false, Ordering::SeqCst);
    h.publish(&id, NODE_A, false, Mode::MultiNodeMultiWriter)
        .await
        .unwrap();
    assert_eq!(h.admitted("pvc-retry"), [("10.80.0.20".to_owned(), false)]);

    // Deleting a published volume drops it from the table and its record.
    h.client
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(h.admitted("pvc-retry").is_empty());
    assert!(h.records().is_empty());
}

//! The generated bad-input suite: every CSI RPC (Identity, Controller, GroupController,
//! Node) and every
//! backend RPC, sent malformed through the real servers of local mode — the volume API
//! over a real directory tree, the CSI controller calling it, the node plugin doing real
//! bind mounts through its helper process, each on its own unix socket. Needs root.
//!
//! Cases are generated, not listed: each field class (names, ids, paths, capacities,
//! capabilities, parameters, mount options) has one generator of hostile values with the
//! gRPC code each must get, and each RPC declares which of its fields belong to which
//! class. On top of that, the compiled descriptors drive raw-protobuf cases for every
//! method of every served service: invalid UTF-8 in every string field (also inside
//! nested messages and map entries), undecodable bytes, and, for the volume API, calls
//! without or with a wrong token. After every case the export tree, the record files and
//! this test's part of /proc/self/mountinfo must be exactly what they were before.

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use bytes::{Buf, BufMut};
use common::endpoint::{self, Endpoint, Listener};
use common::ids::ClusterId;
use common::mountinfo;
use controller::group::GroupControllerService;
use controller::params::ExportConfig;
use controller::service::ControllerService;
use node::{NodeConfig, Transport};
use prost::Message;
use proto::backend::v1 as be;
use proto::csi::v1 as csi;
use proto::csi::v1::volume_capability::{AccessMode, AccessType, access_mode};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use volumes::store::CapacityPolicy;
use volumes::{StoreConfig, VolumeStore};

const CLUSTER: &str = "test";
const TOKEN: &str = "secret";
/// The volume, snapshot and mount that exist throughout, so that calls reach past "not
/// found" and so that a case that wrongly deletes or unmounts something shows in the diff.
const VOLUME: &str = "v1/test/pvc-ok";
/// The group snapshot of [`VOLUME`] that exists throughout.
const GROUP: &str = "g1/test/group-ok";

// ---------------------------------------------------------------------------------------
// The real servers

/// Lazily unmounts every mount at or below its directory, deepest first, also when the
/// test fails halfway.
struct UnmountGuard(PathBuf);

impl Drop for UnmountGuard {
    fn drop(&mut self) {
        for _ in 0..64 {
            let Ok(table) = mountinfo::read_self() else {
                return;
            };
            let below = mountinfo::mounts_below(&table, &self.0);
            let Some(deepest) = below.first() else { return };
            if let Err(err) = nix::mount::umount2(deepest, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cleanup: unmounting {}: {err}", deepest.display());
                return;
            }
        }
    }
}

struct Servers {
    root: PathBuf,
    backend: controller::backend::BackendClient,
    controller: csi::controller_client::ControllerClient<Channel>,
    group: csi::group_controller_client::GroupControllerClient<Channel>,
    node: csi::node_client::NodeClient<Channel>,
    identity: csi::identity_client::IdentityClient<Channel>,
    /// Raw channels by served service, for the wire-level cases.
    raw: Vec<(&'static str, Channel)>,
    _stop: tokio::sync::watch::Sender<()>,
    /// Declared before `_dir`, so mounts go before the directory is removed.
    _unmount: UnmountGuard,
    _dir: tempfile::TempDir,
}

fn stopped(rx: &tokio::sync::watch::Receiver<()>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move { while rx.changed().await.is_ok() {} }
}

impl Servers {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let unmount = UnmountGuard(root.clone());
        let export = root.join("export");
        std::fs::create_dir_all(&export).unwrap();
        std::fs::create_dir_all(root.join("pods")).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(());

        let store = VolumeStore::open(StoreConfig {
            root: export.clone(),
            capacity_policy: CapacityPolicy::Thin,
            default_volume_bytes: 1 << 20,
            default_mode: 0o777,
            copy_hook: None,
        })
        .unwrap();
        let backend_endpoint = Endpoint::Unix(root.join("backend.sock"));
        let listener = Listener::bind(&backend_endpoint).await.unwrap();
        let router = tonic::transport::Server::builder()
            .add_service(volumes::api::service(Arc::new(store), Some(TOKEN.into())));
        tokio::spawn(endpoint::serve(router, listener, stopped(&stop_rx)));
        let backend = controller::backend::connect(&backend_endpoint, Some(TOKEN)).unwrap();

        let controller = ControllerService::new(
            ClusterId::parse(CLUSTER).unwrap(),
            ExportConfig::default(),
            backend.clone(),
        );
        let group =
            GroupControllerService::new(ClusterId::parse(CLUSTER).unwrap(), backend.clone());
        let controller_endpoint = Endpoint::Unix(root.join("controller.sock"));
        let listener = Listener::bind(&controller_endpoint).await.unwrap();
        // As hanfs-controller serves them: both services on the one socket.
        let router = tonic::transport::Server::builder()
            .add_service(common::rpc_trace::traced(
                csi::controller_server::ControllerServer::new(controller),
            ))
            .add_service(common::rpc_trace::traced(
                csi::group_controller_server::GroupControllerServer::new(group),
            ));
        tokio::spawn(endpoint::serve(router, listener, stopped(&stop_rx)));

        let config = NodeConfig {
            driver_name: "hanfs.csi.io".into(),
            node_id: "node-a".into(),
            cluster_id: ClusterId::parse(CLUSTER).unwrap(),
            transport: Transport::Local {
                export_root: export.clone(),
            },
            allowed_target_roots: vec![root.join("pods")],
            mount_timeout: Duration::from_secs(20),
            stats_timeout: Duration::from_secs(10),
            helper_binary: PathBuf::from(env!("CARGO_BIN_EXE_hanfs-node")),
        };
        let node_endpoint = Endpoint::Unix(root.join("csi.sock"));
        let listener = Listener::bind(&node_endpoint).await.unwrap();
        tokio::spawn(node::run(config, listener, stopped(&stop_rx)));

        let backend_raw = endpoint::connect_lazy(&backend_endpoint).unwrap();
        let controller_raw = endpoint::connect_lazy(&controller_endpoint).unwrap();
        let node_raw = endpoint::connect_lazy(&node_endpoint).unwrap();
        Servers {
            root,
            backend,
            controller: csi::controller_client::ControllerClient::new(controller_raw.clone()),
            group: csi::group_controller_client::GroupControllerClient::new(controller_raw.clone()),
            node: csi::node_client::NodeClient::new(node_raw.clone()),
            identity: csi::identity_client::IdentityClient::new(node_raw.clone()),
            raw: vec![
                ("hanfs.backend.v1.Volumes", backend_raw),
                ("csi.v1.Controller", controller_raw.clone()),
                ("csi.v1.GroupController", controller_raw),
                ("csi.v1.Node", node_raw.clone()),
                ("csi.v1.Identity", node_raw),
            ],
            _stop: stop_tx,
            _unmount: unmount,
            _dir: dir,
        }
    }

    fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// The one volume, snapshot, group snapshot and mount every case runs against.
    async fn seed(&mut self) {
        self.controller
            .create_volume(csi::CreateVolumeRequest {
                name: "pvc-ok".into(),
                volume_capabilities: vec![capability(access_mode::Mode::MultiNodeMultiWriter)],
                ..Default::default()
            })
            .await
            .unwrap();
        self.controller
            .create_snapshot(csi::CreateSnapshotRequest {
                name: "snap-ok".into(),
                source_volume_id: VOLUME.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        self.group
            .create_volume_group_snapshot(csi::CreateVolumeGroupSnapshotRequest {
                name: "group-ok".into(),
                source_volume_ids: vec![VOLUME.into()],
                ..Default::default()
            })
            .await
            .unwrap();
        self.node
            .node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: VOLUME.into(),
                target_path: self.pods().join("ok").to_string_lossy().into_owned(),
                volume_capability: Some(capability(access_mode::Mode::MultiNodeMultiWriter)),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// Everything a bad request must not change: every path below the test's directory
    /// (type and mode; sockets included, they do not change), the bytes of every record,
    /// and the mounts whose line names the test's directory.
    fn state(&self) -> BTreeMap<String, String> {
        let mut state = BTreeMap::new();
        walk(&self.root, &self.root, &mut state);
        let root = self.root.to_string_lossy().into_owned();
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for line in table.lines().filter(|l| l.contains(&root)) {
            // The mount id and parent id are stable while the mount stays.
            state.insert(format!("mount {line}"), String::new());
        }
        state
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
        let what = if meta.is_dir() {
            format!("dir {mode:o}")
        } else if rel.contains(".hanfs/meta") {
            format!(
                "record {mode:o} {}",
                String::from_utf8_lossy(&std::fs::read(&path).unwrap())
            )
        } else {
            format!("file {mode:o} {} bytes", meta.len())
        };
        out.insert(rel, what);
        // Into the mounted target too: a bind mount of the volume shows the same tree,
        // so a case that writes through it is caught twice, which is fine.
        if meta.is_dir() {
            walk(root, &path, out);
        }
    }
}

fn capability(mode: access_mode::Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(Default::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn mount_with(flags: &[&str], fs_type: &str) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(csi::volume_capability::MountVolume {
            fs_type: fs_type.into(),
            mount_flags: flags.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Field classes: hostile values and the code each must get

/// A hostile value for one field and the code the call must fail with (`Code::Ok` where
/// the spec makes the call succeed anyway, e.g. deleting what does not exist).
#[derive(Clone)]
struct Bad<T> {
    label: String,
    value: T,
    want: Code,
}

fn bad<T>(label: impl Into<String>, value: T, want: Code) -> Bad<T> {
    Bad {
        label: label.into(),
        value,
        want,
    }
}

/// Characters that mean something to a shell, a mount option list, a path, a log line,
/// the kernel or a terminal; plus non-ASCII look-alikes.
const INJECT: &[char] = &[
    '/', '\0', '\n', '\r', '\t', ' ', ',', '=', ':', ';', '"', '\'', '\\', '$', '`', '*', '?', '|',
    '&', '<', '>', '%', '#', '~', '\u{7f}', '\u{1b}', 'ä', '\u{202e}', '／',
];

/// Strings no name (request name, directory, snapshot) may be: empty, too long for
/// `max`, every injection character inside and in front, and traversal spellings.
fn hostile_names(max: usize) -> Vec<Bad<String>> {
    let mut out = vec![
        bad("empty", String::new(), Code::InvalidArgument),
        bad(
            format!("{} bytes", max + 1),
            "a".repeat(max + 1),
            Code::InvalidArgument,
        ),
        bad("64 KiB", "a".repeat(64 << 10), Code::InvalidArgument),
    ];
    for c in INJECT {
        out.push(bad(
            format!("{c:?} inside"),
            format!("pvc{c}x"),
            Code::InvalidArgument,
        ));
        out.push(bad(
            format!("{c:?} first"),
            format!("{c}pvc"),
            Code::InvalidArgument,
        ));
    }
    for traversal in [
        ".",
        "..",
        "../pvc",
        "pvc/..",
        "./pvc",
        "/pvc",
        "/etc/passwd",
        "pvc/../../etc",
        "..\\pvc",
        "-pvc",
        "_pvc",
        ".pvc",
    ] {
        out.push(bad(
            format!("{traversal:?}"),
            traversal.into(),
            Code::InvalidArgument,
        ));
    }
    out
}

/// Hostile ids in `<version>/<cluster>/<name>` form. Malformed ones are INVALID_ARGUMENT;
/// well-formed ones that this cluster cannot have made, or that name nothing, are
/// `not_found` (NOT_FOUND for lookups, OK for deletes: absent is deleted).
fn hostile_ids(version: &str, not_found: Code) -> Vec<Bad<String>> {
    let mut out = vec![bad("empty", String::new(), Code::InvalidArgument)];
    for name in hostile_names(128)
        .into_iter()
        .filter(|b| !b.value.is_empty())
    {
        out.push(bad(
            format!("name {}", name.label),
            format!("{version}/{CLUSTER}/{}", name.value),
            Code::InvalidArgument,
        ));
    }
    out.push(bad(
        "129 bytes",
        format!("{version}/{CLUSTER}/{}", "a".repeat(129 - 8)),
        Code::InvalidArgument,
    ));
    for foreign in [
        format!("{version}/other-cluster/pvc-ok"),
        format!("{version}/{CLUSTER}/pvc-missing"),
        format!("{version}/{CLUSTER}"),
        format!("v9/{CLUSTER}/pvc-ok"),
        format!("V1/{CLUSTER}/pvc-ok"),
        "pvc-ok".into(),
        "10.0.0.1#/export#volumes/pvc-ok".into(),
    ] {
        out.push(bad(format!("{foreign:?}"), foreign, not_found));
    }
    out
}

/// Hostile paths for the node's target/staging/volume paths: never something the node
/// may create or mount on.
fn hostile_paths(pods: &Path) -> Vec<Bad<String>> {
    let pods = pods.to_string_lossy();
    let mut out = vec![bad("empty", String::new(), Code::InvalidArgument)];
    for (label, path) in [
        ("relative", "pods/x".to_string()),
        ("dot-relative", "./x".into()),
        ("traversal", format!("{pods}/../escape")),
        ("traversal at the end", format!("{pods}/x/..")),
        ("NUL", format!("{pods}/a\0b")),
        ("root", "/".into()),
        ("outside the allowed roots", "/etc/hanfs-bad-input".into()),
        ("the allowed root itself", pods.to_string()),
        ("a missing parent", format!("{pods}/missing/x")),
        (
            "a name over NAME_MAX",
            format!("{pods}/{}", "a".repeat(300)),
        ),
        (
            "a path over PATH_MAX",
            format!("{pods}/{}", "a/".repeat(2100)),
        ),
    ] {
        out.push(bad(label, path, Code::InvalidArgument));
    }
    out
}

/// The same values with every non-empty one expecting `code` instead: for fields that
/// are only looked up (an id or path compared with what exists, never created, mounted
/// or joined into a path), where the spec's answer for "nothing there" applies.
fn looked_up(bad: Vec<Bad<String>>, code: Code) -> Vec<Bad<String>> {
    bad.into_iter()
        .map(|mut b| {
            if !b.value.is_empty() {
                b.want = code;
            }
            b
        })
        .collect()
}

/// Hostile paths for unpublish and unstage: the lexically bad ones are refused; one
/// whose parent does not exist cannot have a mount, so it is unpublished already (CSI
/// idempotency: OK).
fn unmounted_paths(pods: &Path) -> Vec<Bad<String>> {
    hostile_paths(pods)
        .into_iter()
        .map(|mut b| {
            if b.label == "a missing parent" || b.label == "a path over PATH_MAX" {
                b.want = Code::Ok;
            }
            b
        })
        .collect()
}

/// Capacity ranges no create or expand may accept.
fn hostile_ranges() -> Vec<Bad<Option<csi::CapacityRange>>> {
    let range = |required_bytes, limit_bytes| {
        Some(csi::CapacityRange {
            required_bytes,
            limit_bytes,
        })
    };
    vec![
        bad("required -1", range(-1, 0), Code::InvalidArgument),
        bad("limit -1", range(0, -1), Code::InvalidArgument),
        bad(
            "required i64::MIN",
            range(i64::MIN, 0),
            Code::InvalidArgument,
        ),
        bad("limit i64::MIN", range(0, i64::MIN), Code::InvalidArgument),
        bad(
            "required > limit",
            range(10 << 20, 5 << 20),
            Code::InvalidArgument,
        ),
        bad("required i64::MAX", range(i64::MAX, 0), Code::OutOfRange),
        bad(
            "limit i64::MAX, required i64::MAX",
            range(i64::MAX, i64::MAX),
            Code::OutOfRange,
        ),
    ]
}

/// Capability lists no create may accept.
fn hostile_capability_lists() -> Vec<Bad<Vec<csi::VolumeCapability>>> {
    let mut out = vec![bad("none", vec![], Code::InvalidArgument)];
    for single in hostile_capabilities() {
        out.push(bad(
            single.label.clone(),
            vec![single.value.clone()],
            single.want,
        ));
        // One good capability does not excuse a bad one next to it.
        out.push(bad(
            format!("{} after a good one", single.label),
            vec![
                capability(access_mode::Mode::MultiNodeMultiWriter),
                single.value,
            ],
            single.want,
        ));
    }
    out
}

/// Single capabilities no create or mount may accept.
fn hostile_capabilities() -> Vec<Bad<csi::VolumeCapability>> {
    let mode = access_mode::Mode::MultiNodeMultiWriter as i32;
    vec![
        bad(
            "no access type",
            csi::VolumeCapability {
                access_type: None,
                access_mode: Some(AccessMode { mode }),
            },
            Code::InvalidArgument,
        ),
        bad(
            "no access mode",
            csi::VolumeCapability {
                access_type: Some(AccessType::Mount(Default::default())),
                access_mode: None,
            },
            Code::InvalidArgument,
        ),
        bad(
            "access mode UNKNOWN",
            csi::VolumeCapability {
                access_type: Some(AccessType::Mount(Default::default())),
                access_mode: Some(AccessMode { mode: 0 }),
            },
            Code::InvalidArgument,
        ),
        bad(
            "access mode 99",
            csi::VolumeCapability {
                access_type: Some(AccessType::Mount(Default::default())),
                access_mode: Some(AccessMode { mode: 99 }),
            },
            Code::InvalidArgument,
        ),
        bad(
            "access mode -1",
            csi::VolumeCapability {
                access_type: Some(AccessType::Mount(Default::default())),
                access_mode: Some(AccessMode { mode: -1 }),
            },
            Code::InvalidArgument,
        ),
        bad(
            "block",
            csi::VolumeCapability {
                access_type: Some(AccessType::Block(Default::default())),
                access_mode: Some(AccessMode { mode }),
            },
            Code::InvalidArgument,
        ),
    ]
}

/// Mount options that would add options, break the option list or smuggle in the
/// driver's own `addr=`, as the capability a node mounts with.
fn hostile_mount_capabilities() -> Vec<Bad<csi::VolumeCapability>> {
    let mut out = hostile_capabilities();
    let mut options = vec![
        "".to_string(),
        "=x".into(),
        "a=b=c".into(),
        "ro,rw".into(),
        "nosuid,dev".into(),
        "context=\"system_u:object_r:a_t:s0".into(),
        "context=system_u:object_r:a_t:s0:c1,c2".into(),
        "context=\"a\"b\"".into(),
        "context=\"\"".into(),
    ];
    for c in ['\n', '\r', '\t', ' ', ',', '\0', '\u{1b}', '\u{85}'] {
        options.push(format!("noatime{c}suid"));
        options.push(format!("vers=4.2{c}addr=10.6.6.6"));
    }
    for option in options {
        out.push(bad(
            format!("mount option {option:?}"),
            mount_with(&[option.as_str()], ""),
            Code::InvalidArgument,
        ));
    }
    out
}

/// StorageClass parameters that must be refused: unknown keys (also look-alikes of known
/// ones), and every known key with values that are malformed or carry injections.
fn hostile_parameters() -> Vec<Bad<HashMap<String, String>>> {
    let mut out = Vec::new();
    let one = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
    for key in [
        "fsType",
        "",
        " onDelete",
        "onDelete\n",
        "on_delete",
        "subDir=x",
        "subDir,onDelete",
        "csi.storage.k8s.io/pvc/name2",
        "pathPattern",
    ] {
        out.push(bad(
            format!("key {key:?}"),
            one(key, "x"),
            Code::InvalidArgument,
        ));
    }
    let values: &[(&str, &[&str])] = &[
        (
            "onDelete",
            &[
                "",
                "shred",
                "retain,delete",
                "retain\n",
                " retain",
                "retain=1",
                "retain;rm",
            ],
        ),
        (
            "mountPermissions",
            &[
                "0777,0",
                "0x1ff",
                "-1",
                "99999999999",
                "0o777",
                "0777\n",
                "17777",
                "rwx",
                "7 7",
            ],
        ),
        (
            "subDir",
            &[
                "a/b",
                "../x",
                "..",
                ".",
                "a,b",
                "a b",
                "a\nb",
                "a=b",
                "a\0b",
                "${unknown}",
                "${pvc.metadata.name",
                "${pvc.metadata.name}",
                "/abs",
                "x${pv.metadata.name}",
            ],
        ),
        ("server", &["10.0.0.1,addr=10.6.6.6", "10.0.0.1", "\n"]),
        ("share", &["/export,ro", "/export", "relative", "/a\nb"]),
    ];
    for (key, bad_values) in values {
        for value in *bad_values {
            out.push(bad(
                format!("{key}={value:?}"),
                one(key, value),
                Code::InvalidArgument,
            ));
        }
    }
    // subDir placeholders filled with traversal from the PVC's metadata (a namespace
    // user picks the PVC name).
    for name in ["../../etc", "a/b", "..", "a,b", "a\nb", "."] {
        let mut params = one("subDir", "${pvc.metadata.name}");
        params.insert("csi.storage.k8s.io/pvc/name".into(), name.into());
        out.push(bad(
            format!("subDir from pvc name {name:?}"),
            params,
            Code::InvalidArgument,
        ));
    }
    out
}

/// VolumeAttributesClass parameters that must be refused.
fn hostile_mutable_parameters() -> Vec<Bad<HashMap<String, String>>> {
    hostile_parameters()
        .into_iter()
        .filter(|b| !b.value.contains_key("onDelete") || b.label.starts_with("onDelete="))
        .chain([bad(
            "subDir (not mutable)",
            HashMap::from([("subDir".to_string(), "x".to_string())]),
            Code::InvalidArgument,
        )])
        .collect()
}

/// Pagination: negative sizes are INVALID_ARGUMENT; tokens hanfs never issued are ABORTED
/// (CSI ListVolumes/ListSnapshots: "Invalid starting_token").
fn hostile_pages() -> Vec<Bad<(i32, String)>> {
    let mut out = vec![
        bad("max_entries -1", (-1, String::new()), Code::InvalidArgument),
        bad(
            "max_entries i32::MIN",
            (i32::MIN, String::new()),
            Code::InvalidArgument,
        ),
    ];
    for token in ["garbage", "-1", "99999999999999999999", "\0", "../x", "1,2"] {
        out.push(bad(
            format!("starting_token {token:?}"),
            (0, token.to_string()),
            Code::Aborted,
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Cases

type Reply = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

struct Case {
    rpc: &'static str,
    field: &'static str,
    label: String,
    want: Code,
    call: Reply,
}

#[derive(Default)]
struct Cases(Vec<Case>);

impl Cases {
    /// One case per hostile value: `base` (a request that would succeed or fail only for
    /// that field) with the field set to it.
    fn vary<R: Clone, T>(
        &mut self,
        rpc: &'static str,
        field: &'static str,
        base: &R,
        bad: Vec<Bad<T>>,
        set: impl Fn(&mut R, T),
        send: &impl Fn(R) -> Reply,
    ) {
        for b in bad {
            let mut request = base.clone();
            set(&mut request, b.value);
            self.0.push(Case {
                rpc,
                field,
                label: b.label,
                want: b.want,
                call: send(request),
            });
        }
    }
}

/// A sender for one RPC of a typed client.
macro_rules! send {
    ($client:expr, $method:ident) => {{
        let client = $client.clone();
        move |request| -> Reply {
            let mut client = client.clone();
            Box::pin(async move { client.$method(request).await.map(drop) })
        }
    }};
}

/// The typed cases: each RPC's fields by class.
fn typed_cases(s: &Servers) -> Cases {
    let mut cases = Cases::default();
    let c = &mut cases;
    let pods = s.pods();
    let target = pods.join("new").to_string_lossy().into_owned();
    let rwx = capability(access_mode::Mode::MultiNodeMultiWriter);
    let names = || hostile_names(253);
    let volume_ids = || hostile_ids("v1", Code::NotFound);
    let snapshot_ids = || hostile_ids("s1", Code::NotFound);

    // --- Controller
    let create = csi::CreateVolumeRequest {
        name: "pvc-new".into(),
        volume_capabilities: vec![rwx.clone()],
        ..Default::default()
    };
    let send = send!(s.controller, create_volume);
    c.vary(
        "CreateVolume",
        "name",
        &create,
        names(),
        |r, v| r.name = v,
        &send,
    );
    c.vary(
        "CreateVolume",
        "capacity_range",
        &create,
        hostile_ranges(),
        |r, v| r.capacity_range = v,
        &send,
    );
    c.vary(
        "CreateVolume",
        "volume_capabilities",
        &create,
        hostile_capability_lists(),
        |r, v| r.volume_capabilities = v,
        &send,
    );
    c.vary(
        "CreateVolume",
        "parameters",
        &create,
        hostile_parameters(),
        |r, v| r.parameters = v,
        &send,
    );
    let from_snapshot = |id: String| csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource { snapshot_id: id },
        )),
    };
    let from_volume = |id: String| csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource { volume_id: id },
        )),
    };
    c.vary(
        "CreateVolume",
        "volume_content_source.snapshot",
        &create,
        snapshot_ids(),
        |r, v| r.volume_content_source = Some(from_snapshot(v)),
        &send,
    );
    c.vary(
        "CreateVolume",
        "volume_content_source.volume",
        &create,
        volume_ids(),
        |r, v| r.volume_content_source = Some(from_volume(v)),
        &send,
    );
    c.vary(
        "CreateVolume",
        "volume_content_source",
        &create,
        vec![bad("no type", None, Code::InvalidArgument)],
        |r, v| {
            r.volume_content_source = Some(csi::VolumeContentSource { r#type: v });
        },
        &send,
    );

    let send = send!(s.controller, delete_volume);
    c.vary(
        "DeleteVolume",
        "volume_id",
        &csi::DeleteVolumeRequest::default(),
        hostile_ids("v1", Code::Ok),
        |r, v| r.volume_id = v,
        &send,
    );

    let validate = csi::ValidateVolumeCapabilitiesRequest {
        volume_id: VOLUME.into(),
        volume_capabilities: vec![rwx.clone()],
        ..Default::default()
    };
    // CSI: an unsupported capability or parameter is OK with nothing confirmed, which
    // the sender reports as UNCONFIRMED so the table tells it from a confirmation.
    let send = {
        let client = s.controller.clone();
        move |request| -> Reply {
            let mut client = client.clone();
            Box::pin(async move {
                let reply = client.validate_volume_capabilities(request).await?;
                match reply.into_inner().confirmed {
                    None => Err(tonic::Status::new(UNCONFIRMED, "not confirmed")),
                    Some(_) => Ok(()),
                }
            })
        }
    };
    c.vary(
        "ValidateVolumeCapabilities",
        "volume_id",
        &validate,
        volume_ids(),
        |r, v| r.volume_id = v,
        &send,
    );
    c.vary(
        "ValidateVolumeCapabilities",
        "volume_capabilities",
        &validate,
        vec![
            bad("none", vec![], Code::InvalidArgument),
            bad(
                "no access mode",
                vec![csi::VolumeCapability {
                    access_type: Some(AccessType::Mount(Default::default())),
                    access_mode: None,
                }],
                UNCONFIRMED,
            ),
        ],
        |r, v| r.volume_capabilities = v,
        &send,
    );
    c.vary(
        "ValidateVolumeCapabilities",
        "parameters",
        &validate,
        // subDir only names a new volume's directory: an existing volume's capabilities
        // do not depend on it, so those are confirmed.
        hostile_parameters()
            .into_iter()
            .map(|b| {
                let want = if b.value.contains_key("subDir") {
                    Code::Ok
                } else {
                    UNCONFIRMED
                };
                bad(b.label, b.value, want)
            })
            .collect(),
        |r, v| r.parameters = v,
        &send,
    );

    let send = send!(s.controller, list_volumes);
    c.vary(
        "ListVolumes",
        "max_entries/starting_token",
        &csi::ListVolumesRequest::default(),
        hostile_pages(),
        |r, (max, token)| {
            r.max_entries = max;
            r.starting_token = token;
        },
        &send,
    );
    let send = send!(s.controller, controller_list_volume_health);
    c.vary(
        "ControllerListVolumeHealth",
        "max_entries/starting_token",
        &csi::ControllerListVolumeHealthRequest::default(),
        hostile_pages(),
        |r, (max, token)| {
            r.max_entries = max;
            r.starting_token = token;
        },
        &send,
    );
    let send = send!(s.controller, controller_get_volume_health);
    c.vary(
        "ControllerGetVolumeHealth",
        "volume_id",
        &csi::ControllerGetVolumeHealthRequest::default(),
        volume_ids(),
        |r, v| r.volume_id = v,
        &send,
    );

    let send = send!(s.controller, get_capacity);
    c.vary(
        "GetCapacity",
        "parameters",
        &csi::GetCapacityRequest::default(),
        // subDir names a volume's directory: it has no bearing on capacity, and
        // csi-provisioner asks for capacity without any PVC's metadata.
        hostile_parameters()
            .into_iter()
            .map(|mut b| {
                if b.value.contains_key("subDir") {
                    b.want = Code::Ok;
                }
                b
            })
            .collect(),
        |r, v| r.parameters = v,
        &send,
    );

    let snapshot = csi::CreateSnapshotRequest {
        name: "snap-new".into(),
        source_volume_id: VOLUME.into(),
        ..Default::default()
    };
    let send = send!(s.controller, create_snapshot);
    c.vary(
        "CreateSnapshot",
        "name",
        &snapshot,
        names(),
        |r, v| r.name = v,
        &send,
    );
    c.vary(
        "CreateSnapshot",
        "source_volume_id",
        &snapshot,
        volume_ids(),
        |r, v| r.source_volume_id = v,
        &send,
    );
    c.vary(
        "CreateSnapshot",
        "parameters",
        &snapshot,
        vec![
            bad(
                "unknown key",
                HashMap::from([("fsType".to_string(), "xfs".to_string())]),
                Code::InvalidArgument,
            ),
            bad(
                "a volume parameter",
                HashMap::from([("onDelete".to_string(), "retain".to_string())]),
                Code::InvalidArgument,
            ),
        ],
        |r, v| r.parameters = v,
        &send,
    );

    let send = send!(s.controller, delete_snapshot);
    c.vary(
        "DeleteSnapshot",
        "snapshot_id",
        &csi::DeleteSnapshotRequest::default(),
        hostile_ids("s1", Code::Ok),
        |r, v| r.snapshot_id = v,
        &send,
    );

    // ListSnapshots filters: a malformed id is refused; one that names nothing lists
    // nothing (CSI: "not an error").
    let send = send!(s.controller, list_snapshots);
    c.vary(
        "ListSnapshots",
        "max_entries/starting_token",
        &csi::ListSnapshotsRequest::default(),
        hostile_pages(),
        |r, (max, token)| {
            r.max_entries = max;
            r.starting_token = token;
        },
        &send,
    );
    // An empty filter is no filter; one that matches nothing (malformed ids included:
    // no snapshot can have them) lists nothing, "not an error" in CSI ListSnapshots.
    let filter_values = |b: Vec<Bad<String>>, code| {
        looked_up(b, code)
            .into_iter()
            .map(|mut x| {
                if x.value.is_empty() {
                    x.want = Code::Ok;
                }
                x
            })
            .collect::<Vec<_>>()
    };
    c.vary(
        "ListSnapshots",
        "source_volume_id",
        &csi::ListSnapshotsRequest::default(),
        filter_values(hostile_ids("v1", Code::Ok), Code::Ok),
        |r, v| r.source_volume_id = v,
        &send,
    );
    c.vary(
        "ListSnapshots",
        "snapshot_id",
        &csi::ListSnapshotsRequest::default(),
        filter_values(hostile_ids("s1", Code::Ok), Code::Ok),
        |r, v| r.snapshot_id = v,
        &send,
    );

    let send = send!(s.controller, get_snapshot);
    c.vary(
        "GetSnapshot",
        "snapshot_id",
        &csi::GetSnapshotRequest::default(),
        // The service answers every id it cannot parse with NOT_FOUND (csi-sanity asks
        // for that with `none-exist-id`).
        looked_up(snapshot_ids(), Code::NotFound),
        |r, v| r.snapshot_id = v,
        &send,
    );

    let expand = csi::ControllerExpandVolumeRequest {
        volume_id: VOLUME.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 2 << 20,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let send = send!(s.controller, controller_expand_volume);
    c.vary(
        "ControllerExpandVolume",
        "volume_id",
        &expand,
        volume_ids(),
        |r, v| r.volume_id = v,
        &send,
    );
    c.vary(
        "ControllerExpandVolume",
        "capacity_range",
        &expand,
        hostile_ranges()
            .into_iter()
            .chain([bad("none", None, Code::InvalidArgument)])
            .collect(),
        |r, v| r.capacity_range = v,
        &send,
    );
    c.vary(
        "ControllerExpandVolume",
        "volume_capability",
        &expand,
        hostile_capabilities(),
        |r, v| r.volume_capability = Some(v),
        &send,
    );

    let send = send!(s.controller, controller_get_volume);
    c.vary(
        "ControllerGetVolume",
        "volume_id",
        &csi::ControllerGetVolumeRequest::default(),
        volume_ids(),
        |r, v| r.volume_id = v,
        &send,
    );

    let modify = csi::ControllerModifyVolumeRequest {
        volume_id: VOLUME.into(),
        mutable_parameters: HashMap::from([("onDelete".to_string(), "delete".to_string())]),
        ..Default::default()
    };
    let send = send!(s.controller, controller_modify_volume);
    c.vary(
        "ControllerModifyVolume",
        "volume_id",
        &modify,
        volume_ids(),
        |r, v| r.volume_id = v,
        &send,
    );
    c.vary(
        "ControllerModifyVolume",
        "mutable_parameters",
        &modify,
        hostile_mutable_parameters(),
        |r, v| r.mutable_parameters = v,
        &send,
    );

    // --- Node
    let node_ids = || {
        hostile_ids("v1", Code::NotFound)
            .into_iter()
            .filter(|b| b.value.is_empty() || b.value.starts_with("v1/"))
            .collect::<Vec<_>>()
    };
    let publish = csi::NodePublishVolumeRequest {
        volume_id: VOLUME.into(),
        target_path: target.clone(),
        volume_capability: Some(rwx.clone()),
        ..Default::default()
    };
    let send = send!(s.node, node_publish_volume);
    c.vary(
        "NodePublishVolume",
        "volume_id",
        &publish,
        node_ids(),
        |r, v| r.volume_id = v,
        &send,
    );
    c.vary(
        "NodePublishVolume",
        "target_path",
        &publish,
        hostile_paths(&pods),
        |r, v| r.target_path = v,
        &send,
    );
    c.vary(
        "NodePublishVolume",
        "volume_capability",
        &publish,
        hostile_mount_capabilities()
            .into_iter()
            .map(|b| bad(b.label, Some(b.value), b.want))
            .chain([bad("none", None, Code::InvalidArgument)])
            .collect(),
        |r, v| r.volume_capability = v,
        &send,
    );
    c.vary(
        "NodePublishVolume",
        "staging_target_path",
        &publish,
        // Only compared with where the volume is staged, never created or mounted on.
        looked_up(hostile_paths(&pods), Code::FailedPrecondition)
            .into_iter()
            .filter(|b| !b.value.is_empty())
            .collect(),
        |r, v| r.staging_target_path = v,
        &send,
    );

    let stage = csi::NodeStageVolumeRequest {
        volume_id: VOLUME.into(),
        staging_target_path: pods.join("staging").to_string_lossy().into_owned(),
        volume_capability: Some(rwx.clone()),
        ..Default::default()
    };
    let send = send!(s.node, node_stage_volume);
    c.vary(
        "NodeStageVolume",
        "volume_id",
        &stage,
        node_ids(),
        |r, v| r.volume_id = v,
        &send,
    );
    c.vary(
        "NodeStageVolume",
        "staging_target_path",
        &stage,
        hostile_paths(&pods),
        |r, v| r.staging_target_path = v,
        &send,
    );
    c.vary(
        "NodeStageVolume",
        "volume_capability",
        &stage,
        hostile_mount_capabilities()
            .into_iter()
            .map(|b| bad(b.label, Some(b.value), b.want))
            .chain([bad("none", None, Code::InvalidArgument)])
            .collect(),
        |r, v| r.volume_capability = v,
        &send,
    );

    let unstage = csi::NodeUnstageVolumeRequest {
        volume_id: VOLUME.into(),
        staging_target_path: pods.join("staging").to_string_lossy().into_owned(),
    };
    let send = send!(s.node, node_unstage_volume);
    c.vary(
        "NodeUnstageVolume",
        "volume_id",
        &unstage,
        vec![bad("empty", String::new(), Code::InvalidArgument)],
        |r, v| r.volume_id = v,
        &send,
    );
    c.vary(
        "NodeUnstageVolume",
        "staging_target_path",
        &unstage,
        // Unstage finds nothing staged below an over-long name and is done (unpublish
        // refuses it when it inspects the target: both leave everything as it was).
        unmounted_paths(&pods)
            .into_iter()
            .map(|mut b| {
                if b.label == "a name over NAME_MAX" {
                    b.want = Code::Ok;
                }
                b
            })
            .collect(),
        |r, v| r.staging_target_path = v,
        &send,
    );

    let unpublish = csi::NodeUnpublishVolumeRequest {
        volume_id: VOLUME.into(),
        target_path: pods.join("ok").to_string_lossy().into_owned(),
    };
    let send = send!(s.node, node_unpublish_volume);
    c.vary(
        "NodeUnpublishVolume",
        "volume_id",
        &unpublish,
        vec![bad("empty", String::new(), Code::InvalidArgument)],
        |r, v| r.volume_id = v,
        &send,
    );
    c.vary(
        "NodeUnpublishVolume",
        "target_path",
        &unpublish,
        unmounted_paths(&pods),
        |r, v| r.target_path = v,
        &send,
    );

    let stats = csi::NodeGetVolumeStatsRequest {
        volume_id: VOLUME.into(),
        volume_path: pods.join("ok").to_string_lossy().into_owned(),
        ..Default::default()
    };
    let send = send!(s.node, node_get_volume_stats);
    c.vary(
        "NodeGetVolumeStats",
        "volume_id",
        &stats,
        // The node answers every id it cannot know with NOT_FOUND here (error.rs).
        looked_up(node_ids(), Code::NotFound),
        |r, v| r.volume_id = v,
        &send,
    );
    c.vary(
        "NodeGetVolumeStats",
        "volume_path",
        &stats,
        looked_up(hostile_paths(&pods), Code::NotFound),
        |r, v| r.volume_path = v,
        &send,
    );

    let health = csi::NodeGetVolumeHealthRequest {
        volume_id: VOLUME.into(),
        volume_publish_path: pods.join("ok").to_string_lossy().into_owned(),
        ..Default::default()
    };
    let send = send!(s.node, node_get_volume_health);
    c.vary(
        "NodeGetVolumeHealth",
        "volume_id",
        &health,
        // The node answers every id it cannot know with NOT_FOUND here (error.rs).
        looked_up(node_ids(), Code::NotFound),
        |r, v| r.volume_id = v,
        &send,
    );
    c.vary(
        "NodeGetVolumeHealth",
        "volume_publish_path",
        &health,
        // Optional hints where to look for mounts; a path that holds none is skipped
        // and the volume itself is judged (read-only, nothing created).
        hostile_paths(&pods)
            .into_iter()
            .map(|b| bad(b.label, b.value, Code::Ok))
            .collect(),
        |r, v| r.volume_publish_path = v,
        &send,
    );

    let node_expand = csi::NodeExpandVolumeRequest {
        volume_id: VOLUME.into(),
        volume_path: pods.join("ok").to_string_lossy().into_owned(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 2 << 20,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let send = send!(s.node, node_expand_volume);
    c.vary(
        "NodeExpandVolume",
        "volume_id",
        &node_expand,
        node_ids(),
        |r, v| r.volume_id = v,
        &send,
    );
    c.vary(
        "NodeExpandVolume",
        "volume_path",
        &node_expand,
        looked_up(hostile_paths(&pods), Code::NotFound),
        |r, v| r.volume_path = v,
        &send,
    );
    c.vary(
        "NodeExpandVolume",
        "capacity_range",
        &node_expand,
        hostile_ranges()
            .into_iter()
            .filter(|b| b.want == Code::InvalidArgument)
            .collect(),
        |r, v| r.capacity_range = v,
        &send,
    );

    // --- Backend volume API (what the controller calls; also reachable by anything that
    // holds the token).
    let dirs = || hostile_names(128);
    let be_create = be::CreateVolumeRequest {
        dir: "pvc-new".into(),
        request_name: "pvc-new".into(),
        ..Default::default()
    };
    let send = send!(s.backend, create_volume);
    c.vary(
        "backend CreateVolume",
        "dir",
        &be_create,
        dirs(),
        |r, v| r.dir = v,
        &send,
    );
    c.vary(
        "backend CreateVolume",
        "request_name",
        &be_create,
        names(),
        |r, v| r.request_name = v,
        &send,
    );
    c.vary(
        "backend CreateVolume",
        "required_bytes/limit_bytes",
        &be_create,
        hostile_ranges(),
        |r, v| {
            let v = v.unwrap();
            r.required_bytes = v.required_bytes;
            r.limit_bytes = v.limit_bytes;
        },
        &send,
    );
    c.vary(
        "backend CreateVolume",
        "mode",
        &be_create,
        vec![
            bad("0o10000", 0o10000, Code::InvalidArgument),
            bad("u32::MAX", u32::MAX, Code::InvalidArgument),
        ],
        |r, v| r.mode = v,
        &send,
    );
    c.vary(
        "backend CreateVolume",
        "on_delete",
        &be_create,
        vec![
            bad("99", 99, Code::InvalidArgument),
            bad("-1", -1, Code::InvalidArgument),
        ],
        |r, v| r.on_delete = v,
        &send,
    );
    c.vary(
        "backend CreateVolume",
        "source_snapshot",
        &be_create,
        hostile_names(128)
            .into_iter()
            .filter(|b| !b.value.is_empty())
            .chain([bad("missing", "snap-missing".into(), Code::NotFound)])
            .collect(),
        |r, v| r.source = Some(be::create_volume_request::Source::SourceSnapshot(v)),
        &send,
    );
    c.vary(
        "backend CreateVolume",
        "source_volume",
        &be_create,
        hostile_names(128)
            .into_iter()
            .filter(|b| !b.value.is_empty())
            .chain([bad("missing", "pvc-missing".into(), Code::NotFound)])
            .collect(),
        |r, v| r.source = Some(be::create_volume_request::Source::SourceVolume(v)),
        &send,
    );

    let send = send!(s.backend, delete_volume);
    c.vary(
        "backend DeleteVolume",
        "dir",
        &be::DeleteVolumeRequest::default(),
        dirs(),
        |r, v| r.dir = v,
        &send,
    );
    let send = send!(s.backend, get_volume);
    c.vary(
        "backend GetVolume",
        "dir",
        &be::GetVolumeRequest::default(),
        dirs(),
        |r, v| r.dir = v,
        &send,
    );
    let send = send!(s.backend, volume_health);
    c.vary(
        "backend VolumeHealth",
        "dir",
        &be::VolumeHealthRequest::default(),
        dirs(),
        |r, v| r.dir = v,
        &send,
    );
    let be_expand = be::ExpandVolumeRequest {
        dir: "pvc-ok".into(),
        capacity_bytes: 2 << 20,
    };
    let send = send!(s.backend, expand_volume);
    c.vary(
        "backend ExpandVolume",
        "dir",
        &be_expand,
        dirs(),
        |r, v| r.dir = v,
        &send,
    );
    c.vary(
        "backend ExpandVolume",
        "capacity_bytes",
        &be_expand,
        vec![
            bad("-1", -1, Code::InvalidArgument),
            bad("i64::MIN", i64::MIN, Code::InvalidArgument),
            bad("i64::MAX", i64::MAX, Code::OutOfRange),
        ],
        |r, v| r.capacity_bytes = v,
        &send,
    );
    let be_modify = be::ModifyVolumeRequest {
        dir: "pvc-ok".into(),
        on_delete: be::OnDelete::Delete as i32,
    };
    let send = send!(s.backend, modify_volume);
    c.vary(
        "backend ModifyVolume",
        "dir",
        &be_modify,
        dirs(),
        |r, v| r.dir = v,
        &send,
    );
    c.vary(
        "backend ModifyVolume",
        "on_delete",
        &be_modify,
        vec![
            bad("99", 99, Code::InvalidArgument),
            bad("-1", -1, Code::InvalidArgument),
        ],
        |r, v| r.on_delete = v,
        &send,
    );
    let send = send!(s.backend, list_volumes);
    c.vary(
        "backend ListVolumes",
        "max_entries/starting_token",
        &be::ListVolumesRequest::default(),
        hostile_pages(),
        |r, (max, token)| {
            r.max_entries = max;
            r.starting_token = token;
        },
        &send,
    );
    let send = send!(s.backend, list_volume_health);
    c.vary(
        "backend ListVolumeHealth",
        "max_entries/starting_token",
        &be::ListVolumeHealthRequest::default(),
        hostile_pages(),
        |r, (max, token)| {
            r.max_entries = max;
            r.starting_token = token;
        },
        &send,
    );

    let be_snapshot = be::CreateSnapshotRequest {
        name: "snap-new".into(),
        request_name: "snap-new".into(),
        source_volume: "pvc-ok".into(),
    };
    let send = send!(s.backend, create_snapshot);
    c.vary(
        "backend CreateSnapshot",
        "name",
        &be_snapshot,
        hostile_names(128),
        |r, v| r.name = v,
        &send,
    );
    c.vary(
        "backend CreateSnapshot",
        "request_name",
        &be_snapshot,
        names(),
        |r, v| r.request_name = v,
        &send,
    );
    c.vary(
        "backend CreateSnapshot",
        "source_volume",
        &be_snapshot,
        dirs(),
        |r, v| r.source_volume = v,
        &send,
    );
    let send = send!(s.backend, delete_snapshot);
    c.vary(
        "backend DeleteSnapshot",
        "name",
        &be::DeleteSnapshotRequest::default(),
        hostile_names(128),
        |r, v| r.name = v,
        &send,
    );
    let send = send!(s.backend, get_snapshot);
    c.vary(
        "backend GetSnapshot",
        "name",
        &be::GetSnapshotRequest::default(),
        hostile_names(128),
        |r, v| r.name = v,
        &send,
    );
    let send = send!(s.backend, list_snapshots);
    c.vary(
        "backend ListSnapshots",
        "max_entries/starting_token",
        &be::ListSnapshotsRequest::default(),
        hostile_pages(),
        |r, (max, token)| {
            r.max_entries = max;
            r.starting_token = token;
        },
        &send,
    );
    c.vary(
        "backend ListSnapshots",
        "source_volume",
        &be::ListSnapshotsRequest::default(),
        hostile_names(128)
            .into_iter()
            .filter(|b| !b.value.is_empty())
            .collect(),
        |r, v| r.source_volume = v,
        &send,
    );
    // --- GroupController
    let group_create = csi::CreateVolumeGroupSnapshotRequest {
        name: "group-new".into(),
        source_volume_ids: vec![VOLUME.into()],
        ..Default::default()
    };
    let send = send!(s.group, create_volume_group_snapshot);
    c.vary(
        "CreateVolumeGroupSnapshot",
        "name",
        &group_create,
        names(),
        |r, v| r.name = v,
        &send,
    );
    // Each hostile id as the only member, and beside the good volume (one bad member
    // must fail the whole group, not cut the others).
    c.vary(
        "CreateVolumeGroupSnapshot",
        "source_volume_ids",
        &group_create,
        volume_ids(),
        |r, v| r.source_volume_ids = vec![v],
        &send,
    );
    c.vary(
        "CreateVolumeGroupSnapshot",
        "source_volume_ids (beside a good one)",
        &group_create,
        volume_ids(),
        |r, v| r.source_volume_ids = vec![VOLUME.into(), v],
        &send,
    );
    c.vary(
        "CreateVolumeGroupSnapshot",
        "source_volume_ids",
        &group_create,
        vec![bad("none", Vec::new(), Code::InvalidArgument)],
        |r, v| r.source_volume_ids = v,
        &send,
    );
    c.vary(
        "CreateVolumeGroupSnapshot",
        "parameters",
        &group_create,
        hostile_parameters()
            .into_iter()
            .filter(|b| !b.value.is_empty())
            .map(|mut b| {
                // A group snapshot takes no parameters at all: every key is unknown.
                b.want = Code::InvalidArgument;
                b
            })
            .collect(),
        |r, v| r.parameters = v,
        &send,
    );
    let send = send!(s.group, delete_volume_group_snapshot);
    c.vary(
        "DeleteVolumeGroupSnapshot",
        "group_snapshot_id",
        &csi::DeleteVolumeGroupSnapshotRequest::default(),
        hostile_ids("g1", Code::Ok),
        |r, v| r.group_snapshot_id = v,
        &send,
    );
    let not_the_members = || {
        vec![
            bad(
                "a snapshot of no group",
                vec!["s1/test/snap-ok".to_string()],
                Code::InvalidArgument,
            ),
            bad(
                "a malformed id",
                vec!["s1/test/../x".to_string()],
                Code::InvalidArgument,
            ),
            bad(
                "an id of another cluster",
                vec!["s1/other/group-ok".to_string()],
                Code::InvalidArgument,
            ),
        ]
    };
    c.vary(
        "DeleteVolumeGroupSnapshot",
        "snapshot_ids",
        &csi::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: GROUP.into(),
            ..Default::default()
        },
        not_the_members(),
        |r, v| r.snapshot_ids = v,
        &send,
    );
    let send = send!(s.group, get_volume_group_snapshot);
    c.vary(
        "GetVolumeGroupSnapshot",
        "group_snapshot_id",
        &csi::GetVolumeGroupSnapshotRequest::default(),
        hostile_ids("g1", Code::NotFound),
        |r, v| r.group_snapshot_id = v,
        &send,
    );
    c.vary(
        "GetVolumeGroupSnapshot",
        "snapshot_ids",
        &csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: GROUP.into(),
            ..Default::default()
        },
        not_the_members(),
        |r, v| r.snapshot_ids = v,
        &send,
    );

    // --- backend group snapshots
    let be_group = be::CreateGroupSnapshotRequest {
        name: "group-new".into(),
        request_name: "group-new".into(),
        source_volumes: vec!["pvc-ok".into()],
    };
    let send = send!(s.backend, create_group_snapshot);
    c.vary(
        "backend CreateGroupSnapshot",
        "name",
        &be_group,
        hostile_names(128),
        |r, v| r.name = v,
        &send,
    );
    c.vary(
        "backend CreateGroupSnapshot",
        "request_name",
        &be_group,
        names(),
        |r, v| r.request_name = v,
        &send,
    );
    c.vary(
        "backend CreateGroupSnapshot",
        "source_volumes",
        &be_group,
        hostile_names(128),
        |r, v| r.source_volumes = vec!["pvc-ok".into(), v],
        &send,
    );
    c.vary(
        "backend CreateGroupSnapshot",
        "source_volumes",
        &be_group,
        vec![
            bad("none", Vec::new(), Code::InvalidArgument),
            bad(
                "one volume twice",
                vec!["pvc-ok".to_string(), "pvc-ok".to_string()],
                Code::InvalidArgument,
            ),
            bad(
                "a volume that does not exist",
                vec!["pvc-ok".to_string(), "pvc-missing".to_string()],
                Code::NotFound,
            ),
        ],
        |r, v| r.source_volumes = v,
        &send,
    );
    let send = send!(s.backend, delete_group_snapshot);
    c.vary(
        "backend DeleteGroupSnapshot",
        "name",
        &be::DeleteGroupSnapshotRequest::default(),
        hostile_names(128),
        |r, v| r.name = v,
        &send,
    );
    let send = send!(s.backend, get_group_snapshot);
    c.vary(
        "backend GetGroupSnapshot",
        "name",
        &be::GetGroupSnapshotRequest::default(),
        hostile_names(128),
        |r, v| r.name = v,
        &send,
    );

    // Identity has no request fields; the wire cases below cover it. One typed call each
    // proves the identity socket is the node's.
    let _ = &s.identity;
    cases
}

// ---------------------------------------------------------------------------------------
// Wire-level cases, generated from the descriptors

/// Sends bytes as they are and ignores the reply's body: only the status matters.
#[derive(Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

fn raw_call(channel: Channel, path: String, body: Vec<u8>, token: Option<&'static str>) -> Reply {
    Box::pin(async move {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut request = tonic::Request::new(body);
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let path = http::uri::PathAndQuery::try_from(path).unwrap();
        grpc.unary(request, path, RawCodec).await.map(drop)
    })
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `bytes` as a length-delimited field `number`.
fn delimited(number: i32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(((number as u64) << 3) | 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

struct Messages(HashMap<String, prost_types::DescriptorProto>);

impl Messages {
    fn load() -> Self {
        let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut all = HashMap::new();
        fn add(
            prefix: &str,
            m: &prost_types::DescriptorProto,
            all: &mut HashMap<String, prost_types::DescriptorProto>,
        ) {
            let name = format!("{prefix}.{}", m.name());
            for nested in &m.nested_type {
                add(&name, nested, all);
            }
            all.insert(name, m.clone());
        }
        for file in &set.file {
            for m in &file.message_type {
                add(&format!(".{}", file.package()), m, &mut all);
            }
        }
        Messages(all)
    }

    /// Encoded messages of type `name`, each with one string field (at any depth up to
    /// 4, through messages and map entries) set to invalid UTF-8, labelled by field path.
    fn invalid_utf8(&self, name: &str, depth: usize) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let Some(message) = self.0.get(name) else {
            return out;
        };
        use prost_types::field_descriptor_proto::Type;
        for field in &message.field {
            match field.r#type() {
                Type::String => out.push((
                    field.name().to_owned(),
                    delimited(field.number(), b"pvc-\xff\xfe\xc0\xaf"),
                )),
                Type::Message if depth > 0 => {
                    for (path, inner) in self.invalid_utf8(field.type_name(), depth - 1) {
                        out.push((
                            format!("{}.{path}", field.name()),
                            delimited(field.number(), &inner),
                        ));
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// How the ValidateVolumeCapabilities sender reports "OK, but nothing confirmed".
const UNCONFIRMED: Code = Code::Unknown;

/// What a request that is no valid protobuf gets: tonic's decoder answers INTERNAL, as
/// gRPC's status code table prescribes for "error parsing request proto", with the
/// field and the reason in the message (checked below); it happens before any handler,
/// so nothing can change.
const UNDECODABLE: Code = Code::Internal;

/// For every method of every served service: invalid UTF-8 in each string field, bytes
/// that are no protobuf message, and (volume API) no token or a wrong one.
fn wire_cases(s: &Servers) -> Cases {
    let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let messages = Messages::load();
    let mut cases = Cases::default();
    for file in &set.file {
        for service in &file.service {
            let full = format!("{}.{}", file.package(), service.name());
            let Some((_, channel)) = s.raw.iter().find(|(name, _)| *name == full) else {
                continue;
            };
            let backend = full.starts_with("hanfs.backend");
            let token = backend.then_some(TOKEN);
            for method in &service.method {
                let path = format!("/{full}/{}", method.name());
                let rpc: &'static str = Box::leak(
                    format!("wire {}/{}", service.name(), method.name()).into_boxed_str(),
                );
                for (field, body) in messages.invalid_utf8(method.input_type(), 4) {
                    cases.0.push(Case {
                        rpc,
                        field: Box::leak(field.into_boxed_str()),
                        label: "invalid UTF-8".into(),
                        want: UNDECODABLE,
                        call: raw_call(channel.clone(), path.clone(), body, token),
                    });
                }
                // Field 1, length-delimited, claiming more bytes than follow.
                for (label, body) in [
                    ("truncated field", vec![0x0a, 0xff, 0xff, 0x03, b'x']),
                    ("invalid wire type", vec![0x0f, 0x00]),
                    ("field number 0", vec![0x02, 0x00]),
                ] {
                    cases.0.push(Case {
                        rpc,
                        field: "(message)",
                        label: label.into(),
                        want: UNDECODABLE,
                        call: raw_call(channel.clone(), path.clone(), body, token),
                    });
                }
                if backend {
                    for (label, token) in [("no token", None), ("wrong token", Some("guess"))] {
                        cases.0.push(Case {
                            rpc,
                            field: "authorization",
                            label: label.into(),
                            want: Code::Unauthenticated,
                            call: raw_call(channel.clone(), path.clone(), Vec::new(), token),
                        });
                    }
                }
            }
        }
    }
    cases
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_malformed_gets_its_code_and_changes_nothing() {
    let mut s = Servers::start().await;
    s.seed().await;
    let mut before = s.state();
    assert!(
        before.keys().any(|k| k.starts_with("mount ")),
        "the seeded mount is missing: {before:?}"
    );

    let mut all = typed_cases(&s).0;
    let typed = all.len();
    all.extend(wire_cases(&s).0);
    let mut wrong = Vec::new();
    let mut changed = Vec::new();
    let mut per_rpc: BTreeMap<&str, usize> = BTreeMap::new();
    let total = all.len();
    for case in all {
        *per_rpc.entry(case.rpc).or_default() += 1;
        let result = tokio::time::timeout(Duration::from_secs(30), case.call).await;
        let (code, message) = match result {
            Err(_) => (Code::DeadlineExceeded, "the call hung for 30 s".to_string()),
            Ok(Ok(())) => (Code::Ok, String::new()),
            Ok(Err(status)) => (status.code(), status.message().to_string()),
        };
        let what = format!("{} {} = {}", case.rpc, case.field, case.label);
        if code != case.want {
            wrong.push(format!(
                "{what}: got {code:?} ({message}), want {:?}",
                case.want
            ));
        } else if code != Code::Ok && message.trim().is_empty() {
            wrong.push(format!("{what}: {code:?} without a message"));
        } else if case.rpc.starts_with("wire ")
            && code == UNDECODABLE
            && !message.contains("failed to decode")
        {
            wrong.push(format!(
                "{what}: {code:?} but not a decode error: {message}"
            ));
        }
        let after = s.state();
        if after != before {
            let added: Vec<_> = after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(v))
                .collect();
            let removed: Vec<_> = before
                .iter()
                .filter(|(k, v)| after.get(*k) != Some(v))
                .collect();
            changed.push(format!(
                "{what} changed the export, records or mounts: now {added:?}, was {removed:?}"
            ));
            // Later cases are judged against what is there now, so that one leak does
            // not hide the rest.
            before = after;
        }
    }
    println!(
        "bad_input: {total} cases tried ({typed} typed, {} wire), over {} RPCs:",
        total - typed,
        per_rpc.len()
    );
    for (rpc, n) in &per_rpc {
        println!("  {rpc}: {n}");
    }
    for line in wrong.iter().chain(&changed) {
        println!("WRONG {line}");
    }
    assert!(
        changed.is_empty(),
        "{} of {total} cases changed state:\n{}",
        changed.len(),
        changed.join("\n")
    );
    assert!(
        wrong.is_empty(),
        "{} of {total} cases got the wrong answer:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

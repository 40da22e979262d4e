//! Calls across a failover never hang: the real CSI controller (with its caller-deadline
//! layer, on a unix socket) calls a real volume API server over loopback TCP through a
//! proxy that plays the VIP. The proxy "kills" the active the way a dead host looks from
//! the client: established connections go silent (requests still reach the server, its
//! replies are lost, no FIN or RST ever arrives), new connections are accepted and never
//! answered; then a second real server over the same export takes the VIP.
//!
//! Timing bounds are stated in terms of the configured keepalive and backoff, never as
//! absolute figures, and a control client without keepalive, deadline or retry shows
//! that the same failover hangs a call that has none of them.

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use common::credentials::{self, ClientTls, TlsFiles};
use common::endpoint::{self, Endpoint, Listener};
use common::ids::{self, ClusterId, RequestName};
use controller::backend::CallConfig;
use controller::deadline::with_caller_deadline;
use controller::params::ExportConfig;
use controller::retry::RetryPolicy;
use controller::service::ControllerService;
use proto::backend::v1 as be;
use proto::backend::v1::volumes_client::VolumesClient;
use proto::csi::v1 as csi;
use proto::csi::v1::controller_client::ControllerClient;
use proto::csi::v1::controller_server::ControllerServer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::certs::{self, Ca, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;
use volumes::store::CapacityPolicy;
use volumes::{StoreConfig, VolumeStore};

const TOKEN: &str = "failover-token";

/// Short, so the test is quick; the bounds below are derived from these.
fn call_config() -> CallConfig {
    CallConfig {
        connect_timeout: Duration::from_secs(1),
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(1),
        call_timeout: Duration::from_secs(20),
    }
}

/// The longest a retried call may take after the new active serves: the attempt in
/// flight notices its silent connection within one keepalive interval + timeout, then
/// one capped backoff, then one call on the new server (1 s is plenty for that here).
fn bound_after_new_active_serves() -> Duration {
    let c = call_config();
    c.keepalive_interval
        + c.keepalive_timeout
        + RetryPolicy::default().max_backoff
        + Duration::from_secs(1)
}

/// A volume API server on its own runtime, so that killing it closes every socket it
/// has at once, as a process's death would (tonic spawns a task per connection).
struct Backend {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
}

impl Backend {
    fn start(export: &Path, tls: &TlsFiles) -> Self {
        let server = credentials::server(tls).unwrap();
        let store = VolumeStore::open(StoreConfig {
            root: export.to_owned(),
            capacity_policy: CapacityPolicy::Thin,
            default_volume_bytes: 1 << 20,
            default_mode: 0o777,
            copy_hook: None,
        })
        .unwrap();
        // Built and started on a plain thread: a runtime cannot be blocked on from
        // inside the test's own.
        let (runtime, addr) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let addr = runtime.block_on(async {
                let listener = Listener::bind(&Endpoint::Tcp("127.0.0.1:0".into()))
                    .await
                    .unwrap();
                let Endpoint::Tcp(addr) = listener.local_endpoint() else {
                    unreachable!()
                };
                let mut server = server;
                let router =
                    server.add_service(volumes::api::service(Arc::new(store), Some(TOKEN.into())));
                tokio::spawn(endpoint::serve(router, listener, std::future::pending()));
                addr.parse::<SocketAddr>().unwrap()
            });
            (runtime, addr)
        })
        .join()
        .unwrap();
        Self {
            runtime: Some(runtime),
            addr,
        }
    }

    /// Every task and socket of this server ends now, without a goodbye.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Copy)]
enum Route {
    To(SocketAddr),
    /// Nobody serves the VIP: a new connection is closed at once (as the new active's
    /// kernel does before its volume API listens).
    Refused,
}

/// The VIP: forwards each new connection (TLS end to end) to the current server;
/// [`Vip::fail`] freezes the existing ones (requests still pass, replies are dropped, an
/// upstream close is not passed on: a dead host sends no FIN or RST) and refuses new ones
/// until [`Vip::move_to`].
struct Vip {
    addr: SocketAddr,
    route: Arc<Mutex<Route>>,
    /// One flag per forwarded connection: set, its replies are dropped.
    frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Vip {
    async fn start(to: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let route = Arc::new(Mutex::new(Route::To(to)));
        let frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let (r, f) = (route.clone(), frozen.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let route = *r.lock().unwrap();
                let flag = Arc::new(AtomicBool::new(false));
                f.lock().unwrap().push(flag.clone());
                tokio::spawn(forward(client, route, flag));
            }
        });
        Self {
            addr,
            route,
            frozen,
        }
    }

    fn fail(&self) {
        *self.route.lock().unwrap() = Route::Refused;
        for flag in self.frozen.lock().unwrap().iter() {
            flag.store(true, Ordering::SeqCst);
        }
    }

    fn move_to(&self, to: SocketAddr) {
        *self.route.lock().unwrap() = Route::To(to);
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Tcp(self.addr.to_string())
    }
}

async fn forward(client: TcpStream, route: Route, frozen: Arc<AtomicBool>) {
    let Route::To(to) = route else {
        drop(client);
        return;
    };
    let Ok(server) = TcpStream::connect(to).await else {
        let _held = client;
        std::future::pending::<()>().await;
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async {
        let mut buf = vec![0; 16 * 1024];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await
    };
    let replies = async {
        let mut buf = vec![0; 16 * 1024];
        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
            if !frozen.load(Ordering::SeqCst) && client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        // The server closed: a live VIP passes that on, a dead host says nothing.
        if frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await
        }
        let _ = client_write.shutdown().await;
        std::future::pending::<()>().await
    };
    tokio::join!(requests, replies);
}

struct Harness {
    dir: tempfile::TempDir,
    cluster: ClusterId,
    vip: Vip,
    csi: ControllerClient<Channel>,
    _stop: tokio::sync::watch::Sender<()>,
}

impl Harness {
    async fn start(first: &Backend, dir: tempfile::TempDir) -> Self {
        let vip = Vip::start(first.addr).await;
        let tls = client_tls(dir.path());
        let backend = controller::backend::connect_secured(
            &vip.endpoint(),
            Some(TOKEN),
            Some(&tls),
            &call_config(),
        )
        .unwrap();
        let cluster = ClusterId::parse("test").unwrap();
        let controller = ControllerService::new(cluster.clone(), ExportConfig::default(), backend);
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(());
        let socket = Endpoint::Unix(dir.path().join("controller.sock"));
        let listener = Listener::bind(&socket).await.unwrap();
        let router = tonic::transport::Server::builder().add_service(common::rpc_trace::traced(
            with_caller_deadline(ControllerServer::new(controller)),
        ));
        tokio::spawn(endpoint::serve(router, listener, async move {
            let _ = stop_rx.changed().await;
        }));
        let csi = ControllerClient::new(endpoint::connect_lazy(&socket).unwrap());
        Self {
            dir,
            cluster,
            vip,
            csi,
            _stop: stop_tx,
        }
    }

    fn export(&self) -> PathBuf {
        self.dir.path().join("export")
    }

    fn dir_of(&self, name: &str) -> String {
        ids::dir_name_for(&self.cluster, &RequestName::parse(name).unwrap())
    }

    /// Names under `sub` of the export.
    fn list(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(self.export().join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// How many records name this CSI request name (a volume made twice would show two).
    fn records_named(&self, kind: &str, request_name: &str) -> usize {
        let wanted = format!("\"request_name\":\"{request_name}\"");
        self.list(&format!(".hanfs/meta/{kind}"))
            .iter()
            .filter(|f| {
                std::fs::read_to_string(self.export().join(format!(".hanfs/meta/{kind}/{f}")))
                    .unwrap()
                    .replace(' ', "")
                    .contains(&wanted)
            })
            .count()
    }
}

/// The export, and a CA with a server certificate for 127.0.0.1 (the VIP here) and a
/// client certificate, as `server-tls/` and `client-tls/` (production runs the volume
/// API over TCP only with mutual TLS).
fn new_export() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("export")).unwrap();
    let ca = Ca::new("failover-test-ca").unwrap();
    let server = ca.server(&["127.0.0.1"]).unwrap();
    let client = ca.client("controller", Validity::Current).unwrap();
    certs::write_dir(&dir.path().join("server-tls"), &ca.cert_pem, &server).unwrap();
    certs::write_dir(&dir.path().join("client-tls"), &ca.cert_pem, &client).unwrap();
    dir
}

fn server_tls(dir: &Path) -> TlsFiles {
    TlsFiles::in_dir(&dir.join("server-tls"))
}

fn client_tls(dir: &Path) -> ClientTls {
    ClientTls::load(&TlsFiles::in_dir(&dir.join("client-tls")), None).unwrap()
}

fn create_request(name: &str, timeout: Duration) -> tonic::Request<csi::CreateVolumeRequest> {
    let mut request = tonic::Request::new(csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 1 << 20,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![csi::VolumeCapability {
            access_type: Some(csi::volume_capability::AccessType::Mount(
                csi::volume_capability::MountVolume::default(),
            )),
            access_mode: Some(csi::volume_capability::AccessMode {
                mode: csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
            }),
        }],
        ..Default::default()
    });
    // What csi-provisioner's --timeout does.
    request.set_timeout(timeout);
    request
}

fn timed<T>(mut request: tonic::Request<T>, timeout: Duration) -> tonic::Request<T> {
    request.set_timeout(timeout);
    request
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_issued_while_the_active_is_dead_finish_once_the_new_active_serves() {
    let dir = new_export();
    let export = dir.path().join("export");
    let mut first = Backend::start(&export, &server_tls(dir.path()));
    let mut h = Harness::start(&first, dir).await;
    let caller_timeout = Duration::from_secs(60);

    // Before the failure: the connection to the first server is up and in use.
    let warm = h
        .csi
        .create_volume(create_request("pvc-warm", caller_timeout))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let doomed = h
        .csi
        .create_volume(create_request("pvc-doomed", caller_timeout))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    // The control: the same backend API with none of keepalive, deadline or retry.
    let control_channel = credentials::connect_lazy(
        &h.vip.endpoint(),
        Some(&client_tls(h.dir.path())),
        "control",
    )
    .unwrap();
    let mut control = VolumesClient::new(control_channel);
    let control_request = |dir: &str| {
        let mut r = tonic::Request::new(be::CreateVolumeRequest {
            dir: dir.into(),
            request_name: dir.into(),
            required_bytes: 1 << 20,
            ..Default::default()
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        r
    };
    control
        .create_volume(control_request("control-warm"))
        .await
        .unwrap();

    // The active dies: what it already holds it may still carry out, but nothing it
    // says reaches the client again.
    h.vip.fail();
    let issued = Instant::now();
    let during = {
        let mut csi = h.csi.clone();
        tokio::spawn(async move {
            csi.create_volume(create_request("pvc-during", caller_timeout))
                .await
        })
    };
    let snapshot = {
        let mut csi = h.csi.clone();
        let source = warm.volume_id.clone();
        tokio::spawn(async move {
            let request = csi::CreateSnapshotRequest {
                name: "snap-during".into(),
                source_volume_id: source,
                ..Default::default()
            };
            csi.create_snapshot(timed(tonic::Request::new(request), caller_timeout))
                .await
        })
    };
    let delete = {
        let mut csi = h.csi.clone();
        let id = doomed.volume_id.clone();
        tokio::spawn(async move {
            let request = csi::DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            };
            csi.delete_volume(timed(tonic::Request::new(request), caller_timeout))
                .await
        })
    };
    let control_call = tokio::spawn(async move {
        control
            .create_volume(control_request("control-during"))
            .await
    });

    // The dying server carried the create out (its reply is lost): the retry on the new
    // active must find it, not make a second one.
    let during_dir = export.join("volumes").join(h.dir_of("pvc-during"));
    until(
        "the first server creates pvc-during",
        Duration::from_secs(10),
        || during_dir.exists(),
    )
    .await;
    first.kill();
    // A while with nobody serving: the controller keeps trying into the silence.
    tokio::time::sleep(call_config().keepalive_interval * 2).await;
    assert!(!during.is_finished(), "answered while no server was up?");

    let second = Backend::start(&export, &server_tls(h.dir.path()));
    h.vip.move_to(second.addr);
    let serving = Instant::now();

    let during = during
        .await
        .unwrap()
        .expect("CreateVolume across the failover");
    let during_took = serving.elapsed();
    let snapshot = snapshot
        .await
        .unwrap()
        .expect("CreateSnapshot across the failover");
    delete
        .await
        .unwrap()
        .expect("DeleteVolume across the failover");
    let all_took = serving.elapsed();
    let bound = bound_after_new_active_serves();
    println!(
        "new active serving {:?} after the calls were issued; create answered {during_took:?} \
         after that, all three {all_took:?} (bound {bound:?})",
        serving - issued
    );
    assert!(
        all_took <= bound,
        "calls took {all_took:?} after the new active served, more than {bound:?}"
    );

    // Each name exists once, nothing half-made is left, the deleted one is gone.
    let volume = during.into_inner().volume.unwrap();
    assert_eq!(
        volume.volume_id,
        format!("v1/test/{}", h.dir_of("pvc-during"))
    );
    assert_eq!(h.records_named("volumes", "pvc-during"), 1);
    assert_eq!(h.records_named("snapshots", "snap-during"), 1);
    assert_eq!(h.records_named("volumes", "pvc-doomed"), 0);
    let snapshot = snapshot.into_inner().snapshot.unwrap();
    assert_eq!(snapshot.source_volume_id, warm.volume_id);
    let volumes = h.list("volumes");
    assert!(
        !volumes.contains(&h.dir_of("pvc-doomed")),
        "deleted volume still there: {volumes:?}"
    );
    assert!(volumes.contains(&h.dir_of("pvc-warm")), "{volumes:?}");
    assert_eq!(h.list(".hanfs/tmp"), Vec::<String>::new());
    let listed = h
        .csi
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = listed
        .entries
        .iter()
        .map(|e| e.volume.as_ref().unwrap().volume_id.as_str())
        .collect();
    assert_eq!(
        ids.iter().filter(|id| **id == volume.volume_id).count(),
        1,
        "{ids:?}"
    );

    // Without keepalive, deadline and retry the same call is still waiting on the dead
    // server's silent connection, well past the bound the controller met.
    tokio::time::sleep(bound.saturating_sub(serving.elapsed()) + bound).await;
    assert!(
        !control_call.is_finished(),
        "the control call finished: the failover did not leave a silent connection"
    );
    control_call.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_answers_within_the_callers_deadline_not_the_controllers() {
    let dir = new_export();
    let export = dir.path().join("export");
    let first = Backend::start(&export, &server_tls(dir.path()));
    let mut h = Harness::start(&first, dir).await;
    h.csi
        .create_volume(create_request("pvc-warm", Duration::from_secs(60)))
        .await
        .unwrap();
    h.vip.fail();

    // The sidecar gives the call 3 s; the controller's own per-call bound is 20 s and
    // its budget without a deadline 120 s: the caller's must win.
    let caller_timeout = Duration::from_secs(3);
    let started = Instant::now();
    let err = h
        .csi
        .create_volume(create_request("pvc-never", caller_timeout))
        .await
        .unwrap_err();
    let took = started.elapsed();
    println!(
        "dead backend: {:?} after {took:?}: {}",
        err.code(),
        err.message()
    );
    assert!(
        took <= caller_timeout + Duration::from_secs(1),
        "took {took:?} with a {caller_timeout:?} deadline"
    );
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Unavailable
        ),
        "{err:?}"
    );
    // It kept retrying while the deadline allowed, not giving up at the first refusal.
    assert!(
        took >= caller_timeout / 2,
        "gave up after {took:?} of a {caller_timeout:?} deadline"
    );
}

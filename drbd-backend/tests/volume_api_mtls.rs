//! The volume API over real mutual TLS on loopback TCP, served the way `hanfs-backend`
//! serves it (`servers::volume_api_server` + the volume service over a real export
//! directory): every client that lacks a certificate from the configured CA is refused
//! before any call runs, with a message that says what to fix, and nothing changes on
//! disk; the good client works. Also: the client refuses a server whose certificate does
//! not name the address dialled, and the binaries refuse to start with bad credentials.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failure by design

use common::credentials::{self, ClientTls, TlsFiles};
use common::endpoint::{self, Endpoint, Listener};
use proto::backend::v1 as pb;
use proto::backend::v1::volumes_client::VolumesClient;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use testkit::certs::{self, Ca, Validity};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint as TonicEndpoint};
use volumes::store::CapacityPolicy;
use volumes::{StoreConfig, VolumeStore};

const TOKEN: &str = "s3cret-token";
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Every path under `root` with its kind and size: what "no change on disk" compares.
fn tree(root: &Path) -> Vec<(PathBuf, bool, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.push((
                path,
                meta.is_dir(),
                if meta.is_dir() { 0 } else { meta.len() },
            ));
        }
    }
    out.sort();
    out
}

struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("hanfs test CA").unwrap();
        Self { dir, ca }
    }

    /// Writes `own` with `peer_ca` into a directory named `name` and returns its files.
    fn files(&self, name: &str, peer_ca: &str, own: &certs::Issued) -> TlsFiles {
        let dir = self.dir.path().join(name);
        certs::write_dir(&dir, peer_ca, own).unwrap();
        TlsFiles::in_dir(&dir)
    }
}

/// A running volume API over mutual TLS on 127.0.0.1; stops when dropped.
struct Server {
    addr: String,
    export: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

async fn serve(files: &TlsFiles) -> Server {
    let export = tempfile::tempdir().unwrap();
    let root = export.path().to_owned();
    let store = tokio::task::spawn_blocking(move || {
        VolumeStore::open(StoreConfig {
            root,
            capacity_policy: CapacityPolicy::Thin,
            default_volume_bytes: 1 << 20,
            default_mode: 0o777,
            copy_hook: None,
        })
    })
    .await
    .unwrap()
    .unwrap();
    let endpoint = Endpoint::Tcp("127.0.0.1:0".into());
    let mut server = drbd_backend::servers::volume_api_server(&endpoint, Some(files)).unwrap();
    let router = server.add_service(volumes::api::service(Arc::new(store), Some(TOKEN.into())));
    let listener = Listener::bind(&endpoint).await.unwrap();
    let Endpoint::Tcp(addr) = listener.local_endpoint() else {
        unreachable!("bound TCP")
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        endpoint::serve(router, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Server {
        addr,
        export,
        stop: Some(stop),
        task,
    }
}

type Client = VolumesClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>,
    >,
>;

fn with_token(channel: Channel, token: Option<&'static str>) -> Client {
    VolumesClient::with_interceptor(
        channel,
        Box::new(move |mut request: tonic::Request<()>| {
            if let Some(token) = token {
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            Ok(request)
        }),
    )
}

/// A raw tonic TLS channel, for the clients `ClientTls` would never build.
fn raw_tls(addr: &str, config: ClientTlsConfig) -> Channel {
    TonicEndpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(config)
        .unwrap()
        .connect_lazy()
}

async fn create(client: &mut Client, dir: &str) -> Result<pb::Volume, tonic::Status> {
    let request = pb::CreateVolumeRequest {
        dir: dir.into(),
        request_name: dir.into(),
        required_bytes: 1 << 20,
        ..Default::default()
    };
    match tokio::time::timeout(CALL_TIMEOUT, client.create_volume(request)).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => panic!("the call to create {dir} hung for {CALL_TIMEOUT:?}"),
    }
}

#[tokio::test]
async fn clients_without_a_certificate_from_the_ca_are_refused_and_nothing_changes() {
    let pki = Pki::new();
    let other_ca = Ca::new("some other CA").unwrap();
    let server_files = pki.files(
        "server",
        &pki.ca.cert_pem,
        &pki.ca.server(&["127.0.0.1", "backend.test"]).unwrap(),
    );
    let server = serve(&server_files).await;
    let addr = server.addr.clone();
    let good_files = pki.files(
        "controller",
        &pki.ca.cert_pem,
        &pki.ca
            .client("hanfs-controller", Validity::Current)
            .unwrap(),
    );
    let foreign_files = pki.files(
        "foreign",
        &pki.ca.cert_pem,
        &other_ca
            .client("hanfs-controller", Validity::Current)
            .unwrap(),
    );
    let expired_files = pki.files(
        "expired",
        &pki.ca.cert_pem,
        &pki.ca
            .client("hanfs-controller", Validity::Expired)
            .unwrap(),
    );
    let tcp = Endpoint::Tcp(addr.clone());
    let channel = |files: &TlsFiles| {
        credentials::connect_lazy(
            &tcp,
            Some(&ClientTls::load(files, None).unwrap()),
            "the backend",
        )
        .unwrap()
    };
    let trusts_server_only =
        || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca.cert_pem));

    let before = tree(server.export.path());
    // (case, client, what the message must point at)
    let refused: Vec<(&str, Client, &[&str])> = vec![
        (
            "a client certificate from another CA",
            with_token(channel(&foreign_files), Some(TOKEN)),
            &["certificate"],
        ),
        (
            "an expired client certificate",
            with_token(channel(&expired_files), Some(TOKEN)),
            &["expired"],
        ),
        (
            "no client certificate at all",
            with_token(raw_tls(&addr, trusts_server_only()), None),
            &["certificate"],
        ),
        (
            "the right token but no certificate",
            with_token(raw_tls(&addr, trusts_server_only()), Some(TOKEN)),
            &["certificate"],
        ),
        (
            "the right token over plaintext",
            with_token(
                TonicEndpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect_timeout(Duration::from_secs(5))
                    .connect_lazy(),
                Some(TOKEN),
            ),
            &[],
        ),
        (
            "a good certificate but no token",
            with_token(channel(&good_files), None),
            &["authorization"],
        ),
        (
            "a good certificate but the wrong token",
            with_token(channel(&good_files), Some("guessed")),
            &["wrong backend token"],
        ),
    ];
    let cases = refused.len();
    for (i, (case, mut client, hints)) in refused.into_iter().enumerate() {
        let status = create(&mut client, &format!("victim-{i}"))
            .await
            .expect_err(case);
        let explained = credentials::explain(&status);
        println!("refused: {case}: {:?}: {explained}", status.code());
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::Unavailable | tonic::Code::Unknown
            ),
            "{case}: {:?} {explained}",
            status.code()
        );
        for hint in hints.iter() {
            assert!(
                explained.to_ascii_lowercase().contains(hint),
                "{case}: the message should mention {hint:?}: {explained}"
            );
        }
        assert_eq!(
            tree(server.export.path()),
            before,
            "{case}: the export changed"
        );
    }
    println!("refused-client cases: {cases} of {cases} refused, export unchanged");

    let mut good = with_token(channel(&good_files), Some(TOKEN));
    create(&mut good, "wanted")
        .await
        .expect("the good client works");
    assert!(server.export.path().join("volumes/wanted").is_dir());
}

#[tokio::test]
async fn a_client_refuses_a_server_whose_certificate_does_not_name_the_address() {
    let pki = Pki::new();
    // Names the VIP, but the client dials 127.0.0.1.
    let server_files = pki.files(
        "server",
        &pki.ca.cert_pem,
        &pki.ca.server(&["10.80.0.100"]).unwrap(),
    );
    let server = serve(&server_files).await;
    let client_files = pki.files(
        "client",
        &pki.ca.cert_pem,
        &pki.ca.client("hanfsctl", Validity::Current).unwrap(),
    );
    let tcp = Endpoint::Tcp(server.addr.clone());
    let before = tree(server.export.path());
    let channel = credentials::connect_lazy(
        &tcp,
        Some(&ClientTls::load(&client_files, None).unwrap()),
        "the backend",
    )
    .unwrap();
    let status = create(&mut with_token(channel, Some(TOKEN)), "v")
        .await
        .expect_err("the server's certificate names another address");
    let explained = credentials::explain(&status);
    println!("refused server: {:?}: {explained}", status.code());
    assert!(
        explained.contains("subject alternative names"),
        "{explained}"
    );
    assert_eq!(tree(server.export.path()), before);

    // With the name the certificate carries (e.g. the VIP reached through a tunnel), it
    // works.
    let channel = credentials::connect_lazy(
        &tcp,
        Some(&ClientTls::load(&client_files, Some("10.80.0.100")).unwrap()),
        "the backend",
    )
    .unwrap();
    create(&mut with_token(channel, Some(TOKEN)), "v")
        .await
        .expect("the certificate names 10.80.0.100");
}

#[test]
fn the_server_refuses_to_start_with_bad_credentials() {
    let pki = Pki::new();
    let good = pki.files(
        "server",
        &pki.ca.cert_pem,
        &pki.ca.server(&["127.0.0.1"]).unwrap(),
    );
    let tcp = Endpoint::Tcp("127.0.0.1:0".into());
    let unix = Endpoint::Unix(pki.dir.path().join("b.sock"));
    let err = |endpoint: &Endpoint, files: Option<&TlsFiles>| {
        drbd_backend::servers::volume_api_server(endpoint, files)
            .expect_err("refused")
            .to_string()
    };
    assert!(err(&tcp, None).contains("no TLS files"));
    assert!(err(&unix, Some(&good)).contains("unix socket"));
    // A key that belongs to another certificate.
    let other = pki.ca.server(&["127.0.0.1"]).unwrap();
    std::fs::write(&good.key, other.key_pem).unwrap();
    let e = err(&tcp, Some(&good));
    assert!(e.contains("setting up TLS"), "{e}");
    // An empty CA file.
    std::fs::write(&good.ca, "").unwrap();
    let e = err(&tcp, Some(&good));
    assert!(
        e.contains("ca.crt") && e.contains("no PEM certificate"),
        "{e}"
    );
}

/// The binary's own start-up: an empty token file or TCP without TLS stop it before it
/// touches the export, with a message naming what to fix.
#[test]
fn hanfs_backend_refuses_an_empty_token_file_and_plaintext_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    std::fs::create_dir(&export).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "\n").unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hanfs-backend"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let socket = format!("unix://{}/b.sock", dir.path().display());
    let stderr = run(&[
        "--export-root",
        export.to_str().unwrap(),
        "--listen",
        &socket,
        "--auth-token-file",
        token.to_str().unwrap(),
    ]);
    assert!(stderr.contains("is empty"), "{stderr}");
    let stderr = run(&[
        "--export-root",
        export.to_str().unwrap(),
        "--listen",
        "tcp://127.0.0.1:0",
    ]);
    assert!(stderr.contains("mutual TLS"), "{stderr}");
    let stderr = run(&[
        "--export-root",
        export.to_str().unwrap(),
        "--listen",
        "tcp://127.0.0.1:0",
        "--tls-ca",
        "/nonexistent/ca.crt",
    ]);
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&export).unwrap().count(),
        0,
        "nothing was created in the export"
    );
}

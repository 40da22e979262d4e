//! The CSI trace layer on a real tonic server over a unix socket: each call is logged
//! once with its method, code and duration, the request is in the call's span (also on
//! the handler's own lines), and no secret reaches the log.

// Test helpers, not only #[test] fns, panic on unexpected failures.
#![allow(clippy::unwrap_used)]

use common::endpoint::{self, Endpoint, Listener};
use common::identity::{IdentityService, ReadinessCheck};
use common::rpc_trace::traced;
use proto::csi::v1::controller_client::ControllerClient;
use proto::csi::v1::controller_server::{Controller, ControllerServer};
use proto::csi::v1::identity_client::IdentityClient;
use proto::csi::v1::identity_server::IdentityServer;
use proto::csi::v1::{
    CreateVolumeRequest, CreateVolumeResponse, DeleteVolumeRequest, ProbeRequest, Volume,
};
use std::io::Write;
use std::sync::{Arc, Mutex};
use tonic::{Code, Request, Response, Status};

const SECRET: &str = "hunter2-in-the-secrets";

/// CreateVolume answers by name; every other Controller method is the generated
/// UNIMPLEMENTED stub.
struct Stub;

#[tonic::async_trait]
impl Controller for Stub {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        tracing::info!("inside the handler");
        let name = request.into_inner().name;
        if name == "pvc-dup" {
            return Err(Status::already_exists("pvc-dup exists with another size"));
        }
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(Volume {
                volume_id: format!("v1/test/{name}"),
                ..Default::default()
            }),
        }))
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// One thread: the server's tasks run where the thread-local subscriber is installed.
#[tokio::test(flavor = "current_thread")]
async fn each_call_is_logged_once_with_code_duration_and_redacted_request() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let endpoint = Endpoint::Unix(dir.path().join("csi.sock"));
    let listener = Listener::bind(&endpoint).await.unwrap();
    let not_ready: ReadinessCheck = Arc::new(|| Box::pin(async { Err("disk gone".to_owned()) }));
    let router = tonic::transport::Server::builder()
        .add_service(traced(IdentityServer::new(IdentityService::new(
            "hanfs.csi.io".into(),
            not_ready,
        ))))
        .add_service(traced(ControllerServer::new(Stub)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(endpoint::serve(router, listener, async {
        let _ = stopped.await;
    }));
    let channel = endpoint::connect_lazy(&endpoint).unwrap();
    let mut controller = ControllerClient::new(channel.clone());
    let mut identity = IdentityClient::new(channel);

    let create = |name: &str| CreateVolumeRequest {
        name: name.into(),
        secrets: [("password".to_string(), SECRET.to_string())].into(),
        ..Default::default()
    };
    controller.create_volume(create("pvc-ok")).await.unwrap();
    let dup = controller
        .create_volume(create("pvc-dup"))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let unimplemented = controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: "v1/test/pvc-gone".into(),
            secrets: [("password".to_string(), SECRET.to_string())].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unimplemented.code(), Code::Unimplemented);
    let probe = identity.probe(ProbeRequest {}).await.unwrap_err();
    assert_eq!(probe.code(), Code::FailedPrecondition);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    let log = captured.text();
    println!("{log}");
    let lines: Vec<&str> = log.lines().collect();
    let done: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("CSI call"))
        .collect();
    assert_eq!(done.len(), 4, "one line per call: {done:#?}");
    let line_of = |needle: &str| {
        let found: Vec<_> = done.iter().filter(|l| l.contains(needle)).collect();
        assert_eq!(found.len(), 1, "{needle}: {done:#?}");
        *found[0]
    };

    let ok = line_of("name: \"pvc-ok\"");
    assert!(ok.contains(" INFO "), "{ok}");
    assert!(ok.contains("method=CreateVolume"), "{ok}");
    assert!(ok.contains("code=Ok"), "{ok}");
    assert!(ok.contains("duration="), "{ok}");

    let failed = line_of("name: \"pvc-dup\"");
    assert!(failed.contains(" WARN "), "{failed}");
    assert!(failed.contains("code=AlreadyExists"), "{failed}");
    assert!(
        failed.contains("pvc-dup exists with another size"),
        "{failed}"
    );

    let delete = line_of("method=DeleteVolume");
    assert!(delete.contains("code=Unimplemented"), "{delete}");
    assert!(delete.contains("v1/test/pvc-gone"), "{delete}");

    let probe = line_of("method=Probe");
    assert!(probe.contains("code=FailedPrecondition"), "{probe}");

    // The handler's own line sits in the call's span, request included.
    let inside: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("inside the handler"))
        .collect();
    assert_eq!(inside.len(), 2, "{log}");
    assert!(inside[0].contains("method=CreateVolume"), "{}", inside[0]);
    assert!(inside[0].contains("pvc-ok"), "{}", inside[0]);

    assert!(!log.contains(SECRET), "a secret reached the log:\n{log}");
    assert!(
        !log.contains("password"),
        "a secret's key reached the log:\n{log}"
    );
}

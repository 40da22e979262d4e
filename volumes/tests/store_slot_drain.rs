//! A stand-down closes the volume API's store slot before it unmounts: the real gRPC
//! server on a unix socket, a real store on a temp directory, and a clone held in the
//! middle of its copy. Closing refuses new calls at once, waits for the clone, and
//! reports (instead of returning) when the clone outlives the bound — the case that
//! used to become a lazy unmount reported as success.

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use common::endpoint::{self, Endpoint, Listener};
use proto::backend::v1 as pb;
use proto::backend::v1::volumes_client::VolumesClient;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use volumes::api::{self, StillInFlight, StoreSlot};
use volumes::copy::CopyHook;
use volumes::store::CapacityPolicy;
use volumes::{StoreConfig, VolumeStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_slot_refuses_new_calls_and_waits_for_a_clone_in_flight() {
    let root = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    // The copy stops at its first file until the test lets it go (bounded: 20 s).
    let (reached_tx, reached_rx) = mpsc::channel::<()>();
    let (resume_tx, resume_rx) = mpsc::channel::<()>();
    let (reached_tx, resume_rx) = (Mutex::new(reached_tx), Mutex::new(resume_rx));
    let hook: CopyHook = Arc::new(move |_path| {
        let _ = reached_tx.lock().unwrap().send(());
        let _ = resume_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(20));
    });
    let store = VolumeStore::open(StoreConfig {
        root: root.path().to_owned(),
        capacity_policy: CapacityPolicy::Thin,
        default_volume_bytes: 1 << 20,
        default_mode: 0o777,
        copy_hook: Some(hook),
    })
    .unwrap();
    let slot = Arc::new(StoreSlot::with(Arc::new(store)));
    let socket = Endpoint::Unix(sockets.path().join("volumes.sock"));
    let listener = Listener::bind(&socket).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router =
        tonic::transport::Server::builder().add_service(api::service_for_slot(slot.clone(), None));
    let server = tokio::spawn(endpoint::serve(router, listener, async {
        let _ = stop_rx.await;
    }));
    let mut client = VolumesClient::new(endpoint::connect_lazy(&socket).unwrap());

    client
        .create_volume(pb::CreateVolumeRequest {
            dir: "pvc-src".into(),
            request_name: "pvc-src".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    std::fs::write(root.path().join("volumes/pvc-src/f"), b"data").unwrap();

    let clone = tokio::spawn({
        let mut client = client.clone();
        async move {
            client
                .create_volume(pb::CreateVolumeRequest {
                    dir: "pvc-clone".into(),
                    request_name: "pvc-clone".into(),
                    source: Some(pb::create_volume_request::Source::SourceVolume(
                        "pvc-src".into(),
                    )),
                    ..Default::default()
                })
                .await
        }
    });
    tokio::task::spawn_blocking(move || reached_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the clone started copying");
    assert_eq!(slot.in_flight(), 1);

    // The bound passes while the clone copies: reported, not swallowed.
    let started = std::time::Instant::now();
    let busy = slot.close(Duration::from_millis(300)).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
    assert_eq!(
        busy,
        StillInFlight {
            calls: 1,
            waited: Duration::from_millis(300)
        }
    );
    // Closed to new calls meanwhile.
    let refused = client
        .get_capacity(pb::GetCapacityRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    assert!(!clone.is_finished(), "the clone still runs");

    // The clone finishes while a second close waits: that close returns once it has.
    let closing = tokio::spawn({
        let slot = slot.clone();
        async move { slot.close(Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!closing.is_finished(), "the close waits for the clone");
    resume_tx.send(()).unwrap();
    closing.await.unwrap().unwrap();
    let cloned = clone.await.unwrap().unwrap().into_inner();
    assert_eq!(cloned.dir, "pvc-clone");
    assert_eq!(slot.in_flight(), 0);
    assert_eq!(
        std::fs::read(root.path().join("volumes/pvc-clone/f")).unwrap(),
        b"data",
        "the copy completed before the close returned"
    );
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

//! The harness itself, end to end: a private topology, a real kube-apiserver + etcd in its
//! core namespace, a Lease written from the core and read from a member, a partition of
//! that member, and nothing left behind afterwards.
//!
//! Needs root, `ip`, `curl`, `openssl`; builds kube-apiserver + etcd on first use
//! (e2e/kube/build.sh, minutes once, then cached outside the repo).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::kube::{self, KubeApiServer};
use testkit::netns::{self, Topology};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

/// Alive and not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Pids of processes running a binary from `dir`.
fn processes_from(dir: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(exe) = std::fs::read_link(entry.path().join("exe"))
            && exe.starts_with(dir)
            && running(pid)
        {
            found.push(pid);
        }
    }
    found
}

#[test]
fn lease_across_namespaces_partition_and_clean_teardown() {
    let topo = Topology::new(2).expect("topology");
    let work = tempfile::tempdir().expect("workdir");
    let api = KubeApiServer::start(topo.core_ns(), topo.core_ip(), work.path()).expect("start");
    eprintln!(
        "kube-apiserver ready in {:?} at {} (core {}, members {} {})",
        api.startup_time(),
        api.server_url(),
        topo.core_ns(),
        topo.member_ip(0),
        topo.member_ip(1),
    );

    // The kubeconfig names the bridge address, the CA and the token.
    let kubeconfig = std::fs::read_to_string(api.kubeconfig()).unwrap();
    assert!(kubeconfig.contains(&format!("server: https://{}:6443", topo.core_ip())));
    assert!(kubeconfig.contains(api.token()));
    assert!(kubeconfig.contains("certificate-authority-data: "));

    // Create a Lease from the core namespace.
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "hanfs-harness"},
        "spec": {"holderIdentity": "member-0", "leaseDurationSeconds": 15},
    })
    .to_string();
    let (status, body) = api.curl("POST", LEASES, Some(&lease)).unwrap();
    assert_eq!(status, 201, "{body}");

    // Read it back from a member namespace, over the bridge, verifying the serving cert.
    let member = topo.member_ns(0);
    let get = |timeout| {
        api.curl_in(
            member,
            "GET",
            &format!("{LEASES}/hanfs-harness"),
            None,
            timeout,
        )
    };
    let (status, body) = get(Duration::from_secs(10)).unwrap();
    assert_eq!(status, 200, "{body}");
    let got: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["spec"]["holderIdentity"], "member-0");

    // Partition member 0: its request now times out, within the bound we gave it.
    topo.cut(0).unwrap();
    let t = Instant::now();
    let err = get(Duration::from_secs(2)).expect_err("request across a cut link succeeded");
    assert!(matches!(err, kube::Error::Curl { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    // ...while member 1 still gets through.
    let (status, _) = api
        .curl_in(
            topo.member_ns(1),
            "GET",
            LEASES,
            None,
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(status, 200);

    // Heal: member 0 works again at once.
    topo.heal(0).unwrap();
    let (status, body) = get(Duration::from_secs(10)).unwrap();
    assert_eq!(status, 200, "{body}");

    // Teardown leaves no process and no namespace behind.
    let bin = kube::binaries().unwrap();
    let pids = [api.etcd_pid(), api.apiserver_pid()];
    assert!(pids.iter().all(|&p| running(p)));
    let names = topo.namespaces();
    let t = Instant::now();
    api.stop().expect("clean stop");
    eprintln!("stopped kube-apiserver + etcd in {:?}", t.elapsed());
    for p in pids {
        assert!(!running(p), "pid {p} survived");
    }
    topo.destroy().unwrap();
    let left = netns::list().unwrap();
    for n in &names {
        assert!(!left.contains(n), "{n} survived: {left:?}");
    }
    assert_eq!(processes_from(&bin), Vec::<u32>::new());
}

#[test]
fn topology_layout_run_in_and_drop() {
    let topo = Topology::new(3).unwrap();
    assert_eq!(topo.members(), 3);
    let core = topo.core_ip().octets();
    assert_eq!((core[0], core[1], core[3]), (10, 77, 1));
    for i in 0..3 {
        let ip = topo.member_ip(i).octets();
        assert_eq!(ip[..3], core[..3]);
        assert_eq!(usize::from(ip[3]), 11 + i);
        let out = topo
            .run_in(
                topo.member_ns(i),
                Command::new("ip").args(["-4", "-o", "addr", "show", "dev", "eth0"]),
                Duration::from_secs(10),
            )
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("{}/24", topo.member_ip(i))),
            "{text}"
        );
    }
    assert!(topo.cut(3).is_err());

    // A process left inside a namespace dies with it.
    let mut sleeper = topo.command_in(topo.member_ns(2), Command::new("sleep").arg("300"));
    let mut child = sleeper.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while netns::pids(topo.member_ns(2)).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "sleep did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let names = topo.namespaces();
    drop(topo);
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "process in a dropped namespace survived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = netns::list().unwrap();
    assert!(names.iter().all(|n| !left.contains(n)), "{left:?}");
}

//! The VM harness end to end: three Debian VMs (two storage VMs with data disks, a client)
//! on a private bridge; their kernels have DRBD 8.4 and nfsd; they reach each other and a
//! host-side process in the cluster namespace; a hard-killed VM restarts with its data disk
//! intact; and nothing is left behind.
//!
//! Needs root, qemu-system-x86, debootstrap, e2fsprogs, iputils-ping; builds the guest image
//! on first use (e2e/vm/build-image.sh, ~2.5 min once, then cached outside the repo).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::vm::{Cluster, ClusterSpec, Error, VmSpec};

const T: Duration = Duration::from_secs(60);

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            found.push(pid);
        }
    }
    found
}

/// qemu processes that are not zombies.
fn live_qemus() -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(entry.path().join("stat"))
            && stat.contains("(qemu-system")
            && !stat.contains(") Z ")
        {
            found.push(pid);
        }
    }
    found
}

#[test]
fn three_vms_boot_talk_and_survive_a_hard_kill() {
    let host_dir = tempfile::tempdir().expect("host dir");
    fs::write(
        host_dir.path().join("hello"),
        "#!/bin/sh\necho hello from the host\n",
    )
    .unwrap();
    fs::set_permissions(
        host_dir.path().join("hello"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    let spec = ClusterSpec::new(vec![
        VmSpec::new("storage-a", "10.80.0.11".parse().unwrap()).with_data_disk(512),
        VmSpec::new("storage-b", "10.80.0.12".parse().unwrap()).with_data_disk(512),
        VmSpec::new("client", "10.80.0.21".parse().unwrap()),
    ])
    .with_host_dir(host_dir.path());
    let cluster = Cluster::start(spec).expect("cluster");
    let ns = cluster.netns().to_owned();
    let workdir = cluster.workdir().to_string_lossy().into_owned();
    eprintln!(
        "3 VMs booted in {:?} (namespace {ns}, bridge {}, image {})",
        cluster.boot_time(),
        cluster.bridge_ip(),
        cluster.image_dir().display()
    );

    // Every guest: its name, the Debian 6.1 kernel, DRBD 8.4, nfsd, the host's folder.
    for vm in cluster.vms() {
        let t = Instant::now();
        let out = vm
            .run(
                "uname -n; uname -r; modprobe drbd && cat /proc/drbd; modprobe nfsd && \
                 grep -w nfsd /proc/modules | cut -d' ' -f1; hello",
                T,
            )
            .expect("probe");
        eprintln!("{}: probe in {:?}:\n{out}", vm.name(), t.elapsed());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], vm.name());
        assert!(
            lines[1].starts_with("6.1.") && lines[1].ends_with("-amd64"),
            "kernel {}",
            lines[1]
        );
        assert!(lines[2].starts_with("version: 8.4."), "{out}");
        assert!(lines.contains(&"nfsd"), "{out}");
        assert_eq!(lines.last(), Some(&"hello from the host"));
        // The host folder is read-only in the guest.
        let w = vm.exec("touch /hanfs/bin/x", T).unwrap();
        assert_ne!(w.rc, 0, "host folder writable from {}", vm.name());
    }

    // Mailbox latency, exit codes, stderr, the guest-side timeout.
    let a = cluster.vm("storage-a");
    let mut lat: Vec<Duration> = (0..10)
        .map(|_| a.exec("true", T).expect("true").elapsed)
        .collect();
    lat.sort();
    eprintln!(
        "mailbox round trip (10 x `true`): min {:?}, median {:?}, max {:?}",
        lat[0], lat[5], lat[9]
    );
    let r = a.exec("echo out; echo err >&2; exit 3", T).unwrap();
    assert_eq!(
        (r.rc, r.stdout.as_str(), r.stderr.as_str()),
        (3, "out\n", "err\n")
    );
    let t = Instant::now();
    match a.exec("echo started; sleep 60", Duration::from_secs(2)) {
        Err(Error::ExecTimeout { stdout, .. }) => assert_eq!(stdout, "started\n"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // Guest to guest over the bridge, by address and by name.
    a.run("ping -c1 -W5 10.80.0.21 && ping -c1 -W5 client", T)
        .expect("storage-a pings client");
    // A host-side process in the cluster namespace reaches a guest (and nothing outside
    // that namespace has the route).
    let out = cluster
        .run_in(
            Command::new("ping").args(["-c1", "-W5", "10.80.0.21"]),
            Duration::from_secs(15),
        )
        .expect("ping from the namespace");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 received"));
    cluster
        .vm("client")
        .run(&format!("ping -c1 -W5 {}", cluster.bridge_ip()), T)
        .expect("client pings the bridge");

    // Hard kill + restart: the data disk persists, the root overlay does not.
    let b = cluster.vm("storage-b");
    let token = format!("token-{}", std::process::id());
    b.run(
        &format!(
            "set -e; mkfs.ext4 -q -F /dev/vdb; mkdir -p /mnt/d; mount /dev/vdb /mnt/d; \
             echo {token} > /mnt/d/file; sync; echo scratch > /root/marker"
        ),
        T,
    )
    .expect("write the data disk");
    let t = Instant::now();
    b.kill().expect("kill");
    eprintln!("storage-b killed in {:?}", t.elapsed());
    assert!(!b.is_running());
    assert!(matches!(b.exec("true", T), Err(Error::NotRunning { .. })));
    let boot = b.restart().expect("restart");
    eprintln!("storage-b restarted in {boot:?}");
    let out = b
        .run(
            "mkdir -p /mnt/d; mount /dev/vdb /mnt/d; cat /mnt/d/file; \
             test -e /root/marker && echo marker survived || echo fresh root",
            T,
        )
        .expect("read back");
    assert_eq!(out, format!("{token}\nfresh root\n"));
    // The others did not notice.
    cluster
        .vm("client")
        .run("true", T)
        .expect("client still up");

    // Teardown: no qemu, no namespace, no work folder.
    cluster.destroy().expect("destroy");
    let left = processes_mentioning(&workdir);
    assert!(left.is_empty(), "processes left: {left:?}");
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&ns),
        "namespace {ns} left"
    );
    assert!(!std::path::Path::new(&workdir).exists(), "{workdir} left");
    // Killed qemus may linger a moment as zombies of init (their `timeout` parent died).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !live_qemus().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(live_qemus().is_empty(), "qemu left: {:?}", live_qemus());
}

//! A CSI driver's Kubernetes API flows, driven by the real components a cluster runs:
//! etcd + kube-apiserver + kube-controller-manager (PV binder, expander, protection
//! controllers) in a private network namespace, the upstream csi-provisioner, csi-resizer,
//! csi-snapshotter and snapshot-controller as processes beside them, and hanfs in local
//! mode (hanfs-backend on a tempdir export, hanfs-controller and hanfs-node on unix
//! sockets) on the host. Each flow is proven by reading the objects back from the API and
//! the volumes' directories and records from the export.
//!
//! Pods are not part of this: there is no kubelet here (mounting through kubelet is the VM
//! cluster's job), so the static PV's mount is the NodePublishVolume call kubelet would make.
//!
//! Needs root (namespaces, the bind mount), `ip`, `curl`, `openssl`; the hanfs binaries of
//! this build profile (`cargo build --bins`) or `$HANFS_BIN_DIR`; builds Kubernetes v1.37.2 and the sidecars
//! from the Go module proxy on first use (e2e/kube/build.sh, e2e/kube/build-sidecars.sh).

#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::csi_sidecars::{self, Sidecar};
use testkit::kube::{KubeApiServer, Options};
use testkit::netns::Topology;
use testkit::process::Supervised;

const DRIVER: &str = "hanfs.csi.io";
const CLUSTER: &str = "flows";
const NS: &str = "default";
const STORAGE_CLASS: &str = "hanfs";
const SNAPSHOT_CLASS: &str = "hanfs-snap";
const ARCHIVE_CLASS: &str = "hanfs-archive";
const GROUP_CLASS: &str = "hanfs-group";
/// Bound on one wait for the cluster to act (provision, bind, resize, snapshot, delete).
const FLOW_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// Bound on hanfs local mode coming up, and on one hanfsctl call.
const HANFS_TIMEOUT: Duration = Duration::from_secs(30);
const MI: u64 = 1 << 20;

/// hanfs local mode (`hanfsctl local up`: backend, controller, node) under `dir`. Dropping
/// it stops all three and lazily unmounts whatever the flows left mounted under `dir`.
struct LocalHanfs {
    /// hanfsctl, leading a process group with the three binaries; its SIGTERM handler
    /// stops them in reverse order, the group SIGKILL is the backstop.
    process: Supervised,
    dir: PathBuf,
    bins: PathBuf,
}

impl LocalHanfs {
    fn start(bins: &Path, dir: &Path) -> LocalHanfs {
        fs::create_dir_all(dir).unwrap();
        let log = dir.join("hanfs.log");
        let out = fs::File::create(&log).unwrap();
        let process = Supervised::spawn(
            "hanfsctl local up",
            Command::new(bins.join("hanfsctl"))
                .arg("--dir")
                .arg(dir)
                .args(["--cluster-id", CLUSTER, "local", "up", "--bin-dir"])
                .arg(bins)
                .stdout(out.try_clone().unwrap())
                .stderr(out),
        )
        .unwrap();
        let hanfs = LocalHanfs {
            process,
            dir: dir.to_owned(),
            bins: bins.to_owned(),
        };
        let deadline = Instant::now() + HANFS_TIMEOUT;
        while !fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("local mode is up")
        {
            assert!(
                !hanfs.process.has_exited() && Instant::now() < deadline,
                "hanfs local mode did not come up:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(POLL);
        }
        hanfs
    }

    fn export(&self) -> PathBuf {
        self.dir.join("export")
    }

    fn controller_socket(&self) -> PathBuf {
        self.dir.join("sockets/controller.sock")
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("hanfs.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- hanfs local mode:\n{}",
            lines[lines.len().saturating_sub(25)..].join("\n")
        )
    }

    /// One hanfsctl call against this local mode (CSI over its sockets), bounded.
    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut child = Command::new(self.bins.join("hanfsctl"))
            .arg("--dir")
            .arg(&self.dir)
            .args(["--cluster-id", CLUSTER])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("hanfsctl: {e}"))?;
        let deadline = Instant::now() + HANFS_TIMEOUT;
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("hanfsctl {args:?} timed out"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "hanfsctl {args:?}: {}: {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for LocalHanfs {
    fn drop(&mut self) {
        let _ = self.process.stop(Duration::from_secs(20));
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = self.dir.to_string_lossy().into_owned();
        for target in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if target.starts_with(&root) {
                let _ = Command::new("umount").arg("-l").arg(target).status();
            }
        }
    }
}

/// What the flows share: the API, the sidecars (for their logs), hanfs.
struct Cluster<'a> {
    api: &'a KubeApiServer,
    sidecars: &'a [Sidecar],
    hanfs: &'a LocalHanfs,
}

impl Cluster<'_> {
    fn get(&self, path: &str) -> Result<Value, String> {
        let (code, body) = self
            .api
            .curl("GET", path, None)
            .map_err(|e| e.to_string())?;
        match code {
            200 => serde_json::from_str(&body).map_err(|e| format!("GET {path}: {e}")),
            _ => Err(format!("GET {path}: HTTP {code}: {}", short(&body))),
        }
    }

    /// Whether `path` is gone (404).
    fn gone(&self, path: &str) -> Result<bool, String> {
        let (code, body) = self
            .api
            .curl("GET", path, None)
            .map_err(|e| e.to_string())?;
        match code {
            404 => Ok(true),
            200 => Ok(false),
            _ => Err(format!("GET {path}: HTTP {code}: {}", short(&body))),
        }
    }

    fn send(&self, method: &str, path: &str, body: &Value, want: &[u16]) -> Result<Value, String> {
        let (code, text) = self
            .api
            .curl(method, path, Some(&body.to_string()))
            .map_err(|e| e.to_string())?;
        if !want.contains(&code) {
            return Err(format!("{method} {path}: HTTP {code}: {}", short(&text)));
        }
        serde_json::from_str(&text).map_err(|e| format!("{method} {path}: {e}"))
    }

    fn create(&self, path: &str, body: Value) -> Result<Value, String> {
        self.send("POST", path, &body, &[201])
    }

    fn patch(&self, path: &str, body: Value) -> Result<Value, String> {
        self.send("PATCH", path, &body, &[200])
    }

    fn delete(&self, path: &str) -> Result<(), String> {
        let (code, text) = self
            .api
            .curl("DELETE", path, None)
            .map_err(|e| e.to_string())?;
        match code {
            200 | 202 => Ok(()),
            _ => Err(format!("DELETE {path}: HTTP {code}: {}", short(&text))),
        }
    }

    /// Polls `check` every 100 ms until it returns `Ok`, for at most [`FLOW_TIMEOUT`]. On
    /// timeout the error names `what`, the last thing `check` saw, and the log tails of
    /// the components named in `logs` (sidecar names, `kube-controller-manager`, `hanfs`).
    fn wait<T>(
        &self,
        what: &str,
        logs: &[&str],
        mut check: impl FnMut() -> Result<T, String>,
    ) -> Result<T, String> {
        let t0 = Instant::now();
        loop {
            let last = match check() {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let dead: Vec<&Sidecar> = self.sidecars.iter().filter(|s| !s.is_running()).collect();
            if t0.elapsed() > FLOW_TIMEOUT || !dead.is_empty() {
                let mut msg = format!(
                    "waited {:.1} s for {what}; last seen: {last}",
                    t0.elapsed().as_secs_f64()
                );
                for s in &dead {
                    let _ = write!(msg, "\n{} exited", s.name());
                }
                for name in logs {
                    let tail = match *name {
                        "kube-controller-manager" => format!(
                            "--- kube-controller-manager:\n{}",
                            self.api.log_tail("kube-controller-manager")
                        ),
                        "hanfs" => self.hanfs.log_tail(),
                        _ => self
                            .sidecars
                            .iter()
                            .find(|s| s.name() == *name)
                            .map(Sidecar::log_tail)
                            .unwrap_or_default(),
                    };
                    let _ = write!(msg, "\n{tail}");
                }
                for s in dead.iter().filter(|s| !logs.contains(&s.name())) {
                    let _ = write!(msg, "\n{}", s.log_tail());
                }
                return Err(msg);
            }
            std::thread::sleep(POLL);
        }
    }

    fn pvc_path(name: &str) -> String {
        format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/{name}")
    }

    /// Creates a PVC of `size` bytes (from `data_source` if given) in the hanfs class.
    fn create_pvc(&self, name: &str, size: u64, data_source: Option<Value>) -> Result<(), String> {
        let mut spec = json!({
            "accessModes": ["ReadWriteMany"],
            "storageClassName": STORAGE_CLASS,
            "resources": {"requests": {"storage": size.to_string()}},
        });
        if let Some(source) = data_source {
            spec["dataSource"] = source;
        }
        self.create(
            &format!("/api/v1/namespaces/{NS}/persistentvolumeclaims"),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": name}, "spec": spec}),
        )?;
        Ok(())
    }

    /// Waits until PVC `name` is Bound; returns (PVC, its PV).
    fn wait_bound(&self, name: &str, logs: &[&str]) -> Result<(Value, Value), String> {
        let pvc = self.wait(&format!("PVC {name} Bound"), logs, || {
            let pvc = self.get(&Self::pvc_path(name))?;
            match pvc["status"]["phase"].as_str() {
                Some("Bound") => Ok(pvc),
                phase => Err(format!("phase {phase:?}; {}", events_hint(&pvc))),
            }
        })?;
        let pv_name = pvc["spec"]["volumeName"]
            .as_str()
            .ok_or("bound PVC names no volume")?;
        let pv = self.get(&format!("/api/v1/persistentvolumes/{pv_name}"))?;
        Ok((pvc, pv))
    }

    /// The export directory of a volume handle `v1/<cluster>/<dir>`.
    fn volume_dir(&self, pv: &Value) -> Result<(String, PathBuf), String> {
        let handle = pv["spec"]["csi"]["volumeHandle"]
            .as_str()
            .ok_or("PV has no spec.csi.volumeHandle")?;
        let dir = handle
            .strip_prefix(&format!("v1/{CLUSTER}/"))
            .ok_or_else(|| format!("volume handle {handle:?} is not v1/{CLUSTER}/<dir>"))?;
        Ok((
            handle.to_owned(),
            self.hanfs.export().join("volumes").join(dir),
        ))
    }

    /// The backend's record of a volume (`.hanfs/meta/volumes/<dir>.json`).
    fn record(&self, dir: &Path) -> Result<Value, String> {
        let name = dir.file_name().ok_or("no dir name")?.to_string_lossy();
        let path = self
            .hanfs
            .export()
            .join(".hanfs/meta/volumes")
            .join(format!("{name}.json"));
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// What csi-provisioner records on a PVC it could not provision (it sets no condition;
/// the reason is in Events), so a timeout message points at the right place.
fn events_hint(pvc: &Value) -> String {
    let ann = &pvc["metadata"]["annotations"];
    format!(
        "provisioner annotation {:?}",
        ann["volume.kubernetes.io/storage-provisioner"].as_str()
    )
}

fn short(text: &str) -> String {
    text.chars().take(600).collect()
}

/// Bytes of a Kubernetes quantity such as `64Mi`, `1Gi`, `134217728` or `1k`.
fn quantity_bytes(q: &Value) -> Result<u64, String> {
    let s = q.as_str().ok_or_else(|| format!("{q} is not a quantity"))?;
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("quantity {s:?}"))?;
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return Err(format!("quantity {s:?} has an unexpected suffix")),
    };
    Ok(n * unit)
}

/// A flow's outcome: what it proved, or why not.
type Outcome = Result<String, String>;
/// A flow: id, title, body.
type Flow = (&'static str, &'static str, fn(&Cluster) -> Outcome);

/// The hanfs binaries: `$HANFS_BIN_DIR` if set (e.g. `target/release`), else those of
/// this build profile (the test runs from `target/<profile>/deps/`).
fn hanfs_bins() -> PathBuf {
    let dir = match std::env::var_os("HANFS_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().unwrap();
            exe.parent().and_then(Path::parent).unwrap().to_owned()
        }
    };
    for bin in [
        "hanfs-backend",
        "hanfs-controller",
        "hanfs-node",
        "hanfsctl",
    ] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: build the binaries first (cargo build --bins)",
            dir.join(bin).display()
        );
    }
    dir
}

/// Writes a line to the real stderr, past libtest's capture, so the run's log (and
/// scripts/test.sh) shows every flow.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[test]
fn csi_api_flows_against_real_kubernetes_components() {
    let t_setup = Instant::now();
    let bins = hanfs_bins();
    let sidecar_bins = csi_sidecars::binaries().expect("CSI sidecars");
    let topo = Topology::new(1).expect("topology");
    let work = tempfile::tempdir().expect("workdir");
    let api = KubeApiServer::start_with(
        topo.core_ns(),
        topo.core_ip(),
        &work.path().join("kube"),
        &Options {
            controller_manager: true,
            // csi-resizer v1.14 (the newest the module proxy serves) watches
            // VolumeAttributesClasses in storage.k8s.io/v1beta1, which v1.37 removes; its
            // ModifyVolume controller never starts without it.
            runtime_config: Some("storage.k8s.io/v1beta1/volumeattributesclasses=true".into()),
            serve_removed_apis: true,
            ..Options::default()
        },
    )
    .expect("etcd + kube-apiserver + kube-controller-manager");
    let hanfs = LocalHanfs::start(&bins, &work.path().join("hanfs"));
    let socket = hanfs.controller_socket().to_string_lossy().into_owned();
    let kubeconfig = api.kubeconfig().to_string_lossy().into_owned();

    // The CRDs before the snapshotter and the provisioner, which watch snapshots.
    for crd in sidecar_bins.crds().expect("snapshot CRDs") {
        let (code, body) = api
            .curl_file(
                "POST",
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                &crd,
                "application/yaml",
            )
            .expect("POST CRD");
        assert_eq!(
            code,
            201,
            "creating CRD {}: {}",
            crd.display(),
            short(&body)
        );
    }
    let no_sidecars: [Sidecar; 0] = [];
    let bare = Cluster {
        api: &api,
        sidecars: &no_sidecars,
        hanfs: &hanfs,
    };
    for crd in [
        "volumesnapshots",
        "volumesnapshotcontents",
        "volumesnapshotclasses",
    ] {
        let path = format!(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}.snapshot.storage.k8s.io"
        );
        bare.wait(&format!("CRD {crd} Established"), &[], || {
            let obj = bare.get(&path)?;
            let established = obj["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True");
            if established {
                Ok(())
            } else {
                Err("not established".into())
            }
        })
        .expect("CRD established");
    }
    for crd in [
        "volumegroupsnapshots",
        "volumegroupsnapshotcontents",
        "volumegroupsnapshotclasses",
    ] {
        let path = format!(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}.groupsnapshot.storage.k8s.io"
        );
        bare.wait(&format!("CRD {crd} Established"), &[], || {
            let obj = bare.get(&path)?;
            let established = obj["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True");
            if established {
                Ok(())
            } else {
                Err("not established".into())
            }
        })
        .expect("group snapshot CRD established");
    }

    let common = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![format!("--kubeconfig={kubeconfig}"), "--v=4".to_owned()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let csi = format!("--csi-address={socket}");
    // Short retry ceilings: a flow waiting on a sidecar's exponential back-off (5 min by
    // default) would only measure the back-off.
    let sidecar_specs: Vec<(&str, Vec<String>)> = vec![
        (
            "csi-provisioner",
            common(&[
                &csi,
                "--extra-create-metadata",
                "--timeout=30s",
                "--retry-interval-max=5s",
            ]),
        ),
        (
            "csi-resizer",
            common(&[
                &csi,
                "--timeout=30s",
                "--retry-interval-max=5s",
                // ModifyVolume: the resizer's modify controller is behind this gate in v1.14.
                "--feature-gates=VolumeAttributesClass=true",
            ]),
        ),
        (
            "csi-snapshotter",
            common(&[
                &csi,
                "--extra-create-metadata",
                "--timeout=30s",
                "--retry-interval-max=5s",
                // GA and on by default in v8.7; explicit, as in the chart.
                "--feature-gates=CSIVolumeGroupSnapshot=true",
            ]),
        ),
        (
            "snapshot-controller",
            common(&[
                "--retry-interval-max=5s",
                "--feature-gates=CSIVolumeGroupSnapshot=true",
            ]),
        ),
    ];
    let mut sidecars = Vec::new();
    for (name, args) in &sidecar_specs {
        sidecars.push(
            Sidecar::start(
                name,
                topo.core_ns(),
                &sidecar_bins.path(name),
                args,
                &work.path().join(format!("{name}.log")),
            )
            .expect("sidecar"),
        );
    }
    let c = Cluster {
        api: &api,
        sidecars: &sidecars,
        hanfs: &hanfs,
    };

    // The driver and classes an admin (or the chart) would create.
    c.create(
        "/apis/storage.k8s.io/v1/csidrivers",
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
               "metadata": {"name": DRIVER},
               "spec": {"attachRequired": false, "podInfoOnMount": false,
                        "fsGroupPolicy": "File", "volumeLifecycleModes": ["Persistent"]}}),
    )
    .expect("CSIDriver");
    c.create(
        "/apis/storage.k8s.io/v1/storageclasses",
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": STORAGE_CLASS},
               "provisioner": DRIVER,
               "parameters": {"subDir": "${pvc.metadata.namespace}-${pvc.metadata.name}"},
               "reclaimPolicy": "Delete", "allowVolumeExpansion": true,
               "volumeBindingMode": "Immediate"}),
    )
    .expect("StorageClass");
    c.create(
        "/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses",
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
               "metadata": {"name": SNAPSHOT_CLASS},
               "driver": DRIVER, "deletionPolicy": "Delete"}),
    )
    .expect("VolumeSnapshotClass");
    // v1 (GA since 1.34): the same objects the resizer reads through v1beta1.
    c.create(
        "/apis/storage.k8s.io/v1/volumeattributesclasses",
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttributesClass",
               "metadata": {"name": ARCHIVE_CLASS},
               "driverName": DRIVER, "parameters": {"onDelete": "archive"}}),
    )
    .expect("VolumeAttributesClass");
    c.create(
        "/apis/groupsnapshot.storage.k8s.io/v1/volumegroupsnapshotclasses",
        json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1", "kind": "VolumeGroupSnapshotClass",
               "metadata": {"name": GROUP_CLASS},
               "driver": DRIVER, "deletionPolicy": "Delete"}),
    )
    .expect("VolumeGroupSnapshotClass");
    report(&format!(
        "kube-flows: setup {:.1} s (apiserver + controller-manager ready in {:.1} s)",
        t_setup.elapsed().as_secs_f64(),
        api.startup_time().as_secs_f64()
    ));

    let flows: [Flow; 8] = [
        ("a", "StorageClass + PVC -> PV, Bound", flow_provision),
        ("b", "PVC resize -> volume expanded", flow_resize),
        ("c", "VolumeSnapshot -> readyToUse", flow_snapshot),
        (
            "d",
            "PVC from snapshot and from PVC -> Bound with the data",
            flow_restore_and_clone,
        ),
        ("e", "VolumeAttributesClass -> ModifyVolume", flow_modify),
        ("f", "PVC delete honours onDelete", flow_delete),
        (
            "g",
            "static PV adopting a directory -> Bound, published",
            flow_static,
        ),
        (
            "h",
            "VolumeGroupSnapshot of two labelled PVCs -> readyToUse, a member restored",
            flow_group_snapshot,
        ),
    ];
    let (mut passed, mut failed) = (0, Vec::new());
    for (id, title, flow) in flows {
        let t = Instant::now();
        // Later flows build on earlier ones' objects; after a failure they still run and
        // report what they see, so one bug does not hide the state of the rest.
        let outcome = flow(&c);
        let secs = t.elapsed().as_secs_f64();
        match outcome {
            Ok(detail) => {
                passed += 1;
                report(&format!(
                    "kube-flows: ({id}) {title}: ok in {secs:.1} s: {detail}"
                ));
            }
            Err(why) => {
                report(&format!(
                    "kube-flows: ({id}) {title}: FAILED in {secs:.1} s: {why}"
                ));
                failed.push(id);
            }
        }
    }
    report(&format!(
        "kube-flows: {passed} passed, {} failed (total {:.1} s)",
        failed.len(),
        t_setup.elapsed().as_secs_f64()
    ));

    // Reverse of start; Drop would do the same, this reports an unclean stop.
    drop(sidecars);
    drop(hanfs);
    api.stop().expect("clean stop of the Kubernetes servers");
    topo.destroy().expect("namespaces removed");
    assert!(failed.is_empty(), "flows failed: {failed:?}");
}

const DATA_A: &str = "data-a";
const SNAP_A: &str = "snap-a";
const MARKER: &str = "flows.txt";
const MARKER_TEXT: &str = "written before the snapshot\n";

/// (a) A PVC in the hanfs StorageClass gets a PV of the requested size, bound, with its
/// directory in the export named by the StorageClass's subDir template.
fn flow_provision(c: &Cluster) -> Outcome {
    c.create_pvc(DATA_A, 64 * MI, None)?;
    let (pvc, pv) = c.wait_bound(
        DATA_A,
        &["csi-provisioner", "kube-controller-manager", "hanfs"],
    )?;
    let pv_bytes = quantity_bytes(&pv["spec"]["capacity"]["storage"])?;
    let pvc_bytes = quantity_bytes(&pvc["status"]["capacity"]["storage"])?;
    if pv_bytes != 64 * MI || pvc_bytes != 64 * MI {
        return Err(format!(
            "capacity: PV {pv_bytes}, PVC {pvc_bytes}, asked 64Mi"
        ));
    }
    if pv["spec"]["csi"]["driver"] != DRIVER {
        return Err(format!("PV driver {}", pv["spec"]["csi"]["driver"]));
    }
    let (handle, dir) = c.volume_dir(&pv)?;
    if !dir.ends_with(format!("{NS}-{DATA_A}")) {
        return Err(format!("{handle} does not follow the subDir template"));
    }
    if !dir.is_dir() {
        return Err(format!("{} does not exist", dir.display()));
    }
    let record = c.record(&dir)?;
    if record["request_name"]
        .as_str()
        .is_none_or(|n| !n.starts_with("pvc-"))
    {
        return Err(format!("record's request name {}", record["request_name"]));
    }
    Ok(format!(
        "PV {} 64Mi, {handle}, {} exists",
        pv["metadata"]["name"].as_str().unwrap_or("?"),
        dir.display()
    ))
}

/// (b) Raising the PVC's request expands the volume: the PV and the PVC's status show the
/// new size, and so does hanfs (its record and ControllerGetVolume through hanfsctl).
fn flow_resize(c: &Cluster) -> Outcome {
    let want = 128 * MI;
    c.patch(
        &Cluster::pvc_path(DATA_A),
        json!({"spec": {"resources": {"requests": {"storage": want.to_string()}}}}),
    )?;
    let (pv, dir) = c.wait(
        "PV and PVC at 128Mi",
        &["csi-resizer", "kube-controller-manager"],
        || {
            let pvc = c.get(&Cluster::pvc_path(DATA_A))?;
            let pv_name = pvc["spec"]["volumeName"].as_str().ok_or("no volumeName")?;
            let pv = c.get(&format!("/api/v1/persistentvolumes/{pv_name}"))?;
            let pv_bytes = quantity_bytes(&pv["spec"]["capacity"]["storage"])?;
            let pvc_bytes = quantity_bytes(&pvc["status"]["capacity"]["storage"])?;
            if pv_bytes == want && pvc_bytes == want {
                let (_, dir) = c.volume_dir(&pv)?;
                Ok((pv, dir))
            } else {
                Err(format!(
                    "PV {pv_bytes}, PVC status {pvc_bytes}, conditions {}",
                    pvc["status"]["conditions"]
                ))
            }
        },
    )?;
    let record = c.record(&dir)?;
    if record["capacity_bytes"].as_u64() != Some(want) {
        return Err(format!(
            "hanfs record capacity {}",
            record["capacity_bytes"]
        ));
    }
    let (handle, _) = c.volume_dir(&pv)?;
    let shown = c.hanfs.ctl(&["volume", "get", &handle])?;
    if !shown.contains("128.0Mi") {
        return Err(format!("hanfsctl volume get shows {shown:?}"));
    }
    Ok(format!(
        "PV + PVC 128Mi, record capacity_bytes {want}, hanfsctl volume get: {}",
        shown.lines().next().unwrap_or_default().trim()
    ))
}

/// (c) A VolumeSnapshot of the volume (a file written into it first) becomes readyToUse,
/// and hanfs has the snapshot.
fn flow_snapshot(c: &Cluster) -> Outcome {
    let pvc = c.get(&Cluster::pvc_path(DATA_A))?;
    let pv_name = pvc["spec"]["volumeName"].as_str().ok_or("no volumeName")?;
    let pv = c.get(&format!("/api/v1/persistentvolumes/{pv_name}"))?;
    let (_, dir) = c.volume_dir(&pv)?;
    fs::write(dir.join(MARKER), MARKER_TEXT).map_err(|e| format!("writing the marker: {e}"))?;
    c.create(
        &format!("/apis/snapshot.storage.k8s.io/v1/namespaces/{NS}/volumesnapshots"),
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
               "metadata": {"name": SNAP_A},
               "spec": {"volumeSnapshotClassName": SNAPSHOT_CLASS,
                        "source": {"persistentVolumeClaimName": DATA_A}}}),
    )?;
    let path = format!("/apis/snapshot.storage.k8s.io/v1/namespaces/{NS}/volumesnapshots/{SNAP_A}");
    let snap = c.wait(
        "VolumeSnapshot readyToUse",
        &["snapshot-controller", "csi-snapshotter"],
        || {
            let snap = c.get(&path)?;
            if snap["status"]["readyToUse"] == true {
                Ok(snap)
            } else {
                Err(format!("status {}", snap["status"]))
            }
        },
    )?;
    let content_name = snap["status"]["boundVolumeSnapshotContentName"]
        .as_str()
        .ok_or("no boundVolumeSnapshotContentName")?;
    let content = c.get(&format!(
        "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/{content_name}"
    ))?;
    let handle = content["status"]["snapshotHandle"]
        .as_str()
        .ok_or("content has no snapshotHandle")?;
    let name = handle
        .strip_prefix(&format!("s1/{CLUSTER}/"))
        .ok_or_else(|| format!("snapshot handle {handle:?}"))?;
    let snap_dir = c.hanfs.export().join("snapshots").join(name);
    if fs::read_to_string(snap_dir.join(MARKER)).ok().as_deref() != Some(MARKER_TEXT) {
        return Err(format!("{} lacks the marker file", snap_dir.display()));
    }
    Ok(format!(
        "readyToUse, restoreSize {}, {handle}",
        snap["status"]["restoreSize"]
    ))
}

const FROM_SNAP: &str = "from-snap";
const CLONE_A: &str = "clone-a";

/// (d) A PVC from the snapshot and a PVC cloned from the original PVC both bind, and
/// both directories hold the file written before the snapshot.
fn flow_restore_and_clone(c: &Cluster) -> Outcome {
    c.create_pvc(
        FROM_SNAP,
        128 * MI,
        Some(json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": SNAP_A})),
    )?;
    c.create_pvc(
        CLONE_A,
        128 * MI,
        Some(json!({"kind": "PersistentVolumeClaim", "name": DATA_A})),
    )?;
    let mut shown = Vec::new();
    for name in [FROM_SNAP, CLONE_A] {
        let (_, pv) = c.wait_bound(
            name,
            &["csi-provisioner", "kube-controller-manager", "hanfs"],
        )?;
        let (handle, dir) = c.volume_dir(&pv)?;
        let text = fs::read_to_string(dir.join(MARKER))
            .map_err(|e| format!("{name}: {}: {e}", dir.join(MARKER).display()))?;
        if text != MARKER_TEXT {
            return Err(format!("{name}: marker holds {text:?}"));
        }
        let source = &c.record(&dir)?["source"];
        shown.push(format!(
            "{name} Bound ({handle}, source {source}, data present)"
        ));
    }
    Ok(shown.join("; "))
}

const DATA_E: &str = "data-e";

/// (e) Setting a VolumeAttributesClass (onDelete: archive) on a bound PVC makes
/// csi-resizer call ControllerModifyVolume; the PVC reports the class as current and
/// hanfs's record says archive.
fn flow_modify(c: &Cluster) -> Outcome {
    c.create_pvc(DATA_E, 64 * MI, None)?;
    let (_, pv) = c.wait_bound(DATA_E, &["csi-provisioner", "kube-controller-manager"])?;
    let (handle, dir) = c.volume_dir(&pv)?;
    let before = c.record(&dir)?["on_delete"].clone();
    if before != "delete" {
        return Err(format!(
            "a new volume's onDelete is {before}, expected delete"
        ));
    }
    c.patch(
        &Cluster::pvc_path(DATA_E),
        json!({"spec": {"volumeAttributesClassName": ARCHIVE_CLASS}}),
    )?;
    let status = c.wait(
        "PVC's currentVolumeAttributesClassName",
        &["csi-resizer", "hanfs"],
        || {
            let pvc = c.get(&Cluster::pvc_path(DATA_E))?;
            let status = &pvc["status"];
            if status["currentVolumeAttributesClassName"] == ARCHIVE_CLASS {
                Ok(status.clone())
            } else {
                Err(format!("status {status}"))
            }
        },
    )?;
    let after = c.record(&dir)?["on_delete"].clone();
    if after != "archive" {
        return Err(format!(
            "PVC status {status}, but hanfs's record says onDelete {after}"
        ));
    }
    let pv = c.get(&format!(
        "/api/v1/persistentvolumes/{}",
        pv["metadata"]["name"].as_str().unwrap_or_default()
    ))?;
    Ok(format!(
        "{handle}: PVC current class {ARCHIVE_CLASS}, PV class {}, record onDelete archive",
        pv["spec"]["volumeAttributesClassName"]
    ))
}

/// (f) Deleting the PVCs: the archive-class volume's directory moves to
/// `<export>/archived/`, a default (delete) volume's directory is gone; both PVs go.
fn flow_delete(c: &Cluster) -> Outcome {
    let mut shown = Vec::new();
    for (name, archived) in [(DATA_E, true), (FROM_SNAP, false)] {
        let (_, pv) = c.wait_bound(name, &[])?;
        let pv_name = pv["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (handle, dir) = c.volume_dir(&pv)?;
        let dir_name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        c.delete(&Cluster::pvc_path(name))?;
        c.wait(
            &format!("PVC {name} and PV {pv_name} gone"),
            &["csi-provisioner", "kube-controller-manager", "hanfs"],
            || {
                let pvc_gone = c.gone(&Cluster::pvc_path(name))?;
                let pv_gone = c.gone(&format!("/api/v1/persistentvolumes/{pv_name}"))?;
                if pvc_gone && pv_gone {
                    Ok(())
                } else {
                    Err(format!("PVC gone {pvc_gone}, PV gone {pv_gone}"))
                }
            },
        )?;
        if dir.exists() {
            return Err(format!("{} still exists after DeleteVolume", dir.display()));
        }
        let archive = c.hanfs.export().join("archived");
        let kept: Vec<String> = fs::read_dir(&archive)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{dir_name}-")))
            .collect();
        match (archived, kept.as_slice()) {
            (true, [one]) => {
                let marker = archive.join(one);
                shown.push(format!("{handle} archived as archived/{one}"));
                if !marker.is_dir() {
                    return Err(format!("{} is not a directory", marker.display()));
                }
            }
            (false, []) => shown.push(format!("{handle} deleted")),
            _ => {
                return Err(format!(
                    "{handle}: archived entries {kept:?}, expected {}",
                    if archived { "one" } else { "none" }
                ));
            }
        }
    }
    Ok(shown.join("; "))
}

const LEGACY_DIR: &str = "volumes/legacy-data";

/// (g) A static PV in the csi-driver-nfs style (a `server#share#subDir` handle and
/// `server`, `share`, `subDir` attributes) for a directory that already exists binds to its
/// PVC; the NodePublishVolume kubelet would make with that PV's handle and attributes as
/// the volume context shows the directory's content at the target.
///
/// hanfs-node reads `subDir` (relative to the share; in local mode to the export root,
/// which is the share) and takes the handle as an opaque string, so the PV read back from
/// the API is published exactly as it is stored: its handle, its attributes as `--context`.
fn flow_static(c: &Cluster) -> Outcome {
    let existing = c.hanfs.export().join(LEGACY_DIR);
    fs::create_dir_all(&existing).map_err(|e| e.to_string())?;
    fs::write(existing.join("adopted.txt"), "data from before hanfs\n")
        .map_err(|e| e.to_string())?;
    let handle = format!("10.0.0.100#/export#{LEGACY_DIR}");
    c.create(
        "/api/v1/persistentvolumes",
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
               "metadata": {"name": "legacy-pv"},
               "spec": {"capacity": {"storage": "1Gi"},
                        "accessModes": ["ReadWriteMany"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": "",
                        "csi": {"driver": DRIVER, "volumeHandle": handle,
                                "volumeAttributes": {"server": "10.0.0.100", "share": "/export",
                                                     "subDir": LEGACY_DIR}}}}),
    )?;
    c.create(
        &format!("/api/v1/namespaces/{NS}/persistentvolumeclaims"),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "legacy"},
               "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                        "volumeName": "legacy-pv",
                        "resources": {"requests": {"storage": "1Gi"}}}}),
    )?;
    let (_, pv) = c.wait_bound("legacy", &["kube-controller-manager"])?;
    let pv_handle = pv["spec"]["csi"]["volumeHandle"]
        .as_str()
        .ok_or("PV lost its handle")?
        .to_owned();
    let attributes = pv["spec"]["csi"]["volumeAttributes"]
        .as_object()
        .ok_or("PV lost its volumeAttributes")?;
    let mut context = Vec::new();
    for (key, value) in attributes {
        let value = value
            .as_str()
            .ok_or_else(|| format!("volumeAttributes.{key} is not a string: {value}"))?;
        context.push(format!("{key}={value}"));
    }
    let node = format!("unix://{}", c.hanfs.dir.join("sockets/node.sock").display());
    let target = c.hanfs.dir.join("mnt/legacy");
    let target_arg = target.to_string_lossy().into_owned();
    let mut publish = vec!["--node", &node, "publish", &pv_handle, &target_arg];
    for entry in &context {
        publish.extend(["--context", entry]);
    }
    c.hanfs.ctl(&publish)?;
    let seen = fs::read_to_string(target.join("adopted.txt"));
    // Kubelet's NodeGetVolumeStats carries only the handle, no attributes.
    let stats = c
        .hanfs
        .ctl(&["--node", &node, "stats", &pv_handle, &target_arg]);
    c.hanfs
        .ctl(&["--node", &node, "unpublish", &pv_handle, &target_arg])?;
    let stats = stats?;
    if !stats.contains("health: normal") {
        return Err(format!("stats of {pv_handle} at {target_arg}: {stats}"));
    }
    match seen {
        Ok(text) if text == "data from before hanfs\n" => Ok(format!(
            "PVC legacy Bound to legacy-pv ({pv_handle}, context {}); published at {}, adopted.txt visible, health normal",
            context.join(" "),
            target.display()
        )),
        other => Err(format!(
            "after publish, {}/adopted.txt: {other:?}",
            target.display()
        )),
    }
}

const GROUP_PVCS: [&str; 2] = ["group-1", "group-2"];
const GROUP_SNAP: &str = "group-snap";
const FROM_GROUP: &str = "from-group";

/// (h) Two PVCs labelled `app: grouped` (each with its own file), a VolumeGroupSnapshot
/// selecting them by label: the real snapshot-controller and csi-snapshotter drive
/// CreateVolumeGroupSnapshot, the group becomes readyToUse with one member
/// VolumeSnapshot per PVC (each carrying the group's handle), and a PVC restored from
/// the second PVC's member holds that PVC's file.
fn flow_group_snapshot(c: &Cluster) -> Outcome {
    let mut dirs = Vec::new();
    for name in GROUP_PVCS {
        c.create(
            &format!("/api/v1/namespaces/{NS}/persistentvolumeclaims"),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": name, "labels": {"app": "grouped"}},
                   "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": STORAGE_CLASS,
                            "resources": {"requests": {"storage": (64 * MI).to_string()}}}}),
        )?;
    }
    for name in GROUP_PVCS {
        let (_, pv) = c.wait_bound(name, &["csi-provisioner", "kube-controller-manager"])?;
        let (_, dir) = c.volume_dir(&pv)?;
        fs::write(dir.join(MARKER), format!("written into {name}\n"))
            .map_err(|e| format!("writing {name}'s marker: {e}"))?;
        dirs.push(dir);
    }
    c.create(
        &format!("/apis/groupsnapshot.storage.k8s.io/v1/namespaces/{NS}/volumegroupsnapshots"),
        json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1", "kind": "VolumeGroupSnapshot",
               "metadata": {"name": GROUP_SNAP},
               "spec": {"volumeGroupSnapshotClassName": GROUP_CLASS,
                        "source": {"selector": {"matchLabels": {"app": "grouped"}}}}}),
    )?;
    let path = format!(
        "/apis/groupsnapshot.storage.k8s.io/v1/namespaces/{NS}/volumegroupsnapshots/{GROUP_SNAP}"
    );
    let group = c.wait(
        "VolumeGroupSnapshot readyToUse",
        &["snapshot-controller", "csi-snapshotter", "hanfs"],
        || {
            let group = c.get(&path)?;
            if group["status"]["readyToUse"] == true {
                Ok(group)
            } else {
                Err(format!("status {}", group["status"]))
            }
        },
    )?;
    let content_name = group["status"]["boundVolumeGroupSnapshotContentName"]
        .as_str()
        .ok_or("no boundVolumeGroupSnapshotContentName")?;
    let content = c.get(&format!(
        "/apis/groupsnapshot.storage.k8s.io/v1/volumegroupsnapshotcontents/{content_name}"
    ))?;
    let group_handle = content["status"]["volumeGroupSnapshotHandle"]
        .as_str()
        .ok_or("group content has no volumeGroupSnapshotHandle")?
        .to_owned();
    let group_name = group_handle
        .strip_prefix(&format!("g1/{CLUSTER}/"))
        .ok_or_else(|| format!("group handle {group_handle:?}"))?;
    if !c
        .hanfs
        .export()
        .join(".hanfs/meta/groups")
        .join(format!("{group_name}.json"))
        .is_file()
    {
        return Err(format!("hanfs has no record of group {group_name}"));
    }

    // The members: VolumeSnapshots the snapshot-controller made for the group, each
    // ready, each pointing at a hanfs snapshot of one of the two volumes.
    let members = c.wait(
        "two member VolumeSnapshots readyToUse",
        &["snapshot-controller", "csi-snapshotter"],
        || {
            let list = c.get(&format!(
                "/apis/snapshot.storage.k8s.io/v1/namespaces/{NS}/volumesnapshots"
            ))?;
            let members: Vec<Value> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["status"]["volumeGroupSnapshotName"] == GROUP_SNAP)
                .cloned()
                .collect();
            let ready = members
                .iter()
                .filter(|s| s["status"]["readyToUse"] == true)
                .count();
            if members.len() == 2 && ready == 2 {
                Ok(members)
            } else {
                Err(format!("{} members, {ready} ready", members.len()))
            }
        },
    )?;
    let mut source_of = Vec::new();
    for member in &members {
        let content_name = member["status"]["boundVolumeSnapshotContentName"]
            .as_str()
            .ok_or("member has no boundVolumeSnapshotContentName")?;
        let content = c.get(&format!(
            "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/{content_name}"
        ))?;
        let handle = content["status"]["snapshotHandle"]
            .as_str()
            .ok_or("member content has no snapshotHandle")?;
        let name = handle
            .strip_prefix(&format!("s1/{CLUSTER}/"))
            .ok_or_else(|| format!("member handle {handle:?}"))?;
        let record_path = c
            .hanfs
            .export()
            .join(".hanfs/meta/snapshots")
            .join(format!("{name}.json"));
        let record: Value = serde_json::from_str(
            &fs::read_to_string(&record_path)
                .map_err(|e| format!("{}: {e}", record_path.display()))?,
        )
        .map_err(|e| format!("{}: {e}", record_path.display()))?;
        if record["group"] != group_name {
            return Err(format!("member {name} records group {}", record["group"]));
        }
        let source = record["source_volume"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        source_of.push((
            member["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            source,
        ));
    }
    let second_dir = dirs[1].file_name().unwrap().to_string_lossy().into_owned();
    let (member_snap, _) = source_of
        .iter()
        .find(|(_, source)| *source == second_dir)
        .ok_or_else(|| format!("no member of {second_dir}: {source_of:?}"))?;

    c.create_pvc(
        FROM_GROUP,
        64 * MI,
        Some(json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": member_snap})),
    )?;
    let (_, pv) = c.wait_bound(FROM_GROUP, &["csi-provisioner", "hanfs"])?;
    let (_, dir) = c.volume_dir(&pv)?;
    let text = fs::read_to_string(dir.join(MARKER))
        .map_err(|e| format!("{}: {e}", dir.join(MARKER).display()))?;
    let want = format!("written into {}\n", GROUP_PVCS[1]);
    if text != want {
        return Err(format!("restored member holds {text:?}, not {want:?}"));
    }
    Ok(format!(
        "group {group_handle} readyToUse, members {source_of:?}, {FROM_GROUP} restored from {member_snap} with {}'s data",
        GROUP_PVCS[1]
    ))
}

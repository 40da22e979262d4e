//! hanfs as a Kubernetes user gets it: the client VM becomes a kubelet node (containerd 2.x,
//! runc, the CNI bridge, kube-proxy and kubelet, one Kubernetes version), kube-controller-manager
//! (every default controller) and kube-scheduler run on the host side of the bridge next to
//! the API server (`HanfsCluster::start_with` asks e2e/kube/start.sh for them), the chart is
//! `helm install`ed with the storage agents outside the cluster (`agent.enabled=false`: they
//! stay services on the storage VMs), and every pod of the chart runs on that kubelet from
//! locally built images. Then workload pods with a hanfs PVC write numbered fsync'ed records
//! through the VIP while the storage servers fail over under them.
//!
//! What each step proves is read back from the API (Node Ready, CSINode lists the driver,
//! the chart's pods Ready, PVC Bound, pod phases and restart counts) or from the servers
//! (the records as the active storage server has them).

use crate::cluster::{CLIENT, CLUSTER_ID, HanfsCluster, LONG, SHORT, VIP};
use crate::writer::{Trial, Writer, measure};
use crate::{Clock, Error};
use serde_json::{Value, json};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::csi_sidecars::{Binaries, Sidecar};
use testkit::kube::KubeApiServer;

/// The namespace the chart is installed into and the workloads run in.
pub const NAMESPACE: &str = "hanfs";
/// The Secret with the controller's client certificate (chart value tls.existingSecret).
const TLS_SECRET: &str = "hanfs-e2e-tls";

/// The chart's default StorageClass name.
const STORAGE_CLASS: &str = "hanfs";
/// The workload image (built from the `record-writer` binary of this crate).
const WRITER_IMAGE: &str = "hanfs.local/record-writer:local";
/// The images the node needs: the pod sandbox, the chart's pods (agent off; the attacher,
/// since the chart's default `attachRequired: true` adds it), the workload.
const NODE_IMAGES: &[&str] = &[
    "pause",
    "hanfs-controller",
    "hanfs-node",
    "csi-provisioner",
    "csi-attacher",
    "csi-resizer",
    "csi-snapshotter",
    "record-writer",
];
/// Bound on a locally built third-party component (cached after the first build).
const BUILD_LIMIT: Duration = Duration::from_secs(60 * 60);
/// Bound on the node becoming Ready and the chart's pods starting (TCG is slow: every
/// container start is a few process spawns, each ~50 ms in the guest).
const START_LIMIT: Duration = Duration::from_secs(300);

/// Seconds a failover trial's writer pod writes beyond what the trial needs, for the
/// lag between the pod's start and the harness seeing its first acknowledgement.
const POD_WRITER_SLACK_S: u32 = 60;

/// The time (`t`, the node's monotonic clock) of the first `ack <n> <t>` line of a
/// record-writer log.
fn first_ack_time(log: &str) -> Option<f64> {
    log.lines()
        .find_map(|l| l.strip_prefix("ack "))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|t| t.parse().ok())
}

/// Runs a repo script (bash, or python3 for `.py`) that builds (or finds cached) something
/// and prints its folder last.
pub(crate) fn built(repo: &Path, script: &str, args: &[&str]) -> Result<PathBuf, Error> {
    let mut cmd = Command::new(if script.ends_with(".py") {
        "python3"
    } else {
        "bash"
    });
    cmd.arg(repo.join(script)).args(args);
    let out = testkit::cmd::run(&mut cmd, BUILD_LIMIT).map_err(|e| format!("{script}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().last().map(str::trim) {
        Some(dir) if !dir.is_empty() && Path::new(dir).is_dir() => Ok(PathBuf::from(dir)),
        _ => Err(format!("{script} printed no folder (stdout: {text:?})").into()),
    }
}

/// [`built`] for a script that prints a file (not a folder) last.
pub(crate) fn built_file(repo: &Path, script: &str, args: &[&str]) -> Result<PathBuf, Error> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo.join(script)).args(args);
    let out = testkit::cmd::run(&mut cmd, BUILD_LIMIT).map_err(|e| format!("{script}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().last().map(str::trim) {
        Some(file) if !file.is_empty() && Path::new(file).is_file() => Ok(PathBuf::from(file)),
        _ => Err(format!("{script} printed no file (stdout: {text:?})").into()),
    }
}

/// Hard-links (or copies, across filesystems) `from` to `to`.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), Error> {
    let _ = fs::remove_file(to);
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to).map_err(|e| format!("copying {}: {e}", from.display()))?;
    }
    Ok(())
}

/// A small client for the objects this module reads and writes, over the API server's
/// curl (the token never shows in a process listing).
pub struct Api<'a>(pub &'a KubeApiServer);

impl Api<'_> {
    /// GET that must answer 200.
    pub fn get(&self, path: &str) -> Result<Value, Error> {
        let (code, body) = self.0.curl("GET", path, None)?;
        if code != 200 {
            return Err(format!("GET {path}: HTTP {code}: {}", body.trim()).into());
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// GET that may answer 404 (`None`).
    pub fn find(&self, path: &str) -> Result<Option<Value>, Error> {
        let (code, body) = self.0.curl("GET", path, None)?;
        match code {
            200 => Ok(Some(serde_json::from_str(&body)?)),
            404 => Ok(None),
            _ => Err(format!("GET {path}: HTTP {code}: {}", body.trim()).into()),
        }
    }

    /// POST an object to its collection (201 or 200).
    pub fn create(&self, collection: &str, object: &Value) -> Result<Value, Error> {
        let (code, body) = self.0.curl("POST", collection, Some(&object.to_string()))?;
        if code != 201 && code != 200 {
            return Err(format!("POST {collection}: HTTP {code}: {}", body.trim()).into());
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// DELETE (404 counts as done).
    pub fn delete(&self, path: &str) -> Result<(), Error> {
        let (code, body) = self.0.curl("DELETE", path, None)?;
        if ![200, 202, 404].contains(&code) {
            return Err(format!("DELETE {path}: HTTP {code}: {}", body.trim()).into());
        }
        Ok(())
    }

    /// Polls `path` until `ready` says yes (returning the object) or `limit` passes; the
    /// error carries what `ready` said about the last version seen.
    pub fn wait(
        &self,
        path: &str,
        limit: Duration,
        ready: impl Fn(&Value) -> Result<bool, String>,
    ) -> Result<Value, Error> {
        let started = Instant::now();
        let mut last = String::from("never read");
        while started.elapsed() < limit {
            match self.find(path) {
                Ok(Some(object)) => match ready(&object) {
                    Ok(true) => return Ok(object),
                    Ok(false) => last = "not yet".into(),
                    Err(why) => return Err(format!("{path}: {why}").into()),
                },
                Ok(None) => last = "not found".into(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(format!(
            "{path} not ready within {limit:?}: {last}; its events: {}",
            self.events_of(path)
        )
        .into())
    }

    /// The events about the object at `path` (`.../namespaces/<ns>/<kind>/<name>`), one
    /// `reason: message` per line, so a timeout says what the controllers saw.
    fn events_of(&self, path: &str) -> String {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (Some(ns_at), Some(name)) =
            (parts.iter().position(|p| *p == "namespaces"), parts.last())
        else {
            return "(not a namespaced object)".into();
        };
        let Some(ns) = parts.get(ns_at + 1) else {
            return "(no namespace in the path)".into();
        };
        let query =
            format!("/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name%3D{name}");
        match self.find(&query) {
            Ok(Some(list)) => {
                let lines: Vec<String> = list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        format!(
                            "{} ({}x, {}): {}",
                            e["reason"].as_str().unwrap_or("?"),
                            e["count"].as_u64().unwrap_or(1),
                            e["source"]["component"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or("").trim()
                        )
                    })
                    .collect();
                if lines.is_empty() {
                    "none".into()
                } else {
                    format!("\n  {}", lines.join("\n  "))
                }
            }
            Ok(None) => "none".into(),
            Err(e) => format!("(cannot list them: {e})"),
        }
    }

    /// Every container of the pods in [`NAMESPACE`] matching the (URL-encoded) selector
    /// query (`labelSelector=…` or `fieldSelector=…`) that is not ready, with why (`ErrImageNeverPull`, `CrashLoopBackOff`, …),
    /// so a timeout names the sidecar that never started.
    fn containers_not_ready(&self, selector: &str) -> String {
        let query = format!("/api/v1/namespaces/{NAMESPACE}/pods?{selector}");
        let list = match self.find(&query) {
            Ok(Some(list)) => list,
            Ok(None) => return "(no pod list)".into(),
            Err(e) => return format!("(cannot list them: {e})"),
        };
        let mut lines = Vec::new();
        for pod in list["items"].as_array().into_iter().flatten() {
            let name = pod["metadata"]["name"].as_str().unwrap_or("?");
            for c in pod["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["ready"] != true)
            {
                let state = &c["state"];
                let why = ["waiting", "terminated"]
                    .iter()
                    .find_map(|k| {
                        state[*k].as_object().map(|s| {
                            format!(
                                "{k}: {} {}",
                                s.get("reason").and_then(Value::as_str).unwrap_or("?"),
                                s.get("message")
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                                    .trim()
                            )
                        })
                    })
                    .unwrap_or_else(|| "running, not ready".into());
                lines.push(format!(
                    "{name}/{} ({why}; {} restarts)",
                    c["name"].as_str().unwrap_or("?"),
                    c["restartCount"].as_u64().unwrap_or(0)
                ));
            }
        }
        if lines.is_empty() {
            "all ready, or none listed".into()
        } else {
            format!("\n  {}", lines.join("\n  "))
        }
    }

    /// Polls until `path` is gone.
    pub fn wait_gone(&self, path: &str, limit: Duration) -> Result<(), Error> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.find(path)?.is_none() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(format!("{path} still exists after {limit:?}").into())
    }
}

fn condition_true(object: &Value, kind: &str) -> bool {
    object["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == kind && c["status"] == "True")
    })
}

/// The Kubernetes side of the VM cluster: control-plane processes on the host, the
/// kubelet node in the client VM, the chart installed. Drop stops the host processes
/// (the VM side dies with the VMs).
pub struct KubeNode<'a> {
    hc: &'a HanfsCluster,
    kube: &'a KubeApiServer,
    helm: PathBuf,
    /// The cluster's snapshot-controller (a cluster component, not the driver's: the
    /// chart's csi-snapshotter needs it and the snapshot CRDs). Stops on drop.
    _snapshot_controller: Sidecar,
}

/// Everything the kubelet node and the chart need, built (or found cached) on the host
/// before the VMs boot: the work is many times faster here than in a TCG guest, and the
/// client's data disk must exist when its VM starts.
pub struct Artifacts {
    kube_bin: PathBuf,
    containerd_bin: PathBuf,
    helm: PathBuf,
    sidecars: Binaries,
    /// ext4 image of containerd's store with [`NODE_IMAGES`] imported and unpacked: the
    /// client VM's data disk.
    pub client_disk: PathBuf,
}

impl Artifacts {
    /// `extra_images`: more OCI archives for the node's store (the storage e2e suite's
    /// test images).
    pub fn build(
        clock: Clock,
        repo: &Path,
        bins: &Path,
        extra_images: &[PathBuf],
    ) -> Result<Self, Error> {
        let kube_bin = testkit::kube::binaries()?;
        let containerd_bin = built(repo, "e2e/kube/build-containerd.sh", &[])?;
        let helm_bin = built(repo, "e2e/kube/build-helm.sh", &[])?;
        let sidecar_bin = built(repo, "e2e/kube/build-sidecars.sh", &[])?;
        let images = built(
            repo,
            "images/build.py",
            &[
                "--target-dir",
                &bins.display().to_string(),
                "--sidecar-bin-dir",
                &sidecar_bin.display().to_string(),
                "--extra-binary",
                &bins.join("record-writer").display().to_string(),
            ],
        )?;
        let mut disk_args = vec![
            containerd_bin.display().to_string(),
            crate::cluster::CLIENT_DISK_MIB.to_string(),
        ];
        disk_args.extend(
            NODE_IMAGES
                .iter()
                .map(|name| images.join(format!("{name}.oci.tar")).display().to_string()),
        );
        disk_args.extend(extra_images.iter().map(|p| p.display().to_string()));
        let disk_args: Vec<&str> = disk_args.iter().map(String::as_str).collect();
        let disk = built_file(repo, "e2e/kubelet/containerd-disk.sh", &disk_args)?;
        clock.log(
            "kubelet, containerd, helm, sidecars, images and the node's containerd disk built or cached",
        );
        Ok(Artifacts {
            kube_bin,
            containerd_bin,
            helm: helm_bin.join("helm"),
            sidecars: Binaries {
                crd: sidecar_bin.with_file_name("crd"),
                bin: sidecar_bin,
            },
            client_disk: disk,
        })
    }
}

/// What every cluster with CSI snapshots runs besides the driver: the snapshot CRDs
/// (created and Established) and the snapshot-controller, here a host process in the
/// cluster's namespace (no image of it is built).
fn snapshot_support(
    hc: &HanfsCluster,
    kube: &KubeApiServer,
    sidecars: &Binaries,
) -> Result<Sidecar, Error> {
    for crd in sidecars.crds()? {
        let (code, body) = kube.curl_file(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            &crd,
            "application/yaml",
        )?;
        if code != 201 {
            return Err(format!("creating CRD {}: HTTP {code}: {body}", crd.display()).into());
        }
    }
    let api = Api(kube);
    for crd in [
        "volumesnapshots",
        "volumesnapshotcontents",
        "volumesnapshotclasses",
    ] {
        api.wait(
            &format!(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}.snapshot.storage.k8s.io"
            ),
            LONG,
            |c| Ok(condition_true(c, "Established")),
        )?;
    }
    let controller = Sidecar::start(
        "snapshot-controller",
        kube.core_ns(),
        &sidecars.path("snapshot-controller"),
        &[format!("--kubeconfig={}", kube.kubeconfig().display())],
        &hc.workdir().join("snapshot-controller.log"),
    )?;
    hc.clock
        .log("snapshot CRDs Established, snapshot-controller started");
    Ok(controller)
}

impl<'a> KubeNode<'a> {
    /// Starts the control plane, makes the client VM a node (its data disk must be
    /// `artifacts.client_disk`, see [`HanfsCluster::start_with`]), installs the chart and
    /// waits until the driver is registered on the node and the controller is ready.
    pub fn start(hc: &'a HanfsCluster, artifacts: &Artifacts) -> Result<Self, Error> {
        let clock = hc.clock;
        let repo = hc.repo.clone();
        let kube_bin = &artifacts.kube_bin;
        let containerd_bin = &artifacts.containerd_bin;
        // Everything the guest needs, under its share.
        let share = hc.client().share_dir().join("kube");
        fs::create_dir_all(share.join("bin"))?;
        for (dir, name) in [
            (kube_bin, "kubelet"),
            (kube_bin, "kube-proxy"),
            (containerd_bin, "containerd"),
            (containerd_bin, "containerd-shim-runc-v2"),
            (containerd_bin, "ctr"),
        ] {
            link_or_copy(&dir.join(name), &share.join("bin").join(name))?;
        }
        let store = artifacts
            .client_disk
            .parent()
            .ok_or("the containerd disk has no folder")?
            .join("images");
        fs::copy(&store, share.join("images"))?;
        for file in [
            "node-up.sh",
            "containerd.toml",
            "kubelet.yaml",
            "kube-proxy.yaml",
            "cni.conflist",
        ] {
            fs::copy(repo.join("e2e/kubelet").join(file), share.join(file))?;
        }
        let kube = hc.api()?;
        fs::copy(kube.kubeconfig(), share.join("kubeconfig"))?;
        fs::copy(
            kube.workdir().join("kubelet-client-ca.crt"),
            share.join("kubelet-client-ca.crt"),
        )?;

        let snapshot_controller = snapshot_support(hc, kube, &artifacts.sidecars)?;
        let node = KubeNode {
            hc,
            kube,
            helm: artifacts.helm.clone(),
            _snapshot_controller: snapshot_controller,
        };
        let up = hc
            .client()
            .exec("bash /hanfs/share/kube/node-up.sh", START_LIMIT)?;
        if !up.success() || !up.stdout.contains("node-up: ok") {
            return Err(format!(
                "node-up.sh in the client VM failed (rc {}): {}{}",
                up.rc, up.stdout, up.stderr
            )
            .into());
        }
        clock.log(&format!(
            "client VM runs containerd + kubelet: {}",
            up.stdout.trim().replace('\n', "; ")
        ));
        let started = Instant::now();
        node.api()
            .wait(&format!("/api/v1/nodes/{CLIENT}"), START_LIMIT, |n| {
                Ok(condition_true(n, "Ready"))
            })?;
        clock.log(&format!(
            "node {CLIENT} Ready after {:.1}s",
            started.elapsed().as_secs_f64()
        ));
        node.helm_install()?;
        Ok(node)
    }

    pub fn api(&self) -> Api<'_> {
        Api(self.kube)
    }

    /// The namespace and the `kubernetes.io/tls` Secret holding the controller's client
    /// certificate from the e2e CA (`cluster::write_pki`).
    fn create_tls_secret(&self) -> Result<(), Error> {
        let api = self.api();
        if api
            .find(&format!("/api/v1/namespaces/{NAMESPACE}"))?
            .is_none()
        {
            api.create(
                "/api/v1/namespaces",
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
            )?;
        }
        let dir = self.hc.workdir().join(crate::cluster::TLS_CONTROLLER_DIR);
        let mut data = serde_json::Map::new();
        for key in ["ca.crt", "tls.crt", "tls.key"] {
            data.insert(key.into(), fs::read_to_string(dir.join(key))?.into());
        }
        api.create(
            &format!("/api/v1/namespaces/{NAMESPACE}/secrets"),
            &json!({
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": TLS_SECRET, "namespace": NAMESPACE},
                // stringData: PEM is text; the API server stores it base64-encoded.
                "stringData": data,
            }),
        )?;
        Ok(())
    }

    /// `helm install` of the chart as an admin with storage servers outside the cluster
    /// would do it, then waits for the node plugin to register with kubelet (CSINode) and
    /// the controller Deployment to be available.
    fn helm_install(&self) -> Result<(), Error> {
        let hc = self.hc;
        let token = fs::read_to_string(hc.workdir().join("backend-token"))?;
        // The storage VMs trust the e2e CA only: the chart's controller presents the
        // e2e controller certificate, from a Secret made before the install (as an admin
        // with external storage servers does: tls.existingSecret).
        self.create_tls_secret()?;
        let values = hc.workdir().join("kube/values.yaml");
        // As an admin with external agents does: the chart's rootSquash says what theirs
        // do, and the CSIDriver's fsGroupPolicy follows it.
        let root_squash = hc.exports.root_squash;
        fs::write(
            &values,
            format!(
                "clusterId: {CLUSTER_ID}\n\
                 image:\n  pullPolicy: Never\n\
                 agent:\n  enabled: false\n  nfsd:\n    rootSquash: {root_squash}\n\
                 backend:\n  address: {VIP}:9820\n  token: {token}\n  nfsShare: /export\n\
                 tls:\n  existingSecret: {TLS_SECRET}\n\
                 controller:\n  livenessProbe:\n    timeoutSeconds: 30\n    failureThreshold: 10\n\
                 node:\n  livenessProbe:\n    timeoutSeconds: 30\n    failureThreshold: 10\n"
            ),
        )?;
        let started = Instant::now();
        let mut helm = Command::new(&self.helm);
        helm.args(["install", "hanfs"])
            .arg(hc.repo.join("charts/hanfs"))
            .args(["--namespace", NAMESPACE, "--create-namespace", "--values"])
            .arg(&values)
            .arg("--kubeconfig")
            .arg(self.kube.kubeconfig());
        let out = testkit::cmd::output(&mut hc.vms().command_in(&helm), LONG)?;
        if !out.status.success() {
            return Err(format!(
                "helm install: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let api = self.api();
        // The suite's fsgroup specs test kubelet's chown: it only reaches the server as
        // root without root_squash, and the chart must have said so to kubelet.
        let policy =
            api.get("/apis/storage.k8s.io/v1/csidrivers/hanfs.csi.io")?["spec"]["fsGroupPolicy"]
                .clone();
        let want = if root_squash { "None" } else { "File" };
        if policy != want {
            return Err(format!(
                "CSIDriver fsGroupPolicy is {policy}, want {want} for agents with root_squash {root_squash}"
            )
            .into());
        }
        hc.clock.log(&format!(
            "helm install: CSIDriver fsGroupPolicy {want} (agents' root_squash: {root_squash})"
        ));
        api.wait(
            &format!("/apis/storage.k8s.io/v1/csinodes/{CLIENT}"),
            START_LIMIT,
            |n| {
                Ok(n["spec"]["drivers"]
                    .as_array()
                    .is_some_and(|ds| ds.iter().any(|d| d["name"] == "hanfs.csi.io")))
            },
        )?;
        hc.clock.log(&format!(
            "helm install: the node plugin registered hanfs.csi.io with kubelet (CSINode) {:.1}s after install",
            started.elapsed().as_secs_f64()
        ));
        api.wait(
            &format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/hanfs-controller"),
            START_LIMIT,
            // Not the Available condition: with one replica and the default maxUnavailable
            // it holds with no pod ready, which hid a sidecar that never started.
            |d| {
                let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
                Ok(d["status"]["readyReplicas"].as_i64().unwrap_or(0) >= want)
            },
        )
        .map_err(|e| {
            format!(
                "{e}; its pods' containers: {}",
                api.containers_not_ready("labelSelector=app.kubernetes.io/component%3Dcontroller")
            )
        })?;
        hc.clock.log(&format!(
            "helm install: controller Deployment's pods ready (every container) {:.1}s after install",
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// A PVC of the chart's StorageClass; returns once it is Bound, with its PV's volume id.
    pub fn bound_pvc(&self, name: &str, size: &str) -> Result<String, Error> {
        let api = self.api();
        let ns = format!("/api/v1/namespaces/{NAMESPACE}");
        api.create(
            &format!("{ns}/persistentvolumeclaims"),
            &json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": STORAGE_CLASS,
                    "resources": {"requests": {"storage": size}}
                }
            }),
        )?;
        let pvc = api.wait(
            &format!("{ns}/persistentvolumeclaims/{name}"),
            // The provisioner's first CreateVolume after install took 61-123 s here, and
            // more than 300 s once on a loaded host.
            START_LIMIT + LONG,
            |p| Ok(p["status"]["phase"] == "Bound"),
        )?;
        let pv_name = pvc["spec"]["volumeName"]
            .as_str()
            .ok_or("a Bound PVC without spec.volumeName")?;
        let pv = api.get(&format!("/api/v1/persistentvolumes/{pv_name}"))?;
        Ok(pv["spec"]["csi"]["volumeHandle"]
            .as_str()
            .ok_or("the PV has no CSI volumeHandle")?
            .to_owned())
    }

    /// Starts a pod that runs `record-writer` with `args` on the PVC `claim` (mounted at
    /// /data), leaving scheduling to kube-scheduler; restartPolicy Never, so a restart
    /// cannot hide a crash.
    pub fn start_pod(&self, name: &str, claim: &str, args: &[&str]) -> Result<(), Error> {
        self.api().create(
            &format!("/api/v1/namespaces/{NAMESPACE}/pods"),
            &json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "writer",
                        "image": WRITER_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["/usr/local/bin/record-writer"],
                        "args": args,
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                    }],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
                }
            }),
        )?;
        Ok(())
    }

    /// Waits for the pod to reach `phase` (Running, Succeeded); a Failed pod is an error
    /// at once, with its container's state.
    pub fn wait_pod(&self, name: &str, phase: &str, limit: Duration) -> Result<Value, Error> {
        self.api().wait(
            &format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}"),
            limit,
            |p| {
                let now = p["status"]["phase"].as_str().unwrap_or("");
                if now == "Failed" && phase != "Failed" {
                    return Err(format!("pod failed: {}", p["status"]["containerStatuses"]));
                }
                Ok(now == phase)
            },
        )
    }

    /// The pod's container log as the kubelet node has it (CRI format: time, stream,
    /// tag, line), without the CRI prefix.
    pub fn pod_log(&self, name: &str) -> Result<String, Error> {
        let raw = self.hc.client().run(
            &format!("cat /var/log/pods/{NAMESPACE}_{name}_*/writer/0.log"),
            SHORT,
        )?;
        Ok(raw
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// The pod's log as `kubectl logs` gets it: the API server asks the kubelet (port 10250,
    /// authenticated by the client certificate e2e/kube/start.sh made). The storage e2e
    /// suite execs into pods and reads their logs this way.
    pub fn pod_log_via_api(&self, name: &str) -> Result<String, Error> {
        let path = format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}/log?container=writer");
        let (code, body) = self.kube.curl("GET", &path, None)?;
        if code != 200 {
            return Err(format!("GET {path}: HTTP {code}: {body}").into());
        }
        Ok(body)
    }

    /// The last lines of every container log of the chart's controller and node pods, as
    /// the kubelet node has them: printed when a pod check fails, so the run says what
    /// the sidecars and hanfs saw.
    pub fn dump_chart_logs(&self) {
        let script = format!(
            "for f in /var/log/pods/{NAMESPACE}_hanfs-*/*/*.log; do \
               echo \"---- $f\"; tail -n 40 \"$f\" | cut -c1-400; done"
        );
        match self.hc.client().run(&script, SHORT) {
            Ok(text) => println!("---- chart pod logs ----\n{text}"),
            Err(e) => println!("---- chart pod logs: cannot read them: {e}"),
        }
    }

    pub fn delete_pod(&self, name: &str) -> Result<(), Error> {
        let path = format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}");
        self.api().delete(&path)?;
        self.api().wait_gone(&path, LONG)
    }

    /// The records file of volume `volume_id` as the active storage server has it.
    fn server_copy(&self, volume_id: &str, file: &str) -> Result<String, Error> {
        let dir = volume_id
            .rsplit('/')
            .next()
            .ok_or("a volume id without a directory")?;
        let (active, _) = self.hc.wait_active(None, LONG)?;
        Ok(self
            .hc
            .vm(&active)
            .run(&format!("cat /export/volumes/{dir}/{file}"), SHORT)?)
    }

    /// One pod writes records and is deleted; a second pod on the same PVC reads them
    /// back. Returns a one-line result; an error when anything acknowledged is missing.
    pub fn write_then_read(&self) -> Result<String, Error> {
        let clock = self.hc.clock;
        let started = Instant::now();
        let volume = self.bound_pvc("records", "64Mi")?;
        clock.log(&format!(
            "PVC records Bound to {volume} after {:.1}s",
            started.elapsed().as_secs_f64()
        ));
        self.start_pod("writer", "records", &["write", "/data/records.log", "10"])?;
        // Its start waits for the attach, and the sidecars may still be restarting
        // after install under TCG (one run: 300 s were not enough).
        self.wait_pod("writer", "Succeeded", START_LIMIT + LONG)?;
        let acks = self.pod_log("writer")?;
        let via_api = self.pod_log_via_api("writer")?;
        if via_api.trim_end() != acks.trim_end() {
            return Err(format!(
                "the writer's log through the API server (kubelet :10250) differs from the node's file: {} vs {} lines",
                via_api.lines().count(),
                acks.lines().count()
            )
            .into());
        }
        clock.log(&format!(
            "writer pod done {:.1}s after the PVC was created",
            started.elapsed().as_secs_f64()
        ));
        self.delete_pod("writer")?;
        self.start_pod("reader", "records", &["read", "/data/records.log"])?;
        self.wait_pod("reader", "Succeeded", START_LIMIT + LONG)?;
        let read = self.pod_log("reader")?;
        self.delete_pod("reader")?;
        let records: String = read.lines().skip(1).map(|l| format!("{l}\n")).collect();
        let m = measure(&acks, &records, 0.0)?;
        if m.acked == 0 || m.lost > 0 || m.io_errors > 0 {
            return Err(format!(
                "pod write/read: {} acknowledged, {} missing in the second pod's read, {} I/O errors",
                m.acked, m.lost, m.io_errors
            )
            .into());
        }
        Ok(format!(
            "pod write/read over NFS: {} records acknowledged by pod writer, all {} read back by pod reader ({}); the writer's log also read through the API server from kubelet",
            m.acked,
            m.acked,
            read.lines()
                .next()
                .unwrap_or("the reader printed no summary")
        ))
    }

    /// A failover trial under a pod: the writer pod writes (with a lock when asked) while
    /// `fault` runs `writer.fault_after` after its first acknowledgement; measured like the
    /// VM-level trials, plus: the pod was not restarted and ended Succeeded.
    pub fn pod_trial(
        &self,
        scenario: &str,
        writer: Writer,
        fault: impl FnOnce() -> Result<(), Error>,
    ) -> Result<Trial, Error> {
        let clock: Clock = self.hc.clock;
        let pod = format!("{scenario}-{}", if writer.lock { "lock" } else { "nolock" });
        let claim = "failover";
        let api = self.api();
        let claim_path = format!("/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/{claim}");
        let volume = match api.find(&claim_path)? {
            Some(pvc) => {
                let pv = api.get(&format!(
                    "/api/v1/persistentvolumes/{}",
                    pvc["spec"]["volumeName"]
                        .as_str()
                        .ok_or("PVC without a PV")?
                ))?;
                pv["spec"]["csi"]["volumeHandle"]
                    .as_str()
                    .ok_or("PV without a volumeHandle")?
                    .to_owned()
            }
            None => self.bound_pvc(claim, "128Mi")?,
        };
        let file = format!("{pod}.log");
        // A pod's start is seen late under TCG (kubelet's status and log lag by tens of
        // seconds), so the writer runs longer than the fault needs; the fault is timed
        // from the writer's own first acknowledgement, not from when the harness saw it.
        let seconds = (writer.seconds + POD_WRITER_SLACK_S).to_string();
        let mut args = vec!["write", "", &seconds];
        let path = format!("/data/{file}");
        args[1] = &path;
        if writer.lock {
            args.push("lock");
        }
        self.hc.client().run("dmesg -c >/dev/null", SHORT)?;
        let started = Instant::now();
        self.start_pod(&pod, claim, &args)?;
        // The fault lands once the writer is really writing, not while its pod starts:
        // its log file on the node shows the first acknowledgement before the API server
        // reports the pod Running.
        let first_ack_t = loop {
            // Until the container starts there is no log to read: nothing acknowledged yet.
            if let Some(t) = self.pod_log(&pod).ok().as_deref().and_then(first_ack_time) {
                break t;
            }
            // A pod's start alone can take START_LIMIT under TCG on a loaded host.
            if started.elapsed() > START_LIMIT + LONG {
                return Err(format!(
                    "pod {pod} acknowledged nothing within {:?} of its creation; its log: {:?}; its containers: {}; its events: {}",
                    START_LIMIT + LONG,
                    self.pod_log(&pod).unwrap_or_else(|e| format!("unreadable: {e}")),
                    api.containers_not_ready(&format!("fieldSelector=metadata.name%3D{pod}")),
                    api.events_of(&format!("/api/v1/namespaces/{NAMESPACE}/pods/{pod}"))
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        clock.log(&format!(
            "pod {scenario}: first acknowledgement seen {:.1}s after the pod was created",
            started.elapsed().as_secs_f64()
        ));
        let vm_now = || -> Result<f64, Error> {
            Ok(self
                .hc
                .client()
                .run("python3 -c 'import time; print(time.monotonic())'", SHORT)?
                .trim()
                .parse()?)
        };
        let due = first_ack_t + writer.fault_after.as_secs_f64();
        let lag = vm_now()? - due;
        if lag < 0.0 {
            std::thread::sleep(Duration::from_secs_f64(-lag));
        }
        let fault_at = vm_now()?;
        // The writer must still be writing well after the fault, or the stall cannot be
        // read; say so now instead of after the trial.
        let writer_ends = first_ack_t + f64::from(writer.seconds + POD_WRITER_SLACK_S);
        if writer_ends - fault_at < f64::from(writer.seconds) - writer.fault_after.as_secs_f64() {
            return Err(format!(
                "pod {pod}: the fault would land {:.1}s after the writer's first acknowledgement, too close to its end for a stall to be read (the harness saw the pod {:.1}s late)",
                fault_at - first_ack_t,
                lag.max(0.0)
            )
            .into());
        }
        clock.log(&format!("pod {scenario}: fault"));
        let fault_unix = crate::breakdown::now_unix()?;
        fault()?;
        clock.log(&format!("pod {scenario}: fault injected"));
        let done = self.wait_pod(
            &pod,
            "Succeeded",
            Duration::from_secs(u64::from(writer.seconds + POD_WRITER_SLACK_S) + 240),
        )?;
        let restarts = done["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .ok_or("the pod's status has no restartCount")?;
        let acks = self.pod_log(&pod)?;
        let written = self.server_copy(&volume, &file)?;
        let locks_lost: usize = self
            .hc
            .client()
            .run("dmesg | grep -c 'lost .* lock' || true", SHORT)?
            .trim()
            .parse()
            .map_err(|e| format!("counting lost locks: {e}"))?;
        self.delete_pod(&pod)?;
        let m = measure(&acks, &written, fault_at)?;
        let mut trial = Trial {
            setup: "hanfs",
            scenario: format!("pod {scenario}"),
            lock: writer.lock,
            stall_s: m.stall_s,
            resumed_s: m.resumed_s,
            fault_unix,
            acked: m.acked,
            lost: m.lost,
            io_errors: m.io_errors,
            locks_lost,
            split_brain: 0,
            stale_handles: 0,
            notes: vec![format!("pod restarts {restarts}")],
            broken: Vec::new(),
        };
        if restarts != 0 {
            trial
                .broken
                .push(format!("the pod was restarted {restarts} times"));
        }
        if m.acked == 0 {
            trial.broken.push("the pod acknowledged nothing".into());
        }
        Ok(trial)
    }
}

#[cfg(test)]
mod tests {
    use super::first_ack_time;

    #[test]
    fn first_ack_time_reads_the_first_acknowledgement() {
        let log = "start 10.000\nerr 0 10.5 5\nack 1 11.250\nack 2 12.000\ndone 13.0";
        assert_eq!(first_ack_time(log), Some(11.25));
        assert_eq!(first_ack_time("err 0 10.5 5\ndone 11.0"), None);
        assert_eq!(first_ack_time("ack 1 garbage"), None);
        assert_eq!(first_ack_time(""), None);
    }
}

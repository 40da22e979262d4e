//! Compiles the CSI spec's `csi.proto`, kubelet's plugin-registration `api.proto` and
//! our `backend.proto`.
//!
//! The two upstream files are not vendored: they come from their own releases, the Go
//! modules `github.com/container-storage-interface/spec@v1.12.0` and
//! `k8s.io/kubelet@v0.37.2`, fetched with `go mod download` (the Go module proxy
//! verifies them against the checksum database). Set `CSI_PROTO` / `PLUGINREGISTRATION_PROTO`
//! to a file's path to build without Go.

use std::path::{Path, PathBuf};
use std::process::Command;

const CSI_MODULE: &str = "github.com/container-storage-interface/spec@v1.12.0";
/// Holds the kubelet plugin-registration API that replaces node-driver-registrar.
const KUBELET_MODULE: &str = "k8s.io/kubelet@v0.37.2";
const REGISTRATION_PROTO_IN_MODULE: &str = "pkg/apis/pluginregistration/v1/api.proto";

/// Messages that carry a `secrets` map: their `Debug` is written by hand in
/// `src/redact.rs` so that secrets never reach a log line.
const MESSAGES_WITH_SECRETS: &[&str] = &[
    "ControllerExpandVolumeRequest",
    "ControllerModifyVolumeRequest",
    "ControllerPublishVolumeRequest",
    "ControllerUnpublishVolumeRequest",
    "CreateSnapshotRequest",
    "CreateVolumeGroupSnapshotRequest",
    "CreateVolumeRequest",
    "DeleteSnapshotRequest",
    "DeleteVolumeGroupSnapshotRequest",
    "DeleteVolumeRequest",
    "GetMetadataAllocatedRequest",
    "GetMetadataDeltaRequest",
    "GetSnapshotRequest",
    "GetVolumeGroupSnapshotRequest",
    "ListSnapshotsRequest",
    "NodeExpandVolumeRequest",
    "NodePublishVolumeRequest",
    "NodeStageVolumeRequest",
    "ValidateVolumeCapabilitiesRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=CSI_PROTO");
    println!("cargo:rerun-if-env-changed=PLUGINREGISTRATION_PROTO");
    println!("cargo:rerun-if-changed=backend.proto");
    let csi_proto = match std::env::var_os("CSI_PROTO") {
        Some(path) => PathBuf::from(path),
        None => module_file(CSI_MODULE, "csi.proto", "CSI_PROTO")?,
    };
    let csi_dir = csi_proto
        .parent()
        .ok_or("CSI_PROTO has no parent directory")?;
    let registration_upstream = match std::env::var_os("PLUGINREGISTRATION_PROTO") {
        Some(path) => PathBuf::from(path),
        None => module_file(
            KUBELET_MODULE,
            REGISTRATION_PROTO_IN_MODULE,
            "PLUGINREGISTRATION_PROTO",
        )?,
    };
    let registration_dir = PathBuf::from(std::env::var("OUT_DIR")?).join("pluginregistration");
    std::fs::create_dir_all(&registration_dir)?;
    let registration_proto = registration_dir.join("pluginregistration.proto");
    let upstream_text = std::fs::read_to_string(&registration_upstream)
        .map_err(|e| format!("reading {}: {e}", registration_upstream.display()))?;
    std::fs::write(&registration_proto, without_gogoproto(&upstream_text)?)?;
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);

    let files = protox::compile(
        [
            csi_proto.as_path(),
            registration_proto.as_path(),
            &manifest_dir.join("backend.proto"),
        ],
        [csi_dir, registration_dir.as_path(), manifest_dir.as_path()],
    )?;
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .skip_debug(MESSAGES_WITH_SECRETS.iter().map(|m| format!(".csi.v1.{m}")))
        .compile_fds(files)?;
    Ok(())
}

/// Older releases of kubelet's `api.proto` import gogo protobuf and set file-level
/// `option (gogoproto.…)` lines that only steer Go code generation. Rather than vendor
/// gogo.proto for protox, those lines are dropped from the text before compiling
/// (v0.37.2 has none, so today this changes nothing). A gogo option anywhere else
/// (on a field, inline) would change what we compile, so it stops the build instead.
fn without_gogoproto(text: &str) -> Result<String, String> {
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        let gogo_import = trimmed.starts_with("import") && trimmed.contains("gogoproto/gogo.proto");
        let gogo_option = trimmed.starts_with("option (gogoproto.");
        if gogo_import || gogo_option {
            continue;
        }
        if trimmed.contains("gogoproto") {
            return Err(format!(
                "{REGISTRATION_PROTO_IN_MODULE} uses a gogoproto option this build cannot drop: {line:?}"
            ));
        }
        kept.push_str(line);
        kept.push('\n');
    }
    Ok(kept)
}

/// Asks the Go toolchain for the directory of a pinned module and returns `file` in it.
fn module_file(
    module: &str,
    file: &str,
    override_env: &str,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    // Run outside any Go module so that no go.mod of a parent directory interferes.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let output = Command::new("go")
        .args(["mod", "download", "-json", module])
        .current_dir(&out_dir)
        .env("GOFLAGS", "-mod=mod")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "running `go mod download {module}` to fetch {file}: {e} \
                 (install Go, or set {override_env} to that file of {module})"
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "`go mod download -json {module}` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let info: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let dir = info["Dir"]
        .as_str()
        .ok_or("`go mod download -json` printed no Dir field")?;
    let path = Path::new(dir).join(file);
    if !path.is_file() {
        return Err(format!("{} does not exist after go mod download", path.display()).into());
    }
    Ok(path)
}

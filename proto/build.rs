//! Compiles the CSI spec's `csi.proto` and our `backend.proto`.
//!
//! `csi.proto` is not vendored: it comes from the spec's own release, the Go module
//! `github.com/container-storage-interface/spec@v1.12.0`, fetched with `go mod download`
//! (the Go module proxy verifies it against the checksum database). Set `CSI_PROTO` to
//! a `csi.proto` path to build without Go.

use std::path::{Path, PathBuf};
use std::process::Command;

const CSI_MODULE: &str = "github.com/container-storage-interface/spec@v1.12.0";

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
    println!("cargo:rerun-if-changed=backend.proto");
    let csi_proto = match std::env::var_os("CSI_PROTO") {
        Some(path) => PathBuf::from(path),
        None => download_csi_proto()?,
    };
    let csi_dir = csi_proto
        .parent()
        .ok_or("CSI_PROTO has no parent directory")?;
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);

    let files = protox::compile(
        [csi_proto.as_path(), &manifest_dir.join("backend.proto")],
        [csi_dir, manifest_dir.as_path()],
    )?;
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .skip_debug(MESSAGES_WITH_SECRETS.iter().map(|m| format!(".csi.v1.{m}")))
        .compile_fds(files)?;
    Ok(())
}

/// Asks the Go toolchain for the module directory of the pinned CSI spec release.
fn download_csi_proto() -> Result<PathBuf, Box<dyn std::error::Error>> {
    // Run outside any Go module so that no go.mod of a parent directory interferes.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let output = Command::new("go")
        .args(["mod", "download", "-json", CSI_MODULE])
        .current_dir(&out_dir)
        .env("GOFLAGS", "-mod=mod")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "running `go mod download {CSI_MODULE}` to fetch csi.proto: {e} \
                 (install Go, or set CSI_PROTO to a csi.proto of spec v1.12.0)"
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "`go mod download -json {CSI_MODULE}` failed ({}): {}{}",
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
    let path = Path::new(dir).join("csi.proto");
    if !path.is_file() {
        return Err(format!("{} does not exist after go mod download", path.display()).into());
    }
    Ok(path)
}

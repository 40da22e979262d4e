//! Parameters from the StorageClass (CreateVolume, GetCapacity), the
//! VolumeAttributesClass (mutable parameters) and the VolumeSnapshotClass.
//!
//! Keys are those of csi-driver-nfs (matched case-insensitively, as it does) so a
//! StorageClass can switch drivers unchanged: `subDir`, `onDelete`, `mountPermissions`,
//! `server`, `share`; plus the metadata csi-provisioner adds with
//! `--extra-create-metadata`. Anything else is refused, so a typo never silently
//! becomes a default.

use common::ids::{ClusterId, MAX_ID_LEN, VolumeDir};
use std::collections::HashMap;
use thiserror::Error;

pub const PVC_NAME_KEY: &str = "csi.storage.k8s.io/pvc/name";
pub const PVC_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pvc/namespace";
pub const PV_NAME_KEY: &str = "csi.storage.k8s.io/pv/name";
const SNAPSHOT_METADATA_KEYS: &[&str] = &[
    "csi.storage.k8s.io/volumesnapshot/name",
    "csi.storage.k8s.io/volumesnapshot/namespace",
    "csi.storage.k8s.io/volumesnapshotcontent/name",
];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParamError {
    /// A key hanfs does not know.
    #[error("unknown parameter {key:?}; hanfs accepts {accepted}")]
    Unknown { key: String, accepted: &'static str },
    /// A known key with a bad value.
    #[error("parameter {key}: {problem}")]
    BadValue { key: &'static str, problem: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDelete {
    #[default]
    Delete,
    Retain,
    Archive,
}

/// What the controller serves, for checking `server`/`share` parameters against.
#[derive(Debug, Clone, Default)]
pub struct ExportConfig {
    /// The NFS server clients mount (the VIP); `None` in local mode.
    pub server: Option<String>,
    /// The exported path on that server.
    pub share: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeParams {
    pub sub_dir: Option<String>,
    pub on_delete: OnDelete,
    /// `None`: the server default.
    pub mount_permissions: Option<u32>,
    pub pvc_name: Option<String>,
    pub pvc_namespace: Option<String>,
    pub pv_name: Option<String>,
}

const VOLUME_KEYS: &str = "subDir, onDelete, mountPermissions, server, share (and the csi.storage.k8s.io/pvc|pv metadata keys)";

/// Parses StorageClass parameters.
pub fn parse_volume_params(
    params: &HashMap<String, String>,
    export: &ExportConfig,
) -> Result<VolumeParams, ParamError> {
    let mut parsed = VolumeParams::default();
    for (key, value) in params {
        match key.to_ascii_lowercase().as_str() {
            "subdir" => parsed.sub_dir = Some(value.clone()),
            "ondelete" => parsed.on_delete = parse_on_delete(value)?,
            "mountpermissions" => parsed.mount_permissions = parse_mode(value)?,
            "server" => check_same("server", value, export.server.as_deref())?,
            "share" => check_same(
                "share",
                value.trim_end_matches('/'),
                Some(export.share.trim_end_matches('/')),
            )?,
            _ if key == PVC_NAME_KEY => parsed.pvc_name = Some(value.clone()),
            _ if key == PVC_NAMESPACE_KEY => parsed.pvc_namespace = Some(value.clone()),
            _ if key == PV_NAME_KEY => parsed.pv_name = Some(value.clone()),
            _ => {
                return Err(ParamError::Unknown {
                    key: key.clone(),
                    accepted: VOLUME_KEYS,
                });
            }
        }
    }
    Ok(parsed)
}

/// Parses VolumeAttributesClass parameters: only `onDelete` can change on a live volume.
pub fn parse_mutable_params(
    params: &HashMap<String, String>,
) -> Result<Option<OnDelete>, ParamError> {
    let mut on_delete = None;
    for (key, value) in params {
        match key.to_ascii_lowercase().as_str() {
            "ondelete" => on_delete = Some(parse_on_delete(value)?),
            _ => {
                return Err(ParamError::Unknown {
                    key: key.clone(),
                    accepted: "onDelete (the only parameter a VolumeAttributesClass can change)",
                });
            }
        }
    }
    Ok(on_delete)
}

/// Checks VolumeSnapshotClass parameters: hanfs has none besides the snapshotter's metadata.
pub fn check_snapshot_params(params: &HashMap<String, String>) -> Result<(), ParamError> {
    match params
        .keys()
        .find(|k| !SNAPSHOT_METADATA_KEYS.contains(&k.as_str()))
    {
        Some(key) => Err(ParamError::Unknown {
            key: key.clone(),
            accepted: "no snapshot parameters (only the csi.storage.k8s.io/volumesnapshot* metadata keys)",
        }),
        None => Ok(()),
    }
}

fn parse_on_delete(value: &str) -> Result<OnDelete, ParamError> {
    match value.to_ascii_lowercase().as_str() {
        "delete" => Ok(OnDelete::Delete),
        "retain" => Ok(OnDelete::Retain),
        "archive" => Ok(OnDelete::Archive),
        _ => Err(ParamError::BadValue {
            key: "onDelete",
            problem: format!("{value:?} is not one of delete, retain, archive"),
        }),
    }
}

/// An octal mode like `0777` or `755`; `0` means "leave the default" (csi-driver-nfs).
fn parse_mode(value: &str) -> Result<Option<u32>, ParamError> {
    match u32::from_str_radix(value, 8) {
        Ok(0) => Ok(None),
        Ok(mode) if mode <= 0o7777 => Ok(Some(mode)),
        _ => Err(ParamError::BadValue {
            key: "mountPermissions",
            problem: format!("{value:?} is not an octal mode between 0 and 7777, e.g. 0777"),
        }),
    }
}

fn check_same(key: &'static str, given: &str, served: Option<&str>) -> Result<(), ParamError> {
    match served {
        Some(served) if served == given => Ok(()),
        Some(served) => Err(ParamError::BadValue {
            key,
            problem: format!(
                "{given:?} is not what this hanfs installation serves ({served:?}); remove it from the StorageClass"
            ),
        }),
        None => Err(ParamError::BadValue {
            key,
            problem: format!(
                "{given:?} given, but this hanfs installation runs in local mode without an NFS {key}"
            ),
        }),
    }
}

/// Renders `subDir` into a directory name: `${pvc.metadata.name}`,
/// `${pvc.metadata.namespace}` and `${pv.metadata.name}` are replaced by the metadata
/// csi-provisioner passes with `--extra-create-metadata`.
pub fn render_sub_dir(
    template: &str,
    params: &VolumeParams,
    cluster: &ClusterId,
) -> Result<VolumeDir, ParamError> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| ParamError::BadValue {
            key: "subDir",
            problem: format!("{template:?} has an unclosed ${{"),
        })?;
        let variable = &after[..end];
        let value = match variable {
            "pvc.metadata.name" => params.pvc_name.as_deref(),
            "pvc.metadata.namespace" => params.pvc_namespace.as_deref(),
            "pv.metadata.name" => params.pv_name.as_deref(),
            _ => {
                return Err(ParamError::BadValue {
                    key: "subDir",
                    problem: format!(
                        "unknown variable ${{{variable}}}; use ${{pvc.metadata.name}}, ${{pvc.metadata.namespace}} or ${{pv.metadata.name}}"
                    ),
                });
            }
        };
        let value = value.ok_or_else(|| ParamError::BadValue {
            key: "subDir",
            problem: format!("uses ${{{variable}}} but the request carries no such metadata: run csi-provisioner with --extra-create-metadata"),
        })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if out.contains('/') {
        return Err(ParamError::BadValue {
            key: "subDir",
            problem: format!(
                "{out:?} has a '/': a hanfs volume is one directory level, join parts with '-' instead"
            ),
        });
    }
    let budget = MAX_ID_LEN - 4 - cluster.as_str().len();
    if out.len() > budget {
        return Err(ParamError::BadValue {
            key: "subDir",
            problem: format!(
                "renders to {} bytes; at most {budget} fit into a volume id",
                out.len()
            ),
        });
    }
    VolumeDir::parse(&out).map_err(|e| ParamError::BadValue {
        key: "subDir",
        problem: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn export() -> ExportConfig {
        ExportConfig {
            server: Some("10.0.0.100".into()),
            share: "/export".into(),
        }
    }

    #[test]
    fn csi_driver_nfs_keys_parse_case_insensitively() {
        let p = parse_volume_params(
            &map(&[
                ("subdir", "x"),
                ("OnDelete", "Archive"),
                ("mountPermissions", "0750"),
                ("server", "10.0.0.100"),
                ("share", "/export/"),
            ]),
            &export(),
        )
        .unwrap();
        assert_eq!(p.sub_dir.as_deref(), Some("x"));
        assert_eq!(p.on_delete, OnDelete::Archive);
        assert_eq!(p.mount_permissions, Some(0o750));
        assert_eq!(
            parse_volume_params(&map(&[("mountPermissions", "0")]), &export())
                .unwrap()
                .mount_permissions,
            None
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_accepted_set() {
        let err = parse_volume_params(&map(&[("subDirr", "x")]), &export()).unwrap_err();
        assert!(err.to_string().contains("subDir, onDelete"), "{err}");
        for (k, v) in [
            ("onDelete", "shred"),
            ("mountPermissions", "999"),
            ("mountPermissions", "rwx"),
            ("server", "10.9.9.9"),
            ("share", "/other"),
        ] {
            assert!(
                matches!(
                    parse_volume_params(&map(&[(k, v)]), &export()),
                    Err(ParamError::BadValue { .. })
                ),
                "{k}={v}"
            );
        }
        let local = ExportConfig::default();
        assert!(parse_volume_params(&map(&[("server", "x")]), &local).is_err());
        assert!(parse_mutable_params(&map(&[("XXX_FakeKey", "v")])).is_err());
        assert_eq!(
            parse_mutable_params(&map(&[("onDelete", "retain")])).unwrap(),
            Some(OnDelete::Retain)
        );
        assert!(
            check_snapshot_params(&map(&[("csi.storage.k8s.io/volumesnapshot/name", "s")])).is_ok()
        );
        assert!(check_snapshot_params(&map(&[("compress", "yes")])).is_err());
    }

    #[test]
    fn sub_dir_templates_render_and_refuse_what_would_escape() {
        let cluster = ClusterId::parse("c1").unwrap();
        let p = VolumeParams {
            pvc_name: Some("data".into()),
            pvc_namespace: Some("shop".into()),
            pv_name: Some("pvc-123".into()),
            ..Default::default()
        };
        let dir = render_sub_dir(
            "${pvc.metadata.namespace}-${pvc.metadata.name}-${pv.metadata.name}",
            &p,
            &cluster,
        )
        .unwrap();
        assert_eq!(dir.as_str(), "shop-data-pvc-123");
        for bad in [
            "${pvc.metadata.namespace}/${pvc.metadata.name}",
            "..",
            "${nope}",
            "${pvc.metadata.name",
            "a b",
        ] {
            assert!(render_sub_dir(bad, &p, &cluster).is_err(), "{bad}");
        }
        let no_metadata = VolumeParams::default();
        let err = render_sub_dir("${pvc.metadata.name}", &no_metadata, &cluster).unwrap_err();
        assert!(err.to_string().contains("--extra-create-metadata"), "{err}");
        let traversal = VolumeParams {
            pvc_name: Some("../../etc".into()),
            ..Default::default()
        };
        assert!(render_sub_dir("${pvc.metadata.name}", &traversal, &cluster).is_err());
    }
}

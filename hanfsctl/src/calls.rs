//! One subcommand, one CSI (or backend) call: what Kubernetes would send, typed by hand.

use crate::local::Sockets;
use crate::size;
use clap::Subcommand;
use common::credentials::{self, ClientTls};
use common::endpoint::{Endpoint, connect_lazy};
use proto::backend::v1 as be;
use proto::csi::v1 as csi;
use proto::csi::v1::controller_client::ControllerClient;
use proto::csi::v1::node_client::NodeClient;
use std::collections::HashMap;
use std::path::Path;
use tonic::transport::Channel;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume (a PVC's CreateVolume).
    Create {
        name: String,
        /// Size, e.g. 1Gi.
        #[arg(long, default_value = "1Gi")]
        size: String,
        /// Restore from this snapshot id.
        #[arg(long, conflicts_with = "from_volume")]
        from_snapshot: Option<String>,
        /// Clone this volume id.
        #[arg(long)]
        from_volume: Option<String>,
        /// StorageClass parameter, key=value (repeatable).
        #[arg(long = "param", value_parser = key_value)]
        params: Vec<(String, String)>,
    },
    Delete {
        volume_id: String,
    },
    List,
    Get {
        volume_id: String,
    },
    Expand {
        volume_id: String,
        #[arg(long)]
        size: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    Create {
        name: String,
        #[arg(long)]
        volume: String,
    },
    Delete {
        snapshot_id: String,
    },
    List,
}

/// `key=value` (the value may contain further `=`, the key may not be empty).
pub fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some(("", _)) => Err(format!("{text:?} has an empty key")),
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
        None => Err(format!("{text:?} is not key=value")),
    }
}

/// The volume context from `--context` entries; a key given twice is refused rather than
/// one of its values silently dropped.
fn volume_context(entries: Vec<(String, String)>) -> Result<HashMap<String, String>, Error> {
    let mut context = HashMap::new();
    for (key, value) in entries {
        if let Some(first) = context.insert(key.clone(), value.clone())
            && first != value
        {
            return Err(format!("--context {key} given twice ({first:?} and {value:?})").into());
        }
    }
    Ok(context)
}

fn channel(endpoint: &Endpoint) -> Result<Channel, Error> {
    Ok(connect_lazy(endpoint)?)
}

fn described(status: tonic::Status) -> Error {
    format!("{:?}: {}", status.code(), status.message()).into()
}

fn capability() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

fn print_volume(volume: &csi::Volume) {
    let source = match volume
        .content_source
        .as_ref()
        .and_then(|s| s.r#type.as_ref())
    {
        Some(csi::volume_content_source::Type::Snapshot(s)) => {
            format!("  from snapshot {}", s.snapshot_id)
        }
        Some(csi::volume_content_source::Type::Volume(v)) => {
            format!("  cloned from {}", v.volume_id)
        }
        None => String::new(),
    };
    println!(
        "{}  {}{source}",
        volume.volume_id,
        size::show(volume.capacity_bytes)
    );
}

pub async fn volume(sockets: &Sockets, command: VolumeCommand) -> Result<(), Error> {
    let mut client = ControllerClient::new(channel(&sockets.controller)?);
    match command {
        VolumeCommand::Create {
            name,
            size,
            from_snapshot,
            from_volume,
            params,
        } => {
            let source = match (from_snapshot, from_volume) {
                (Some(snapshot_id), _) => Some(csi::volume_content_source::Type::Snapshot(
                    csi::volume_content_source::SnapshotSource { snapshot_id },
                )),
                (_, Some(volume_id)) => Some(csi::volume_content_source::Type::Volume(
                    csi::volume_content_source::VolumeSource { volume_id },
                )),
                _ => None,
            };
            let response = client
                .create_volume(csi::CreateVolumeRequest {
                    name,
                    capacity_range: Some(csi::CapacityRange {
                        required_bytes: size::parse(&size)?,
                        limit_bytes: 0,
                    }),
                    volume_capabilities: vec![capability()],
                    parameters: params.into_iter().collect::<HashMap<_, _>>(),
                    volume_content_source: source.map(|r#type| csi::VolumeContentSource {
                        r#type: Some(r#type),
                    }),
                    ..Default::default()
                })
                .await
                .map_err(described)?
                .into_inner();
            if let Some(volume) = response.volume {
                print_volume(&volume);
            }
        }
        VolumeCommand::Delete { volume_id } => {
            client
                .delete_volume(csi::DeleteVolumeRequest {
                    volume_id: volume_id.clone(),
                    ..Default::default()
                })
                .await
                .map_err(described)?;
            println!("deleted {volume_id}");
        }
        VolumeCommand::List => {
            let response = client
                .list_volumes(csi::ListVolumesRequest::default())
                .await
                .map_err(described)?
                .into_inner();
            for entry in response.entries {
                if let Some(volume) = entry.volume {
                    print_volume(&volume);
                }
            }
        }
        VolumeCommand::Get { volume_id } => {
            let response = client
                .controller_get_volume(csi::ControllerGetVolumeRequest {
                    volume_id: volume_id.clone(),
                })
                .await
                .map_err(described)?
                .into_inner();
            if let Some(volume) = &response.volume {
                print_volume(volume);
            }
            let health = client
                .controller_get_volume_health(csi::ControllerGetVolumeHealthRequest {
                    volume_id,
                    ..Default::default()
                })
                .await
                .map_err(described)?
                .into_inner();
            print_health(health.volume_health);
        }
        VolumeCommand::Expand { volume_id, size } => {
            let response = client
                .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                    volume_id: volume_id.clone(),
                    capacity_range: Some(csi::CapacityRange {
                        required_bytes: size::parse(&size)?,
                        limit_bytes: 0,
                    }),
                    ..Default::default()
                })
                .await
                .map_err(described)?
                .into_inner();
            println!("{volume_id}  {}", size::show(response.capacity_bytes));
        }
    }
    Ok(())
}

pub async fn snapshot(sockets: &Sockets, command: SnapshotCommand) -> Result<(), Error> {
    let mut client = ControllerClient::new(channel(&sockets.controller)?);
    let print = |s: &csi::Snapshot| {
        println!(
            "{}  of {}  {}",
            s.snapshot_id,
            s.source_volume_id,
            size::show(s.size_bytes)
        )
    };
    match command {
        SnapshotCommand::Create { name, volume } => {
            let response = client
                .create_snapshot(csi::CreateSnapshotRequest {
                    name,
                    source_volume_id: volume,
                    ..Default::default()
                })
                .await
                .map_err(described)?
                .into_inner();
            if let Some(snapshot) = &response.snapshot {
                print(snapshot);
            }
        }
        SnapshotCommand::Delete { snapshot_id } => {
            client
                .delete_snapshot(csi::DeleteSnapshotRequest {
                    snapshot_id: snapshot_id.clone(),
                    ..Default::default()
                })
                .await
                .map_err(described)?;
            println!("deleted {snapshot_id}");
        }
        SnapshotCommand::List => {
            let response = client
                .list_snapshots(csi::ListSnapshotsRequest::default())
                .await
                .map_err(described)?
                .into_inner();
            for snapshot in response.entries.iter().filter_map(|e| e.snapshot.as_ref()) {
                print(snapshot);
            }
        }
    }
    Ok(())
}

/// Whether the controller publishes volumes to nodes (per-node export ACLs).
async fn controller_publishes(controller: &mut ControllerClient<Channel>) -> Result<bool, Error> {
    use csi::controller_service_capability::{Type, rpc::Type as Rpc};
    let caps = controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .map_err(described)?
        .into_inner()
        .capabilities;
    Ok(caps.iter().any(|c| {
        matches!(&c.r#type, Some(Type::Rpc(r)) if r.r#type == Rpc::PublishUnpublishVolume as i32)
    }))
}

/// As the CO's attacher does before kubelet mounts: ControllerPublishVolume of the
/// volume to the node plugin's own node id (NodeGetInfo), when the controller
/// advertises it. Returns that node id, or None when the controller does not publish.
async fn controller_publish(
    sockets: &Sockets,
    node: &mut NodeClient<Channel>,
    volume_id: &str,
    readonly: bool,
) -> Result<Option<String>, Error> {
    let mut controller = ControllerClient::new(channel(&sockets.controller)?);
    if !controller_publishes(&mut controller).await? {
        return Ok(None);
    }
    let node_id = node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .map_err(described)?
        .into_inner()
        .node_id;
    controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: volume_id.to_owned(),
            node_id: node_id.clone(),
            volume_capability: Some(capability()),
            readonly,
            ..Default::default()
        })
        .await
        .map_err(described)?;
    println!("{volume_id} published to node {node_id}");
    Ok(Some(node_id))
}

pub async fn publish(
    sockets: &Sockets,
    volume_id: &str,
    target: &Path,
    readonly: bool,
    staging: Option<&Path>,
    context: Vec<(String, String)>,
) -> Result<(), Error> {
    let volume_context = volume_context(context)?;
    let mut node = NodeClient::new(channel(&sockets.node)?);
    controller_publish(sockets, &mut node, volume_id, readonly).await?;
    let staging_target_path = match staging {
        Some(staging) => {
            let staging = absolute(staging)?;
            node.node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: volume_id.to_owned(),
                staging_target_path: staging.clone(),
                volume_capability: Some(capability()),
                volume_context: volume_context.clone(),
                ..Default::default()
            })
            .await
            .map_err(described)?;
            println!("{volume_id} staged on {staging}");
            staging
        }
        None => String::new(),
    };
    node.node_publish_volume(csi::NodePublishVolumeRequest {
        volume_id: volume_id.to_owned(),
        staging_target_path,
        target_path: absolute(target)?,
        volume_capability: Some(capability()),
        readonly,
        volume_context,
        ..Default::default()
    })
    .await
    .map_err(described)?;
    println!(
        "{volume_id} mounted on {}{}",
        target.display(),
        if readonly { " (read-only)" } else { "" }
    );
    Ok(())
}

pub async fn unpublish(
    sockets: &Sockets,
    volume_id: &str,
    target: &Path,
    staging: Option<&Path>,
) -> Result<(), Error> {
    let mut node = NodeClient::new(channel(&sockets.node)?);
    node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: volume_id.to_owned(),
        target_path: absolute(target)?,
    })
    .await
    .map_err(described)?;
    println!("{volume_id} unmounted from {}", target.display());
    if let Some(staging) = staging {
        node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: volume_id.to_owned(),
            staging_target_path: absolute(staging)?,
        })
        .await
        .map_err(described)?;
        println!("{volume_id} unstaged from {}", staging.display());
    }
    // Last, as the CO's attacher does once the node has let go.
    let mut controller = ControllerClient::new(channel(&sockets.controller)?);
    if controller_publishes(&mut controller).await? {
        let node_id = node
            .node_get_info(csi::NodeGetInfoRequest {})
            .await
            .map_err(described)?
            .into_inner()
            .node_id;
        controller
            .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                volume_id: volume_id.to_owned(),
                node_id: node_id.clone(),
                ..Default::default()
            })
            .await
            .map_err(described)?;
        println!("{volume_id} unpublished from node {node_id}");
    }
    Ok(())
}

pub async fn stats(sockets: &Sockets, volume_id: &str, target: &Path) -> Result<(), Error> {
    let mut node = NodeClient::new(channel(&sockets.node)?);
    let response = node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: volume_id.to_owned(),
            volume_path: absolute(target)?,
            staging_target_path: String::new(),
        })
        .await
        .map_err(described)?
        .into_inner();
    for usage in &response.usage {
        let unit = if usage.unit == csi::volume_usage::Unit::Inodes as i32 {
            "inodes"
        } else {
            "bytes"
        };
        println!(
            "{unit}: total {} used {} available {}",
            usage.total, usage.used, usage.available
        );
    }
    let health = node
        .node_get_volume_health(csi::NodeGetVolumeHealthRequest {
            volume_id: volume_id.to_owned(),
            volume_publish_path: absolute(target)?,
            staging_target_path: String::new(),
        })
        .await
        .map_err(described)?
        .into_inner();
    print_health(health.volume_health);
    Ok(())
}

pub async fn storage_health(sockets: &Sockets) -> Result<(), Error> {
    let mut node = NodeClient::new(channel(&sockets.node)?);
    let response = node
        .node_get_storage_health(csi::NodeGetStorageHealthRequest::default())
        .await
        .map_err(described)?
        .into_inner();
    if response.backend_health.is_empty() {
        println!("storage: normal");
    }
    for entry in response.backend_health {
        let status = csi::StorageHealthErrorType::try_from(entry.status)
            .map(|s| s.as_str_name())
            .unwrap_or("UNKNOWN");
        println!("storage: {status} {} ({})", entry.reason, entry.message);
    }
    Ok(())
}

/// `health: normal`, or one line per adverse condition (CSI v1.13 VolumeHealth).
fn print_health(health: Option<csi::VolumeHealth>) {
    let statuses = health.map(|h| h.health_statuses).unwrap_or_default();
    if statuses.is_empty() {
        println!("health: normal");
    }
    for entry in statuses {
        let status = csi::VolumeHealthErrorType::try_from(entry.status)
            .map(|s| s.as_str_name())
            .unwrap_or("UNKNOWN");
        println!("health: {status} {} ({})", entry.reason, entry.message);
    }
}

/// How `status` reaches the backend volume API: plaintext on local mode's socket, mutual
/// TLS (and the token, when the backend wants one) at a storage server's VIP.
#[derive(Clone, Default)]
pub struct BackendAccess {
    pub token: Option<String>,
    pub tls: Option<ClientTls>,
}

impl tonic::service::Interceptor for BackendAccess {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.token {
            let mut value: tonic::metadata::MetadataValue<_> =
                format!("Bearer {token}").parse().map_err(|_| {
                    tonic::Status::invalid_argument(
                        "the token file holds characters not allowed in a header",
                    )
                })?;
            value.set_sensitive(true);
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A refused TLS handshake is spelled out with what to fix.
fn described_backend(status: tonic::Status) -> Error {
    format!("{:?}: {}", status.code(), credentials::explain(&status)).into()
}

pub async fn status(sockets: &Sockets, access: &BackendAccess) -> Result<(), Error> {
    let channel = credentials::connect_lazy(
        &sockets.backend,
        access.tls.as_ref(),
        "the backend volume API (--backend)",
    )?;
    let mut backend = be::volumes_client::VolumesClient::with_interceptor(channel, access.clone());
    let status = backend
        .status(be::StatusRequest {})
        .await
        .map_err(described_backend)?
        .into_inner();
    let capacity = backend
        .get_capacity(be::GetCapacityRequest {})
        .await
        .map_err(described_backend)?
        .into_inner();
    println!("export:     {} ({})", status.export_root, status.filesystem);
    println!(
        "volumes:    {}   snapshots: {}",
        status.volume_count, status.snapshot_count
    );
    println!("quota:      {}", status.quota_detail);
    println!("reflink:    {}", status.reflink_detail);
    println!(
        "capacity:   {} total, {} free, {} promised, {} available ({:?} policy)",
        size::show(capacity.total_bytes),
        size::show(capacity.free_bytes),
        size::show(capacity.promised_bytes),
        size::show(capacity.available_bytes),
        be::CapacityPolicy::try_from(capacity.policy).unwrap_or_default()
    );
    println!("version:    {}", status.version);
    Ok(())
}

fn absolute(path: &Path) -> Result<String, Error> {
    let path = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    };
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| "target path is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_split_at_the_first_equals_sign() {
        assert_eq!(key_value("subDir=a/b"), Ok(("subDir".into(), "a/b".into())));
        assert_eq!(key_value("k=a=b"), Ok(("k".into(), "a=b".into())));
        assert_eq!(key_value("k="), Ok(("k".into(), String::new())));
        assert!(key_value("k").unwrap_err().contains("key=value"));
        assert!(key_value("=v").unwrap_err().contains("empty key"));
    }

    #[test]
    fn a_context_key_given_twice_must_agree() {
        let entries = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let context = volume_context(entries(&[
            ("server", "10.0.0.100"),
            ("subDir", "a"),
            ("subDir", "a"),
        ]))
        .unwrap();
        assert_eq!(context.len(), 2);
        assert_eq!(context["subDir"], "a");
        let err = volume_context(entries(&[("subDir", "a"), ("subDir", "b")])).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn publish_takes_repeated_context_flags() {
        use clap::Parser;
        // The same parser the CLI uses for --context, on a minimal command.
        #[derive(Parser)]
        struct Args {
            #[arg(long = "context", value_parser = key_value)]
            context: Vec<(String, String)>,
        }
        let args = Args::try_parse_from([
            "x",
            "--context",
            "server=10.0.0.100",
            "--context=subDir=volumes/legacy-data",
        ])
        .unwrap();
        assert_eq!(
            args.context,
            vec![
                ("server".to_owned(), "10.0.0.100".to_owned()),
                ("subDir".to_owned(), "volumes/legacy-data".to_owned())
            ]
        );
        assert!(Args::try_parse_from(["x", "--context", "novalue"]).is_err());
    }
}

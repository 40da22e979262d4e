//! The Lease in the Kubernetes API (`coordination.k8s.io/v1`): the arbiter that decides
//! which storage server may be active, and the record of whose data is current.
//!
//! Every write is a compare-and-swap on `metadata.resourceVersion` (the API server
//! answers 409 when someone wrote in between), so two agents can never both think
//! their write won. The fields `decide` needs live in the standard spec
//! (`holderIdentity`) and in annotations (`hanfs.io/*`); `renewTime`, `acquireTime` and
//! `leaseDurationSeconds` are written for humans and kubectl only — no decision reads
//! another machine's timestamps (DESIGN.md §4 rule 2).

use ha_core::LeaseRecord;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use thiserror::Error;

const OUTDATED: &str = "hanfs.io/outdated";
const LAST_PRIMARY: &str = "hanfs.io/last-primary";
const HANDOVER_TO: &str = "hanfs.io/handover-to";
const TENURE: &str = "hanfs.io/tenure";

#[derive(Debug, Error)]
pub enum LeaseError {
    /// Someone wrote the Lease since it was read (HTTP 409): re-read and decide again.
    #[error("the Lease {name} changed since it was read (conflict)")]
    Conflict { name: String },
    /// The API server answered with an error.
    #[error("API server refused the Lease {name} request: {code} {message}")]
    Api {
        name: String,
        code: u16,
        message: String,
    },
    /// No answer in time, or no connection.
    #[error("API server unreachable for Lease {name}: {detail}")]
    Unreachable { name: String, detail: String },
}

/// The Lease as the agent and the fence-peer handler use it: read it, and write a record
/// as a compare-and-swap on its version. [`LeaseClient`] is the Kubernetes one.
pub trait LeaseStore: Send + Sync + 'static {
    /// Reads the Lease; a missing object reads as a free Lease with version "".
    fn read(&self) -> impl Future<Output = Result<LeaseRecord, LeaseError>> + Send;
    /// Writes `record` if the Lease is still at `record.version`; returns the new
    /// version. `acquired` marks an acquisition (for humans reading the object).
    fn write(
        &self,
        record: &LeaseRecord,
        acquired: bool,
    ) -> impl Future<Output = Result<String, LeaseError>> + Send;
}

impl LeaseStore for LeaseClient {
    async fn read(&self) -> Result<LeaseRecord, LeaseError> {
        LeaseClient::read(self).await
    }

    async fn write(&self, record: &LeaseRecord, acquired: bool) -> Result<String, LeaseError> {
        LeaseClient::write(self, record, acquired).await
    }
}

/// One Lease object, read and written on behalf of one node.
#[derive(Clone)]
pub struct LeaseClient {
    api: Api<Lease>,
    name: String,
    node: String,
    lease_seconds: i32,
    timeout: Duration,
}

impl LeaseClient {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        node: &str,
        lease_duration: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            node: node.to_owned(),
            lease_seconds: lease_duration.as_secs().max(1) as i32,
            timeout,
        }
    }

    fn map_error(&self, error: kube::Error) -> LeaseError {
        match error {
            kube::Error::Api(status) if status.code == 409 => LeaseError::Conflict {
                name: self.name.clone(),
            },
            kube::Error::Api(status) => LeaseError::Api {
                name: self.name.clone(),
                code: status.code,
                message: status.message.clone(),
            },
            other => LeaseError::Unreachable {
                name: self.name.clone(),
                detail: other.to_string(),
            },
        }
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| self.map_error(e)),
            Err(_) => Err(LeaseError::Unreachable {
                name: self.name.clone(),
                detail: format!("no answer within {:?}", self.timeout),
            }),
        }
    }

    /// Reads the Lease. A missing object reads as a free Lease with version "" (the
    /// first acquisition creates it).
    pub async fn read(&self) -> Result<LeaseRecord, LeaseError> {
        let lease = self.bounded(self.api.get_opt(&self.name)).await?;
        Ok(lease.map(|l| record_of(&l)).unwrap_or_default())
    }

    /// Writes `record` if the Lease is still at `record.version`; returns the new version.
    pub async fn write(&self, record: &LeaseRecord, acquired: bool) -> Result<String, LeaseError> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: (!record.version.is_empty()).then(|| record.version.clone()),
                annotations: Some(annotations_of(record)),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: record.holder.clone(),
                lease_duration_seconds: Some(self.lease_seconds),
                renew_time: record.holder.as_ref().map(|_| now.clone()),
                acquire_time: if acquired { Some(now) } else { None },
                ..Default::default()
            }),
        };
        let written = if record.version.is_empty() {
            self.bounded(self.api.create(&PostParams::default(), &lease))
                .await?
        } else {
            self.bounded(self.api.replace(&self.name, &PostParams::default(), &lease))
                .await?
        };
        tracing::debug!(lease = %self.name, node = %self.node, holder = ?record.holder, "Lease written");
        Ok(written.metadata.resource_version.unwrap_or_default())
    }
}

/// Reads hanfs's view of a Lease object. Anything unexpected (no spec, foreign
/// annotations, a holder that is not a hanfs node) is taken at face value: a foreign
/// holder is just another holder, whose Lease must expire before anyone takes it.
pub fn record_of(lease: &Lease) -> LeaseRecord {
    let annotations = lease.metadata.annotations.clone().unwrap_or_default();
    let get = |key: &str| annotations.get(key).filter(|v| !v.is_empty()).cloned();
    LeaseRecord {
        holder: lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty()),
        version: lease.metadata.resource_version.clone().unwrap_or_default(),
        outdated: get(OUTDATED),
        last_primary: get(LAST_PRIMARY),
        handover_to: get(HANDOVER_TO),
        tenure: get(TENURE).unwrap_or_default(),
    }
}

fn annotations_of(record: &LeaseRecord) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (key, value) in [
        (OUTDATED, &record.outdated),
        (LAST_PRIMARY, &record.last_primary),
        (HANDOVER_TO, &record.handover_to),
    ] {
        if let Some(v) = value {
            map.insert(key.to_string(), v.clone());
        }
    }
    if !record.tenure.is_empty() {
        map.insert(TENURE.to_string(), record.tenure.clone());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_the_round_trip_through_a_lease_object() {
        let record = LeaseRecord {
            holder: Some("storage-a".into()),
            version: "42".into(),
            outdated: Some("storage-b".into()),
            last_primary: Some("storage-a".into()),
            handover_to: None,
            tenure: "storage-a-1".into(),
        };
        let lease = Lease {
            metadata: ObjectMeta {
                resource_version: Some("42".into()),
                annotations: Some(annotations_of(&record)),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: record.holder.clone(),
                ..Default::default()
            }),
        };
        assert_eq!(record_of(&lease), record);
    }

    #[test]
    fn a_foreign_or_empty_lease_reads_safely() {
        let foreign = Lease {
            metadata: ObjectMeta {
                resource_version: Some("7".into()),
                annotations: Some(
                    [
                        ("hanfs.io/tenure".to_string(), String::new()),
                        ("other".to_string(), "x".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("kube-controller-manager-xyz".into()),
                ..Default::default()
            }),
        };
        let record = record_of(&foreign);
        assert_eq!(
            record.holder.as_deref(),
            Some("kube-controller-manager-xyz")
        );
        assert_eq!(record.tenure, "");
        let empty = Lease {
            metadata: ObjectMeta::default(),
            spec: None,
        };
        assert_eq!(record_of(&empty), LeaseRecord::default());
    }
}

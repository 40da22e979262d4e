//! The `fence-peer` handler DRBD runs (with `fencing resource-and-stonith`) when the
//! replication link drops while this node is Primary: I/O stays frozen until the
//! handler answers. It records "peer outdated" in the Lease — only while this node
//! holds it, under its own tenure — so the peer provably cannot be promoted with stale
//! data, and only then lets DRBD resume I/O (DESIGN.md §4 rule 4).

use super::agent::load_tenure;
use crate::drivers::lease::{LeaseError, LeaseStore};
use ha_core::{FenceDecision, fence_decision};
use std::path::Path;
use std::time::{Duration, Instant};

/// DRBD's fence-peer exit code for "the peer's disk is now Outdated": I/O resumes.
pub const EXIT_PEER_OUTDATED: i32 = 4;
/// Anything outside 3..=7 is a failure: DRBD keeps I/O frozen (the safe side).
pub const EXIT_REFUSED: i32 = 1;

/// Records the peer as outdated, retrying conflicts and unreachable API servers until
/// `patience` runs out. Returns the exit code for DRBD and what happened.
pub async fn fence_peer(
    lease: &impl LeaseStore,
    node: &str,
    peer: &str,
    state_dir: &Path,
    patience: Duration,
) -> (i32, String) {
    // Without a boot id no persisted tenure can be trusted: refuse (I/O stays frozen).
    let tenure = match load_tenure(state_dir) {
        Ok(tenure) => tenure,
        Err(e) => return (EXIT_REFUSED, format!("{e}: cannot vouch for the tenure")),
    };
    let deadline = Instant::now() + patience;
    let mut last_problem = String::from("no attempt made");
    while Instant::now() < deadline {
        match lease.read().await {
            Ok(mut record) => match fence_decision(&record, node, tenure.id.as_deref(), peer) {
                FenceDecision::Refuse(why) => return (EXIT_REFUSED, why),
                FenceDecision::RecordOutdated => {
                    record.outdated = Some(peer.to_owned());
                    match lease.write(&record, false).await {
                        Ok(_) => {
                            return (
                                EXIT_PEER_OUTDATED,
                                format!("recorded {peer} as outdated in the Lease"),
                            );
                        }
                        Err(LeaseError::Conflict { .. }) => {
                            last_problem = "the Lease changed meanwhile".into()
                        }
                        Err(e) => last_problem = e.to_string(),
                    }
                }
            },
            Err(e) => last_problem = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (
        EXIT_REFUSED,
        format!(
            "could not record {peer} as outdated within {patience:?}: {last_problem}; I/O stays frozen"
        ),
    )
}

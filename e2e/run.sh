#!/usr/bin/env bash
# hanfs on the VM cluster, end to end (DESIGN.md §5): builds release binaries, then
#   e2e/run.sh ci       boot, csi-sanity over real NFS, per-volume checks (quota, stats,
#                       expansion, reflink snapshot/clone), one hard kill, one switchover
#                       (~10 min here; the README's test command runs this)
#   e2e/run.sh matrix   all of that plus every failover scenario (hard kill 5×, nfsd
#                       killed, filesystem broken, replication link cut, API cut,
#                       switchover 5×, cold restart) and the stock setup's hard kill
#                       side by side (~45 min here)
#   e2e/run.sh storage-e2e [--focus REGEX] [--minutes N]
#                       Kubernetes' external-storage e2e suite (e2e/kube/storage-e2e/)
#                       against the chart on the client VM's kubelet, thin provisioning;
#                       passed / failed / skipped per suite and pattern (hours under TCG)
#   e2e/run.sh acl | volume-calls | volume-load
#                       one scenario alone (also in matrix): export ACLs; volume calls
#                       through a hard kill; 40 volumes by 8 clients over NFS (created,
#                       published, written, stat'ed, snapshotted, deleted; nothing left,
#                       nothing leaked, RSS before/peak/after)
#   e2e/run.sh bench [--peer-nfsplugin PATH] [--out DIR] [hanfs-bench options]
#                       hanfs-bench in the client VM: hanfs and csi-driver-nfs side by
#                       side on the HA export (provisioning, footprint, data path);
#                       tables on stdout, files in DIR (default bench/out/vm)
# Further options go to hanfs-e2e (e.g. --only link-cut,api-cut --skip-sanity).
# Needs root, qemu-system-x86, debootstrap, Go; one VM cluster at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
exec target/release/hanfs-e2e "$@"

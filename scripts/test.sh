#!/usr/bin/env bash
# Runs every hanfs test: unit and integration tests (real bind mounts, a real
# loop-mounted XFS, real gRPC over unix sockets, VIPs and tickle ACKs in network
# namespaces, two HA agents against a real kube-apiserver + etcd, the HA property
# tests), the upstream csi-sanity against local mode, and the VM cluster's CI subset
# (`e2e/run.sh ci`: real DRBD + kernel NFS in qemu VMs; csi-sanity over NFS, quota,
# snapshots, one hard kill, one switchover). Needs root (mounts, namespaces, VMs), Go
# (csi.proto, csi-sanity, kube-apiserver and etcd come from the Go module proxy; the
# first run builds kube-apiserver, ~5 min), Rust, mkfs.xfs, curl, openssl, iproute2,
# qemu-system-x86 and debootstrap (the first run builds the VM image, ~2.5 min).
# `.ci/run` installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp /tmp/hanfs-test.XXXXXX.log)
trap 'rm -f "$log"' EXIT

echo "== build"
cargo build --bins

echo "== cargo test (unit + integration)"
set +e
cargo test --workspace 2>&1 | tee "$log"
cargo_rc=${PIPESTATUS[0]}
set -e
# libtest's "test result:" lines, plus the property-test binary's own "ha_model: N passed, N failed".
cargo_passed=$(grep -E "^(test result:|ha_model: [0-9]+ passed)" "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
cargo_failed=$(grep -E "^(test result:|ha_model: [0-9]+ passed)" "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
if [ "$cargo_rc" -ne 0 ]; then
    echo "cargo test failed (exit $cargo_rc)"
    echo "cargo: $cargo_passed passed, $cargo_failed failed"
    exit 1
fi

echo "== csi-sanity against local mode"
set +e
csi-sanity/run.sh target/debug 2>&1 | tee "$log"
sanity_rc=${PIPESTATUS[0]}
set -e
sanity_line=$(grep -E "^csi-sanity: [0-9]+ passed, [0-9]+ failed" "$log" | tail -1)
sanity_passed=$(echo "$sanity_line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
sanity_failed=$(echo "$sanity_line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
if [ "$sanity_rc" -ne 0 ] || [ -z "$sanity_line" ]; then
    echo "csi-sanity failed (exit $sanity_rc)"
    echo "all: $cargo_passed passed, $((cargo_failed + ${sanity_failed:-1})) failed"
    exit 1
fi

echo "== VM cluster end to end (CI subset: e2e/run.sh ci)"
set +e
e2e/run.sh ci 2>&1 | tee "$log"
e2e_rc=${PIPESTATUS[0]}
set -e
e2e_line=$(grep -E "^e2e: [0-9]+ passed, [0-9]+ failed" "$log" | tail -1)
e2e_passed=$(echo "$e2e_line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
e2e_failed=$(echo "$e2e_line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
if [ "$e2e_rc" -ne 0 ] || [ -z "$e2e_line" ]; then
    echo "e2e failed (exit $e2e_rc)"
    echo "all: $((cargo_passed + sanity_passed + ${e2e_passed:-0})) passed, $((cargo_failed + sanity_failed + ${e2e_failed:-1})) failed"
    exit 1
fi

echo "== summary"
echo "cargo tests: $cargo_passed passed; csi-sanity specs (local mode): $sanity_passed passed; e2e (VMs: csi-sanity over NFS, volume checks, failovers): $e2e_passed passed (no spec skipped by our flags)"
echo "all: $((cargo_passed + sanity_passed + e2e_passed)) passed, $((cargo_failed + sanity_failed + e2e_failed)) failed"

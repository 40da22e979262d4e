#!/usr/bin/env bash
# Runs every hanfs test: first the code gates (rustfmt, clippy -D warnings, shellcheck of
# every script: scripts/gates.sh), then unit and integration tests (real bind mounts, a real
# loop-mounted XFS, real gRPC over unix sockets, VIPs and tickle ACKs in network
# namespaces, two HA agents against a real kube-apiserver + etcd, the HA property
# tests, the Kubernetes API flows: kube-apiserver + kube-controller-manager + the real
# CSI sidecars against local mode), the upstream csi-sanity against local mode, the Helm
# chart's checks (installed on a real kube-apiserver), the container images (imported and
# run by a real containerd), and the VM cluster's CI subset (`e2e/run.sh ci`: real DRBD +
# kernel NFS in qemu VMs; csi-sanity over NFS, quota, snapshots, one hard kill, one
# switchover; then the client VM as a kubelet node with the chart helm-installed, pods
# writing through a hard kill and a switchover). Needs root (mounts, namespaces, VMs), Go
# (csi.proto, csi-sanity, kube-apiserver and etcd come from the Go module proxy; the
# first run builds kube-apiserver, ~5 min), Rust, mkfs.xfs, curl, openssl, iproute2,
# qemu-system-x86 and debootstrap (the first run builds the VM image, ~2.5 min).
# `.ci/run` installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp /tmp/hanfs-test.XXXXXX.log)
trap 'rm -f "$log"' EXIT

# Runs one suite whose output ends with "<label>: N passed, M failed", adds its counts to
# the totals, and stops the whole run (printing the totals so far) if it failed.
total_passed=0
total_failed=0
run_suite() {
    local label=$1
    shift
    set +e
    "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    set -e
    local line passed failed
    line=$(grep -E "^$label: [0-9]+ passed, [0-9]+ failed" "$log" | tail -1)
    passed=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
    failed=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    total_passed=$((total_passed + ${passed:-0}))
    total_failed=$((total_failed + ${failed:-1}))
    if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
        echo "$label failed (exit $rc)"
        echo "all: $total_passed passed, $total_failed failed"
        exit 1
    fi
    suite_passed=$passed
}

# Free disk and the big build caches, printed before each stage: a CI machine once ran out
# of disk in the middle of a run, and the log has to say where the space went.
disk_report() {
    local free sizes="" dir
    free=$(df -P -BG . | awk 'NR == 2 {print $4}')
    for dir in target fuzz/target "$(go env GOCACHE 2>/dev/null)" "$(go env GOMODCACHE 2>/dev/null)" "$HOME/.cache/hanfs"; do
        [ -d "$dir" ] && sizes+=", $dir $(du -sh "$dir" 2>/dev/null | cut -f1)"
    done
    echo "   disk: $free free$sizes"
}

disk_report
echo "== gates: rustfmt, clippy --all-targets -D warnings, shellcheck of every script"
run_suite gates scripts/gates.sh
gates_passed=$suite_passed

disk_report
echo "== build"
cargo build --bins

disk_report
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
total_passed=$((total_passed + cargo_passed))
total_failed=$((total_failed + cargo_failed))

disk_report
echo "== fuzz: every cargo-fuzz target for 20 s (scripts/fuzz.sh; longer runs: fuzz/README.md)"
run_suite fuzz scripts/fuzz.sh 20
fuzz_passed=$suite_passed

disk_report
echo "== csi-sanity against local mode"
run_suite csi-sanity csi-sanity/run.sh target/debug
sanity_passed=$suite_passed

disk_report
echo "== Helm chart: lint, template, schema, install on a real kube-apiserver"
run_suite chart charts/check.sh
chart_passed=$suite_passed

disk_report
echo "== container images: OCI archives imported and run by a real containerd"
run_suite images images/test.sh
images_passed=$suite_passed

disk_report
echo "== VM cluster end to end (CI subset: e2e/run.sh ci)"
run_suite e2e e2e/run.sh ci
e2e_passed=$suite_passed

disk_report
echo "== summary"
echo "gates (fmt, clippy, shellcheck): $gates_passed passed; cargo tests: $cargo_passed passed; fuzz targets: $fuzz_passed passed; csi-sanity specs (local mode): $sanity_passed passed; chart checks: $chart_passed passed; image checks: $images_passed passed; e2e (VMs: csi-sanity over NFS, volume checks, failovers, the chart helm-installed on a kubelet, a pod's records read back by a second pod): $e2e_passed passed (no spec skipped by our flags)"
echo "all: $total_passed passed, $total_failed failed"

#!/usr/bin/env bash
# Runs the upstream csi-sanity (kubernetes-csi/csi-test v5.6.0) against hanfs in local
# mode: real binaries, real unix sockets, real bind mounts. No spec is skipped by us.
# Its folders are removed by remove-path.sh, which unmounts what a failed spec left
# behind (so later specs still run) and records it; any such leftover fails the run.
#
# Usage: csi-sanity/run.sh [bin-dir]   (default: target/debug; builds it if missing)
# Exits non-zero unless every spec that ran passed and the after-run checks hold.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=${1:-$repo/target/debug}
sanity=$("$repo/csi-sanity/install.sh")
if [ ! -x "$bin_dir/hanfsctl" ] || [ ! -x "$bin_dir/hanfs-node" ]; then
    (cd "$repo" && cargo build --bins)
fi

work=$(mktemp -d /tmp/hanfs-sanity.XXXXXX)
local_pid=
cleanup() {
    local rc=$?
    if [ -n "$local_pid" ] && kill -0 "$local_pid" 2>/dev/null; then
        kill -TERM "$local_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$local_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$local_pid" 2>/dev/null || true
    fi
    # A failed spec may leave a mount behind; a leaked mount breaks the next run.
    { grep -o " $work/[^ ]*" /proc/self/mounts || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT INT TERM

"$bin_dir/hanfsctl" --dir "$work" --cluster-id sanity local up --bin-dir "$bin_dir" >"$work/local.log" 2>&1 &
local_pid=$!
for _ in $(seq 1 300); do
    grep -q "local mode is up" "$work/local.log" 2>/dev/null && break
    kill -0 "$local_pid" 2>/dev/null || { cat "$work/local.log"; echo "local mode failed to start"; exit 1; }
    sleep 0.1
done
grep -q "local mode is up" "$work/local.log" || { cat "$work/local.log"; echo "local mode did not come up in 30 s"; exit 1; }

export HANFS_SANITY_LEAKS=$work/leaks
: >"$HANFS_SANITY_LEAKS"
set +e
timeout -s KILL 900 "$sanity" \
    --csi.endpoint "unix://$work/sockets/node.sock" \
    --csi.controllerendpoint "unix://$work/sockets/controller.sock" \
    --csi.mountdir "$work/mnt/csi-mount" \
    --csi.stagingdir "$work/mnt/csi-staging" \
    --csi.removemountpathcmd "$repo/csi-sanity/remove-path.sh" \
    --csi.removestagingpathcmd "$repo/csi-sanity/remove-path.sh" \
    --csi.removepathcmdtimeout 30s \
    --csi.testvolumesize $((64 << 20)) \
    --csi.testvolumeexpandsize $((128 << 20)) \
    --csi.testvolumeparameters "$repo/csi-sanity/volume-parameters.yaml" \
    --csi.testvolumemutableparameters "$repo/csi-sanity/mutable-parameters.yaml" \
    --csi.junitfile "$work/junit.xml" \
    --ginkgo.no-color 2>&1 | tee "$work/sanity.log"
sanity_rc=${PIPESTATUS[0]}
set -e

summary=$(grep -E "^(SUCCESS|FAIL)! -- " "$work/sanity.log" | tail -1)
ran=$(grep -E "^Ran [0-9]+ of [0-9]+ Specs" "$work/sanity.log" | tail -1)
echo "csi-sanity: $ran"
echo "csi-sanity: $summary"
if [ "$sanity_rc" -ne 0 ]; then
    echo "csi-sanity failed (exit $sanity_rc); driver logs:"; tail -50 "$work/local.log"
    [ -s "$HANFS_SANITY_LEAKS" ] && { echo "left behind by the driver:"; cat "$HANFS_SANITY_LEAKS"; }
    exit 1
fi

if [ -s "$HANFS_SANITY_LEAKS" ]; then
    echo "FAIL: the driver left mounts or files in csi-sanity's folders:"; cat "$HANFS_SANITY_LEAKS"
    exit 1
fi

# Which specs csi-sanity skipped by itself, and why (we pass no skip flags).
python3 "$repo/csi-sanity/skipped.py" "$work/junit.xml"

# After-run checks: what the parameters promised really happened.
leftover=$(find "$work/export/volumes" -mindepth 1 -maxdepth 1 | wc -l)
archived=$(find "$work/export/archived" -mindepth 1 -maxdepth 1 | wc -l)
[ "$leftover" -eq 0 ] || { echo "FAIL: $leftover volumes left in export/volumes after csi-sanity cleaned up"; exit 1; }
[ "$archived" -gt 0 ] || { echo "FAIL: no volume was archived although the ModifyVolume specs set onDelete=archive"; exit 1; }
for d in "$work"/export/archived/*; do
    mode=$(stat -c %a "$d")
    [ "$mode" = 750 ] || { echo "FAIL: $d has mode $mode, but mountPermissions asked for 0750"; exit 1; }
done
passed=$(echo "$summary" | sed -E 's/.* ([0-9]+) Passed.*/\1/')
failed=$(echo "$summary" | sed -E 's/.* ([0-9]+) Failed.*/\1/')
skipped=$(echo "$summary" | sed -E 's/.* ([0-9]+) Skipped.*/\1/')
echo "csi-sanity: archived volumes from onDelete=archive: $archived; volumes left: $leftover"
# The plain summary line CI reads.
echo "csi-sanity: $passed passed, $failed failed, $skipped skipped"

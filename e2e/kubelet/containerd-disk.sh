#!/usr/bin/env bash
# Builds the client VM's data disk with containerd's store already holding the node's
# images, so the kubelet node starts without importing anything: under TCG an import is a
# gunzip and two sha256 passes over every layer in the guest, minutes for ~100 MB (measured:
# node-up.sh had not finished importing 10 images after 300 s), while here on the host it
# takes seconds. A throwaway containerd (own root, state and sockets; no CRI) imports and
# unpacks the archives into <tmp>/root with the overlayfs snapshotter; the guest mounts the
# disk at /var/lib/containerd, where its containerd (same version) finds the same store:
# containerd keeps no absolute paths in it.
#
# Usage: e2e/kubelet/containerd-disk.sh <containerd-bin-dir> <disk-mib> <image.oci.tar>...
#   Prints the disk image (ext4, sparse) as the last stdout line, cached at
#   ${HANFS_CACHE:-$HOME/.cache/hanfs}/containerd-disk-<hash>/disk.ext4, <hash> over this
#   script, the containerd binary, the size and every archive. Needs root (overlayfs mounts).
set -euo pipefail

[ $# -ge 3 ] || { echo "usage: $0 <containerd-bin-dir> <disk-mib> <image.oci.tar>..." >&2; exit 2; }
bin=$1
mib=$2
shift 2
log() { echo "containerd-disk: $*" >&2; }
die() { log "$*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root"
for a in "$@"; do [ -f "$a" ] || die "no archive $a"; done

cache=${HANFS_CACHE:-$HOME/.cache/hanfs}
hash=$({
    sha256sum "$0" "$bin/containerd"
    echo "$mib"
    for a in "$@"; do echo "$(basename "$a") $(sha256sum <"$a" | cut -c1-64)"; done
} | sha256sum | cut -c1-16)
out=$cache/containerd-disk-$hash
if [ -f "$out/.complete" ]; then
    echo "$out/disk.ext4"
    exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/containerd-disk-$hash.lock"
flock -w 900 9 || die "timed out waiting for $cache/containerd-disk-$hash.lock"
if [ -f "$out/.complete" ]; then
    echo "$out/disk.ext4"
    exit 0
fi

start=$(date +%s)
tmp=$(mktemp -d "$cache/containerd-disk-$hash.tmp.XXXXXX")
ctrd_pid=
cleanup() {
    if [ -n "$ctrd_pid" ]; then
        kill "$ctrd_pid" 2>/dev/null || true
        wait "$ctrd_pid" 2>/dev/null || true
    fi
    # Unpacking mounts overlays below the root only while it runs; a killed import may leave one.
    { grep -o " $tmp/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

cat >"$tmp/config.toml" <<EOF
version = 4
root = "$tmp/root"
state = "$tmp/state"
imports = []
# The store only: no CRI (the guest's containerd serves kubelet), no tasks run here.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.sandbox.controller.v1.shim"]
[plugins."io.containerd.server.v1.grpc"]
  address = "$tmp/containerd.sock"
[plugins."io.containerd.server.v1.ttrpc"]
  address = "$tmp/containerd.sock.ttrpc"
[plugins."io.containerd.server.v1.debug"]
  address = ""
[plugins."io.containerd.server.v1.metrics"]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$tmp/opt"
EOF
"$bin/containerd" --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
ctrd_pid=$!
ctr=("$bin/ctr" --address "$tmp/containerd.sock" -n k8s.io)
for _ in $(seq 100); do
    "${ctr[@]}" version >/dev/null 2>&1 && break
    kill -0 "$ctrd_pid" 2>/dev/null || break
    sleep 0.3
done
"${ctr[@]}" version >/dev/null 2>&1 || { tail -20 "$tmp/containerd.log" >&2; die "containerd did not start"; }
for a in "$@"; do
    "${ctr[@]}" images import "$a" >"$tmp/import.log" 2>&1 || { cat "$tmp/import.log" >&2; die "importing $a failed"; }
done
refs=$("${ctr[@]}" images ls -q | sort)
log "imported $(echo "$refs" | wc -l) images: $(echo "$refs" | tr '\n' ' ')"
kill "$ctrd_pid"
wait "$ctrd_pid" 2>/dev/null || true
ctrd_pid=

used_mib=$(($(du -sk "$tmp/root" | cut -f1) / 1024))
[ "$used_mib" -lt "$((mib / 2))" ] || die "the store takes $used_mib MiB, more than half of a $mib MiB disk"
mkdir -p "$tmp/out"
mkfs.ext4 -q -F -L hanfs-containerd -m 0 -E root_owner=0:0 -d "$tmp/root" "$tmp/out/disk.ext4" "${mib}M" >&2 ||
    die "mkfs.ext4 -d failed"
echo "$refs" >"$tmp/out/images"
: >"$tmp/out/.complete"
rm -rf "$out"
mv "$tmp/out" "$out"
log "built $out/disk.ext4 in $(($(date +%s) - start)) s: store $used_mib MiB on a $mib MiB disk"
# Keep the newest two (the names are our own hex hashes: ls is safe here).
# shellcheck disable=SC2012
ls -dt "$cache"/containerd-disk-???????????????? | tail -n +3 | while read -r old; do
    rm -rf "$old" "$old.lock"
done
echo "$out/disk.ext4"

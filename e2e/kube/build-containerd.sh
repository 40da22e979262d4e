#!/usr/bin/env bash
# Builds containerd (daemon, runc shim, ctr) from the Go module proxy into a cache outside
# the repo, for the tests that import and run hanfs's locally built images:
#   ${HANFS_CACHE:-$HOME/.cache/hanfs}/containerd-$CONTAINERD_VERSION/bin/{containerd,containerd-shim-runc-v2,ctr}
#
# Usage: e2e/kube/build-containerd.sh
#   Does nothing when the cache is complete. Progress goes to stderr; the last line on
#   stdout is the bin directory.
#
# Why not Debian's containerd: bookworm ships 1.6, and Kubernetes 1.36+ kubelets need
# containerd 2. Why these tags: without cgo the btrfs/zfs/devmapper/aufs snapshotters do not
# build; overlayfs and native are what the tests use. runc itself comes from Debian.
set -euo pipefail

CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
cache=${HANFS_CACHE:-$HOME/.cache/hanfs}/containerd-$CONTAINERD_VERSION
bin=$cache/bin
stamp=$cache/.complete
components="containerd containerd-shim-runc-v2 ctr"
want="$components $CONTAINERD_VERSION"

log() { echo "build-containerd.sh: $*" >&2; }

complete() {
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] || return 1
    local c
    for c in $components; do [ -x "$bin/$c" ] || return 1; done
}

if complete; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache"
# Two callers may ask at once; the second waits (bounded) for the first.
exec 9>"$cache/.lock"
if ! flock -w 1800 9; then
    log "timed out waiting for another build holding $cache/.lock"
    exit 1
fi
if complete; then
    echo "$bin"
    exit 0
fi
rm -f "$stamp"
command -v go >/dev/null || { log "go is required (https://go.dev/dl, or Debian: golang-go)"; exit 1; }

export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
export GOTOOLCHAIN=local
# Build into a scratch GOBIN and move into place, so a killed build never leaves a
# half-written binary where complete() would accept it.
export GOBIN=$cache/bin.tmp
start=$(date +%s)
rm -rf "$GOBIN"
mkdir -p "$GOBIN" "$bin"
module=github.com/containerd/containerd/v2
pkgs=()
for c in $components; do pkgs+=("$module/cmd/$c@$CONTAINERD_VERSION"); done
log "go install ${pkgs[*]} (about 1.5 min on 2 idle cores)"
# The version stamp makes `containerd --version` name the release, as upstream's Makefile does.
nice -n 10 go install -trimpath -tags "no_btrfs no_zfs no_devmapper no_aufs" \
    -ldflags="-s -w -X $module/version.Version=$CONTAINERD_VERSION" "${pkgs[@]}"
for c in $components; do mv "$GOBIN/$c" "$bin/$c"; done
rmdir "$GOBIN"

"$bin/containerd" --version >&2
echo "$want" >"$stamp"
log "built in $(($(date +%s) - start)) s; cache $(du -sh "$cache" | cut -f1) in $cache"
echo "$bin"

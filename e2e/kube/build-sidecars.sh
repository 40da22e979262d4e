#!/usr/bin/env bash
# Builds the Kubernetes CSI sidecars hanfs's API-flow tests (and images) run, from the Go
# module proxy, into a cache outside the repo:
#   ${HANFS_CACHE:-$HOME/.cache/hanfs}/sidecars-<key>/bin/{csi-provisioner,csi-attacher,
#       csi-resizer,csi-snapshotter,snapshot-controller}
#   ${HANFS_CACHE:-$HOME/.cache/hanfs}/sidecars-<key>/crd/*.yaml   (snapshot CRDs)
# where <key> names every version below, so a version bump builds a fresh cache.
#
# Usage: e2e/kube/build-sidecars.sh
#   Does nothing when the cache is complete. Progress goes to stderr; the last line on
#   stdout is the bin directory (the crd directory is its sibling).
#
# Each sidecar is built from a throwaway module that requires it, so its own go.mod decides
# the dependency versions (one module for all would let the newest client-go win and break
# the others). `go install …@version` would do the same for most, but not for
# external-resizer: its v2+ tags lack a /v2 module path, so the proxy's version list for the
# module is inconsistent and `go install` refuses it; requiring v1.14.0 explicitly works.
set -euo pipefail

PROVISIONER_VERSION=${PROVISIONER_VERSION:-v6.4.0}
SNAPSHOTTER_VERSION=${SNAPSHOTTER_VERSION:-v8.7.0}
ATTACHER_VERSION=${ATTACHER_VERSION:-v4.13.0}
RESIZER_VERSION=${RESIZER_VERSION:-v1.14.0}

key="p$PROVISIONER_VERSION-s$SNAPSHOTTER_VERSION-a$ATTACHER_VERSION-r$RESIZER_VERSION"
cache=${HANFS_CACHE:-$HOME/.cache/hanfs}/sidecars-$key
bin=$cache/bin
crd=$cache/crd
stamp=$cache/.complete
binaries="csi-provisioner csi-attacher csi-resizer csi-snapshotter snapshot-controller"
want="$binaries $key"

complete() {
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] || return 1
    local b
    for b in $binaries; do [ -x "$bin/$b" ] || return 1; done
    [ -f "$crd/snapshot.storage.k8s.io_volumesnapshots.yaml" ]
}

if complete; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache"
# Two test binaries may ask for the build at once; the second waits (bounded) for the first.
exec 9>"$cache/.lock"
if ! flock -w 3600 9; then
    echo "build-sidecars.sh: timed out waiting for another build holding $cache/.lock" >&2
    exit 1
fi
if complete; then
    echo "$bin"
    exit 0
fi
rm -f "$stamp"
command -v go >/dev/null || { echo "build-sidecars.sh: go is required (Debian: golang-go)" >&2; exit 1; }

export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
export GOTOOLCHAIN=local
start=$(date +%s)

log() { echo "build-sidecars.sh: $*" >&2; }

# build <module> <version> <cmd> [<cmd>...]: builds <module>/cmd/<cmd> into $bin/<cmd>.
build() {
    local module=$1 version=$2
    shift 2
    local c todo=()
    for c in "$@"; do [ -x "$bin/$c" ] || todo+=("$c"); done
    [ ${#todo[@]} -gt 0 ] || return 0
    local src=$cache/src/${module##*/}
    rm -rf "$src"
    mkdir -p "$src"
    cd "$src"
    go mod init "hanfs.local/${module##*/}-build" >/dev/null 2>&1
    go mod edit -require="$module@$version"
    local t0 out=$cache/bin.tmp
    t0=$(date +%s)
    rm -rf "$out"
    mkdir -p "$out"
    local pkgs=()
    for c in "${todo[@]}"; do pkgs+=("$module/cmd/$c"); done
    log "${todo[*]} ($module@$version): go build"
    # Every one of these mains reports `var version = "unknown"` unless stamped.
    nice -n 10 go build -trimpath -ldflags="-s -w -X main.version=$version" -o "$out/" "${pkgs[@]}"
    for c in "${todo[@]}"; do mv "$out/$c" "$bin/$c"; done
    rmdir "$out"
    log "${todo[*]}: $(($(date +%s) - t0)) s"
}

copy_crds() {
    local module=github.com/kubernetes-csi/external-snapshotter/client/v8 dir
    # `go mod download` needs a module context for -mod=mod; any directory works without one.
    dir=$(cd "$cache" && GOFLAGS='' go mod download -json "$module@$SNAPSHOTTER_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -d "$dir/config/crd" ] || { log "no config/crd in $module@$SNAPSHOTTER_VERSION ($dir)"; exit 1; }
    rm -rf "$crd.tmp"
    mkdir -p "$crd.tmp"
    # The module cache is read-only; the copies should not be.
    cp "$dir"/config/crd/*.yaml "$crd.tmp/"
    chmod u+w "$crd.tmp"/*.yaml
    rm -f "$crd.tmp/kustomization.yaml"
    rm -rf "$crd"
    mv "$crd.tmp" "$crd"
}

mkdir -p "$bin"
build github.com/kubernetes-csi/external-provisioner/v6 "$PROVISIONER_VERSION" csi-provisioner
build github.com/kubernetes-csi/external-snapshotter/v8 "$SNAPSHOTTER_VERSION" csi-snapshotter snapshot-controller
build github.com/kubernetes-csi/external-attacher/v4 "$ATTACHER_VERSION" csi-attacher
build github.com/kubernetes-csi/external-resizer "$RESIZER_VERSION" csi-resizer
copy_crds

for b in $binaries; do "$bin/$b" --version >&2 || { log "$b --version failed"; exit 1; }; done
echo "$want" >"$stamp"
log "built in $(($(date +%s) - start)) s; cache $(du -sh "$cache" | cut -f1) in $cache"
echo "$bin"

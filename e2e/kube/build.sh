#!/usr/bin/env bash
# Builds the Kubernetes components hanfs's tests run (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, all from one k8s.io/kubernetes version) and etcd from the Go module
# proxy into a cache outside the repo:
#   ${HANFS_CACHE:-$HOME/.cache/hanfs}/kube-$KUBE_VERSION/bin/{kube-apiserver,...,etcd}
#
# Usage: e2e/kube/build.sh
#   Does nothing when the cache is complete. Progress goes to stderr; the last line on
#   stdout is the bin directory, so callers (testkit) need not know the layout.
#
# Why a throwaway module: k8s.io/kubernetes' go.mod replaces every staging k8s.io/* module
# with ./staging/..., and replace directives of a dependency are ignored, so
# `go install k8s.io/kubernetes/cmd/kube-apiserver@v1.37.2` cannot resolve them. We pin
# each one to its published v0.x twin instead. etcd's server module has the same problem
# (replaces ../api etc.), and the same cure: require it from a module of our own.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
# etcd version k8s.io/kubernetes $KUBE_VERSION itself requires (go.etcd.io/etcd/server/v3).
ETCD_VERSION=${ETCD_VERSION:-v3.7.0}
# k8s.io/kubernetes v1.X.Y <-> staging modules v0.X.Y
STAGING_VERSION=v0.${KUBE_VERSION#v1.}

cache=${HANFS_CACHE:-$HOME/.cache/hanfs}/kube-$KUBE_VERSION
bin=$cache/bin
stamp=$cache/.complete
components="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"
want="$components $KUBE_VERSION etcd $ETCD_VERSION"

complete() {
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] || return 1
    local c
    for c in $components etcd; do [ -x "$bin/$c" ] || return 1; done
}

if complete; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache"
# Two test binaries may ask for the build at once; the second waits (bounded) for the first.
exec 9>"$cache/.lock"
if ! flock -w 3600 9; then
    echo "build.sh: timed out waiting for another build holding $cache/.lock" >&2
    exit 1
fi
# The holder we waited for may have finished the job.
if complete; then
    echo "$bin"
    exit 0
fi
rm -f "$stamp"
command -v go >/dev/null || { echo "build.sh: go is required (Debian: golang-go)" >&2; exit 1; }

export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
export GOTOOLCHAIN=local
start=$(date +%s)

log() { echo "build.sh: $*" >&2; }

build_kube() {
    local src=$cache/src/kubernetes
    rm -rf "$src"
    mkdir -p "$src"
    cd "$src"
    log "kubernetes $KUBE_VERSION: resolving modules in $src"
    go mod init hanfs.local/kubernetes-build >/dev/null 2>&1
    go mod edit -require="k8s.io/kubernetes@$KUBE_VERSION"
    go mod download k8s.io/kubernetes
    local kmod
    kmod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
    [ -f "$kmod" ] || { log "cannot find go.mod of k8s.io/kubernetes@$KUBE_VERSION"; exit 1; }
    local staged
    staged=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$kmod")
    [ -n "$staged" ] || { log "no staging replaces found in $kmod"; exit 1; }
    local m n=0
    for m in $staged; do
        go mod edit -replace="$m=$m@$STAGING_VERSION"
        n=$((n + 1))
    done
    log "pinned $n staging modules to $STAGING_VERSION"
    log "$components: go build (one build, shared packages; 10+ minutes on 2 cores)"
    # Without the version stamps the binary reports v0.0.0-master, and 1.3x derives its
    # emulation/compatibility version (feature gate defaults) from it.
    local v=k8s.io/component-base/version minor=${KUBE_VERSION#v1.}
    minor=${minor%%.*}
    local ldflags="-s -w -X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor"
    ldflags+=" -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
    # Only what is missing: a component added to the list later costs one link, not all.
    local c pkgs=() missing=() out=$cache/bin.tmp
    for c in $components; do
        [ -x "$bin/$c" ] && continue
        missing+=("$c")
        pkgs+=("k8s.io/kubernetes/cmd/$c")
    done
    rm -rf "$out"
    mkdir -p "$out"
    nice -n 10 go build -trimpath -ldflags="$ldflags" -o "$out/" "${pkgs[@]}"
    for c in "${missing[@]}"; do mv "$out/$c" "$bin/$c"; done
    rmdir "$out"
}

build_etcd() {
    local src=$cache/src/etcd
    rm -rf "$src"
    mkdir -p "$src"
    cd "$src"
    log "etcd $ETCD_VERSION: resolving modules in $src"
    go mod init hanfs.local/etcd-build >/dev/null 2>&1
    go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    log "etcd: go build"
    # go.etcd.io/etcd/server/v3 is itself the etcd main package (server/main.go).
    nice -n 10 go build -trimpath -ldflags='-s -w' -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$bin/etcd.tmp" "$bin/etcd"
}

mkdir -p "$bin"
[ -x "$bin/etcd" ] || build_etcd
kube_built=1
for c in $components; do [ -x "$bin/$c" ] || kube_built=0; done
[ "$kube_built" = 1 ] || build_kube

"$bin/kube-apiserver" --version >&2
"$bin/etcd" --version >&2
echo "$want" >"$stamp"
end=$(date +%s)
log "built in $((end - start)) s; cache $(du -sh "$cache" | cut -f1) in $cache"
echo "$bin"

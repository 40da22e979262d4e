#!/usr/bin/env bash
# Builds helm from the Go module proxy into a cache outside the repo:
#   ${HANFS_CACHE:-$HOME/.cache/hanfs}/helm-$HELM_VERSION/bin/helm
#
# Usage: e2e/kube/build-helm.sh
#   Does nothing when the cache is complete. Progress goes to stderr; the last line on
#   stdout is the bin directory (same contract as e2e/kube/build.sh).
#
# Why a throwaway module: helm.sh/helm/v3's go.mod carries replace directives, and
# `go install pkg@version` refuses any module whose go.mod has them. Requiring helm from a
# module of our own ignores them (a dependency's replaces never apply), which is fine as
# long as the published versions they point away from still build; they do for v3.22.0.
# We try the plain `go install` first anyway, so the throwaway module is only the fallback.
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}

cache=${HANFS_CACHE:-$HOME/.cache/hanfs}/helm-$HELM_VERSION
bin=$cache/bin
stamp=$cache/.complete
# "kube-defaults": the build stamps the Kubernetes version helm assumes offline (below).
want="helm $HELM_VERSION kube-defaults"

complete() {
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$bin/helm" ]
}

if complete; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache"
# Two callers may ask at once; the second waits (bounded) for the first.
exec 9>"$cache/.lock"
if ! flock -w 1800 9; then
    echo "build-helm.sh: timed out waiting for another build holding $cache/.lock" >&2
    exit 1
fi
if complete; then
    echo "$bin"
    exit 0
fi
rm -f "$stamp"
command -v go >/dev/null || { echo "build-helm.sh: go is required (Debian: golang-go)" >&2; exit 1; }

export CGO_ENABLED=0
export GOTOOLCHAIN=local
start=$(date +%s)
log() { echo "build-helm.sh: $*" >&2; }

# helm's Makefile stamps, through ldflags, its own version (else `helm version` says a dev
# build) and the Kubernetes version `helm template` / `helm lint` assume when no cluster is
# asked: client-go's minor (v0.X -> 1.X). Without them helm assumes Kubernetes 1.20 and
# refuses every chart with `kubeVersion: >=1.2x`.
gomod=$(GOFLAGS=-mod=mod go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[ -f "$gomod" ] || { log "cannot find go.mod of helm.sh/helm/v3@$HELM_VERSION"; exit 1; }
client_go=$(awk '$1 == "k8s.io/client-go" {print $2}' "$gomod")
kube_minor=$(echo "$client_go" | sed -n 's/^v0\.\([0-9]*\)\..*/\1/p')
[ -n "$kube_minor" ] || { log "no k8s.io/client-go version in $gomod"; exit 1; }
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$kube_minor"
done
log "helm $HELM_VERSION assumes Kubernetes 1.$kube_minor offline (client-go $client_go)"
mkdir -p "$bin"
rm -f "$bin/helm"
log "helm $HELM_VERSION: go install"
if ! GOBIN="$bin" GOFLAGS="-buildvcs=false" nice -n 10 \
    go install -trimpath -ldflags="$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" 2>"$cache/install.err"; then
    log "go install refused ($(tail -n 1 "$cache/install.err")); building in a throwaway module"
    src=$cache/src
    rm -rf "$src"
    mkdir -p "$src"
    cd "$src"
    go mod init hanfs.local/helm-build >/dev/null 2>&1
    go mod edit -require="helm.sh/helm/v3@$HELM_VERSION"
    GOFLAGS="-mod=mod -buildvcs=false" nice -n 10 \
        go build -trimpath -ldflags="$ldflags" -o "$bin/helm.tmp" helm.sh/helm/v3/cmd/helm
    mv "$bin/helm.tmp" "$bin/helm"
fi

got=$("$bin/helm" version --template '{{.Version}}')
[ "$got" = "$HELM_VERSION" ] || { log "built helm reports $got, want $HELM_VERSION"; exit 1; }
echo "$want" >"$stamp"
end=$(date +%s)
log "built in $((end - start)) s; $(du -sh "$bin/helm" | cut -f1) in $bin"
echo "$bin"

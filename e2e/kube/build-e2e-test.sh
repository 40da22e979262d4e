#!/usr/bin/env bash
# Builds what Kubernetes' external-storage e2e suite needs to run against hanfs, from the
# Go module proxy and Debian, into a cache outside the repo:
#   ${HANFS_CACHE:-$HOME/.cache/hanfs}/kube-e2e-$KUBE_VERSION/bin/{e2e.test,ginkgo,agnhost}
#   ${HANFS_CACHE:-$HOME/.cache/hanfs}/kube-e2e-$KUBE_VERSION/images/*.oci.tar
# The images are the test images the storage suites start pods from (busybox, agnhost, ...),
# named as the suite asks for them after e2e/kube/storage-e2e/repo-list.yaml remaps
# registry.k8s.io/e2e-test-images to hanfs.local/e2e (no registry can be pulled from here);
# import them on the node with `ctr -n k8s.io images import`.
#
# Usage: e2e/kube/build-e2e-test.sh
#   Does nothing when the cache is complete. Progress goes to stderr; the last line on
#   stdout is the bin directory (the images directory is its sibling).
#
# The throwaway module pins k8s.io/kubernetes' staging modules exactly as e2e/kube/build.sh
# does (replace directives of a dependency are ignored), with the same GOFLAGS,
# CGO_ENABLED=0 and -trimpath, so the packages e2e.test shares with kube-apiserver & co.
# come out of the Go build cache instead of being compiled again.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
STAGING_VERSION=v0.${KUBE_VERSION#v1.}
# Debian's statically linked busybox: the shell and coreutils of the test images.
BUSYBOX_PACKAGE=busybox-static

here=$(cd "$(dirname "$0")" && pwd)
cache=${HANFS_CACHE:-$HOME/.cache/hanfs}/kube-e2e-$KUBE_VERSION
bin=$cache/bin
images=$cache/images
stamp=$cache/.complete
binaries="e2e.test ginkgo agnhost"
# The image recipe is part of the key: editing it rebuilds the images (not the binaries).
recipe=$(sha256sum "$here/storage-e2e/build-images.py" "$here/storage-e2e/repo-list.yaml" | sha256sum | cut -c1-16)
want="$binaries $KUBE_VERSION images $recipe"

complete() {
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] || return 1
    local b
    for b in $binaries; do [ -x "$bin/$b" ] || return 1; done
    [ -f "$images/images.json" ]
}

if complete; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache"
# Two callers may ask for the build at once; the second waits (bounded) for the first.
exec 9>"$cache/.lock"
if ! flock -w 3600 9; then
    echo "build-e2e-test.sh: timed out waiting for another build holding $cache/.lock" >&2
    exit 1
fi
if complete; then
    echo "$bin"
    exit 0
fi
rm -f "$stamp"
command -v go >/dev/null || { echo "build-e2e-test.sh: go is required (Debian: golang-go)" >&2; exit 1; }

log() { echo "build-e2e-test.sh: $*" >&2; }

# The components first: the cluster this suite runs against needs them anyway, and a
# concurrent build of the same packages would compile them twice on 2 cores instead of
# once into the shared Go build cache. Waits on build.sh's own lock when it is running.
log "waiting for / checking the Kubernetes components (e2e/kube/build.sh)"
"$here/build.sh" >/dev/null

export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
export GOTOOLCHAIN=local
start=$(date +%s)

# step <what> <command...>: runs a build step and logs how long it took.
step() {
    local what=$1 t0
    shift
    t0=$(date +%s)
    "$@"
    log "$what: $(($(date +%s) - t0)) s"
}

module() {
    local src=$cache/src/kubernetes
    rm -rf "$src"
    mkdir -p "$src"
    cd "$src"
    log "kubernetes $KUBE_VERSION: resolving modules in $src"
    go mod init hanfs.local/kubernetes-e2e-build >/dev/null 2>&1
    go mod edit -require="k8s.io/kubernetes@$KUBE_VERSION"
    go mod download k8s.io/kubernetes
    local kmod
    kmod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
    [ -f "$kmod" ] || { log "cannot find go.mod of k8s.io/kubernetes@$KUBE_VERSION"; exit 1; }
    local staged m n=0
    staged=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$kmod")
    [ -n "$staged" ] || { log "no staging replaces found in $kmod"; exit 1; }
    for m in $staged; do
        go mod edit -replace="$m=$m@$STAGING_VERSION"
        n=$((n + 1))
    done
    log "pinned $n staging modules to $STAGING_VERSION"
    # ginkgo's CLI must be the version the test binary links (k8s.io/kubernetes' go.mod).
    ginkgo_version=$(sed -n 's#^[[:space:]]*github.com/onsi/ginkgo/v2 \(v[^[:space:]]*\).*#\1#p' "$kmod")
    [ -n "$ginkgo_version" ] || { log "no github.com/onsi/ginkgo/v2 in $kmod"; exit 1; }
}

# The same version stamps as build.sh: e2e.test logs its version and compares it with the
# server's; v0.0.0-master would be misleading.
ldflags() {
    local v=k8s.io/component-base/version minor=${KUBE_VERSION#v1.}
    minor=${minor%%.*}
    echo "-s -w -X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor" \
        "-X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
}

build_e2e_test() {
    log "e2e.test: go test -c k8s.io/kubernetes/test/e2e (the first time: 10+ minutes on 2 cores)"
    nice -n 10 go test -c -trimpath -ldflags="$(ldflags)" -o "$bin/e2e.test.tmp" k8s.io/kubernetes/test/e2e
    mv "$bin/e2e.test.tmp" "$bin/e2e.test"
}

build_agnhost() {
    # The version the suite's image name carries; agnhost prints it with --version.
    local version
    version=$(cat "$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost/VERSION")
    log "agnhost $version: go build"
    nice -n 10 go build -trimpath -ldflags="-s -w -X main.Version=$version" -o "$bin/agnhost.tmp" \
        k8s.io/kubernetes/test/images/agnhost
    mv "$bin/agnhost.tmp" "$bin/agnhost"
}

build_ginkgo() {
    log "ginkgo $ginkgo_version: go build"
    nice -n 10 go build -trimpath -ldflags='-s -w' -o "$bin/ginkgo.tmp" github.com/onsi/ginkgo/v2/ginkgo
    mv "$bin/ginkgo.tmp" "$bin/ginkgo"
}

busybox_deb() {
    local dir=$cache/debs
    mkdir -p "$dir"
    if ! ls "$dir"/${BUSYBOX_PACKAGE}_*.deb >/dev/null 2>&1; then
        log "$BUSYBOX_PACKAGE: apt-get download"
        (cd "$dir" && apt-get download "$BUSYBOX_PACKAGE" >&2)
    fi
    # shellcheck disable=SC2012 # one file, a Debian package name: no odd characters
    ls "$dir"/${BUSYBOX_PACKAGE}_*.deb | tail -n1
}

build_images() {
    local deb list=$cache/image-list.txt
    deb=$(busybox_deb)
    # The suite's own answer to "which image names will you ask for" after the remap, so
    # the archives carry exactly those names (build-images.py checks each is listed).
    env -u KUBE_TEST_REPO_LIST "$bin/e2e.test" --list-images \
        --kube-test-repo-list="$here/storage-e2e/repo-list.yaml" >"$list"
    rm -rf "$images.tmp"
    python3 "$here/storage-e2e/build-images.py" --agnhost "$bin/agnhost" --busybox-deb "$deb" \
        --image-list "$list" --out "$images.tmp" >/dev/null
    rm -rf "$images"
    mv "$images.tmp" "$images"
}

mkdir -p "$bin"
module
[ -x "$bin/e2e.test" ] || step "e2e.test built" build_e2e_test
[ -x "$bin/agnhost" ] || step "agnhost built" build_agnhost
[ -x "$bin/ginkgo" ] || step "ginkgo built" build_ginkgo
step "images built" build_images

"$bin/e2e.test" --version >&2 2>&1 || true
"$bin/ginkgo" version >&2
"$bin/agnhost" --version >&2 2>&1 || true
ls -l "$bin" "$images" >&2
echo "$want" >"$stamp"
log "done in $(($(date +%s) - start)) s; cache $(du -sh "$cache" | cut -f1) in $cache"
echo "$bin"

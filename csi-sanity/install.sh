#!/usr/bin/env bash
# Installs the upstream csi-sanity (kubernetes-csi/csi-test) from the Go module proxy into
# the hanfs cache once, and prints the binary's path. Used by run.sh (local mode) and by
# the VM end-to-end run (csi-sanity over real NFS).
set -euo pipefail
version=v5.6.0
cache=${HANFS_CACHE:-$HOME/.cache/hanfs}/csi-sanity-$version
sanity=$cache/csi-sanity
if [ ! -x "$sanity" ]; then
    echo "installing csi-sanity $version into $cache" >&2
    mkdir -p "$cache"
    GOBIN=$cache GOFLAGS=-mod=mod go install "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$version" >&2
fi
echo "$sanity"

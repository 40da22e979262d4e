#!/usr/bin/env bash
# Checks the storage e2e suite's test images (e2e/kube/build-e2e-test.sh) the way the node
# will use them: a throwaway containerd (own root, state and socket in a temp dir; no CRI)
# imports each archive, must list it under the reference and manifest digest images.json
# names, and runc runs in each image the programs the storage suites run there: sh, dd |
# sha256sum, base64, mount, nsenter, sync (busybox and its stand-ins), and agnhost's
# --version, `mounttest` and `pause` subcommands.
#
# Usage (as root: containerd, runc): e2e/kube/storage-e2e/test-images.sh
# Last line: `storage-e2e images: N passed, M failed`.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
finish() {
    echo "storage-e2e images: $passed passed, $failed failed"
    [ "$failed" = 0 ] && [ "$passed" -gt 0 ]
    exit $?
}
[ "$(id -u)" = 0 ] || { fail "needs root (containerd, runc)"; finish; }
command -v runc >/dev/null || { fail "runc not found (Debian: runc)"; finish; }

bin=$("$here/../build-e2e-test.sh" | tail -n1) || { fail "build-e2e-test.sh"; finish; }
images=$(dirname "$bin")/images
cbin=$("$here/../build-containerd.sh" | tail -n1) || { fail "build-containerd.sh"; finish; }
export PATH=$cbin:$PATH # containerd finds containerd-shim-runc-v2 on PATH

tmp=$(mktemp -d /tmp/hanfs-e2e-images.XXXXXX)
ctrd_pid=
ctr=("$cbin/ctr" --address "$tmp/containerd.sock" -n k8s.io)
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local rc=$? c
    set +e
    if [ -n "$ctrd_pid" ]; then
        # Shims outlive containerd: remove the containers first.
        for c in $("${ctr[@]}" containers ls -q 2>/dev/null); do
            "${ctr[@]}" task kill -s SIGKILL "$c" >/dev/null 2>&1
            "${ctr[@]}" task delete -f "$c" >/dev/null 2>&1
            "${ctr[@]}" containers delete "$c" >/dev/null 2>&1
        done
        kill "$ctrd_pid" 2>/dev/null
        wait "$ctrd_pid" 2>/dev/null
    fi
    grep -o " ${tmp}[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf "$tmp"
    rmdir /run/containerd/s /run/containerd 2>/dev/null
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$tmp/config.toml" <<EOF
version = 4
root = "$tmp/root"
state = "$tmp/state"
imports = []
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
"$cbin/containerd" --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
ctrd_pid=$!
up=0
for _ in $(seq 60); do
    "${ctr[@]}" version >/dev/null 2>&1 && { up=1; break; }
    kill -0 "$ctrd_pid" 2>/dev/null || break
    sleep 0.5
done
[ "$up" = 1 ] || { tail -20 "$tmp/containerd.log"; fail "containerd did not answer within 30 s"; finish; }

# ref digest archive, one line per image
mapfile -t listed < <(python3 -c '
import json, sys
for i in json.load(open(sys.argv[1]))["images"]:
    print(i["ref"], i["manifest_digest"], i["archive"])' "$images/images.json")
[ "${#listed[@]}" -gt 0 ] || { fail "no image in $images/images.json"; finish; }
declare -A ref_of
for line in "${listed[@]}"; do
    read -r ref digest archive <<<"$line"
    if ! "${ctr[@]}" images import "$images/$archive" >"$tmp/import.log" 2>&1; then
        fail "import $archive: $(tr '\n' ' ' <"$tmp/import.log")"
        continue
    fi
    got=$("${ctr[@]}" images ls 2>/dev/null | awk -v r="$ref" '$1 == r {print $3}')
    if [ "$got" = "$digest" ]; then pass "import $archive as $ref"; else fail "import $archive: '$got' for $ref, want $digest"; fi
    name=${ref##*/}
    ref_of[${name%%:*}]=$ref
done

run_opts=(--rm --fifo-dir "$tmp/fifo" --runc-root "$tmp/runc")
# check <image> <want (grep -E)> <cmd...>: runs cmd in the image, its output must match.
check() {
    local image=$1 want=$2 out
    shift 2
    if out=$(timeout 60 "${ctr[@]}" run "${run_opts[@]}" "${ref_of[$image]}" "t-$image-$RANDOM" "$@" 2>"$tmp/run.log") &&
        grep -Eq "$want" <<<"$out"; then
        pass "$image: $*"
    else
        fail "$image: $* -> '$out' $(grep -v DEPRECATION "$tmp/run.log" | tr '\n' ' ')"
    fi
}
# What storage/utils and e2epod run: a write + checksum (CheckWriteToPath/CheckReadFromPath),
# base64 decode, sync (snapshottable), mount | grep (provisioning's mount options check).
shell='echo aGVsbG8= | base64 -d >/tmp/f && dd if=/tmp/f bs=5 count=1 2>/dev/null | sha256sum && sync && mount | grep -c " / "'
hello=2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
for image in busybox nginx glibc-dns-testing agnhost; do
    [ -n "${ref_of[$image]:-}" ] || { fail "$image: not imported"; continue; }
    check "$image" "$hello" /bin/sh -c "$shell"
done
check agnhost 'version 2\.66\.1$' /agnhost --version
# hostexec pods exec nsenter in the agnhost image; subPath runs agnhost mounttest.
# The hostexec pod is privileged; so is this run (nsenter needs CAP_SYS_ADMIN).
run_opts+=(--privileged)
check agnhost '^entered$' nsenter --mount=/proc/1/ns/mnt -- sh -c 'echo entered'
check agnhost 'mode of file "/tmp": d?[-rwxt]+' /agnhost mounttest --file_mode=/tmp
finish

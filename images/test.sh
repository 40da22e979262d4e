#!/usr/bin/env bash
# Builds hanfs's images as OCI archives (images/build.py) and proves them with a real
# containerd + runc: each archive imports under its name and manifest digest, a rebuild
# gives the same digests, the binaries start inside their images, the storage agent's image
# holds every program the agent runs, and pause stops on SIGTERM and reaps orphans.
#
# Usage (as root: containerd, runc, chroot, namespaces): images/test.sh
#   HANFS_SIDECAR_BIN_DIR=DIR  take the sidecar binaries from DIR instead of
#                              e2e/kube/build-sidecars.sh; HANFS_SIDECAR_BIN_DIR=none: no sidecars
# The last line is `images: N passed, M failed`; the exit status is 0 only when M is 0.
# A throwaway containerd (own root, state and socket in a temp dir) runs for the test and
# is stopped, with its containers and mounts, on every exit path.
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1 # `import build` below must not leave images/__pycache__

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
passed=0
failed=0
log() { echo "images/test: $*" >&2; }
pass() {
    passed=$((passed + 1))
    log "PASS $*"
}
fail() {
    failed=$((failed + 1))
    log "FAIL $*"
}
finish() {
    echo "images: $passed passed, $failed failed"
    [ "$failed" = 0 ] && exit 0
    exit 1
}

[ "$(id -u)" = 0 ] || {
    log "needs root (containerd, runc, chroot)"
    failed=1
    finish
}

tmp=$(mktemp -d /tmp/hanfs-images-test.XXXXXX)
ctrd_pid=
unshare_pid=
ctr=()
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local rc=$? m
    set +e # every step below runs, whatever the one before it did
    [ -z "$unshare_pid" ] || kill -KILL "$unshare_pid" 2>/dev/null || true
    if [ -n "$ctrd_pid" ]; then
        # Containers outlive containerd (their shims keep running): remove them first.
        local c
        for c in $("${ctr[@]}" containers ls -q 2>/dev/null); do
            "${ctr[@]}" task kill -s SIGKILL "$c" >/dev/null 2>&1 || true
            "${ctr[@]}" task delete -f "$c" >/dev/null 2>&1 || true
            "${ctr[@]}" containers delete "$c" >/dev/null 2>&1 || true
        done
        for m in "$tmp"/mnt/*; do
            if [ -d "$m" ]; then "${ctr[@]}" images unmount "$m" >/dev/null 2>&1 || true; fi
        done
        kill "$ctrd_pid" 2>/dev/null || true
        wait "$ctrd_pid" 2>/dev/null || true
    fi
    # Snapshot mounts containerd may have left (deepest first).
    grep -o " ${tmp}[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf "$tmp"
    # The shims' socket folder is fixed (/run/containerd/s); drop it if we left it empty.
    rmdir /run/containerd/s /run/containerd 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # so an interrupted run cleans up too

# --- build ------------------------------------------------------------------------------
t0=$(date +%s)
(cd "$repo" && nice -n 10 cargo build --release --bins) >"$tmp/cargo.log" 2>&1 || {
    tail -20 "$tmp/cargo.log" >&2
    fail "cargo build --release --bins"
    finish
}
log "release binaries ready after $(($(date +%s) - t0)) s"

sidecars=${HANFS_SIDECAR_BIN_DIR:-}
if [ -z "$sidecars" ] && [ -x "$repo/e2e/kube/build-sidecars.sh" ]; then
    t0=$(date +%s)
    if sidecars=$("$repo/e2e/kube/build-sidecars.sh" | tail -1); then
        log "sidecars in $sidecars after $(($(date +%s) - t0)) s"
    else
        fail "e2e/kube/build-sidecars.sh"
        sidecars=
    fi
fi
[ "$sidecars" = none ] && sidecars=
sidecar_args=()
[ -n "$sidecars" ] && sidecar_args=(--sidecar-bin-dir "$sidecars")

t0=$(date +%s)
if out=$(HANFS_SIDECAR_BIN_DIR='' python3 "$here/build.py" "${sidecar_args[@]}" | tail -1) && [ -f "$out/images.json" ]; then
    pass "build.py: $out in $(($(date +%s) - t0)) s"
else
    fail "build.py"
    finish
fi
# Digest stability: a second build from the same inputs into another folder (every layer
# but the cached Debian base rewritten) must give the same manifest digests.
digests() { python3 -c 'import json,sys; [print(i["ref"], i["manifest_digest"]) for i in json.load(open(sys.argv[1]))["images"]]' "$1"; }
t0=$(date +%s)
if HANFS_SIDECAR_BIN_DIR='' python3 "$here/build.py" "${sidecar_args[@]}" --out "$tmp/rebuild" >/dev/null 2>"$tmp/rebuild.log"; then
    if diff <(digests "$out/images.json") <(digests "$tmp/rebuild/images.json") >&2; then
        pass "rebuild gives the same digests ($(($(date +%s) - t0)) s)"
    else
        fail "rebuild changed digests (above)"
    fi
else
    tail -5 "$tmp/rebuild.log" >&2
    fail "rebuild with --out"
fi
rm -rf "$tmp/rebuild"
mapfile -t images < <(digests "$out/images.json")

# --- containerd ---------------------------------------------------------------------------
bin=$("$repo/e2e/kube/build-containerd.sh" | tail -1)
export PATH=$bin:$PATH # containerd finds containerd-shim-runc-v2 on PATH
mkdir -p "$tmp/mnt"
# containerd 2.4's config schema (version 4): the sockets are the server plugins'.
cat >"$tmp/config.toml" <<EOF
version = 4
root = "$tmp/root"
state = "$tmp/state"
# Nothing from the host's /etc/containerd.
imports = []
# Images and tasks only: no CRI, so no CNI and no kubelet-facing socket.
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
log "containerd pid $ctrd_pid, root/state/socket in $tmp"
up=0
for _ in $(seq 60); do
    if "${ctr[@]}" version >/dev/null 2>&1; then
        up=1
        break
    fi
    kill -0 "$ctrd_pid" 2>/dev/null || break
    sleep 0.5
done
if [ "$up" = 1 ]; then
    pass "containerd $("$bin/containerd" --version | awk '{print $3}') up"
else
    tail -20 "$tmp/containerd.log" >&2
    fail "containerd did not answer within 30 s"
    finish
fi

# --- import -------------------------------------------------------------------------------
for line in "${images[@]}"; do
    read -r ref digest <<<"$line"
    name=${ref#hanfs.local/}
    name=${name%%:*}
    if ! "${ctr[@]}" images import "$out/$name.oci.tar" >"$tmp/import.log" 2>&1; then
        cat "$tmp/import.log" >&2
        fail "import $name.oci.tar"
        continue
    fi
    # ls columns: REF TYPE DIGEST SIZE PLATFORMS LABELS
    got=$("${ctr[@]}" images ls 2>>"$tmp/ctr.log" | awk -v r="$ref" '$1 == r {print $3}')
    if [ "$got" = "$digest" ]; then
        pass "import $ref ($digest)"
    else
        "${ctr[@]}" images ls >&2
        fail "import $name.oci.tar: ctr images ls shows '${got:-nothing}' for $ref, want $digest"
    fi
done
ref_of() { printf '%s\n' "${images[@]}" | awk -v n="hanfs.local/$1:" 'index($1, n) == 1 {print $1}'; }
version=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$out/images.json")

# --- run ----------------------------------------------------------------------------------
# `ctr run IMAGE ID CMD...` replaces the image's entrypoint with CMD (pause below runs
# the entrypoint itself). stdout is the program's; stderr (runc's cgroup v1 deprecation
# warnings among it) goes to run.log, shown on failure.
run_in() {
    local name=$1
    shift
    timeout 60 "${ctr[@]}" run "${run_opts[@]}" "$(ref_of "$name")" "t-$name-$RANDOM" "$@" 2>"$tmp/run.log"
}
# ctr's FIFOs and runc's state go to the temp dir too (their defaults are under /run/containerd).
run_opts=(--rm --fifo-dir "$tmp/fifo" --runc-root "$tmp/runc")
run_log() { tr '\n' ' ' <"$tmp/run.log"; }
runs=1
if ! command -v runc >/dev/null; then
    log "runc not found (apt-get install runc): containers are not run, only their trees checked"
    runs=0
elif ! run_in hanfs-controller /usr/local/bin/hanfs-controller --version >/dev/null; then
    # The host's cgroups are v1 (hybrid); say exactly what refused, then check the trees.
    log "ctr run refused: $(run_log)"
    fail "ctr run hanfs-controller --version (runc $(runc --version | head -1 | awk '{print $3}'))"
    runs=0
fi
if [ "$runs" = 1 ]; then
    for name in hanfs-controller hanfs-node hanfs-backend; do
        if o=$(run_in "$name" "/usr/local/bin/$name" --version) && grep -q "$version" <<<"$o"; then
            pass "ctr run $name --version: $o"
        else
            fail "ctr run $name --version: $o $(run_log)"
        fi
        if o=$(run_in "$name" "/usr/local/bin/$name" --help) && grep -qi "usage" <<<"$o"; then
            pass "ctr run $name --help"
        else
            fail "ctr run $name --help: $o $(run_log)"
        fi
    done
    if [ -n "$sidecars" ]; then
        for b in "$sidecars"/*; do
            [ -x "$b" ] || continue
            name=$(basename "$b")
            # Their flags are Go's: --version prints e.g. "csi-provisioner v6.4.0" (klog
            # may put it on stderr), exit 0.
            tag=$(ref_of "$name")
            tag=${tag##*:}
            if o=$(run_in "$name" "/$name" --version) && o=$(printf '%s\n' "$o" "$(grep -v DEPRECATION "$tmp/run.log")") &&
                line=$(grep -m1 "$name $tag\$" <<<"$o"); then
                pass "ctr run $name --version: $line"
            else
                fail "ctr run $name --version: $o $(run_log)"
            fi
        done
    fi
    # pause: runs until SIGTERM, then exits 0 at once.
    id=t-pause-$RANDOM
    timeout 60 "${ctr[@]}" run "${run_opts[@]}" "$(ref_of pause)" "$id" >"$tmp/pause.log" 2>&1 &
    run_pid=$!
    state=
    for _ in $(seq 40); do
        state=$("${ctr[@]}" task ls 2>/dev/null | awk -v id="$id" '$1 == id {print $3}')
        [ "$state" = RUNNING ] && break
        sleep 0.25
    done
    sleep 1 # still running a moment later: it blocks rather than exits
    state=$("${ctr[@]}" task ls 2>/dev/null | awk -v id="$id" '$1 == id {print $3}')
    "${ctr[@]}" task kill -s SIGTERM "$id" >/dev/null 2>&1 || true
    t0=$(date +%s%N)
    if wait "$run_pid"; then rc=0; else rc=$?; fi
    ms=$((($(date +%s%N) - t0) / 1000000))
    if [ "$state" = RUNNING ] && [ "$rc" = 0 ] && [ "$ms" -lt 5000 ]; then
        pass "ctr run pause: runs, exits 0 ${ms} ms after SIGTERM"
    else
        cat "$tmp/pause.log" >&2
        fail "ctr run pause: state '$state' before SIGTERM, exit $rc after $ms ms"
    fi
fi

# --- trees --------------------------------------------------------------------------------
# The unpacked image roots, mounted by containerd itself (its snapshot of each image).
mount_image() {
    local name=$1 dir=$tmp/mnt/$1
    mkdir -p "$dir"
    "${ctr[@]}" images mount "$(ref_of "$name")" "$dir" >/dev/null 2>"$tmp/mount.log" || {
        cat "$tmp/mount.log" >&2
        return 1
    }
    echo "$dir"
}
for name in hanfs-controller hanfs-node; do
    if ! root=$(mount_image "$name"); then
        fail "ctr images mount $name"
        continue
    fi
    # Exactly the binary, its libraries and the skeleton: no shell, no package manager.
    extra=$(cd "$root" && find . -type f ! -path ./usr/local/bin/"$name" ! -name '*.so*' ! -path ./etc/nsswitch.conf)
    if [ -z "$extra" ] && [ ! -e "$root/bin/sh" ]; then
        pass "$name tree: binary + $(cd "$root" && find . -type f -name '*.so*' | wc -l) libraries, no shell"
    else
        fail "$name tree has more than binary + libraries: $extra"
    fi
    # Exec in the unpacked root without ldd: the loader must find every library there.
    if o=$(timeout 30 chroot "$root" "/usr/local/bin/$name" --version 2>&1) && grep -q "$version" <<<"$o"; then
        pass "chroot $name --version: $o"
    else
        fail "chroot $name --version: $o"
    fi
    "${ctr[@]}" images unmount "$root" >/dev/null 2>&1 || true
done
if root=$(mount_image hanfs-backend); then
    # What drivers/{drbd,fs_mount,nfsd}.rs run, plus the admin's tools (BACKEND_PROGRAMS).
    mapfile -t progs < <(python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import build; print("\n".join(build.BACKEND_PROGRAMS))' "$here")
    # In the running container where runc works (the real environment), else in the tree.
    # shellcheck disable=SC2016 # expanded by the image's sh
    script='for p; do command -v "$p" || echo "missing $p"; done'
    if [ "$runs" = 1 ]; then
        o=$(run_in hanfs-backend /bin/sh -c "$script" sh "${progs[@]}") || o="$o $(run_log)"
    else
        o=$(timeout 30 chroot "$root" /bin/sh -c "$script" sh "${progs[@]}" 2>&1) || true
    fi
    if [ "$(grep -c '^/' <<<"$o")" = "${#progs[@]}" ] && ! grep -q missing <<<"$o"; then
        pass "hanfs-backend holds ${progs[*]}"
    else
        fail "hanfs-backend lacks programs: $o"
    fi
    if o=$(timeout 30 chroot "$root" drbdadm --version 2>&1 | grep DRBDADM_VERSION=) &&
        o2=$(timeout 30 chroot "$root" /usr/local/bin/hanfs-backend --version 2>&1) && grep -q "$version" <<<"$o2"; then
        pass "chroot hanfs-backend: $o2, $o"
    else
        fail "chroot hanfs-backend --version / drbdadm --version: $o $o2"
    fi
    "${ctr[@]}" images unmount "$root" >/dev/null 2>&1 || true
else
    fail "ctr images mount hanfs-backend"
fi

# --- pause reaps orphans ------------------------------------------------------------------
# pause as PID 1 of a new PID namespace; a process entering it leaves an orphan behind,
# which becomes pause's child. Without reaping it would stay a zombie.
pause_bin=$(python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import build; print(build.build_pause(build.cache_root()))' "$here")
unshare --pid --fork --kill-child "$pause_bin" &
unshare_pid=$!
pause_pid=
for _ in $(seq 40); do
    pause_pid=$(pgrep -P "$unshare_pid" || true)
    [ -n "$pause_pid" ] && break
    sleep 0.1
done
if [ -n "$pause_pid" ]; then
    nsenter -t "$pause_pid" -p -- sh -c 'sleep 0.3 & exit 0'
    sleep 1.5
    zombies=$(pgrep -c -r Z -P "$pause_pid" || true)
    children=$(pgrep -c -P "$pause_pid" || true)
    kill -TERM "$pause_pid"
    if wait "$unshare_pid"; then rc=0; else rc=$?; fi
    unshare_pid=
    if [ "$zombies" = 0 ] && [ "$children" = 0 ] && [ "$rc" = 0 ]; then
        pass "pause reaps an orphan and exits 0 on SIGTERM"
    else
        fail "pause: $zombies zombies / $children children left, exit $rc"
    fi
else
    kill "$unshare_pid" 2>/dev/null || true
    fail "pause did not start under unshare"
fi

log "sizes (compressed layers / unpacked):"
python3 -c '
import json, sys
for i in json.load(open(sys.argv[1]))["images"]:
    ref, c, u = i["ref"], i["compressed_bytes"] / 2**20, i["unpacked_bytes"] / 2**20
    print(f"images/test:   {ref:<52} {c:7.1f} MiB {u:7.1f} MiB", file=sys.stderr)
' "$out/images.json"
finish

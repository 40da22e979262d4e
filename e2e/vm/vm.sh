#!/usr/bin/env bash
# Runs the hanfs test VMs (image from build-image.sh) inside a private network namespace:
# the namespace holds bridge br0 (the host side's address, e.g. 10.80.0.1/24) and one tap
# device per VM, enslaved to the bridge. Nothing is attached to a host interface, so the
# guests reach only each other and processes started in that namespace.
#
#   vm.sh net-up <ns> <bridge-ip/len> <ntaps>   create <ns> with br0 and tap0..tap<n-1>
#   vm.sh net-down <ns>                         SIGKILL what runs inside, delete <ns>
#   vm.sh qemu <image-dir> <vm-dir> <ns> <tap> <name> <ip/len>
#       runs one VM in the foreground until it exits (or SIGTERM/SIGINT/HUP, or the death of
#       $OWNER_PID: then its qemu is SIGKILLed). qemu runs in <ns> under `timeout -s KILL
#       $HANFS_VM_LIFETIME` (default 3600 s), pid in <vm-dir>/qemu.pid. <vm-dir> holds:
#         share/       9p share "hanfs-share" (read-write), the guest's /hanfs/share; its
#                      mailbox/ is the command channel (see guest-init.sh), created here
#         data.img     attached as /dev/vdb if it exists (persists: not snapshot=on)
#         console.log  serial console (appended across restarts)
#       The root disk <image-dir>/root.ext4 is shared read-only (snapshot=on: writes go to
#       a throwaway overlay). Optional env: HANFS_VM_HOSTDIR (a host folder shared read-only
#       as /hanfs/bin, on the guest's PATH), HANFS_VM_HOSTS ("name:ip,..." for /etc/hosts),
#       HANFS_VM_GW (default route), HANFS_VM_MEM (MiB, default 512), HANFS_VM_CPUS (default 1), HANFS_VM_ACCEL
#       (default tcg; kvm where it works).
#   vm.sh exec <vm-dir> [timeout-s] <script     run stdin as a bash script in the guest via
#       the mailbox; prints its stdout/stderr, exits with its exit code (124: no answer)
#   vm.sh up <workdir> <name>=<ip>[+data] ...   a whole cluster in the foreground for manual
#       use (bridge 10.80.0.1/24, IPs given without /24): builds the image, starts the VMs,
#       waits for their mailboxes, prints how to reach them; Ctrl-C stops and deletes all.
#       A "+data" VM gets a blank 512 MiB data disk (kept in <workdir> across runs).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "vm.sh: $*" >&2; exit 1; }

# SIGKILLs the qemu whose pidfile is $1, if that pid still runs qemu for this vm-dir.
kill_pidfile() {
    local pidfile=$1 pid
    pid=$(cat "$pidfile" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pidfile"; then
        kill -9 "$pid" 2>/dev/null || true
    fi
}

net_up() {
    local ns=$1 cidr=$2 n=$3 i
    if ! [[ $n =~ ^[0-9]+$ ]] || [ "$n" -gt 64 ]; then die "ntaps must be 0-64, got '$n'"; fi
    ip netns list | awk '{print $1}' | grep -qx -- "$ns" && die "namespace $ns exists already"
    trap 'rc=$?; [ $rc -eq 0 ] || net_down "$ns"; exit $rc' EXIT
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add br0 type bridge
    ip -n "$ns" addr add "$cidr" dev br0
    ip -n "$ns" link set br0 up
    for ((i = 0; i < n; i++)); do
        ip -n "$ns" tuntap add dev "tap$i" mode tap
        ip -n "$ns" link set "tap$i" master br0
        ip -n "$ns" link set "tap$i" up
    done
}

net_down() {
    local ns=$1 pids i
    ip netns list | awk '{print $1}' | grep -qx -- "$ns" || return 0
    for i in $(seq 1 20); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -z "$pids" ] && break
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null || true
        sleep 0.1
    done
    [ -z "$(ip netns pids "$ns" 2>/dev/null || true)" ] || echo "vm.sh: processes survive in $ns" >&2
    ip netns delete "$ns"
}

run_qemu() {
    local img=$1 dir=$2 ns=$3 tap=$4 name=$5 cidr=$6
    local ip=${cidr%/*} mac append q life=${HANFS_VM_LIFETIME:-3600}
    [ -f "$img/.complete" ] || die "no complete image in $img (run build-image.sh)"
    dir=$(cd "$dir" && pwd)
    mkdir -p "$dir/share/mailbox"
    rm -f "$dir/qemu.pid" "$dir/share/ready"
    IFS=. read -r _ b c d <<<"$ip"
    mac=$(printf '52:54:%02x:%02x:%02x:%02x' 0 "$b" "$c" "$d")
    append="console=ttyS0 root=/dev/vda rw panic=1 loglevel=4 mitigations=off no_timer_check"
    append+=" 8250.nr_uarts=1 hanfs.name=$name hanfs.ip=$cidr"
    [ -n "${HANFS_VM_HOSTS:-}" ] && append+=" hanfs.hosts=$HANFS_VM_HOSTS"
    [ -n "${HANFS_VM_GW:-}" ] && append+=" hanfs.gw=$HANFS_VM_GW"
    local args=(
        -name "$name" -accel "${HANFS_VM_ACCEL:-tcg}" -machine pc -cpu max -smp "${HANFS_VM_CPUS:-1}" -m "${HANFS_VM_MEM:-512}"
        -nodefaults -no-user-config -display none -no-reboot
        -kernel "$img/vmlinuz" -initrd "$img/initrd.img" -append "$append"
        -chardev "file,id=ser0,path=$dir/console.log,append=on" -serial chardev:ser0
        -drive "file=$img/root.ext4,format=raw,if=virtio,snapshot=on"
        -netdev "tap,id=net0,ifname=$tap,script=no,downscript=no"
        -device "virtio-net-pci,netdev=net0,mac=$mac"
        -fsdev "local,id=share,path=$dir/share,security_model=none"
        -device "virtio-9p-pci,fsdev=share,mount_tag=hanfs-share"
        -pidfile "$dir/qemu.pid"
    )
    if [ -f "$dir/data.img" ]; then
        args+=(-drive "file=$dir/data.img,format=raw,if=virtio,cache=writeback,aio=threads")
    fi
    if [ -n "${HANFS_VM_HOSTDIR:-}" ]; then
        [ -d "$HANFS_VM_HOSTDIR" ] || die "HANFS_VM_HOSTDIR $HANFS_VM_HOSTDIR is not a folder"
        args+=(-fsdev "local,id=bin,path=$HANFS_VM_HOSTDIR,security_model=none,readonly=on"
            -device "virtio-9p-pci,fsdev=bin,mount_tag=hanfs-bin")
    fi
    echo "vm.sh: $(date +%T.%N) starting $name ($cidr) in $ns on $tap" >&2
    # --foreground keeps qemu in our process group, so a group kill reaches it. The
    # snapshot=on overlay goes to TMPDIR (unlinked at once by qemu).
    TMPDIR=$dir ip netns exec "$ns" timeout --foreground -s KILL "$life" \
        qemu-system-x86_64 "${args[@]}" &
    q=$!
    stop() {
        kill_pidfile "$dir/qemu.pid"
        kill -9 "$q" 2>/dev/null || true
    }
    trap 'stop; exit 143' TERM INT HUP
    while kill -0 "$q" 2>/dev/null; do
        if [ -n "${OWNER_PID:-}" ] && ! kill -0 "$OWNER_PID" 2>/dev/null; then
            echo "vm.sh: owner $OWNER_PID is gone, killing $name" >&2
            stop
            break
        fi
        sleep 1 &
        wait $! || true
    done
    local rc=0
    wait "$q" || rc=$?
    echo "vm.sh: $(date +%T.%N) $name's qemu exited ($rc)" >&2
    exit "$rc"
}

mailbox_exec() {
    local dir=$1 t=${2:-60} mb id i rc
    mb=$dir/share/mailbox
    [ -d "$mb" ] || die "no mailbox in $dir"
    id=sh-$$-$RANDOM
    { echo "# hanfs-timeout=$t"; cat; } >"$mb/$id.sh.tmp"
    mv "$mb/$id.sh.tmp" "$mb/$id.sh"
    for ((i = 0; i < (t + 10) * 50; i++)); do
        [ -f "$mb/$id.rc" ] && break
        sleep 0.02
    done
    if [ ! -f "$mb/$id.rc" ]; then
        rm -f "$mb/$id.sh"
        echo "vm.sh: no answer from $dir within $((t + 10)) s" >&2
        return 124
    fi
    cat "$mb/$id.out"
    cat "$mb/$id.err" >&2
    rc=$(cat "$mb/$id.rc")
    rm -f "$mb/$id".{out,err,rc}
    return "$rc"
}

cluster_up() {
    local work=$1 img ns spec name ip i=0 hosts="" names=() ips=() pids=()
    shift
    [ $# -ge 1 ] || die "usage: up <workdir> <name>=<ip>[+data] ..."
    img=$(bash "$here/build-image.sh" | tail -1)
    mkdir -p "$work"
    work=$(cd "$work" && pwd)
    ns=hanfs-t-$$-vmsh
    for spec in "$@"; do
        name=${spec%%=*}
        ip=${spec#*=}
        ip=${ip%+data}
        names+=("$name")
        ips+=("$ip")
        hosts+="${hosts:+,}$name:$ip"
        mkdir -p "$work/$name/share/mailbox"
        rm -f "$work/$name/share/ready"
        if [[ $spec == *+data ]] && [ ! -f "$work/$name/data.img" ]; then
            truncate -s 512M "$work/$name/data.img"
        fi
    done
    cleanup() {
        trap - EXIT INT TERM
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
        for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
        net_down "$ns"
    }
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    net_up "$ns" 10.80.0.1/24 "${#names[@]}"
    trap cleanup EXIT
    for ((i = 0; i < ${#names[@]}; i++)); do
        OWNER_PID=$$ HANFS_VM_HOSTS=$hosts setsid bash "$here/vm.sh" qemu "$img" "$work/${names[i]}" \
            "$ns" "tap$i" "${names[i]}" "${ips[i]}/24" >>"$work/${names[i]}/qemu.log" 2>&1 &
        pids+=($!)
    done
    for ((i = 0; i < ${#names[@]}; i++)); do
        while [ ! -f "$work/${names[i]}/share/ready" ] && [ $SECONDS -lt 180 ]; do
            kill -0 "${pids[i]}" 2>/dev/null || die "${names[i]}'s qemu exited; see $work/${names[i]}/"
            sleep 0.2
        done
        echo "true" | mailbox_exec "$work/${names[i]}" 120 >/dev/null ||
            die "${names[i]} did not answer; see $work/${names[i]}/console.log"
        echo "${names[i]} ${ips[i]} up ($SECONDS s)"
    done
    echo "namespace $ns, bridge 10.80.0.1; e.g.:"
    echo "  echo 'uname -a' | $here/vm.sh exec $work/${names[0]}"
    echo "  ip netns exec $ns ping -c1 ${ips[0]}"
    echo "Ctrl-C stops the cluster."
    wait "${pids[@]}" || true
}

cmd=${1:-}
shift || true
case $cmd in
net-up) [ $# -eq 3 ] || die "usage: net-up <ns> <bridge-ip/len> <ntaps>"; net_up "$@" ;;
net-down) [ $# -eq 1 ] || die "usage: net-down <ns>"; net_down "$1" ;;
qemu) [ $# -eq 6 ] || die "usage: qemu <image-dir> <vm-dir> <ns> <tap> <name> <ip/len>"; run_qemu "$@" ;;
exec) [ $# -ge 1 ] || die "usage: exec <vm-dir> [timeout-s] <script"; mailbox_exec "$@" ;;
up) cluster_up "$@" ;;
*) die "usage: vm.sh net-up|net-down|qemu|exec|up ... (see the header)" ;;
esac

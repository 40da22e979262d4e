#!/bin/bash
# PID 1 of the hanfs test VMs (installed as /init in the guest root by build-image.sh).
# No systemd: mount the API filesystems, name the host and its eth0 from the kernel command
# line, mount the host's 9p shares, then serve the mailbox forever.
#
# Kernel command line:
#   hanfs.name=storage-a           hostname
#   hanfs.ip=10.80.0.11/24         address of eth0
#   hanfs.hosts=a:10.80.0.11,b:…   extra /etc/hosts entries (optional)
#   hanfs.gw=10.80.0.1             default route (optional)
#
# 9p shares (mount tags): "hanfs-share" (read-write, per VM) at /hanfs/share, holding the
# mailbox; "hanfs-bin" (read-only, optional) at /hanfs/bin, put on PATH.
#
# Mailbox (/hanfs/share/mailbox): the host writes <id>.sh (write, then rename). This loop,
# polling every 100 ms, runs each new request in the background with `bash`, stdin from
# /dev/null, stdout to <id>.out, stderr to <id>.err, cwd /, and SIGKILLs its process group
# after the timeout given by a first line "# hanfs-timeout=<seconds>" (default 300; exit
# code 137 then). When the script has exited it writes <id>.rc (to <id>.rc.tmp, then a
# rename), so once <id>.rc exists, .out and .err are complete; then it removes <id>.sh. The
# host reads and deletes .out, .err and .rc. Requests run concurrently. Daemons started by a request must detach and redirect their
# output (e.g. `setsid -f cmd >/var/log/x 2>&1`), or they keep <id>.out open.
export PATH=/hanfs/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb
umask 022

log() { echo "hanfs-init: [$(cut -d' ' -f1 /proc/uptime)] $*" >/dev/console; }

mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /run/lock /run/drbd /run/rpcbind /run/sendsigs.omit.d
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config 2>/dev/null
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
# cgroup v2 for containerd + kubelet in the client VM (kubelet >= 1.35 refuses v1, the host's
# hybrid layout). The root cgroup may hold processes and still delegate controllers.
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup 2>/dev/null
ctrls=$(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null)
for c in $ctrls; do echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; done
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr

NAME=guest IP='' HOSTS='' GW=''
read -r cmdline </proc/cmdline
for w in $cmdline; do
    case $w in
    hanfs.name=*) NAME=${w#*=} ;;
    hanfs.ip=*) IP=${w#*=} ;;
    hanfs.hosts=*) HOSTS=${w#*=} ;;
    hanfs.gw=*) GW=${w#*=} ;;
    esac
done
export HANFS_NAME=$NAME HANFS_IP=${IP%/*}

hostname "$NAME"
echo "$NAME" >/etc/hostname
{
    echo "127.0.0.1 localhost"
    echo "::1 localhost ip6-localhost ip6-loopback"
    [ -n "$IP" ] && echo "${IP%/*} $NAME"
    IFS=, read -ra entries <<<"$HOSTS"
    for e in "${entries[@]}"; do
        [ "${e%%:*}" = "$NAME" ] || echo "${e#*:} ${e%%:*}"
    done
} >/etc/hosts

ip link set lo up
if [ -n "$IP" ]; then
    ip addr add "$IP" dev eth0 || log "cannot set $IP on eth0"
fi
ip link set eth0 up 2>/dev/null || log "no eth0"
[ -n "$GW" ] && ip route add default via "$GW"

mkdir -p /hanfs/share /hanfs/bin
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 hanfs-share /hanfs/share ||
    log "cannot mount the 9p share hanfs-share"
if grep -qa '^hanfs-bin' /sys/bus/virtio/drivers/9pnet_virtio/virtio*/mount_tag 2>/dev/null; then
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro hanfs-bin /hanfs/bin ||
        log "cannot mount the 9p share hanfs-bin"
fi

mb=/hanfs/share/mailbox
mkdir -p "$mb"

# Runs request $1 (in a background subshell of the loop). Process creation costs ~50 ms
# under TCG, so the path to the answer has only bash (the script), mv (the rc) and forks.
run_request() {
    local id=$1 t=300 first rc pid w
    IFS= read -r first <"$mb/$id.sh" || true
    case $first in "# hanfs-timeout="*) t=${first#*=} ;; esac
    cd / || return
    # Job control gives the script a process group of its own, which the watcher kills
    # whole when the timeout passes (detached daemons, with their own session, survive).
    set -m
    bash "$mb/$id.sh" </dev/null >"$mb/$id.out" 2>"$mb/$id.err" &
    pid=$!
    set +m
    (
        read -r -t "$t" -u 9 _
        kill -KILL -- "-$pid" 2>/dev/null
    ) &
    w=$!
    wait "$pid"
    rc=$?
    kill "$w" 2>/dev/null
    echo "$rc" >"$mb/$id.rc.tmp"
    mv -f "$mb/$id.rc.tmp" "$mb/$id.rc"
    rm -f "$mb/$id.sh"
}

# A fifo nobody writes to: `read -t` on it is a sleep without a fork.
mkfifo /run/hanfs-tick
exec 9<>/run/hanfs-tick

echo "$(cut -d' ' -f1 /proc/uptime) $(uname -r)" >/hanfs/share/ready.tmp &&
    mv -f /hanfs/share/ready.tmp /hanfs/share/ready
log "$NAME ${IP:-no ip} ready, mailbox $mb"

shopt -s nullglob
# Requests being run, so the next poll does not start them again; forgotten once the
# request file is gone.
declare -A claimed seen
while true; do
    seen=()
    for req in "$mb"/*.sh; do
        id=${req##*/}
        id=${id%.sh}
        seen[$id]=1
        [ -n "${claimed[$id]:-}" ] && continue
        claimed[$id]=1
        run_request "$id" &
    done
    for id in "${!claimed[@]}"; do
        [ -n "${seen[$id]:-}" ] || unset "claimed[$id]"
    done
    read -r -t 0.1 -u 9 _
done

#!/bin/bash
# The hand-built HA-NFS setup hanfs is compared against (../shared/reference), run in a
# storage VM: DRBD without fencing, the kernel NFS server with its client-tracking state
# (nfsdcld) on the node's own root disk and the node's own hostname as the server's
# identity, and a keepalived-like takeover: the backup pings the master once a second
# (VRRP advert_int 1) and after 3 missed adverts promotes with `drbdadm primary
# --force`, mounts, starts nfsd and takes the VIP.
#
#   stock-node.sh master <vip>            bring the service up here now
#   stock-node.sh backup <vip> <peer-ip>  watch the master, take over when it is gone
#                                         (bounded: gives up watching after an hour)
set -u
vip=$2

log() { echo "$(date +%T.%N | cut -c1-12) $*"; }

bring_up() {
    log "taking over"
    drbdadm primary --force r0 || log "drbdadm primary failed"
    mkdir -p /export /run/rpc_pipefs /var/lib/nfs/nfsdcld
    mount /dev/drbd0 /export || log "mount failed"
    mountpoint -q /run/rpc_pipefs || mount -t rpc_pipefs sunrpc /run/rpc_pipefs
    mountpoint -q /proc/fs/nfsd || mount -t nfsd nfsd /proc/fs/nfsd
    # Debian's nfs-server unit needs rpcbind (NFSv3 is on by default).
    pgrep -x rpcbind >/dev/null || rpcbind
    setsid -f nfsdcld -p /run/rpc_pipefs >/dev/null 2>&1
    setsid -f rpc.mountd >/dev/null 2>&1
    exportfs -o rw,sync,no_subtree_check,insecure '*:/export'
    rpc.nfsd 8 || log "rpc.nfsd failed"
    ip addr add "$vip/24" dev eth0
    arping -q -U -c 3 -I eth0 "$vip" &
    log "serving $vip"
}

case $1 in
    master) bring_up ;;
    backup)
        peer=$3
        misses=0
        for _ in $(seq 1 3600); do
            if ping -c1 -W1 "$peer" >/dev/null 2>&1; then
                misses=0
                sleep 1
            else
                misses=$((misses + 1))
                log "advert missed ($misses)"
                if [ "$misses" -ge 3 ]; then
                    bring_up
                    exit 0
                fi
            fi
        done
        ;;
    *) echo "usage: $0 master <vip> | backup <vip> <peer-ip>" >&2; exit 2 ;;
esac

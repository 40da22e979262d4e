#!/usr/bin/env bash
# Private network topologies for tests: one "core" namespace holding a Linux bridge, and
# N member namespaces, each joined to the bridge by a veth pair. Nothing touches a host
# interface; the addresses exist only inside these namespaces.
#
#   hanfs-t-<id>-core   br0 10.77.<net>.1/24, lo up; veth v<i> (bridge port) per member
#   hanfs-t-<id>-m<i>   eth0 10.77.<net>.<11+i>/24, lo up
#
# <id> must start with the pid of the process that owns the topology ("<pid>-<seq>"):
# cleanup-stale removes the topologies whose owner is gone (a crashed earlier run).
# From a shell use e.g. "$$-1".
#
# Usage:
#   netns.sh up <id> <net 0-255> <members>   create; prints "core <ns> <ip>" and
#                                            "member <i> <ns> <ip>" lines; rolls back on error
#   netns.sh down <id>                       kill processes inside, delete the namespaces
#   netns.sh cut <id> <i>                    partition member i (its bridge port goes down)
#   netns.sh heal <id> <i>                   undo cut
#   netns.sh cleanup-stale [--all]           remove hanfs-t-* whose owner pid is dead (or all)
#   netns.sh list                            print hanfs-t-* namespaces
set -euo pipefail

prefix=hanfs-t-

die() { echo "netns.sh: $*" >&2; exit 1; }

list() { ip netns list | awk '{print $1}' | grep "^$prefix" || true; }

# Kills every process left inside namespace $1, then deletes it. Deleting a namespace
# with processes in it only unlinks the name; the processes (and the bridge with them)
# would live on, invisible to `ip netns`.
delete_ns() {
    local ns=$1 pids i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -z "$pids" ] && break
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null || true
        sleep 0.1
    done
    [ -z "$(ip netns pids "$ns" 2>/dev/null || true)" ] || echo "netns.sh: processes survive in $ns" >&2
    ip netns delete "$ns" 2>/dev/null || true
}

down() {
    local id=$1 ns
    # Members first: their veth ends vanish with them, then the core and its bridge.
    for ns in $(list | grep "^$prefix$id-m" || true) $(list | grep -x "$prefix$id-core" || true); do
        delete_ns "$ns"
    done
}

up() {
    local id=$1 net=$2 n=$3 core i ns ip
    [[ $id =~ ^[0-9]+-[A-Za-z0-9]+$ ]] || die "id must look like <pid>-<seq>, got '$id'"
    if ! [[ $net =~ ^[0-9]+$ ]] || [ "$net" -gt 255 ]; then die "net must be 0-255, got '$net'"; fi
    if ! [[ $n =~ ^[0-9]+$ ]] || [ "$n" -gt 200 ]; then die "members must be 0-200, got '$n'"; fi
    core=$prefix$id-core
    [ -z "$(list | grep -x "$core" || true)" ] || die "$core exists already"
    # rc is assigned inside the trap string itself (shellcheck cannot see that).
    # shellcheck disable=SC2154
    trap 'rc=$?; [ $rc -eq 0 ] || down "$id"; exit $rc' EXIT

    ip netns add "$core"
    ip -n "$core" link set lo up
    ip -n "$core" link add br0 type bridge
    ip -n "$core" addr add "10.77.$net.1/24" dev br0
    ip -n "$core" link set br0 up
    echo "core $core 10.77.$net.1"
    for ((i = 0; i < n; i++)); do
        ns=$prefix$id-m$i
        ip=10.77.$net.$((11 + i))
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        # Created inside the core namespace, peer moved straight into the member: the pair
        # never exists in the host namespace.
        ip -n "$core" link add "v$i" type veth peer name eth0 netns "$ns"
        ip -n "$core" link set "v$i" master br0
        ip -n "$core" link set "v$i" up
        ip -n "$ns" addr add "$ip/24" dev eth0
        ip -n "$ns" link set eth0 up
        echo "member $i $ns $ip"
    done
}

# A cut takes the member's bridge port down: the member keeps its address and route, so
# its packets are silently lost (a partition, not a "network unreachable" error), and
# established TCP connections stall rather than reset, as on a real broken link.
set_link() {
    local id=$1 i=$2 state=$3
    [[ $i =~ ^[0-9]+$ ]] || die "member index must be a number, got '$i'"
    ip -n "$prefix$id-core" link set "v$i" "$state"
    if [ "$state" = up ]; then
        # Neighbour entries that went FAILED during the cut make the first connects after
        # the heal fail at once with EHOSTUNREACH; forget them so the heal is immediate.
        ip -n "$prefix$id-m$i" neigh flush dev eth0 2>/dev/null || true
        ip -n "$prefix$id-core" neigh flush dev br0 2>/dev/null || true
    fi
}

cleanup_stale() {
    local all=${1:-} ns pid n=0
    for ns in $(list); do
        pid=${ns#"$prefix"}
        pid=${pid%%-*}
        if [ "$all" = --all ] || ! [[ $pid =~ ^[0-9]+$ ]] || [ ! -d "/proc/$pid" ]; then
            delete_ns "$ns"
            n=$((n + 1))
        fi
    done
    echo "removed $n stale namespace(s)"
}

cmd=${1:-}
shift || true
case $cmd in
up) [ $# -eq 3 ] || die "usage: up <id> <net> <members>"; up "$@" ;;
down) [ $# -eq 1 ] || die "usage: down <id>"; down "$1" ;;
cut) [ $# -eq 2 ] || die "usage: cut <id> <i>"; set_link "$1" "$2" down ;;
heal) [ $# -eq 2 ] || die "usage: heal <id> <i>"; set_link "$1" "$2" up ;;
cleanup-stale) cleanup_stale "${1:-}" ;;
list) list ;;
*) die "usage: netns.sh up|down|cut|heal|cleanup-stale|list ... (see the header)" ;;
esac

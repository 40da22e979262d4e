#!/usr/bin/env bash
# csi-sanity's removal command for its target and staging folders when it runs over NFS
# against the VMs (e2e/src/sanity.rs). csi-sanity runs on the host, but the node plugin's
# mounts live in the client VM, where the host cannot unmount them: this hands the
# folder to csi-sanity/remove-path.sh *in the client VM* through its 9p mailbox (the
# protocol of e2e/vm/guest-init.sh) and waits for its answer, bounded. The guest sees the
# folder at the same path (sanity.rs bind-mounts the share there). Leftover mounts are
# logged to /hanfs/share/sanity-leaks in the guest, which sanity.rs reads after the run.
#
# Usage: sanity-remove-path.sh <folder>   (csi-sanity appends the folder)
# Env:   HANFS_CLIENT_SHARE  host side of the client VM's /hanfs/share
set -euo pipefail
dir=${1:?usage: sanity-remove-path.sh <folder>}
share=${HANFS_CLIENT_SHARE:?HANFS_CLIENT_SHARE must name the client VM share}
mb=$share/mailbox
[ -f "$share/remove-path.sh" ] || { echo "sanity-remove-path.sh: $share/remove-path.sh missing" >&2; exit 1; }
id=rp$$-$(date +%s%N)
printf '# hanfs-timeout=25\nHANFS_SANITY_LEAKS=/hanfs/share/sanity-leaks bash /hanfs/share/remove-path.sh %q\n' \
    "$dir" >"$mb/$id.sh.tmp"
mv -f "$mb/$id.sh.tmp" "$mb/$id.sh"
# The guest polls every 100 ms and SIGKILLs the request after 25 s: 30 s covers both.
for _ in $(seq 1 300); do
    [ -e "$mb/$id.rc" ] && break
    sleep 0.1
done
if [ ! -e "$mb/$id.rc" ]; then
    rm -f "$mb/$id.sh"
    echo "sanity-remove-path.sh: the client VM did not answer for $dir within 30 s" >&2
    exit 1
fi
rc=$(cat "$mb/$id.rc")
cat "$mb/$id.err" >&2 2>/dev/null || true
rm -f "$mb/$id.rc" "$mb/$id.out" "$mb/$id.err"
exit "$rc"

#!/usr/bin/env bash
# csi-sanity's removal command for its target and staging folders (after every spec).
# csi-sanity's own removal is os.Remove, which fails on a folder a failed spec left a
# mount in; the next spec's os.Mkdir then fails and every spec after it fails in its
# BeforeEach. This unmounts whatever is left below the folder, logs each such mount to
# $HANFS_SANITY_LEAKS (run.sh fails the run on any: a mount the driver left is a bug),
# and removes the folder, so one failed spec cannot poison the ones after it.
#
# Usage: remove-path.sh <folder>   (csi-sanity appends the folder)
set -euo pipefail
dir=${1:?usage: remove-path.sh <folder>}
leaks=${HANFS_SANITY_LEAKS:-/dev/null}
case "$dir" in
    /*) ;;
    *) echo "remove-path.sh: $dir is not absolute" >&2; exit 1 ;;
esac
# Deepest first; mountinfo escapes spaces as \040, which csi-sanity's paths never have.
mounts=$(awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
for m in $mounts; do
    echo "leftover mount $m" >>"$leaks"
    echo "remove-path.sh: unmounting leftover $m" >&2
    # Bounded: a hung NFS mount must not stall the run; lazy detaches even then.
    timeout -s KILL 5 umount "$m" 2>/dev/null || timeout -s KILL 5 umount -l "$m" || true
done
# Only empty folders go: data in a folder that was not a mount is not ours to delete.
if [ -d "$dir" ]; then
    find "$dir" -depth -type d -empty -delete 2>/dev/null || true
fi
if [ -e "$dir" ]; then
    echo "remove-path.sh: $dir is not empty after unmounting" >&2
    echo "not empty $dir" >>"$leaks"
    # csi-sanity's next Setup needs the name free: move the rest aside for a look.
    mv "$dir" "$dir.left.$(date +%s%N)"
fi

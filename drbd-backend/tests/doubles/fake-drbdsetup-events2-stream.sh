#!/bin/sh
# TEST DOUBLE for streaming `drbdsetup events2 <res>`: records its pid in pids, prints
# an initial dump and one change, then either exits 3 (if a file exit-after-dump exists
# next to it) or stays running like the real one (exec sleep, same pid).
dir=$(dirname "$0")
echo $$ >> "$dir/pids"
echo "exists resource name:$2 role:Secondary suspended:no"
echo "exists -"
echo "change resource name:$2 role:Primary"
if [ -e "$dir/exit-after-dump" ]; then
    echo "events2 double: exiting on purpose" >&2
    exit 3
fi
exec sleep 60

#!/bin/sh
# TEST DOUBLE for nfsdcld: appends its argv to argv.log next to the path it was invoked
# by, then runs in the foreground like `nfsdcld -F` (exec sleep, same pid), or fails at
# once if a file nfsdcld-fails exists there.
dir=$(dirname "$0")
printf 'nfsdcld %s\n' "$*" >> "$dir/argv.log"
echo $$ > "$dir/nfsdcld.pid"
if [ -e "$dir/nfsdcld-fails" ]; then
    echo "nfsdcld double: cannot open database" >&2
    exit 1
fi
exec sleep 60

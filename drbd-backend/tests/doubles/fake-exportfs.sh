#!/bin/sh
# TEST DOUBLE for exportfs: appends its argv to argv.log next to the path it was invoked
# by; for `exportfs -v` prints exportfs-v.txt from there (if present), like a kernel
# export table.
dir=$(dirname "$0")
printf 'exportfs %s\n' "$*" >> "$dir/argv.log"
if [ "$1" = "-v" ] && [ -e "$dir/exportfs-v.txt" ]; then
    cat "$dir/exportfs-v.txt"
fi
exit 0

#!/bin/sh
# TEST DOUBLE for exportfs with a kernel that lags: `exportfs -r` waits 0.3 s, then
# "applies" etc-exports.d/hanfs.exports next to it into exportfs-v.txt (the kernel
# table, in `exportfs -v` layout); `exportfs -v` prints that table.
dir=$(dirname "$0")
case "$1" in
-r)
    sleep 0.3
    if [ -e "$dir/etc-exports.d/hanfs.exports" ]; then
        awk '!/^#/ && NF >= 2 { print $1; for (i = 2; i <= NF; i++) print "\t\t" $i }' \
            "$dir/etc-exports.d/hanfs.exports" > "$dir/exportfs-v.txt.new"
    else
        : > "$dir/exportfs-v.txt.new"
    fi
    mv "$dir/exportfs-v.txt.new" "$dir/exportfs-v.txt"
    ;;
-v)
    [ -e "$dir/exportfs-v.txt" ] && cat "$dir/exportfs-v.txt"
    ;;
esac
exit 0

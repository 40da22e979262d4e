#!/bin/sh
# TEST DOUBLE for `drbdsetup events2 --now`: appends its argv to argv.log and prints
# events2.txt, both next to the path it was invoked by (tests symlink it into a tempdir
# and write the canned dump there). If fail.txt exists there instead, prints it to
# stderr and exits 10, as drbdsetup does for a resource the kernel does not know.
dir=$(dirname "$0")
printf '%s\n' "$*" >> "$dir/argv.log"
if [ -e "$dir/fail.txt" ]; then
    cat "$dir/fail.txt" >&2
    exit 10
fi
cat "$dir/events2.txt"

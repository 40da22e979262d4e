#!/bin/sh
# TEST DOUBLE for a tool that should just succeed (drbdadm, modprobe, mount, …): appends
# its argv as one line to argv.log next to the path it was invoked by (tests symlink it
# into a tempdir under the tool's name), then exits 0.
printf '%s\n' "$*" >> "$(dirname "$0")/argv.log"
exit 0

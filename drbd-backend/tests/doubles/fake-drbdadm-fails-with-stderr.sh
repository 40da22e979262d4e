#!/bin/sh
# TEST DOUBLE for a drbdadm command that DRBD refuses: prints stderr.txt (next to the
# path it was invoked by) to stderr and exits 11, drbdsetup's code for a failed state
# change.
cat "$(dirname "$0")/stderr.txt" >&2
exit 11

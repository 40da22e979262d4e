#!/bin/sh
# TEST DOUBLE for drbdadm asked about a resource missing from the configuration: prints
# drbdadm's message for it and fails (the resource name is the last argument).
for last in "$@"; do :; done
echo "'$last' not defined in your config (for this host)." >&2
exit 10

#!/bin/sh
# TEST DOUBLE for rpc.nfsd: appends "rpc.nfsd <hostname it sees> <argv>" to argv.log next
# to the path it was invoked by, so a test can check the UTS namespace's hostname.
printf 'rpc.nfsd %s %s\n' "$(uname -n)" "$*" >> "$(dirname "$0")/argv.log"
exit 0

#!/bin/sh
# TEST DOUBLE for a drbdadm that never returns (e.g. disconnect against a dead peer).
# exec, so that killing the child kills the sleep too.
exec sleep 60

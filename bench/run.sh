#!/usr/bin/env bash
# The bench in one command: builds the release binaries, runs hanfs-bench (hanfs local
# mode, and csi-driver-nfs's nfsplugin when given), prints one table and writes the
# pictures and table.md under bench/out/.
#
#   bench/run.sh [--peer-nfsplugin PATH] [further hanfs-bench options, see --help]
#
# With HANFS_E2E_RECORDS_DIR pointing at the records of an e2e VM run (the run was
# started with that variable set), the failover timeline is drawn from them too.
# Needs root (local mode runs in its own mount namespace on a loop-mounted XFS image).
# Exits non-zero when a measurement could not be taken; never on slow figures.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
if [ "$(id -u)" -ne 0 ]; then
    echo "bench/run.sh: needs root (mount namespace, loop mount)" >&2
    exit 1
fi
nice -n 10 cargo build --release -p bench -p hanfsctl -p controller -p node -p drbd-backend
extra=()
if [ -n "${HANFS_E2E_RECORDS_DIR:-}" ]; then
    extra+=(--records "$HANFS_E2E_RECORDS_DIR")
fi
exec target/release/hanfs-bench --bin-dir target/release --out bench/out "${extra[@]}" "$@"

#!/usr/bin/env bash
# The real-data-path failover run (DESIGN.md §5, issue "the real thing end to end"):
# builds release binaries, boots the VM cluster, runs a hard kill and a switchover,
# prints the table. Takes a few minutes; not part of the CI test command yet.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
exec cargo run --release -p hanfs-e2e --bin hanfs-e2e-failover

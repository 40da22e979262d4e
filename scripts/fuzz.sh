#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each (default 20 s; the first
# argument overrides it), seeded from fuzz/seeds/<target>/, and prints the executions per
# target and "fuzz: N passed, M failed". A crash leaves its input in
# fuzz/artifacts/<target>/ and fails that target; reproduce it with
# `cargo +nightly fuzz run <target> <file>`. Needs cargo-fuzz and a nightly toolchain.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-20}
toolchain=${FUZZ_TOOLCHAIN:-nightly}
# Safe Rust: libFuzzer's coverage and the debug assertions (overflow checks) find the
# bugs here; AddressSanitizer would only slow every execution down.
build=(cargo "+$toolchain" fuzz build --sanitizer none --debug-assertions)

log=$(mktemp /tmp/hanfs-fuzz.XXXXXX.log)
trap 'rm -f "$log"' EXIT

nice -n 10 "${build[@]}"
passed=0
failed=0
summary=()
for target in $(cargo "+$toolchain" fuzz list); do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    seeds=()
    [ -d "seeds/$target" ] && seeds=("seeds/$target")
    set +e
    nice -n 10 cargo "+$toolchain" fuzz run --sanitizer none --debug-assertions "$target" \
        "$corpus" "${seeds[@]}" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    runs=$(grep -E '^stat::number_of_executed_units:' "$log" | tail -1 | awk '{print $2}')
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        summary+=("$target: ${runs:-?} executions in ${seconds} s, no crash")
    else
        failed=$((failed + 1))
        tail -40 "$log"
        summary+=("$target: FAILED after ${runs:-?} executions (exit $rc; input in fuzz/artifacts/$target/)")
    fi
done
printf '%s\n' "${summary[@]}"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

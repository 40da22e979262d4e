#!/usr/bin/env bash
# The code gates the README's test command runs first, before any long test: rustfmt,
# clippy on every target with warnings as errors, and shellcheck of every shell script
# the repo tracks (*.sh and extension-less files with a sh/bash shebang). Each gate that
# fails prints its findings; the run ends with "gates: N passed, M failed" and a non-zero
# exit if any failed, so a style or lint regression fails CI like a failing test.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

passed=0
failed=0
gate() {
    local name=$1
    shift
    echo "-- gate: $name"
    if "$@"; then
        passed=$((passed + 1))
        echo "ok: $name"
    else
        failed=$((failed + 1))
        echo "FAILED: $name"
    fi
}

# Every tracked shell script, found by name or by shebang so a new script cannot slip by.
shell_scripts() {
    git ls-files -z | while IFS= read -r -d '' f; do
        [ -f "$f" ] || continue
        case ${f##*/} in
        *.sh) printf '%s\0' "$f" ;;
        *.*) ;;
        *) head -n1 "$f" 2>/dev/null | grep -qE '^#!.*\b(ba|da)?sh\b' && printf '%s\0' "$f" ;;
        esac
    done
}

shellcheck_all() {
    local list
    list=$(mktemp)
    shell_scripts >"$list"
    local count
    count=$(tr -cd '\0' <"$list" | wc -c)
    if [ "$count" -eq 0 ]; then
        echo "no shell scripts found: the search itself is broken"
        rm -f "$list"
        return 1
    fi
    echo "shellcheck: $count scripts"
    local rc=0
    xargs -0 shellcheck <"$list" || rc=1
    rm -f "$list"
    return $rc
}

gate "cargo fmt --check" cargo fmt --all -- --check
gate "cargo clippy --all-targets -D warnings" cargo clippy --workspace --all-targets --quiet -- -D warnings
gate "shellcheck" shellcheck_all

echo "gates: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# Kubernetes' own external-storage e2e suite (e2e.test from k8s.io/kubernetes, built by
# e2e/kube/build-e2e-test.sh) against a cluster where hanfs is installed.
#
# Usage:
#   e2e/kube/storage-e2e/run.sh <kubeconfig> [focus]
#   e2e/kube/storage-e2e/run.sh --dry-run [<kubeconfig>] [focus]
#
# The cluster needs: hanfs installed (chart, CSIDriver hanfs.csi.io, snapshot CRDs and
# snapshot-controller, csi-snapshotter), a schedulable Linux node with the test images
# imported (`ctr -n k8s.io images import <cache>/images/*.oci.tar`), and kube-apiserver able
# to reach that kubelet (the suite execs into pods and reads their logs).
#
# Default focus: the provisioning, volumes, volumeIO, subPath, multiVolume, volume-expand,
# snapshottable and fsgroupchangepolicy suites for hanfs. Which test patterns run follows
# from the capabilities in hanfs-testdriver.yaml: the suite registers only the patterns the
# driver supports (dynamic PVs and snapshots on the default filesystem; no block, no other
# fsType, no inline/pre-provisioned volumes). Nothing is skipped by us: specs that cannot
# run on this cluster skip themselves with a reason (too few nodes, no SSH key, ...) and
# are reported as skipped.
#
# --dry-run lists what the focus selects without running anything and without a cluster.
#
# Environment: HANFS_E2E_TIMEOUT (ginkgo's whole-suite timeout, default 8h: TCG is slow),
#   HANFS_E2E_REPORT_DIR (default: a new folder under the e2e cache), HANFS_E2E_VERBOSE=1 (the whole log on stdout).
# Output: the report folder (e2e.log, junit.xml, summary.txt); the last line is
#   `storage-e2e: N passed, M failed` (plus skipped). Exit status 0 only when something
#   passed and nothing failed (a dry-run: when something was selected).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
suites="provisioning|volumes|volumeIO|subPath|multiVolume|volume-expand|snapshottable|fsgroupchangepolicy"
# The text of a spec is "External Storage [Driver: hanfs.csi.io] [Testpattern: <pattern>]
# [<pattern labels>]... <suite> [<suite labels>]... <test>"; anchoring the suite name
# right after the pattern keeps e.g. "...multiple inline ephemeral volumes" of the
# ephemeral suite out of "volumes".
default_focus="External Storage \[Driver: hanfs\.csi\.io\] \[Testpattern: [^\]]*\]( \[[^\]]*\])* ($suites)( |$)"

usage() {
    echo "usage: $0 <kubeconfig> [focus] | $0 --dry-run [<kubeconfig>] [focus]" >&2
    exit 2
}

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
    dry_run=1
    shift
fi
kubeconfig=""
if [ $# -gt 0 ] && { [ "$dry_run" = 0 ] || [ -f "$1" ]; }; then
    kubeconfig=$1
    shift
fi
[ "$dry_run" = 1 ] || [ -n "$kubeconfig" ] || usage
[ $# -le 1 ] || usage
focus=${1:-$default_focus}
if [ -n "$kubeconfig" ]; then
    [ -r "$kubeconfig" ] || { echo "run.sh: cannot read kubeconfig $kubeconfig" >&2; exit 2; }
    kubeconfig=$(cd "$(dirname "$kubeconfig")" && pwd)/$(basename "$kubeconfig")
fi

bin=$("$here/../build-e2e-test.sh" | tail -n1)
images=$(dirname "$bin")/images
timeout=${HANFS_E2E_TIMEOUT:-8h}
suffix=""
[ "$dry_run" = 0 ] || suffix=-dry-run
report=${HANFS_E2E_REPORT_DIR:-$(dirname "$bin")/reports/$(date -u +%Y%m%dT%H%M%SZ)$suffix}
mkdir -p "$report"
# A reused folder must not hand the summary an earlier run's report.
rm -f "$report/junit.xml" "$report/summary.txt"

args=(
    --provider=skeleton
    --storage.testdriver="$here/hanfs-testdriver.yaml"
    --repo-root="$here"
    --kube-test-repo-list="$here/repo-list.yaml"
    --ginkgo.focus="$focus"
    --ginkgo.junit-report="$report/junit.xml"
    --ginkgo.timeout="$timeout"
    --ginkgo.v
    --ginkgo.no-color
)
[ -z "$kubeconfig" ] || args+=(--kubeconfig="$kubeconfig")
[ "$dry_run" = 0 ] || args+=(--ginkgo.dry-run)

# Read at package init by test/utils/image (the flag is applied later, in
# AfterReadingAllFlags); both are set so every image name is remapped either way.
export KUBE_TEST_REPO_LIST="$here/repo-list.yaml"

echo "storage-e2e: $bin/e2e.test, report in $report" >&2
echo "storage-e2e: focus: $focus" >&2
[ "$dry_run" = 1 ] || echo "storage-e2e: the node needs these images imported:" "$images"/*.oci.tar >&2
# An outer bound over ginkgo's own: a wedged binary cannot outlive it by more than 15 min.
case $timeout in
*h) secs=$((${timeout%h} * 3600)) ;;
*m) secs=$((${timeout%m} * 60)) ;;
*s) secs=${timeout%s} ;;
*) echo "run.sh: HANFS_E2E_TIMEOUT must be <N>h, <N>m or <N>s, not $timeout" >&2; exit 2 ;;
esac
set +e
if [ "${HANFS_E2E_VERBOSE:-0}" = 1 ]; then
    timeout --kill-after=60 $((secs + 900)) "$bin/e2e.test" "${args[@]}" 2>&1 | tee "$report/e2e.log"
else
    # The whole log goes to e2e.log; the terminal sees one line per finished spec.
    timeout --kill-after=60 $((secs + 900)) "$bin/e2e.test" "${args[@]}" 2>&1 | tee "$report/e2e.log" |
        grep --line-buffered -E '^(External Storage |• |S \[SKIPPED\]|Ran [0-9]+ of|FAIL!|SUCCESS!)'
fi
rc=${PIPESTATUS[0]}
set -e
echo "storage-e2e: e2e.test exited ${rc} (log $report/e2e.log)" >&2
[ -s "$report/junit.xml" ] || { echo "storage-e2e: no JUnit report was written; see $report/e2e.log" >&2; exit 1; }

dry=$dry_run python3 - "$report/junit.xml" "$focus" <<'EOF' | tee "$report/summary.txt"
# Passed / failed / skipped per suite and test pattern from ginkgo's JUnit report. Specs the
# focus did not select are in the report too (status "skipped", no reason): they are left out
# by matching the focus again (RE2 and Python agree on the default focus).
import collections, os, re, sys
import xml.etree.ElementTree as ET

junit, focus = sys.argv[1], sys.argv[2]
dry = os.environ.get("dry") == "1"
try:
    selected = re.compile(focus)
except re.error:
    selected = None  # a Go-only regex: count every External Storage spec that ran or skipped itself
name_re = re.compile(r"External Storage \[Driver: ([^\]]*)\] \[Testpattern: ([^\]]*)\]((?: \[[^\]]*\])*) (\S+)")
counts = collections.defaultdict(collections.Counter)
failures = []
for case in ET.parse(junit).getroot().iter("testcase"):
    name = case.get("name", "")
    text = re.sub(r"^\[[A-Za-z]+\] ", "", name)  # the leaf node type ginkgo prefixes, "[It] "
    m = name_re.search(text)
    status = case.get("status", "")
    if not m:
        # Suite-level nodes ([SynchronizedBeforeSuite], [ReportAfterSuite], ...): a failure
        # there (no schedulable node, no API server) means nothing ran; it must not read
        # as "0 failed".
        if status not in ("passed", "skipped", "pending"):
            failures.append((name, status, (case.findtext("failure") or "")[:400]))
            counts["(suite setup and teardown)"]["failed"] += 1
        continue
    skip = case.find("skipped")
    reason = (skip.get("message", "") if skip is not None else "").removeprefix("skipped").strip(" -")
    if selected is not None and not selected.search(text):
        continue
    if selected is None and status == "skipped" and not reason:
        continue
    key = f"{m.group(4)} [{m.group(2)}]"
    if dry:
        status = "selected"
    elif status not in ("passed", "skipped"):
        failures.append((text, status, (case.findtext("failure") or case.get("message") or "")[:400]))
        status = "failed"
    counts[key][status] += 1

total = collections.Counter()
cols = ["selected"] if dry else ["passed", "failed", "skipped"]
print(f"{'suite [pattern]':<70}" + "".join(f"{c:>10}" for c in cols))
for key in sorted(counts):
    print(f"{key:<70}" + "".join(f"{counts[key][c]:>10}" for c in cols))
    total.update(counts[key])
for text, status, msg in failures:
    print(f"\n{status}: {text}\n  {msg.strip()}")
if dry:
    print(f"storage-e2e: dry-run: {total['selected']} specs selected in {len(counts)} suite/pattern pairs")
else:
    print(f"storage-e2e: {total['passed']} passed, {total['failed']} failed ({total['skipped']} skipped)")
sys.exit(0 if (total["selected"] if dry else total["passed"] and not total["failed"]) else 1)
EOF

#!/usr/bin/env bash
# Checks of the hanfs Helm chart (charts/hanfs):
#   1. helm lint --strict, for the minimal values and for ci/full-values.yaml;
#   2. helm template for both, with assertions on what is rendered (and what is not);
#   3. values.schema.json and the templates' own checks refuse bad values (negative cases);
#   4. the rendered objects CREATED on a real kube-apiserver v1.37.2 + etcd (not dry-run),
#      started in a private network namespace, with RBAC authorization: snapshot CRDs
#      first, then `helm install` (minimal, then full), objects read back, RBAC rules
#      asked through SubjectAccessReviews, the `helm test` hooks created, `helm uninstall`.
# Prints one line per check and, last, "chart: N passed, M failed"; exit 1 if any failed.
#
# Usage: charts/check.sh           (as root: network namespaces)
# Env:   HELM (a helm binary; default: e2e/kube/build-helm.sh builds v3.22.0 once),
#        KUBE_BIN_DIR (default: e2e/kube/build.sh), HANFS_BIN_DIR (default: target/debug,
#        else target/release), SKIP_APISERVER=1 (only steps 1-3), KEEP_WORK=1 (keep the
#        work dir: rendered manifests, apiserver logs).
set -euo pipefail
# Sorted listings below compare byte-wise, whatever the caller's locale.
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
chart=$here/hanfs
full=$chart/ci/full-values.yaml
# The one value the chart cannot default: where the storage servers' volume API is.
minimal=(--set backend.address=10.0.0.100:9820)
SNAPSHOTTER_VERSION=${SNAPSHOTTER_VERSION:-v8.7.0}

log() { echo "check.sh: $*" >&2; }
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

work=$(mktemp -d /tmp/hanfs-chart-check.XXXXXX)
netns_id=$$-chart
api_pid=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$api_pid" ] && kill -0 "$api_pid" 2>/dev/null; then
        # start.sh stops kube-apiserver, then etcd, on SIGTERM (bounded inside).
        kill -TERM "$api_pid" 2>/dev/null || true
        wait "$api_pid" 2>/dev/null || true
    fi
    if [ -n "$api_pid" ]; then
        "$repo/e2e/netns/netns.sh" down "$netns_id" >/dev/null 2>&1 || true
    fi
    if [ -n "${KEEP_WORK:-}" ]; then echo "check.sh: kept $work" >&2; else rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok    $1"; }
fail() {
    failed=$((failed + 1))
    echo "FAIL  $1"
    [ $# -lt 2 ] || printf '%s\n' "$2" | tail -n 15 | sed 's/^/      /'
}
# expect <name> <actual> <wanted>
expect() { if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got: $2"$'\n'"want: $3"; fi; }

if [ -n "${HELM:-}" ]; then
    helm_bin=$HELM
else
    helm_bin=$("$repo/e2e/kube/build-helm.sh" | tail -n 1)/helm
fi
[ -x "$helm_bin" ] || { log "no helm at $helm_bin"; exit 1; }
# helm keeps repositories, caches and plugins under these; nothing of the user's is read.
export HELM_CACHE_HOME=$work/helm/cache HELM_CONFIG_HOME=$work/helm/config HELM_DATA_HOME=$work/helm/data
helm() { "$helm_bin" "$@"; }
log "$("$helm_bin" version --short)"

# py <expression over o> < json: prints the value as JSON (strings unquoted), or an
# "ERROR: ..." line that no expectation matches; never fails (set -e stays out of it).
py() {
    python3 -c '
import json, sys
try:
    o = json.load(sys.stdin)
    v = eval(sys.argv[1], {"o": o, "json": json})
    print(v if isinstance(v, str) else json.dumps(v, sort_keys=True))
except Exception as e:
    print(f"ERROR: {type(e).__name__}: {e}")' "$1"
}
# docs <kind> [name] < rendered yaml: the documents of that kind, as one JSON list.
docs() {
    python3 -c '
import json, sys
try:
    import yaml
except ImportError:
    sys.exit("python3-yaml is needed to read rendered manifests")
out = [d for d in yaml.safe_load_all(sys.stdin) if d and d.get("kind") == sys.argv[1]
       and (len(sys.argv) < 3 or d["metadata"]["name"] == sys.argv[2])]
print(json.dumps(out))' "$@"
}

# ---------------------------------------------------------------- 1. lint
if out=$(helm lint --strict "$chart" "${minimal[@]}" 2>&1); then pass "helm lint --strict (minimal values)"; else fail "helm lint --strict (minimal values)" "$out"; fi
if out=$(helm lint --strict "$chart" -f "$full" 2>&1); then pass "helm lint --strict (ci/full-values.yaml)"; else fail "helm lint --strict (ci/full-values.yaml)" "$out"; fi

# ---------------------------------------------------------------- 2. template
min_yaml=$work/minimal.yaml
full_yaml=$work/full.yaml
if helm template hanfs "$chart" -n storage "${minimal[@]}" >"$min_yaml" 2>"$work/err"; then
    pass "helm template (minimal values): $(grep -c '^kind:' "$min_yaml") objects"
else
    fail "helm template (minimal values)" "$(cat "$work/err")"
fi
if helm template hanfs "$chart" -n storage -f "$full" >"$full_yaml" 2>"$work/err"; then
    pass "helm template (full values): $(grep -c '^kind:' "$full_yaml") objects"
else
    fail "helm template (full values)" "$(cat "$work/err")"
fi

kinds() { grep '^kind:' "$1" | awk '{print $2}' | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}'; }
expect "minimal: objects rendered" "$(kinds "$min_yaml")" \
    "CSIDriver=1 ClusterRole=4 ClusterRoleBinding=4 DaemonSet=1 Deployment=1 PersistentVolumeClaim=1 Pod=1 Role=2 RoleBinding=2 Secret=4 ServiceAccount=3 StorageClass=1 VolumeAttributesClass=1 "
expect "full: objects rendered" "$(kinds "$full_yaml")" \
    "CSIDriver=1 ClusterRole=4 ClusterRoleBinding=4 ConfigMap=1 DaemonSet=2 Deployment=1 PersistentVolumeClaim=1 Pod=1 Role=2 RoleBinding=2 ServiceAccount=3 StorageClass=2 VolumeAttributesClass=2 VolumeSnapshotClass=1 "

containers() { docs "$2" "$3" <"$1" | py '[c["name"] for c in o[0]["spec"]["template"]["spec"]["containers"]]'; }
args_of() { docs "$2" "$3" <"$1" | py "[c for c in o[0]['spec']['template']['spec']['containers'] if c['name'] == '$4'][0]['args']"; }
expect "minimal: controller containers (attacher on by default: per-node export ACLs)" "$(containers "$min_yaml" Deployment hanfs-controller)" \
    '["hanfs-controller", "csi-provisioner", "csi-resizer", "csi-snapshotter", "csi-attacher"]'
expect "full: controller containers (attacher on)" "$(containers "$full_yaml" Deployment hanfs-controller)" \
    '["hanfs-controller", "csi-provisioner", "csi-resizer", "csi-snapshotter", "csi-attacher"]'
expect "minimal: node containers (self-registration)" "$(containers "$min_yaml" DaemonSet hanfs-node)" '["hanfs-node"]'
expect "full: node containers (registrar sidecar on)" "$(containers "$full_yaml" DaemonSet hanfs-node)" '["hanfs-node", "node-driver-registrar"]'
a=$(args_of "$min_yaml" DaemonSet hanfs-node hanfs-node)
case $a in
*'"--registration-dir=/var/lib/kubelet/plugins_registry"'*'"--kubelet-csi-endpoint=/var/lib/kubelet/plugins/hanfs.csi.io/csi.sock"'*) pass "minimal: hanfs-node registers itself in /var/lib/kubelet/plugins_registry" ;;
*) fail "minimal: hanfs-node registers itself" "$a" ;;
esac
a=$(args_of "$full_yaml" DaemonSet hanfs-node hanfs-node)
case $a in
*registration-dir*) fail "full: no self-registration beside the registrar sidecar" "$a" ;;
*'"--allowed-target-root=/var/lib/k0s/kubelet"'*) pass "full: kubeletDir (trailing / dropped) is the allowed target root, no self-registration" ;;
*) fail "full: kubeletDir is the allowed target root" "$a" ;;
esac
a=$(args_of "$min_yaml" Deployment hanfs-controller hanfs-controller)
# shellcheck disable=SC2016 # $(POD_IP) is literal: kubelet expands it.
case $a in
*'"--backend=tcp://10.0.0.100:9820"'*'"--nfs-server=10.0.0.100"'*'"--health-listen=tcp://$(POD_IP):29752"'*) pass "minimal: controller backend, NFS server derived from it, health listener" ;;
*) fail "minimal: controller args" "$a" ;;
esac
a=$(args_of "$full_yaml" Deployment hanfs-controller hanfs-controller)
case $a in
*'"--backend=tcp://192.0.2.100:9820"'*'"--nfs-server=nfs.storage.example.com"'*) pass "full: backend address from agent.vip, nfsServer as given" ;;
*) fail "full: controller args" "$a" ;;
esac
a=$(args_of "$min_yaml" Deployment hanfs-controller csi-provisioner)
case $a in
*'"--leader-election"'*'"--extra-create-metadata"'*) pass "provisioner: leader election and --extra-create-metadata" ;;
*) fail "provisioner args" "$a" ;;
esac
gate() { args_of "$1" Deployment hanfs-controller csi-resizer | py '[a for a in o if a.startswith("--feature-gates")]'; }
expect "resizer's VolumeAttributesClass gate only with controller.modifyVolume" "$(gate "$min_yaml") $(gate "$full_yaml")" \
    '[] ["--feature-gates=VolumeAttributesClass=true"]'
expect "full: image references" "$(docs Deployment <"$full_yaml" | py '[c["image"] for c in o[0]["spec"]["template"]["spec"]["containers"]]')" \
    '["registry.example.com/hanfs/hanfs-controller:0.1.0", "registry.example.com/hanfs/csi-provisioner:v6.4.0", "registry.example.com/hanfs/csi-resizer:v1.14.0", "registry.example.com/hanfs/csi-snapshotter:v8.7.0", "registry.example.com/hanfs/csi-attacher:v4.13.0"]'
expect "minimal: default images" "$(docs DaemonSet <"$min_yaml" | py 'o[0]["spec"]["template"]["spec"]["containers"][0]["image"]')" "hanfs.local/hanfs-node:0.1.0"
# The agent's two config files: valid JSON, each naming itself and its peer.
agent_files=$(docs ConfigMap <"$full_yaml" | py '
[(k, json.loads(v)["node"], json.loads(v)["peer"], json.loads(v)["volume_api"]["token_file"], json.loads(v).get("metrics_listen")) for k, v in sorted(o[0]["data"].items())]' 2>&1 || true)
expect "full: agent.json per storage node, node/peer swapped" "$agent_files" \
    '[["agent-storage-a.json", "storage-a", "storage-b", "/etc/hanfs/token/token", "0.0.0.0:9821"], ["agent-storage-b.json", "storage-b", "storage-a", "/etc/hanfs/token/token", "0.0.0.0:9821"]]'
expect "full: token Secret not rendered (existingSecret)" "$(docs Secret <"$full_yaml" | py '[s["type"] for s in o]')" '[]'
expect "minimal: a generated 48-character token" "$(docs Secret <"$min_yaml" | py '[len(__import__("base64").b64decode(s["data"]["token"])) for s in o if s["type"] == "Opaque"]')" '[48]'
# Mutual TLS: generated (minimal) — a server certificate naming the VIP and a client
# certificate, both verifying against the one CA in both Secrets; from Secrets (full).
tls_dir=$work/tls
mkdir -p "$tls_dir"
for side in client server; do
    for key in ca.crt tls.crt tls.key; do
        docs Secret "hanfs-tls-$side" <"$min_yaml" | py "o[0]['data']['$key']" | base64 -d >"$tls_dir/$side-$key" 2>/dev/null || true
    done
done
expect "minimal: both TLS Secrets carry the same CA" "$(cmp -s "$tls_dir/client-ca.crt" "$tls_dir/server-ca.crt" && echo same)" same
verified() { openssl verify -CAfile "$tls_dir/server-ca.crt" "$tls_dir/$1-tls.crt" 2>&1 | tail -n 1; }
expect "minimal: generated certificates verify against the CA" "$(verified server) $(verified client)" \
    "$tls_dir/server-tls.crt: OK $tls_dir/client-tls.crt: OK"
expect "minimal: the server certificate names the VIP" \
    "$(openssl x509 -in "$tls_dir/server-tls.crt" -noout -ext subjectAltName 2>&1 | tail -n 1 | tr -d ' ')" "IPAddress:10.0.0.100"
a=$(args_of "$min_yaml" Deployment hanfs-controller hanfs-controller)
case $a in
*'"--tls-ca=/etc/hanfs/tls/ca.crt"'*'"--tls-cert=/etc/hanfs/tls/tls.crt"'*'"--tls-key=/etc/hanfs/tls/tls.key"'*) pass "minimal: controller presents its client certificate" ;;
*) fail "minimal: controller TLS args" "$a" ;;
esac
tls_secrets() { docs "$2" "$3" <"$1" | py '[v["secret"]["secretName"] for v in o[0]["spec"]["template"]["spec"]["volumes"] if v["name"] == "backend-tls"]'; }
expect "TLS Secrets mounted: controller (minimal, full), agent (full)" \
    "$(tls_secrets "$min_yaml" Deployment hanfs-controller) $(tls_secrets "$full_yaml" Deployment hanfs-controller) $(tls_secrets "$full_yaml" DaemonSet hanfs-agent)" \
    '["hanfs-tls-client"] ["hanfs-tls-controller"] ["hanfs-tls-storage"]'
expect "full: agent.json's volume_api.tls" "$(docs ConfigMap <"$full_yaml" | py 'sorted({json.dumps(json.loads(v)["volume_api"]["tls"], sort_keys=True) for v in o[0]["data"].values()})')" \
    '["{\"ca_file\": \"/etc/hanfs/tls/ca.crt\", \"cert_file\": \"/etc/hanfs/tls/tls.crt\", \"key_file\": \"/etc/hanfs/tls/tls.key\"}"]'
# fsGroupPolicy follows the squash: File only where kubelet's chown as root reaches the
# server as root (full values: rootSquash false); None when set, whatever the squash.
fsgroup() { docs CSIDriver <"$1" | py 'o[0]["spec"]["fsGroupPolicy"]'; }
none_yaml=$work/fsgroup-none.yaml
helm template hanfs "$chart" -n storage -f "$full" --set driver.fsGroupPolicy=None >"$none_yaml" 2>&1 || true
expect "CSIDriver fsGroupPolicy: None under root_squash (minimal), File without (full), None as set" \
    "$(fsgroup "$min_yaml") $(fsgroup "$full_yaml") $(fsgroup "$none_yaml")" "None File None"
hooks=$(docs Pod <"$min_yaml" | py 'o[0]["metadata"]["annotations"]')
expect "helm test hook Pod annotations" "$hooks" '{"helm.sh/hook": "test", "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded", "helm.sh/hook-weight": "0"}'

# ---------------------------------------------------------------- 3. refused values
# refuse <name> <pattern the error must contain> <helm template args...>
refuse() {
    local name=$1 want=$2 out
    shift 2
    if out=$(helm template hanfs "$chart" "$@" 2>&1); then
        fail "refused: $name" "rendered without error"
    elif grep -qiF -- "$want" <<<"$out"; then
        pass "refused: $name"
    else
        fail "refused: $name (error does not say '$want')" "$out"
    fi
}
refuse "no backend.address (the defaults alone)" "backend.address is required"
bad=$work/bad-values.yaml
cat >"$bad" <<'EOF'
controler:
  replicas: 2
EOF
refuse "unknown key (typo controler)" "controler" "${minimal[@]}" -f "$bad"
refuse "onDelete enum" "onDelete" "${minimal[@]}" --set 'storageClasses[0].name=x' --set 'storageClasses[0].parameters.onDelete=destroy'
refuse "unknown StorageClass parameter" "nfsvers" "${minimal[@]}" --set 'storageClasses[0].name=x' --set 'storageClasses[0].parameters.nfsvers=3'
refuse "replicas type" "replicas" "${minimal[@]}" --set-string controller.replicas=two
refuse "clusterId pattern" "clusterId" "${minimal[@]}" --set clusterId=bad/id
refuse "agent on without nodes, VIP, scope" "/agent/nodes" "${minimal[@]}" --set agent.enabled=true
refuse "agent with one node" "/agent/nodes" -f "$full" --set 'agent.nodes={storage-a}'
refuse "lease shorter than 1500 ms" "durationMs" -f "$full" --set agent.lease.durationMs=1000
refuse "TLS: agent on with a client Secret only" "tls.existingServerSecret" -f "$full" --set tls.existingServerSecret=
refuse "TLS: a server Secret without the client Secret" "needs tls.existingSecret" "${minimal[@]}" --set tls.existingServerSecret=x
refuse "fsGroupPolicy File under root_squash" "needs agent.nfsd.rootSquash=false" "${minimal[@]}" --set driver.fsGroupPolicy=File
refuse "fsGroupPolicy enum" "fsGroupPolicy" "${minimal[@]}" --set driver.fsGroupPolicy=ReadWriteOnceWithFSType

# ---------------------------------------------------------------- 3b. flags and config keys
# Every flag the chart passes to a hanfs binary must be one that binary's --help lists,
# and every key of the rendered agent.json a field of drbd-backend's AgentFile (it has
# deny_unknown_fields: an unknown key stops the agent at start).
bin_dir=${HANFS_BIN_DIR:-}
if [ -z "$bin_dir" ]; then
    for d in "$repo/target/debug" "$repo/target/release"; do
        [ -x "$d/hanfs-node" ] && [ -x "$d/hanfs-controller" ] && [ -x "$d/hanfs-backend" ] && { bin_dir=$d; break; }
    done
fi
flags_known() { # flags_known <label> <help text file> <args JSON list>
    local missing
    missing=$(python3 -c '
import json, re, sys
help_text = open(sys.argv[1]).read()
# clap lists "--name", the Go flag package "  -name".
known = set(re.findall(r"(--[a-z0-9-]+)", help_text))
known |= {"-" + m for m in re.findall(r"^\s+(-[a-z0-9-]+)", help_text, re.M)}
args = [a for a in json.loads(sys.argv[2]) if a.startswith("--")]
bad = {a.split("=", 1)[0] for a in args if a.split("=", 1)[0] not in known}
print(" ".join(sorted(bad)))' "$2" "$3")
    if [ -z "$missing" ]; then pass "$1: every flag the chart passes is in --help"; else fail "$1: flags unknown to the binary: $missing"; fi
}
if [ -n "$bin_dir" ] && ! { [ -x "$bin_dir/hanfs-node" ] && [ -x "$bin_dir/hanfs-controller" ] && [ -x "$bin_dir/hanfs-backend" ]; }; then
    fail "hanfs binaries in HANFS_BIN_DIR=$bin_dir (hanfs-controller, hanfs-node, hanfs-backend)"
elif [ -z "$bin_dir" ]; then
    fail "hanfs binaries found (HANFS_BIN_DIR, target/debug or target/release): build them first (cargo build --bins)"
else
    "$bin_dir/hanfs-controller" --help >"$work/controller.help" 2>&1 || true
    "$bin_dir/hanfs-node" --help >"$work/node.help" 2>&1 || true
    "$bin_dir/hanfs-backend" agent --help >"$work/agent.help" 2>&1 || true
    for f in "$min_yaml" "$full_yaml"; do
        v=$(basename "$f" .yaml)
        flags_known "$v: hanfs-controller" "$work/controller.help" "$(args_of "$f" Deployment hanfs-controller hanfs-controller)"
        flags_known "$v: hanfs-node" "$work/node.help" "$(args_of "$f" DaemonSet hanfs-node hanfs-node)"
    done
    flags_known "full: hanfs-backend agent" "$work/agent.help" "$(args_of "$full_yaml" DaemonSet hanfs-agent hanfs-agent | py 'o[1:]')"
fi
# The sidecars: from SIDECAR_BIN_DIR, else the cache e2e/kube/build-sidecars.sh fills (the
# API-flow tests build it; it does nothing when complete).
sidecar_bin=${SIDECAR_BIN_DIR:-$("$repo/e2e/kube/build-sidecars.sh" 2>"$work/sidecars.log" | tail -n 1 || true)}
if [ -x "$sidecar_bin/csi-provisioner" ]; then
    for s in csi-provisioner csi-resizer csi-snapshotter csi-attacher; do
        "$sidecar_bin/$s" --help >"$work/$s.help" 2>&1 || true
        a=$(args_of "$full_yaml" Deployment hanfs-controller "$s")
        flags_known "full: $s" "$work/$s.help" "$a"
        # Values matter too (feature gate names, durations, booleans): run it with the
        # chart's args and no cluster. Past the flags it stops at the in-cluster config.
        mapfile -t argv < <(py '"\n".join(o)' <<<"$a")
        out=$(env -i -C "$work" PATH=/usr/bin:/bin HOME="$work" timeout 10 "$sidecar_bin/$s" "${argv[@]}" 2>&1 || true)
        if grep -q "unable to load in-cluster configuration" <<<"$out" && ! grep -qiE "flag provided but not defined|invalid value|unrecognized feature gate|parsing feature gates" <<<"$out"; then
            pass "full: $s accepts the chart's args (stops at the missing in-cluster config)"
        else
            fail "full: $s accepts the chart's args" "$out"
        fi
    done
else
    fail "sidecar binaries (SIDECAR_BIN_DIR or e2e/kube/build-sidecars.sh)" "$(tail -n 5 "$work/sidecars.log" 2>/dev/null)"
fi
unknown=$(docs ConfigMap <"$full_yaml" | python3 -c '
import json, re, sys
fields = set(re.findall(r"^\s*pub ([a-z_]+):", open(sys.argv[1]).read(), re.M))
def walk(v, path):
    if isinstance(v, dict):
        for k, x in v.items():
            if k not in fields:
                yield path + k
            yield from walk(x, path + k + ".")
for name, text in json.load(sys.stdin)[0]["data"].items():
    for bad in walk(json.loads(text), name + ": "):
        print(bad)' "$repo/drbd-backend/src/agent_config.rs" 2>&1)
expect "full: every agent.json key is an AgentFile field (drbd-backend/src/agent_config.rs)" "$unknown" ""

if [ "${SKIP_APISERVER:-0}" = 1 ]; then
    log "SKIP_APISERVER=1: no kube-apiserver checks"
    echo "chart: $passed passed, $failed failed ($(elapsed) s)"
    [ "$failed" = 0 ]
    exit
fi

# ---------------------------------------------------------------- 4. a real kube-apiserver
[ "$(id -u)" = 0 ] || { log "the apiserver checks need root (network namespaces); SKIP_APISERVER=1 skips them"; exit 1; }
real_bin=${KUBE_BIN_DIR:-$("$repo/e2e/kube/build.sh" | tail -n 1)}
# start.sh runs kube-apiserver with AlwaysAllow; RBAC authorization instead makes the
# SubjectAccessReviews below answer by the chart's rules. And like any cluster that runs
# CSI node plugins it must allow privileged containers (the apiserver's default refuses
# them: "privileged: Forbidden: disallowed by cluster policy"). A wrapper dir swaps the
# mode, adds the flag and execs the real binary (same pid: start.sh's supervision holds).
bin=$work/kube-bin
mkdir -p "$bin"
ln -s "$real_bin/etcd" "$bin/etcd"
cat >"$bin/kube-apiserver" <<EOF
#!/usr/bin/env bash
args=()
for a in "\$@"; do [ "\$a" = AlwaysAllow ] && a=RBAC; args+=("\$a"); done
exec "$real_bin/kube-apiserver" "\${args[@]}" --allow-privileged=true
EOF
chmod +x "$bin/kube-apiserver"

topo=$("$repo/e2e/netns/netns.sh" up "$netns_id" 93 1)
api_pid=starting
core_ns=$(awk '$1 == "core" {print $2}' <<<"$topo")
core_ip=$(awk '$1 == "core" {print $3}' <<<"$topo")
member_ns=$(awk '$1 == "member" {print $3}' <<<"$topo")
kw=$work/kube
KUBE_BIN_DIR=$bin OWNER_PID=$$ "$repo/e2e/kube/start.sh" "$core_ns" "$core_ip" "$kw" >"$work/start.log" 2>&1 &
api_pid=$!
for ((i = 0; i < 240; i++)); do
    [ -f "$kw/ready" ] && break
    kill -0 "$api_pid" 2>/dev/null || break
    sleep 0.5
done
if [ ! -f "$kw/ready" ]; then
    fail "kube-apiserver started" "$(cat "$work/start.log")"
    echo "chart: $passed passed, $failed failed ($(elapsed) s)"
    exit 1
fi
pass "kube-apiserver $("$real_bin/kube-apiserver" --version | awk '{print $2}') ready in $(cat "$kw/ready") s (RBAC authorization)"
kubeconfig=$kw/kubeconfig
url=https://$core_ip:6443
# api <method> <path> [body-file [content-type]]: the body on stdout, fails on HTTP >= 400.
api() {
    local method=$1 path=$2 body=${3:-} ctype=${4:-application/json}
    local extra=()
    [ -z "$body" ] || extra=(-H "Content-Type: $ctype" --data-binary "@$body")
    ip netns exec "$member_ns" curl -sS --fail-with-body --max-time 20 --cacert "$kw/ca.crt" \
        -H @"$kw/auth-header" -X "$method" "${extra[@]}" "$url$path"
}
hhelm() { ip netns exec "$member_ns" "$helm_bin" --kubeconfig "$kubeconfig" "$@"; }

# The snapshot CRDs, from the Go module the sidecars are built from.
crd_dir=$(GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json \
    "github.com/kubernetes-csi/external-snapshotter/client/v8@$SNAPSHOTTER_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/config/crd
n=0
for f in "$crd_dir"/snapshot.storage.k8s.io_*.yaml; do
    if out=$(api POST /apis/apiextensions.k8s.io/v1/customresourcedefinitions "$f" application/yaml 2>&1); then
        n=$((n + 1))
    else
        fail "snapshot CRD $(basename "$f") created" "$out"
    fi
done
# Established = the new API group is served; the VolumeSnapshotClass needs it.
for ((i = 0; i < 100; i++)); do
    api GET /apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses >/dev/null 2>&1 && break
    sleep 0.2
done
expect "snapshot CRDs of external-snapshotter client $SNAPSHOTTER_VERSION created and served" "$n" 3

# get <path> <expr>
get() {
    local out
    out=$(api GET "$1" 2>&1) || { echo "GET $1: $out"; return 0; }
    py "$2" <<<"$out" 2>&1 || true
}
sar() { # sar <namespace> <serviceaccount> <verb> <group> <resource> [ns] [name] [subresource]
    local body=$work/sar.json
    python3 - "$@" >"$body" <<'EOF'
import json, sys
ns, sa, verb, group, resource = sys.argv[1:6]
rest = sys.argv[6:] + ["", "", ""]
attrs = {"verb": verb, "group": group, "resource": resource, "namespace": rest[0], "name": rest[1], "subresource": rest[2]}
print(json.dumps({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
    "spec": {"user": f"system:serviceaccount:{ns}:{sa}",
             "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
             "resourceAttributes": {k: v for k, v in attrs.items() if v}}}))
EOF
    api POST /apis/authorization.k8s.io/v1/subjectaccessreviews "$body" | py 'o["status"].get("allowed", False)'
}
# can <expected true|false> <description> <sar args...>
can() {
    local want=$1 what=$2
    shift 2
    expect "RBAC: $what" "$(sar "$@" 2>&1)" "$want"
}

# install <release> <namespace> <values args...>: helm install, waits for nothing (no
# controllers run here: pods are never scheduled; the objects are what is checked).
install() {
    local rel=$1 ns=$2 out
    shift 2
    if out=$(hhelm install "$rel" "$chart" -n "$ns" --create-namespace "$@" 2>&1); then
        pass "helm install $rel -n $ns $*"
        printf '%s\n' "$out" >"$work/install-$ns.out"
    else
        fail "helm install $rel -n $ns $*" "$out"
        # What a failed install created would collide with the next case's objects.
        hhelm uninstall "$rel" -n "$ns" >/dev/null 2>&1 || true
        return 1
    fi
}

# --- minimal values
ns=hanfs-min
if install hanfs "$ns" "${minimal[@]}"; then
    expect "CSIDriver fields" "$(get /apis/storage.k8s.io/v1/csidrivers/hanfs.csi.io \
        '[o["spec"][k] for k in ("attachRequired", "fsGroupPolicy", "podInfoOnMount", "requiresRepublish", "volumeLifecycleModes")]')" \
        '[true, "None", false, false, ["Persistent"]]'
    expect "StorageClass hanfs" "$(get /apis/storage.k8s.io/v1/storageclasses/hanfs \
        '[o["provisioner"], o["parameters"], o["allowVolumeExpansion"], o["reclaimPolicy"], o["volumeBindingMode"]]')" \
        '["hanfs.csi.io", {"onDelete": "delete"}, true, "Delete", "Immediate"]'
    expect "VolumeAttributesClass hanfs-retain (storage.k8s.io/v1)" "$(get /apis/storage.k8s.io/v1/volumeattributesclasses/hanfs-retain \
        '[o["driverName"], o["parameters"]]')" '["hanfs.csi.io", {"onDelete": "retain"}]'
    expect "Deployment: replicas, hostNetwork, priority, gRPC liveness" "$(get "/apis/apps/v1/namespaces/$ns/deployments/hanfs-controller" \
        '[o["spec"]["replicas"], o["spec"]["template"]["spec"]["hostNetwork"], o["spec"]["template"]["spec"]["priorityClassName"], o["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]]')" \
        '[1, true, "system-cluster-critical", {"port": 29752, "service": ""}]'
    expect "DaemonSet: hostNetwork, DNS, privileged, Bidirectional kubelet dir, NODE_ID" "$(get "/apis/apps/v1/namespaces/$ns/daemonsets/hanfs-node" \
        '(lambda s, c: [s["hostNetwork"], s["dnsPolicy"], c["securityContext"]["privileged"], [(m["mountPath"], m["mountPropagation"]) for m in c["volumeMounts"]], c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"], s["automountServiceAccountToken"]])(o["spec"]["template"]["spec"], o["spec"]["template"]["spec"]["containers"][0])')" \
        '[true, "ClusterFirstWithHostNet", true, [["/var/lib/kubelet", "Bidirectional"]], "spec.nodeName", false]'
    expect "ClusterRoles of the sidecars" "$(get /apis/rbac.authorization.k8s.io/v1/clusterroles \
        'sorted(c["metadata"]["name"] for c in o["items"] if c["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == "hanfs")')" \
        '["hanfs-attacher", "hanfs-provisioner", "hanfs-resizer", "hanfs-snapshotter"]'
    expect "Secret with the generated token, 48 characters" "$(get "/api/v1/namespaces/$ns/secrets/hanfs-backend-token" \
        'len(__import__("base64").b64decode(o["data"]["token"]))')" 48
    if grep -q "kubectl get csinode" "$work/install-$ns.out" && grep -q "hanfs-backend status" "$work/install-$ns.out" &&
        grep -q "fsGroup is not applied" "$work/install-$ns.out"; then
        pass "NOTES: CSINode and hanfs-backend status health checks, and that fsGroup is not applied (root_squash), printed"
    else
        fail "NOTES: health checks printed" "$(cat "$work/install-$ns.out")"
    fi
    token_before=$(get "/api/v1/namespaces/$ns/secrets/hanfs-backend-token" 'o["data"]["token"]')
    if out=$(hhelm upgrade hanfs "$chart" -n "$ns" --reuse-values 2>&1); then
        expect "helm upgrade keeps the generated token (lookup)" \
            "$(get "/api/v1/namespaces/$ns/secrets/hanfs-backend-token" 'o["data"]["token"]')" "$token_before"
    else
        fail "helm upgrade --reuse-values" "$out"
    fi
    sa=hanfs-controller
    can true "provisioner creates PVs" "$ns" "$sa" create "" persistentvolumes
    can true "provisioner updates PVCs" "$ns" "$sa" update "" persistentvolumeclaims "$ns"
    can true "resizer patches PVC status" "$ns" "$sa" patch "" persistentvolumeclaims "$ns" x status
    can false "resizer: no VolumeAttributesClasses without controller.modifyVolume" "$ns" "$sa" watch storage.k8s.io volumeattributesclasses
    can true "snapshotter updates content status" "$ns" "$sa" update snapshot.storage.k8s.io volumesnapshotcontents "" x status
    can true "snapshotter updates group content status" "$ns" "$sa" update groupsnapshot.storage.k8s.io volumegroupsnapshotcontents "" x status
    can true "snapshotter watches group snapshot classes" "$ns" "$sa" watch groupsnapshot.storage.k8s.io volumegroupsnapshotclasses
    can false "snapshotter creates no group contents (snapshot-controller does)" "$ns" "$sa" create groupsnapshot.storage.k8s.io volumegroupsnapshotcontents
    can true "sidecar leader election in its namespace" "$ns" "$sa" update coordination.k8s.io leases "$ns"
    can false "no leases outside its namespace" "$ns" "$sa" update coordination.k8s.io leases kube-system
    can false "controller reads no secrets" "$ns" "$sa" get "" secrets "$ns"
    can true "attacher patches VolumeAttachment status (attachRequired by default)" "$ns" "$sa" patch storage.k8s.io volumeattachments "" x status
    can false "node plugin: no API access (nodes)" "$ns" hanfs-node get "" nodes
    can true "agent: get its Lease" "$ns" hanfs-agent get coordination.k8s.io leases "$ns" hanfs-export
    can true "agent: update its Lease" "$ns" hanfs-agent update coordination.k8s.io leases "$ns" hanfs-export
    can true "agent: create the Lease" "$ns" hanfs-agent create coordination.k8s.io leases "$ns"
    can false "agent: no other Lease" "$ns" hanfs-agent update coordination.k8s.io leases "$ns" hanfs-controller
    can false "agent: no delete" "$ns" hanfs-agent delete coordination.k8s.io leases "$ns" hanfs-export
    can false "agent: no list" "$ns" hanfs-agent list coordination.k8s.io leases "$ns"
    # helm test: creates the PVC and the Pod (hooks); nothing schedules the pod here, so it
    # times out waiting, and we check the objects the hooks made. The namespace's "default"
    # ServiceAccount, which admission demands for the pod, is kube-controller-manager's to
    # create; none runs here, so we do.
    printf '{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default"}}' >"$work/sa.json"
    api POST "/api/v1/namespaces/$ns/serviceaccounts" "$work/sa.json" >/dev/null
    hhelm test hanfs -n "$ns" --timeout 5s >"$work/test.log" 2>&1 || true
    expect "helm test created the PVC and the Pod" "$(get "/api/v1/namespaces/$ns/persistentvolumeclaims/hanfs-test" \
        '[o["spec"]["storageClassName"], o["spec"]["resources"]["requests"]["storage"]]') $(get "/api/v1/namespaces/$ns/pods/hanfs-test" \
        'o["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]')" '["hanfs", "16Mi"] hanfs-test'
    api DELETE "/api/v1/namespaces/$ns/pods/hanfs-test?gracePeriodSeconds=0" >/dev/null 2>&1 || true
    api DELETE "/api/v1/namespaces/$ns/persistentvolumeclaims/hanfs-test" >/dev/null 2>&1 || true
    if out=$(hhelm uninstall hanfs -n "$ns" 2>&1); then pass "helm uninstall (minimal)"; else fail "helm uninstall (minimal)" "$out"; fi
    expect "uninstall removed the CSIDriver and StorageClass" \
        "$(get /apis/storage.k8s.io/v1/csidrivers 'len(o["items"])') $(get /apis/storage.k8s.io/v1/storageclasses 'len(o["items"])')" "0 0"
    # A VolumeAttributesClass carries the protection finalizer (admission adds it); its
    # controller, in kube-controller-manager, removes it once no PVC uses the class. Here:
    # deletion requested, then we take the controller's part.
    vac=/apis/storage.k8s.io/v1/volumeattributesclasses/hanfs-retain
    expect "uninstall deleted the VolumeAttributesClass (pending its protection finalizer)" \
        "$(get "$vac" '[o["metadata"].get("deletionTimestamp") is not None, o["metadata"].get("finalizers")]')" \
        '[true, ["kubernetes.io/vac-protection"]]'
    printf '{"metadata":{"finalizers":null}}' >"$work/patch.json"
    api PATCH "$vac" "$work/patch.json" application/merge-patch+json >/dev/null 2>&1 || true
    expect "uninstall kept the token Secret (resource-policy keep)" "$(get "/api/v1/namespaces/$ns/secrets/hanfs-backend-token" 'o["metadata"]["name"]')" hanfs-backend-token
fi

# --- full values (agent, attacher, registrar, snapshot class, existing Secret)
ns=hanfs-full
body=$work/ns.json
printf '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"%s"}}' "$ns" >"$body"
api POST /api/v1/namespaces "$body" >/dev/null
printf '{"apiVersion":"v1","kind":"Secret","metadata":{"name":"hanfs-token-from-vault","namespace":"%s"},"stringData":{"api-token":"s3cret"}}' "$ns" >"$body"
api POST "/api/v1/namespaces/$ns/secrets" "$body" >/dev/null
if install hanfs "$ns" -f "$full"; then
    expect "CSIDriver attachRequired from the value, fsGroupPolicy File (no root_squash)" \
        "$(get /apis/storage.k8s.io/v1/csidrivers/hanfs.csi.io '[o["spec"]["attachRequired"], o["spec"]["fsGroupPolicy"]]')" '[true, "File"]'
    if grep -q "fsGroup is not applied" "$work/install-$ns.out"; then
        fail "full: NOTES say nothing of fsGroup (File applies it)" "$(cat "$work/install-$ns.out")"
    else
        pass "full: NOTES say nothing of fsGroup (File applies it)"
    fi
    expect "two StorageClasses, one default" "$(get /apis/storage.k8s.io/v1/storageclasses \
        '[(s["metadata"]["name"], s["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class"), s["parameters"]["onDelete"], s.get("mountOptions")) for s in o["items"]]')" \
        '[["hanfs", "true", "delete", ["nconnect=4"]], ["hanfs-archive", null, "archive", null]]'
    expect "VolumeSnapshotClass" "$(get /apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses/hanfs-snapshot '[o["driver"], o["deletionPolicy"]]')" '["hanfs.csi.io", "Retain"]'
    # shellcheck disable=SC2016 # $(NODE_NAME) is literal: kubelet expands it.
    expect "agent DaemonSet: pinned to the two nodes, its config, existing token Secret" "$(get "/apis/apps/v1/namespaces/$ns/daemonsets/hanfs-agent" \
        '(lambda s: [[t["matchFields"][0]["values"][0] for t in s["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]], s["containers"][0]["args"][1], [v["secret"] for v in s["volumes"] if "secret" in v][0]["secretName"], s["hostNetwork"], s["serviceAccountName"]])(o["spec"]["template"]["spec"])')" \
        '[["storage-a", "storage-b"], "--config=/etc/hanfs/config/agent-$(NODE_NAME).json", "hanfs-token-from-vault", true, "hanfs-ag"]'
    expect "Deployment: 2 replicas, 5 containers" "$(get "/apis/apps/v1/namespaces/$ns/deployments/hanfs-controller" \
        '[o["spec"]["replicas"], len(o["spec"]["template"]["spec"]["containers"])]')" '[2, 5]'
    can true "attacher patches VolumeAttachment status" "$ns" hanfs-ctrl patch storage.k8s.io volumeattachments "" x status
    can true "attacher reads CSINodes" "$ns" hanfs-ctrl list storage.k8s.io csinodes
    can true "resizer reads VolumeAttributesClasses (controller.modifyVolume)" "$ns" hanfs-ctrl watch storage.k8s.io volumeattributesclasses
    can true "agent (renamed SA) updates its Lease" "$ns" hanfs-ag update coordination.k8s.io leases "$ns" hanfs-export
    can false "old ServiceAccount names are not bound" "$ns" hanfs-controller create "" persistentvolumes
    if out=$(hhelm uninstall hanfs -n "$ns" 2>&1); then pass "helm uninstall (full)"; else fail "helm uninstall (full)" "$out"; fi
    expect "uninstall removed cluster objects (CSIDriver, StorageClasses, VolumeSnapshotClass, ClusterRoles)" \
        "$(get /apis/storage.k8s.io/v1/csidrivers 'len(o["items"])') $(get /apis/storage.k8s.io/v1/storageclasses 'len(o["items"])') $(get /apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses 'len(o["items"])') $(get /apis/rbac.authorization.k8s.io/v1/clusterroles 'len([c for c in o["items"] if c["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == "hanfs"])')" \
        "0 0 0 0"
    expect "uninstall deleted both VolumeAttributesClasses" \
        "$(get /apis/storage.k8s.io/v1/volumeattributesclasses 'sorted((v["metadata"]["name"], v["metadata"].get("deletionTimestamp") is not None) for v in o["items"])')" \
        '[["hanfs-archive", true], ["hanfs-retain", true]]'
    expect "uninstall removed the agent's DaemonSet, ConfigMap, token Secret" \
        "$(get "/apis/apps/v1/namespaces/$ns/daemonsets" 'len(o["items"])') $(get "/api/v1/namespaces/$ns/configmaps" 'len([c for c in o["items"] if c["metadata"]["name"] == "hanfs-agent"])') $(get "/api/v1/namespaces/$ns/secrets" 'sorted(x["metadata"]["name"] for x in o["items"])')" \
        '0 0 ["hanfs-token-from-vault"]' 
fi

echo "chart: $passed passed, $failed failed ($(elapsed) s)"
[ "$failed" = 0 ]

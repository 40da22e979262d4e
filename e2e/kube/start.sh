#!/usr/bin/env bash
# Runs etcd + kube-apiserver (and, if asked, kube-controller-manager) inside an existing
# network namespace, in the foreground, until SIGTERM/SIGINT or until any of them dies; then
# stops them in reverse order (SIGTERM, bounded wait, SIGKILL). testkit's
# kube::KubeApiServer wraps this script.
#
# Usage: e2e/kube/start.sh <netns> <listen-ip> <workdir>
#   etcd:           http://127.0.0.1:2379 inside <netns> (data in <workdir>/etcd)
#   kube-apiserver: https://<listen-ip>:6443, serving cert self-generated in <workdir>/certs
#   When ready (GET /readyz and the "default" namespace answer) it writes
#     <workdir>/kubeconfig  server, CA data, admin token (AlwaysAllow authorization)
#     <workdir>/ca.crt      the CA that signed the serving cert
#     <workdir>/auth-header "Authorization: Bearer <token>" for `curl -H @file`
#     <workdir>/kubelet-client-ca.crt  the CA a kubelet trusts for the API server's calls
#     <workdir>/ready       startup seconds; written last, so its presence means ready
#   and prints "ready in N s: kubeconfig <path>". Logs: <workdir>/<server>.log;
#   pids: <workdir>/<server>.pid (etcd, kube-apiserver, kube-controller-manager).
# Env: KUBE_BIN_DIR (default: whatever e2e/kube/build.sh prints; it builds on first use),
#      READY_TIMEOUT seconds (default 90),
#      WITH_CONTROLLER_MANAGER=1: also run kube-controller-manager (admin kubeconfig, no
#        leader election, the volume controllers plus service accounts, namespaces and GC;
#        KCM_CONTROLLERS overrides the list); ready only once its /healthz answers,
#      WITH_SCHEDULER=1: also run kube-scheduler (admin kubeconfig, no leader election),
#        for pods on a real kubelet; started after the controller manager,
#      APISERVER_RUNTIME_CONFIG: the apiserver's --runtime-config (e.g.
#        storage.k8s.io/v1beta1/volumeattributesclasses=true),
#      APISERVER_SERVE_REMOVED_APIS=1: serve APIs removed in this very release (the
#        apiserver's KUBE_APISERVER_SERVE_REMOVED_APIS_FOR_ONE_RELEASE; needed with the
#        runtime config above on 1.37, where v1beta1 VolumeAttributesClass is removed but
#        csi-resizer v1.14 still watches it),
#      OWNER_PID: stop everything soon after this process is gone (testkit passes the test
#      process, which may die without running its destructors: Ctrl-C, SIGKILL, abort).
# The stop functions run from the traps only, which shellcheck cannot see.
# shellcheck disable=SC2317
set -euo pipefail

[ $# -eq 3 ] || { echo "usage: $0 <netns> <listen-ip> <workdir>" >&2; exit 2; }
ns=$1
ip=$2
work=$(mkdir -p "$3" && cd "$3" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
bin=${KUBE_BIN_DIR:-$("$here/build.sh")}
ready_timeout=${READY_TIMEOUT:-90}
owner=${OWNER_PID:-}
port=6443
log() { echo "start.sh: $*" >&2; }

ip netns list | awk '{print $1}' | grep -qx "$ns" || { log "no network namespace $ns"; exit 1; }
rm -f "$work/ready" "$work/kubeconfig"

etcd_pid=
api_pid=
kcm_pid=
sched_pid=
with_kcm=${WITH_CONTROLLER_MANAGER:-0}
with_sched=${WITH_SCHEDULER:-0}
# The controllers a CSI driver's API flows need: PV/PVC binding, provisioning hand-off and
# expansion, attach/detach, the protection finalizers (without pvc-protection a deleted PVC
# never goes away) and VolumeAttributesClass protection; the service-account controllers
# so pods of a chart get tokens; namespace and garbage collection so deletes finish.
kcm_controllers=${KCM_CONTROLLERS:-persistentvolume-binder-controller,persistentvolume-expander-controller,persistentvolume-attach-detach-controller,persistentvolume-protection-controller,persistentvolumeclaim-protection-controller,volumeattributesclass-protection-controller,serviceaccount-controller,serviceaccount-token-controller,namespace-controller,garbage-collector-controller}
kcm_port=10257
# Waits up to $2 tenths of a second for pid $1 to exit.
wait_gone() {
    local pid=$1 tenths=$2 i
    for ((i = 0; i < tenths; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}
stop_one() {
    local pid=$1 name=$2
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 150 || { log "$name ignored SIGTERM for 15 s; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; wait_gone "$pid" 50 || true; }
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Reverse of start: the apiserver after its clients, and before its store.
    stop_one "$sched_pid" kube-scheduler
    stop_one "$kcm_pid" kube-controller-manager
    stop_one "$api_pid" kube-apiserver
    stop_one "$etcd_pid" etcd
    rm -f "$work/ready"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

start=$(date +%s.%N)

# Service-account signing key pair and one admin token: the least authn setup 1.34 accepts.
[ -f "$work/sa.key" ] || openssl genrsa -out "$work/sa.key" 2048 2>/dev/null
openssl rsa -in "$work/sa.key" -pubout -out "$work/sa.pub" 2>/dev/null
[ -f "$work/token" ] || openssl rand -hex 24 >"$work/token"
token=$(cat "$work/token")
echo "$token,hanfs-admin,hanfs-admin,system:masters" >"$work/tokens.csv"
printf 'Authorization: Bearer %s\n' "$token" >"$work/auth-header"

# kube-apiserver's client certificate towards kubelets (exec, logs, port-forward), and the
# CA that signed it: a kubelet that trusts <workdir>/kubelet-client-ca.crt
# (authentication.x509.clientCAFile) accepts the API server's calls without anonymous auth.
# The API server dials a kubelet at its InternalIP: nothing here resolves node hostnames.
if [ ! -f "$work/kubelet-client.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=hanfs-test-kubelet-client-ca" \
        -keyout "$work/kubelet-client-ca.key" -out "$work/kubelet-client-ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
        -keyout "$work/kubelet-client.key" -out "$work/kubelet-client.csr" 2>/dev/null
    openssl x509 -req -in "$work/kubelet-client.csr" -days 3650 -CA "$work/kubelet-client-ca.crt" \
        -CAkey "$work/kubelet-client-ca.key" -CAcreateserial -out "$work/kubelet-client.crt" 2>/dev/null
fi
chmod 600 "$work/sa.key" "$work/token" "$work/tokens.csv" "$work/auth-header"

# `ip netns exec` execs the command, so $! is the server's own pid.
ip netns exec "$ns" "$bin/etcd" \
    --name hanfs \
    --data-dir "$work/etcd" \
    --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster hanfs=http://127.0.0.1:2380 \
    --unsafe-no-fsync \
    --log-level warn \
    </dev/null >"$work/etcd.log" 2>&1 &
etcd_pid=$!
echo "$etcd_pid" >"$work/etcd.pid"

# The apiserver would start anyway and retry, but its log then drowns in dial errors and a
# broken etcd shows up as an apiserver timeout.
deadline=$(($(date +%s) + ready_timeout))
until ip netns exec "$ns" curl -sf --max-time 1 -o /dev/null http://127.0.0.1:2379/health 2>/dev/null; do
    kill -0 "$etcd_pid" 2>/dev/null || { log "etcd exited; tail of $work/etcd.log:"; tail -20 "$work/etcd.log" >&2; exit 1; }
    [ "$(date +%s)" -lt "$deadline" ] || { log "etcd not healthy after $ready_timeout s"; tail -20 "$work/etcd.log" >&2; exit 1; }
    sleep 0.1
done

api_env=()
[ "${APISERVER_SERVE_REMOVED_APIS:-0}" != 1 ] || api_env=(KUBE_APISERVER_SERVE_REMOVED_APIS_FOR_ONE_RELEASE=true)
api_args=()
[ -z "${APISERVER_RUNTIME_CONFIG:-}" ] || api_args=(--runtime-config "$APISERVER_RUNTIME_CONFIG")
ip netns exec "$ns" env "${api_env[@]}" "$bin/kube-apiserver" \
    --etcd-servers http://127.0.0.1:2379 \
    --bind-address "$ip" \
    --advertise-address "$ip" \
    --secure-port "$port" \
    --cert-dir "$work/certs" \
    --token-auth-file "$work/tokens.csv" \
    --authorization-mode AlwaysAllow \
    --allow-privileged=true \
    --anonymous-auth=false \
    --kubelet-client-certificate "$work/kubelet-client.crt" \
    --kubelet-client-key "$work/kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$work/sa.pub" \
    --service-account-signing-key-file "$work/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --profiling=false \
    "${api_args[@]}" \
    </dev/null >"$work/kube-apiserver.log" 2>&1 &
api_pid=$!
echo "$api_pid" >"$work/kube-apiserver.pid"

# The apiserver writes its self-signed bundle (serving cert, then the CA that signed it)
# before it listens. Until then curl runs with -k; readiness is what we wait for here.
url=https://$ip:$port
get() { ip netns exec "$ns" curl -sk --max-time 2 -o /dev/null -w '%{http_code}' -H @"$work/auth-header" "$url$1" 2>/dev/null || true; }
until [ "$(get /readyz)" = 200 ] && [ "$(get /api/v1/namespaces/default)" = 200 ]; do
    kill -0 "$etcd_pid" 2>/dev/null || { log "etcd exited; tail of $work/etcd.log:"; tail -20 "$work/etcd.log" >&2; exit 1; }
    [ -z "$owner" ] || kill -0 "$owner" 2>/dev/null || { log "owner $owner is gone"; exit 1; }
    kill -0 "$api_pid" 2>/dev/null || { log "kube-apiserver exited; tail of $work/kube-apiserver.log:"; tail -20 "$work/kube-apiserver.log" >&2; exit 1; }
    if [ "$(date +%s)" -ge "$deadline" ]; then
        log "not ready after $ready_timeout s; tail of $work/kube-apiserver.log:"
        tail -20 "$work/kube-apiserver.log" >&2
        exit 1
    fi
    sleep 0.25
done

# The CA is the last certificate of the bundle.
awk '/BEGIN CERTIFICATE/{buf=""} {buf=buf $0 "\n"} /END CERTIFICATE/{last=buf} END{printf "%s", last}' \
    "$work/certs/apiserver.crt" >"$work/ca.crt"
ip netns exec "$ns" curl -sf --max-time 5 --cacert "$work/ca.crt" -H @"$work/auth-header" -o /dev/null "$url/readyz" ||
    { log "the extracted CA does not verify $url"; exit 1; }

cat >"$work/kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hanfs
  cluster:
    server: $url
    certificate-authority-data: $(base64 -w0 "$work/ca.crt")
users:
- name: hanfs-admin
  user:
    token: $token
contexts:
- name: hanfs
  context:
    cluster: hanfs
    user: hanfs-admin
    namespace: default
current-context: hanfs
EOF
chmod 600 "$work/kubeconfig.tmp"
mv "$work/kubeconfig.tmp" "$work/kubeconfig"

if [ "$with_kcm" = 1 ]; then
    [ -x "$bin/kube-controller-manager" ] || { log "no kube-controller-manager in $bin"; exit 1; }
    # The admin kubeconfig is its client; the service-account key signs the tokens the
    # token controller mints. No delegated authn/authz for its own port: that needs the
    # apiserver's client-CA configmap, which token-only auth does not create (it would log
    # an error a second); /healthz, all we ask of that port, is always allowed.
    ip netns exec "$ns" "$bin/kube-controller-manager" \
        --kubeconfig "$work/kubeconfig" \
        --controllers "$kcm_controllers" \
        --leader-elect=false \
        --service-account-private-key-file "$work/sa.key" \
        --root-ca-file "$work/ca.crt" \
        --bind-address 127.0.0.1 \
        --secure-port "$kcm_port" \
        --cert-dir "$work/kcm-certs" \
        --profiling=false \
        </dev/null >"$work/kube-controller-manager.log" 2>&1 &
    kcm_pid=$!
    echo "$kcm_pid" >"$work/kube-controller-manager.pid"
    until [ "$(ip netns exec "$ns" curl -sk --max-time 2 -o /dev/null -w '%{http_code}' "https://127.0.0.1:$kcm_port/healthz" 2>/dev/null || true)" = 200 ]; do
        kill -0 "$kcm_pid" 2>/dev/null || { log "kube-controller-manager exited; tail of $work/kube-controller-manager.log:"; tail -20 "$work/kube-controller-manager.log" >&2; exit 1; }
        [ -z "$owner" ] || kill -0 "$owner" 2>/dev/null || { log "owner $owner is gone"; exit 1; }
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "kube-controller-manager not healthy after $ready_timeout s; tail of its log:"
            tail -20 "$work/kube-controller-manager.log" >&2
            exit 1
        fi
        sleep 0.25
    done
fi
if [ "$with_sched" = 1 ]; then
    [ -x "$bin/kube-scheduler" ] || { log "no kube-scheduler in $bin"; exit 1; }
    # Its own port only serves health; 127.0.0.1 keeps it off the bridge.
    ip netns exec "$ns" "$bin/kube-scheduler" \
        --kubeconfig "$work/kubeconfig" \
        --leader-elect=false \
        --bind-address 127.0.0.1 \
        --profiling=false \
        </dev/null >"$work/kube-scheduler.log" 2>&1 &
    sched_pid=$!
    echo "$sched_pid" >"$work/kube-scheduler.pid"
fi
awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }' >"$work/ready"
echo "ready in $(cat "$work/ready") s: kubeconfig $work/kubeconfig"

# Run until told to stop, a server dies, or the owner is gone. A poll rather than
# `wait -n`, because the owner is not our child; traps still run within 0.5 s.
alive() {
    kill -0 "$etcd_pid" 2>/dev/null && kill -0 "$api_pid" 2>/dev/null &&
        { [ -z "$kcm_pid" ] || kill -0 "$kcm_pid" 2>/dev/null; } &&
        { [ -z "$sched_pid" ] || kill -0 "$sched_pid" 2>/dev/null; }
}
while alive; do
    if [ -n "$owner" ] && ! kill -0 "$owner" 2>/dev/null; then
        log "owner $owner is gone; stopping"
        exit 0
    fi
    sleep 0.5
done
kill -0 "$etcd_pid" 2>/dev/null || log "etcd exited"
kill -0 "$api_pid" 2>/dev/null || log "kube-apiserver exited"
if [ -n "$sched_pid" ] && ! kill -0 "$sched_pid" 2>/dev/null; then
    log "kube-scheduler exited; tail of $work/kube-scheduler.log:"
    tail -20 "$work/kube-scheduler.log" >&2
fi
if [ -n "$kcm_pid" ] && ! kill -0 "$kcm_pid" 2>/dev/null; then
    log "kube-controller-manager exited; tail of $work/kube-controller-manager.log:"
    tail -20 "$work/kube-controller-manager.log" >&2
fi
exit 1

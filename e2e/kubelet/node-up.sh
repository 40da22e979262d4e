#!/bin/bash
# Makes the client VM a Kubernetes node, run in the guest through the mailbox by
# e2e/src/kube_pods.rs: containerd 2.x + runc + the CNI bridge plugin, kube-proxy (pods
# reach the API server at the `kubernetes` Service's ClusterIP, as in every cluster), and
# kubelet, all of one Kubernetes version. No registry is reachable: the data disk (/dev/vdb)
# already holds containerd's store with the locally built images (e2e/kubelet/containerd-disk.sh
# made it on the host; importing here takes minutes under TCG). The host put the rest under
# /hanfs/share/kube:
#   bin/{containerd,containerd-shim-runc-v2,ctr,kubelet,kube-proxy}   host-built binaries
#   kubeconfig, containerd.toml, kubelet.yaml, kube-proxy.yaml, cni.conflist
#   images    the image references the store must hold, one per line
# Daemons detach (setsid -f) and log to /hanfs/share/kube/log/. Prints one line per step
# with the guest's uptime, and `node-up: ok` at the end.
set -euo pipefail
k=/hanfs/share/kube
log=$k/log
mkdir -p "$log"
step() { echo "node-up: [$(cut -d' ' -f1 /proc/uptime)] $*"; }

if ! mountpoint -q /var/lib/containerd; then
    mkdir -p /var/lib/containerd
    mount /dev/vdb /var/lib/containerd
fi
step "containerd store mounted"

modprobe -a overlay br_netfilter nf_conntrack iptable_nat 2>/dev/null || true
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
# The guest has no default route, and a connect() to a ClusterIP fails with ENETUNREACH
# before kube-proxy's DNAT (nat OUTPUT) is consulted: the Service range needs a route. It
# points at the private bridge only, where the DNAT'ed API server (10.80.0.1) lives.
ip route replace 10.96.0.0/16 dev eth0
mkdir -p /etc/cni/net.d /etc/containerd /var/lib/kubelet /var/log/pods /run/containerd
cp "$k/cni.conflist" /etc/cni/net.d/10-hanfs-pods.conflist
cp "$k/containerd.toml" /etc/containerd/config.toml
[ -s /etc/machine-id ] || tr -d - </proc/sys/kernel/random/uuid >/etc/machine-id
[ -e /etc/resolv.conf ] || : >/etc/resolv.conf

PATH=$k/bin:$PATH
setsid -f containerd --config /etc/containerd/config.toml >>"$log/containerd.log" 2>&1
for _ in $(seq 1 300); do
    ctr --address /run/containerd/containerd.sock version >/dev/null 2>&1 && break
    sleep 0.1
done
ctr --address /run/containerd/containerd.sock version >/dev/null || { tail -20 "$log/containerd.log"; exit 1; }
step "containerd up"

have=$(ctr -n k8s.io --address /run/containerd/containerd.sock images ls -q)
while read -r ref; do
    grep -qxF "$ref" <<<"$have" || { echo "node-up: image $ref is not in the store (have: $have)"; exit 1; }
done <"$k/images"
step "store holds $(wc -l <"$k/images") images"

setsid -f kube-proxy --config "$k/kube-proxy.yaml" >>"$log/kube-proxy.log" 2>&1
setsid -f kubelet --config "$k/kubelet.yaml" --kubeconfig "$k/kubeconfig" \
    --hostname-override "$(hostname)" --node-ip "$HANFS_IP" >>"$log/kubelet.log" 2>&1
step "kube-proxy and kubelet started"
echo "node-up: ok"

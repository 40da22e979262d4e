#!/bin/bash
# Makes the client VM a Kubernetes node, run in the guest through the mailbox by
# e2e/src/kube_pods.rs: containerd 2.x + runc + the CNI bridge plugin, kube-proxy (pods
# reach the API server at the `kubernetes` Service's ClusterIP, as in every cluster), and
# kubelet, all of one Kubernetes version; then imports the locally built images (no registry
# is reachable). The host put everything under /hanfs/share/kube:
#   bin/{containerd,containerd-shim-runc-v2,ctr,kubelet,kube-proxy}   host-built binaries
#   images/*.oci.tar                                                  OCI archives
#   kubeconfig, containerd.toml, kubelet.yaml, kube-proxy.yaml, cni.conflist
# Daemons detach (setsid -f) and log to /hanfs/share/kube/log/. Prints one line per step
# with the guest's uptime, and `node-up: ok` at the end.
set -euo pipefail
k=/hanfs/share/kube
log=$k/log
mkdir -p "$log"
step() { echo "node-up: [$(cut -d' ' -f1 /proc/uptime)] $*"; }

# containerd's content store and snapshots need more room than the root overlay has: the
# client VM's data disk (blank at the first boot) holds them.
if ! mountpoint -q /var/lib/containerd; then
    blkid /dev/vdb >/dev/null 2>&1 || mkfs.ext4 -q -F -E lazy_itable_init=1 /dev/vdb
    mkdir -p /var/lib/containerd
    mount /dev/vdb /var/lib/containerd
fi
step "data disk mounted"

modprobe -a overlay br_netfilter nf_conntrack iptable_nat 2>/dev/null || true
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
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

n=0
for img in "$k"/images/*.oci.tar; do
    ctr -n k8s.io --address /run/containerd/containerd.sock images import "$img" >/dev/null ||
        { echo "node-up: importing $img failed"; exit 1; }
    n=$((n + 1))
done
step "imported $n images"

setsid -f kube-proxy --config "$k/kube-proxy.yaml" >>"$log/kube-proxy.log" 2>&1
setsid -f kubelet --config "$k/kubelet.yaml" --kubeconfig "$k/kubeconfig" \
    --hostname-override "$(hostname)" --node-ip "$HANFS_IP" >>"$log/kubelet.log" 2>&1
step "kube-proxy and kubelet started"
echo "node-up: ok"

#!/usr/bin/env bash
# Builds the guest image of the hanfs test VMs, once: a Debian bookworm root from
# `debootstrap --variant=minbase` with the Debian kernel (6.1: drbd.ko 8.4, nfsd, nfsv4, 9p),
# drbd-utils and nfs-kernel-server, runc + the CNI plugins + iptables for the kubelet node
# (containerd and kubelet themselves come from the Go module proxy and reach the guest
# through a 9p share), docs/locales/man dropped, PID 1 = guest-init.sh.
#
# Output, cached at ${HANFS_CACHE:-$HOME/.cache/hanfs}/vm-<hash>/, where <hash> covers this
# script, guest-init.sh and initramfs-init.sh (the recipe):
#   vmlinuz         the Debian kernel
#   initrd.img      busybox + the virtio/9p/ext4 modules (modprobe --show-depends order);
#                   mounts /dev/vda and switch_roots to its /init
#   root.ext4       the root filesystem (mkfs.ext4 -d), meant to be shared read-only
#                   (qemu -drive ...,snapshot=on)
#   kernel-version, packages (dpkg -l of the guest), .complete
# Prints progress, build time and size on stderr, and the output folder as the last line
# on stdout. Does nothing when the cache is complete. Needs root, debootstrap, mkfs.ext4.
#
# Mirror: $HANFS_DEBIAN_MIRROR, else the first Debian archive apt uses here
# (/etc/apt/sources.list{,.d}), else http://deb.debian.org/debian.
# Downloaded .debs are kept in ${HANFS_CACHE}/debootstrap-debs (rebuilds do not download).
# After a build, only the newest $HANFS_VM_KEEP_IMAGES (default 2) vm-* images are kept.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUITE=bookworm
PACKAGES=linux-image-amd64,drbd-utils,nfs-kernel-server,nfs-common,xfsprogs,e2fsprogs,iproute2,iputils-arping,iputils-ping,procps,util-linux,kmod,busybox-static,runc,containernetworking-plugins,iptables,conntrack
# Loaded by the initramfs, with their dependencies.
INITRD_MODULES=(virtio_pci virtio_blk virtio_net 9pnet_virtio 9p ext4 crc32c_generic)

log() { echo "build-image: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
hash=$(cat "$here/build-image.sh" "$here/guest-init.sh" "$here/initramfs-init.sh" | sha256sum | cut -c1-16)
cache=${HANFS_CACHE:-$HOME/.cache/hanfs}
out=$cache/vm-$hash
mkdir -p "$cache"

if [ -f "$out/.complete" ]; then
    echo "$out"
    exit 0
fi

# One builder at a time (bounded wait: a cold build takes a few minutes).
exec 8>"$cache/vm-$hash.lock"
flock -w 1800 8 || die "timed out waiting for $cache/vm-$hash.lock"
if [ -f "$out/.complete" ]; then
    echo "$out"
    exit 0
fi

mirror=${HANFS_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -v '^\s*#' | grep -oE '(https?|file)://[^ ]+/debian/?( |$)' | head -1 | tr -d ' ' || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi

for t in debootstrap mkfs.ext4 chroot sha256sum; do
    command -v "$t" >/dev/null || die "$t not found (apt-get install debootstrap e2fsprogs)"
done

start=$(date +%s)
tmp=$(mktemp -d "$cache/vm-$hash.tmp.XXXXXX")
cleanup() {
    # debootstrap leaves /proc etc. mounted in the target when it fails.
    for m in proc sys dev/pts dev; do
        umount -l "$tmp/root/$m" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
root=$tmp/root
debs=$cache/debootstrap-debs
mkdir -p "$debs"

log "debootstrap $SUITE from $mirror into $root"
# INITRD=No: the kernel's postinst skips update-initramfs (we build our own).
INITRD=No debootstrap --variant=minbase --include="$PACKAGES" --components=main \
    --cache-dir="$debs" "$SUITE" "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1 || {
    tail -30 "$tmp/debootstrap.log" >&2
    die "debootstrap failed"
}
for m in proc sys dev/pts dev; do
    umount -l "$root/$m" 2>/dev/null || true
done
log "debootstrap done after $(($(date +%s) - start)) s"

kver=$(ls "$root/lib/modules")
[ "$(echo "$kver" | wc -w)" = 1 ] || die "expected one kernel in the guest, got: $kver"
mkdir -p "$tmp/out"
cp "$root/boot/vmlinuz-$kver" "$tmp/out/vmlinuz"
echo "$kver" >"$tmp/out/kernel-version"
# shellcheck disable=SC2016 # dpkg-query's own format string, not shell expansion
chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' >"$tmp/out/packages"

# Initramfs: busybox, the modules in dependency order, initramfs-init.sh as /init.
ir=$tmp/initramfs
mkdir -p "$ir"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$root/bin/busybox" "$ir/bin/busybox"
for a in sh mount umount insmod switch_root sleep cat mkdir echo; do
    ln -s busybox "$ir/bin/$a"
done
chroot "$root" modprobe -a -S "$kver" --show-depends "${INITRD_MODULES[@]}" >"$tmp/show-depends"
: >"$ir/lib/modules/order"
while read -r kind path _; do
    [ "$kind" = insmod ] || continue # "builtin <name>": nothing to load
    name=$(basename "$path")
    grep -qx "${name%%.ko*}.ko" "$ir/lib/modules/order" && continue
    case $name in
    *.ko) cp "$root$path" "$ir/lib/modules/$name" ;;
    *.ko.xz) xz -dc "$root$path" >"$ir/lib/modules/${name%.xz}" ;;
    *.ko.zst) zstd -qdc "$root$path" >"$ir/lib/modules/${name%.zst}" ;;
    *) die "unexpected module file $path" ;;
    esac
    echo "${name%%.ko*}.ko" >>"$ir/lib/modules/order"
done <"$tmp/show-depends"
log "initramfs modules: $(tr '\n' ' ' <"$ir/lib/modules/order")"
cp "$here/initramfs-init.sh" "$ir/init"
chmod 755 "$ir/init"
(cd "$ir" && find . | "$root/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >"$tmp/out/initrd.img"

# Guest root: our /init, nothing that a test VM does not need.
install -m 755 "$here/guest-init.sh" "$root/init"
rm -rf "$root"/usr/share/{doc,man,info,locale,lintian,linda,bug,groff} \
    "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/log/* \
    "$root"/boot/initrd.img* "$root"/boot/vmlinuz* "$root"/var/cache/debconf/*-old \
    "$root"/usr/lib/udev/hwdb.bin
# Kernel modules: hardware drivers a virtio VM never loads go (~150 MB); block (drbd, loop),
# md/dm, virtio, char, the virtual network drivers, all of fs/, net/ (nfs, sunrpc, 9p,
# netfilter, sched/netem), crypto and lib stay.
mods=$root/usr/lib/modules/$kver/kernel
find "$mods/drivers" -mindepth 1 -maxdepth 1 -type d \
    ! -name block ! -name md ! -name virtio ! -name char ! -name net -exec rm -rf {} +
find "$mods/drivers/net" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
rm -rf "$mods/sound" "$mods/net/wireless" "$mods/net/mac80211" "$mods/net/bluetooth"
chroot "$root" depmod "$kver"
echo "hanfs-vm" >"$root/etc/hostname"
: >"$root/etc/fstab"

used_kb=$(du -sk "$root" | cut -f1)
size_mb=$((used_kb * 13 / 10240 + 128))
mkfs.ext4 -q -F -L hanfs-root -m 0 -E root_owner=0:0 -d "$root" "$tmp/out/root.ext4" "${size_mb}M" >&2 ||
    die "mkfs.ext4 -d failed"

: >"$tmp/out/.complete"
rm -rf "$out"
mv "$tmp/out" "$out"
elapsed=$(($(date +%s) - start))
log "built $out in $elapsed s: root tree $((used_kb / 1024)) MB, root.ext4 ${size_mb} MB" \
    "(allocated $(du -sm "$out/root.ext4" | cut -f1) MB), kernel $kver," \
    "initrd $(du -k "$out/initrd.img" | cut -f1) KB"
# shellcheck disable=SC2012 # newest first by mtime; the names are our own hex keys
ls -dt "$cache"/vm-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f] |
    tail -n +"$((${HANFS_VM_KEEP_IMAGES:-2} + 1))" | while read -r old; do
    log "removing old image $old"
    rm -rf "$old" "$old.lock"
done
echo "$out"

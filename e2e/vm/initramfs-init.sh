#!/bin/sh
# /init of the hanfs test VMs' initramfs (busybox): load the virtio modules listed in
# /lib/modules/order (modprobe --show-depends order, written by build-image.sh), mount the
# root disk and switch to it; its /init (e2e/vm/guest-init.sh) takes over as PID 1.
# Any failure ends PID 1, so the kernel panics and qemu (-no-reboot, panic=1) exits.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() { echo "hanfs-initramfs: $*" >/dev/console; exit 1; }

while read -r m; do
    insmod "/lib/modules/$m" || fail "insmod $m failed"
done </lib/modules/order

root=/dev/vda
read -r cmdline </proc/cmdline
for w in $cmdline; do
    case $w in root=*) root=${w#root=} ;; esac
done
i=0
while [ ! -b "$root" ]; do
    i=$((i + 1))
    [ $i -le 200 ] || fail "no root device $root after 10 s"
    sleep 0.05
done
mount -t ext4 -o rw,noatime "$root" /newroot || fail "cannot mount $root"
[ -x /newroot/init ] || fail "no /init on $root"
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /init

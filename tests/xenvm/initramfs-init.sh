#!/bin/sh
# /init of the xen-pci test initramfs (busybox-static), two modes:
#  - dom0 (default): load the modules that mounting root= needs, switch_root;
#  - xenvm=domu on the command line: the PV test guest. Load xen-pcifront, stay
#    here, and publish what the guest sees in /sys/bus/pci/devices to its own
#    xenstore node data/pci-devices ("BDF=vendor:device" words) on each change.
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "xenvm-init: $*" >/dev/console; }

mode=dom0
root=/dev/vda
read -r cmdline </proc/cmdline
for word in $cmdline; do
    case $word in
        xenvm=domu) mode=domu ;;
        root=*) root=${word#root=} ;;
    esac
done

while read -r module; do
    [ -n "$module" ] || continue
    insmod "/modules/$module" 2>/dev/null || say "insmod $module failed"
done </etc/modules-$mode

if [ "$mode" = dom0 ]; then
    n=0
    while [ ! -b "$root" ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
    if mount -t ext4 -o rw "$root" /newroot; then
        umount /proc /sys
        mount --move /dev /newroot/dev
        exec switch_root /newroot /sbin/init
    fi
    say "cannot mount $root; dropping to a shell"
    exec sh
fi

# The guest. xenstore-write finds the store through /dev/xen/xenbus; relative
# paths are under /local/domain/<own domid>.
export LD_LIBRARY_PATH=/lib
n=0
while [ ! -e /dev/xen/xenbus ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
last=-
ready=no
# Builtins only in the loop (read, glob): forks would compete with the
# guest kernel for the one emulated CPU.
while :; do
    list=
    for dev in /sys/bus/pci/devices/*; do
        [ -e "$dev" ] || continue
        vendor=
        device=
        { read -r vendor <"$dev/vendor"; read -r device <"$dev/device"; } 2>/dev/null
        # a device going away between the glob and the reads is skipped
        if [ -z "$vendor" ] || [ -z "$device" ]; then continue; fi
        list="$list${list:+ }${dev##*/}=${vendor#0x}:${device#0x}"
    done
    if [ "$list" != "$last" ]; then
        if xenstore-write data/pci-devices "$list"; then
            last=$list
            say "pci-devices: ${list:-none}"
        fi
    fi
    if [ $ready = no ] && [ "$last" != - ]; then
        xenstore-write data/xenvm-guest ready && ready=yes
    fi
    sleep 0.3
done

#!/bin/sh
# /init of the test stub domain (build_stubdom.py packs it with dom0's QEMU).
#
# libxl's side of a Linux stub domain (qemu-xen + device_model_stubdomain):
#  - QEMU's arguments are /vm/<guest uuid>/image/dm-argv/NNN, one node per
#    argument, readable by the stub domain; they have no QMP monitor: the
#    stub domain adds its own;
#  - libxl talks QMP through a vchan: dom0's vchan-socket-proxy is the
#    client, at device-model/<guest>/qmp-vchan under the stub domain's home,
#    and a proxy here in server mode joins it to QEMU's QMP socket;
#  - libxl waits (30 s) for device-model/<guest>/state = running under the
#    stub domain's home; QEMU writes that itself (a relative path).
# Progress goes to the console (hvc0: dom0 logs it in
# /var/log/xen/qemu-dm-<guest>.log) and to data/stubdom-init, which dom0
# can read while the domain runs.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
/usr/bin/busybox --install -s /usr/bin 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=8m tmpfs /tmp
mount -t tmpfs -o size=1m tmpfs /run

NL='
'
say() {
    echo "stubdom-init: $*" >/dev/hvc0
    xenstore-write data/stubdom-init "$*" 2>/dev/null
}

say "loading modules"
# One module per line, with its parameters.
while read -r module params; do
    # shellcheck disable=SC2086  # parameters are separate words
    insmod "$module" $params || say "insmod $module failed"
done </etc/modules
mkdir -p /proc/xen
mount -t xenfs xenfs /proc/xen || say "no xenfs"

self=$(xenstore-read domid)
target=$(xenstore-read target)
vm=$(xenstore-read "/local/domain/$target/vm")
if [ -z "$self" ] || [ -z "$target" ] || [ -z "$vm" ]; then
    say "FATAL: no domid/target/vm in xenstore (self=$self target=$target vm=$vm)"
    while :; do sh </dev/hvc0 >/dev/hvc0 2>&1 || sleep 5; done
fi

# One argument per line (an argument may hold spaces, none holds a newline).
args=
for n in $(xenstore-list "$vm/image/dm-argv" | sort); do
    args="$args$(xenstore-read "$vm/image/dm-argv/$n")$NL"
done
say "dm-argv: $(echo "$args" | tr '\n' ' ')"

# QEMU opens a passed-through device at /sys/bus/pci/devices/<host BDF>,
# but pcifront shows it at the virtual BDF pciback gave it (vdev-N beside
# dev-N in the backend). Show every device under its host BDF too: a tmpfs
# over the directory, holding links to both names, kept up to date.
pci_alias() {
    mkdir -p /run/pci-real
    if ! mount --bind /sys/bus/pci/devices /run/pci-real ||
       ! mount -t tmpfs -o size=64k tmpfs /sys/bus/pci/devices; then
        say "cannot alias PCI devices: QEMU will not find passed-through ones"
        return
    fi
    while :; do
        for dev in /run/pci-real/*; do
            # (-L: relative to /run/pci-real the links dangle)
            [ -L "$dev" ] || continue
            name=${dev##*/}
            # sysfs's links are relative to /sys/bus/pci/devices: kept as they are
            [ -e "/sys/bus/pci/devices/$name" ] || ln -s "$(readlink "$dev")" "/sys/bus/pci/devices/$name"
        done
        # A device pcifront let go (an unplug) leaves its links dangling.
        for link in /sys/bus/pci/devices/*; do
            [ -L "$link" ] && [ ! -e "$link" ] && rm -f "$link"
        done
        be=$(xenstore-read device/pci/0/backend 2>/dev/null)
        num=$(xenstore-read "$be/num_devs" 2>/dev/null)
        i=0
        while [ -n "$num" ] && [ "$i" -lt "$num" ]; do
            host=$(xenstore-read "$be/dev-$i" 2>/dev/null)
            # pciback writes vdev-N with a two-digit function (00:00.00)
            local_bdf=$(xenstore-read "$be/vdev-$i" 2>/dev/null | sed 's/\.0*\([0-9a-f]\)$/.\1/')
            if [ -n "$host" ] && [ -n "$local_bdf" ] && [ -L "/run/pci-real/$local_bdf" ] &&
               [ ! -e "/sys/bus/pci/devices/$host" ]; then
                ln -s "$(readlink "/run/pci-real/$local_bdf")" "/sys/bus/pci/devices/$host"
                say "pci $host is $local_bdf here"
            fi
            i=$((i + 1))
        done
        sleep 0.5
    done
}
pci_alias &

dm=$(cat /etc/stubdom-dm)
proxy=$(cat /etc/stubdom-qmp-proxy)
# Debugging aid: stubdom.trace=PATTERN on the stub domain's command line
# (stubdomain_cmdline) turns on QEMU's trace events matching it (stderr).
read -r cmdline </proc/cmdline
for word in $cmdline; do
    case $word in
        stubdom.trace=*) args="-trace${NL}enable=${word#stubdom.trace=}${NL}$args" ;;
        stubdom.diag=1) python3 /usr/lib/stubdom-diag.py "$target" >/dev/hvc0 2>&1 ;;
    esac
done
say "starting $dm for domain $target"
(
    IFS=$NL
    set -f
    # shellcheck disable=SC2086  # one argument per line, unquoted on purpose
    exec "$dm" -chardev socket,id=stubdom-qmp,path=/run/qmp.sock,server=on,wait=off \
        -mon chardev=stubdom-qmp,mode=control $args </dev/null >/dev/hvc0 2>&1
) &
qemu=$!

n=0
while [ ! -S /run/qmp.sock ] && [ $n -lt 600 ] && kill -0 $qemu 2>/dev/null; do sleep 0.1; n=$((n + 1)); done
if [ -S /run/qmp.sock ]; then
    # Server side of libxl's QMP vchan; dom0 (domain 0) is the peer. It
    # serves one connection after another, as libxl opens one per command.
    "$proxy" --mode=server 0 "/local/domain/$self/device-model/$target/qmp-vchan" /run/qmp.sock \
        </dev/null >/dev/hvc0 2>&1 &
    say "qmp vchan served"
else
    say "no QMP socket from QEMU"
fi

wait $qemu
say "QEMU exited with status $?"
# PID 1 must not exit; leave a shell on the console for a look around.
while :; do sh </dev/hvc0 >/dev/hvc0 2>&1 || sleep 5; done

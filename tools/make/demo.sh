#!/usr/bin/env bash
# demo.sh SCENARIO: starts the simulated Xen host of SCENARIO, shows what it
# serves (paths, the xenstore tree through Debian's xenstore-ls, the PCI sysfs)
# and stops it. XEN_PCI_DEMO_HOLD=1 keeps it running until Ctrl-C, for
# playing with xenstore-* / pyxs against it.
set -euo pipefail
scenario=$1
cd "$XEN_PCI_ROOT"
[[ -f $scenario ]] || { echo "demo: no scenario file $scenario" >&2; exit 1; }

# Short path under /tmp: AF_UNIX socket paths are limited to 107 bytes.
state_dir=$(mktemp -d /tmp/xen-pci-demo.XXXXXX)
pid=
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        # Bounded wait for a clean stop (it unmounts its sysfs), then force.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "demo: simulator did not stop within 5 s of SIGTERM; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    fi
    # A simulator that died hard leaves its FUSE mount behind: never rm through it.
    while read -r mnt; do
        fusermount -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v d="$state_dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts)
    rm -rf "$state_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "demo: starting the simulated host of $scenario"
PYTHONPATH=tools/xensim python -m xensim serve --scenario "$scenario" --state-dir "$state_dir" \
    >"$state_dir/serve.out" 2>"$state_dir/serve.err" &
pid=$!

# The first stdout line is the JSON of served paths, printed once it is ready.
paths=
for _ in $(seq 300); do
    paths=$(head -n1 "$state_dir/serve.out")
    [[ -n $paths ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if [[ -z $paths ]]; then
    echo "demo: the simulator did not report ready within 30 s; its stderr:" >&2
    cat "$state_dir/serve.err" >&2
    exit 1
fi

field() {
    python -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$paths" "$1"
}
xenstored=$(field xenstored)
sysfs_root=$(field sysfs_root)

echo
echo "== served paths"
python -c 'import json, sys; print(json.dumps(json.loads(sys.argv[1]), indent=2, sort_keys=True))' "$paths"

echo
echo "== XENSTORED_PATH=$xenstored xenstore-ls -fp /"
XENSTORED_PATH=$xenstored timeout 20 xenstore-ls -fp /

echo
echo "== PCI devices in the simulated sysfs ($sysfs_root/bus/pci/devices)"
if [[ -d $sysfs_root/bus/pci/devices ]]; then
    for dev in "$sysfs_root"/bus/pci/devices/*; do
        driver=-
        [[ -L $dev/driver ]] && driver=$(basename "$(readlink "$dev/driver")")
        printf '  %s  vendor %s device %s  driver %s\n' "$(basename "$dev")" \
            "$(timeout 5 cat "$dev/vendor")" "$(timeout 5 cat "$dev/device")" "$driver"
    done
else
    echo "  (not mounted: $(tail -n1 "$state_dir/serve.err" 2>/dev/null || echo 'no FUSE?'))"
fi

if [[ ${XEN_PCI_DEMO_HOLD:-0} == 1 ]]; then
    echo
    echo "The simulated host keeps running; in another shell:"
    echo "  export XENSTORED_PATH=$xenstored"
    echo "Press Ctrl-C to stop it."
    wait "$pid" || true
fi
echo
echo "demo: stopping the simulated host"

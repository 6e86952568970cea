#!/usr/bin/env bash
# demo.sh SCENARIO: the collection at work on a simulated Xen host.
#  1. starts the simulated host of SCENARIO (xensim);
#  2. runs playbooks/rollout.yml against it (inventory: localhost, connection
#     local, the role's variables pointing the modules at the simulator);
#  3. runs it again: it must change nothing (changed=0 for every host), else
#     the demo fails;
#  4. runs playbooks/report.yml and prints the report;
#  5. stops the simulated host.
# Every step is bounded (XEN_PCI_DEMO_TIMEOUT seconds per playbook, default
# 300). XEN_PCI_DEMO_HOLD=1 keeps the host running at the end until Ctrl-C,
# for playing with xenstore-* / pyxs against it.
set -euo pipefail
scenario=$1
root=${XEN_PCI_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
cd "$root"
[[ -f $scenario ]] || { echo "demo: no scenario file $scenario" >&2; exit 1; }
limit=${XEN_PCI_DEMO_TIMEOUT:-300}

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

# ansible-playbook finds xen.pci in a tree ending in ansible_collections/xen/pci.
if [[ -n ${XEN_PCI_COLLECTION_TREE:-} ]]; then
    # shellcheck source=tools/make/tree.sh
    source "$root/tools/make/tree.sh"
    XEN_PCI_ROOT=$root link_tree >/dev/null
    collections=$XEN_PCI_COLLECTION_TREE/link
else
    collections=$state_dir/collections
    mkdir -p "$collections/ansible_collections/xen"
    ln -sfn "$root" "$collections/ansible_collections/xen/pci"
fi
export ANSIBLE_COLLECTIONS_PATH=$collections
# Only the demo's own settings, whatever ansible.cfg the user has.
printf '[defaults]\n' >"$state_dir/ansible.cfg"
export ANSIBLE_CONFIG=$state_dir/ansible.cfg ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_NOCOLOR=1
export ANSIBLE_LOCAL_TEMP=$state_dir/ansible-tmp ANSIBLE_RETRY_FILES_ENABLED=false

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

# The declared state of the demo host (tools/xensim/scenarios/demo.yaml):
# alpine keeps the device it booted with, builder gets the two pciback
# devices (one permissive), sandbox gets the e1000 card that dom0 holds
# (taken from its driver with explicit consent); the guests' xl configs are
# kept in step.
mkdir -p "$state_dir/etc/xen"
inventory=$state_dir/inventory.yml
cat >"$inventory" <<YAML
xen_hosts:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: $(command -v python)
      xen_pci_connection:
        xenstore_path: $(field xenstored)
        sysfs_root: $(field sysfs_root)
        hypervisor: "xensim:$(field hypervisor)"
        userdata_dir: $(field userdata_dir)
        qmp_dir: $(field qmp_dir)
        timeout: 60
      xen_pci_state: exact
      xen_pci_make_assignable: true
      xen_pci_take_from_driver: ["0000:00:12.0"]
      xen_pci_persist: true
      xen_pci_config_dir: $state_dir/etc/xen
      xen_pci_config_create: true
      xen_pci_config_backup: false
      xen_pci_assignments:
        alpine: ["00:13.0"]
        builder: ["00:10.0", "00:11.0,permissive=1"]
        sandbox: ["00:12.0"]
YAML

run_playbook() {
    local log=$1
    shift
    local status=0
    timeout --kill-after=10 "$limit" ansible-playbook -i "$inventory" "$@" 2>&1 | tee "$log" || status=${PIPESTATUS[0]}
    if ((status == 124 || status == 137)); then
        echo "demo: ansible-playbook $* did not finish within ${limit}s" >&2
    fi
    return "$status"
}

echo
echo "== first rollout: playbooks/rollout.yml"
run_playbook "$state_dir/run1.log" playbooks/rollout.yml

echo
echo "== second rollout: nothing may change"
run_playbook "$state_dir/run2.log" playbooks/rollout.yml
# Every host's recap line must say changed=0.
if ! grep -qE '^[^ ].* : ok=' "$state_dir/run2.log"; then
    echo "demo: no PLAY RECAP in the second run" >&2
    exit 1
fi
if grep -E '^[^ ].* : ok=' "$state_dir/run2.log" | grep -vq 'changed=0 '; then
    echo "demo: FAILED, the second rollout changed something:" >&2
    grep -E '^[^ ].* : ok=' "$state_dir/run2.log" | grep -v 'changed=0 ' >&2
    exit 1
fi
echo "demo: second rollout changed nothing"

echo
echo "== report: playbooks/report.yml"
run_playbook "$state_dir/report.log" playbooks/report.yml -e "xen_pci_report_path=$state_dir/report.md" >/dev/null
echo
cat "$state_dir/report.md"

echo
echo "== the guests' xl config files"
for cfg in "$state_dir"/etc/xen/*.cfg; do
    echo "--- $(basename "$cfg")"
    cat "$cfg"
done

if [[ ${XEN_PCI_DEMO_HOLD:-0} == 1 ]]; then
    echo
    echo "The simulated host keeps running; in another shell:"
    echo "  export XENSTORED_PATH=$(field xenstored)"
    echo "Press Ctrl-C to stop it."
    wait "$pid" || true
fi
echo
echo "demo: stopping the simulated host"

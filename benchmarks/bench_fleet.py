# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a fleet rollout costs next to what Ansible itself costs.

N simulated hosts (5, 10, 20 by default), each with 20 guests of one device,
in one inventory (connection local, forks 5). Timed, as whole
ansible-playbook processes, alternately, the median of 3 runs each:

- ``ping``: one ``ansible.builtin.ping`` task per host (Ansible's floor);
- ``one task``: one ``xen.pci.passthrough`` task per host with every
  guest's ``assignments``, a no-op;
- ``rollout``: playbooks/rollout.yml (the role, persisting the config files
  too), a no-op, with its default serial batches and with every host in one
  batch.

Before them, the first (changing) rollout, with the wall time and module
calls of each of the role's phases (a callback in callback_plugins/).

Run: PYTHONPATH=<a tree holding ansible_collections/xen/pci>:tools/xensim python benchmarks/bench_fleet.py [N ...]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "xensim"))

from xensim.host import SimHost  # noqa: E402
from xensim.scenario import loads  # noqa: E402

GUESTS = 20
RUNS = int(os.environ.get("XEN_PCI_BENCH_RUNS", "3"))
FORKS = 5


def scenario(index):
    devices = "\n".join('  - {bdf: "0000:01:%02x.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback}' % g
                        for g in range(GUESTS))
    domains = "\n".join("  - {domid: %d, name: g%02d, type: pv, state: running, pcifront: true}" % (g + 1, g)
                        for g in range(GUESTS))
    return loads("name: fleet%02d\ntiming: {scale: 0.1}\ndevices:\n%s\ndomains:\n%s\n" % (index, devices, domains))


def inventory(hosts, work):
    lines = ["all:", "  children:", "    xen_hosts:", "      hosts:"]
    for index, host in enumerate(hosts):
        p = host.paths
        config_dir = os.path.join(work, "etc-xen-%02d" % index)
        os.makedirs(config_dir, exist_ok=True)
        connection = {"xenstore_path": p["xenstored"], "sysfs_root": p["sysfs_root"],
                      "hypervisor": "xensim:" + p["hypervisor"], "userdata_dir": p["userdata_dir"],
                      "qmp_dir": p["qmp_dir"], "timeout": 120}
        assignments = {"g%02d" % g: ["0000:01:%02x.0" % g] for g in range(GUESTS)}
        lines += ["        h%02d:" % index,
                  "          ansible_connection: local",
                  "          ansible_python_interpreter: %s" % sys.executable,
                  "          xen_pci_connection: %s" % json.dumps(connection),
                  "          xen_pci_assignments: %s" % json.dumps(assignments),
                  "          xen_pci_persist: true",
                  "          xen_pci_config_dir: %s" % config_dir,
                  "          xen_pci_config_create: true",
                  "          xen_pci_config_backup: false"]
    path = os.path.join(work, "inventory.yml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


PING = """
- hosts: xen_hosts
  gather_facts: false
  tasks:
    - ansible.builtin.ping:
"""

ONE_TASK = """
- hosts: xen_hosts
  gather_facts: false
  tasks:
    - xen.pci.passthrough:
        assignments: "{{ xen_pci_assignments }}"
        xenstore_path: "{{ xen_pci_connection.xenstore_path }}"
        sysfs_root: "{{ xen_pci_connection.sysfs_root }}"
        hypervisor: "{{ xen_pci_connection.hypervisor }}"
        userdata_dir: "{{ xen_pci_connection.userdata_dir }}"
        qmp_dir: "{{ xen_pci_connection.qmp_dir }}"
"""


def environment(work):
    collections = os.path.join(work, "collections")
    os.makedirs(os.path.join(collections, "ansible_collections", "xen"), exist_ok=True)
    link = os.path.join(collections, "ansible_collections", "xen", "pci")
    if not os.path.exists(link):
        os.symlink(ROOT, link)
    cfg = os.path.join(work, "ansible.cfg")
    with open(cfg, "w", encoding="utf-8") as handle:
        handle.write("[defaults]\nforks = %d\nhost_key_checking = false\n" % FORKS)
    env = dict(os.environ, ANSIBLE_CONFIG=cfg, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_LOCAL_TEMP=os.path.join(work, "tmp"),
               ANSIBLE_RETRY_FILES_ENABLED="false",
               ANSIBLE_CALLBACK_PLUGINS=os.path.join(ROOT, "benchmarks", "callback_plugins"),
               ANSIBLE_CALLBACKS_ENABLED="xen_pci_phases")
    env.pop("PYTHONPATH", None)
    return env


def playbook(work, name, text):
    path = os.path.join(work, name)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def run(command, env, phases=None):
    env = dict(env, XEN_PCI_PHASES_FILE=phases or "")
    start = time.monotonic()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit("failed: %s\n%s" % (" ".join(command), proc.stdout[-3000:]))
    recap = [line for line in proc.stdout.splitlines() if "changed=" in line]
    changed = sum(int(line.split("changed=")[1].split()[0]) for line in recap)
    return seconds, changed


def main(argv):
    sizes = [int(a) for a in argv] or [5, 10, 20]
    bench = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    table = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="fl-", dir="/tmp") as work:
            hosts = [SimHost(scenario(i), os.path.join(work, "h%02d" % i)) for i in range(size)]
            for host in hosts:
                host.start()
            try:
                inv = inventory(hosts, work)
                env = environment(work)
                rollout = [bench, "-i", inv, os.path.join(ROOT, "playbooks", "rollout.yml")]
                one_batch = rollout + ["-e", "xen_pci_rollout_serial=100%"]
                commands = {
                    "ping": [bench, "-i", inv, playbook(work, "ping.yml", PING)],
                    "one task": [bench, "-i", inv, playbook(work, "one.yml", ONE_TASK)],
                    "rollout": rollout,
                    "rollout, one batch": one_batch,
                }
                phases_file = os.path.join(work, "phases.json")
                first, changed = run(rollout, env, phases_file)
                with open(phases_file, encoding="utf-8") as handle:
                    phases = json.load(handle)
                times = {name: [] for name in commands}
                for _round in range(RUNS):
                    for name, command in commands.items():
                        seconds, changed_now = run(command, env)
                        if name != "ping" and changed_now:
                            raise SystemExit("%s changed %d on a no-op run" % (name, changed_now))
                        times[name].append(seconds)
                table.append((size, first, changed, phases, {n: statistics.median(t) for n, t in times.items()},
                              {n: min(t) for n, t in times.items()}))
            finally:
                for host in hosts:
                    host.stop()
    print("%5s  %-20s %8s %8s %9s" % ("hosts", "play", "median s", "min s", "/ ping"))
    for size, _first, _changed, _phases, median, low in table:
        for name in ("ping", "one task", "rollout", "rollout, one batch"):
            print("%5d  %-20s %8.2f %8.2f %8.2fx" % (size, name, median[name], low[name], median[name] / median["ping"]))
    print()
    print("first (changing) rollout, per phase of the role: wall seconds (module calls)")
    for size, first, changed, phases, _median, _low in table:
        parts = ", ".join("%s %.1f (%d)" % (p, phases["seconds"].get(p, 0.0), phases["module_calls"].get(p, 0))
                          for p in ("Plan", "Preflight", "Assignable", "Persist", "Hotplug", "Verify", "other"))
        print("%5d hosts: %.1f s, changed=%d; %s" % (size, first, changed, parts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

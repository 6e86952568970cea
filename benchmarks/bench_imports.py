# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What importing each module costs, and a budget it must stay within.

For every module of the collection, in a fresh interpreter: the modules
loaded by importing it (AnsibleModule and the module_utils its code path
needs at import; a task that changes nothing loads no more) and the time
``python -X importtime`` gives for it, the median of 5 interpreters.
Ansible's own ``ansible.module_utils.basic`` alone is the floor; the table
shows what the collection adds to it. The budget is on what the collection
adds (modules loaded beyond the floor); exceeding it fails (exit 1).

Run: PYTHONPATH=<a tree holding ansible_collections/xen/pci> python benchmarks/bench_imports.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys

MODULES = ("passthrough", "assignable", "info", "domain_config", "plan")
FLOOR = "ansible.module_utils.basic"
# Modules the collection may add to Ansible's floor, per module (the
# stdlib ones included): a budget kept as the lazy imports are.
BUDGET = {"passthrough": 36, "assignable": 40, "info": 36, "domain_config": 14, "plan": 36}
RUNS = 5

PROBE = r"""
import sys, time
start = time.perf_counter()
import %s
seconds = time.perf_counter() - start
print(len(sys.modules), round(seconds * 1000, 1))
"""


def probe(target):
    counts, ms = [], []
    for _run in range(RUNS):
        out = subprocess.run([sys.executable, "-c", PROBE % target], capture_output=True, text=True, check=True)
        count, took = out.stdout.split()
        counts.append(int(count))
        ms.append(float(took))
    return max(counts), statistics.median(ms)


def main():
    floor_count, floor_ms = probe(FLOOR)
    print("%-16s %8s %9s %10s %8s" % ("module", "modules", "ms", "beyond", "budget"))
    print("%-16s %8d %9.1f %10s %8s" % ("(ansible floor)", floor_count, floor_ms, "-", "-"))
    over = []
    for name in MODULES:
        count, ms = probe("ansible_collections.xen.pci.plugins.modules.%s" % name)
        beyond = count - floor_count
        print("%-16s %8d %9.1f %10d %8d" % (name, count, ms, beyond, BUDGET[name]))
        if beyond > BUDGET[name]:
            over.append("%s loads %d modules beyond Ansible's floor (budget %d)" % (name, beyond, BUDGET[name]))
    for line in over:
        print("OVER BUDGET: " + line)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())

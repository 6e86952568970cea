# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What importing each module costs, and a budget it must stay within.

For every module of the collection, in a fresh interpreter: the modules
loaded by importing it and the runner its ``main()`` imports (AnsibleModule
and the module_utils its code path needs at import; a task that changes
nothing loads no more) and the time
``python -X importtime`` gives for it, the median of 5 interpreters.
Ansible's own ``ansible.module_utils.basic`` alone is the floor; the table
shows what the collection adds to it. The budget is on what the collection
adds (modules loaded beyond the floor); exceeding it fails (exit 1).

Then the same imports as Ansible ships them, the collection's Python files
in a zip on ``sys.path`` (AnsiballZ): Python keeps no bytecode for a zip, so
every task compiles what it imports. ``zip, compiled`` turns the
collection's bytecode cache off (``XEN_PCI_BYTECODE_CACHE=off``: each file
compiled once per run); ``zip, cached`` is every run after the first on a
host, the cache warm.

Run: PYTHONPATH=<a tree holding ansible_collections/xen/pci> python benchmarks/bench_imports.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import zipfile

# Each module and the runner its main() imports (after installing the
# bytecode cache): what a task imports.
MODULES = {"passthrough": "_runner_passthrough", "assignable": "_runner_assignable", "info": "_runner_info",
           "domain_config": "_runner_domain_config", "plan": "_runner_plan"}
MU = "ansible_collections.xen.pci.plugins.module_utils"
FLOOR = "ansible.module_utils.basic"
# Modules the collection may add to Ansible's floor, per module (the
# stdlib ones included): a budget kept as the lazy imports are.
BUDGET = {"passthrough": 36, "assignable": 40, "info": 36, "domain_config": 14, "plan": 36}
RUNS = 5

PROBE = r"""
import sys, time
if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])
start = time.perf_counter()
%s
seconds = time.perf_counter() - start
print(len(sys.modules), round(seconds * 1000, 1))
"""


def task_imports(name):
    """The imports of a task of the module: the module, then its runner
    through the cache, as its main() does."""
    return ("import ansible_collections.xen.pci.plugins.modules.%s\nfrom %s import _bytecode\n"
            "_bytecode.install()\nimport %s.%s" % (name, MU, MU, MODULES[name]))


def probe(target, archive=None, env=None):
    counts, ms = [], []
    command = [sys.executable, "-c", PROBE % target] + ([archive] if archive else [])
    if archive:
        # One run first: the cache is warm for the runs measured.
        subprocess.run(command, capture_output=True, check=True, env=env)
    for _run in range(RUNS):
        out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        count, took = out.stdout.split()
        counts.append(int(count))
        ms.append(float(took))
    return max(counts), statistics.median(ms)


def shipped(path):
    """The collection's plugins in a zip, laid out as AnsiballZ lays them."""
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with zipfile.ZipFile(path, "w") as archive:
        for package in ("ansible_collections", "ansible_collections/xen", "ansible_collections/xen/pci"):
            archive.writestr(package + "/__init__.py", "")
        for base, _dirs, files in os.walk(os.path.join(top, "plugins")):
            if "__init__.py" not in files:
                archive.writestr("ansible_collections/xen/pci/%s/__init__.py" % os.path.relpath(base, top), "")
            for name in files:
                if name.endswith(".py"):
                    full = os.path.join(base, name)
                    archive.write(full, "ansible_collections/xen/pci/" + os.path.relpath(full, top))
    return path


def main():
    floor_count, floor_ms = probe("import " + FLOOR)
    print("%-16s %8s %9s %10s %8s" % ("module", "modules", "ms", "beyond", "budget"))
    print("%-16s %8d %9.1f %10s %8s" % ("(ansible floor)", floor_count, floor_ms, "-", "-"))
    over = []
    for name in MODULES:
        count, ms = probe(task_imports(name))
        beyond = count - floor_count
        print("%-16s %8d %9.1f %10d %8d" % (name, count, ms, beyond, BUDGET[name]))
        if beyond > BUDGET[name]:
            over.append("%s loads %d modules beyond Ansible's floor (budget %d)" % (name, beyond, BUDGET[name]))
    with tempfile.TemporaryDirectory(prefix="bench-imports-") as work:
        archive = shipped(os.path.join(work, "payload.zip"))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cold = dict(env, XEN_PCI_BYTECODE_CACHE="off")
        warm = dict(env, XEN_PCI_BYTECODE_CACHE=os.path.join(work, "cache"))
        print()
        print("as shipped (a zip)  %16s %16s %8s" % ("zip, compiled ms", "zip, cached ms", "ratio"))
        for name in MODULES:
            target = task_imports(name)
            _count, cold_ms = probe(target, archive, cold)
            _count, warm_ms = probe(target, archive, warm)
            print("%-19s %16.1f %16.1f %7.2fx" % (name, cold_ms, warm_ms, warm_ms / cold_ms))
    for line in over:
        print("OVER BUDGET: " + line)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One cycle, one wait: what attaching K devices in one request costs next
to attaching one, on the simulated host at its real-Xen timing (scale 1).

For K = 1, 2, 4, 8, each the median of RUNS requests (each on a guest of
its own, so every run starts alike), two cases:

- ``new backend``: a running PV guest without a PCI backend; the request
  creates the backend with its K devices at once;
- ``existing backend``: the guest already has one device and a connected
  backend; the request adds K devices in one Reconfiguring cycle.

Columns: the request's wall time, the part of it spent waiting for the
simulated kernels (the result's ``waited``: pciback exporting each device,
pcifront rescanning), our own part (wall minus waited), xenstore round trips
and requests. The ratios to K = 1 show what the cycle costs per device: the
kernel model's share (xen-pciback handles the devices of a cycle one after
the other, each export and its state node taking their time, as measured on
real Xen), which no toolstack can go under, and ours.

Run: PYTHONPATH=<tree with ansible_collections>:tools/xensim python benchmarks/bench_cycle.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "xensim"))

from xensim.host import SimHost  # noqa: E402
from xensim.scenario import loads  # noqa: E402

from ansible_collections.xen.pci.plugins.module_utils._host_options import host_defaults, platform_from  # noqa: E402
from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough  # noqa: E402

KS = (1, 2, 4, 8)
RUNS = int(os.environ.get("XEN_PCI_BENCH_RUNS", "5"))
CASES = ("new backend", "existing backend")


def scenario(guests, devices):
    devs = "\n".join('  - {bdf: "0000:%02x:%02x.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback}'
                     % (1 + i // 32, i % 32) for i in range(devices))
    doms = "\n".join("  - {domid: %d, name: g%03d, type: pv, state: running, pcifront: true}" % (i + 1, i)
                     for i in range(guests))
    return loads("name: cycle\ntiming: {scale: 1.0}\ndevices:\n%s\ndomains:\n%s\n" % (devs, doms))


def bdf(index):
    return "0000:%02x:%02x.0" % (1 + index // 32, index % 32)


def main():
    guests = len(CASES) * len(KS) * RUNS
    pool = max(KS) + 1
    rows = {}
    with tempfile.TemporaryDirectory(prefix="xc-", dir="/tmp") as tmp:
        host = SimHost(scenario(guests, pool), os.path.join(tmp, "h"))
        host.start()
        try:
            p = host.paths
            params = host_defaults(xenstore_path=p["xenstored"], sysfs_root=p["sysfs_root"],
                                   hypervisor="xensim:" + p["hypervisor"], userdata_dir=p["userdata_dir"],
                                   qmp_dir=p["qmp_dir"], timeout=120.0, state="present", make_assignable=False,
                                   force=False)
            absent = dict(params, state="absent")
            platform = platform_from(params)
            guest = 0
            for _run in range(RUNS):
                for case in CASES:
                    for k in KS:
                        name = "g%03d" % guest
                        guest += 1
                        first = 0
                        if case == "existing backend":
                            run_passthrough(params, {name: [bdf(0)]}, platform=platform)
                            first = 1
                        devices = [bdf(first + i) for i in range(k)]
                        stats = platform.xs.stats
                        rt0, rq0 = stats.round_trips, stats.requests
                        start = time.monotonic()
                        result = run_passthrough(params, {name: devices}, platform=platform)
                        seconds = time.monotonic() - start
                        attached = sorted(d["bdf"] for d in result["domains"][name]["devices"])
                        if attached != sorted(devices + [bdf(0)] * first):
                            raise SystemExit("%s: attached %s, not %s" % (name, attached, devices))
                        rows.setdefault((case, k), []).append(
                            (seconds, result.get("waited", 0.0), stats.round_trips - rt0, stats.requests - rq0))
                        # Give the devices back for the next run (not measured).
                        run_passthrough(absent, {name: attached}, platform=platform)
        finally:
            host.stop()

    header = ("case", "K", "wall s", "waited s", "own s", "trips", "requests", "wall/K=1", "kernel/K=1", "own/K=1")
    print("%-17s %3s %9s %9s %9s %7s %9s %10s %10s %10s" % header)
    for case in CASES:
        base = None
        for k in KS:
            runs = rows[(case, k)]
            wall = statistics.median(r[0] for r in runs)
            waited = statistics.median(r[1] for r in runs)
            own = statistics.median(r[0] - r[1] for r in runs)
            trips = statistics.median(r[2] for r in runs)
            requests = statistics.median(r[3] for r in runs)
            if base is None:
                base = (wall, waited, own)
            print("%-17s %3d %9.3f %9.3f %9.3f %7d %9d %9.2fx %9.2fx %9.2fx" % (
                case, k, wall, waited, own, trips, requests, wall / base[0], waited / base[1], own / base[2]))
    print("\nmedian of %d requests each, on the simulator at timing scale 1 (its kernels at real Xen's speed);"
          " kernel/K=1 is the floor no toolstack goes under: the simulated kernels' own work" % RUNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())

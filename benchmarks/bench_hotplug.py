# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cost of the hotplug core, measured on the simulated host, against xl.

What is measured here is what does not depend on the machine: xenstore
round trips and requests per operation (from our client's counters), plus
the wall time on xensim. The xl column is what real Xen 4.17 under QEMU took
on this machine kind (the real-Xen layer, tests/xenvm):
an xl command is one process that reads what it needs key by key, and the
estimate for ours on that host is round trips x 2.9 ms (one pyxs round trip
measured in dom0 there) plus the guest's own reaction, which the simulator
models at its real speed only with timing scale 1.

Run: PYTHONPATH=<tree with ansible_collections>:tools/xensim python benchmarks/bench_hotplug.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "xensim"))

from xensim.host import SimHost  # noqa: E402
from xensim.scenario import loads  # noqa: E402

from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline  # noqa: E402
from ansible_collections.xen.pci.plugins.module_utils._host_options import host_defaults, platform_from  # noqa: E402
from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough  # noqa: E402
from ansible_collections.xen.pci.plugins.module_utils._state import read_host  # noqa: E402

RT_MS = 2.9           # one pyxs round trip in dom0 on real Xen under QEMU TCG here (measured)
XL = {                # real Xen 4.17 under QEMU TCG on this machine kind (tests/xenvm measurements)
    "attach 1 device": 0.40,       # xl pci-attach 0.3-0.5 s
    "attach 3 devices": 3 * 0.40,  # three xl pci-attach, one cycle each
    "detach 1 device": 0.60,       # xl pci-detach 0.4-0.8 s
    "read one domain": 0.185,      # xl pci-list
    "read 20 domains": 20 * 0.185,  # xl pci-list per domain
}


def scenario(n_domains, n_devices):
    devs = "\n".join('  - {bdf: "0000:01:%02x.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback}' % i
                     for i in range(n_devices))
    doms = "\n".join("  - {domid: %d, name: g%02d, type: pv, state: running, pcifront: true}" % (i + 1, i)
                     for i in range(n_domains))
    return loads("name: bench\ntiming: {scale: 1.0}\ndevices:\n%s\ndomains:\n%s\n" % (devs, doms))


def params_of(host, **extra):
    p = host.paths
    params = host_defaults(xenstore_path=p["xenstored"], sysfs_root=p["sysfs_root"], hypervisor="xensim:" + p["hypervisor"],
                           userdata_dir=p["userdata_dir"], qmp_dir=p["qmp_dir"], timeout=120.0, state="present",
                           make_assignable=False, force=False)
    params.update(extra)
    return params


def measure(fn, platform):
    rt0, rq0, w0 = platform.xs.stats.round_trips, platform.xs.stats.requests, platform.xs.stats.writes
    start = time.monotonic()
    fn()
    return {"seconds": time.monotonic() - start, "round_trips": platform.xs.stats.round_trips - rt0,
            "requests": platform.xs.stats.requests - rq0, "writes": platform.xs.stats.writes - w0}


def main():
    rows = []
    with tempfile.TemporaryDirectory(prefix="xb-", dir="/tmp") as tmp:
        host = SimHost(scenario(20, 24), os.path.join(tmp, "h"))
        host.start()
        try:
            present = params_of(host)
            platform = platform_from(present)

            def attach(*bdfs):
                return lambda: run_passthrough(present, {"g00": list(bdfs)}, platform=platform)
            rows.append(("attach 1 device", measure(attach("0000:01:00.0"), platform)))
            rows.append(("attach 3 devices", measure(attach("0000:01:01.0", "0000:01:02.0", "0000:01:03.0"), platform)))
            rows.append(("detach 1 device", measure(lambda: run_passthrough(dict(present, state="absent"), {"g00": ["0000:01:02.0"]},
                                                                            platform=platform), platform)))
            rows.append(("read one domain", measure(lambda: read_host(platform.xs, Deadline(10), domids=[1]), platform)))
            rows.append(("read 20 domains", measure(lambda: read_host(platform.xs, Deadline(10)), platform)))
            params = params_of(host, state="exact")
            assignments = {"g%02d" % i: ["0000:01:%02x.0" % (i + 4)] for i in range(1, 20)}
            assignments["g00"] = ["0000:01:00.0", "0000:01:01.0", "0000:01:03.0"]
            run_passthrough(params, assignments)
            noop = platform_from(params)
            rows.append(("no-op rerun, 20 domains", measure(lambda: run_passthrough(params, assignments, platform=noop), noop)))
        finally:
            host.stop()

    print("%-26s %7s %9s %7s %10s %12s %8s" % ("operation", "trips", "requests", "writes", "sim s", "est. real s", "xl s"))
    for name, m in rows:
        est = m["round_trips"] * RT_MS / 1000.0
        xl = XL.get(name)
        print("%-26s %7d %9d %7d %10.3f %12.3f %8s" % (name, m["round_trips"], m["requests"], m["writes"], m["seconds"], est,
                                                       "%.3f" % xl if xl else "-"))
    print("\nest. real s = round trips x %.1f ms: the latency floor of the xenstore traffic on real Xen, not counting"
          " xenstored's time per pipelined request or the guest's reaction; xl s: measured on real Xen under QEMU." % RT_MS)
    return 0


if __name__ == "__main__":
    sys.exit(main())

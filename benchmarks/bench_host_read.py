# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How reading a host scales: 10, 50, 200 and 500 guests (4 devices each by
default), on simulated hosts.

For each size, the xenstore round trips, requests and wall time of
``read_host`` (the whole host), ``xen.pci.info`` (full and summary detail,
with the sysfs file operations it makes) and a no-op ``xen.pci.passthrough``
of one guest. Round trips must not grow with the host (listings over 4096
bytes are read in parts, still a bounded number of round trips); requests
grow with what there is to read.

Run: PYTHONPATH=<a tree holding ansible_collections/xen/pci>:tools/xensim python benchmarks/bench_host_read.py [SIZES...]
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

from ansible_collections.xen.pci.plugins.module_utils import _sysfs  # noqa: E402
from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline  # noqa: E402
from ansible_collections.xen.pci.plugins.module_utils._host_options import host_defaults, platform_from  # noqa: E402
from ansible_collections.xen.pci.plugins.module_utils._runner_info import run_info  # noqa: E402
from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough  # noqa: E402
from ansible_collections.xen.pci.plugins.module_utils._state import read_host  # noqa: E402

PER_GUEST = int(os.environ.get("XEN_PCI_BENCH_DEVICES", "4"))


def bdf(i):
    return "0000:%02x:%02x.%d" % (1 + i // 256, (i // 8) % 32, i % 8)


def scenario(guests, per_guest):
    devices = "\n".join('  - {bdf: "%s", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback}' % bdf(i)
                        for i in range(guests * per_guest))
    domains = "\n".join('  - {domid: %d, name: g%03d, type: pv, state: running, pcifront: true, devices: [%s]}' % (
        g + 1, g, ", ".join('"%s"' % bdf(g * per_guest + k) for k in range(per_guest))) for g in range(guests))
    return loads("name: scale\ntiming: {scale: 0.0}\ndevices:\n%s\ndomains:\n%s\n" % (devices, domains))


class FileOps:
    """Counts the sysfs file operations of the core (opens, listings, links)."""

    def __init__(self):
        self.count = 0
        self._saved = []

    def __enter__(self):
        for name in ("open", "listdir", "readlink", "scandir"):
            target = __builtins__ if name == "open" else os
            original = getattr(target, name) if name != "open" else open
            self._saved.append((target, name, original))

            def counted(*args, _original=original, **kwargs):
                self.count += 1
                return _original(*args, **kwargs)
            if name == "open":
                _sysfs.open = counted      # the module's global lookup of open
            else:
                setattr(_sysfs.os, name, counted)
        return self

    def __exit__(self, *exc):
        for target, name, original in self._saved:
            if name == "open":
                del _sysfs.open
            else:
                setattr(_sysfs.os, name, original)


def measure(fn, platform):
    stats = platform.xs.stats
    rt0, rq0 = stats.round_trips, stats.requests
    with FileOps() as ops:
        start = time.monotonic()
        fn()
        seconds = time.monotonic() - start
    return {"round_trips": stats.round_trips - rt0, "requests": stats.requests - rq0, "seconds": seconds,
            "files": ops.count}


def main(argv):
    sizes = [int(a) for a in argv] or [10, 50, 200, 500]
    # Each row as soon as it is measured: a size the machine cannot hold
    # still leaves the smaller ones on record.
    print("%7s  %-18s %6s %9s %9s %9s" % ("guests", "operation", "trips", "requests", "files", "seconds"), flush=True)
    for guests in sizes:
        with tempfile.TemporaryDirectory(prefix="hr-", dir="/tmp") as tmp:
            started = time.monotonic()
            host = SimHost(scenario(guests, PER_GUEST), os.path.join(tmp, "h"))
            host.start(timeout=600)
            try:
                host.settle(timeout=300)
                setup = time.monotonic() - started
                p = host.paths
                params = host_defaults(xenstore_path=p["xenstored"], sysfs_root=p["sysfs_root"],
                                       hypervisor="xensim:" + p["hypervisor"], userdata_dir=p["userdata_dir"],
                                       qmp_dir=p["qmp_dir"], timeout=600.0, state="present", make_assignable=False,
                                       force=False)
                platform = platform_from(params)
                declared = {"g000": [bdf(k) for k in range(PER_GUEST)]}
                for name, fn in (("read_host", lambda: read_host(platform.xs, Deadline(300))),
                                 ("info (full)", lambda: run_info(params, platform=platform)),
                                 ("info (summary)", lambda: run_info(dict(params, detail="summary"), platform=platform)),
                                 ("no-op passthrough", lambda: run_passthrough(params, declared, platform=platform))):
                    m = measure(fn, platform)
                    row = (guests, name, m["round_trips"], m["requests"], m["files"], m["seconds"])
                    print("%7d  %-18s %6d %9d %9d %9.3f" % row, flush=True)
                platform.close()
            finally:
                host.stop()
        print("# %d guests x %d devices: simulated host ready in %.0f s" % (guests, PER_GUEST, setup), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

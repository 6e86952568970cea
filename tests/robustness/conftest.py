# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The robustness layer: the request engine under faults, kills and races,
against simulated hosts (tools/xensim).

``make robustness`` runs it with the collection and the simulator on
PYTHONPATH. What every test here checks, one way or another, is the
promise of the engine: a request is bounded, fails with an error that
names the domain, the device and the step, leaves the host as it was or
names what it left, and a rerun without the fault converges.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
XENSIM = os.path.join(os.path.dirname(os.path.dirname(HERE)), "tools", "xensim")
if XENSIM not in sys.path:
    sys.path.insert(0, XENSIM)

try:
    from ansible_collections.xen.pci.plugins.module_utils._host_options import host_defaults  # noqa: E402
except ImportError as exc:     # a broken setup must fail, not skip
    raise ImportError("the collection must be importable as ansible_collections.xen.pci (make robustness sets "
                      "PYTHONPATH): %s" % exc) from exc

from xensim import scenario as xensim_scenario  # noqa: E402  pylint: disable=import-error,wrong-import-position
from xensim.host import SimHost  # noqa: E402  pylint: disable=import-error,wrong-import-position

# Allowed overrun of a request beyond its timeout: the read-back's grace and
# a loaded 2-core machine's scheduling.
MARGIN = 4.0
# Nodes the guest's pcifront writes itself: new ones after a rebuild, none
# while a fault hangs it.
ALLOCATED = ("pci-op-ref", "event-channel", "magic")
# The journals' directory stays once made (a namespace, like /libxl/pci);
# the journals in it are compared.
JOURNAL_PARENTS = ("/tool/xen-pci/journal", "/tool/xen-pci")


@pytest.fixture
def sim():
    """``sim(yaml)``: a started simulated host (short socket paths), stopped at the end."""
    hosts, dirs = [], []

    def start(text, **kwargs):
        state = tempfile.mkdtemp(prefix="xr-", dir="/tmp")
        dirs.append(state)
        host = SimHost(xensim_scenario.loads(textwrap.dedent(text)), state, **kwargs)
        host.start()
        hosts.append(host)
        return host

    yield start
    for host in reversed(hosts):
        host.stop()
    for state in dirs:
        shutil.rmtree(state, ignore_errors=True)


def params_for(host, **extra):
    p = host_defaults(xenstore_path=host.paths["xenstored"], sysfs_root=host.paths["sysfs_root"],
                      hypervisor="xensim:" + host.paths["hypervisor"], userdata_dir=host.paths["userdata_dir"],
                      qmp_dir=host.paths["qmp_dir"], timeout=20.0)
    p.update(state="present", make_assignable=False, force=False, rebind=True, names="keep")
    p.update(extra)
    return p


def settle(host, seconds=0.3):
    """Let the simulated kernels finish what they were doing."""
    time.sleep(seconds)
    host.settle()


def snapshot(host, domids=None):
    """What a request may change, comparable before/after: the PCI
    backends, frontends and libxl bookkeeping in xenstore (values and
    permissions), our journals, every device's driver and pciback slot,
    Xen's device owners and each domain's grants, and QEMU's devices."""
    tree = {}
    domids = sorted(host.domain_states) if domids is None else domids
    prefixes = ["/local/domain/0/backend/pci", "/libxl/pci", "/tool/xen-pci/journal"]
    prefixes += ["/local/domain/%d/device/pci" % d for d in domids]
    prefixes += ["/local/domain/0/error/backend/pci/%d" % d for d in domids]
    for prefix in prefixes:
        for path, value, perms in host.call(host.store.dump, prefix):
            if path.rsplit("/", 1)[-1] in ALLOCATED or path in JOURNAL_PARENTS:
                continue
            tree[path] = (value.decode(errors="replace"), ",".join(perms))
    devices = {}
    for dev in host.scenario.devices:
        devices[dev.bdf] = {"driver": host.sysfs.driver_of(dev.bdf), "in_use_by": host.sysfs.in_use_by(dev.bdf),
                            "owner": host.hypervisor.owner(dev.bdf)}
    slots = sorted(host.sysfs.slots())
    grants = {d: host.hypervisor.permissions(d) for d in sorted(host.hypervisor.domains) if d != 0}
    qemu = {}
    for domid in domids:
        try:
            qemu[domid] = sorted(d["id"] for d in host.qemu.devices(domid))
        except Exception:      # pylint: disable=broad-except  # no QEMU for this domain
            continue
    return {"xenstore": tree, "devices": devices, "slots": slots, "grants": grants, "qemu": qemu}


def differences(before, after):
    """Paths and facts that differ between two snapshots, readable."""
    out = []
    for path in sorted(set(before["xenstore"]) | set(after["xenstore"])):
        if before["xenstore"].get(path) != after["xenstore"].get(path):
            out.append(path)
    for bdf in sorted(before["devices"]):
        if before["devices"][bdf] != after["devices"].get(bdf):
            out.append("device %s: %s -> %s" % (bdf, before["devices"][bdf], after["devices"].get(bdf)))
    if before["slots"] != after["slots"]:
        out.append("pciback slots %s -> %s" % (before["slots"], after["slots"]))
    if before["grants"] != after["grants"]:
        out.append("grants %s -> %s" % (before["grants"], after["grants"]))
    if before["qemu"] != after["qemu"]:
        out.append("qemu %s -> %s" % (before["qemu"], after["qemu"]))
    return out


def bookkeeping_consistent(host):
    """libxl's bookkeeping agrees with the backends: every device a backend
    lists is claimed by that guest (a stub domain's by its guest), and
    every claim is of a device some backend lists."""
    problems = []
    listed = {}
    targets = {d.domid: d.target for d in host.scenario.domains}
    root = "/local/domain/0/backend/pci"
    for domid in host.call(host.store.ls, root) or []:
        base = "%s/%s/0" % (root, domid)
        num = host.read(base + "/num_devs")
        for i in range(int(num or 0)):
            bdf = host.read("%s/dev-%d" % (base, i))
            owner = targets.get(int(domid)) or int(domid)
            if bdf in listed:
                problems.append("%s is listed by the backends of %s and %s" % (bdf, listed[bdf], owner))
            listed[bdf] = owner
    for key in host.call(host.store.ls, "/libxl/pci") or []:
        claim = host.read("/libxl/pci/%s/domid" % key)
        if claim is None:
            continue
        bdf = "%s:%s:%s.%s" % tuple(key.split("-"))
        if listed.get(bdf) != int(claim):
            problems.append("%s is claimed by domid %s but listed by %s" % (bdf, claim, listed.get(bdf)))
    for bdf, owner in listed.items():
        claim = host.read("/libxl/pci/%s/domid" % bdf.replace(":", "-").replace(".", "-"))
        if claim != str(owner):
            problems.append("%s is listed by domid %s but claimed by %s" % (bdf, owner, claim))
    return problems

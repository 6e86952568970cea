# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""From a guest's plan to its steps, for every kind of guest.

Attach (libxl's order, with the claim first so that a request losing a race
for a device stops before touching it):

    claim -> [seize] -> grant guest [-> grant stub domain] -> backend append [-> device_add]

    PV guest          its own backend (the 73ee2795aaef wait rule decides the wait)
    HVM, dom0 QEMU    libxl's bookkeeping backend, then device_add to QEMU
    HVM, stub domain  the stub domain's backend (a running PV domain: the same
                      rule), then device_add to the QEMU inside it

Detach, the reverse:

    [device_del] -> backend remove [-> restore the others] -> backend drop -> revoke -> reset -> release the claim
"""

from __future__ import annotations

from ansible_collections.xen.pci.plugins.module_utils._bdf import Bdf
from ansible_collections.xen.pci.plugins.module_utils._steps_backend import (
    BOOKKEEPING, GUEST, STUBDOM, AppendToBackend, DropFromBackend, RemoveFromBackend, RestoreBackend)
from ansible_collections.xen.pci.plugins.module_utils._steps_device import Claim, Grant, Reset, Revoke, Seize, Unclaim

PCIBACK = "pciback"


def stub_of(host, dom):
    return host.domains.get(dom.stubdom_id) if dom.stubdom_id is not None else None


def _backend_target(host, dom):
    """Whose backend carries the guest's devices, and in which role."""
    if dom.type != "hvm":
        return dom, GUEST
    stub = stub_of(host, dom)
    return (stub, STUBDOM) if stub is not None else (dom, BOOKKEEPING)


def _devices(target):
    """The devices of a domain's own backend, as read."""
    return target.backend.devices if target.backend is not None else []


def _backend(target, role):
    return dict(domid=target.domid, name=target.name, label=target.label(), role=role)


def detach_steps(host, dom, bdfs, force, stray=()):
    """Steps that take ``bdfs`` (and QEMU-only ``stray`` ids) from ``dom``."""
    steps = []
    label = dom.label()
    if dom.type == "hvm" and (bdfs or stray):
        from ansible_collections.xen.pci.plugins.module_utils._steps_qmp import QmpRemove  # pylint: disable=import-outside-toplevel
        steps.append(QmpRemove(domid=dom.domid, uuid=dom.uuid, label=label, bdfs=list(bdfs) + [str(Bdf.from_qmp_id(q)) for q in stray],
                               force=force))
    if not bdfs:
        return steps
    target, _role = _backend_target(host, dom)
    where = dict(domid=target.domid, name=target.name, label=target.label())
    keep = [d.function().to_dict() for d in _devices(target) if d.bdf not in set(bdfs)]
    steps.append(RemoveFromBackend(bdfs=list(bdfs), force=force, **where))
    steps.append(RestoreBackend(keep=keep, **where))
    steps.append(DropFromBackend(bdfs=list(bdfs), **where))
    steps.append(Revoke(domid=dom.domid, label=label, bdfs=list(bdfs), deassign=True))
    stub = stub_of(host, dom) if dom.type == "hvm" else None
    if stub is not None:
        steps.append(Revoke(domid=stub.domid, label=stub.label(), bdfs=list(bdfs), deassign=False))
    steps.append(Reset(bdfs=list(bdfs)))
    steps.append(Unclaim(domid=dom.domid, label=label, bdfs=list(bdfs)))
    return steps


def attach_steps(host, dom, funcs, platform, make_assignable):
    """Steps that give ``funcs`` (PciFunction list) to ``dom``."""
    if not funcs:
        return []
    label = dom.label()
    bdfs = [str(f.bdf) for f in funcs]
    sysfs = platform.sysfs
    drivers = {b: sysfs.driver_name(b) for b in bdfs} if sysfs is not None else {}
    seize = [f for f in funcs if sysfs is not None and drivers[str(f.bdf)] != PCIBACK
             and (f.seize or (make_assignable and drivers[str(f.bdf)] is None))]
    steps = [Claim(domid=dom.domid, label=label, bdfs=bdfs,
                   pciback=[b for b in bdfs if sysfs is not None and b not in {str(f.bdf) for f in seize}])]
    for func in seize:
        bdf = str(func.bdf)
        steps.append(Seize(bdf=bdf, driver=drivers[bdf], driver_path=sysfs.driver_path(bdf), domid=dom.domid, label=label))
    devices = [{"bdf": str(f.bdf), "permissive": f.permissive, "rdm_policy": f.rdm_policy} for f in funcs]
    steps.append(Grant(domid=dom.domid, label=label, devices=devices, assign=True))
    target, role = _backend_target(host, dom)
    if role == STUBDOM:
        steps.append(Grant(domid=target.domid, label=target.label(), devices=devices, assign=False))
    functions = [f.to_dict() for f in funcs]
    before = [d.function().to_dict() for d in _devices(target)]
    steps.append(AppendToBackend(functions=functions, before=before, **_backend(target, role)))
    if dom.type == "hvm":
        # Only a HVM guest needs the QMP client.
        from ansible_collections.xen.pci.plugins.module_utils._steps_qmp import (  # pylint: disable=import-outside-toplevel
            DEVICE_ADD_TRIES, QmpAdd, RecordSlots)
        steps.append(QmpAdd(domid=dom.domid, uuid=dom.uuid, label=label, functions=functions,
                            tries=DEVICE_ADD_TRIES if role == STUBDOM else 1))
        unplaced = [f["bdf"] for f in functions if not f.get("vdevfn")]
        if role != STUBDOM and unplaced:
            # A stub domain's backend is its own PV one: its slots are not the guest's.
            steps.append(RecordSlots(domid=dom.domid, uuid=dom.uuid, label=label, bdfs=unplaced))
    return steps

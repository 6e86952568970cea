# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PCI hotplug into HVM guests: QMP to QEMU in dom0 or in a stub domain.

Dom0 QEMU: grants and assignment for the guest, libxl's bookkeeping backend
for the guest (pciback exports, no frontend), then ``device_add`` of
``xen-pci-passthrough`` and the slot QEMU chose, read back with query-pci.

QEMU in a stub domain (PROTOCOL.md section 7): the stubdom is a running PV
domain, even while its guest is being created, so the device is first
hot-plugged into it with the PV rules (no wait when it has no backend yet:
the Xen 4.15.0-4.16.0 coldplug failure), its backend must reach Connected
(60 s), then ``device_add`` goes to the QEMU inside it, retried while the
stubdom's sysfs lags behind. The guest's devices are those of its stubdom's
backend, so they are listed and detached by the guest's own name or id.

Chosen for a device model that is not running yet (being started): refuse,
saying so; the guest's config (``pci = [...]``) is the way to have devices
at creation, and a retry after the model is up succeeds.
"""

from __future__ import annotations

import time

from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline
from ansible_collections.xen.pci.plugins.module_utils._errors import DeadlineExceeded, DomainError, HotplugError, QmpError, XenPciError
from ansible_collections.xen.pci.plugins.module_utils._hotplug_pv import CONNECTED, PvHotplug, backend_keys
from ansible_collections.xen.pci.plugins.module_utils._qmp import QmpSession, pt_qdev_id
from ansible_collections.xen.pci.plugins.module_utils._state import read_backend
from ansible_collections.xen.pci.plugins.module_utils._xenstore import Changes

STUBDOM_CONNECT_WAIT = 60.0       # libxl: the stubdom's backend within 60 s
DEVICE_ADD_TRIES = 10             # libxl: 10 tries, 1 s apart (Qubes issue 6203)
DEVICE_ADD_PAUSE = 1.0
UNPLUG_WAIT = 10.0                # libxl polls query-pci for 10 s


class HvmHotplug:
    """Attach/detach for one HVM guest (``dom``: a DomainState)."""

    def __init__(self, platform, dom, stub, report, qmp_dir="/var/run/xen"):
        self.platform = platform
        self.xs = platform.xs
        self.dom = dom
        self.stub = stub           # DomainState of the stub domain, or None
        self.report = report
        self.qmp_dir = qmp_dir

    def check(self):
        """Everything that must hold before any write (raises otherwise)."""
        dom = self.dom
        if dom.dm_version not in (None, "qemu_xen"):
            raise DomainError("%s uses device model %s; only qemu_xen (QEMU upstream) takes hotplugged PCI devices" % (
                dom.label(), dom.dm_version), domain=dom.domid)
        if dom.dm_state != "running":
            raise HotplugError("the device model of %s is %s, not running: hotplug needs a running QEMU "
                               "(devices for a guest being created belong in its config's pci = [...])" % (
                                   dom.label(), dom.dm_state or "absent"), domain=dom.domid, dm_state=dom.dm_state)
        if dom.stubdom_id is not None and self.stub is None:
            raise DomainError("%s has stub domain %d, which does not exist" % (dom.label(), dom.stubdom_id), domain=dom.domid)

    def open_qmp(self, deadline):
        """QMP session under libxl's lock; a missing socket or dead QEMU fails here, before any write."""
        return QmpSession.open(self.dom.domid, self.dom.uuid, deadline, qmp_dir=self.qmp_dir, userdata_dir=self.platform.userdata_dir,
                               label=self.dom.label(), command_timeout=min(10.0, max(deadline.remaining(), 0.1)))

    # -- attach --------------------------------------------------------------

    def attach(self, funcs, deadline, undo):
        bdfs = [str(f.bdf) for f in funcs]
        qmp = self.open_qmp(deadline)
        try:
            qmp.query_status(deadline=deadline.sub(5.0))
            if self.stub is not None:
                self._into_stubdom(funcs, deadline, undo)
            else:
                self._bookkeeping_backend(funcs, deadline)
                undo.append(("hvm-backend", bdfs))
            added = []
            undo.append(("qmp-del", (qmp, added)))
            for func in funcs:
                self._device_add(qmp, func, deadline)
                added.append(pt_qdev_id(str(func.bdf)))
            placed = {d.qdev_id: d for d in qmp.query_pci(deadline=deadline.sub(10.0))}
            for func in funcs:
                dev = placed.get(pt_qdev_id(str(func.bdf)))
                if dev is None:
                    raise HotplugError("QEMU of %s accepted %s but query-pci does not list it" % (self.dom.label(), func.bdf),
                                       domain=self.dom.domid, device=str(func.bdf))
                self.report.devices[str(func.bdf)] = {"qdev_id": dev.qdev_id, "vslot": dev.slot, "vfunc": dev.function,
                                                      "vdev": "%02x:%02x.%x" % (dev.bus, dev.slot, dev.function)}
            self.report.step("QEMU of %s took %s at %s" % (self.dom.label(), ", ".join(bdfs), ", ".join(
                self.report.devices[b]["vdev"] for b in bdfs)))
        finally:
            qmp.close()

    def _into_stubdom(self, funcs, deadline, undo):
        stub = self.stub
        pv = PvHotplug(self.xs, stub.domid, stub.name, self.report)
        current = pv.prepare(deadline, [str(f.bdf) for f in funcs])
        before = current.devices if current else []
        undo.append(("stubdom-pv", (pv, before, [str(f.bdf) for f in funcs])))
        pv.attach(funcs, deadline, running=True, prepared=True, current=current)
        # QEMU in the stubdom sees the device only once its pcifront is connected.
        sub = deadline.sub(STUBDOM_CONNECT_WAIT, "stub domain backend")
        paths = [pv.be + "/state", pv.fe + "/state"]

        def connected(values):
            both = values[pv.be + "/state"] == str(CONNECTED) and values[pv.fe + "/state"] == str(CONNECTED)
            return True if both else None
        try:
            self.xs.wait_until(paths, connected, sub, "waiting for the PCI backend of stub domain %s" % stub.label())
        except DeadlineExceeded as exc:
            raise HotplugError("the PCI backend of stub domain %s did not reach Connected within %.0f s (saw %s)" % (
                stub.label(), sub.seconds, exc.details.get("seen")), domain=self.dom.domid, stubdom=stub.domid) from None

    def _bookkeeping_backend(self, funcs, deadline):
        """What libxl writes for a HVM guest with dom0 QEMU: a backend pciback
        exports to, with no frontend; appended without a Reconfiguring cycle
        (nobody would answer it: libxl's state=7 there stays 7 for ever)."""
        pv = PvHotplug(self.xs, self.dom.domid, self.dom.name, self.report)

        def body(tx):
            num = self.xs.read(pv.be + "/num_devs", tx=tx)
            changes = Changes()
            if num is None:
                pv.create_backend(changes)
                num = 0
            num = int(num)
            for i, func in enumerate(funcs):
                for key, value in backend_keys(func, num + i):
                    changes.write("%s/%s" % (pv.be, key), value)
            changes.write(pv.be + "/num_devs", str(num + len(funcs)))
            self.xs.apply(changes, tx=tx)
        self.xs.transaction(body, deadline)

    def _device_add(self, qmp, func, deadline):
        tries = DEVICE_ADD_TRIES if self.stub is not None else 1
        for attempt in range(1, tries + 1):
            try:
                qmp.device_add_passthrough(str(func.bdf), vslot=func.vslot, vfunc=func.vfunc if func.vslot else 0,
                                           permissive=func.permissive, deadline=deadline.sub(10.0))
                if attempt > 1:
                    self.report.step("device_add of %s into %s succeeded at try %d" % (func.bdf, self.dom.label(), attempt))
                return
            except QmpError as exc:
                last = exc
                if attempt == tries or deadline.remaining() < DEVICE_ADD_PAUSE:
                    break
                # The stubdom's sysfs can lag behind its Connected backend.
                time.sleep(DEVICE_ADD_PAUSE)
        raise HotplugError("QEMU of %s refused %s after %d tries: %s" % (self.dom.label(), func.bdf, attempt, last.desc or last.msg),
                           domain=self.dom.domid, device=str(func.bdf), error_class=last.error_class, desc=last.desc)

    def undo(self, kind, arg):
        if kind == "qmp-del":
            qmp, added = arg
            if added:
                qmp2 = self.open_qmp(Deadline(UNPLUG_WAIT + 5, "undo"))
                try:
                    for qdev in reversed(added):
                        qmp2.remove_device(qdev, Deadline(UNPLUG_WAIT, "undo"))
                finally:
                    qmp2.close()
        elif kind == "stubdom-pv":
            pv, before, bdfs = arg
            pv.detach(bdfs, Deadline(30.0, "undo"), force=True)
            self.report.step("undid the attach of %s to stub domain %s; it keeps %s" % (
                ", ".join(bdfs), pv.label(), ", ".join(d.bdf for d in before) or "no other devices"))
        elif kind == "hvm-backend":
            self._drop_bookkeeping(arg, Deadline(10.0, "undo"))

    # -- detach --------------------------------------------------------------

    def detach(self, bdfs, deadline, force=False):
        """QEMU first, then the stub domain's PV backend (or our bookkeeping)."""
        qmp = None
        try:
            qmp = self.open_qmp(deadline)
        except XenPciError as exc:
            if not force:
                raise
            self.report.warnings.append("forced: no QMP session with %s (%s)" % (self.dom.label(), exc.msg))
        if qmp is not None:
            try:
                for bdf in bdfs:
                    qdev = pt_qdev_id(bdf)
                    try:
                        how = qmp.remove_device(qdev, deadline.sub(UNPLUG_WAIT))
                        self.report.step("QEMU of %s released %s (%s)" % (self.dom.label(), bdf, how))
                    except (DeadlineExceeded, QmpError) as exc:
                        if not force:
                            raise HotplugError("%s did not release %s: %s; use force to detach anyway" % (
                                self.dom.label(), bdf, exc.msg), domain=self.dom.domid, device=bdf) from None
                        self.report.warnings.append("forced: %s" % exc.msg)
            finally:
                qmp.close()
        if self.stub is not None:
            pv = PvHotplug(self.xs, self.stub.domid, self.stub.name, self.report)
            pv.detach(bdfs, deadline, force=force)
        else:
            self._drop_bookkeeping(bdfs, deadline)

    def _drop_bookkeeping(self, bdfs, deadline):
        pv = PvHotplug(self.xs, self.dom.domid, self.dom.name, self.report)
        current = read_backend(self.xs, self.dom.domid, deadline)
        if current is None:
            return
        keep = [d for d in current.devices if d.bdf not in set(bdfs)]
        if not keep:
            pv.teardown(deadline)
        else:
            self.xs.transaction(lambda tx: pv.renumber(tx, keep), deadline)


def stub_of(host, dom):
    return host.domains.get(dom.stubdom_id) if dom.stubdom_id is not None else None

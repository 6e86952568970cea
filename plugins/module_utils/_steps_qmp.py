# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Steps on a HVM guest's QEMU, over QMP (in dom0 or in a stub domain).

``query-pci`` decides what is true: after a ``device_add`` that failed or
came back too late, the undo looks for our id and removes it
(``device_del``); a ``device_add`` refused because QEMU already has our id
(a late one from an earlier run) adopts that device instead of failing.
"""

from __future__ import annotations

import time

from ansible_collections.xen.pci.plugins.module_utils._bdf import Bdf, PciFunction
from ansible_collections.xen.pci.plugins.module_utils._engine import Step, register
from ansible_collections.xen.pci.plugins.module_utils._errors import (
    DeadlineExceeded, HotplugError, QmpConnectionError, QmpError, XenPciError)
from ansible_collections.xen.pci.plugins.module_utils._qmp import DEFAULT_TIMEOUT, QmpSession
from ansible_collections.xen.pci.plugins.module_utils._state import backend_path, read_backend
from ansible_collections.xen.pci.plugins.module_utils._xenstore import Changes

DEVICE_ADD_TRIES = 10             # libxl, with a stub domain: 10 tries, 1 s apart (Qubes issue 6203)
DEVICE_ADD_PAUSE = 1.0
UNPLUG_WAIT = 10.0                # libxl polls query-pci for 10 s
PT_PREFIX = "pci-pt-"


def open_session(ctx, data, deadline=None):
    return QmpSession.open(data["domid"], data["uuid"], deadline or ctx.deadline, qmp_dir=ctx.platform.qmp_dir,
                           userdata_dir=ctx.platform.userdata_dir, label=data["label"])


def _command(ctx):
    return ctx.deadline.sub(DEFAULT_TIMEOUT, "QMP command")


def qemu_devices(platform, domid, uuid, label, deadline):
    """Every PCI device QEMU shows the guest now (query-pci)."""
    with QmpSession.open(domid, uuid, deadline, qmp_dir=platform.qmp_dir, userdata_dir=platform.userdata_dir,
                         label=label) as qmp:
        return qmp.query_pci(deadline=deadline)


@register
class QmpAdd(Step):
    """``device_add`` of xen-pci-passthrough for each function, read back
    with ``query-pci``. data: domid, uuid, label, functions, tries."""

    kind = "qmp-add"

    def describe(self):
        return "device_add %s to the QEMU of %s" % (", ".join(f["bdf"] for f in self.data["functions"]), self.data["label"])

    def touches(self):
        return ["QEMU device %s of %s" % (Bdf.parse(f["bdf"]).qmp_id, self.data["label"]) for f in self.data["functions"]]

    def do(self, ctx):
        with open_session(ctx, self.data) as qmp:
            for data in self.data["functions"]:
                func = PciFunction.from_dict(data)
                self._add(ctx, qmp, func)
                ctx.checkpoint("added-%s" % func.bdf)

    def _add(self, ctx, qmp, func):
        tries = self.data.get("tries", 1)
        last = None
        for attempt in range(1, tries + 1):
            try:
                qmp.device_add_passthrough(func.bdf, vslot=func.vslot, vfunc=func.vfunc if func.vslot else 0,
                                           permissive=func.permissive, deadline=_command(ctx))
                if attempt > 1:
                    ctx.report.step("device_add of %s into %s succeeded at try %d" % (func.bdf, self.data["label"], attempt))
                return
            except QmpError as exc:
                if getattr(exc, "is_duplicate_id", False) and qmp.find_device(func.bdf.qmp_id, deadline=_command(ctx)) is not None:
                    # Added by an earlier request that gave up on it: ours, keep it.
                    ctx.report.step("QEMU of %s already had %s (%s): adopted" % (self.data["label"], func.bdf, func.bdf.qmp_id))
                    self.result.setdefault("adopted", []).append(str(func.bdf))
                    return
                last = exc
                if attempt == tries or ctx.deadline.remaining() < DEVICE_ADD_PAUSE:
                    break
                # The stub domain's sysfs can lag behind its Connected backend.
                time.sleep(DEVICE_ADD_PAUSE)
        raise HotplugError("QEMU of %s refused %s after %d tr%s: %s" % (
            self.data["label"], func.bdf, attempt, "y" if attempt == 1 else "ies", last.desc or last.msg),
            domain=self.data["domid"], device=str(func.bdf), error_class=last.error_class, desc=last.desc) from last

    def verify(self, ctx):
        with open_session(ctx, self.data) as qmp:
            placed = {d.qdev_id: d for d in qmp.query_pci(deadline=_command(ctx))}
        for data in self.data["functions"]:
            func = PciFunction.from_dict(data)
            dev = placed.get(func.bdf.qmp_id)
            if dev is None:
                raise HotplugError("QEMU of %s accepted %s but query-pci does not list %s" % (
                    self.data["label"], func.bdf, func.bdf.qmp_id), domain=self.data["domid"], device=str(func.bdf))
            # The slot from vdevfn itself: func.vslot is None for "any slot",
            # which pylint 4.0 (ansible-core 2.20's sanity) sees past the test.
            vslot, vfunc = func.vdevfn >> 3, func.vfunc
            if vslot and (dev.slot, dev.function) != (vslot, vfunc):
                raise HotplugError("QEMU of %s put %s at %02x.%x, not at the requested %02x.%x" % (
                    self.data["label"], func.bdf, dev.slot, dev.function, vslot, vfunc),
                    domain=self.data["domid"], device=str(func.bdf))
            ctx.report.devices[str(func.bdf)] = {"qdev_id": dev.qdev_id, "vslot": dev.slot, "vfunc": dev.function,
                                                 "vdev": "%02x:%02x.%x" % (dev.bus, dev.slot, dev.function)}

    def undo(self, ctx):
        try:
            qmp = open_session(ctx, self.data)
        except QmpConnectionError as exc:
            if exc.details.get("errno") == "ENOENT":
                return      # no QEMU any more: its devices went with it
            raise
        left = []
        with qmp:
            placed = {d.qdev_id for d in qmp.query_pci(deadline=_command(ctx))}
            for data in reversed(self.data["functions"]):
                qdev = Bdf.parse(data["bdf"]).qmp_id
                if qdev not in placed:
                    continue
                try:
                    qmp.remove_device(qdev, deadline=ctx.deadline.sub(UNPLUG_WAIT, "unplug"))
                except (DeadlineExceeded, QmpError) as exc:
                    left.append("%s (%s)" % (qdev, exc.msg))
        if left:
            raise HotplugError("QEMU of %s still has %s" % (self.data["label"], "; ".join(left)), domain=self.data["domid"])


@register
class RecordSlots(Step):
    """``vdevfn-N`` in the guest's backend for each function QEMU placed
    where it chose (no slot was asked for): the slot ``query-pci`` shows,
    as libxl records it, so that ``xl pci-list`` and the next request's
    slot checks see where the device is. data: domid, uuid, label, bdfs."""

    kind = "qmp-record-slots"

    def describe(self):
        return "record the virtual slots of %s in the PCI backend of %s" % (", ".join(self.data["bdfs"]), self.data["label"])

    def touches(self):
        return ["%s (vdevfn keys of %s)" % (backend_path(self.data["domid"]), ", ".join(self.data["bdfs"]))]

    def _placed(self, ctx):
        """{bdf: devfn} of the functions QEMU placed: what QmpAdd's check read
        back from query-pci in this request (slots do not move once placed),
        or, when that check did not run in this process, query-pci now."""
        seen = {b: ctx.report.devices.get(b) or {} for b in self.data["bdfs"]}
        if all("vslot" in v for v in seen.values()):
            return {b: v["vslot"] << 3 | v["vfunc"] for b, v in seen.items()}
        with open_session(ctx, self.data) as qmp:
            placed = {d.qdev_id: d for d in qmp.query_pci(deadline=_command(ctx))}
        return {b: placed[Bdf.parse(b).qmp_id].devfn for b in self.data["bdfs"] if Bdf.parse(b).qmp_id in placed}

    def do(self, ctx):
        wanted = self._placed(ctx)

        def body(tx):
            backend = read_backend(ctx.xs, self.data["domid"], ctx.deadline, tx=tx)
            changes = Changes()
            for dev in backend.devices if backend is not None else ():
                devfn = wanted.get(str(dev.bdf))
                if devfn is not None and not dev.vdevfn:
                    changes.write("%s/vdevfn-%d" % (backend.path, dev.index), "%x" % devfn)
            if changes:
                ctx.xs.apply(changes, tx=tx, deadline=ctx.deadline)
            return len(changes)

        self.result["written"] = ctx.xs.transaction(body, ctx.deadline, what="recording the virtual slots of %s in %s" % (
            ", ".join(self.data["bdfs"]), self.data["label"]))

    def verify(self, ctx):
        """Nothing to confirm beyond the transaction: a key that did not get
        written leaves ``xl pci-list`` showing slot 00, not the guest broken."""

    def undo(self, ctx):
        """The keys go with their index when the backend entry is undone."""


@register
class QmpRemove(Step):
    """``device_del`` of each device and a bounded wait for QEMU to let it
    go (the guest must acknowledge the unplug). data: domid, uuid, label,
    bdfs, force. With force, a device the guest does not release is
    reported as left in QEMU, and the detach goes on."""

    kind = "qmp-remove"
    no_return = True

    def describe(self):
        return "device_del %s from the QEMU of %s" % (", ".join(self.data["bdfs"]), self.data["label"])

    def touches(self):
        return ["QEMU device %s of %s" % (Bdf.parse(b).qmp_id, self.data["label"]) for b in self.data["bdfs"]]

    def _forced(self, ctx):
        return bool(self.data.get("force") or ctx.force)

    def do(self, ctx):
        try:
            qmp = open_session(ctx, self.data)
        except XenPciError as exc:
            if not self._forced(ctx):
                raise
            ctx.report.warnings.append("forced: no QMP session with %s (%s)" % (self.data["label"], exc.msg))
            self.result["no_session"] = True
            return
        with qmp:
            for bdf in self.data["bdfs"]:
                qdev = Bdf.parse(bdf).qmp_id
                try:
                    qmp.device_del(qdev, deadline=_command(ctx))
                except QmpError as exc:
                    if exc.error_class == "DeviceNotFound" or (exc.desc or "").endswith("is already in the process of unplug"):
                        continue
                    raise

    def verify(self, ctx):
        if self.result.get("no_session"):
            return
        force = self._forced(ctx)
        with open_session(ctx, self.data) as qmp:
            for bdf in self.data["bdfs"]:
                qdev = Bdf.parse(bdf).qmp_id
                if force and qdev in ctx.platform.unplug_timed_out:
                    continue    # this task waited for it already and said so
                try:
                    how = qmp.wait_device_gone(qdev, ctx.deadline.sub(UNPLUG_WAIT, "unplug"))
                    ctx.report.step("QEMU of %s released %s (%s)" % (self.data["label"], bdf, how))
                except DeadlineExceeded as exc:
                    if not force:
                        raise HotplugError("%s did not release %s: %s; use force to detach anyway" % (
                            self.data["label"], bdf, exc.msg), domain=self.data["domid"], device=bdf,
                            timed_out=True) from exc
                    left = ("QEMU of %s still lists %s (%s): the guest never acknowledged the unplug; it goes when the "
                            "guest does or restarts, and the next run removes it" % (self.data["label"], qdev, bdf))
                    ctx.report.warnings.append("forced: " + left)
                    ctx.report.left.append(left)
                    ctx.platform.unplug_timed_out.add(qdev)

    def effective(self, ctx):
        try:
            have = {d.qdev_id for d in qemu_devices(ctx.platform, self.data["domid"], self.data["uuid"], self.data["label"],
                                                    ctx.deadline)}
        except QmpConnectionError:
            return True
        return not any(Bdf.parse(b).qmp_id in have for b in self.data["bdfs"])

    def undo(self, ctx):
        """Never called past the point of no return; before it nothing was sent."""

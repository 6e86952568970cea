# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Privileged steps around attach and detach (libxl's pci_add_dm_done and its reverse).

For one device and one target domain (the guest, or its stub domain):

1. each of the first 7 ``resource`` lines with a non-zero start: I/O ports
   (``flags & 1``) or memory pages (``start >> 12``, rounded-up page count);
2. the legacy IRQ, when ``0 < irq < 0xff``: map the GSI to a pirq, then
   permit that pirq;
3. ``permissive`` through pciback's sysfs file;
4. ``xc_assign_device`` unless the target is a stub domain (``assign=False``);
   a PV target tolerates ENOSYS (Xen without an IOMMU).

``Grants.grant`` performs them in that order; when one fails it undoes what
it did, in reverse, and raises with a record of every step.  ``revoke``
reverses a grant (permissions, pirq, optional reset, deassign) best effort,
tolerating what is already undone.  Both return the record for reporting.

Unlike libxl, a missing ``irq`` file does not skip ``permissive``.
"""

from __future__ import annotations

from ._bdf import Bdf
from ._errors import HypervisorError, SpecError, SysfsError, XenPciError
from ._sysfs import PCI_BAR_IO, PROC_PCI_NUM_RESOURCES, normalise_bdf, sbdf_of

# xc_assign_device flag of rdm_policy=relaxed (Xen's public domctl.h). Kept
# here, not imported from _xenctrl, so planning grants loads no ctypes.
XEN_DOMCTL_DEV_RDM_RELAXED = 1
XC_PAGE_SHIFT = 12
XC_PAGE_SIZE = 1 << XC_PAGE_SHIFT
LEGACY_IRQ_LIMIT = 0xFF
RDM_POLICIES = ("strict", "relaxed")


def plan(sysfs, bdf, permissive=False, assign=True, rdm_policy="strict"):
    """The grant steps for a device, computed from sysfs (nothing written)."""
    if rdm_policy not in RDM_POLICIES:
        raise SpecError("rdm_policy must be strict or relaxed, not %r" % (rdm_policy,), device=bdf)
    bdf = normalise_bdf(bdf)
    steps = []
    for start, end, flags in sysfs.resources(bdf)[:PROC_PCI_NUM_RESOURCES]:
        if not start:
            continue
        size = end - start + 1
        if flags & PCI_BAR_IO:
            steps.append({"op": "ioport_permission", "first_port": start, "nr_ports": size})
        else:
            steps.append({"op": "iomem_permission", "first_mfn": start >> XC_PAGE_SHIFT,
                          "nr_mfns": (size + XC_PAGE_SIZE - 1) >> XC_PAGE_SHIFT})
    irq = sysfs.irq(bdf)
    if 0 < irq < LEGACY_IRQ_LIMIT:
        steps.append({"op": "physdev_map_pirq", "index": irq})
        steps.append({"op": "irq_permission"})       # pirq known once mapped
    if permissive:
        steps.append({"op": "permissive"})
    if assign:
        steps.append({"op": "assign_device", "sbdf": sbdf_of(bdf),
                      "flags": XEN_DOMCTL_DEV_RDM_RELAXED if rdm_policy == "relaxed" else 0})
    return steps


class Grants(object):
    """Grant/revoke the privileged access of one device to one domain."""

    def __init__(self, xenctrl, sysfs):
        self.xc = xenctrl
        self.sysfs = sysfs

    def _is_hvm(self, domid, hvm):
        if hvm is None:
            try:
                hvm = self.xc.domain_getinfo(domid)["hvm"]
            except HypervisorError:
                return True      # unknown type: do not tolerate the failure
        return bool(hvm)

    def grant(self, domid, bdf, permissive=False, assign=True, rdm_policy="strict", hvm=None):
        """Do the steps; on failure undo them and raise.  ``hvm=None`` asks Xen."""
        bdf = normalise_bdf(bdf)
        steps = plan(self.sysfs, bdf, permissive=permissive, assign=assign, rdm_policy=rdm_policy)
        record = {"domid": domid, "bdf": bdf, "sbdf": sbdf_of(bdf), "pirq": None, "steps": []}
        pv_target = None
        for step in steps:
            entry = dict(step)
            record["steps"].append(entry)
            try:
                self._do(domid, bdf, entry, record)
                entry["result"] = "ok"
            except HypervisorError as exc:
                if entry["op"] == "assign_device" and exc.errno == "ENOSYS":
                    if pv_target is None:
                        pv_target = not self._is_hvm(domid, hvm)
                    if pv_target:
                        # PV without an IOMMU: libxl carries on too
                        entry["result"] = "ENOSYS (tolerated: PV target)"
                        continue
                entry["result"] = exc.errno
                self._rollback(domid, bdf, record)
                raise self._wrap(exc, "granting %s to domain %s" % (bdf, domid), record) from exc
            except SysfsError as exc:
                entry["result"] = exc.details.get("errno") or "error"
                self._rollback(domid, bdf, record)
                raise self._wrap(exc, "granting %s to domain %s" % (bdf, domid), record) from exc
        return record

    def _do(self, domid, bdf, entry, record):
        op = entry["op"]
        if op == "ioport_permission":
            self.xc.ioport_permission(domid, entry["first_port"], entry["nr_ports"], True)
        elif op == "iomem_permission":
            self.xc.iomem_permission(domid, entry["first_mfn"], entry["nr_mfns"], True)
        elif op == "physdev_map_pirq":
            # libxl asks for pirq == GSI and uses what Xen returns
            record["pirq"] = entry["pirq"] = self.xc.physdev_map_pirq(domid, entry["index"], entry["index"])
        elif op == "irq_permission":
            entry["pirq"] = record["pirq"]
            self.xc.irq_permission(domid, record["pirq"], True)
        elif op == "permissive":
            entry["changed"] = self.sysfs.set_permissive(bdf)
        elif op == "assign_device":
            self.xc.assign_device(domid, entry["sbdf"], entry["flags"])

    def _undo(self, domid, entry):
        op = entry["op"]
        if op == "ioport_permission":
            self.xc.ioport_permission(domid, entry["first_port"], entry["nr_ports"], False)
        elif op == "iomem_permission":
            self.xc.iomem_permission(domid, entry["first_mfn"], entry["nr_mfns"], False)
        elif op == "physdev_map_pirq":
            self.xc.physdev_unmap_pirq(domid, entry["pirq"])
        elif op == "irq_permission":
            self.xc.irq_permission(domid, entry["pirq"], False)
        elif op == "assign_device":
            self.xc.deassign_device(domid, entry["sbdf"])
        # permissive cannot be cleared through sysfs: it lasts until the
        # device leaves pciback; the record says so.

    def _rollback(self, domid, bdf, record):
        for entry in reversed(record["steps"]):
            if entry.get("result") != "ok":
                continue
            if entry["op"] == "permissive":
                entry["undone"] = "kept (pciback has no way to clear permissive)"
                continue
            try:
                self._undo(domid, entry)
                entry["undone"] = True
            except XenPciError as exc:
                entry["undone"] = "failed: %s" % exc.msg

    @staticmethod
    def _wrap(exc, doing, record):
        details = dict(exc.details)
        details["record"] = record
        details.setdefault("device", record["bdf"])
        details["domid"] = record["domid"]
        msg = "%s: %s" % (doing, exc.msg)
        if isinstance(exc, HypervisorError):
            details.pop("errno", None)
            return HypervisorError(msg, errno_name=exc.errno, **details)
        return SysfsError(msg, **details)

    def revoke(self, domid, bdf, deassign=True, pirq=None, reset=False, hvm=None):
        """Undo a grant, best effort and idempotent: permissions, pirq,
        reset (function 0 only, when asked), deassign.  ``pirq`` defaults to
        the IRQ number (what libxl assumes).  Raises after trying every
        step if any failed for a reason other than "already undone"."""
        bdf = normalise_bdf(bdf)
        record = {"domid": domid, "bdf": bdf, "sbdf": sbdf_of(bdf), "steps": []}
        failures = []

        def attempt(entry, fn, tolerated=()):
            record["steps"].append(entry)
            try:
                fn()
                entry["result"] = "ok"
            except XenPciError as exc:
                name = getattr(exc, "errno", None) or exc.details.get("errno")
                if name in tolerated:
                    entry["result"] = "%s (already undone)" % name
                else:
                    entry["result"] = name or "error"
                    failures.append(exc)

        for step in plan(self.sysfs, bdf, permissive=False, assign=False):
            op = step["op"]
            if op == "ioport_permission":
                attempt(dict(step, allow=False), lambda s=step: self.xc.ioport_permission(
                    domid, s["first_port"], s["nr_ports"], False))
            elif op == "iomem_permission":
                attempt(dict(step, allow=False), lambda s=step: self.xc.iomem_permission(
                    domid, s["first_mfn"], s["nr_mfns"], False))
            elif op == "physdev_map_pirq":
                the_pirq = step["index"] if pirq is None else pirq
                attempt({"op": "physdev_unmap_pirq", "pirq": the_pirq},
                        lambda p=the_pirq: self.xc.physdev_unmap_pirq(domid, p), tolerated=("EINVAL",))
                attempt({"op": "irq_permission", "pirq": the_pirq, "allow": False},
                        lambda p=the_pirq: self.xc.irq_permission(domid, p, False))
        if reset and Bdf.parse(bdf).func == 0:
            entry = {"op": "reset"}
            record["steps"].append(entry)
            try:
                entry["result"] = self.sysfs.reset(bdf)
            except SysfsError as exc:
                # libxl logs and carries on; report it instead of failing the detach
                entry["result"] = "none" if exc.details.get("reset_method", 1) is None else exc.msg
        if deassign:
            attempt({"op": "deassign_device", "sbdf": sbdf_of(bdf)},
                    lambda: self.xc.deassign_device(domid, sbdf_of(bdf)), tolerated=("ENODEV",))
        if failures:
            first = failures[0]
            raise self._wrap(first, "revoking %s from domain %s (%d step(s) failed)"
                             % (bdf, domid, len(failures)), record)
        return record

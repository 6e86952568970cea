# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attach and detach requests: safety checks, bookkeeping, grants, hotplug.

One request = one domain and a list of PCI functions. Everything that can be
checked is checked before the first write (the device exists, is assignable
or may be taken, belongs to nobody else; the domain exists, can take PCI
devices and has passthrough enabled). Then, as libxl does:
``/libxl/pci/<bdf>/domid``, the privileged grants, and the xenstore hotplug.
A failure undoes the request's own steps in reverse order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import List

from ansible_collections.xen.pci.plugins.module_utils._assignable import device_status, give_back, make_assignable as add_to_pool
from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline
from ansible_collections.xen.pci.plugins.module_utils._errors import DomainError, HotplugError, RefusedError, XenPciError
from ansible_collections.xen.pci.plugins.module_utils._hotplug_hvm import HvmHotplug, stub_of
from ansible_collections.xen.pci.plugins.module_utils._hotplug_pv import PvHotplug, Report
from ansible_collections.xen.pci.plugins.module_utils._lock import FileLock, domain_lock_path
from ansible_collections.xen.pci.plugins.module_utils._grants import Grants
from ansible_collections.xen.pci.plugins.module_utils._state import libxl_pci_path, read_host
from ansible_collections.xen.pci.plugins.module_utils._sysfs import Sysfs
from ansible_collections.xen.pci.plugins.module_utils._xenctrl import open_xenctrl
from ansible_collections.xen.pci.plugins.module_utils._xenstore import XenStore


@dataclass
class Platform:
    """The control planes of one host that a request may touch."""

    xs: object                       # _xenstore.XenStore
    sysfs: object = None             # _sysfs.Sysfs, None: no sysfs checks or grants
    grants: object = None            # _grants.Grants, None: no privileged calls
    userdata_dir: str = "/var/lib/xen"
    locking: bool = True
    xenctrl: object = None           # _xenctrl interface, for domain info
    qmp_dir: str = "/var/run/xen"

    def domain_running(self, domid):
        """False for a paused domain (or one being built); True otherwise or if unknown."""
        if self.xenctrl is None:
            return True
        try:
            info = self.xenctrl.domain_getinfo(domid)
        except XenPciError:
            return True
        return not info.get("paused", False)


@dataclass
class AttachItem:
    """One function to attach (a _bdf.PciFunction), as resolved by the planner."""

    request: object

    @property
    def bdf(self):
        return str(self.request.bdf)

    @property
    def seize(self):
        """May take the device from a dom0 driver (xl's seize=1)."""
        return bool(self.request.seize)


@dataclass
class Outcome:
    report: Report = field(default_factory=Report)
    attached: List[str] = field(default_factory=list)
    detached: List[str] = field(default_factory=list)


def passthrough_mode(userdata_dir, domid, uuid):
    """c_info.passthrough from libxl's saved domain config, or None if unknown."""
    if not uuid:
        return None
    path = os.path.join(userdata_dir, "userdata-d.%d.%s.libxl-json" % (domid, uuid))
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    return (config.get("c_info") or {}).get("passthrough")


def check_domain(dom, platform):
    """Refuse domains that cannot take PCI devices, before any write."""
    if dom.domid == 0:
        raise RefusedError("domid 0 is the control domain; PCI devices are passed through to guests", domain=0)
    if dom.type is None:
        raise DomainError("%s has no /libxl/%d/type: it was not created by libxl (or is being destroyed)" % (dom.label(), dom.domid),
                          domain=dom.domid)
    if dom.type == "pvh":
        raise RefusedError("%s is a PVH guest: Xen does not support PCI passthrough to PVH domains" % dom.label(), domain=dom.domid)
    mode = passthrough_mode(platform.userdata_dir, dom.domid, dom.uuid)
    if mode == "disabled":
        raise RefusedError("%s was created with passthrough disabled (no pci= and no passthrough= in its config); "
                           "recreate it with passthrough = \"enabled\"" % dom.label(), domain=dom.domid)


def check_devices(host, dom, items, platform, make_assignable=False, released=()):
    """Every device exists, is nobody else's, and is (or may be made) assignable.
    ``released``: devices the same request detaches from their holder first."""
    for item in items:
        bdf = item.bdf
        holder = host.holder_of(bdf)
        if holder is not None and holder != dom.domid and bdf not in released:
            other = host.domains.get(holder)
            raise RefusedError("%s is assigned to %s; detach it there first" % (bdf, other.label() if other else "domid %d" % holder),
                               device=bdf, domain=dom.domid, holder=holder)
        if platform.sysfs is None:
            continue
        if not platform.sysfs.exists(bdf):
            raise RefusedError("PCI device %s does not exist on this host" % bdf, device=bdf, domain=dom.domid)
        info = platform.sysfs.device(bdf)
        if info.driver not in (None, "pciback") and not item.seize:
            raise RefusedError("%s is in use by the dom0 driver %s; make it assignable first, or ask to seize it" % (bdf, info.driver),
                               device=bdf, driver=info.driver, domain=dom.domid)
        if info.driver is None and not (item.seize or make_assignable):
            raise RefusedError("%s is not assignable (bound to no driver, not to pciback); make it assignable first" % bdf,
                               device=bdf, domain=dom.domid)


class Hotplug:
    """Attach/detach requests against one host."""

    def __init__(self, platform, timeout=60.0):
        self.platform = platform
        self.xs = platform.xs
        self.timeout = timeout
        self.qmp_dir = platform.qmp_dir

    def _lock(self, dom, deadline):
        if not self.platform.locking:
            return None
        lock = FileLock(domain_lock_path(self.platform.userdata_dir, dom.domid, dom.uuid))
        return lock.acquire(deadline, "another toolstack request on %s" % dom.label())

    def attach(self, domain, items, deadline=None, host=None, make_assignable=False):
        """Attach ``items`` (AttachItem list) to ``domain`` (name or id).

        ``make_assignable``: bind devices that no driver holds to pciback
        first; a device held by a dom0 driver is taken only if it says seize.
        """
        deadline = deadline or Deadline(self.timeout, "attach")
        host = host or read_host(self.xs, deadline)
        dom = host.resolve(domain)
        check_domain(dom, self.platform)
        check_devices(host, dom, items, self.platform, make_assignable)
        outcome = Outcome()
        report = outcome.report
        lock = self._lock(dom, deadline)
        try:
            # Re-read under the lock: another request may have finished meanwhile.
            host = read_host(self.xs, deadline, domids=None)
            dom = host.resolve(dom.domid)
            todo = [i for i in items if dom.device(i.bdf) is None]
            if not todo:
                return outcome
            check_devices(host, dom, todo, self.platform, make_assignable)
            self._attach_steps(host, dom, todo, deadline, report, make_assignable)
            outcome.attached = [i.bdf for i in todo]
            return outcome
        finally:
            if lock:
                lock.release()

    def _attach_steps(self, host, dom, items, deadline, report, make_assignable=False):
        undo = []
        bdfs = [i.bdf for i in items]
        funcs = [i.request for i in items]
        hvm = pv = current = None
        # Whatever can fail without side effects comes first: the backend wait
        # the rule may ask for (PV), the device model and its QMP socket (HVM).
        if dom.type == "hvm":
            hvm = HvmHotplug(self.platform, dom, stub_of(host, dom), report, qmp_dir=self.qmp_dir)
            hvm.check()
            hvm.open_qmp(deadline).close()
        else:
            pv = PvHotplug(self.xs, dom.domid, dom.name, report)
            current = pv.prepare(deadline, bdfs)
        try:
            for item in items:
                if (item.seize or make_assignable) and self.platform.sysfs is not None:
                    self._make_assignable(host, item, report, undo)
            changes = [(libxl_pci_path(b, "domid"), str(dom.domid)) for b in bdfs]
            self.xs.pipeline([self.xs.write_request(p, v) for p, v in changes], deadline=deadline)
            undo.append(("rm-domid", bdfs))
            self._grant(dom, items, report, undo, assign=True)
            if hvm is not None:
                if hvm.stub is not None:
                    # QEMU in the stub domain maps the device; only the guest is assigned it.
                    self._grant(hvm.stub, items, report, undo, assign=False)
                hvm_undo = []
                try:
                    hvm.attach(funcs, deadline, hvm_undo)
                except XenPciError:
                    for kind, arg in reversed(hvm_undo):
                        try:
                            hvm.undo(kind, arg)
                        except XenPciError as exc:
                            report.warnings.append("undo %s: %s" % (kind, exc.msg))
                    raise
                return
            before = current.devices if current else []
            try:
                pv.attach(funcs, deadline, running=self.platform.domain_running(dom.domid), prepared=True, current=current)
            except XenPciError:
                self._undo_xenstore(pv, before, bdfs, report)
                raise
        except XenPciError as exc:
            left = self._undo(undo, report)
            if left:
                exc.details["left"] = left
                exc.msg += "; could not undo: %s" % "; ".join(left)
                exc.args = (exc.msg,)
            raise

    def _grant(self, dom, items, report, undo, assign):
        if self.platform.grants is None:
            return
        for item in items:
            record = self.platform.grants.grant(dom.domid, item.bdf, permissive=item.request.permissive,
                                                assign=assign, rdm_policy=item.request.rdm_policy)
            undo.append(("revoke", (dom.domid, item.bdf, record.get("pirq"), assign)))
            report.step("granted %s to %s (%s)" % (item.bdf, dom.label(), ", ".join(s["op"] for s in record["steps"])))

    def _undo_xenstore(self, pv, before, bdfs, report):
        """Take this request's devices out again; keep the domain's others."""
        fresh = Deadline(max(10.0, self.timeout / 2), "undo")
        try:
            pv.detach(bdfs, fresh, force=True)
        except XenPciError as exc:
            report.warnings.append("undo of %s left keys behind: %s" % (", ".join(bdfs), exc.msg))
            return
        kept = [d.bdf for d in before]
        report.step("undid the attach of %s; %s keeps %s" % (", ".join(bdfs), pv.label(), ", ".join(kept) or "no other devices"))

    def _undo(self, undo, report):
        left = []
        fresh = Deadline(10.0, "undo")
        for kind, arg in reversed(undo):
            try:
                if kind == "rm-domid":
                    self.xs.pipeline([self.xs.rm_request(libxl_pci_path(b, "domid")) for b in arg], deadline=fresh)
                elif kind == "revoke":
                    domid, bdf, pirq, assigned = arg
                    self.platform.grants.revoke(domid, bdf, pirq=pirq, deassign=assigned)
                elif kind == "give-back":
                    self._give_back(*arg)
            except XenPciError as exc:
                left.append("%s %s: %s" % (kind, arg, exc.msg))
        if undo:
            report.step("undid %d step(s) of the failed request" % len(undo))
        return left

    def _make_assignable(self, host, item, report, undo):
        status = device_status(self.platform, host, item.bdf)
        if status["driver"] == "pciback":
            return
        steps = add_to_pool(self.platform, status, take_from_driver=item.seize)
        undo.append(("give-back", (item.bdf, status["driver"])))
        report.step("made %s assignable: %s" % (item.bdf, "; ".join(steps)))

    def _give_back(self, bdf, _driver):
        host = read_host(self.xs, Deadline(10.0, "give back"))
        give_back(self.platform, device_status(self.platform, host, bdf), rebind=True)

    def detach(self, domain, bdfs, deadline=None, force=False, host=None):
        deadline = deadline or Deadline(self.timeout, "detach")
        host = host or read_host(self.xs, deadline)
        dom = host.resolve(domain)
        outcome = Outcome()
        lock = self._lock(dom, deadline)
        try:
            host = read_host(self.xs, deadline)
            dom = host.resolve(dom.domid)
            present = [b for b in bdfs if dom.device(b) is not None]
            if not present:
                return outcome
            stub = stub_of(host, dom) if dom.type == "hvm" else None
            if dom.type == "hvm":
                HvmHotplug(self.platform, dom, stub, outcome.report, qmp_dir=self.qmp_dir).detach(present, deadline, force=force)
            else:
                PvHotplug(self.xs, dom.domid, dom.name, outcome.report).detach(present, deadline, force=force)
            left = []
            for bdf in present:
                if self.platform.grants is not None:
                    for target, assigned in ((dom, True), (stub, False)):
                        if target is None:
                            continue
                        try:
                            self.platform.grants.revoke(target.domid, bdf, deassign=assigned)
                        except XenPciError as exc:
                            left.append("grants of %s to %s: %s" % (bdf, target.label(), exc.msg))
                if self.platform.sysfs is not None:
                    try:
                        method = self.platform.sysfs.reset(bdf)
                        outcome.report.step("reset %s (%s)" % (bdf, method))
                    except XenPciError as exc:
                        outcome.report.warnings.append("reset of %s failed: %s" % (bdf, exc.msg))
            self.xs.pipeline([self.xs.rm_request(libxl_pci_path(b, "domid")) for b in present], deadline=deadline)
            outcome.detached = present
            if left:
                raise HotplugError("detached %s from %s but could not revoke: %s" % (", ".join(present), dom.label(), "; ".join(left)),
                                   domain=dom.domid, left=left)
            return outcome
        finally:
            if lock:
                lock.release()


def connect(xenstore_path=None, xenbus=False, sysfs_root="/sys", hypervisor="libxenctrl", userdata_dir="/var/lib/xen",
            timeout=60.0, locking=True, qmp_dir="/var/run/xen"):
    """A Platform for one host. ``hypervisor``: ``libxenctrl`` (the host's
    library), ``none`` (no privileged calls) or ``xensim:<socket>``."""
    xs = XenStore(xenstore_path, xenbus=xenbus, timeout=min(timeout, 30.0))
    sysfs = Sysfs(sysfs_root) if sysfs_root else None
    xenctrl = grants = None
    if hypervisor and hypervisor != "none":
        xenctrl = open_xenctrl(hypervisor)
        grants = Grants(xenctrl, sysfs)
    return Platform(xs=xs, sysfs=sysfs, grants=grants, userdata_dir=userdata_dir, locking=locking, xenctrl=xenctrl,
                    qmp_dir=qmp_dir)

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""SR-IOV: how many virtual functions a physical function has, declared.

An entry of xen.pci.assignable's ``sriov`` names a physical function (PF)
by address (``{pf: 0000:03:00.0, numvfs: 4}``) or by what it is
(``{select: {id: "8086:10c9"}, count: all, numvfs: 4}``) and the number of
virtual functions (VFs) it must have. The PF's dom0 driver creates them
when ``sriov_numvfs`` is written; Linux accepts only 0 -> N and N -> 0, so
a change between two non-zero counts removes every VF first.

Everything is refused before any write when it cannot end well: a device
without the SR-IOV capability, more VFs than ``sriov_totalvfs``, a PF
without a dom0 driver (nothing creates the VFs), a PF that is assignable
or attached itself, and VFs that would disappear while they are in the
pool or attached to a guest (pciback would lose them under libxl's
bookkeeping). The PF keeps its dom0 driver: Xen learned it when dom0
booted, so the VFs the driver creates are reported to Xen after their PF,
the order Xen (4.20 and later) requires.

The VFs a request creates do not exist while it plans. ``PlannedSysfs``
shows the host as it will be (the new VFs at the addresses their PF's
offset and stride give them, with the PF's vendor, the VF device id and
the PF's class; the VFs to be removed gone), so that selectors
(``physfn``, ``id``, ``class``, ``path``) and check mode see them; the
step that creates them checks the addresses against the ``virtfnN`` links.
"""

from __future__ import annotations

import os

from ansible_collections.xen.pci.plugins.module_utils._bdf import Bdf
from ansible_collections.xen.pci.plugins.module_utils._errors import RefusedError, SpecError
from ansible_collections.xen.pci.plugins.module_utils._selectors import (
    COUNT, SELECT, Inventory, choose, is_selector, parse_selector, selector_fields)
from ansible_collections.xen.pci.plugins.module_utils._sysfs import PCIBACK, normalise_bdf, predicted_vfs
from ansible_collections.xen.pci.plugins.module_utils._validate import Problem

ENTRY_KEYS = ("pf", "numvfs", "pool")
SELECT_KEYS = (SELECT, COUNT, "numvfs", "pool")


def _numvfs(value, where, problems, required=True):
    if value is None and not required:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.append(Problem("%s: numvfs must be a number of virtual functions (0 or more), got %r" % (where, value),
                                where))
        return None
    return value


def parse_sriov(entries, problems, state="present"):
    """``sriov`` -> [{where, pf (or None), selector (or None), numvfs, pool}].
    With ``state: absent`` numvfs may be left out (the VFs are removed).
    ``pool``: every VF of the entry's PFs is made assignable (given back)."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        problems.append(Problem("sriov must be a list of {pf, numvfs} or {select, count, numvfs} mappings, got %s %r"
                                % (type(entries).__name__, entries), "sriov"))
        return []
    out, seen = [], {}
    for index, item in enumerate(entries):
        where = "sriov[%d]" % index
        if not isinstance(item, dict):
            problems.append(Problem("%s: expected a mapping {pf, numvfs} or {select, count, numvfs}, got %s %r" % (
                where, type(item).__name__, item), where, device=repr(item)[:64]))
            continue
        known = SELECT_KEYS if is_selector(item) else ENTRY_KEYS
        unknown = sorted(str(k) for k in item if k not in known)
        if unknown:
            problems.append(Problem("%s: unknown key(s) %s (known: %s)" % (where, ", ".join(unknown), ", ".join(known)),
                                    where))
            continue
        numvfs = _numvfs(item.get("numvfs"), where, problems, required=state == "present")
        if numvfs is None and state == "present":
            continue
        pool = item.get("pool", False)
        if not isinstance(pool, bool):
            problems.append(Problem("%s: pool must be true or false, got %r" % (where, pool), where))
            continue
        entry = {"where": where, "pf": None, "selector": None, "numvfs": numvfs, "pool": pool}
        if is_selector(item):
            try:
                entry["selector"] = parse_selector({k: v for k, v in item.items() if k not in ("numvfs", "pool")}, ())
            except SpecError as exc:
                problems.append(Problem("%s: %s" % (where, exc.msg), where, device=str(item)[:64]))
                continue
        else:
            try:
                entry["pf"] = str(Bdf.parse(item.get("pf")))
            except SpecError as exc:
                problems.append(Problem("%s: pf must be the PCI address of a physical function: %s" % (where, exc.msg),
                                        where, device=str(item.get("pf"))[:64]))
                continue
            if entry["pf"] in seen:
                problems.append(Problem("%s: %s is already given by %s" % (where, entry["pf"], seen[entry["pf"]]), where,
                                        device=entry["pf"]))
                continue
            seen[entry["pf"]] = where
        out.append(entry)
    return out


def resolve_pfs(sysfs, entries, problems):
    """Every entry with its physical functions: [(entry, [pf bdf...])], the
    selectors resolved on this host (each PF named once) among the devices
    that have the SR-IOV capability."""
    selectors = [e["selector"] for e in entries if e["selector"] is not None]
    inventory = None
    if selectors:
        inventory = Inventory(sysfs, selector_fields(selectors),
                              only=lambda bdf: os.path.exists(sysfs.dev_path(bdf, "sriov_totalvfs")))
    claimed = {e["pf"]: e["where"] for e in entries if e["pf"] is not None}
    out = []
    for entry in entries:
        if entry["selector"] is None:
            out.append((entry, [entry["pf"]]))
            continue
        try:
            pfs = choose(entry["selector"], entry["where"], None, inventory, lambda _bdf: None, claimed)
        except SpecError as exc:
            problems.append(Problem(exc.msg, entry["where"], details={"candidates": exc.details.get("candidates")}))
            continue
        for pf in pfs:
            claimed[pf] = entry["where"]
        out.append((entry, pfs))
    return out


def _refusal(where, msg, pf, **details):
    return Problem("%s: %s" % (where, msg), where, device=pf, kind=RefusedError, details=details or None)


def _vf_holders(sysfs, host, vfs, given_back):
    """Why each VF must not disappear: attached to a guest, in the pool
    (bound to pciback, or in its slot list) or held by a dom0 driver (dom0
    may use it: a VF network interface), and not given back by this request.
    ([attached], [pooled], {vf: driver})."""
    attached, pooled, held = [], [], {}
    slots = set(sysfs.pciback_slots()) if vfs and sysfs.pciback_loaded() else set()
    for vf in vfs:
        holder = host.holder_of(vf)
        driver = sysfs.driver_name(vf)
        if holder is not None:
            dom = host.domains.get(holder)
            attached.append("%s (attached to %s)" % (vf, "%s (domid %d)" % (dom.name, holder) if dom else "domid %d" % holder))
        elif vf in given_back:
            continue
        elif driver == PCIBACK or vf in slots:
            pooled.append(vf)
        elif driver is not None:
            held[vf] = driver
    return attached, pooled, held


def plan_sriov(sysfs, host, resolved, state, given_back=(), take_from_driver=False):
    """[plan] and problems for the resolved entries. A plan: {where, pf,
    old, new, vfs_now, vfs_after, driver}; ``old == new``: nothing to do.
    ``given_back``: the VFs this request takes out of the pool first (with
    ``state: absent``, those of a ``pool`` entry are too: plan["vfs_now"]);
    ``take_from_driver``: consent to remove VFs a dom0 driver holds."""
    plans, problems = [], []
    given_back = set(given_back)
    for entry, pfs in resolved:
        where = entry["where"]
        for pf in pfs:
            if not sysfs.exists(pf):
                problems.append(_refusal(where, "PCI device %s does not exist on this host" % pf, pf))
                continue
            info = sysfs.sriov(pf)
            if info is None:
                physfn = sysfs.physfn(pf)
                problems.append(_refusal(where, "%s is a virtual function of %s, not a physical function" % (pf, physfn)
                                         if physfn else "%s has no SR-IOV capability (no %s)" % (
                                             pf, sysfs.logical(sysfs.dev_path(pf, "sriov_totalvfs"))), pf))
                continue
            new = 0 if state == "absent" else entry["numvfs"]
            plan = {"where": where, "pf": pf, "old": info["numvfs"], "new": new, "totalvfs": info["totalvfs"],
                    "vfs_now": info["vfs"], "driver": sysfs.driver_name(pf), "info": info, "pool": entry["pool"]}
            if new > info["totalvfs"]:
                problems.append(_refusal(where, "%s supports at most %d virtual functions (sriov_totalvfs), %d asked" % (
                    pf, info["totalvfs"], new), pf, totalvfs=info["totalvfs"]))
                continue
            if new == info["numvfs"]:
                plan["vfs_after"] = info["vfs"]
                plans.append(plan)
                continue
            holder = host.holder_of(pf)
            if holder is not None:
                problems.append(_refusal(where, "%s is attached to domid %d itself; its virtual functions are set by "
                                         "its dom0 driver" % (pf, holder), pf, holder=holder))
                continue
            if plan["driver"] is None:
                problems.append(_refusal(where, "%s has no dom0 driver, and only the physical function's driver creates "
                                         "or removes virtual functions; bind it to its driver first" % pf, pf))
                continue
            if plan["driver"] == PCIBACK:
                problems.append(_refusal(where, "%s is bound to pciback (assignable), which cannot create virtual "
                                         "functions; give it back to its dom0 driver first" % pf, pf, driver=PCIBACK))
                continue
            back = given_back | set(info["vfs"]) if state == "absent" and entry["pool"] else given_back
            attached, pooled, held = _vf_holders(sysfs, host, info["vfs"], back)
            if attached or pooled:
                why = ", ".join(attached + ["%s (in the pool)" % vf for vf in pooled])
                problems.append(_refusal(where, "changing the number of virtual functions of %s from %d to %d removes all "
                                         "%d it has, and %s; detach them and give them back first (state: absent)" % (
                                             pf, info["numvfs"], new, info["numvfs"], why), pf,
                                         attached=attached, pooled=pooled))
                continue
            if held and not take_from_driver:
                why = ", ".join("%s (held by the dom0 driver %s)" % (vf, held[vf]) for vf in sorted(held))
                problems.append(_refusal(where, "changing the number of virtual functions of %s from %d to %d removes all "
                                         "%d it has, and %s, which dom0 may be using; set take_from_driver to remove "
                                         "them" % (pf, info["numvfs"], new, info["numvfs"], why), pf, held=held))
                continue
            plan["vfs_after"] = predicted_vfs(info, new)
            clash = [vf for vf in plan["vfs_after"] if vf not in info["vfs"] and sysfs.exists(vf)]
            if clash:
                problems.append(_refusal(where, "the virtual functions of %s would be at %s, where a device already "
                                         "is" % (pf, ", ".join(clash)), pf))
                continue
            plans.append(plan)
    return plans, problems


def future_vfs(plans):
    """{vf: pf} of the VFs the plans create."""
    return {vf: p["pf"] for p in plans if p["new"] != p["old"] for vf in p["vfs_after"]}


def gone_vfs(plans):
    return {vf for p in plans if p["new"] != p["old"] for vf in p["vfs_now"]}


def sriov_report(sysfs, plans):
    """The result's ``sriov``: each PF as sysfs shows it now (read back), or
    as planned (``predicted``, check mode)."""
    out = []
    for plan in plans:
        info = sysfs.sriov(plan["pf"]) if sysfs.exists(plan["pf"]) else None
        out.append({"pf": plan["pf"], "entry": plan["where"], "numvfs": info["numvfs"] if info else None,
                    "totalvfs": plan["totalvfs"], "vfs": info["vfs"] if info else [],
                    "changed": plan["old"] != plan["new"], "predicted": False})
    return out


def sriov_prediction(plans):
    return [{"pf": p["pf"], "entry": p["where"], "numvfs": p["new"], "totalvfs": p["totalvfs"],
             "vfs": list(p["vfs_after"]), "changed": p["old"] != p["new"], "predicted": True} for p in plans]


class PlannedSysfs(object):
    """A read-only view of ``sysfs`` as it will be once ``plans`` ran: the
    VFs to be created exist (with no driver), those to be removed do not.
    Only what planning reads is answered; every write goes to the real sysfs
    (and planning makes none)."""

    def __init__(self, sysfs, plans):
        self._real = sysfs
        self.future = future_vfs(plans)
        self.gone = gone_vfs(plans) - set(self.future)
        self._info = {p["pf"]: p["info"] for p in plans}

    def __getattr__(self, name):
        return getattr(self._real, name)

    def devices(self):
        have = [b for b in self._real.devices() if b not in self.gone]
        return sorted(set(have) | set(self.future), key=lambda b: Bdf.parse(b).sbdf)

    def exists(self, bdf):
        bdf = normalise_bdf(bdf)
        if bdf in self.future:
            return True
        return bdf not in self.gone and self._real.exists(bdf)

    def driver_name(self, bdf):
        return None if normalise_bdf(bdf) in self.future else self._real.driver_name(bdf)

    def drivers(self, bdfs):
        bdfs = list(bdfs)
        real = self._real.drivers([b for b in bdfs if b not in self.future])
        return {b: None if b in self.future else real[b] for b in bdfs}

    def physfn(self, bdf):
        bdf = normalise_bdf(bdf)
        return self.future[bdf] if bdf in self.future else self._real.physfn(bdf)

    def identity(self, bdf, fields):
        bdf = normalise_bdf(bdf)
        if bdf not in self.future:
            return self._real.identity(bdf, fields)
        pf = self.future[bdf]
        ids = self._real.identity(pf, set(fields) | {"vendor", "class", "path"})
        vf = Bdf.parse(bdf)
        out = {"vendor": ids.get("vendor"), "device": int(self._info[pf]["vf_device"], 16), "class": ids.get("class"),
               # Behind the PF's parent, like the PF: only the last hop differs.
               "path": "%s/%02x.%d" % (ids["path"].rsplit("/", 1)[0], vf.slot, vf.func) if ids.get("path") else None,
               "physfn": pf,
               # Not known before the VF exists: a selector on them does not
               # match a VF that is still to be created.
               "subsystem_vendor": None, "subsystem_device": None, "label": None, "serial": None}
        return {k: v for k, v in out.items() if k in fields}

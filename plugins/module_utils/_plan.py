# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Desired versus actual: what to detach, attach or re-attach, per domain.

Pure: takes a HostState and the validated, resolved declaration, returns a
Plan. The plan is what check mode reports and what the engine turns into
steps, so check mode predicts the real run by construction. Every refusal
happened before, in ``_validate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from ansible_collections.xen.pci.plugins.module_utils._bdf import Bdf
from ansible_collections.xen.pci.plugins.module_utils._errors import SpecError

STATES = ("present", "absent", "exact")
COMPARED = ("permissive", "msitranslate", "power_mgmt", "rdm_policy")


@dataclass
class DomainPlan:
    domid: int
    label: str
    before: List[str]
    attach: list = field(default_factory=list)        # PciFunction
    detach: List[str] = field(default_factory=list)   # bdf
    reattach: List[dict] = field(default_factory=list)  # {bdf, differs: {key: [have, want]}}
    repair: List[str] = field(default_factory=list)   # in xenstore, missing from QEMU
    stray: List[str] = field(default_factory=list)    # QEMU ids of devices only QEMU has, to remove

    @property
    def changed(self):
        return bool(self.attach or self.detach or self.stray)

    @property
    def after(self):
        gone = set(self.detach)
        out = [b for b in self.before if describe_bdf(b) not in gone]
        out += [describe(f) for f in self.attach]
        return out

    def actions(self):
        out = []
        if self.stray:
            out.append("remove %s from the QEMU of %s (not in xenstore)" % (", ".join(self.stray), self.label))
        if self.detach:
            out.append("detach %s from %s" % (", ".join(self.detach), self.label))
        if self.attach:
            out.append("attach %s to %s" % (", ".join(str(f.bdf) for f in self.attach), self.label))
        return out


@dataclass
class Plan:
    domains: List[DomainPlan]
    resolved: Dict[int, list] = field(default_factory=dict)   # the validated declaration it was made from

    @property
    def changed(self):
        return any(d.changed for d in self.domains)

    def actions(self):
        # Detaches first: a device moving between domains leaves before it arrives.
        return [a for d in self.domains for a in d.actions() if not a.startswith("attach")] + \
            [a for d in self.domains for a in d.actions() if a.startswith("attach")]

    def diff(self):
        before = {d.label: d.before for d in self.domains}
        after = {d.label: d.after for d in self.domains}
        return {"before": before, "after": after}


def describe(func):
    """A PciFunction as a short spec: address, @vslot, options that differ from libxl's defaults."""
    out = str(func.bdf) + ("@%02x" % func.vslot if func.vslot else "")
    for key in ("permissive", "msitranslate", "power_mgmt"):
        if getattr(func, key):
            out += ",%s=1" % key
    if func.rdm_policy != "strict":
        out += ",rdm_policy=%s" % func.rdm_policy
    return out


def describe_backend(dev):
    try:
        return describe(dev.function())
    except SpecError:
        return dev.bdf


def describe_bdf(text):
    """The address part of a ``describe`` string."""
    return text.split(",", 1)[0].split("@", 1)[0]


def _differs(have, want):
    out = {}
    for key in COMPARED:
        if have.opts and key in have.opts and have.opts[key] != getattr(want, key):
            out[key] = [have.opts[key], getattr(want, key)]
    if want.vdevfn and (have.vdevfn or 0) != want.vdevfn:
        out["vdevfn"] = ["%x" % (have.vdevfn or 0), "%x" % want.vdevfn]
    return out


def plan(host, resolved, state="present", qemu=None):
    """Desired versus actual, for validated input.

    ``resolved``: {domid: [PciFunction]} (present, exact) or {domid: [bdf]}
    (absent), as ``_validate`` leaves them; ``qemu``: {domid: [QmpPciDevice]}
    of a HVM guest, when its QEMU was asked (query-pci
    decides what is true: a device xenstore lists but QEMU lacks is
    re-attached, a passthrough device only QEMU has is removed).
    """
    if state not in STATES:
        raise SpecError("state must be one of %s, got %r" % (", ".join(STATES), state))
    qemu = qemu or {}
    plans = []
    for domid, wanted in resolved.items():
        dom = host.domains[domid]
        current = {d.bdf: d for d in dom.devices}
        in_qemu = qemu.get(domid)
        if in_qemu is not None:
            in_qemu = {d.qdev_id for d in in_qemu if is_pt_id(d.qdev_id)}
        dp = DomainPlan(domid=domid, label=dom.label(), before=[describe_backend(d) for d in dom.devices])
        if in_qemu is not None:
            listed = {Bdf.parse(b).qmp_id for b in current}
            dp.repair = [b for b in current if Bdf.parse(b).qmp_id not in in_qemu]
            dp.stray = sorted(q for q in in_qemu if q not in listed)
        if state == "absent":
            gone = set(wanted)
            dp.detach = [b for b in current if b in gone]
            dp.stray = [q for q in dp.stray if str(Bdf.from_qmp_id(q)) in gone]
        else:
            for func in wanted:
                bdf = str(func.bdf)
                have = current.get(bdf)
                if have is None:
                    dp.attach.append(func)
                    continue
                differs = _differs(have, func)
                if bdf in dp.repair:
                    differs = dict(differs, qemu=["absent", "present"])
                if differs:
                    dp.reattach.append({"bdf": bdf, "differs": differs})
                    dp.detach.append(bdf)
                    dp.attach.append(func)
            keep = {str(f.bdf) for f in wanted}
            # An id QEMU has that a declared device will take is adopted by its device_add.
            dp.stray = [q for q in dp.stray if str(Bdf.from_qmp_id(q)) not in keep]
            if state == "exact":
                dp.detach.extend(b for b in current if b not in keep and b not in dp.detach)
            else:
                dp.stray = []
        plans.append(dp)
    return Plan(domains=plans, resolved=dict(resolved))


def is_pt_id(qdev_id):
    """A QEMU id of the form libxl gives passed-through devices."""
    try:
        Bdf.from_qmp_id(qdev_id)
    except SpecError:
        return False
    return True

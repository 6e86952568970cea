# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Desired versus actual: what to detach, attach or re-attach, per domain.

Pure: takes a HostState and the declared devices, returns a Plan. The plan
is what check mode reports and what the engine executes, so check mode
predicts the real run by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from ansible_collections.xen.pci.plugins.module_utils._bdf import PciSpec
from ansible_collections.xen.pci.plugins.module_utils._errors import RefusedError, SpecError

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

    @property
    def changed(self):
        return bool(self.attach or self.detach)

    @property
    def after(self):
        gone = set(self.detach)
        out = [b for b in self.before if describe_bdf(b) not in gone]
        out += [describe(f) for f in self.attach]
        return out

    def actions(self):
        out = []
        if self.detach:
            out.append("detach %s from %s" % (", ".join(self.detach), self.label))
        if self.attach:
            out.append("attach %s to %s" % (", ".join(str(f.bdf) for f in self.attach), self.label))
        return out


@dataclass
class Plan:
    domains: List[DomainPlan]

    @property
    def changed(self):
        return any(d.changed for d in self.domains)

    def actions(self):
        # Detaches first: a device moving between domains leaves before it arrives.
        return [a for d in self.domains for a in d.actions() if a.startswith("detach")] + \
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


def resolve_functions(host, specs, present_bdfs):
    """PciSpec list -> PciFunction list (names resolved, ``*`` expanded)."""
    out = []
    for spec in specs:
        bdf = host.bdf_for_name(spec.name) if spec.bdf is None else None
        out.extend(spec.expand(present=present_bdfs, bdf=bdf))
    return out


def plan(host, desired, state="present", present_bdfs=()):
    """``desired``: {domain ref: [PciSpec or str or dict]}; ``state``: present | absent | exact."""
    if state not in STATES:
        raise SpecError("state must be one of %s, got %r" % (", ".join(STATES), state))
    wanted: Dict[int, list] = {}
    labels = {}
    for ref, specs in desired.items():
        dom = host.resolve(ref)
        if dom.domid in wanted:
            raise SpecError("%s is listed twice (as %r and another reference)" % (dom.label(), ref), domain=ref)
        parsed = [PciSpec.coerce(s) for s in specs]
        wanted[dom.domid] = resolve_functions(host, parsed, present_bdfs) if state != "absent" else parsed
        labels[dom.domid] = dom.label()

    claimed = {}
    if state != "absent":
        for domid, funcs in wanted.items():
            for func in funcs:
                bdf = str(func.bdf)
                if bdf in claimed and claimed[bdf] != domid:
                    raise SpecError("%s is claimed by both %s and %s" % (bdf, labels[claimed[bdf]], labels[domid]), device=bdf)
                claimed[bdf] = domid

    plans = []
    for domid, funcs in wanted.items():
        dom = host.domains[domid]
        current = {d.bdf: d for d in dom.devices}
        dp = DomainPlan(domid=domid, label=labels[domid], before=[describe_backend(d) for d in dom.devices])
        if state == "absent":
            for spec in funcs:
                bdfs = _absent_bdfs(host, spec, current)
                dp.detach.extend(b for b in bdfs if b in current and b not in dp.detach)
        else:
            for func in funcs:
                bdf = str(func.bdf)
                have = current.get(bdf)
                if have is None:
                    holder = host.holder_of(bdf)
                    if holder is not None and holder != domid and not _leaving(holder, bdf, wanted, state, host):
                        other = host.domains.get(holder)
                        raise RefusedError("%s is assigned to %s, not to %s" % (bdf, other.label() if other else "domid %d" % holder, dom.label()),
                                           device=bdf, holder=holder, domain=domid)
                    dp.attach.append(func)
                    continue
                differs = _differs(have, func)
                if differs:
                    dp.reattach.append({"bdf": bdf, "differs": differs})
                    dp.detach.append(bdf)
                    dp.attach.append(func)
            if state == "exact":
                keep = {str(f.bdf) for f in funcs}
                dp.detach.extend(b for b in current if b not in keep and b not in dp.detach)
        plans.append(dp)
    return Plan(domains=plans)


def _absent_bdfs(host, spec, current):
    if spec.bdf is None:
        try:
            return [host.bdf_for_name(spec.name)]
        except SpecError:
            return []
    if spec.all_functions:
        return [b for b in current if b.rsplit(".", 1)[0] == spec.bdf.slot_address]
    return [str(spec.bdf)]


def _leaving(holder, bdf, wanted, state, host):
    """The holder is in this same call with state exact and does not keep ``bdf``."""
    if state != "exact" or holder not in wanted:
        return False
    return bdf not in {str(f.bdf) for f in wanted[holder]}

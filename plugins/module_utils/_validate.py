# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One validation pass over a whole request, before anything is written.

Two stages: ``passthrough_input`` needs no host (option types and ranges,
the device specs, duplicates and vslot collisions inside the request);
``passthrough_host`` checks the request against the host as read (the
domains exist and can take PCI devices, names resolve, every device exists,
is free or may be taken, no vslot is already used in the guest). Each stage
collects every problem it finds; ``raise_problems`` turns them into one
error whose message is the first problem and whose details list them all.
Check mode runs both stages too, so it refuses what the real run refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional

from ansible_collections.xen.pci.plugins.module_utils._bdf import SPEC_KEYS, Bdf, PciSpec
from ansible_collections.xen.pci.plugins.module_utils._budget import check_timeout
from ansible_collections.xen.pci.plugins.module_utils._errors import DomainError, RefusedError, SpecError, XenPciError
from ansible_collections.xen.pci.plugins.module_utils._plan import STATES
from ansible_collections.xen.pci.plugins.module_utils._reset import POLICIES, reset_report
from ansible_collections.xen.pci.plugins.module_utils._selectors import Inventory, choose, is_selector, parse_selector, selector_fields

# What a selector entry may add to each device it chooses (a name is a lookup here).
PASSTHROUGH_KEYS = tuple(k for k in SPEC_KEYS if k not in ("bdf", "name"))
# Longest domain name we take (xl's own limit is xenstore's: 4096 bytes).
NAME_MAX = 256


@dataclass
class Problem:
    """One thing wrong with a request: which input, domain, device, and why."""

    msg: str
    input: str
    domain: Optional[str] = None
    device: Optional[str] = None
    kind: type = SpecError
    details: Optional[dict] = None        # the refusing error's own facts (driver, holder...)

    def as_dict(self):
        return {"msg": self.msg, "input": self.input, "domain": self.domain, "device": self.device,
                "error": self.kind.__name__}


def raise_problems(problems):
    """Raise the first problem's error class, every problem in ``problems``."""
    if not problems:
        return
    first = problems[0]
    more = len(problems) - 1
    msg = first.msg + (" (and %d more problem%s, listed in 'problems')" % (more, "s" if more > 1 else "") if more else "")
    details = dict(first.details or {})
    details.update(input=first.input, domain=first.domain, device=first.device, problems=[p.as_dict() for p in problems])
    raise first.kind(msg, **details)


def check_bool(params, name, problems):
    value = params.get(name, False)
    if not isinstance(value, bool):
        problems.append(Problem("%s must be true or false, got %s %r" % (name, type(value).__name__, value), name))


def check_domain_ref(ref, where, problems):
    """A domain reference is a name or an id: never a bool, float or list."""
    if isinstance(ref, bool) or not isinstance(ref, (int, str)):
        problems.append(Problem("%s: a domain is a name or a domain id, got %s %r" % (where, type(ref).__name__, ref),
                                where, domain=repr(ref)))
        return False
    if isinstance(ref, int) and ref < 0:
        problems.append(Problem("%s: domain id %d is negative" % (where, ref), where, domain=str(ref)))
        return False
    if isinstance(ref, str):
        if not ref:
            problems.append(Problem("%s: the domain name is empty" % where, where, domain=ref))
            return False
        if len(ref) > NAME_MAX or not ref.isprintable():
            problems.append(Problem("%s: %r is not a domain name (printable, at most %d characters)" % (
                where, ref[:64], NAME_MAX), where, domain=ref[:64]))
            return False
    return True


def common_options(params, problems):
    timeout = params.get("timeout")
    problem = check_timeout(timeout)
    if problem:
        problems.append(Problem(problem, "timeout"))


def check_reset_policy(params, problems):
    value = params.get("reset", "best_effort")
    if value not in POLICIES:
        problems.append(Problem("reset must be one of %s, got %r" % (", ".join(POLICIES), value), "reset"))


def reset_problem(sysfs, bdf, policy, warnings, where, domain=None, what="attached", report=None):
    """The reset policy for one device about to be given out: strict refuses
    a device without a usable reset (a Problem), best_effort appends a
    warning to ``warnings``, none does not look. ``report``: the device's
    reset_report when the caller has read it already."""
    if policy == "none":
        return None
    report = report or reset_report(sysfs, bdf)
    if report["usable"]:
        return None
    if policy == "strict":
        return Problem("%s; reset: strict refuses it (use reset: best_effort to take it anyway)" % report["why"], where,
                       domain=domain, device=bdf, kind=RefusedError, details={"reset": report})
    if warnings is not None:
        warnings.append("%s; it is %s anyway (reset: best_effort) and keeps its state between guests" % (
            report["why"], what))
    return None


def pool_entry_problem(platform, bdf, policy, warnings, readiness):
    """A device entering the pool (xen.pci.assignable) must be assignable on
    this host (an endpoint, an IOMMU) and, under reset: strict, have a reset.
    ``readiness``: a dict filled with the host's readiness on first use."""
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.xen.pci.plugins.module_utils._readiness import assign_refusal, host_readiness
    if not readiness:
        readiness.update(host_readiness(platform))
    refusal = assign_refusal(platform.sysfs, bdf, readiness)
    if refusal:
        return Problem(refusal, "devices", device=bdf, kind=RefusedError, details={"readiness": dict(readiness)})
    return reset_problem(platform.sysfs, bdf, policy, warnings, "devices", what="made assignable")


def consent_of(params, problems):
    """``take_from_driver``: the addresses of devices that may be taken from
    the dom0 driver holding them (as if their specs said seize=1)."""
    value = params.get("take_from_driver")
    if value is None:
        return set()
    if isinstance(value, bool):
        # xen.pci.assignable's option of the same name is a bool; here it lists devices.
        problems.append(Problem("take_from_driver lists the PCI addresses that may be taken from their dom0 driver, "
                                "got %r" % value, "take_from_driver"))
        return set()
    if not isinstance(value, list):
        problems.append(Problem("take_from_driver must be a list of PCI addresses, got %s %r" % (type(value).__name__, value),
                                "take_from_driver"))
        return set()
    out = set()
    for index, item in enumerate(value):
        try:
            out.add(str(Bdf.parse(item)))
        except SpecError as exc:
            problems.append(Problem("take_from_driver[%d]: %s" % (index, exc.msg), "take_from_driver[%d]" % index,
                                    device=str(item)[:64]))
    return out


def passthrough_input(params, desired):
    """Stage 1. ``desired``: {domain ref: list of specs}. Returns
    ({domain ref: [PciSpec]}, problems)."""
    problems: List[Problem] = []
    common_options(params, problems)
    consent_of(params, problems)
    check_reset_policy(params, problems)
    state = params.get("state", "present")
    if state not in STATES:
        problems.append(Problem("state must be one of %s, got %r" % (", ".join(STATES), state), "state"))
    for name in ("make_assignable", "force"):
        check_bool(params, name, problems)
    where_of = "devices" if params.get("domain") is not None else "assignments"
    if not isinstance(desired, dict):
        problems.append(Problem("assignments must be a mapping of guest to its devices, got %s" % type(desired).__name__,
                                "assignments"))
        return {}, problems
    parsed: Dict[object, List[PciSpec]] = {}
    for ref, specs in desired.items():
        where = "%s[%s]" % (where_of, ref) if where_of == "assignments" else "domain %s" % (ref,)
        if not check_domain_ref(ref, where, problems):
            continue
        label = str(ref)
        if not isinstance(specs, list):
            problems.append(Problem("%s: the devices of %s must be a list of PCI specs, got %s %r" % (
                where, label, "null" if specs is None else type(specs).__name__, specs), where, domain=label))
            continue
        out = []
        for index, spec in enumerate(specs):
            item = "%s[%d]" % (where_of if where_of == "devices" else where, index)
            try:
                if is_selector(spec):
                    # resolved on the host (select_devices), then checked as addresses
                    parse_selector(spec, PASSTHROUGH_KEYS)
                    continue
                out.append(PciSpec.coerce(spec))
            except SpecError as exc:
                problems.append(Problem("%s (device #%d of %s): %s" % (item, index, label, exc.msg), item, domain=label,
                                        device=str(spec)[:64]))
        parsed[ref] = out
        if state != "absent":
            problems += _duplicates(out, where, label)
    if state != "absent":
        problems += _declared_twice(parsed, where_of)
    return parsed, problems


def has_selectors(desired):
    return isinstance(desired, dict) and any(
        isinstance(specs, list) and any(is_selector(s) for s in specs) for specs in desired.values())


def select_devices(sysfs, desired, owner_of, holder_of, where_of, spec_keys=None, bdf_of_name=None, none_is_empty=False):
    """Replace every selector entry of ``desired`` ({ref: entries}, shapes
    already checked) by the devices it chooses on this host. Returns
    (desired with addresses only, {ref: [{entry, select, count, bdfs}]},
    problems). ``owner_of(ref)``: the domid whose devices come first (None
    when unknown); ``holder_of(bdf)``: the domid holding a device, or None;
    ``bdf_of_name(name)``: the address a ``name=`` entry stands for, or None.
    ``none_is_empty``: a ``count: all`` that matches nothing chooses nothing
    (what taking devices away needs to be idempotent) instead of failing."""
    problems: List[Problem] = []
    parsed = {}
    claimed = {}
    for ref, specs in desired.items():
        where = where_of if ref is None or where_of == "devices" else "%s[%s]" % (where_of, ref)
        for index, spec in enumerate(specs):
            if is_selector(spec):
                parsed[(ref, index)] = parse_selector(spec, PASSTHROUGH_KEYS if spec_keys is None else spec_keys)
                continue
            try:
                given = PciSpec.coerce(spec)
            except SpecError:
                continue        # passthrough_input reports it
            address = given.address or (bdf_of_name(given.name) if bdf_of_name else None)
            if address:
                claimed.setdefault(address, "%s[%d]" % (where, index))
    if not parsed:
        return desired, {}, problems
    if sysfs is None:
        return desired, {}, [Problem("%s: selectors need sysfs (sysfs_root) to find the devices" % where_of, where_of)]
    inventory = Inventory(sysfs, selector_fields(parsed.values()))
    out, report = {}, {}
    for ref, specs in desired.items():
        where = where_of if ref is None or where_of == "devices" else "%s[%s]" % (where_of, ref)
        owner = owner_of(ref)
        entries = []
        for index, spec in enumerate(specs):
            sel = parsed.get((ref, index))
            if sel is None:
                entries.append(spec)
                continue
            item = "%s[%d]" % (where, index)
            try:
                bdfs = choose(sel, item, owner, inventory, holder_of, claimed, none_is_empty)
            except SpecError as exc:
                problems.append(Problem(exc.msg, item, domain=None if ref is None else str(ref),
                                        device=sel.describe(), details={"candidates": exc.details.get("candidates")}))
                continue
            for bdf in bdfs:
                claimed[bdf] = item
                entries.append(dict(sel.options, bdf=bdf))
            report.setdefault(ref, []).append({"entry": index, "select": dict(sel.given["select"]),
                                               "count": sel.count, "bdfs": bdfs})
        out[ref] = entries
    return out, report, problems


def _duplicates(specs, where, label):
    """The same device, or the same virtual slot, twice in one guest's list."""
    out = []
    seen, slots = {}, {}
    for index, spec in enumerate(specs):
        key = spec.address or "name=%s" % spec.name
        if key in seen:
            out.append(Problem("%s: %s is listed twice for %s (devices #%d and #%d)" % (where, key, label, seen[key], index),
                               where, domain=label, device=key))
        seen.setdefault(key, index)
        if spec.vslot:
            if spec.vslot in slots:
                out.append(Problem("%s: virtual slot %02x is asked for twice for %s (devices #%d and #%d)" % (
                    where, spec.vslot, label, slots[spec.vslot], index), where, domain=label, device=key))
            slots.setdefault(spec.vslot, index)
    return out


def _declared_twice(parsed, where_of):
    out, owner = [], {}
    for ref, specs in parsed.items():
        for spec in specs:
            key = spec.address or "name=%s" % spec.name
            if key in owner and owner[key] != ref:
                out.append(Problem("%s: %s is declared for both %s and %s" % (where_of, key, owner[key], ref),
                                   where_of, domain=str(ref), device=key))
            owner.setdefault(key, ref)
    return out


def check_domain(dom, platform, problems, where):
    """Can ``dom`` take PCI devices at all? (problems appended)."""
    label = dom.label()

    def refuse(msg, kind=RefusedError):
        problems.append(Problem(msg, where, domain=label, kind=kind))

    if dom.domid == 0:
        return refuse("domid 0 is the control domain; PCI devices are passed through to guests")
    if dom.is_stubdom:
        return refuse("%s is the stub domain of domid %d; give the devices to that guest" % (label, dom.target))
    if dom.type is None:
        return refuse("%s has no /libxl/%d/type: it was not created by libxl (or is being destroyed)" % (label, dom.domid),
                      DomainError)
    if dom.type == "pvh":
        return refuse("%s is a PVH guest: Xen does not support PCI passthrough to PVH domains" % label)
    if dom.type not in ("pv", "hvm"):
        return refuse("%s has the unknown domain type %r" % (label, dom.type[:32]), DomainError)
    if platform.passthrough_mode(dom.domid, dom.uuid) == "disabled":
        return refuse("%s was created with passthrough disabled (no pci= and no passthrough= in its config); "
                      "recreate it with passthrough = \"enabled\"" % label)
    if dom.type == "hvm":
        if dom.dm_version not in (None, "qemu_xen"):
            return refuse("%s uses device model %s; only qemu_xen (QEMU upstream) takes hotplugged PCI devices" % (
                label, dom.dm_version), DomainError)
        if dom.dm_state != "running":
            return refuse("the device model of %s is %s, not running: hotplug needs a running QEMU "
                          "(devices for a guest being created belong in its config's pci = [...])" % (
                              label, dom.dm_state or "absent"))
    return None


def passthrough_host(host, parsed, state, platform, make_assignable=False, qemu=None, consent=(), reset="best_effort",
                     warnings=None, facts=None):
    """Stage 2: ``parsed`` against the host. Returns ({domid: [PciFunction]
    or [bdf]}, problems). ``consent``: addresses that may be seized;
    ``reset``: the reset policy; ``warnings``: a list for best_effort's;
    ``facts``: a dict kept for one request, so that its passes read each
    device's hardware facts (reset, header type) and the host's readiness once."""
    problems: List[Problem] = []
    resolved: Dict[int, list] = {}
    labels = {}
    present = _present(platform, problems)
    for ref, specs in parsed.items():
        where = "domain %s" % (ref,)
        try:
            dom = host.resolve(ref)
        except XenPciError as exc:
            problems.append(Problem(exc.msg, where, domain=str(ref), kind=type(exc), details=exc.details))
            continue
        if dom.domid in resolved:
            problems.append(Problem("%s is listed twice (as %r and as %r)" % (dom.label(), labels[dom.domid], ref), where,
                                    domain=dom.label()))
            continue
        labels[dom.domid] = ref
        if dom.domid == 0 or dom.is_stubdom:
            # For every state: a stub domain's devices are its guest's (a detach
            # there would leave the guest's QEMU with the device), dom0 has none.
            check_domain(dom, platform, problems, where)
            continue
        if state == "absent":
            resolved[dom.domid] = _absent_bdfs(host, dom, specs)
            continue
        if dom.stubdom_id is not None and host.domains.get(dom.stubdom_id) is None:
            problems.append(Problem("%s has stub domain %d, which does not exist" % (dom.label(), dom.stubdom_id), where,
                                    domain=dom.label(), kind=DomainError))
            continue
        funcs = []
        for spec in specs:
            try:
                bdf = host.bdf_for_name(spec.name) if spec.bdf is None else None
                funcs.extend(replace(f, seize=True) if str(f.bdf) in consent else f
                             for f in spec.expand(present=present, bdf=bdf))
            except SpecError as exc:
                problems.append(Problem("%s: %s" % (dom.label(), exc.msg), where, domain=dom.label(), device=spec.format()))
        resolved[dom.domid] = funcs
        if funcs:
            check_domain(dom, platform, problems, where)
    if state != "absent":
        problems += _devices(host, resolved, state, platform, make_assignable, present, qemu or {}, reset, warnings,
                             {} if facts is None else facts)
    return resolved, problems


def _present(platform, problems):
    if platform.sysfs is None:
        return []
    try:
        return platform.sysfs.devices()
    except XenPciError as exc:
        problems.append(Problem("cannot list the host's PCI devices: %s" % exc.msg, "sysfs_root", kind=type(exc)))
        return []


def _absent_bdfs(host, dom, specs):
    current = [d.bdf for d in dom.devices]
    out = []
    for spec in specs:
        if spec.bdf is None:
            try:
                out.append(host.bdf_for_name(spec.name))
            except SpecError:
                continue      # nothing carries that name: nothing to detach
        elif spec.all_functions:
            out.extend(b for b in current if b.rsplit(".", 1)[0] == spec.bdf.slot_address)
        else:
            out.append(str(spec.bdf))
    return out


def _devices(host, resolved, state, platform, make_assignable, present, qemu, reset, warnings, facts):
    """Every device exists, belongs to nobody else, is (or may be made)
    assignable, can be assigned on this host (an endpoint, an IOMMU), has
    a reset if the policy says so, is declared once, and its vslot is free
    in the guest."""
    problems: List[Problem] = []
    # What the hardware and the hypervisor say does not change between the
    # passes of one request (before and under the locks): read once.
    readiness = facts.setdefault("readiness", {})

    def once(key, read):
        if key not in facts:
            facts[key] = read()
        return facts[key]

    def ready():
        # Asked once, and only when a device is to be attached: a request
        # that changes nothing never opens the hypervisor.
        if not readiness:
            # Imported here: only a device to attach is checked against the host's readiness.
            from ansible_collections.xen.pci.plugins.module_utils._readiness import host_readiness  # pylint: disable=import-outside-toplevel
            readiness.update(host_readiness(platform))
        return readiness
    owner = {}
    leaving = set()
    if state == "exact":
        for domid, funcs in resolved.items():
            keep = {str(f.bdf) for f in funcs}
            leaving |= {(d.bdf, domid) for d in host.domains[domid].devices if d.bdf not in keep}
    sysfs = platform.sysfs
    for domid, funcs in resolved.items():
        dom = host.domains[domid]
        label = dom.label()
        where = "domain %s" % label
        current = {d.bdf: d for d in dom.devices}
        for func in funcs:
            bdf = str(func.bdf)
            if bdf in owner and owner[bdf] != domid:
                problems.append(Problem("%s is declared for both %s and %s" % (bdf, host.domains[owner[bdf]].label(), label),
                                        where, domain=label, device=bdf))
                continue
            if bdf in owner:
                problems.append(Problem("%s is declared twice for %s" % (bdf, label), where, domain=label, device=bdf))
                continue
            owner[bdf] = domid
            if bdf in current:
                continue
            holder = host.holder_of(bdf)
            if holder is not None and holder != domid and (bdf, holder) not in leaving:
                other = host.domains.get(holder)
                problems.append(Problem("%s is assigned to %s, not to %s; detach it there first" % (
                    bdf, other.label() if other else "domid %d" % holder, label), where, domain=label, device=bdf,
                    kind=RefusedError, details={"holder": holder}))
                continue
            if sysfs is None:
                continue
            if bdf not in present:
                problems.append(Problem("PCI device %s does not exist on this host (declared for %s)" % (bdf, label), where,
                                        domain=label, device=bdf, kind=RefusedError))
                continue
            try:
                driver = sysfs.driver_name(bdf)
            except XenPciError as exc:
                problems.append(Problem("%s (declared for %s): %s" % (bdf, label, exc.msg), where, domain=label, device=bdf,
                                        kind=type(exc)))
                continue
            if driver not in (None, "pciback") and not func.seize:
                problems.append(Problem("%s is in use by the dom0 driver %s; make it assignable first, or ask to seize it "
                                        "(declared for %s)" % (bdf, driver, label), where, domain=label, device=bdf,
                                        kind=RefusedError, details={"driver": driver}))
            elif driver is None and not (func.seize or make_assignable):
                problems.append(Problem("%s is not assignable (bound to no driver, not to pciback); make it assignable "
                                        "first (declared for %s)" % (bdf, label), where, domain=label, device=bdf,
                                        kind=RefusedError))
            elif driver != "pciback" and not sysfs.pciback_loaded():
                problems.append(Problem("xen-pciback is not loaded: %s cannot be made assignable for %s" % (bdf, label),
                                        where, domain=label, device=bdf, kind=RefusedError))
            else:
                from ansible_collections.xen.pci.plugins.module_utils._readiness import assign_refusal  # pylint: disable=import-outside-toplevel
                refusal = once(("refusal", bdf), lambda: assign_refusal(sysfs, bdf, ready()))
                if refusal:
                    problems.append(Problem("%s (declared for %s)" % (refusal, label), where, domain=label, device=bdf,
                                            kind=RefusedError, details={"readiness": ready()}))
                    continue
                report = once(("reset", bdf), lambda: reset_report(sysfs, bdf)) if reset != "none" else None
                problem = reset_problem(sysfs, bdf, reset, warnings, where, label, "attached to %s" % label, report)
                if problem:
                    problems.append(problem)
        problems += _slots(dom, funcs, current, resolved, state, qemu.get(domid))
    return problems


def _slots(dom, funcs, current, resolved, state, in_qemu):
    """A requested virtual slot must be free: not another kept device's, not
    one QEMU already uses for something else."""
    out = []
    label = dom.label()
    keep = {str(f.bdf) for f in funcs} if state == "exact" else None
    taken = {}
    for dev in current.values():
        if keep is not None and dev.bdf not in keep:
            continue
        if dev.vdevfn:
            taken[dev.vdevfn >> 3] = dev.bdf
    for func in funcs:
        bdf = str(func.bdf)
        if not func.vslot or bdf in current:
            continue
        holder = taken.get(func.vslot)
        if holder is not None and holder != bdf and not _same_slot(holder, bdf):
            out.append(Problem("virtual slot %02x asked for %s is already used by %s in %s" % (func.vslot, bdf, holder, label),
                               "domain %s" % label, domain=label, device=bdf, kind=RefusedError))
        for dev in in_qemu or ():
            if dev.bus == 0 and dev.slot == func.vslot and dev.function == func.vfunc and dev.qdev_id != func.bdf.qmp_id:
                out.append(Problem("virtual slot %02x.%x asked for %s is already used by %s in the QEMU of %s" % (
                    func.vslot, func.vfunc, bdf, dev.qdev_id or "an emulated device (%s)" % (dev.class_desc or "?"), label),
                    "domain %s" % label, domain=label, device=bdf, kind=RefusedError))
    return out


def _same_slot(a, b):
    return a.rsplit(".", 1)[0] == b.rsplit(".", 1)[0]

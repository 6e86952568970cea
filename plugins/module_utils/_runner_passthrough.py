# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runner of xen.pci.passthrough: one pipeline for every request.

    validate the input            (no host needed: types, ranges, specs, duplicates)
    read the host                 (one read; journals of killed requests with it)
    validate against the host     (every problem at once, also in check mode)
    plan                          (pure: desired vs actual; check mode stops here)
    lock the domains              (libxl's per-domain locks, in domid order)
    read again, recover journals  (finish or roll back what a killed request left)
    validate and plan again       (what is true under the lock)
    steps, execute                (detaches of every domain first, then attaches)
    read back                     (what the host shows is what is reported)

Kept free of Ansible imports, so tests and benchmarks drive it directly.
"""

from __future__ import annotations

from ansible_collections.xen.pci.plugins.module_utils._budget import Budget
from ansible_collections.xen.pci.plugins.module_utils._errors import HotplugError, QmpConnectionError, XenPciError, with_context
from ansible_collections.xen.pci.plugins.module_utils._host_options import platform_from
from ansible_collections.xen.pci.plugins.module_utils._journal import domain_key
from ansible_collections.xen.pci.plugins.module_utils._plan import describe, describe_bdf, plan
from ansible_collections.xen.pci.plugins.module_utils._state import read_host, untrusted_warnings
from ansible_collections.xen.pci.plugins.module_utils._validate import (
    Problem, consent_of, has_selectors, passthrough_host, passthrough_input, raise_problems, select_devices)


def domain_summary(host, domids):
    out = {}
    for domid in domids:
        dom = host.domains.get(domid)
        if dom is None:
            continue
        backend = dom.backend
        out[dom.name or str(domid)] = {
            "domid": domid, "type": dom.type,
            "backend_state": backend.state if backend else None,
            "frontend_state": backend.fe_state if backend else None,
            "error": backend.error if backend else None,
            "devices": [d.as_dict() for d in dom.devices]}
    return out


def request_label(parsed):
    """``web: 0000:00:10.0, 0000:00:11.0; db: name=gpu0`` (for messages)."""
    return "; ".join("%s: %s" % (ref, ", ".join(s.address or "name=%s" % s.name for s in specs) or "no device")
                     for ref, specs in parsed.items())


def _qemu(platform, host, resolved, deadline):
    """query-pci of every HVM guest of the request whose QEMU runs:
    ({domid: [QmpPciDevice]}, {domid: error})."""
    seen, errors = {}, {}
    for domid in resolved:
        dom = host.domains[domid]
        if dom.type != "hvm" or dom.dm_state != "running":
            continue
        # Imported here: only a request with a running HVM guest needs the QMP client.
        from ansible_collections.xen.pci.plugins.module_utils._steps_qmp import qemu_devices  # pylint: disable=import-outside-toplevel
        try:
            seen[domid] = qemu_devices(platform, domid, dom.uuid, dom.label(), deadline.sub(10.0, "query-pci"))
        except XenPciError as exc:
            errors[domid] = exc
    return seen, errors


def _check(platform, host, parsed, params, deadline, warnings=None, facts=None):
    """Validate against the host and plan; raise every problem at once.
    ``warnings``: a list that gets the reset policy's warnings; ``facts``:
    the request's hardware facts read so far (see passthrough_host)."""
    state = params["state"]
    make_assignable = params.get("make_assignable", False)
    consent = consent_of(params, [])
    reset = params.get("reset", "best_effort")
    first_warnings = []
    resolved, problems = passthrough_host(host, parsed, state, platform, make_assignable, consent=consent, reset=reset,
                                          warnings=first_warnings, facts=facts)
    qemu, qemu_errors = ({}, {})
    if not problems:
        qemu, qemu_errors = _qemu(platform, host, resolved, deadline)
    if qemu:
        # What QEMU shows (its slots, its devices) is checked in a second pass.
        resolved, problems = passthrough_host(host, parsed, state, platform, make_assignable, qemu=qemu, consent=consent,
                                              reset=reset, warnings=warnings, facts=facts)
    elif warnings is not None:
        warnings.extend(first_warnings)
    raise_problems(problems)
    the_plan = plan(host, resolved, state, qemu)
    for dp in the_plan.domains:
        exc = qemu_errors.get(dp.domid)
        if exc is not None and dp.changed and (dp.attach or not params.get("force")):
            devices = ", ".join([str(f.bdf) for f in dp.attach] + [b for b in dp.detach if b not in {str(f.bdf) for f in dp.attach}])
            problems.append(Problem("%s: cannot %s %s without its QEMU: %s" % (
                dp.label, "attach" if dp.attach else "detach", devices, exc.msg), "domain %s" % dp.label, domain=dp.label,
                device=devices, kind=type(exc) if isinstance(exc, QmpConnectionError) else HotplugError,
                details=dict(exc.details)))
    raise_problems(problems)
    return the_plan


def declared(the_plan, host, platform):
    """What the declaration resolved to on this host, per guest: each
    function's address, its canonical spec and the driver holding it now."""
    sysfs = platform.sysfs
    funcs = [f for dp in the_plan.domains for f in the_plan.resolved.get(dp.domid, []) if not isinstance(f, str)]
    # None for a device that is not there (its driver link is missing too).
    drivers = sysfs.drivers(sorted({str(f.bdf) for f in funcs})) if sysfs is not None else {}
    out = {}
    for dp in the_plan.domains:
        dom = host.domains[dp.domid]
        items = []
        for func in the_plan.resolved.get(dp.domid, []):
            if isinstance(func, str):
                items.append({"bdf": func})
                continue
            bdf = str(func.bdf)
            items.append({"bdf": bdf, "spec": describe(func), "seize": func.seize, "driver": drivers.get(bdf)})
        out[_name(dom)] = items
    return out


def _select(platform, host, parsed, params, desired):
    """Selector entries -> the devices they choose on this host, once per
    request (before the first plan, check mode alike): (parsed specs, report)."""
    if not has_selectors(desired):
        return parsed, {}

    def owner_of(ref):
        try:
            return host.resolve(ref).domid
        except XenPciError:
            return None     # passthrough_host says the domain is unknown

    def bdf_of_name(name):
        try:
            return host.bdf_for_name(name)
        except XenPciError:
            return None     # passthrough_host says the name is unknown

    where_of = "devices" if params.get("domain") is not None else "assignments"
    concrete, selected, problems = select_devices(platform.sysfs, desired, owner_of, host.holder_of, where_of,
                                                  bdf_of_name=bdf_of_name)
    raise_problems(problems)
    parsed, problems = passthrough_input(params, concrete)
    raise_problems(problems)
    return parsed, selected


def _name(dom):
    """A guest's key in the results: its name, or its id when it has none."""
    return dom.name or str(dom.domid)


def _result(the_plan, host, domids):
    return {
        "changed": the_plan.changed,
        "actions": the_plan.actions(),
        "diff": the_plan.diff(),
        "reattached": [dict(domain=d.label, **r) for d in the_plan.domains for r in d.reattach],
        "domains": domain_summary(host, domids),
        "recovered": [],
        "interrupted": [j.summary() for j in host.journals],
        "left": [],
        "reset_failed": [],
        "warnings_detail": [],
    }


def run_passthrough(params, desired, check_mode=False, platform=None, hook=None):
    """Read, plan, and (unless checking) execute; returns the module result.
    ``hook(point)``: called at every step boundary (tests stop a run there)."""
    parsed, problems = passthrough_input(params, desired)
    raise_problems(problems)
    budget = Budget(params["timeout"], "xen.pci.passthrough")
    try:
        platform = platform or platform_from(params)
        host = read_host(platform.xs, budget.work)
    except XenPciError as exc:
        # Nothing was read, nothing done: say what the request was for.
        raise with_context(exc, "%s %s: nothing done: " % (params["state"], request_label(parsed)), changed=False) from exc
    parsed, selected = _select(platform, host, parsed, params, desired)
    reset_warnings = []
    facts = {}
    the_plan = _check(platform, host, parsed, params, budget.work, reset_warnings, facts)
    domids = [d.domid for d in the_plan.domains]
    result = _result(the_plan, host, domids)
    result["resolved"] = declared(the_plan, host, platform)
    result["selected"] = {_name(host.resolve(ref)): items for ref, items in selected.items()}
    result["declared"] = {_name(host.resolve(ref)): {"key": str(ref), "specs": list(specs)} for ref, specs in desired.items()}
    if check_mode or (not the_plan.changed and not host.journals):
        result["warnings_detail"] = reset_warnings + untrusted_warnings(platform.xs)
        return result
    # A request that changes something (or finds a journal) needs the engine;
    # a no-op one never loads it.
    # pylint: disable=import-outside-toplevel
    from ansible_collections.xen.pci.plugins.module_utils._engine import Context
    from ansible_collections.xen.pci.plugins.module_utils._recovery import recover_journals
    ctx = Context(platform, budget, hook=hook, force=params.get("force", False))
    ctx.host = host

    locks = []
    before = {d.domid: [x.bdf for x in host.domains[d.domid].devices] for d in the_plan.domains}
    try:
        for domid in sorted(domids):
            locks.append(platform.domain_lock(host.domains[domid], budget.work))
        # Under the locks only the request's domains (and their stub domains)
        # are read again: the others' holders are known from libxl's bookkeeping.
        involved = _with_stubdoms(host, domids)
        host = ctx.host = read_host(platform.xs, budget.work, involved)
        if host.journals:
            recover_journals(ctx, host, held=set(domids), required=set(domids))
            host = ctx.host = read_host(platform.xs, budget.work, involved)
        reset_warnings = []
        the_plan = _check(platform, host, parsed, params, budget.work, reset_warnings, facts)
        before = {d.domid: [x.bdf for x in host.domains[d.domid].devices] for d in the_plan.domains}
        _run(ctx, platform, host, the_plan, params)
    except XenPciError as exc:
        raise _failed(ctx, platform, budget, exc, the_plan, before, result) from exc
    finally:
        for lock in reversed(locks):
            if lock:
                lock.release()
    after = read_host(platform.xs, budget.final(), _with_stubdoms(host, domids))
    result.update(_outcome(ctx, platform, the_plan, after, domids))
    result["warnings_detail"] = reset_warnings + result["warnings_detail"]
    mismatch = _mismatch(the_plan, after)
    if mismatch:
        details = dict(result)
        details["changed"] = True
        raise HotplugError("after the request the host shows %s" % "; ".join(mismatch), **details)
    return result


def _with_stubdoms(host, domids):
    """The domains to read back: those of the request and their stub domains."""
    out = set(domids)
    for domid in domids:
        dom = host.domains.get(domid) if host is not None else None
        if dom is not None and dom.stubdom_id is not None:
            out.add(dom.stubdom_id)
    return sorted(out)


def _run(ctx, platform, host, the_plan, params):
    # pylint: disable=import-outside-toplevel
    from ansible_collections.xen.pci.plugins.module_utils._engine import execute
    from ansible_collections.xen.pci.plugins.module_utils._steps import attach_steps, detach_steps
    make_assignable = params.get("make_assignable", False)
    force = params.get("force", False)
    for dp in the_plan.domains:
        dom = host.domains[dp.domid]
        steps = detach_steps(host, dom, dp.detach, force, dp.stray)
        execute(ctx, steps, domain_key(dom.domid), _meta("detach", dom))
    for dp in the_plan.domains:
        dom = host.domains[dp.domid]
        steps = attach_steps(host, dom, dp.attach, platform, make_assignable)
        execute(ctx, steps, domain_key(dom.domid), _meta("attach", dom))


def _meta(op, dom):
    return {"op": op, "domid": dom.domid, "uuid": dom.uuid, "label": dom.label()}


def _outcome(ctx, platform, the_plan, after, domids):
    return {
        "changed": True,
        "actions": list(ctx.report.actions),
        "domains": domain_summary(after, domids),
        "recovered": list(ctx.report.recovered),
        "interrupted": [j.summary() for j in after.journals],
        "left": list(ctx.report.left),
        "devices": dict(ctx.report.devices),
        "reset_failed": list(ctx.report.reset_failed),
        "waited": round(ctx.report.waited, 3),
        "warnings_detail": list(ctx.report.warnings) + untrusted_warnings(platform.xs),
    }


def _mismatch(the_plan, after):
    """Where the host, read back, is not what the plan said it would be."""
    out = []
    for dp in the_plan.domains:
        dom = after.domains.get(dp.domid)
        have = sorted(d.bdf for d in dom.devices) if dom is not None else []
        want = sorted(describe_bdf(b) for b in dp.after)
        if have != want:
            out.append("%s with %s, not %s" % (dp.label, ", ".join(have) or "no device", ", ".join(want) or "no device"))
    return out


def _failed(ctx, platform, budget, exc, the_plan, before, result):
    """The error of a failed request, with the host as read back."""
    domids = [d.domid for d in the_plan.domains]
    # A deadline can run out where no step names the guest (the re-read under
    # the locks, the journal's removal): say which guests the request was for.
    labels = [d.label for d in the_plan.domains]
    prefix = "%s: " % ", ".join(labels) if labels and not any(label in exc.msg for label in labels) else ""
    try:
        if not platform.xs.connected:
            platform.xs.reconnect(budget.final())
        after = read_host(platform.xs, budget.final(), _with_stubdoms(ctx.host, domids))
    except XenPciError as again:
        return with_context(exc, prefix, "; the host could not be read back (%s)" % again.msg, changed=True,
                            actions=list(ctx.report.actions), left=list(ctx.report.left) or None)
    now = {d: [x.bdf for x in after.domains[d].devices] if d in after.domains else [] for d in domids}
    changed = bool(exc.details.get("changed")) or any(sorted(now[d]) != sorted(before.get(d, [])) for d in domids) \
        or bool(ctx.report.left)
    return with_context(exc, prefix, changed=changed, actions=list(ctx.report.actions), left=list(ctx.report.left) or None,
                        domains=domain_summary(after, domids), recovered=list(ctx.report.recovered) or None,
                        interrupted=[j.summary() for j in after.journals] or None,
                        warnings_detail=list(ctx.report.warnings) + untrusted_warnings(platform.xs),
                        reset_failed=list(ctx.report.reset_failed) or None,
                        reattached=result["reattached"] or None)

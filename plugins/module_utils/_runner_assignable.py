# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runner of xen.pci.assignable: the devices bound to pciback (the
pool), given in (present) or taken back out (absent).

The same pipeline as the passthrough runner: validate the input, read the
host, check every device (exists, may be taken from its driver, is not
attached to a guest, its name is free) before the first write, then under
the host's pool lock read again, recover what a killed request left,
execute the steps with their journal, and report the devices as read back.
"""

from __future__ import annotations

import os
import posixpath

from ansible_collections.xen.pci.plugins.module_utils._assignable import (
    device_status, plan_add, plan_remove, pool_view, predict_add, predict_remove)
from ansible_collections.xen.pci.plugins.module_utils._bdf import Bdf, PciSpec
from ansible_collections.xen.pci.plugins.module_utils._bootsetup import SETUPS, apply_boot, plan_boot, running_hide
from ansible_collections.xen.pci.plugins.module_utils._budget import Budget
from ansible_collections.xen.pci.plugins.module_utils._engine import Context, execute
from ansible_collections.xen.pci.plugins.module_utils._errors import RefusedError, SpecError, XenPciError, with_context
from ansible_collections.xen.pci.plugins.module_utils._host_options import platform_from
from ansible_collections.xen.pci.plugins.module_utils._journal import POOL_KEY
from ansible_collections.xen.pci.plugins.module_utils._recovery import recover_journals
from ansible_collections.xen.pci.plugins.module_utils._state import read_host, untrusted_warnings
from ansible_collections.xen.pci.plugins.module_utils._steps_device import PCIBACK as PCIBACK_DRIVER
from ansible_collections.xen.pci.plugins.module_utils._steps_device import GiveBack, Seize, SetName
from ansible_collections.xen.pci.plugins.module_utils._selectors import is_selector, parse_selector
from ansible_collections.xen.pci.plugins.module_utils._validate import (
    Problem, check_bool, check_reset_policy, common_options, has_selectors, pool_entry_problem, raise_problems,
    select_devices)

NAMES_MODES = ("keep", "exact")
POOL_KEYS = ("name",)
STATES = ("present", "absent")


def parse_pool_devices(devices, problems=None):
    """``devices`` (BDF strings or {bdf, name} dicts) -> [(bdf or None, name or None)].

    Addresses are normalised; duplicates (same address or same name) are
    refused. With ``problems`` (a list) every problem is appended there;
    without, the first is raised."""
    collect = problems is not None
    problems = problems if collect else []
    out = []
    seen = {}
    if not isinstance(devices, list):
        problems.append(Problem("devices must be a list of PCI addresses or {bdf, name} mappings, got %s %r" % (
            "null" if devices is None else type(devices).__name__, devices), "devices"))
        devices = []
    for index, item in enumerate(devices):
        where = "devices[%d]" % index
        bdf = name = None
        if is_selector(item):
            try:
                parse_selector(item, POOL_KEYS)     # resolved on the host (_select)
            except SpecError as exc:
                problems.append(Problem("%s: %s" % (where, exc.msg), where, device=str(item)[:64]))
            continue
        if isinstance(item, str):
            bdf = item
        elif isinstance(item, dict):
            unknown = sorted(str(k) for k in item if k not in ("bdf", "name"))
            if unknown:
                problems.append(Problem("%s: unknown key(s) %s (known: bdf, name)" % (where, ", ".join(unknown)), where))
                continue
            bdf, name = item.get("bdf"), item.get("name")
            if bdf is None and name is None:
                problems.append(Problem("%s: give bdf, name or both" % where, where))
                continue
        else:
            problems.append(Problem("%s: expected a PCI address, a dict with bdf and/or name, or a select, got %s %r" % (
                where, type(item).__name__, item), where, device=repr(item)[:64]))
            continue
        try:
            if bdf is not None:
                bdf = str(Bdf.parse(bdf))
            if name is not None:
                name = PciSpec(name=name).name   # the spec layer's rules for names
        except SpecError as exc:
            problems.append(Problem("%s: %s" % (where, exc.msg), where, device=str(item)[:64]))
            continue
        clash = False
        for key in (("bdf", bdf), ("name", name)):
            if key[1] is None:
                continue
            if key in seen:
                problems.append(Problem("%s: %s %s is already given by device #%d" % (where, key[0], key[1], seen[key]),
                                        where, device=bdf or name))
                clash = True
            seen.setdefault(key, index)
        if not clash:
            out.append((bdf, name))
    if not collect:
        raise_problems(problems)
    return out


def _input(params):
    problems = []
    common_options(params, problems)
    if params.get("state") not in STATES:
        problems.append(Problem("state must be present or absent, got %r" % (params.get("state"),), "state"))
    if params.get("names", "keep") not in NAMES_MODES:
        problems.append(Problem("names must be keep or exact, got %r" % (params.get("names"),), "names"))
    for name in ("rebind", "take_from_driver", "persistent", "backup"):
        check_bool(params, name, problems)
    check_reset_policy(params, problems)
    if params.get("boot_setup", "auto") not in SETUPS:
        problems.append(Problem("boot_setup must be one of %s, got %r" % (", ".join(SETUPS), params.get("boot_setup")),
                                "boot_setup"))
    devices = params.get("devices")
    if devices is None and params.get("sriov") is None:
        problems.append(Problem("devices must be given (a list of PCI addresses, {bdf, name} mappings or selectors), "
                                "unless sriov is", "devices"))
    wanted = parse_pool_devices([] if devices is None else devices, problems)
    sriov = []
    if params.get("sriov") is not None:
        # Imported only by a task that asks for SR-IOV (a module's imports are its start-up time).
        from ansible_collections.xen.pci.plugins.module_utils._sriov import parse_sriov  # pylint: disable=import-outside-toplevel
        sriov = parse_sriov(params.get("sriov"), problems, params.get("state"))
    if sriov and params.get("persistent"):
        problems.append(Problem("persistent cannot be combined with sriov: virtual functions exist only once their "
                                "physical function's driver created them, after every boot; hide them with a task that "
                                "runs after that, without persistent", "persistent"))
    raise_problems(problems)
    return wanted, sriov


def _prepare(platform, host, params, wanted, sriov):
    """The SR-IOV plans and the devices the entries stand for, planned
    together: making devices assignable selects among the VFs the plans
    create; giving them back lets the plans remove the VFs given back."""
    if not sriov:
        return _select(platform.sysfs, params, wanted) + ([], [])
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.xen.pci.plugins.module_utils._sriov import PlannedSysfs, future_vfs, gone_vfs, plan_sriov, resolve_pfs
    problems = []
    resolved = resolve_pfs(platform.sysfs, sriov, problems)
    if params["state"] == "present":
        plans, more = plan_sriov(platform.sysfs, host, resolved, "present",
                                 take_from_driver=params.get("take_from_driver", False))
        view = PlannedSysfs(platform.sysfs, plans) if future_vfs(plans) or gone_vfs(plans) else platform.sysfs
        wanted, selected = _select(view, params, wanted)
        wanted = _with_pooled(wanted, [vf for p in plans if p["pool"] for vf in p["vfs_after"]])
    else:
        wanted, selected = _select(platform.sysfs, params, wanted)
        plans, more = plan_sriov(platform.sysfs, host, resolved, "absent", {bdf for bdf, _name in wanted if bdf},
                                 params.get("take_from_driver", False))
        wanted = _with_pooled(wanted, [vf for p in plans if p["pool"] for vf in p["vfs_now"]])
    return wanted, selected, plans, problems + more


def _with_pooled(wanted, vfs):
    """``wanted`` and the VFs of ``pool`` entries (those not listed already)."""
    listed = {bdf for bdf, _name in wanted}
    return wanted + [(vf, None) for vf in vfs if vf not in listed]


def _resolve(host, wanted, state, problems):
    """Give every entry an address; a name alone must be known (except when removing)."""
    out = []
    for bdf, name in wanted:
        if bdf is None:
            try:
                bdf = host.bdf_for_name(name)
            except SpecError as exc:
                if state != "absent":
                    problems.append(Problem(exc.msg, "devices", device="name=%s" % name))
                continue    # removing: nothing carries that name, nothing to give back
        out.append((bdf, name))
    return out


def _plan(platform, host, wanted, params, sriov_plans=(), problems=None):
    """Statuses, steps and predictions of every device; every refusal at once."""
    state = params["state"]
    rebind = params.get("rebind", True)
    clear_name = params.get("names", "keep") == "exact"
    take = params.get("take_from_driver", False)
    problems = list(problems or [])
    future, gone = _changes(sriov_plans)
    resolved = _resolve(host, wanted, state, problems)
    if state == "present":
        for bdf, name in resolved:
            if name is None:
                continue
            for other, rec in host.libxl_pci.items():
                if other != bdf and rec.get("name") == name:
                    problems.append(Problem("the name %r is already given to %s; rename or forget it there first" % (
                        name, other), "devices", device=bdf, kind=RefusedError))
    todo, before, after, warnings, steps = [], {}, {}, [], []
    readiness = {}
    for bdf, name in resolved:
        if state == "present" and bdf in gone and bdf not in future:
            problems.append(Problem("%s is a virtual function that sriov removes (its physical function's VFs are "
                                    "recreated); it cannot be made assignable by the same task" % bdf, "devices",
                                    device=bdf, kind=RefusedError))
            continue
        status = device_status(platform, host, bdf)
        if state == "present" and bdf in future:
            status = dict(status, exists=True, driver=None)     # created, with no driver yet, by a step before
        try:
            if state == "present":
                actions = plan_add(status, name, take, clear_name)
                predicted = predict_add(status, name, clear_name)
            else:
                actions = plan_remove(status, rebind)
                predicted = predict_remove(status, rebind)
        except XenPciError as exc:
            problems.append(Problem(exc.msg, "devices", device=bdf, kind=type(exc), details=exc.details))
            continue
        if state == "absent" and actions and rebind and status["driver"] == "pciback" and not status["driver_path"]:
            warnings.append("%s had no dom0 driver before it was made assignable (no driver_path is remembered); "
                            "it is left bound to no driver" % bdf)
        if state == "present" and actions and status["driver"] != "pciback" and bdf not in future:
            problem = pool_entry_problem(platform, bdf, params.get("reset", "best_effort"), warnings, readiness)
            if problem:
                problems.append(problem)
                continue
        before[bdf] = pool_view(status)
        after[bdf] = predicted
        if actions:
            todo.append(actions)
            if bdf in future:
                steps.append(_step_sriov("SeizeVf", bdf=bdf, pf=future[bdf], reset=params.get("reset", "best_effort"),
                                         label=None))
                steps += _steps(platform, dict(status, driver=PCIBACK_DRIVER), state, name, rebind, clear_name)
            else:
                steps += _steps(platform, status, state, name, rebind, clear_name)
    boot = None
    try:
        boot = _plan_boot(platform, host, resolved, params)
    except (RefusedError, SpecError) as exc:    # the boot setup's refusals join the others
        details = dict(exc.details)
        problems.append(Problem(exc.msg, details.pop("input", None) or "persistent", device=details.pop("device", None),
                                kind=type(exc), details=details))
    raise_problems(problems)
    if sriov_plans:
        before["sriov"] = {p["pf"]: p["old"] for p in sriov_plans}
        after["sriov"] = {p["pf"]: p["new"] for p in sriov_plans}
    numvfs = [_step_sriov("SetNumVfs", pf=p["pf"], old=p["old"], new=p["new"], vfs=p["vfs_after"], vfs_now=p["vfs_now"])
              for p in sriov_plans if p["old"] != p["new"]]
    todo += [[s.describe()] for s in numvfs]
    # Present: the VFs exist before they are seized; absent: they are given back before they go.
    steps = numvfs + steps if state == "present" else steps + numvfs
    return resolved, todo, before, after, warnings, steps, boot


def _changes(sriov_plans):
    """({vf: pf} created, {vf} removed) by the SR-IOV plans."""
    if not any(p["old"] != p["new"] for p in sriov_plans):
        return {}, set()
    from ansible_collections.xen.pci.plugins.module_utils._sriov import future_vfs, gone_vfs  # pylint: disable=import-outside-toplevel
    return future_vfs(sriov_plans), gone_vfs(sriov_plans)


def _step_sriov(kind, **data):
    from ansible_collections.xen.pci.plugins.module_utils import _steps_sriov  # pylint: disable=import-outside-toplevel
    return getattr(_steps_sriov, kind)(**data)


def _sriov_result(platform, plans, check_mode):
    from ansible_collections.xen.pci.plugins.module_utils._sriov import sriov_prediction, sriov_report  # pylint: disable=import-outside-toplevel
    return sriov_prediction(plans) if check_mode else sriov_report(platform.sysfs, plans)


def _steps(platform, status, state, name, rebind, clear_name):
    bdf = status["bdf"]
    out = []
    if state == "present":
        if status["driver"] != "pciback":
            out.append(Seize(bdf=bdf, driver=status["driver"],
                             driver_path=platform.sysfs.driver_path(bdf) if status["driver"] else None,
                             domid=None, label=None))
        if name is not None and status["name"] != name:
            out.append(SetName(bdf=bdf, name=name, old=status["name"]))
        elif name is None and clear_name and status["name"] is not None:
            out.append(SetName(bdf=bdf, name=None, old=status["name"]))
        return out
    if status["driver"] == "pciback" or status["in_slots"]:
        out.append(GiveBack(bdf=bdf, rebind=rebind, driver_path=status["driver_path"], driver=status["driver"]))
    if status["name"] is not None:
        out.append(SetName(bdf=bdf, name=None, old=status["name"]))
    return out


def _select(sysfs, params, wanted):
    """Selector entries -> the devices they choose (those in the pool
    first): (wanted, [{entry, select, count, bdfs}])."""
    devices = params.get("devices") or []
    if not has_selectors({None: devices}):
        return wanted, []
    # Giving back: a count: all that matches nothing has nothing to give back.
    concrete, selected, problems = select_devices(sysfs, {None: devices}, lambda _ref: None,
                                                  lambda _bdf: None, "devices", POOL_KEYS,
                                                  none_is_empty=params["state"] == "absent")
    raise_problems(problems)
    return parse_pool_devices(concrete[None]), selected.get(None, [])


def _driver_modules(platform, host, resolved, state):
    """Kernel modules of the dom0 drivers of the devices to hide (for modprobe softdeps)."""
    out = set()
    if state != "present":
        return out
    for bdf, _name in resolved:
        if not platform.sysfs.exists(bdf):
            continue
        driver = platform.sysfs.driver_name(bdf)
        if driver == "pciback":
            driver = posixpath.basename(host.libxl_pci.get(bdf, {}).get("driver_path") or "") or None
        if driver:
            link = os.path.join(platform.sysfs.root, "bus/pci/drivers", driver, "module")
            out.add(os.path.basename(os.readlink(link)) if os.path.islink(link) else driver)
    return out


def _plan_boot(platform, host, resolved, params):
    if not params.get("persistent"):
        return None
    return plan_boot(params, [bdf for bdf, _name in resolved], params["state"],
                     _driver_modules(platform, host, resolved, params["state"]))


def _boot_result(result, boot, params, applied, bdfs):
    """The boot-setup fields of the result; ``applied`` is what apply_boot reported (None in check mode)."""
    if boot is None:
        return
    root = params.get("boot_root") or "/"
    running = sorted(running_hide(root))
    result["changed"] = result["changed"] or boot["changed"]
    result["diff"].setdefault("before", {})["boot_setup"] = {boot["path"]: boot["before"] or ""}
    result["diff"].setdefault("after", {})["boot_setup"] = {boot["path"]: boot["after"] or ""}
    if boot["changed"]:
        result["actions"].append("%s %s" % ("remove" if boot["after"] is None else "write", boot["path"]))
    result["boot_setup"] = applied or {"setup": boot["setup"], "pciback": boot["pciback"], "files": [boot["path"]],
                                       "commands": []}
    result["boot_setup"]["hidden_after_reboot"] = boot["after_reboot"]
    result["boot_setup"]["hidden_now"] = running
    # Only the task's devices count: another device hidden by hand now and
    # not at the next boot is no reason to reboot for this task.
    now = {i.lower() if i.count(":") == 2 else "0000:" + i.lower() for i in running}
    later = set(boot["after_reboot"])
    result["reboot_required"] = any((bdf in now) != (bdf in later) for bdf in bdfs)


def _finish_boot(result, platform, host, resolved, params, boot, run_command):
    if boot is None:
        return
    if run_command is None:
        raise XenPciError("persistent needs a way to run update-grub / update-initramfs (run_command)")
    applied = apply_boot(boot, params, run_command)
    # Read back: what the files say now, not what we meant to write.
    _boot_result(result, _plan_boot(platform, host, resolved, params), params, applied,
                 [bdf for bdf, _name in resolved])
    result["changed"] = result["changed"] or boot["changed"]
    if boot["changed"]:
        result["actions"].append("%s %s" % ("remove" if boot["after"] is None else "write", boot["path"]))
        result["diff"]["before"]["boot_setup"] = {boot["path"]: boot["before"] or ""}
        result["actions"] += ["run %s (rc %d)" % (" ".join(c["cmd"]), c["rc"]) for c in applied["commands"]]


def run_assignable(params, check_mode=False, platform=None, hook=None, run_command=None):
    """Bring the listed devices into (present) or out of (absent) the pool;
    with ``persistent``, also the boot setup that hides them at boot.

    ``run_command(argv) -> (rc, stdout, stderr)`` runs update-grub and
    update-initramfs (the module passes AnsibleModule.run_command); it
    raises OSError when the command cannot be started."""
    wanted, sriov = _input(params)
    budget = Budget(params["timeout"], "xen.pci.assignable")
    platform = platform or platform_from(params)
    if platform.sysfs is None:
        raise SpecError("xen.pci.assignable needs sysfs (sysfs_root)", input="sysfs_root")
    ctx = Context(platform, budget, hook=hook)
    host = read_host(platform.xs, budget.work)
    # Every refusal (SR-IOV's, the pool's, the reset policy's, the boot
    # setup's) before any write; the boot setup hides the addresses the
    # selectors chose too. A request killed half-way left the host between
    # two states: what it refuses then is decided once it is rolled back.
    deferred = False
    try:
        chosen, selected, plans, problems = _prepare(platform, host, params, wanted, sriov)
        resolved, todo, before, after, warnings, steps, boot = _plan(platform, host, chosen, params, plans, problems)
    except XenPciError:
        if check_mode or not host.journals:
            raise
        deferred = True
        selected, plans, resolved, todo, before, after, warnings, steps, boot = [], [], [], [], {}, {}, [], [], None
    result = {
        "selected": selected,
        "changed": bool(todo),
        "actions": [s.describe() for s in steps],
        "diff": {"before": before, "after": after},
        "warnings_detail": warnings + untrusted_warnings(platform.xs),
        "interrupted": [j.summary() for j in host.journals],
        "recovered": [],
    }
    if check_mode or (not todo and not host.journals):
        result["devices"] = [device_status(platform, host, bdf) for bdf, _name in resolved]
        if sriov:
            result["sriov"] = _sriov_result(platform, plans, check_mode)
        if check_mode:
            _boot_result(result, boot, params, None, [bdf for bdf, _name in resolved])
        else:
            _finish_boot(result, platform, host, resolved, params, boot, run_command)
        return result
    try:
        with platform.pool_lock(budget.work):
            host = read_host(platform.xs, budget.work)
            if host.journals:
                recover_journals(ctx, host, required={"pool"})
                host = read_host(platform.xs, budget.work)
            chosen, selected, plans, problems = _prepare(platform, host, params, wanted, sriov)
            planned = _plan(platform, host, chosen, params, plans, problems)
            resolved, todo, before, after, warnings, steps, replanned_boot = planned
            if deferred:
                boot = replanned_boot
            execute(ctx, steps, POOL_KEY, {"op": "assignable %s" % params["state"], "label": "the assignable pool"})
    except XenPciError as exc:
        raise with_context(exc, actions=list(ctx.report.actions), changed=bool(ctx.report.actions or ctx.report.left),
                           left=list(ctx.report.left) or None, recovered=list(ctx.report.recovered) or None) from exc
    host = read_host(platform.xs, budget.final())
    result.update(selected=selected, changed=bool(todo) or bool(ctx.report.recovered), actions=list(ctx.report.actions),
                  diff={"before": before, "after": after}, recovered=list(ctx.report.recovered),
                  interrupted=[j.summary() for j in host.journals],
                  warnings_detail=warnings + list(ctx.report.warnings) + untrusted_warnings(platform.xs))
    result["devices"] = [device_status(platform, host, bdf) for bdf, _name in resolved]
    if sriov:
        result["sriov"] = _sriov_result(platform, plans, False)
    _finish_boot(result, platform, host, resolved, params, boot, run_command)
    return result

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runner of xen.pci.assignable: read, check every device, then act.

Every device of the request is checked (exists, may be taken from its
driver, is not attached to a guest, its name is free) before the first
write, so a refused request changes nothing.
"""

from __future__ import annotations

from ansible_collections.xen.pci.plugins.module_utils._assignable import (
    device_status, give_back, make_assignable, plan_add, plan_remove, pool_view, predict_add, predict_remove)
from ansible_collections.xen.pci.plugins.module_utils._bdf import Bdf, PciSpec
from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline
from ansible_collections.xen.pci.plugins.module_utils._errors import RefusedError, SpecError, XenPciError
from ansible_collections.xen.pci.plugins.module_utils._module import platform_from
from ansible_collections.xen.pci.plugins.module_utils._state import read_host

NAMES_MODES = ("keep", "exact")


def parse_pool_devices(devices):
    """``devices`` (BDF strings or {bdf, name} dicts) -> [(bdf or None, name or None)].

    Addresses are normalised; duplicates (same address or same name) are refused."""
    out = []
    seen = {}
    for index, item in enumerate(devices or []):
        where = "device #%d" % index
        if isinstance(item, str):
            bdf, name = item, None
        elif isinstance(item, dict):
            unknown = sorted(set(item) - {"bdf", "name"})
            if unknown:
                raise SpecError("%s: unknown key(s) %s (known: bdf, name)" % (where, ", ".join(unknown)), index=index)
            bdf, name = item.get("bdf"), item.get("name")
            if bdf is None and name is None:
                raise SpecError("%s: give bdf, name or both" % where, index=index)
        else:
            raise SpecError("%s: expected a PCI address or a dict with bdf and/or name, got %r" % (where, item), index=index)
        try:
            if bdf is not None:
                bdf = str(Bdf.parse(bdf))
            if name is not None:
                name = PciSpec(name=name).name   # the spec layer's rules for names
        except SpecError as exc:
            raise SpecError("%s: %s" % (where, exc.msg), index=index, **exc.details) from None
        for key in (("bdf", bdf), ("name", name)):
            if key[1] is None:
                continue
            if key in seen:
                raise SpecError("%s: %s %s is already given by device #%d" % (where, key[0], key[1], seen[key]), index=index)
            seen[key] = index
        out.append((bdf, name))
    return out


def _resolve(host, wanted, state):
    """Give every entry an address; a name alone must be known (except when removing)."""
    out = []
    for bdf, name in wanted:
        if bdf is None:
            try:
                bdf = host.bdf_for_name(name)
            except SpecError:
                if state == "absent":
                    continue    # nothing carries that name: nothing to give back
                raise
        out.append((bdf, name))
    return out


def _check_names(host, resolved):
    for bdf, name in resolved:
        if name is None:
            continue
        for other, rec in host.libxl_pci.items():
            if other != bdf and rec.get("name") == name:
                raise RefusedError("the name %r is already given to %s; rename or forget it there first" % (name, other),
                                   device=bdf, name=name, holder_device=other)


def run_assignable(params, check_mode=False, platform=None):
    """Bring the listed devices into (present) or out of (absent) the pool."""
    platform = platform or platform_from(params)
    if platform.sysfs is None:
        raise SpecError("xen.pci.assignable needs sysfs (sysfs_root)")
    state = params["state"]
    rebind = params.get("rebind", True)
    clear_name = params.get("names", "keep") == "exact"
    take = params.get("take_from_driver", False)
    deadline = Deadline(params["timeout"], "xen.pci.assignable")
    host = read_host(platform.xs, deadline)
    resolved = _resolve(host, parse_pool_devices(params["devices"]), state)
    if state == "present":
        _check_names(host, resolved)

    # Decide everything before the first write.
    todo = []
    before, after, warnings = {}, {}, []
    for bdf, name in resolved:
        status = device_status(platform, host, bdf)
        if state == "present":
            steps = plan_add(status, name, take, clear_name)
            predicted = predict_add(status, name, clear_name)
        else:
            steps = plan_remove(status, rebind)
            predicted = predict_remove(status, rebind)
            if steps and rebind and status["driver"] == "pciback" and not status["driver_path"]:
                warnings.append("%s had no dom0 driver before it was made assignable (no driver_path is remembered); "
                                "it is left bound to no driver" % bdf)
        before[bdf] = pool_view(status)
        after[bdf] = predicted
        if steps:
            todo.append((status, name, steps))

    result = {
        "changed": bool(todo),
        "actions": [step for _status, _name, steps in todo for step in steps],
        "diff": {"before": before, "after": after},
        "warnings_detail": warnings,
    }
    if check_mode or not todo:
        result["devices"] = [device_status(platform, host, bdf) for bdf, _name in resolved]
        return result

    done = []
    try:
        for status, name, _steps in todo:
            if state == "present":
                done += make_assignable(platform, status, name, take, clear_name)
            else:
                done += give_back(platform, status, rebind)
    except XenPciError as exc:
        exc.details["actions"] = done
        raise
    result["actions"] = done
    host = read_host(platform.xs, deadline)
    result["devices"] = [device_status(platform, host, bdf) for bdf, _name in resolved]
    return result

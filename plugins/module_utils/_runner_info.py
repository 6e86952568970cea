# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runner of xen.pci.info: the host's PCI inventory, every guest's
devices, and the requests a killed run left unfinished (reported, not
acted on: info changes nothing)."""

from __future__ import annotations

from ansible_collections.xen.pci.plugins.module_utils._bootsetup import after_reboot
from ansible_collections.xen.pci.plugins.module_utils._budget import Budget
from ansible_collections.xen.pci.plugins.module_utils._errors import BootSetupError
from ansible_collections.xen.pci.plugins.module_utils._host_options import platform_from
from ansible_collections.xen.pci.plugins.module_utils._state import read_host, untrusted_warnings
from ansible_collections.xen.pci.plugins.module_utils._validate import Problem, common_options, raise_problems

# readiness: full, and each device's reset and assignability, and the
# host's readiness (reads the config space of every device: not the fleet path).
DETAILS = ("full", "summary", "readiness")


def _device_readiness(sysfs, bdf, listed, readiness):
    """detail=readiness: a device's reset and whether this host can assign it."""
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.xen.pci.plugins.module_utils._readiness import assign_refusal, device_facts
    from ansible_collections.xen.pci.plugins.module_utils._reset import reset_report  # pylint: disable=import-outside-toplevel
    facts = device_facts(sysfs, bdf, listed)
    facts["refused"] = assign_refusal(sysfs, bdf, readiness)
    return {"reset": reset_report(sysfs, bdf), "assignability": facts}


def run_info(params, platform=None):
    """Inventory of the host's PCI devices and every domain's assignments."""
    problems = []
    common_options(params, problems)
    if params.get("detail", "full") not in DETAILS:
        problems.append(Problem("detail must be one of %s, got %r" % (", ".join(DETAILS), params.get("detail")), "detail"))
    raise_problems(problems)
    budget = Budget(params["timeout"], "xen.pci.info")
    platform = platform or platform_from(params)
    host = read_host(platform.xs, budget.work)
    devices = []
    sysfs = platform.sysfs
    summary = params.get("detail", "full") == "summary"
    readiness = None
    if params.get("detail") == "readiness":
        # Imported here: only detail=readiness reads the host's readiness and each device's reset.
        from ansible_collections.xen.pci.plugins.module_utils._readiness import host_readiness  # pylint: disable=import-outside-toplevel
        readiness = host_readiness(platform)
    # A few small files, read once; the summary path skips them.  A boot
    # setup that cannot be read costs only this answer (None), not the read.
    boot_warnings = []
    try:
        hidden_at_boot = set() if summary else set(after_reboot(params))
    except BootSetupError as exc:
        hidden_at_boot = None
        boot_warnings.append("assignable_after_reboot is unknown: %s" % exc)
    if sysfs is not None:
        slots = set(sysfs.pciback_slots()) if sysfs.pciback_loaded() else set()
        listed = sysfs.devices()
        # summary: the driver of each device (one link read), no attributes.
        drivers = sysfs.drivers(listed) if summary else {}
        for bdf in listed:
            dev = {"bdf": bdf, "driver": drivers[bdf]} if summary else sysfs.device(bdf).to_dict()
            rec = host.libxl_pci.get(bdf, {})
            holder = host.holder_of(bdf)
            dev.update({
                "pciback_slot": bdf in slots,
                "assignable": dev["driver"] == "pciback" and holder is None,
                "assigned_to": holder,
                "assigned_to_name": host.domains[holder].name if holder in host.domains else None,
                "name": rec.get("name"),
                "remembered_driver": rec.get("driver_path"),
            })
            if readiness is not None:
                dev.update(_device_readiness(sysfs, bdf, listed, readiness))
            dev["assignable_now"] = dev["assignable"]
            if not summary:
                dev["assignable_after_reboot"] = None if hidden_at_boot is None else bdf in hidden_at_boot
            devices.append(dev)
    domains = {}
    for dom in host.domains.values():
        if dom.domid == 0:
            continue
        domains[dom.name or str(dom.domid)] = {
            "domid": dom.domid, "type": dom.type, "stubdom": dom.stubdom_id, "stubdom_of": dom.target,
            "device_model_state": dom.dm_state,
            "backend": dom.backend.as_dict() if dom.backend else None,
            "devices": [d.as_dict() for d in dom.devices]}
    warnings = boot_warnings + untrusted_warnings(platform.xs)
    warnings += ["a request was interrupted and is unfinished (journal %s, %s of %s); the next passthrough or assignable "
                 "run finishes or rolls it back" % (j.path, (j.meta or {}).get("op"), (j.meta or {}).get("label"))
                 for j in host.journals]
    out = {"changed": False, "devices": devices, "domains": domains,
           "assignable": sorted(d["bdf"] for d in devices if d["assignable"]),
           "pciback_loaded": sysfs.pciback_loaded() if sysfs is not None else None,
           "interrupted": [j.summary() for j in host.journals],
           "warnings_detail": warnings}
    if readiness is not None:
        out["readiness"] = readiness
    return out

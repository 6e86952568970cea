# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the modules share: the host options and the request runners.

Kept free of Ansible imports, like the rest of the core, so the runners can
be driven by tests and benchmarks directly; the modules only declare their
arguments, call a runner and turn XenPciError into fail_json.
"""

from __future__ import annotations

from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline
from ansible_collections.xen.pci.plugins.module_utils._errors import XenPciError
from ansible_collections.xen.pci.plugins.module_utils._hotplug import AttachItem, Hotplug, check_devices, check_domain, connect
from ansible_collections.xen.pci.plugins.module_utils._plan import plan
from ansible_collections.xen.pci.plugins.module_utils._state import read_host

# The options of doc_fragments/host.py, as an argument_spec fragment.
HOST_ARGS = dict(
    xenstore_path=dict(type="path"),
    xenbus=dict(type="bool", default=False),
    sysfs_root=dict(type="path", default="/sys"),
    hypervisor=dict(type="str", default="libxenctrl"),
    userdata_dir=dict(type="path", default="/var/lib/xen"),
    qmp_dir=dict(type="path", default="/var/run/xen"),
    timeout=dict(type="float", default=60.0),
)


def platform_from(params):
    return connect(xenstore_path=params["xenstore_path"], xenbus=params["xenbus"], sysfs_root=params["sysfs_root"],
                   hypervisor=params["hypervisor"], userdata_dir=params["userdata_dir"], timeout=params["timeout"],
                   qmp_dir=params["qmp_dir"])


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


def run_passthrough(params, desired, check_mode=False, platform=None):
    """Read, plan, and (unless checking) execute; returns the module result."""
    platform = platform or platform_from(params)
    deadline = Deadline(params["timeout"], "xen.pci.passthrough")
    host = read_host(platform.xs, deadline)
    present = platform.sysfs.devices() if platform.sysfs is not None else []
    the_plan = plan(host, desired, params["state"], present)
    domids = [d.domid for d in the_plan.domains]
    # Every refusal the live state decides (guest type, passthrough disabled,
    # a device held by a driver or another guest) is found here, for every
    # guest of the task, before the first change, and in check mode too.
    released = {b for dp in the_plan.domains for b in dp.detach}
    for dp in the_plan.domains:
        if dp.attach:
            dom = host.domains[dp.domid]
            check_domain(dom, platform)
            check_devices(host, dom, [AttachItem(f) for f in dp.attach], platform, params.get("make_assignable", False),
                          released=released)
    result = {
        "changed": the_plan.changed,
        "actions": the_plan.actions(),
        "diff": the_plan.diff(),
        "reattached": [dict(domain=d.label, **r) for d in the_plan.domains for r in d.reattach],
        "warnings_detail": [],
    }
    if check_mode or not the_plan.changed:
        result["domains"] = domain_summary(host, domids)
        return result

    hotplug = Hotplug(platform, timeout=params["timeout"])
    done = []
    try:
        for dp in the_plan.domains:
            if dp.detach:
                outcome = hotplug.detach(dp.domid, dp.detach, deadline=deadline, force=params.get("force", False))
                done += outcome.report.actions
                result["warnings_detail"] += outcome.report.warnings
        for dp in the_plan.domains:
            if dp.attach:
                outcome = hotplug.attach(dp.domid, [AttachItem(f) for f in dp.attach], deadline=deadline,
                                         make_assignable=params.get("make_assignable", False))
                done += outcome.report.actions
                result["warnings_detail"] += outcome.report.warnings
    except XenPciError as exc:
        exc.details["actions"] = done + exc.details.get("actions", [])
        # Guests handled before the failure did change.
        exc.details["changed"] = bool(done)
        raise
    result["actions"] = done
    result["domains"] = domain_summary(read_host(platform.xs, deadline), domids)
    return result


def run_info(params, platform=None):
    """Inventory of the host's PCI devices and every domain's assignments."""
    platform = platform or platform_from(params)
    deadline = Deadline(params["timeout"], "xen.pci.info")
    host = read_host(platform.xs, deadline)
    devices = []
    if platform.sysfs is not None:
        slots = set(platform.sysfs.pciback_slots()) if platform.sysfs.pciback_loaded() else set()
        for bdf in platform.sysfs.devices():
            dev = platform.sysfs.device(bdf).to_dict()
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
    return {"changed": False, "devices": devices, "domains": domains,
            "assignable": sorted(d["bdf"] for d in devices if d["assignable"]),
            "pciback_loaded": platform.sysfs.pciback_loaded() if platform.sysfs is not None else None}

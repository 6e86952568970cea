# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The assignable pool: devices bound to pciback, ready for guests.

What ``xl pci-assignable-add/-remove`` do, decided
from the observed state rather than from exit codes, so that every call is
idempotent and devices hidden at boot (``xen-pciback.hide``, never
quarantined) are handled like the others.
"""

from __future__ import annotations

import posixpath

from ansible_collections.xen.pci.plugins.module_utils._errors import RefusedError


def device_status(platform, host, bdf):
    """What is true of ``bdf`` now: driver, pool membership, holder, name."""
    sysfs = platform.sysfs
    rec = host.libxl_pci.get(bdf, {})
    holder = host.holder_of(bdf)
    dom = host.domains.get(holder) if holder is not None else None
    holder_name = dom.name if dom is not None else None
    if not sysfs.exists(bdf):
        return {"bdf": bdf, "exists": False, "driver": None, "in_slots": False, "assignable": False, "assigned_to": holder,
                "assigned_to_name": holder_name, "name": rec.get("name"), "driver_path": rec.get("driver_path")}
    driver = sysfs.driver_name(bdf)
    in_slots = bdf in sysfs.pciback_slots() if sysfs.pciback_loaded() else False
    return {"bdf": bdf, "exists": True, "driver": driver, "in_slots": in_slots,
            "assignable": driver == "pciback" and holder is None, "assigned_to": holder,
            "assigned_to_name": holder_name, "name": rec.get("name"), "driver_path": rec.get("driver_path")}


def holder_label(status):
    """``web (domid 3)`` or ``domid 3``: the guest holding a device."""
    domid = status["assigned_to"]
    return "%s (domid %d)" % (status["assigned_to_name"], domid) if status.get("assigned_to_name") else "domid %d" % domid


def pool_view(status):
    """What the assignable module shows of a device in its diff."""
    return {"exists": status["exists"], "driver": status["driver"], "pool": status["driver"] == "pciback",
            "name": status["name"], "remembered_driver": status["driver_path"]}


def predict_add(status, name=None, clear_name=False):
    """``pool_view`` after ``make_assignable`` (what check mode reports)."""
    view = pool_view(status)
    if not status["exists"]:
        return view
    if status["driver"] not in (None, "pciback"):
        view["remembered_driver"] = "/sys/bus/pci/drivers/%s" % status["driver"]
    view["driver"], view["pool"] = "pciback", True
    if name is not None:
        view["name"] = name
    elif clear_name:
        view["name"] = None
    return view


def predict_remove(status, rebind=True):
    """``pool_view`` after ``give_back``."""
    view = pool_view(status)
    if not status["exists"]:
        return view
    if status["driver"] == "pciback":
        view["driver"], view["pool"] = None, False
        if rebind and status["driver_path"]:
            view["driver"] = posixpath.basename(status["driver_path"])
            view["remembered_driver"] = None
    view["name"] = None
    return view


def plan_add(status, name=None, take_from_driver=False, clear_name=False):
    """Steps to make a device assignable (empty when it already is).

    ``name`` sets the libxl name; without one, ``clear_name`` forgets the
    current name (what ``xl pci-assignable-add`` without ``-n`` does)."""
    bdf = status["bdf"]
    if not status["exists"]:
        raise RefusedError("PCI device %s does not exist on this host" % bdf, device=bdf)
    steps = []
    driver = status["driver"]
    if driver not in (None, "pciback"):
        if not take_from_driver:
            raise RefusedError("%s is in use by the dom0 driver %s; set take_from_driver to give it to pciback" % (bdf, driver),
                               device=bdf, driver=driver)
        steps.append("remember driver %s and unbind %s from it" % (driver, bdf))
    if driver != "pciback":
        steps.append("bind %s to pciback and quarantine it" % bdf)
    if name is not None and status["name"] != name:
        steps.append("name %s %r" % (bdf, name))
    elif name is None and clear_name and status["name"] is not None:
        steps.append("forget the name of %s" % bdf)
    return steps


def plan_remove(status, rebind=True):
    bdf = status["bdf"]
    if not status["exists"]:
        return []
    if status["assigned_to"] is not None:
        raise RefusedError("%s is attached to %s; detach it before giving it back" % (bdf, holder_label(status)),
                           device=bdf, holder=status["assigned_to"], holder_name=status.get("assigned_to_name"))
    steps = []
    if status["driver"] == "pciback":
        steps.append("take %s out of quarantine and unbind it from pciback" % bdf)
        if rebind and status["driver_path"]:
            steps.append("rebind %s to %s" % (bdf, status["driver_path"]))
    if status["name"] is not None:
        steps.append("forget the name of %s" % bdf)
    return steps

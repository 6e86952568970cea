# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Can a device be reset between guests? What the host says, and a verdict.

Sources, each reported with what it found:

* ``do_flr``: pciback's control file (a distribution patch); libxl writes it
  first when it exists, and it resets any device pciback holds;
* ``reset``: the device's sysfs file, present only when the kernel has a
  reset method for it;
* ``reset_method`` (Linux 5.15+): the kernel's methods, in the order tried;
* ``config``: the configuration space (readable by root): the PCI Express
  capability's FLR bit (Device Capabilities bit 28), the AF capability's
  FLR bit, the PM capability's No_Soft_Reset bit (set: a D3hot->D0
  transition keeps the device's state, so a PM reset does not reset).

The verdict: a device has a usable reset when libxl's reset (do_flr or the
reset file) can be written. Without one, a device keeps its state (DMA
setup, secrets) from one guest to the next.
"""

from __future__ import annotations

import os

POLICIES = ("strict", "best_effort", "none")
DEFAULT_POLICY = "best_effort"

CAP_PM, CAP_EXP, CAP_AF = 0x01, 0x10, 0x13
PM_CTRL_NO_SOFT_RESET = 0x08
EXP_DEVCAP_FLR = 1 << 28
AF_CAP_FLR = 0x02
_CAP_POINTER, _STATUS, _STATUS_CAP_LIST = 0x34, 0x06, 0x10


def config_capabilities(cfg):
    """{'flr': bool, 'af_flr': bool, 'pm': bool or None} from config space
    bytes (None: no PM capability); {} when too short to walk (a non-root
    reader sees 64 bytes)."""
    if len(cfg) < 256 or not cfg[_STATUS] & _STATUS_CAP_LIST:
        return {} if len(cfg) < 256 else {"flr": False, "af_flr": False, "pm": None}
    out = {"flr": False, "af_flr": False, "pm": None}
    at, seen = cfg[_CAP_POINTER] & 0xFC, set()
    while at and at not in seen and at + 8 <= 256:
        seen.add(at)
        cap = cfg[at]
        if cap == CAP_EXP:
            out["flr"] = bool(int.from_bytes(cfg[at + 4:at + 8], "little") & EXP_DEVCAP_FLR)
        elif cap == CAP_AF:
            out["af_flr"] = bool(cfg[at + 3] & AF_CAP_FLR)
        elif cap == CAP_PM:
            out["pm"] = not cfg[at + 4] & PM_CTRL_NO_SOFT_RESET
        at = cfg[at + 1] & 0xFC
    return out


def _read(path, binary=False):
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data if binary else data.decode("ascii", "replace").strip()


def reset_report(sysfs, bdf):
    """What the host offers to reset ``bdf``, and whether it is usable:
    {'usable', 'method' (what a detach writes), 'methods', 'sources', 'why'}."""
    do_flr = os.path.exists(sysfs.pciback_path("do_flr"))
    has_file = os.path.exists(sysfs.dev_path(bdf, "reset"))
    listed = _read(sysfs.dev_path(bdf, "reset_method"))
    cfg = _read(sysfs.dev_path(bdf, "config"), binary=True)
    caps = config_capabilities(cfg) if cfg is not None else {}
    sources = {"do_flr": do_flr, "reset_file": has_file,
               "reset_method": listed.split() if listed is not None else None,
               "config": caps or None}
    methods = list(sources["reset_method"] or [])
    for name in ("flr", "af_flr", "pm"):
        if caps.get(name) and name not in methods:
            methods.append(name)
    method = "do_flr" if do_flr else ("reset" if has_file else None)
    why = None
    if method is None:
        found = []
        if caps:
            found.append("config space: %s" % ", ".join(
                "%s %s" % (name, "yes" if caps.get(name) else "no") for name in ("flr", "af_flr", "pm")))
        why = "%s has no reset: no %s, no %s%s" % (
            bdf, sysfs.logical(sysfs.pciback_path("do_flr")), sysfs.logical(sysfs.dev_path(bdf, "reset")),
            " (%s)" % "; ".join(found) if found else "")
    return {"usable": method is not None, "method": method, "methods": methods, "sources": sources, "why": why}

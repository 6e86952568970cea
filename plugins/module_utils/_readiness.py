# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Can this host pass devices through at all, and can this device be assigned?

Host: Xen's IOMMU state from physinfo (``directio``: ``xl info`` prints
``hvm_directio``/``pv_directio`` in virt_caps only with it; without an
IOMMU Xen refuses every assign_device with EOPNOTSUPP), and xen-pciback in
the dom0 kernel (a loaded module has ``/sys/module/xen_pciback/initstate``,
a built-in one only its ``parameters``; either way the driver directory
exists). Facts the host does not show are "unknown", never guessed.

Device: its header type (config space byte 0x0e, low 7 bits: 0 endpoint,
1 PCI bridge, 2 CardBus bridge; bridges cannot be given to a guest), its
IOMMU group and the other functions of its group and slot (functions of
one slot without FLR share a bus or slot reset).
"""

from __future__ import annotations

import os

from ansible_collections.xen.pci.plugins.module_utils._errors import XenPciError

HEADER_KINDS = {0: "endpoint", 1: "pci_bridge", 2: "cardbus_bridge"}
PHYSCAP_DIRECTIO = 1 << 2
MODULE_DIR = "module/xen_pciback"
NO_IOMMU = ("Xen runs without an IOMMU (virt_caps has no hvm_directio/pv_directio) and refuses every device "
            "assignment; enable VT-d/AMD-Vi in the firmware and do not boot Xen with iommu=0")


def pciback_state(sysfs):
    """``module``, ``builtin`` or ``absent`` (xen-pciback in the dom0 kernel)."""
    if not sysfs.pciback_loaded():
        return "absent"
    return "module" if os.path.exists(sysfs.path(MODULE_DIR, "initstate")) else "builtin"


def host_readiness(platform):
    """{'passthrough_ready': True/False/None, 'reasons', 'iommu', 'virt_caps',
    'pciback', 'pcifront', 'rmrr'}. None: not known (no hypervisor access)."""
    reasons = []
    iommu = virt_caps = None
    xenctrl = None
    try:
        xenctrl = platform.xenctrl
        if xenctrl is not None:
            info = xenctrl.physinfo()
            virt_caps = info["virt_caps"]
            iommu = bool(info["capabilities"] & PHYSCAP_DIRECTIO)
    except XenPciError as exc:
        reasons.append("Xen's physinfo could not be read: %s" % exc.msg)
    if xenctrl is None and not reasons:
        reasons.append("no hypervisor access (hypervisor: none): the IOMMU state is unknown")
    if iommu is False:
        reasons.append(NO_IOMMU)
    pciback = pciback_state(platform.sysfs) if platform.sysfs is not None else None
    if pciback == "absent":
        reasons.append("xen-pciback is not in the dom0 kernel (no /sys/bus/pci/drivers/pciback): load it "
                       "(modprobe xen-pciback)")
    ready = None if iommu is None else (iommu and pciback != "absent")
    return {"passthrough_ready": ready, "reasons": reasons, "iommu": iommu, "virt_caps": virt_caps,
            "pciback": pciback,
            # pcifront is the guest kernel's driver: dom0 cannot see it.
            "pcifront": "unknown (a guest kernel's driver, not visible from dom0)",
            # Shared reserved regions (RMRR) show only in Xen's console log, not read here.
            "rmrr": "unknown (Xen's console log, xl dmesg, is not read)"}


def header_type(sysfs, bdf):
    """Config space byte 0x0e, low 7 bits, or None when unreadable."""
    try:
        with open(sysfs.dev_path(bdf, "config"), "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    return head[0x0E] & 0x7F if len(head) > 0x0E else None


def device_facts(sysfs, bdf, present=None):
    """{'header_type', 'kind', 'endpoint', 'iommu_group', 'group_peers',
    'slot_peers'} of one device."""
    kind = header_type(sysfs, bdf)
    group = sysfs.iommu_group(bdf)
    peers = []
    if group is not None:
        try:
            peers = sorted(n for n in os.listdir(sysfs.path("kernel/iommu_groups", str(group), "devices")) if n != bdf)
        except OSError:
            peers = []
    slot = bdf.rsplit(".", 1)[0]
    listed = present if present is not None else sysfs.devices()
    return {"header_type": kind, "kind": HEADER_KINDS.get(kind, "unknown") if kind is not None else "unknown",
            "endpoint": None if kind is None else kind == 0, "iommu_group": group, "group_peers": peers,
            "slot_peers": [b for b in listed if b != bdf and b.rsplit(".", 1)[0] == slot]}


def assign_refusal(sysfs, bdf, readiness):
    """Why ``bdf`` cannot be assigned on this host, or None."""
    if readiness is not None and readiness.get("iommu") is False:
        return "%s cannot be assigned on this host: %s" % (bdf, NO_IOMMU)
    kind = header_type(sysfs, bdf)
    if kind not in (None, 0):
        return "%s is a %s (config space header type %d), not an endpoint: bridges cannot be given to a guest" % (
            bdf, HEADER_KINDS.get(kind, "bridge").replace("_", " "), kind)
    return None

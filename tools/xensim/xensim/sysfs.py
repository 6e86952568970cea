"""A PCI sysfs tree served over FUSE, with the kernel's driver semantics.

What a Linux 6.1 dom0 shows under ``/sys`` for PCI, limited to what the
toolstack touches:

* ``bus/pci/devices/<bdf>``: symlinks into ``devices/pci<seg>:<bus>/<bdf>``,
  each device directory holding ``vendor``, ``device``, ``subsystem_vendor``,
  ``subsystem_device``, ``class``, ``resource``, ``irq``, ``enable``,
  ``config``, ``reset`` and ``reset_method`` (Linux 5.15+; both only for
  devices that have a reset method), ``label`` (only for devices whose
  firmware names them, scenario ``label:``), and the ``driver``,
  ``iommu_group`` and ``subsystem`` symlinks;
* ``config``: the function's configuration space as bytes, 4096 for PCIe
  (``pcie: true``, the default) and 256 for conventional PCI: a header
  agreeing with vendor/device/revision/class/subsystem and the header type
  (1 for a PCI-to-PCI bridge), the PCI Express capability (PCIe only) with
  its FLR bit, the PM capability with its No_Soft_Reset bit and the AF
  capability, agreeing with the device's reset methods, and, for a device
  with a ``serial:``, the Device Serial Number extended capability at 0x100;
* ``bus/pci/drivers/<name>/`` with ``bind``, ``unbind``, ``new_id``,
  ``remove_id`` and one symlink per bound device; for ``pciback`` (the name
  xen-pciback registers) also ``new_slot``, ``remove_slot``, ``slots``,
  ``permissive``, ``quirks``, ``irq_handlers`` and ``irq_handler_state``,
  as ``drivers/xen/xen-pciback/pci_stub.c`` creates them.  Upstream Linux
  has no ``do_flr`` (a distribution patch does); the simulator leaves it out
  unless ``pciback_do_flr: true`` is set in the scenario;
* ``kernel/iommu_groups/<n>/devices/<bdf>``;
* an SR-IOV physical function (scenario ``sriov:``) has ``sriov_totalvfs``,
  ``sriov_numvfs``, ``sriov_offset``, ``sriov_stride``, ``sriov_vf_device``,
  ``sriov_drivers_autoprobe`` and ``virtfn<i>`` links; its VFs appear and go
  through ``sriov_numvfs`` (drivers/pci/iov.c), each beside the PF with a
  ``physfn`` link, the VF device id and a new IOMMU group;
* a device behind a PCI-to-PCI bridge (scenario ``parent:``) lives in its
  bridge's directory, ``devices/pci0000:00/0000:00:1c.0/0000:01:00.0``, as
  the kernel nests them, and its ``bus/pci/devices`` link resolves there;
* ``module/xen_pciback/``: ``parameters/`` always, ``initstate`` and
  ``refcnt`` only when pciback is a loaded module (``pciback: module``, the
  default), not when it is built into the kernel (``pciback: builtin``).

Semantics follow ``drivers/base/bus.c`` (bind/unbind), ``drivers/pci/
pci-driver.c`` (new_id/remove_id), ``drivers/pci/pci-sysfs.c`` (reset,
enable, resource) and pci_stub.c (slots, permissive, probe that rejects a
device not listed by ``new_slot``), with the same errno values.

A write changes the model under a lock inside the FUSE handler, so it has
taken effect when ``write(2)`` returns, exactly like a sysfs store.  Other
simulator parts are told afterwards: listeners registered with
:meth:`SysfsFS.add_listener` run on the FUSE thread, and
``host.on_sysfs_change(event)`` (if the host has it) runs on the loop.

Fault point ``sysfs.write`` (``host.faults``, or the component's own
``Faults`` when the host has none), asked on the FUSE thread before a store
runs; ctx:

* ``file``: the file written, relative to the sysfs root
  (``bus/pci/drivers/pciback/bind``); a device attribute is named by its
  ``bus/pci/devices/<bdf>/<attr>`` path even though FUSE sees the resolved
  ``devices/pci<seg>:<bus>/<bdf>/<attr>``. Rules match it as a suffix on
  component boundaries (``file="bind"`` or ``"pciback/bind"``), so a whole
  path matches exactly;
* ``bdf``: the BDF written (normalised, ``0000:00:10.0``) when the data is
  one, else the device whose attribute is written, else absent.

Actions: ``error`` (``errno``, a name such as ``EIO``; ``seconds`` to block
that long first): the write fails with it, nothing changes; ``delay``
(``seconds``): the write blocks, then proceeds; ``hang``: the write blocks
until the rule is removed, then proceeds (EIO, nothing changed, if the host
stops first). ``SysfsFS.inject`` is a shorthand kept for older tests.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import signal
import re
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .faults import Faults, wait_removed

log = logging.getLogger(__name__)

PCIBACK = "pciback"
PCI_ANY_ID = 0xFFFFFFFF
# A non-bridge device on a kernel with CONFIG_PCI_IOV (Debian's) prints
# PCI_BRIDGE_RESOURCES = 13 lines: 6 BARs, the ROM, 6 SR-IOV BARs.
RESOURCE_LINES = 13
# What QEMU's emulated devices report; real Xen test hosts run under QEMU.
DEFAULT_SUBSYSTEM = (0x1AF4, 0x1100)

_HEX = r"(?:0[xX])?[0-9a-fA-F]+"
_SLOT_RE = re.compile(
    r"^\s*(?:(?P<dom>%s):)?(?P<bus>%s):(?:(?P<slot>%s)\.(?P<func>%s|\*)|\*\.\*)\s*$" % (_HEX, _HEX, _HEX, _HEX))
_QUIRK_RE = re.compile(
    r"^\s*(?:(?P<dom>%s):)?(?P<bus>%s):(?P<slot>%s)\.(?P<func>%s)-(?P<reg>%s):(?P<size>%s):(?P<mask>%s)\s*$"
    % ((_HEX,) * 7))
_BDF_RE = re.compile(r"^(?:([0-9a-fA-F]{1,4}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$")


class SysfsWriteError(OSError):
    """A store refused, with the errno the kernel returns."""


_DEVICE_ATTR_RE = re.compile(r"^devices/pci[0-9a-f]{4}:[0-9a-f]{2}/([^/]+)/(.+)$")


def _written_file(path: str) -> str:
    """The written file relative to the root, device attributes named as
    the toolstack writes them (bus/pci/devices/<bdf>/<attr>)."""
    rel = path.lstrip("/")
    m = _DEVICE_ATTR_RE.match(rel)
    return f"bus/pci/devices/{m.group(1)}/{m.group(2)}" if m else rel


def _written_bdf(rel: str, data: bytes) -> str | None:
    """The BDF a write is about: the data if it is one, else the device
    directory it is written in."""
    try:
        return normalise_bdf(data.decode("ascii", "replace").strip())
    except ValueError:
        pass
    for part in rel.split("/"):
        if _BDF_RE.match(part):
            return normalise_bdf(part)
    return None


def _errno_of(value: Any) -> int:
    """An errno from its name (``EIO``) or number."""
    if isinstance(value, int):
        return value
    number = getattr(errno, str(value).upper(), None)
    if not isinstance(number, int):
        log.error("sysfs.write fault: unknown errno %r, failing with EIO", value)
        return errno.EIO
    return number


def normalise_bdf(text: str) -> str:
    """``00:10.0`` or ``0000:00:10.0`` -> ``0000:00:10.0``."""
    m = _BDF_RE.match(str(text).strip())
    if not m:
        raise ValueError("not a PCI address: %r" % (text,))
    dom, bus, slot, func = m.groups()
    return "%04x:%02x:%02x.%d" % (int(dom or "0", 16), int(bus, 16), int(slot, 16), int(func))


def _split_bdf(bdf: str) -> tuple[int, int, int, int]:
    dom, bus, rest = bdf.split(":")
    slot, func = rest.split(".")
    return int(dom, 16), int(bus, 16), int(slot, 16), int(func)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    """Scenario entries may be dicts or objects (scenario.py decides)."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _sysfs_name(buf: bytes) -> str:
    # sysfs_streq: the written name may carry one trailing newline.
    text = buf.decode("ascii", "replace")
    if text.endswith("\n"):
        text = text[:-1]
    return text


def _kstrtoul(buf: bytes) -> int:
    text = buf.decode("ascii", "replace")
    if text.endswith("\n"):
        text = text[:-1]
    try:
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
            return int(text, 16)
        if re.fullmatch(r"0[0-7]*", text):
            return int(text, 8)
        if re.fullmatch(r"[1-9][0-9]*", text):
            return int(text, 10)
    except ValueError:
        pass
    raise SysfsWriteError(errno.EINVAL, "invalid number")


def _kstrtou16(buf: bytes) -> int:
    """kstrtou16(buf, 0): an optional ``+``, EINVAL for no number, ERANGE
    above 0xffff."""
    if buf[:1] == b"+":
        buf = buf[1:]
    value = _kstrtoul(buf)
    if value > 0xFFFF:
        raise SysfsWriteError(errno.ERANGE, "above 0xffff")
    return value


def _kstrtobool(buf: bytes) -> bool:
    """kstrtobool: only the first characters count (y/1/on, n/0/off)."""
    text = buf.decode("ascii", "replace").lower()
    if text[:1] in ("y", "t", "1"):
        return True
    if text[:1] in ("n", "f", "0"):
        return False
    if text[:2] == "on":
        return True
    if text[:2] == "of":
        return False
    raise SysfsWriteError(errno.EINVAL, "not a boolean")


def vf_bdf(pf: str, offset: int, stride: int, index: int) -> str:
    """VF ``index``'s address: the PF's routing id (bus << 8 | devfn) plus
    First VF Offset plus index * VF Stride, in the PF's segment
    (pci_iov_virtfn_bus/devfn)."""
    dom, bus, slot, func = _split_bdf(normalise_bdf(pf))
    rid = (bus << 8 | slot << 3 | func) + offset + index * stride
    if rid > 0xFFFF:
        raise ValueError("VF %d of %s: routing id %#x is beyond bus 0xff" % (index, pf, rid))
    return "%04x:%02x:%02x.%d" % (dom, rid >> 8, (rid >> 3) & 0x1F, rid & 7)


def _parse_slot(buf: bytes) -> tuple[int, int, int, int]:
    """str_to_slot(): returns (domain, bus, slot, func), -1 for a ``*``."""
    m = _SLOT_RE.match(buf.decode("ascii", "replace"))
    if not m:
        raise SysfsWriteError(errno.EINVAL, "bad slot")
    dom = int(m.group("dom"), 16) if m.group("dom") else 0
    bus = int(m.group("bus"), 16)
    if m.group("slot") is None:
        return dom, bus, -1, -1
    slot = int(m.group("slot"), 16)
    func = -1 if m.group("func") == "*" else int(m.group("func"), 16)
    return dom, bus, slot, func


@dataclass
class SriovState:
    """A PF's SR-IOV capability and what its driver and sysfs set."""
    totalvfs: int
    vf_device: int
    offset: int = 1
    stride: int = 1
    vf_driver: str | None = None
    configurable: bool = True      # the PF driver has sriov_configure
    autoprobe: bool = True         # sriov_drivers_autoprobe
    vfs: list[str] = field(default_factory=list)   # enabled VFs, by index

    @property
    def numvfs(self) -> int:
        return len(self.vfs)


@dataclass
class PciDev:
    bdf: str
    vendor: int
    device: int
    klass: int
    subsystem_vendor: int
    subsystem_device: int
    resources: list[tuple[int, int, int]]
    irq: int
    has_reset: bool
    iommu_group: int | None
    # reset_method's words in the kernel's order; [] when has_reset is false.
    reset_methods: list[str] = field(default_factory=list)
    header_type: int = 0            # 0 endpoint, 1 PCI bridge, 2 CardBus
    multifunction: bool = False     # header type bit 7
    default_methods: list[str] = field(default_factory=list)   # what "default" restores
    driver: str | None = None
    enable_cnt: int = 0
    # pciback per-device data (dev_data); exists while bound to pciback.
    permissive: bool = False
    isr_on: bool = False
    ack_intr: bool = False
    in_use_by: int | None = None      # domid of the guest pciback exports it to
    quirk_fields: list[tuple[int, int, int]] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)   # "reset", "do_flr", "pciback-release"
    label: str | None = None
    serial: int | None = None
    pcie: bool = True
    revision: int = 0
    parent: str | None = None         # the bridge it sits behind
    # Its directory under devices/: the root bus, the bridges, itself.
    dir_parts: tuple = ()
    sriov: SriovState | None = None   # a PF: its capability and VFs
    physfn: str | None = None         # a VF: its PF
    removed: bool = False             # gone (VFs disabled): open files say ENODEV
    driver_override: str | None = None   # the only driver that may bind it

    @property
    def is_bridge(self) -> bool:
        return self.header_type == 1

    @property
    def cfg_size(self) -> int:
        return 4096 if self.pcie else 256


@dataclass
class PciDriver:
    name: str
    ids: set = field(default_factory=set)          # (vendor, device) of its static id table
    dynids: list = field(default_factory=list)     # new_id entries: 6-tuples

    @property
    def matches_all(self) -> bool:
        return self.name == PCIBACK


@dataclass
class SysfsEvent:
    """What changed: ``kind`` is bind, unbind, new_slot, remove_slot,
    permissive, reset, enable, new_id, remove_id, quirk, sriov_numvfs,
    sriov_drivers_autoprobe; ``added``/``removed``: the devices (VFs) that
    appeared or went with it (a PF's unbind disables its VFs)."""
    kind: str
    bdf: str | None
    driver: str | None
    time: float = field(default_factory=time.time)
    added: tuple = ()
    removed: tuple = ()


# Configuration space (PCI Local Bus 3.0 and PCI Express Base specs).
# Header types fixed by the class: a PCI-to-PCI bridge (0x0604) has a type 1
# header, a CardBus bridge (0x0607) type 2; the rest type 0.
HEADER_OF_CLASS = {0x0604: 1, 0x0607: 2}
CAP_PM, CAP_EXP, CAP_AF = 0x01, 0x10, 0x13
# Where each capability sits; the list (from 0x34) links the ones present.
EXP_CAP_AT, PM_CAP_AT, AF_CAP_AT = 0x40, 0x80, 0x88
PM_CTRL_NO_SOFT_RESET = 0x08      # PMCSR bit 3: D3hot->D0 keeps the state (no PM reset)
EXP_DEVCAP_FLR = 1 << 28
AF_CAP_TP, AF_CAP_FLR = 0x01, 0x02
STATUS_CAP_LIST = 0x10
EXT_CAP_DSN_AT, EXT_CAP_ID_DSN = 0x100, 0x0003
EXT_CAP_ID_SRIOV = 0x0010
# Offsets in the SR-IOV capability (PCIe Base 4.0, 9.3.3).
SRIOV_CTRL, SRIOV_INITIAL_VF, SRIOV_TOTAL_VF, SRIOV_NUM_VF = 0x08, 0x0C, 0x0E, 0x10
SRIOV_VF_OFFSET, SRIOV_VF_STRIDE, SRIOV_VF_DID, SRIOV_SUP_PGSIZE, SRIOV_SYS_PGSIZE = 0x14, 0x16, 0x1A, 0x1C, 0x20
SRIOV_CTRL_VFE, SRIOV_CTRL_MSE = 0x01, 0x08
IORESOURCE_IO, IORESOURCE_MEM, IORESOURCE_MEM_64 = 0x100, 0x200, 0x100000


def default_reset_methods(reset: bool, pcie: bool) -> list[str]:
    """A device with a reset and no reset_method given: a PCIe function has
    FLR, a conventional one a PM reset (FLR is a PCI Express capability)."""
    return (["flr"] if pcie else ["pm"]) if reset else []


def config_space(dev: "PciDev") -> bytes:
    """The function's config space as sysfs ``config`` shows it to root: a
    type 0 header (type 1 for a PCI-to-PCI bridge), the PCI Express
    capability (PCIe only), the PM capability and, with af_flr, the AF
    capability, agreeing with its reset methods; a PCIe function with a
    serial has the DSN extended capability at 0x100, a PF the SR-IOV one
    after it (an empty extended list reads as a zero header).  A VF's
    header keeps the ids its sysfs files show (the PF's vendor, the VF
    device id) where real hardware reads 0xffff there: the kernel shows
    the files from pci_dev, not from config space, and nothing the
    simulator serves relies on the 0xffff."""
    cfg = bytearray(dev.cfg_size)

    def put(offset: int, value: int, size: int) -> None:
        cfg[offset:offset + size] = value.to_bytes(size, "little")

    put(0x00, dev.vendor, 2)
    put(0x02, dev.device, 2)
    put(0x04, 0x0006 if dev.enable_cnt else 0, 2)       # memory and bus master while enabled
    put(0x06, STATUS_CAP_LIST, 2)
    put(0x08, dev.revision, 1)
    put(0x09, dev.klass, 3)                             # prog-if, subclass, base class
    put(0x0E, dev.header_type | (0x80 if dev.multifunction else 0), 1)
    if dev.header_type == 0:
        # resource line i is BAR i (a 64-bit BAR's upper half: the next, empty line)
        for index, (start, _end, flags) in enumerate(dev.resources[:6]):
            if flags & IORESOURCE_IO:
                put(0x10 + 4 * index, (start & 0xFFFFFFFC) | 0x1, 4)
            elif flags & IORESOURCE_MEM:
                put(0x10 + 4 * index, (start & 0xFFFFFFF0) | (0x4 if flags & IORESOURCE_MEM_64 else 0), 4)
                if flags & IORESOURCE_MEM_64 and index < 5:
                    put(0x14 + 4 * index, start >> 32, 4)
        put(0x2C, dev.subsystem_vendor, 2)
        put(0x2E, dev.subsystem_device, 2)
    put(0x3C, dev.irq & 0xFF, 1)
    put(0x3D, 1 if dev.irq else 0, 1)
    methods = set(dev.default_methods)
    caps = ([EXP_CAP_AT] if dev.pcie else []) + [PM_CAP_AT] + ([AF_CAP_AT] if "af_flr" in methods else [])
    put(0x34, caps[0], 1)
    for at, nxt in zip(caps, caps[1:] + [0]):
        put(at + 1, nxt, 1)
    if dev.pcie:
        # endpoint; a bridge on a root bus is a root port, one behind a bridge a downstream port
        port = {0: 0x0, 1: 0x4 if dev.parent is None else 0x6, 2: 0x7}[dev.header_type]
        put(EXP_CAP_AT, CAP_EXP, 1)
        put(EXP_CAP_AT + 2, 0x2 | port << 4, 2)
        put(EXP_CAP_AT + 4, EXP_DEVCAP_FLR if "flr" in methods else 0, 4)
        # extended capabilities from 0x100, each header: ID, version 1, next
        ext = ([EXT_CAP_DSN_AT] if dev.serial is not None else [])
        sriov_at = EXT_CAP_DSN_AT + (0x10 if dev.serial is not None else 0)
        if dev.sriov is not None:
            ext.append(sriov_at)
        nexts = dict(zip(ext, ext[1:] + [0]))
        if dev.serial is not None:
            # the 64-bit serial, low dword first
            put(EXT_CAP_DSN_AT, EXT_CAP_ID_DSN | 1 << 16 | nexts[EXT_CAP_DSN_AT] << 20, 4)
            put(EXT_CAP_DSN_AT + 4, dev.serial, 8)
        if dev.sriov is not None:
            iov = dev.sriov
            put(sriov_at, EXT_CAP_ID_SRIOV | 1 << 16 | nexts[sriov_at] << 20, 4)
            put(sriov_at + SRIOV_CTRL, SRIOV_CTRL_VFE | SRIOV_CTRL_MSE if iov.vfs else 0, 2)
            put(sriov_at + SRIOV_INITIAL_VF, iov.totalvfs, 2)
            put(sriov_at + SRIOV_TOTAL_VF, iov.totalvfs, 2)
            put(sriov_at + SRIOV_NUM_VF, iov.numvfs, 2)
            put(sriov_at + SRIOV_VF_OFFSET, iov.offset, 2)
            put(sriov_at + SRIOV_VF_STRIDE, iov.stride, 2)
            put(sriov_at + SRIOV_VF_DID, iov.vf_device, 2)
            put(sriov_at + SRIOV_SUP_PGSIZE, 0x553, 4)      # 4K, 8K, 64K, 256K, 1M, 4M
            put(sriov_at + SRIOV_SYS_PGSIZE, 0x1, 4)        # 4K
    put(PM_CAP_AT, CAP_PM, 1)
    put(PM_CAP_AT + 2, 0x0003, 2)                        # PMC: version 3
    put(PM_CAP_AT + 4, 0 if "pm" in methods else PM_CTRL_NO_SOFT_RESET, 2)
    if "af_flr" in methods:
        put(AF_CAP_AT, CAP_AF, 1)
        put(AF_CAP_AT + 2, 0x06, 1)                      # capability length
        put(AF_CAP_AT + 3, AF_CAP_TP | AF_CAP_FLR, 1)
    return bytes(cfg)


class PciModel:
    """The state behind the files; every method takes the lock."""

    def __init__(self, devices: list[Any], do_flr: bool = False, pciback_module: bool = True):
        self.lock = threading.RLock()
        self.pciback_module = pciback_module
        self.devices: dict[str, PciDev] = {}
        self.drivers: dict[str, PciDriver] = {PCIBACK: PciDriver(PCIBACK)}
        self.slots: list[tuple[int, int, int]] = []    # pcistub_device_ids, duplicates allowed
        self.has_do_flr = do_flr
        for entry in devices:
            self._add_device(entry)
        slots: dict[str, int] = {}
        for bdf in self.devices:
            slots[bdf.rsplit(".", 1)[0]] = slots.get(bdf.rsplit(".", 1)[0], 0) + 1
        # Header type bit 7 is the hardware's: VFs enabled later do not change it.
        for dev in self.devices.values():
            dev.multifunction = slots[dev.bdf.rsplit(".", 1)[0]] > 1
        for dev in self.devices.values():
            dev.dir_parts = self._dir_parts(dev)
        # VFs enabled at start (the PF driver's max_vfs=, or an earlier
        # sriov_numvfs write), probed as at runtime.
        for entry in devices:
            pf = self.devices[normalise_bdf(_field(entry, "bdf"))]
            if pf.sriov is None:
                continue
            numvfs = int(_field(_field(entry, "sriov"), "numvfs", 0) or 0)
            if numvfs > pf.sriov.totalvfs:
                raise ValueError("%s: numvfs %d is above totalvfs %d" % (pf.bdf, numvfs, pf.sriov.totalvfs))
            if numvfs:
                self._enable_vfs(pf, numvfs)

    def _dir_parts(self, dev: PciDev) -> tuple:
        chain = [dev.bdf]
        top = dev
        while top.parent is not None:
            top = self.devices[top.parent]
            chain.append(top.bdf)
        dom, bus, _unused1, _unused = _split_bdf(top.bdf)
        return ("pci%04x:%02x" % (dom, bus),) + tuple(reversed(chain))

    def live(self, bdf: str) -> PciDev:
        """The device, ENODEV once it is gone: a file opened before its VF
        was removed, as kernfs answers for a removed attribute."""
        dev = self.devices.get(bdf)
        if dev is None or dev.removed:
            raise SysfsWriteError(errno.ENODEV, "no such device")
        return dev

    def children(self, parts: tuple) -> list[str]:
        """The devices whose directory is directly in ``parts``'s."""
        return sorted(d.bdf for d in self.devices.values() if d.dir_parts[:-1] == parts)

    def _add_device(self, entry: Any) -> None:
        bdf = normalise_bdf(_field(entry, "bdf"))
        resources = [tuple(int(x) for x in r) for r in (_field(entry, "resources") or [])]
        if len(resources) > RESOURCE_LINES:
            raise ValueError("%s: at most %d resource lines" % (bdf, RESOURCE_LINES))
        dev = PciDev(
            bdf=bdf,
            vendor=int(_field(entry, "vendor", 0x1234)),
            device=int(_field(entry, "device", 0x11E8)),
            klass=int(_field(entry, "class", _field(entry, "klass", 0x00FF00))),
            subsystem_vendor=int(_field(entry, "subsystem_vendor", DEFAULT_SUBSYSTEM[0])),
            subsystem_device=int(_field(entry, "subsystem_device", DEFAULT_SUBSYSTEM[1])),
            resources=resources,
            irq=int(_field(entry, "irq", 0) or 0),
            has_reset=bool(_field(entry, "reset", False)),
            iommu_group=_field(entry, "iommu_group"),
            label=_field(entry, "label"),
            serial=_field(entry, "serial"),
            pcie=bool(_field(entry, "pcie", True)),
            revision=int(_field(entry, "revision", 0) or 0),
            parent=normalise_bdf(_field(entry, "parent")) if _field(entry, "parent") else None,
        )
        header = _field(entry, "header_type")
        dev.header_type = HEADER_OF_CLASS.get(dev.klass >> 8, 0) if header is None else int(header)
        methods = _field(entry, "reset_method")
        if methods is None:
            methods = default_reset_methods(dev.has_reset, dev.pcie)
        dev.reset_methods = list(methods)
        dev.has_reset = bool(methods)
        dev.default_methods = list(methods)
        driver = _field(entry, "driver")
        hidden = bool(_field(entry, "hidden", False))
        if hidden:
            driver = PCIBACK
        iov = _field(entry, "sriov")
        if iov:
            dev.sriov = SriovState(
                totalvfs=int(_field(iov, "totalvfs")), vf_device=int(_field(iov, "vf_device")),
                offset=int(_field(iov, "offset", 1)), stride=int(_field(iov, "stride", 1)),
                vf_driver=_field(iov, "vf_driver"), configurable=bool(_field(iov, "configurable", True)),
                autoprobe=bool(_field(iov, "drivers_autoprobe", True)))
            if dev.sriov.vf_driver:
                # the VF driver (igbvf, ...) is a loaded module matching the VF id
                self.drivers.setdefault(dev.sriov.vf_driver, PciDriver(dev.sriov.vf_driver)).ids.add(
                    (dev.vendor, dev.sriov.vf_device))
        self.devices[bdf] = dev
        original = _field(entry, "original_driver")
        if original:
            # made assignable earlier (pci-assignable-add): the dom0 driver it
            # came from is still loaded, so a rebind to driver_path works.
            self.drivers.setdefault(original, PciDriver(original)).ids.add((dev.vendor, dev.device))
        if driver and driver != PCIBACK:
            drv = self.drivers.setdefault(driver, PciDriver(driver))
            drv.ids.add((dev.vendor, dev.device))
            dev.driver = driver
            dev.enable_cnt = 1
        elif driver == PCIBACK:
            # xen-pciback.hide=(...) at boot, or a slot added and bound before
            # the scenario starts: listed in slots and seized.
            dom, bus, slot, func = _split_bdf(bdf)
            self.slots.append((dom, bus, (slot << 3) | func))
            dev.driver = PCIBACK

    # -- queries (used by the simulated pciback and tests) --------------

    def driver_of(self, bdf: str) -> str | None:
        with self.lock:
            dev = self.devices.get(normalise_bdf(bdf))
            return dev.driver if dev else None

    def slot_list(self) -> list[str]:
        with self.lock:
            return ["%04x:%02x:%02x.%d" % (d, b, devfn >> 3, devfn & 7) for d, b, devfn in self.slots]

    def _in_slots(self, dev: PciDev) -> bool:
        dom, bus, slot, func = _split_bdf(dev.bdf)
        return (dom, bus, (slot << 3) | func) in self.slots

    # -- stores ----------------------------------------------------------

    def _device_by_name(self, buf: bytes) -> PciDev:
        dev = self.devices.get(_sysfs_name(buf))
        if dev is None:
            raise SysfsWriteError(errno.ENODEV, "no such device")
        return dev

    def _can_probe(self, dev: PciDev) -> bool:
        """pci_device_can_probe(): a VF whose PF has sriov_drivers_autoprobe 0
        binds to no driver, by autoprobe or by a driver's ``bind``, unless
        its ``driver_override`` names one."""
        if dev.physfn is None or dev.driver_override:
            return True
        pf = self.devices.get(dev.physfn)
        return pf is None or pf.sriov is None or pf.sriov.autoprobe

    def set_driver_override(self, bdf: str, buf: bytes) -> SysfsEvent:
        """driver_set_override(): a name sets it, an empty write (or "\n") clears it."""
        text = buf.decode("ascii", "replace")
        if text.endswith("\n"):
            text = text[:-1]
        if len(text) >= 4096 or "\n" in text:
            raise SysfsWriteError(errno.EINVAL, "bad driver_override")
        with self.lock:
            dev = self.live(bdf)
            dev.driver_override = text or None
            return SysfsEvent("driver_override", dev.bdf, dev.driver)

    def _driver_matches(self, drv: PciDriver, dev: PciDev) -> bool:
        # pci_match_device(): with an override, only that driver matches.
        if dev.driver_override is not None:
            return dev.driver_override == drv.name
        if drv.matches_all or (dev.vendor, dev.device) in drv.ids:
            return True
        for vendor, device, subv, subd, klass, mask in drv.dynids:
            if ((vendor in (PCI_ANY_ID, dev.vendor)) and (device in (PCI_ANY_ID, dev.device))
                    and (subv in (PCI_ANY_ID, dev.subsystem_vendor))
                    and (subd in (PCI_ANY_ID, dev.subsystem_device))
                    and not ((klass ^ dev.klass) & mask)):
                return True
        return False

    def _probe(self, drv: PciDriver, dev: PciDev) -> None:
        """device_driver_attach(): EBUSY if bound, the probe's error otherwise."""
        if dev.driver is not None:
            raise SysfsWriteError(errno.EBUSY, "device already has a driver")
        if not self._can_probe(dev):
            raise SysfsWriteError(errno.ENODEV, "a VF of a PF with sriov_drivers_autoprobe 0")
        if drv.name == PCIBACK:
            if not self._in_slots(dev) and dev.driver_override == PCIBACK:
                # pcistub_probe seizes an overridden device and lists it in its slots
                self.new_slot(dev.bdf.encode())
            if not self._in_slots(dev):
                # pcistub_probe: not in the seize list -> -ENODEV
                raise SysfsWriteError(errno.ENODEV, "not a pciback slot")
            dev.driver = PCIBACK
            # pcistub_init_device enables, saves state, resets, then disables.
            dev.enable_cnt = 0
            dev.permissive = dev.isr_on = dev.ack_intr = False
            return
        dev.driver = drv.name
        dev.enable_cnt += 1

    def _release(self, dev: PciDev) -> None:
        if dev.driver == PCIBACK:
            # pcistub_remove: the dev_data (permissive, quirks) goes away and
            # the final put resets the device.
            dev.permissive = dev.isr_on = dev.ack_intr = False
            dev.quirk_fields = []
            dev.in_use_by = None
            dev.resets.append("pciback-release")
        else:
            dev.enable_cnt = max(0, dev.enable_cnt - 1)
        dev.driver = None

    # -- SR-IOV (drivers/pci/iov.c) ---------------------------------------

    def _new_iommu_group(self) -> int:
        # iommu_group_alloc takes the lowest free id of its ida
        used = {d.iommu_group for d in self.devices.values()}
        return next(n for n in range(len(used) + 1) if n not in used)

    def _enable_vfs(self, pf: PciDev, count: int) -> list[str]:
        """sriov_enable + pci_iov_add_virtfn: each VF appears beside its PF
        (same parent directory, even on another bus) and, with
        drivers_autoprobe, is probed: pciback when its BDF is a pciback
        slot, else the VF driver if any."""
        iov = pf.sriov
        try:
            bdfs = [vf_bdf(pf.bdf, iov.offset, iov.stride, i) for i in range(count)]
        except ValueError:
            # pci_iov_bus_range beyond the bus numbers: sriov_enable's ENOMEM
            raise SysfsWriteError(errno.ENOMEM, "not enough bus numbers for the VFs") from None
        clash = [b for b in bdfs if b in self.devices]
        if clash:
            raise SysfsWriteError(errno.EEXIST, "VF address %s taken" % clash[0])
        for bdf in bdfs:
            vf = PciDev(
                bdf=bdf, vendor=pf.vendor, device=iov.vf_device, klass=pf.klass,
                subsystem_vendor=pf.subsystem_vendor, subsystem_device=pf.subsystem_device,
                resources=[], irq=0,                  # VFs have no INTx
                has_reset=True, reset_methods=["flr"], default_methods=["flr"],
                iommu_group=self._new_iommu_group() if pf.iommu_group is not None else None,
                pcie=True, revision=pf.revision, parent=pf.parent, physfn=pf.bdf,
                dir_parts=pf.dir_parts[:-1] + (bdf,))
            self.devices[bdf] = vf
            iov.vfs.append(bdf)
            if not iov.autoprobe:
                continue
            if self._in_slots(vf):
                self._probe(self.drivers[PCIBACK], vf)
            elif iov.vf_driver:
                self._probe(self.drivers[iov.vf_driver], vf)
        return bdfs

    def _disable_vfs(self, pf: PciDev) -> list[str]:
        """sriov_disable: every VF's driver is released, then it goes (the
        callers refuse while a VF is bound to pciback, as PF drivers do:
        _vfs_assigned). pciback's slot list (new_slot) keeps naming it."""
        gone = list(pf.sriov.vfs)
        for bdf in gone:
            vf = self.devices.pop(bdf)
            if vf.driver is not None:
                self._release(vf)
            vf.removed = True
        pf.sriov.vfs.clear()
        return gone

    def set_numvfs(self, bdf: str, buf: bytes) -> SysfsEvent:
        """sriov_numvfs_store, its checks in the kernel's order."""
        num = _kstrtou16(buf)
        with self.lock:
            pf = self.live(bdf)
            iov = pf.sriov
            if num > iov.totalvfs:
                raise SysfsWriteError(errno.ERANGE, "above sriov_totalvfs")
            if num == iov.numvfs:
                return SysfsEvent("sriov_numvfs", bdf, pf.driver)
            if pf.driver is None:
                raise SysfsWriteError(errno.ENOENT, "no driver bound to device; cannot configure SR-IOV")
            if pf.driver == PCIBACK or not iov.configurable:
                raise SysfsWriteError(errno.ENOENT, "driver does not support SR-IOV configuration via sysfs")
            if num == 0:
                if self._vfs_assigned(pf):
                    # igb, ixgbe, i40e: "Cannot deallocate SR-IOV virtual
                    # functions while they are assigned" (pciback marks the
                    # devices it holds assigned); real Xen 4.17 + Linux 6.1
                    # answers EPERM the same way.
                    raise SysfsWriteError(errno.EPERM, "VFs are assigned (bound to pciback)")
                return SysfsEvent("sriov_numvfs", bdf, pf.driver, removed=tuple(self._disable_vfs(pf)))
            if iov.numvfs:
                raise SysfsWriteError(errno.EBUSY, "%d VFs already enabled. Disable before enabling %d VFs"
                                      % (iov.numvfs, num))
            return SysfsEvent("sriov_numvfs", bdf, pf.driver, added=tuple(self._enable_vfs(pf, num)))

    def _vfs_assigned(self, pf: PciDev) -> bool:
        """pci_vfs_assigned(): a VF of ``pf`` carries PCI_DEV_FLAGS_ASSIGNED,
        which xen-pciback sets on every device bound to it."""
        return any(self.devices[vf].driver == PCIBACK for vf in pf.sriov.vfs if vf in self.devices)

    def set_autoprobe(self, bdf: str, buf: bytes) -> SysfsEvent:
        value = _kstrtobool(buf)
        with self.lock:
            pf = self.live(bdf)
            pf.sriov.autoprobe = value
            return SysfsEvent("sriov_drivers_autoprobe", bdf, pf.driver)

    def vfs_of(self, bdf: str) -> list[str]:
        with self.lock:
            dev = self.devices.get(normalise_bdf(bdf))
            return list(dev.sriov.vfs) if dev is not None and dev.sriov else []

    def bind(self, driver: str, buf: bytes) -> SysfsEvent:
        with self.lock:
            drv = self.drivers[driver]
            dev = self._device_by_name(buf)
            if not self._driver_matches(drv, dev):
                raise SysfsWriteError(errno.ENODEV, "driver does not match")
            self._probe(drv, dev)
            return SysfsEvent("bind", dev.bdf, driver)

    def unbind(self, driver: str, buf: bytes) -> SysfsEvent:
        with self.lock:
            dev = self.devices.get(_sysfs_name(buf))
            if dev is None or dev.driver != driver:
                raise SysfsWriteError(errno.ENODEV, "device not bound to this driver")
            # A PF driver's remove disables its VFs (igb, ixgbe, i40e, mlx5
            # call pci_disable_sriov there).
            # With a VF assigned they stay enabled ("VFs will not be deallocated").
            gone = self._disable_vfs(dev) if dev.sriov and dev.sriov.vfs and not self._vfs_assigned(dev) else []
            self._release(dev)
            return SysfsEvent("unbind", dev.bdf, driver, removed=tuple(gone))

    def new_id(self, driver: str, buf: bytes) -> SysfsEvent:
        fields = buf.decode("ascii", "replace").split()
        vals: list[int] = []
        for tok in fields[:7]:
            try:
                vals.append(int(tok, 16))
            except ValueError:
                break
        if len(vals) < 2:
            raise SysfsWriteError(errno.EINVAL, "need vendor and device")
        defaults = [PCI_ANY_ID, PCI_ANY_ID, 0, 0, 0]
        full = vals + defaults[len(vals) - 2:]
        vendor, device, subv, subd, klass, mask, data = full[:7]
        with self.lock:
            drv = self.drivers[driver]
            if len(vals) != 7:
                probe = PciDev("0000:00:00.0", vendor, device, klass, subv, subd, [], 0, False, None)
                if self._driver_matches(drv, probe):
                    raise SysfsWriteError(errno.EEXIST, "id already handled")
            if data != 0:
                # only driver_data of an existing id_table entry is accepted
                raise SysfsWriteError(errno.EINVAL, "unknown driver_data")
            drv.dynids.append((vendor, device, subv, subd, klass, mask))
            # pci_add_dynid -> driver_attach: probe every unbound device.
            for dev in self.devices.values():
                if dev.driver is None and self._driver_matches(drv, dev):
                    try:
                        self._probe(drv, dev)
                    except SysfsWriteError:
                        pass
            return SysfsEvent("new_id", None, driver)

    def remove_id(self, driver: str, buf: bytes) -> SysfsEvent:
        vals: list[int] = []
        for tok in buf.decode("ascii", "replace").split()[:6]:
            try:
                vals.append(int(tok, 16))
            except ValueError:
                break
        if len(vals) < 2:
            raise SysfsWriteError(errno.EINVAL, "need vendor and device")
        wanted = tuple(vals + [PCI_ANY_ID, PCI_ANY_ID, 0, 0][len(vals) - 2:])[:6]
        with self.lock:
            drv = self.drivers[driver]
            for i, dynid in enumerate(drv.dynids):
                if dynid == wanted:
                    del drv.dynids[i]
                    return SysfsEvent("remove_id", None, driver)
            raise SysfsWriteError(errno.ENODEV, "no such dynamic id")

    def new_slot(self, buf: bytes) -> SysfsEvent:
        dom, bus, slot, func = _parse_slot(buf)
        slots = range(32) if slot < 0 else [slot]
        funcs = range(8) if func < 0 else [func]
        if not 0 <= dom <= 0xFFFF or not 0 <= bus <= 0xFF or any(s > 0x1F for s in slots) or any(f > 7 for f in funcs):
            raise SysfsWriteError(errno.EINVAL, "slot out of range")
        with self.lock:
            # Appended even when already listed: writing twice duplicates.
            for s in slots:
                for f in funcs:
                    self.slots.append((dom, bus, (s << 3) | f))
        bdf = None if slot < 0 or func < 0 else "%04x:%02x:%02x.%d" % (dom, bus, slot, func)
        return SysfsEvent("new_slot", bdf, PCIBACK)

    def remove_slot(self, buf: bytes) -> SysfsEvent:
        dom, bus, slot, func = _parse_slot(buf)
        with self.lock:
            keep = [s for s in self.slots
                    if not (s[0] == dom and s[1] == bus and (slot < 0 or s[2] >> 3 == slot)
                            and (func < 0 or s[2] & 7 == func))]
            if len(keep) == len(self.slots):
                raise SysfsWriteError(errno.ENOENT, "slot not listed")
            self.slots = keep
        bdf = None if slot < 0 or func < 0 else "%04x:%02x:%02x.%d" % (dom, bus, slot, func)
        return SysfsEvent("remove_slot", bdf, PCIBACK)

    def _pciback_dev(self, buf: bytes, missing: int) -> PciDev:
        dom, bus, slot, func = _parse_slot(buf)
        bdf = "%04x:%02x:%02x.%d" % (dom, bus, slot, func) if slot >= 0 and func >= 0 else None
        dev = self.devices.get(bdf) if bdf else None
        if dev is None or dev.driver != PCIBACK:
            raise SysfsWriteError(missing, "not a pciback device")
        return dev

    def permissive_add(self, buf: bytes) -> SysfsEvent:
        with self.lock:
            dev = self._pciback_dev(buf, errno.ENODEV)
            dev.permissive = True
            return SysfsEvent("permissive", dev.bdf, PCIBACK)

    def irq_handler_state(self, buf: bytes) -> SysfsEvent:
        with self.lock:
            dev = self._pciback_dev(buf, errno.ENOENT)
            dev.isr_on = not dev.isr_on
            if dev.isr_on:
                dev.ack_intr = True
            return SysfsEvent("irq_handler_state", dev.bdf, PCIBACK)

    def quirk_add(self, buf: bytes) -> SysfsEvent:
        m = _QUIRK_RE.match(buf.decode("ascii", "replace"))
        if not m:
            raise SysfsWriteError(errno.EINVAL, "bad quirk")
        g = {k: int(v, 16) if v else 0 for k, v in m.groupdict().items()}
        if g["reg"] > 0xFFF or (g["size"] < 4 and (g["mask"] >> (g["size"] * 8))):
            raise SysfsWriteError(errno.EINVAL, "bad quirk field")
        bdf = "%04x:%02x:%02x.%d" % (g["dom"], g["bus"], g["slot"], g["func"])
        with self.lock:
            dev = self.devices.get(bdf)
            if dev is None or dev.driver != PCIBACK:
                raise SysfsWriteError(errno.ENODEV, "not a pciback device")
            dev.quirk_fields.append((g["reg"], g["size"], g["mask"]))
            return SysfsEvent("quirk", bdf, PCIBACK)

    def do_flr(self, buf: bytes) -> SysfsEvent:
        with self.lock:
            dev = self._pciback_dev(buf, errno.ENODEV)
            dev.resets.append("do_flr")
            return SysfsEvent("reset", dev.bdf, PCIBACK)

    def reset(self, bdf: str, buf: bytes) -> SysfsEvent:
        try:
            val = _kstrtoul(buf)
        except SysfsWriteError:
            raise SysfsWriteError(errno.EINVAL, "invalid number") from None
        if val != 1:
            raise SysfsWriteError(errno.EINVAL, "only 1 resets")
        with self.lock:
            if not self.live(bdf).reset_methods:
                # every method disabled through reset_method: pci_reset_function says ENOTTY
                raise SysfsWriteError(errno.ENOTTY, "no reset method")
            self.devices[bdf].resets.append("reset")
            return SysfsEvent("reset", bdf, None)

    def set_reset_method(self, bdf: str, buf: bytes) -> SysfsEvent:
        """reset_method_store: ``default``, an empty line (disable all), or
        a list of the device's supported methods, in the order to try them."""
        text = buf.decode("ascii", "replace").strip()
        with self.lock:
            dev = self.live(bdf)
            if text == "default":
                dev.reset_methods = list(dev.default_methods)
            elif text == "":
                dev.reset_methods = []
            else:
                wanted = text.split()
                if any(m not in dev.default_methods for m in wanted):
                    raise SysfsWriteError(errno.EINVAL, "unknown or unsupported reset method")
                dev.reset_methods = list(dict.fromkeys(wanted))
            return SysfsEvent("reset_method", bdf, None)

    def enable(self, bdf: str, buf: bytes) -> SysfsEvent:
        val = _kstrtoul(buf)
        with self.lock:
            dev = self.live(bdf)
            if dev.driver is not None:
                raise SysfsWriteError(errno.EBUSY, "device has a driver")
            if val:
                dev.enable_cnt += 1
            elif dev.enable_cnt > 0:
                dev.enable_cnt -= 1
            else:
                raise SysfsWriteError(errno.EIO, "not enabled")
            return SysfsEvent("enable", bdf, None)

    # -- shows -----------------------------------------------------------

    def show_device(self, dev: PciDev, attr: str) -> bytes:
        if dev.removed:
            raise SysfsWriteError(errno.ENODEV, "no such device")
        if attr.startswith("sriov_") and dev.sriov is not None:
            iov = dev.sriov
            if attr == "sriov_vf_device":
                return b"%x\n" % iov.vf_device
            values = {"sriov_totalvfs": iov.totalvfs, "sriov_numvfs": iov.numvfs, "sriov_offset": iov.offset,
                      "sriov_stride": iov.stride, "sriov_drivers_autoprobe": int(iov.autoprobe)}
            return b"%u\n" % values[attr]
        if attr in ("vendor", "device", "subsystem_vendor", "subsystem_device"):
            return b"0x%04x\n" % getattr(dev, attr)
        if attr == "class":
            return b"0x%06x\n" % dev.klass
        if attr == "label" and dev.label is not None:
            return dev.label.encode() + b"\n"
        if attr == "config":
            return config_space(dev)
        if attr == "irq":
            return b"%u\n" % dev.irq
        if attr == "enable":
            return b"%d\n" % dev.enable_cnt
        if attr == "resource":
            lines = list(dev.resources) + [(0, 0, 0)] * (RESOURCE_LINES - len(dev.resources))
            return b"".join(b"0x%016x 0x%016x 0x%016x\n" % r for r in lines)
        if attr == "reset_method":
            return (" ".join(dev.reset_methods) + "\n").encode()
        if attr == "driver_override":
            return ("%s\n" % (dev.driver_override or "(null)")).encode()
        if attr == "config":
            return config_space(dev)
        raise KeyError(attr)

    def show_module(self, attr: str) -> bytes:
        return {"initstate": b"live\n", "refcnt": b"0\n", "hide": b"(null)\n", "passthrough": b"0\n",
                "permissive": b"N\n", "verbose_request": b"0\n"}[attr]

    def show_pciback(self, attr: str) -> bytes:
        if attr == "slots":
            return "".join(s + "\n" for s in self.slot_list()).encode()
        bound = [d for d in sorted(self.devices.values(), key=lambda d: d.bdf) if d.driver == PCIBACK]
        if attr == "permissive":
            return "".join(d.bdf + "\n" for d in bound if d.permissive).encode()
        if attr == "irq_handlers":
            return "".join("%s:%s:%sing:%d\n" % (d.bdf, "on" if d.isr_on else "off",
                                                 "ack" if d.ack_intr else "not ack", 0) for d in bound).encode()
        if attr == "quirks":
            out = []
            for d in bound:
                if not d.quirk_fields:
                    continue
                _unused, bus, slot, func = _split_bdf(d.bdf)
                out.append("%02x:%02x.%01x\n\t%04x:%04x:%04x:%04x\n" % (
                    bus, slot, func, d.vendor, d.device, d.subsystem_vendor, d.subsystem_device))
                out.extend("\t\t%08x:%01x:%08x\n" % q for q in d.quirk_fields)
            return "".join(out).encode()
        raise KeyError(attr)


# Attribute tables: name -> (mode, has_show, store name or None)
_DEVICE_ATTRS = {
    "vendor": 0o444, "device": 0o444, "subsystem_vendor": 0o444, "subsystem_device": 0o444,
    "class": 0o444, "irq": 0o444, "resource": 0o444, "enable": 0o600, "config": 0o644, "reset": 0o200,
    "reset_method": 0o644, "label": 0o444, "driver_override": 0o644,
}
_RESET_ATTRS = ("reset", "reset_method")       # visible only when the device has a reset
# A PF's (drivers/pci/iov.c sriov_pf_dev_attrs); its VFs have none of them.
_SRIOV_ATTRS = {
    "sriov_totalvfs": 0o444, "sriov_numvfs": 0o644, "sriov_offset": 0o444, "sriov_stride": 0o444,
    "sriov_vf_device": 0o444, "sriov_drivers_autoprobe": 0o644,
}
_PCIBACK_PARAMS = ("hide", "passthrough", "permissive", "verbose_request")
_DRIVER_ATTRS = {"bind": 0o200, "unbind": 0o200, "new_id": 0o200, "remove_id": 0o200}
_PCIBACK_ATTRS = {
    "new_slot": 0o200, "remove_slot": 0o200, "slots": 0o400, "permissive": 0o600,
    "quirks": 0o600, "irq_handlers": 0o400, "irq_handler_state": 0o200,
}


class _Node:
    __slots__ = ("kind", "mode", "target", "entries", "read", "write", "size")

    def __init__(self, kind, mode=0o755, target=None, entries=None, read=None, write=None, size=4096):
        self.size = size          # st_size of a file (kernfs gives attributes 4096, config its cfg_size)
        self.kind = kind          # dir | link | file
        self.mode = mode
        self.target = target
        # A directory's entries: a list, or a function listing them, called
        # only by readdir (a path walk's lookups must not list the host).
        self.entries = entries
        self.read = read          # () -> bytes
        self.write = write        # (bytes) -> SysfsEvent


try:  # fusepy is a test-only dependency of the simulator
    import fuse as _fuse
    _FUSE_IMPORT_ERROR = None
except (ImportError, OSError, EnvironmentError) as exc:   # OSError: libfuse missing
    _fuse = None
    _FUSE_IMPORT_ERROR = exc


class _Ops:
    """fusepy operations over the model.  Mixed in with fuse.Operations."""

    use_ns = True

    def __init__(self, fs: "SysfsFS"):
        self.fs = fs
        self.model = fs.model
        self._fh_lock = threading.Lock()
        self._next_fh = 1
        self._open: dict[int, list] = {}   # fh -> [node, cached bytes or None]
        self.started = time.time_ns()

    # -- tree ------------------------------------------------------------

    def _dev_dir(self, dev: PciDev) -> _Node:
        entries = [a for a in _DEVICE_ATTRS
                   if (a not in _RESET_ATTRS or dev.has_reset) and (a != "label" or dev.label is not None)]
        entries += ["subsystem"] + (["driver"] if dev.driver else []) + (
            ["iommu_group"] if dev.iommu_group is not None else [])
        if dev.physfn is not None:
            entries.append("physfn")
        if dev.sriov is not None:
            entries += list(_SRIOV_ATTRS) + ["virtfn%d" % i for i in range(dev.sriov.numvfs)]
        if dev.is_bridge:
            return _Node("dir", entries=lambda: entries + self.model.children(dev.dir_parts))
        return _Node("dir", entries=entries)

    def _resolve(self, path: str) -> _Node:
        m = self.model
        parts = [p for p in path.split("/") if p]
        n = len(parts)
        if n == 0:
            return _Node("dir", entries=["bus", "devices", "kernel", "module"])
        top = parts[0]
        if top == "bus":
            if n == 1:
                return _Node("dir", entries=["pci"])
            if parts[1] != "pci":
                raise KeyError(path)
            if n == 2:
                return _Node("dir", entries=["devices", "drivers"])
            if parts[2] == "devices":
                if n == 3:
                    return _Node("dir", entries=lambda: sorted(m.devices))
                dev = m.devices[parts[3]]
                if n == 4:
                    return _Node("link", target="../../../devices/" + "/".join(dev.dir_parts))
                raise KeyError(path)     # the kernel resolves the link; FUSE does too
            if parts[2] == "drivers":
                if n == 3:
                    return _Node("dir", entries=sorted(m.drivers))
                drv = m.drivers[parts[3]]
                attrs = dict(_DRIVER_ATTRS)
                if drv.name == PCIBACK:
                    attrs.update(_PCIBACK_ATTRS)
                    if m.has_do_flr:
                        attrs["do_flr"] = 0o200
                if n == 4:
                    return _Node("dir", entries=lambda: sorted(attrs) + sorted(
                        d.bdf for d in m.devices.values() if d.driver == drv.name))
                if n == 5:
                    # One device looked up by name, not the whole host scanned:
                    # a lookup must cost the same on a host of 2,000 devices.
                    name = parts[4]
                    dev = m.devices.get(name)
                    if dev is not None and dev.driver == drv.name:
                        return _Node("link", target="../../../../devices/" + "/".join(dev.dir_parts))
                    if name in attrs:
                        return self._driver_attr(drv.name, name, attrs[name])
            raise KeyError(path)
        if top == "devices":
            if n == 1:
                return _Node("dir", entries=sorted({d.dir_parts[0] for d in m.devices.values()}))
            if n == 2:
                if not any(d.dir_parts[0] == parts[1] for d in m.devices.values()):
                    raise KeyError(path)
                return _Node("dir", entries=lambda: m.children((parts[1],)))
            # Walk down the bridges: each component a device in the one before.
            dev, i = None, 2
            while i < n:
                child = m.devices.get(parts[i])
                if child is not None and child.dir_parts == tuple(parts[1:i + 1]):
                    dev, i = child, i + 1
                    continue
                if dev is not None and i == n - 1:
                    return self._dev_attr(dev, parts[i])
                raise KeyError(path)
            return self._dev_dir(dev)
        if top == "module":
            return self._module(parts)
        if top == "kernel":
            if n == 1:
                return _Node("dir", entries=["iommu_groups"])
            if parts[1] != "iommu_groups":
                raise KeyError(path)
            groups: dict[str, list[PciDev]] = {}
            for d in m.devices.values():
                if d.iommu_group is not None:
                    groups.setdefault(str(d.iommu_group), []).append(d)
            if n == 2:
                return _Node("dir", entries=sorted(groups, key=int))
            members = groups[parts[2]]
            if n == 3:
                return _Node("dir", entries=["devices"])
            if parts[3] != "devices":
                raise KeyError(path)
            if n == 4:
                return _Node("dir", entries=sorted(d.bdf for d in members))
            if n == 5:
                dev = {d.bdf: d for d in members}[parts[4]]
                return _Node("link", target="../../../../devices/" + "/".join(dev.dir_parts))
        raise KeyError(path)

    def _module(self, parts: list[str]) -> _Node:
        """/sys/module/xen_pciback: a built-in driver has only its parameters."""
        m = self.model
        n = len(parts)
        if n == 1:
            return _Node("dir", entries=["xen_pciback"])
        if parts[1] != "xen_pciback":
            raise KeyError(parts[1])
        top = ["parameters"] + (["initstate", "refcnt"] if m.pciback_module else [])
        if n == 2:
            return _Node("dir", entries=top)
        if n == 3 and parts[2] in top and parts[2] != "parameters":
            return _Node("file", 0o444, read=lambda: m.show_module(parts[2]))
        if parts[2] == "parameters":
            if n == 3:
                return _Node("dir", entries=list(_PCIBACK_PARAMS))
            if n == 4 and parts[3] in _PCIBACK_PARAMS:
                return _Node("file", 0o444, read=lambda: m.show_module(parts[3]))
        raise KeyError("/".join(parts))

    def _dev_attr(self, dev: PciDev, name: str) -> _Node:
        m = self.model
        up = "../" * (len(dev.dir_parts) + 1)     # from the device's directory to the root
        if name == "driver" and dev.driver:
            return _Node("link", target=up + "bus/pci/drivers/%s" % dev.driver)
        if name == "subsystem":
            return _Node("link", target=up + "bus/pci")
        if name == "iommu_group" and dev.iommu_group is not None:
            return _Node("link", target=up + "kernel/iommu_groups/%s" % dev.iommu_group)
        if name == "label" and dev.label is None:
            raise KeyError(name)
        # VFs sit beside their PF (pci_iov_sysfs_link)
        if name == "physfn" and dev.physfn is not None:
            return _Node("link", target="../" + dev.physfn)

        def rw(store, mode=0o644):
            return _Node("file", mode, read=lambda: m.show_device(dev, name), write=lambda buf: store(dev.bdf, buf))

        if dev.sriov is not None:
            if name.startswith("virtfn") and name[6:].isdigit() and name[6:] == str(int(name[6:])):
                return _Node("link", target="../" + dev.sriov.vfs[int(name[6:])])
            if name == "sriov_numvfs":
                return rw(m.set_numvfs)
            if name == "sriov_drivers_autoprobe":
                return rw(m.set_autoprobe)
            if name in _SRIOV_ATTRS:
                return _Node("file", 0o444, read=lambda: m.show_device(dev, name))
        if name == "config":
            return _Node("file", 0o444, read=lambda: m.show_device(dev, name), size=dev.cfg_size)
        if name == "reset" and dev.has_reset:
            return _Node("file", 0o200, write=lambda buf: m.reset(dev.bdf, buf))
        if name == "reset_method" and dev.has_reset:
            return rw(m.set_reset_method)
        if name == "enable":
            return rw(m.enable, 0o600)
        if name == "driver_override":
            return rw(m.set_driver_override)
        if name in _DEVICE_ATTRS and name not in _RESET_ATTRS:
            return _Node("file", 0o444, read=lambda: m.show_device(dev, name))
        raise KeyError(name)

    def _driver_attr(self, driver: str, name: str, mode: int) -> _Node:
        m = self.model
        stores: dict[str, Callable[[bytes], SysfsEvent]] = {
            "bind": lambda buf: m.bind(driver, buf),
            "unbind": lambda buf: m.unbind(driver, buf),
            "new_id": lambda buf: m.new_id(driver, buf),
            "remove_id": lambda buf: m.remove_id(driver, buf),
            "new_slot": m.new_slot,
            "remove_slot": m.remove_slot,
            "permissive": m.permissive_add,
            "quirks": m.quirk_add,
            "irq_handler_state": m.irq_handler_state,
            "do_flr": m.do_flr,
        }
        read = (lambda: m.show_pciback(name)) if mode & 0o444 else None
        return _Node("file", mode, read=read, write=stores.get(name) if mode & 0o222 else None)

    def _lookup(self, path: str) -> _Node:
        with self.model.lock:
            try:
                return self._resolve(path)
            except (KeyError, IndexError, ValueError):
                raise _fuse.FuseOSError(errno.ENOENT) from None

    # -- fusepy operations ----------------------------------------------

    def getattr(self, path, fh=None):
        node = self._lookup(path)
        t = self.started
        base = {"st_uid": 0, "st_gid": 0, "st_atime": t, "st_mtime": t, "st_ctime": t}
        if node.kind == "dir":
            base.update(st_mode=stat.S_IFDIR | 0o755, st_nlink=2, st_size=0)
        elif node.kind == "link":
            base.update(st_mode=stat.S_IFLNK | 0o777, st_nlink=1, st_size=len(node.target))
        else:
            base.update(st_mode=stat.S_IFREG | node.mode, st_nlink=1, st_size=node.size)
        return base

    def readdir(self, path, fh):
        node = self._lookup(path)
        if node.kind != "dir":
            raise _fuse.FuseOSError(errno.ENOTDIR)
        entries = node.entries
        if callable(entries):
            with self.model.lock:
                entries = entries()
        return [".", ".."] + list(entries)

    def readlink(self, path):
        node = self._lookup(path)
        if node.kind != "link":
            raise _fuse.FuseOSError(errno.EINVAL)
        return node.target

    def open(self, path, flags):
        node = self._lookup(path)
        if node.kind != "file":
            raise _fuse.FuseOSError(errno.EISDIR)
        acc = flags & os.O_ACCMODE
        # kernfs_fop_open: EACCES when the attribute lacks show or store.
        if acc in (os.O_RDONLY, os.O_RDWR) and node.read is None:
            raise _fuse.FuseOSError(errno.EACCES)
        if acc in (os.O_WRONLY, os.O_RDWR) and node.write is None:
            raise _fuse.FuseOSError(errno.EACCES)
        with self._fh_lock:
            fh = self._next_fh
            self._next_fh += 1
            self._open[fh] = [node, None]
        return fh

    def read(self, path, size, offset, fh):
        entry = self._open.get(fh)
        if entry is None:
            raise _fuse.FuseOSError(errno.EBADF)
        node = entry[0]
        if offset == 0 or entry[1] is None:
            # seq_file: the show runs at position 0, later reads page through it
            with self.model.lock:
                try:
                    entry[1] = node.read()
                except SysfsWriteError as exc:      # its device is gone
                    raise _fuse.FuseOSError(exc.errno) from None
        return entry[1][offset:offset + size]

    def write(self, path, data, offset, fh):
        entry = self._open.get(fh)
        if entry is None:
            raise _fuse.FuseOSError(errno.EBADF)
        node = entry[0]
        self.fs._fault(path, bytes(data))
        try:
            event = node.write(bytes(data))
        except SysfsWriteError as exc:
            raise _fuse.FuseOSError(exc.errno) from None
        self.fs._notify(event, path)
        return len(data)

    def create(self, path, mode, fi=None):
        # kernfs directories have no create(): O_CREAT on a missing name is EACCES
        raise _fuse.FuseOSError(errno.EACCES)

    def truncate(self, path, length, fh=None):
        # O_TRUNC on a sysfs attribute is accepted and ignored (shell ">").
        self._lookup(path)
        return 0

    def release(self, path, fh):
        with self._fh_lock:
            self._open.pop(fh, None)
        return 0

    def flush(self, path, fh):
        return 0

    def statfs(self, path):
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}


class SysfsFS:
    """xensim component: mounts the PCI sysfs at ``host.paths['sysfs_root']``."""

    MOUNT_TIMEOUT = 10.0
    UNMOUNT_TIMEOUT = 10.0

    def __init__(self, host):
        self.host = host
        scenario = getattr(host, "scenario", None) or {}
        self.model = PciModel(_field(scenario, "devices") or [],
                              do_flr=bool(_field(scenario, "pciback_do_flr", False)),
                              pciback_module=_field(scenario, "pciback", "module") != "builtin")
        self.root = host.paths["sysfs_root"]
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._listeners: list[Callable[[SysfsEvent], None]] = []
        self.faults = getattr(host, "faults", None)
        if self.faults is None:
            self.faults = Faults()
        self._injected: dict[str, Any] = {}     # inject()'s rules by suffix
        self._stopping = threading.Event()
        self.events: list[SysfsEvent] = []

    # -- query API for the simulated pciback and tests ------------------

    def driver_of(self, bdf: str) -> str | None:
        return self.model.driver_of(bdf)

    def is_bound(self, bdf: str, driver: str = PCIBACK) -> bool:
        return self.model.driver_of(bdf) == driver

    def exists(self, bdf: str) -> bool:
        with self.model.lock:
            return normalise_bdf(bdf) in self.model.devices

    def slots(self) -> list[str]:
        return self.model.slot_list()

    def is_permissive(self, bdf: str) -> bool:
        with self.model.lock:
            dev = self.model.devices.get(normalise_bdf(bdf))
            return bool(dev and dev.permissive)

    # A BDF that is gone (a VF disabled) reads as no state: pciback may
    # still release a device its guest had.

    def resets(self, bdf: str) -> list[str]:
        with self.model.lock:
            dev = self.model.devices.get(normalise_bdf(bdf))
            return list(dev.resets) if dev is not None else []

    def vfs(self, bdf: str) -> list[str]:
        """A PF's enabled VFs, by index ([] for any other device)."""
        return self.model.vfs_of(bdf)

    def set_in_use(self, bdf: str, domid: int | None) -> None:
        """pciback exports (domid) or releases (None) a seized device."""
        with self.model.lock:
            dev = self.model.devices.get(normalise_bdf(bdf))
            if dev is None:
                if domid is not None:
                    raise KeyError("no PCI device %s to export" % bdf)
                return
            if domid is None and dev.in_use_by is not None:
                dev.resets.append("pciback-release")   # pcistub_put_pci_dev resets
            dev.in_use_by = domid

    def in_use_by(self, bdf: str) -> int | None:
        with self.model.lock:
            dev = self.model.devices.get(normalise_bdf(bdf))
            return dev.in_use_by if dev is not None else None

    def set_permissive(self, bdf: str, value: bool = True) -> None:
        with self.model.lock:
            dev = self.model.devices.get(normalise_bdf(bdf))
            if dev is None:
                raise KeyError("no PCI device %s" % bdf)
            dev.permissive = value

    def add_listener(self, fn: Callable[[SysfsEvent], None]) -> None:
        self._listeners.append(fn)

    def inject(self, file_suffix: str, delay: float = 0.0, errno_value: int | None = None) -> None:
        """Shorthand for a ``sysfs.write`` rule on ``file=file_suffix``:
        writes sleep ``delay`` seconds (a kernel blocked in unbind), then
        fail with ``errno_value`` if given.  ``inject(suffix)`` with no delay
        and no errno removes it."""
        old = self._injected.pop(file_suffix, None)
        if old is not None:
            self.faults.remove(old)
        if errno_value is not None:
            self._injected[file_suffix] = self.faults.add("sysfs.write", "error", file=file_suffix,
                                                          errno=errno_value, seconds=delay)
        elif delay:
            self._injected[file_suffix] = self.faults.add("sysfs.write", "delay", file=file_suffix, seconds=delay)

    def _fault(self, path: str, data: bytes) -> None:
        """The ``sysfs.write`` point, on the FUSE thread before the store."""
        rel = _written_file(path)
        fault = self.faults.match("sysfs.write", file=rel, bdf=_written_bdf(rel, data))
        if fault is None:
            return
        seconds = float(fault.params.get("seconds", 0) or 0)
        if fault.action in ("delay", "error") and seconds > 0:
            self._stopping.wait(seconds)
        if fault.action == "hang":
            log.info("sysfs.write %s: hang until the fault is removed", rel)
            if not wait_removed(fault, self._stopping):
                raise _fuse.FuseOSError(errno.EIO)
        elif fault.action == "error":
            raise _fuse.FuseOSError(_errno_of(fault.params.get("errno", "EIO")))

    def _notify(self, event: SysfsEvent, path: str) -> None:
        self.events.append(event)
        # dom0's kernel reports a VF to Xen inside the store that creates or
        # removes it (its PCI bus notifier), before write(2) returns: a
        # caller that quarantines a new VF right after must find it known.
        hv = getattr(self.host, "hypervisor", None)
        if hv is not None:
            for bdf in getattr(event, "added", ()):
                hv.pci_device_add(bdf)
            for bdf in getattr(event, "removed", ()):
                hv.pci_device_remove(bdf)
        log.debug("sysfs %s: %s %s", path, event.kind, event.bdf)
        for fn in list(self._listeners):
            try:
                fn(event)
            except Exception:   # a listener must not turn a store into an error
                log.exception("sysfs listener failed")
        cb = getattr(self.host, "on_sysfs_change", None)
        if cb is not None:
            loop = getattr(self.host, "loop", None)
            if loop is not None and loop.is_running():
                loop.call_soon_threadsafe(cb, event)
            else:
                cb(event)

    # -- lifecycle -------------------------------------------------------

    @staticmethod
    def available() -> str | None:
        """None if FUSE can be used here, else why not."""
        if _fuse is None:
            return "fusepy/libfuse unavailable: %s" % (_FUSE_IMPORT_ERROR,)
        if not os.path.exists("/dev/fuse"):
            return "/dev/fuse does not exist"
        return None

    def _serve(self) -> None:
        ops_cls = type("XensimSysfs", (_Ops, _fuse.Operations), {})
        try:
            _fuse.FUSE(ops_cls(self), self.root, foreground=True, nothreads=False,
                       fsname="xensim-sysfs", subtype="xensim", direct_io=True,
                       attr_timeout=0, entry_timeout=0, negative_timeout=0)
        except BaseException as exc:   # reported by start()/stop()
            self._error = exc
        finally:
            _restore_sigpipe()

    def start_sync(self) -> None:
        why = self.available()
        if why:
            raise RuntimeError(why)
        os.makedirs(self.root, exist_ok=True)
        if os.path.ismount(self.root):
            _unmount(self.root, self.UNMOUNT_TIMEOUT)   # left over by a crashed run
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="xensim-sysfs", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.MOUNT_TIMEOUT
        while not os.path.ismount(self.root):
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError("FUSE mount of %s failed: %s" % (self.root, self._error or "fuse_main returned"))
            if time.monotonic() > deadline:
                raise RuntimeError("FUSE mount of %s did not appear within %.0f s" % (self.root, self.MOUNT_TIMEOUT))
            time.sleep(0.01)

    def stop_sync(self) -> None:
        self._stopping.set()
        if self._thread is None:
            return
        if os.path.ismount(self.root):
            _unmount(self.root, self.UNMOUNT_TIMEOUT)
        self._thread.join(self.UNMOUNT_TIMEOUT)
        if self._thread.is_alive():
            log.warning("FUSE thread for %s did not exit", self.root)
        self._thread = None

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.start_sync)

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop_sync)


def _restore_sigpipe() -> None:
    """libfuse's fuse_remove_signal_handlers() turns an ignored SIGPIPE back
    to the default (terminate), process-wide; Python runs with it ignored and
    relies on EPIPE. signal.signal() works only in the main thread, and this
    runs in the FUSE thread, hence libc."""
    try:
        ctypes.CDLL(None).signal(signal.SIGPIPE, ctypes.c_void_p(1))   # SIG_IGN
    except (OSError, AttributeError) as exc:
        log.warning("could not restore SIGPIPE to ignored: %s", exc)


def _unmount(path: str, timeout: float) -> None:
    """fusermount -u, falling back to a lazy unmount if something holds it."""
    for cmd in (["fusermount", "-u", path], ["fusermount", "-u", "-z", path], ["umount", "-l", path]):
        try:
            res = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("%s: %s", " ".join(cmd), exc)
            continue
        if res.returncode == 0 or not os.path.ismount(path):
            return
        log.warning("%s: %s", " ".join(cmd), res.stderr.decode(errors="replace").strip())

"""The privileged-call endpoint: what libxenctrl would ask of Xen.

A Unix socket at ``host.paths['hypervisor']`` speaks JSON lines: one request
``{"op": ..., ...args}`` per line, one reply per line, either
``{"ok": true, ...}`` or ``{"ok": false, "errno": "EBUSY", "error": "Device
or resource busy"}``.  A request may carry an ``"id"``, echoed in its reply.

The checks are Xen 4.17's (``xen/common/domctl.c``,
``xen/drivers/passthrough/pci.c`` and ``iommu.c``, ``xen/arch/x86/irq.c``):

* an unknown domain is ESRCH (``rcu_lock_domain_by_id`` fails);
* assign/deassign/test_assign on a domain created without passthrough (no
  IOMMU context) is EOPNOTSUPP, which libxl prints as "xc_assign_device
  failed: Operation not supported";
* dom0 is the caller: assigning to or deassigning from itself is EINVAL;
* assign of a device owned by anything but dom0 or DOMID_IO is EBUSY, of a
  device Xen does not know ENODEV; test_assign says EINVAL for both;
* deassign of a device the domain does not own is ENODEV; deassign from a
  guest sends the device to DOMID_IO (quarantine, on by default since 4.13
  builds), deassign from DOMID_IO gives it back to dom0;
* devices hidden at boot start owned by dom0, not quarantined;
* SR-IOV VFs are known from when dom0 enables them until it disables them
  (PHYSDEVOP_pci_device_add/remove, which dom0's kernel issues as each VF
  appears or goes: ``pci_device_add``/``pci_device_remove`` here), owned
  by dom0 when they appear;
* unmapping a pirq that is not mapped is EINVAL; mapping a GSI to a pirq
  already used by another GSI is EEXIST;
* on a host whose IOMMU is off (scenario ``iommu: false``: no IOMMU found,
  or ``iommu=0`` on Xen's command line) every assign, deassign and
  test_assign is EOPNOTSUPP (``iommu_do_domctl``), and physinfo's
  capabilities lack ``directio`` and ``iommu_hap_pt_share``, so ``xl info``
  prints no ``hvm_directio``/``pv_directio``.

Every call is recorded in ``host.grants`` as ``{"time", "op", "args",
"result"}`` (result: the reply without ``ok``/``id``, or the errno name).
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .sysfs import vf_bdf

log = logging.getLogger(__name__)

DOMID_IO = 0x7FF1
DOMID_INVALID = 0x7FF4
XEN_DOMCTL_DEV_RDM_RELAXED = 1
NR_PIRQS = 256
# XEN_DOMINF_* flags of xen_domctl_getdomaininfo
DOMINF_DYING = 1 << 0
DOMINF_HVM_GUEST = 1 << 1
DOMINF_SHUTDOWN = 1 << 2
DOMINF_PAUSED = 1 << 3
DOMINF_BLOCKED = 1 << 4
DOMINF_RUNNING = 1 << 5

MAX_LINE = 64 * 1024
# XEN_SYSCTL_PHYSCAP_* bits of physinfo's capabilities (public/sysctl.h)
PHYSCAP_HVM, PHYSCAP_PV, PHYSCAP_DIRECTIO = 1 << 0, 1 << 1, 1 << 2
PHYSCAP_HAP, PHYSCAP_SHADOW, PHYSCAP_IOMMU_HAP_PT_SHARE = 1 << 3, 1 << 4, 1 << 5
PHYSCAP_GNTTAB_V1, PHYSCAP_GNTTAB_V2 = 1 << 8, 1 << 9


class HvError(Exception):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name

    @property
    def message(self) -> str:
        return os.strerror(getattr(errno_mod, self.name))


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _sbdf_of(bdf: str) -> int:
    dom, bus, rest = bdf.split(":")
    slot, func = rest.split(".")
    return int(dom, 16) << 16 | int(bus, 16) << 8 | (int(slot, 16) & 0x1F) << 3 | (int(func) & 7)


def format_sbdf(sbdf: int) -> str:
    return "%04x:%02x:%02x.%d" % (sbdf >> 16, (sbdf >> 8) & 0xFF, (sbdf >> 3) & 0x1F, sbdf & 7)


def _normalise(bdf: str) -> str:
    parts = str(bdf).strip().split(":")
    if len(parts) == 2:
        parts.insert(0, "0")
    slot, func = parts[2].split(".")
    return "%04x:%02x:%02x.%d" % (int(parts[0], 16), int(parts[1], 16), int(slot, 16), int(func))


class RangeSet:
    """Inclusive integer ranges, merged (Xen's rangeset)."""

    def __init__(self):
        self.ranges: list[tuple[int, int]] = []

    def add(self, start: int, end: int) -> None:
        out = []
        for s, e in self.ranges:
            if e + 1 < start or end + 1 < s:
                out.append((s, e))
            else:
                start, end = min(s, start), max(e, end)
        out.append((start, end))
        self.ranges = sorted(out)

    def remove(self, start: int, end: int) -> None:
        out = []
        for s, e in self.ranges:
            if e < start or end < s:
                out.append((s, e))
                continue
            if s < start:
                out.append((s, start - 1))
            if end < e:
                out.append((end + 1, e))
        self.ranges = out

    def contains(self, start: int, end: int) -> bool:
        return any(s <= start and end <= e for s, e in self.ranges)


@dataclass
class Domain:
    domid: int
    hvm: bool = False
    passthrough: bool = True
    paused: bool = False
    dying: bool = False
    iomem: RangeSet = field(default_factory=RangeSet)
    ioports: RangeSet = field(default_factory=RangeSet)
    irqs: RangeSet = field(default_factory=RangeSet)
    pirqs: dict[int, int] = field(default_factory=dict)   # pirq -> gsi


@dataclass
class PciOwner:
    owner: int = 0
    quarantine: bool = False


class Hypervisor:
    """xensim component; also a Python API for tests."""

    def __init__(self, host):
        self.host = host
        self.path = host.paths["hypervisor"]
        if getattr(host, "grants", None) is None:
            host.grants = []
        self.grants: list[dict] = host.grants
        self.domains: dict[int, Domain] = {0: Domain(0)}
        self.devices: dict[int, PciOwner] = {}
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task] = set()
        self._faults: dict[tuple[str, int | None], str] = {}
        scenario = getattr(host, "scenario", None) or {}
        self.iommu = bool(_field(scenario, "iommu", True))
        for d in _field(scenario, "domains") or []:
            self.add_domain(
                int(_field(d, "domid")),
                hvm=_field(d, "type", "pv") in ("hvm", "pvh"),
                passthrough=str(_field(d, "passthrough", "enabled")) not in ("disabled", "False", "false"),
                paused=_field(d, "state", "running") in ("paused", "creating"))
        for dev in _field(scenario, "devices") or []:
            # Hidden or not, every host device starts with the hardware
            # domain; only pci-assignable-add quarantines (assign to DOMID_IO).
            self.devices[_sbdf_of(_normalise(_field(dev, "bdf")))] = PciOwner(0)
            iov = _field(dev, "sriov")
            for i in range(int(_field(iov, "numvfs", 0) or 0) if iov else 0):
                self.pci_device_add(vf_bdf(_field(dev, "bdf"), int(_field(iov, "offset", 1)),
                                           int(_field(iov, "stride", 1)), i))

    # -- test / simulator API -------------------------------------------

    def add_domain(self, domid: int, hvm: bool = False, passthrough: bool = True, paused: bool = False) -> None:
        self.domains[domid] = Domain(domid, hvm=hvm, passthrough=passthrough, paused=paused)

    def destroy_domain(self, domid: int) -> None:
        """Domain death: pci_release_devices() deassigns into quarantine."""
        self.domains.pop(domid, None)
        for dev in self.devices.values():
            if dev.owner == domid:
                dev.owner, dev.quarantine = DOMID_IO, True

    def pci_device_add(self, bdf: str) -> None:
        self.devices.setdefault(_sbdf_of(_normalise(bdf)), PciOwner(0))

    def pci_device_remove(self, bdf: str) -> None:
        # Xen's pci_remove_device drops it even while a guest has it.
        self.devices.pop(_sbdf_of(_normalise(bdf)), None)

    def owner(self, sbdf: int | str) -> int | None:
        if isinstance(sbdf, str):
            sbdf = _sbdf_of(_normalise(sbdf))
        dev = self.devices.get(sbdf)
        return dev.owner if dev else None

    def permissions(self, domid: int) -> dict:
        d = self.domains[domid]
        return {"iomem": list(d.iomem.ranges), "ioport": list(d.ioports.ranges),
                "irq": list(d.irqs.ranges), "pirqs": dict(d.pirqs)}

    def inject(self, op: str, errno_name: str | None, domid: int | None = None) -> None:
        """Fault point: make ``op`` (for ``domid``, or any) fail with
        ``errno_name`` until cleared with ``errno_name=None``; e.g. ENOSYS
        from assign_device as an older Xen without an IOMMU answered."""
        if errno_name is None:
            self._faults.pop((op, domid), None)
        else:
            self._faults[(op, domid)] = errno_name

    def calls(self, op: str | None = None) -> list[dict]:
        return [g for g in self.grants if op is None or g["op"] == op]

    # -- the hypercalls --------------------------------------------------

    def _dom(self, domid: Any) -> Domain:
        if not isinstance(domid, int) or domid not in self.domains:
            raise HvError("ESRCH")
        return self.domains[domid]

    @staticmethod
    def _int(args: dict, name: str) -> int:
        val = args.get(name)
        if not isinstance(val, int) or isinstance(val, bool):
            raise HvError("EINVAL")
        return val

    def op_iomem_permission(self, a: dict) -> dict:
        d = self._dom(a.get("domid"))
        mfn, nr = self._int(a, "first_mfn"), self._int(a, "nr_mfns")
        if mfn < 0 or nr < 0 or mfn + nr - 1 < mfn:
            raise HvError("EINVAL")
        (d.iomem.add if a.get("allow") else d.iomem.remove)(mfn, mfn + nr - 1)
        return {}

    def op_ioport_permission(self, a: dict) -> dict:
        d = self._dom(a.get("domid"))
        fp, np_ = self._int(a, "first_port"), self._int(a, "nr_ports")
        if fp < 0 or np_ < 0 or fp + np_ <= fp or fp + np_ > 0x10000:
            raise HvError("EINVAL")
        (d.ioports.add if a.get("allow") else d.ioports.remove)(fp, fp + np_ - 1)
        return {}

    def op_irq_permission(self, a: dict) -> dict:
        d = self._dom(a.get("domid"))
        pirq = self._int(a, "pirq")
        if not 0 <= pirq < NR_PIRQS:
            raise HvError("EINVAL")
        (d.irqs.add if a.get("allow") else d.irqs.remove)(pirq, pirq)
        return {}

    def op_physdev_map_pirq(self, a: dict) -> dict:
        d = self._dom(a.get("domid"))
        index = self._int(a, "index")
        pirq = a.get("pirq", -1)
        if not isinstance(pirq, int) or not 0 <= index < NR_PIRQS:
            raise HvError("EINVAL")
        if pirq < 0:
            pirq = index      # libxc: map.pirq = *pirq < 0 ? index : *pirq
        current = next((p for p, g in d.pirqs.items() if g == index), None)
        if current is not None and current != pirq:
            raise HvError("EEXIST")
        if d.pirqs.get(pirq, index) != index:
            raise HvError("EBUSY")
        d.pirqs[pirq] = index
        return {"pirq": pirq}

    def op_physdev_unmap_pirq(self, a: dict) -> dict:
        d = self._dom(a.get("domid"))
        pirq = self._int(a, "pirq")
        if pirq not in d.pirqs:
            raise HvError("EINVAL")
        del d.pirqs[pirq]
        return {}

    def _iommu_dom(self, a: dict, allow_invalid: bool = False) -> Domain | None:
        if not self.iommu:
            raise HvError("EOPNOTSUPP")
        domid = a.get("domid")
        if allow_invalid and domid == DOMID_INVALID:
            return None
        if domid == DOMID_IO:
            return Domain(DOMID_IO)
        d = self._dom(domid)
        if not d.passthrough:
            raise HvError("EOPNOTSUPP")
        if domid == 0:      # "Don't support self-(de)assignment of devices."
            raise HvError("EINVAL")
        return d

    def op_assign_device(self, a: dict) -> dict:
        d = self._iommu_dom(a)
        sbdf, flags = self._int(a, "sbdf"), a.get("flags", 0)
        if flags not in (0, XEN_DOMCTL_DEV_RDM_RELAXED) or (d.dying if d else False):
            raise HvError("EINVAL")
        dev = self.devices.get(sbdf)
        if dev is None:
            raise HvError("ENODEV")
        if dev.owner not in (0, DOMID_IO):
            raise HvError("EBUSY")
        dev.owner = d.domid
        if d.domid == DOMID_IO:
            dev.quarantine = True
        return {}

    def op_test_assign_device(self, a: dict) -> dict:
        self._iommu_dom(a, allow_invalid=True)
        sbdf = self._int(a, "sbdf")
        dev = self.devices.get(sbdf)
        if dev is None or dev.owner not in (0, DOMID_IO):
            raise HvError("EINVAL")   # "already assigned, or non-existent"
        return {}

    def op_deassign_device(self, a: dict) -> dict:
        d = self._iommu_dom(a)
        sbdf = self._int(a, "sbdf")
        dev = self.devices.get(sbdf)
        if dev is None or dev.owner != d.domid:
            raise HvError("ENODEV")
        if d.domid != DOMID_IO:
            # default quarantine (iommu=quarantine): back to DOMID_IO
            dev.owner, dev.quarantine = DOMID_IO, True
        else:
            dev.owner, dev.quarantine = 0, False
        return {}

    def _info(self, d: Domain) -> dict:
        flags = (DOMINF_HVM_GUEST if d.hvm else 0) | (DOMINF_PAUSED if d.paused else 0) | \
            (DOMINF_DYING if d.dying else 0) | (0 if d.paused else DOMINF_BLOCKED)
        return {"domid": d.domid, "flags": flags, "hvm": d.hvm, "paused": d.paused, "dying": d.dying}

    def op_physinfo(self, a: dict) -> dict:
        """XEN_SYSCTL_physinfo, as an x86 host with VT-x/EPT (or AMD-V/NPT) reports it."""
        caps = PHYSCAP_HVM | PHYSCAP_PV | PHYSCAP_HAP | PHYSCAP_SHADOW | PHYSCAP_GNTTAB_V1 | PHYSCAP_GNTTAB_V2
        if self.iommu:
            caps |= PHYSCAP_DIRECTIO | PHYSCAP_IOMMU_HAP_PT_SHARE
        return {"physinfo": {"capabilities": caps, "nr_cpus": 2, "threads_per_core": 1, "cores_per_socket": 2}}

    def op_domain_getinfo(self, a: dict) -> dict:
        return {"info": self._info(self._dom(a.get("domid")))}

    def op_domain_getinfolist(self, a: dict) -> dict:
        first, count = self._int(a, "first_domid"), self._int(a, "max_domains")
        doms = sorted(k for k in self.domains if k >= first)[:max(count, 0)]
        return {"infos": [self._info(self.domains[k]) for k in doms]}

    def call(self, op: str, args: dict) -> dict:
        """Run one call, record it; raises HvError."""
        fn = getattr(self, "op_" + str(op), None)
        entry = {"time": time.time(), "op": op, "args": dict(args)}
        try:
            if fn is None:
                raise HvError("ENOSYS")
            fault = self._faults.get((op, args.get("domid"))) or self._faults.get((op, None))
            if fault:
                raise HvError(fault)
            result = fn(args)
        except HvError as exc:
            entry["result"] = exc.name
            self.grants.append(entry)
            raise
        entry["result"] = dict(result) if result else "ok"
        self.grants.append(entry)
        return result

    # -- socket ----------------------------------------------------------

    def handle_line(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise ValueError("a request is a JSON object with an op")
        except ValueError as exc:
            return {"ok": False, "errno": "EINVAL", "error": "bad request: %s" % exc}
        rid = req.pop("id", None)
        op = req.pop("op")
        try:
            reply = {"ok": True}
            reply.update(self.call(op, req))
        except HvError as exc:
            reply = {"ok": False, "errno": exc.name, "error": exc.message}
        if rid is not None:
            reply["id"] = rid
        return reply

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    writer.write(b'{"ok": false, "errno": "E2BIG", "error": "Argument list too long"}\n')
                    return
                if not line.strip():
                    continue
                writer.write(json.dumps(self.handle_line(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def _spawn(self, reader, writer) -> None:
        task = asyncio.ensure_future(self._client(reader, writer))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._spawn, path=self.path, limit=MAX_LINE)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            if self._clients:
                await asyncio.wait(list(self._clients), timeout=5)
            await asyncio.wait_for(self._server.wait_closed(), timeout=5)
            self._server = None
        if os.path.exists(self.path):
            os.unlink(self.path)

"""xen-pcifront as Linux 6.1 runs it in a PV guest (drivers/pci/xen-pcifront.c).

Rules reproduced:

* the guest's frontend bus watches ``device``; a new ``device/pci/<devid>``
  whose ``state`` is Initialising is probed: grant a page and allocate an
  event channel, write ``pci-op-ref``, ``event-channel``, ``magic`` = 7 in
  one transaction, then Initialised; only then watch ``<backend>/state``;
* backend Connected and we Initialised: scan every ``root-K`` (or 0000:00
  with the error "No PCI Roots found, trying 0000:00"), then Connected;
* backend Reconfiguring and we Connected: remove the devices whose
  ``state-i`` is 5 (found through ``vdev-i``), then Reconfiguring;
* backend Reconfigured and we Reconfiguring: rescan every root (all new
  devices at once), then Connected;
* backend Closing (or Closed when we are not): unless we are already at
  Closing or beyond -- which includes Reconfiguring (7), a quirk of the real
  driver -- drop the buses and go Closed;
* when our node vanishes: drop the otherend watch, the buses and the event
  channel; closing the already-unbound channel fails, which the real driver
  reports as ``error/device/pci/0/error`` = "22 freeing event channel <port>".

A guest only runs these when it runs: a paused guest's events wait, a guest
being created has not booted (its kernel starts in ``boot()``).

Grant references and event channels are allocated lowest-free from 8, what
a 1-vCPU Linux PV guest gets (ports 1-7 and refs 0-7 are taken by the
console, xenstore, timers and IPIs); real Xen may hand out a different ref
when an old one's foreign mapping is still being torn down.

Fault points (ctx ``domid``, the guest's):

* ``pcifront.reconfigure``: ``delay`` (``seconds``) before acting on the
  backend's Reconfiguring, ``hang``: the guest does not answer it (its
  xenwatch is blocked) until the rule is removed;
* ``pcifront.connect``: ``delay`` (``seconds``) or ``hang`` before the guest
  connects to a backend that went Connected (pcifront_try_connect: scan the
  roots, then Connected): with ``hang`` the frontend stays Initialised, a
  guest whose pcifront never connects, until the rule is removed.
"""

from __future__ import annotations

import logging

from . import (CLOSED, CLOSING, CONNECTED, EINVAL, ENOENT, INITIALISED, INITIALISING, RECONFIGURED,
               RECONFIGURING, T_FE_CLOSE, T_FE_DETACH, T_FE_INITIALISED, T_FE_PROBE, T_FE_PUBLISH,
               T_FE_RESCAN, T_FE_SCAN, Kernel, XenbusDevice, node_depth_root, split_bdf)
from ..xenstore.store import XsError

log = logging.getLogger(__name__)

XEN_PCI_MAGIC = "7"
# The guest kernel's frontend bus watch token (a static kernel address).
FRONTEND_BUS_TOKEN = "FFFFFFFF82BB0DA0"
FIRST_FREE = 8


class PcifrontDevice(XenbusDevice):
    def __init__(self, nodename: str, otherend: str, otherend_id: int):
        super().__init__(nodename, otherend, otherend_id)
        self.gnt_ref: int | None = None
        self.evtchn: int | None = None
        self.roots: set[tuple[int, int]] = set()


class GuestKernel:
    """A guest's kernel: the frontend xenbus, with pcifront if it has it."""

    def __init__(self, host, kernel: Kernel, pcifront: bool):
        self.host = host
        self.k = kernel
        self.pcifront = pcifront
        self.devices: dict[str, PcifrontDevice] = {}
        # What the guest's PCI core sees: virtual BDF -> host BDF.
        self.visible: dict[str, str] = {}
        self._grefs: set[int] = set()
        self._ports: set[int] = set()
        self.booted = False

    async def boot(self) -> None:
        """Kernel start: register the bus watch, probe what already exists."""
        if self.booted:
            return
        self.booted = True
        self.k.watch("device", self._bus_changed, token=FRONTEND_BUS_TOKEN)
        for dtype in self.k.directory("device"):
            for devid in self.k.directory(f"device/{dtype}"):
                await self._bus_changed(f"device/{dtype}/{devid}")

    # ------------------------------------------------------ frontend bus

    def _rel(self, path: str) -> str:
        prefix = f"/local/domain/{self.k.domid}/"
        return path[len(prefix):] if path.startswith(prefix) else path

    async def _bus_changed(self, path: str) -> None:
        node = self._rel(path)
        if node.count("/") < 2:
            return
        if not self.k.exists(node):
            for name in list(self.devices):
                if name == node or name.startswith(node + "/"):
                    await self._remove(self.devices[name])
            return
        parts = node.split("/")
        if parts[1] != "pci" or not self.pcifront:
            return
        root = node_depth_root(node, 2)
        if root is None or root in self.devices:
            return
        if self.k.read_state(root) != INITIALISING:
            return
        await self._probe(root)

    async def _probe(self, nodename: str) -> None:
        be_id = self.k.read_int(f"{nodename}/backend-id")
        be_path = self.k.read(f"{nodename}/backend")
        dev = PcifrontDevice(nodename, be_path or "", -1 if be_id is None else be_id)
        if be_id is None or not be_path or not self.k.exists(be_path):
            await self.k.dev_fatal(dev, ENOENT, f"unable to read other end from {nodename}.  "
                                                "missing or inaccessible.")
            return
        self.devices[nodename] = dev
        await self.k.delay(T_FE_PROBE)
        dev.gnt_ref = self._alloc(self._grefs)
        dev.evtchn = self._alloc(self._ports)
        for _attempt in range(10):
            tx = self.k.store.transaction_start(self.k.conn)
            try:
                self.k.write(f"{nodename}/pci-op-ref", str(dev.gnt_ref), tx)
                await self.k.delay(T_FE_PUBLISH)
                self.k.write(f"{nodename}/event-channel", str(dev.evtchn), tx)
                await self.k.delay(T_FE_PUBLISH)
                self.k.write(f"{nodename}/magic", XEN_PCI_MAGIC, tx)
            except XsError:
                self.k.store.transaction_end(self.k.conn, tx, False)
                await self.k.dev_fatal(dev, EINVAL, "Error writing configuration for backend")
                return
            try:
                self.k.store.transaction_end(self.k.conn, tx, True)
                break
            except XsError as exc:
                if exc.name != "EAGAIN":
                    await self.k.dev_fatal(dev, EINVAL, "Error completing transaction for backend")
                    return
        await self.k.delay(T_FE_INITIALISED)
        await self.k.switch_state(dev, INITIALISED)
        if not dev.removed:
            dev.otherend_token = self.k.watch(f"{dev.otherend}/state",
                                              lambda p, d=dev: self._backend_changed(d, p))

    async def _remove(self, dev: PcifrontDevice) -> None:
        """xenbus_dev_remove(): otherend watch first, then free_pdev."""
        if dev.removed:
            return
        dev.removed = True
        if dev.otherend_token:
            self.k.unwatch(dev.otherend_token)
        self._free_roots(dev)
        if dev.evtchn is not None:
            # unbind_from_irqhandler() already closed the port, so
            # xenbus_free_evtchn()'s EVTCHNOP_close fails with -EINVAL.
            self.k.dev_error(dev, EINVAL, f"freeing event channel {dev.evtchn}")
            self._ports.discard(dev.evtchn)
        if dev.gnt_ref is not None:
            self._grefs.discard(dev.gnt_ref)
        self.devices.pop(dev.nodename, None)

    # ------------------------------------------------------ driver logic

    async def _backend_changed(self, dev: PcifrontDevice, path: str) -> None:
        if dev.removed or not path.startswith(dev.otherend):
            return
        be_state = self.k.read_state(dev.otherend)
        if be_state == CONNECTED:
            await self._try_connect(dev)
        elif be_state in (CLOSING, CLOSED):
            if be_state == CLOSED and dev.state == CLOSED:
                return
            await self._try_disconnect(dev)
        elif be_state == RECONFIGURING:
            fault = self.host.fault("pcifront.reconfigure", domid=self.k.domid)
            if fault is not None and not await self.host.fault_wait(fault, self.k):
                return
            await self._detach_devices(dev)
        elif be_state == RECONFIGURED:
            await self._attach_devices(dev)

    def _read_roots(self, dev: PcifrontDevice) -> list[tuple[int, int]] | None:
        num = self.k.read_int(f"{dev.otherend}/root_num")
        if num is None:
            self.k.dev_error(dev, ENOENT, "No PCI Roots found, trying 0000:00")
            return [(0, 0)]
        roots = []
        for i in range(num):
            text = self.k.read(f"{dev.otherend}/root-{i}")
            try:
                d, b = (int(x, 16) for x in (text or "").split(":"))
            except ValueError:
                return None
            roots.append((d, b))
        return roots

    async def _scan(self, dev: PcifrontDevice, roots: list[tuple[int, int]]) -> None:
        """Enumerate each root bus through pciback (config-space reads)."""
        vbus = self.host.pciback.vbus(self.k.domid) if self.host.pciback else {}
        for domain, bus in roots:
            dev.roots.add((domain, bus))
            if (domain, bus) != (0, 0):
                continue        # vpci publishes one root, 0000:00
            for (slot, func), bdf in sorted(vbus.items()):
                vbdf = "%04x:%02x:%02x.%d" % (domain, bus, slot, func)
                if vbdf not in self.visible:
                    self.visible[vbdf] = bdf
                    log.info("D%d: pcifront: New device on %s found.", self.k.domid, vbdf)

    async def _try_connect(self, dev: PcifrontDevice) -> None:
        if self.k.read_state(dev.nodename) != INITIALISED:
            return
        fault = self.host.fault("pcifront.connect", domid=self.k.domid)
        if fault is not None:
            await self.host.fault_wait(fault, self.k)
            # Held for long, the world may have moved on.
            if (dev.removed or self.k.read_state(dev.nodename) != INITIALISED
                    or self.k.read_state(dev.otherend) != CONNECTED):
                return
        roots = self._read_roots(dev)
        if roots is None:
            await self.k.dev_fatal(dev, EINVAL, "Error reading PCI root")
            return
        await self.k.delay(T_FE_SCAN)
        await self._scan(dev, roots)
        await self.k.switch_state(dev, CONNECTED)

    async def _try_disconnect(self, dev: PcifrontDevice) -> None:
        prev = self.k.read_state(dev.nodename)
        if prev >= CLOSING:
            return
        await self.k.delay(T_FE_CLOSE)
        if prev == CONNECTED:
            self._free_roots(dev)
        await self.k.switch_state(dev, CLOSED)

    async def _detach_devices(self, dev: PcifrontDevice) -> None:
        if self.k.read_state(dev.nodename) != CONNECTED:
            return
        num = self.k.read_int(f"{dev.otherend}/num_devs")
        if num is None:
            await self.k.dev_fatal(dev, EINVAL, "Error reading number of PCI devices")
            return
        for i in range(num):
            if self.k.read_int(f"{dev.otherend}/state-{i}", 0) != CLOSING:
                continue
            parts = split_bdf(self.k.read(f"{dev.otherend}/vdev-{i}") or "")
            if parts is None:
                await self.k.dev_fatal(dev, EINVAL, f"Error reading PCI device {i}")
                return
            vbdf = "%04x:%02x:%02x.%d" % parts
            if self.visible.pop(vbdf, None) is not None:
                log.info("D%d: pcifront: PCI device %s removed.", self.k.domid, vbdf)
        await self.k.delay(T_FE_DETACH)
        await self.k.switch_state(dev, RECONFIGURING)

    async def _attach_devices(self, dev: PcifrontDevice) -> None:
        if self.k.read_state(dev.nodename) != RECONFIGURING:
            return
        roots = self._read_roots(dev)
        if roots is None:
            await self.k.dev_fatal(dev, EINVAL, "Error reading PCI root")
            return
        await self.k.delay(T_FE_RESCAN)
        await self._scan(dev, roots)
        await self.k.switch_state(dev, CONNECTED)

    def _free_roots(self, dev: PcifrontDevice) -> None:
        for vbdf in [v for v in self.visible if (int(v[:4], 16), int(v[5:7], 16)) in dev.roots]:
            del self.visible[vbdf]
        dev.roots.clear()

    @staticmethod
    def _alloc(used: set[int]) -> int:
        n = FIRST_FREE
        while n in used:
            n += 1
        used.add(n)
        return n

"""xen-pciback as Linux 6.1 runs it in dom0 (drivers/xen/xen-pciback/).

Rules reproduced (xenbus.c, pci_stub.c, vpci.c):

* the dom0 backend bus watches ``backend``; a new ``backend/pci/<domid>/<devid>``
  whose ``state`` is Initialising is probed: InitWait, then a watch on the
  node whose callback is also called at once;
* InitWait: export every ``dev-i`` (``vdev-i``, ``state-i = 3``), publish the
  root (``root-0``, ``root_num``), Initialised, then try to connect;
* Initialised seen by the backend watch: export or remove the ``state-i`` 1
  and 5 entries without changing state (Linux 5.11 fix for libxl >= 4.15,
  which writes coldplug devices one at a time);
* connect needs backend and frontend Initialised and the frontend's
  ``pci-op-ref``, ``event-channel`` and ``magic`` = 7;
* frontend Reconfiguring: act on every ``state-i`` 1 (export) and 5 (remove,
  located through ``vdev-i``), then Reconfigured; frontend Connected:
  Connected; Closing/Closed: disconnect and follow; Unknown: unregister;
* vpci: a device joins the virtual slot of an exported function of the same
  physical slot (keeping its function number), else takes the lowest free
  slot; ``vdevfn-i`` is *not* read (pciback never looks at it; the real
  trace with an explicit vslot still shows sequential ``vdev-i``);
* failures are ``xenbus_dev_fatal``: ``error/backend/pci/<domid>/<devid>/error``
  = "<errno> <message>" and the backend goes to Closing.

Fault points (``host.faults``):

* ``pciback.export`` (ctx ``bdf``, ``domid``): action ``error`` makes the
  export fail as if the device were not available ("Couldn't locate PCI
  device ...! perhaps already in-use?");
* ``pciback.reconfigure`` (ctx ``domid``): action ``delay`` (``seconds``)
  before acting on a Reconfiguring frontend, ``hang``: dom0's xenwatch is
  blocked there until the rule is removed;
* ``pciback.connect`` (ctx ``domid``, the frontend's): ``delay``
  (``seconds``) or ``hang`` before pciback maps the frontend's ring and goes
  Connected (xen_pcibk_do_attach): with ``hang`` the backend stays
  Initialised until the rule is removed.
"""

from __future__ import annotations

import asyncio
import logging

from . import (CLOSED, CLOSING, CONNECTED, EFAULT, EINVAL, ENOENT, ENOMEM, INITIALISED, INITIALISING,
               INITWAIT, RECONFIGURED, RECONFIGURING, UNKNOWN, T_BE_CONNECT, T_BE_EXPORT,
               T_BE_FE_CHANGED, T_BE_PROBE, T_BE_ROOT, T_BE_SUBSTATE, T_BE_SWITCH, Kernel, XenbusDevice,
               node_depth_root, split_bdf)

log = logging.getLogger(__name__)

PCI_SLOT_MAX = 32
XEN_PCI_MAGIC = "7"
DRV_NAME = "xen-pciback"
# The dom0 kernel's backend bus watch token (a static kernel address).
BACKEND_BUS_TOKEN = "FFFFFFFF82BB0B60"


class ExportError(Exception):
    def __init__(self, err: int, message: str):
        super().__init__(message)
        self.err = err
        self.message = message


class PcibackDevice(XenbusDevice):
    """struct xen_pcibk_device with vpci's slot lists."""

    def __init__(self, nodename: str, otherend: str, otherend_id: int):
        super().__init__(nodename, otherend, otherend_id)
        self.slots: list[list[str]] = [[] for _unused in range(PCI_SLOT_MAX)]   # host BDFs per virtual slot
        self.be_token: str | None = None
        self.connected = False          # ring mapped and event channel bound
        self.ring: tuple[int, int] | None = None
        self.lock = asyncio.Lock()      # pdev->dev_lock

    def vbus(self) -> dict[tuple[int, int], str]:
        """(virtual slot, function) -> host BDF, what pci ops reach."""
        out = {}
        for slot, entries in enumerate(self.slots):
            for bdf in entries:
                out[(slot, int(bdf.rsplit(".", 1)[1], 16))] = bdf
        return out


class Pciback:
    """The dom0 kernel with xen-pciback loaded."""

    def __init__(self, host, kernel: Kernel):
        self.host = host
        self.k = kernel
        self.devices: dict[str, PcibackDevice] = {}     # nodename -> device

    async def start(self) -> None:
        self.k.watch("backend", self._bus_changed, token=BACKEND_BUS_TOKEN)

    # ----------------------------------------------------- queries (tests)

    def device_for(self, domid: int) -> PcibackDevice | None:
        for dev in self.devices.values():
            if dev.otherend_id == domid and not dev.removed:
                return dev
        return None

    def vbus(self, domid: int) -> dict[tuple[int, int], str]:
        dev = self.device_for(domid)
        return dev.vbus() if dev is not None and dev.connected else {}

    # ------------------------------------------------- the backend xenbus

    async def _bus_changed(self, path: str) -> None:
        """xenbus_dev_changed() on the backend bus (levels = 3)."""
        node = path[len("/local/domain/0/"):] if path.startswith("/local/domain/0/") else path
        if node.count("/") < 2:
            return
        if not self.k.exists(node):
            # xenbus_cleanup_devices: every device at or below node goes.
            for name in list(self.devices):
                if name == node or name.startswith(node + "/"):
                    await self._remove(self.devices[name])
            return
        parts = node.split("/")
        if len(parts) < 2 or parts[1] != "pci":
            return          # no other backend driver is simulated
        root = node_depth_root(node, 3)
        if root is None or root in self.devices:
            return
        if self.k.read_state(root) != INITIALISING:
            return          # xenbus_probe_node: not a new device
        await self._probe(root)

    async def _probe(self, nodename: str) -> None:
        fe_id = self.k.read_int(f"{nodename}/frontend-id")
        fe_path = self.k.read(f"{nodename}/frontend")
        dev = PcibackDevice(nodename, fe_path or "", -1 if fe_id is None else fe_id)
        # talk_to_otherend(): the frontend must be readable.
        if fe_id is None or not fe_path or not self.k.exists(fe_path):
            await self.k.dev_fatal(dev, ENOENT, f"unable to read other end from {nodename}.  "
                                                "missing or inaccessible.")
            return
        self.devices[nodename] = dev
        await self.k.delay(T_BE_PROBE)
        await self.k.switch_state(dev, INITWAIT)
        dev.be_token = self.k.watch(nodename, lambda _p, d=dev: self._be_watch(d))
        await self._be_watch(dev)
        if not dev.removed:
            dev.otherend_token = self.k.watch(f"{dev.otherend}/state",
                                              lambda p, d=dev: self._otherend_changed(d, p))

    async def _remove(self, dev: PcibackDevice) -> None:
        """xenbus_dev_remove(): drop the otherend watch, then free_pdev."""
        if dev.removed:
            return
        dev.removed = True
        if dev.otherend_token:
            self.k.unwatch(dev.otherend_token)
        if dev.be_token:
            self.k.unwatch(dev.be_token)
        self._disconnect(dev)
        for entries in dev.slots:
            for bdf in list(entries):
                self._put_pci_dev(bdf)
            entries.clear()
        self.devices.pop(dev.nodename, None)

    # ------------------------------------------------------ driver logic

    async def _be_watch(self, dev: PcibackDevice) -> None:
        if dev.removed:
            return
        state = self.k.read_state(dev.nodename)
        if state == INITWAIT:
            await self._setup_backend(dev)
        elif state == INITIALISED:
            await self._reconfigure(dev, INITIALISED)

    async def _otherend_changed(self, dev: PcibackDevice, path: str) -> None:
        if dev.removed or not path.startswith(dev.otherend):
            return
        fe_state = self.k.read_state(dev.otherend)
        if fe_state == INITIALISED:
            await self._attach(dev)
        elif fe_state == RECONFIGURING:
            await self._reconfigure(dev, RECONFIGURING)
        elif fe_state == CONNECTED:
            await self.k.delay(T_BE_FE_CHANGED)
            await self.k.switch_state(dev, CONNECTED)
        elif fe_state == CLOSING:
            self._disconnect(dev)
            await self.k.switch_state(dev, CLOSING)
        elif fe_state == CLOSED:
            self._disconnect(dev)
            await self.k.switch_state(dev, CLOSED)
            if self.k.read_int(f"{dev.nodename}/online", 0) == 0:
                await self._remove(dev)
        elif fe_state == UNKNOWN:
            await self._remove(dev)

    def _read_num_devs(self, dev) -> int | None:
        return self.k.read_int(f"{dev.nodename}/num_devs")

    async def _setup_backend(self, dev: PcibackDevice) -> None:
        async with dev.lock:
            if self.k.read_state(dev.nodename) != INITWAIT:
                return
            num = self._read_num_devs(dev)
            if num is None:
                await self.k.dev_fatal(dev, EINVAL, "Error reading number of devices")
                return
            for i in range(num):
                text = self.k.read(f"{dev.nodename}/dev-{i}")
                if text is None:
                    await self.k.dev_fatal(dev, ENOENT, "Error reading device configuration")
                    return
                parts = split_bdf(text)
                if parts is None:
                    await self.k.dev_fatal(dev, EINVAL, "Error parsing pci device configuration")
                    return
                if not await self._export(dev, parts, i):
                    return
                await self.k.delay(T_BE_SUBSTATE)
                self.k.write(f"{dev.nodename}/state-{i}", str(INITIALISED))
            await self.k.delay(T_BE_ROOT)
            self._publish_root(dev)
            await self.k.delay(T_BE_SWITCH)
            await self.k.switch_state(dev, INITIALISED)
        await self._attach(dev)

    async def _reconfigure(self, dev: PcibackDevice, state: int) -> None:
        if state == RECONFIGURING:
            fault = self.host.fault("pciback.reconfigure", domid=dev.otherend_id)
            if fault is not None:
                await self.host.fault_wait(fault, self.k)
        async with dev.lock:
            if self.k.read_state(dev.nodename) != state:
                return
            num = self._read_num_devs(dev)
            if num is None:
                await self.k.dev_fatal(dev, EINVAL, "Error reading number of devices")
                return
            for i in range(num):
                sub = self.k.read_int(f"{dev.nodename}/state-{i}", UNKNOWN)
                if sub == INITIALISING:
                    text = self.k.read(f"{dev.nodename}/dev-{i}")
                    if text is None:
                        await self.k.dev_fatal(dev, ENOENT, "Error reading device configuration")
                        return
                    parts = split_bdf(text)
                    if parts is None:
                        await self.k.dev_fatal(dev, EINVAL, "Error parsing pci device configuration")
                        return
                    if not await self._export(dev, parts, i):
                        return
                    self._publish_root(dev)
                    await self.k.delay(T_BE_SUBSTATE)
                    self.k.write(f"{dev.nodename}/state-{i}", str(INITIALISED))
                elif sub == CLOSING:
                    text = self.k.read(f"{dev.nodename}/vdev-{i}")
                    if text is None:
                        await self.k.dev_fatal(dev, ENOENT, "Error reading device configuration")
                        return
                    parts = split_bdf(text)
                    if parts is None:
                        await self.k.dev_fatal(dev, EINVAL, "Error parsing pci device configuration")
                        return
                    if not self._remove_device(dev, parts):
                        # Linux returns without Reconfigured: the cycle hangs.
                        log.debug("%s: no device at vdev %s", dev.nodename, text)
                        return
            if state != RECONFIGURING:
                return
            await self.k.delay(T_BE_SWITCH)
            await self.k.switch_state(dev, RECONFIGURED)

    async def _attach(self, dev: PcibackDevice) -> None:
        async with dev.lock:
            if dev.removed or self.k.read_state(dev.nodename) != INITIALISED:
                return
            if self.k.read_state(dev.otherend) != INITIALISED:
                return
            ref = self.k.read_int(f"{dev.otherend}/pci-op-ref")
            port = self.k.read_int(f"{dev.otherend}/event-channel")
            magic = self.k.read(f"{dev.otherend}/magic")
            if ref is None or port is None or magic is None:
                await self.k.dev_fatal(dev, ENOENT, "Error reading configuration from frontend")
                return
            if magic != XEN_PCI_MAGIC:
                await self.k.dev_fatal(dev, EFAULT, f"version mismatch ({magic}/{XEN_PCI_MAGIC}) with pcifront - "
                                                    f"halting {DRV_NAME}")
                return
            fault = self.host.fault("pciback.connect", domid=dev.otherend_id)
            if fault is not None:
                await self.host.fault_wait(fault, self.k)
                if (dev.removed or self.k.read_state(dev.nodename) != INITIALISED
                        or self.k.read_state(dev.otherend) != INITIALISED):
                    return
            await self.k.delay(T_BE_CONNECT)
            dev.ring = (ref, port)
            dev.connected = True
            await self.k.switch_state(dev, CONNECTED)

    def _disconnect(self, dev: PcibackDevice) -> None:
        dev.connected = False
        dev.ring = None

    # ---------------------------------------------------- pcistub + vpci

    async def _export(self, dev: PcibackDevice, parts: tuple[int, int, int, int], devid: int) -> bool:
        dom, bus, slot, func = parts
        bdf = "%04x:%02x:%02x.%d" % (dom, bus, slot, func)
        await self.k.delay(T_BE_EXPORT)
        fault = self.host.fault("pciback.export", bdf=bdf, domid=dev.otherend_id)
        if fault is not None and fault.action == "error":
            ok = False
        else:
            ok = self.host.pcistub_get(bdf, dev.otherend_id)
        if not ok:
            await self.k.dev_fatal(dev, EINVAL, f"Couldn't locate PCI device ({bdf})! perhaps already in-use?")
            return False
        # vpci: keep functions of one physical slot together.
        vslot = None
        for s, entries in enumerate(dev.slots):
            if entries and entries[0].rsplit(".", 1)[0] == bdf.rsplit(".", 1)[0]:
                vslot = s
                break
        if vslot is None:
            vslot = next((s for s, entries in enumerate(dev.slots) if not entries), None)
        if vslot is None:
            self.host.pcistub_put(bdf)
            await self.k.dev_fatal(dev, ENOMEM, "No more space on root virtual PCI bus")
            return False
        dev.slots[vslot].append(bdf)
        # The PV protocol uses %02x for the function.
        self.k.write(f"{dev.nodename}/vdev-{devid}", "%04x:%02x:%02x.%02x" % (0, 0, vslot, func))
        return True

    def _publish_root(self, dev: PcibackDevice) -> None:
        """The virtual bus has one root, 0000:00, published once."""
        num = self.k.read_int(f"{dev.nodename}/root_num", 0) or 0
        for i in range(num):
            text = self.k.read(f"{dev.nodename}/root-{i}")
            if text is not None:
                try:
                    d, b = (int(x, 16) for x in text.split(":"))
                except ValueError:
                    continue
                if d == 0 and b == 0:
                    return
        self.k.write(f"{dev.nodename}/root-{num}", "0000:00")
        self.k.write(f"{dev.nodename}/root_num", str(num + 1))

    def _remove_device(self, dev: PcibackDevice, parts: tuple[int, int, int, int]) -> bool:
        dom, bus, slot, func = parts
        if dom != 0 or bus != 0 or slot >= PCI_SLOT_MAX:
            return False
        for bdf in dev.slots[slot]:
            if int(bdf.rsplit(".", 1)[1], 16) == func:
                dev.slots[slot].remove(bdf)
                self._put_pci_dev(bdf)
                return True
        return False

    def device_gone(self, bdf: str) -> None:
        """pcistub_remove of a device a guest still has (a VF disabled under
        it): xen_pcibk_release_pci_dev drops it from the virtual bus; the
        backend's xenstore nodes stay as they were."""
        for dev in self.devices.values():
            for entries in dev.slots:
                if bdf in entries:
                    log.warning("%s: removing device %s while still in-use by domain %d!",
                                dev.nodename, bdf, dev.otherend_id)
                    entries.remove(bdf)

    def _put_pci_dev(self, bdf: str) -> None:
        """pcistub_put_pci_dev: reset the device and make it free again."""
        self.host.pcistub_put(bdf)

"""SimHost: a scenario turned into a running simulated Xen host.

One asyncio loop (in a background thread for ``start()``, or the caller's for
``xensim serve``) runs the xenstored sockets, the simulated kernels (dom0's
xen-pciback, each guest's xen-pcifront), the hypervisor recorder, the FUSE
sysfs and the QEMU QMP servers, started in that order.

The xenstore contents are what Xen 4.17's libxl leaves for each domain
(``libxl__domain_make``, ``libxl__build_post``, ``libxl__spawn_stub_dm``):
paths, values and permissions. Devices listed on a domain are attached the
way ``xl create`` does it (``libxl__device_pci_add_xenstore`` with
``starting``, one transaction per device; a stub domain gets them as PV
hotplug), and the simulated kernels then do what the real ones do.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .boot import build as build_boot, parse_boot
from . import scenario as scenario_mod
from .faults import Faults, until_removed
from .kernel import CONNECTED, Kernel
from .kernel.pciback import Pciback
from .kernel.pcifront import GuestKernel
from .scenario import DomainSpec, Scenario, bdf_parts, bdf_to_xs
from .xenstore.server import InternalConn, XenstoredServer
from .xenstore.store import Conn, Store, XsError

log = logging.getLogger(__name__)

DOMID_IO = 0x7FF1
OPTS = "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict"
_STATE_RE = re.compile(r"^/local/domain/\d+/(backend/pci/\d+/\d+/state(-\d+)?|device/pci/\d+/state)$")
_PCI_TREE_RE = re.compile(r"^/local/domain/\d+/(backend/pci/\d+/\d+|device/pci/\d+)$")


def _optional(module: str, name: str):
    """A component class, or None (logged) while its module is not there."""
    try:
        mod = __import__(f"xensim.{module}", fromlist=[name])
        return getattr(mod, name)
    except ImportError as exc:
        log.warning("xensim.%s not available, %s skipped: %s", module, name, exc)
        return None


class _Observer(Conn):
    """Records backend/frontend state changes as the store fires them, so
    ``host.transitions`` has the order in which they were committed."""

    def __init__(self, host: "SimHost"):
        super().__init__(0, "X0")
        self.host = host
        self.last: dict[str, str | None] = {}

    def deliver_event(self, path: str, token: str) -> None:
        if _STATE_RE.match(path) or _PCI_TREE_RE.match(path):
            value = self.host.store.peek(path)
            text = None if value is None else value.decode(errors="replace")
            if _PCI_TREE_RE.match(path):
                if text is not None:
                    return          # only the disappearance of a whole node
                path = path + "/state"
                if self.last.get(path) is None:
                    return
            if self.last.get(path, "") == text:
                return
            self.last[path] = text
            who = next((e.label for e in reversed(self.host.store.access_log)
                        if e.op != "w event" and e.label != self.label), "?")
            self.host.transitions.append((time.time(), who, path, text))


class SimHost:
    """A simulated Xen host; see docs/xensim.md ("Components")."""

    def __init__(self, scenario: Scenario | str | os.PathLike, state_dir: str | os.PathLike,
                 timing_scale: float | None = None, mount_sysfs: bool = True, xenstored: str | None = None):
        if not isinstance(scenario, Scenario):
            scenario = scenario_mod.load(scenario)
        self.scenario = scenario
        # "oxenstored" (Debian's dom0) or "c": see xenstore/store.py.
        self.xenstored_flavour = xenstored or scenario.xenstored
        self.state_dir = Path(state_dir).resolve()
        self.timing_scale = scenario.timing_scale if timing_scale is None else float(timing_scale)
        self.mount_sysfs = mount_sysfs
        d = self.state_dir
        self.paths: dict[str, Any] = {
            "xenstored": str(d / "run/xenstored/socket"),
            "xenstored_as": {str(dom.domid): str(d / f"run/xenstored/socket-dom{dom.domid}")
                             for dom in scenario.domains},
            "sysfs_root": str(d / "sys"),
            "qmp_dir": str(d / "run/xen"),
            "userdata_dir": str(d / "var/lib/xen"),
            "hypervisor": str(d / "run/xensim/privcmd"),
            "boot_root": str(d / "root"),
        }
        self.faults = Faults(scenario.faults)
        self.transitions: list[tuple[float, str, str, str | None]] = []
        self.grants: list[dict] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.store: Store | None = None
        self.servers: list[XenstoredServer] = []
        self.dom0: Kernel | None = None
        self.pciback: Pciback | None = None
        self.kernels: dict[int, Kernel] = {}
        self.guests: dict[int, GuestKernel] = {}
        self.hypervisor = None
        self.sysfs = None
        self.qemu = None
        self.components: list[Any] = []     # started ones, stopped in reverse
        self.warnings: list[str] = []
        self.domain_states: dict[int, str] = {d.domid: d.state for d in scenario.domains}
        self._stub_of: dict[int, int] = {d.domid: d.stubdom for d in scenario.domains if d.stubdom}
        # pcistub fallback when sysfs.py is absent: bdf -> domid using it
        self._stub_in_use: dict[str, int] = {}
        self.toolstack: InternalConn | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._stop_event: asyncio.Event | None = None

    # ================================================================ API

    def start(self, timeout: float = 60) -> "SimHost":
        """Run the host on a loop in a background thread; returns when ready."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._thread_main, name="xensim-host", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"simulated host did not start within {timeout} s")
        if self._start_error is not None:
            self._thread.join(10)
            self._thread = None
            raise self._start_error
        return self

    def stop(self, timeout: float = 30) -> None:
        if self._thread is None:
            return
        if self.loop is not None and self._stop_event is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("xensim host thread did not stop within %s s", timeout)
        self._thread = None

    def __enter__(self) -> "SimHost":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def call(self, fn: Callable, *args, timeout: float = 30, **kwargs):
        """Run ``fn(*args)`` on the loop thread (awaiting it if it is a
        coroutine) and return its result; safe from any other thread."""
        async def run():
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result
        if self.loop is None:
            raise RuntimeError("host not started")
        if self._in_loop_thread():
            raise RuntimeError("host.call from the loop thread would deadlock; call directly")
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def settle(self, timeout: float = 10) -> None:
        """Wait until every simulated kernel is idle (no event queued or
        being handled), from a test thread."""
        self.call(self.asettle, timeout, timeout=timeout + 5)

    def unpause(self, domid: int) -> None:
        self._sync(self.aunpause, domid)

    def pause(self, domid: int) -> None:
        self._sync(self.apause, domid)

    def start_guest(self, domid: int) -> None:
        """A domain 'creating' or 'paused' runs: its kernel boots or resumes."""
        self._sync(self.astart_guest, domid)

    def destroy(self, domid: int) -> None:
        self._sync(self.adestroy, domid)

    def guest_devices(self, domid: int) -> dict[str, str]:
        """What the guest's PCI core sees: virtual BDF -> host BDF."""
        g = self.guests.get(domid)
        return dict(g.visible) if g is not None else {}

    def read(self, path: str) -> str | None:
        """Peek at the store (thread-safe)."""
        value = self._sync(lambda: self.store.peek(path))
        return None if value is None else value.decode(errors="replace")

    def record_transition(self, who: str, path: str, value: str | None) -> None:
        self.transitions.append((time.time(), who, path, value))

    # ---------------------------------------------------- xenstored lifecycle
    # The daemon behind every xenstored socket (toolstack and guest ones):
    # see xenstore/server.py. The store and the in-process kernels carry on.

    def xenstored_kill(self, remove_socket: bool = False) -> None:
        """xenstored dies: every client connection is closed, connects are
        refused (the socket file stays unless ``remove_socket``)."""
        self._sync(self.axenstored_kill, remove_socket)

    def xenstored_restart(self) -> None:
        """xenstored runs again on the same sockets with the same tree."""
        self._sync(self.axenstored_restart)

    def xenstored_pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered."""
        self._sync(self.axenstored_pause)

    def xenstored_resume(self) -> None:
        """SIGCONT: held replies and events go out, in order."""
        self._sync(self.axenstored_resume)

    async def axenstored_kill(self, remove_socket: bool = False) -> None:
        for srv in self.servers:
            await srv.kill(remove_socket)

    async def axenstored_restart(self) -> None:
        for srv in self.servers:
            await srv.restart()

    async def axenstored_pause(self) -> None:
        for srv in self.servers:
            srv.pause()

    async def axenstored_resume(self) -> None:
        for srv in self.servers:
            srv.resume()

    # ---------------------------------------------------- fault helpers

    def fault(self, point: str, **ctx):
        return self.faults.match(point, **ctx)

    async def fault_wait(self, fault, kernel: Kernel | None = None) -> bool:
        """Carry out a delay or hang fault where a driver stands; True when
        it may go on. ``hang`` blocks the caller (a kernel's xenwatch: its
        later events queue behind, as behind a stuck Linux callback) until
        the rule is removed; ``kernel`` counts as settled meanwhile, since
        nothing it does can happen before. The host stopping cancels it."""
        if fault.action == "delay":
            await asyncio.sleep(float(fault.params.get("seconds", 1.0)))
            return True
        if fault.action == "hang":
            log.info("fault %s: hang until removed", fault.point)
            if kernel is not None:
                kernel.holding.append(fault)
            try:
                await until_removed(fault)
            finally:
                if kernel is not None:
                    kernel.holding.remove(fault)
            log.info("fault %s removed: going on", fault.point)
        return True

    # ---------------------------------------------------- pcistub state

    def pcistub_get(self, bdf: str, domid: int) -> bool:
        """pcistub_get_pci_dev_by_slot: bound to pciback and not in use."""
        if self.sysfs is not None:
            if not self.sysfs.is_bound(bdf) or self.sysfs.in_use_by(bdf) is not None:
                return False
            self.sysfs.set_in_use(bdf, domid)
            return True
        spec = self.scenario.device(bdf)
        if spec is None or spec.driver != "pciback" or bdf in self._stub_in_use:
            return False
        self._stub_in_use[bdf] = domid
        return True

    def pcistub_put(self, bdf: str) -> None:
        if self.sysfs is not None:
            with contextlib.suppress(KeyError):
                self.sysfs.set_in_use(bdf, None)
        else:
            self._stub_in_use.pop(bdf, None)

    def on_sysfs_change(self, event) -> None:
        """sysfs told us of a store (on the loop): pciback drops the VFs that
        went from its guests' buses. (Xen was told inside the store.)"""
        for bdf in getattr(event, "removed", ()):
            if self.pciback is not None:
                self.pciback.device_gone(bdf)

    # ================================================================ loop

    def _in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def _sync(self, fn, *args):
        if self._in_loop_thread() or self._thread is None:
            raise RuntimeError("use the a* coroutine on the loop thread")
        return self.call(fn, *args)

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.serve(ready=self._started.set))
        except BaseException as exc:      # noqa: BLE001 - handed to start()
            if not self._started.is_set():
                self._start_error = exc
                self._started.set()
            else:
                log.exception("xensim host failed")
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def serve(self, ready: Callable[[], None] | None = None) -> None:
        """Start, call ``ready``, run until ``request_stop``, stop."""
        self._stop_event = asyncio.Event()
        try:
            await self.astart()
        except BaseException:
            await self.astop()
            raise
        if ready is not None:
            ready()
        try:
            await self._stop_event.wait()
        finally:
            await self.astop()

    def request_stop(self) -> None:
        """From the loop thread (e.g. a signal handler)."""
        if self._stop_event is not None:
            self._stop_event.set()

    async def astart(self) -> None:
        self.loop = asyncio.get_running_loop()
        for key in ("xenstored", "hypervisor"):
            os.makedirs(os.path.dirname(self.paths[key]), exist_ok=True)
        for key in ("qmp_dir", "userdata_dir"):
            os.makedirs(self.paths[key], exist_ok=True)
        build_boot(self.paths["boot_root"], self.scenario.boot or parse_boot(None),
                   [dev.bdf for dev in self.scenario.devices if dev.hidden])
        self.store = Store(faults=self.faults, flavour=self.xenstored_flavour)
        self.toolstack = InternalConn(self.store, 0, "A0", None, self.loop)

        # 1. store and xenstored sockets
        self.servers = [XenstoredServer(self, self.paths["xenstored"], 0)]
        for domid, path in self.paths["xenstored_as"].items():
            self.servers.append(XenstoredServer(self, path, int(domid)))
        for srv in self.servers:
            await srv.start()
            self.components.append(srv)
        observer = _Observer(self)
        self.store.watch(observer, "/local/domain", "xensim-transitions")
        self._populate()

        # Components are built first: pciback consults sysfs's model.
        hv_cls = _optional("hypervisor", "Hypervisor")
        sysfs_cls = _optional("sysfs", "SysfsFS")
        qemu_cls = _optional("qemu", "QemuFarm")
        if sysfs_cls is not None:
            self.sysfs = sysfs_cls(self)
        if hv_cls is not None:
            self.hypervisor = hv_cls(self)
            self._init_hypervisor()

        # 2. kernel drivers
        self.dom0 = Kernel(self, 0)
        self.dom0.start()
        self.pciback = Pciback(self, self.dom0)
        await self.pciback.start()
        self.components.append(_KernelStopper(self))

        # 3. hypervisor, 4. sysfs, 5. qemu
        if self.hypervisor is not None:
            await self.hypervisor.start()
            self.components.append(self.hypervisor)
        else:
            self.warnings.append("hypervisor recorder missing (xensim/hypervisor.py)")
        if self.sysfs is not None:
            why = self.sysfs.available() if hasattr(self.sysfs, "available") else None
            if not self.mount_sysfs:
                why = "disabled by the caller"
            if why:
                log.warning("sysfs not mounted (%s); the pciback model still works", why)
                self.warnings.append(f"sysfs not mounted: {why}")
                self.paths["sysfs_root"] = None
            else:
                try:
                    await self.sysfs.start()
                    self.components.append(self.sysfs)
                except (RuntimeError, OSError) as exc:
                    log.warning("sysfs mount failed (%s); the pciback model still works", exc)
                    self.warnings.append(f"sysfs not mounted: {exc}")
                    self.paths["sysfs_root"] = None
        else:
            self.warnings.append("sysfs missing (xensim/sysfs.py)")
            self.paths["sysfs_root"] = None
        if qemu_cls is not None:
            self.qemu = qemu_cls(self)
            await self.qemu.start()
            self.components.append(self.qemu)
        else:
            self.warnings.append("QEMU QMP servers missing (xensim/qemu.py)")

        # Domains come to life as xl create leaves them.
        for dom in self.scenario.domains:
            if dom.is_stubdom and dom.state != "creating":
                self._make_guest_kernel(dom)
        for dom in self.scenario.domains:
            if dom.devices:
                await self._attach_initial(dom)
        for dom in self.scenario.domains:
            if not dom.is_stubdom and dom.state != "creating":
                self._make_guest_kernel(dom)
        # Every initial device is a backend reconfiguration to settle: a host
        # of hundreds of guests needs more than a small one, more still on a
        # loaded machine.
        devices = sum(len(dom.devices) for dom in self.scenario.domains)
        await self.asettle(30 + 0.1 * devices + 0.1 * len(self.scenario.domains))

    async def astop(self) -> None:
        for comp in reversed(self.components):
            try:
                await asyncio.wait_for(comp.stop(), timeout=20)
            except Exception:       # keep stopping the others
                log.exception("stopping %r failed", comp)
        self.components.clear()
        if self.toolstack is not None:
            self.toolstack.close()

    async def asettle(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 3:
            kernels = [self.dom0] + list(self.kernels.values())
            if all(k is None or k.idle or k.held or not k.running.is_set() for k in kernels):
                quiet += 1
            else:
                quiet = 0
            if time.monotonic() > deadline:
                raise TimeoutError("simulated kernels did not settle")
            await asyncio.sleep(0.002)

    # ============================================================ domains

    def _seed(self, path: str, value: str = "", perms: list[str] | None = None) -> None:
        self.store.seed(path, value.encode(), perms)

    def _populate(self) -> None:
        """What xenstored, xen-init-dom0 and libxl leave for each domain."""
        self._seed("/local", "", ["n0"])
        self._seed("/local/domain", "", ["n0"])
        self._seed("/local/domain/0", "", ["n0"])
        self._seed("/local/domain/0/name", "Domain-0")
        self._seed("/local/domain/0/domid", "0")
        self._seed("/vm", "", ["n0"])
        self._seed("/libxl", "", ["n0"])
        for dom in self.scenario.domains:
            self._make_domain(dom)
        for dev in self.scenario.devices:
            if dev.driver == "pciback" and not dev.hidden:
                # Made assignable with xl pci-assignable-add, which writes
                # only what it must remember: no /libxl/pci/<bdf> at all for
                # a device that had no driver (real-xen-transcript.txt; found
                # by tests/xenvm/test_differential.py's replay).
                base = f"/libxl/pci/{bdf_to_xs(dev.bdf)}"
                if dev.original_driver:
                    self._seed(f"{base}/driver_path", f"/sys/bus/pci/drivers/{dev.original_driver}")
                if dev.name:
                    self._seed(f"{base}/name", dev.name)
        for dom in self.scenario.domains:
            self._write_userdata(dom)

    def _make_domain(self, dom: DomainSpec) -> None:
        d = dom.domid
        dp = f"/local/domain/{d}"
        vm = f"/vm/{dom.uuid}"
        ro = ["n0", f"r{d}"]
        rw = [f"n{d}"]
        # libxl__domain_make / xs_introduce_domain: the store page and port
        # seeded below (store/ring-ref, store/port).
        self.store.introduce(None, d, 0xFEFFF + d, 1)
        self._seed(dp, "", ro)
        self._seed(vm, "", ro)
        self._seed(f"/libxl/{d}", "", ["n0"])
        self._seed(f"/libxl/{d}/device", "", ["n0"])
        self._seed(f"{dp}/vm", vm)
        self._seed(f"{dp}/name", dom.name)
        for sub in ("cpu", "memory", "device", "control"):
            self._seed(f"{dp}/{sub}", "", ro)
        self._seed(f"{dp}/device/suspend/event-channel", "", rw)
        if dom.type == "hvm":
            self._seed(f"{dp}/hvmloader", "", ro)
        controls = ["shutdown", "feature-poweroff", "feature-reboot", "feature-suspend"]
        if dom.type == "hvm":
            controls += ["feature-s3", "feature-s4"]
        for sub in controls + ["sysrq"]:
            self._seed(f"{dp}/control/{sub}", "", rw)
        for sub in ("data", "drivers", "feature", "attr", "error"):
            self._seed(f"{dp}/{sub}", "", rw)
        self._seed(f"{vm}/uuid", dom.uuid)
        self._seed(f"{vm}/name", dom.name)
        self._seed(f"{dp}/control/platform-feature-multiprocessor-suspend", "1")
        self._seed(f"{dp}/control/platform-feature-xs_reset_watches", "1")
        self._seed(f"/libxl/{d}/type", dom.type)
        # libxl__build_post
        kb = dom.memory * 1024
        self._seed(f"{dp}/memory/static-max", str(kb))
        self._seed(f"{dp}/memory/target", str(kb))
        self._seed(f"{dp}/memory/videoram", "-1" if dom.type == "pv" else "8192")
        self._seed(f"{dp}/domid", str(d))
        self._seed(f"{dp}/store/port", "1")
        self._seed(f"{dp}/store/ring-ref", str(0xFEFFF + d))
        for cpu in range(dom.vcpus):
            self._seed(f"{dp}/cpu/{cpu}/availability", "online")
        if dom.type in ("pv", "hvm"):
            self._seed(f"{vm}/image/ostype", "linux" if dom.type == "pv" else "hvm")
        self._seed(f"{vm}/start_time", "%.2f" % time.time())
        if dom.type == "hvm":
            self._seed(f"/libxl/{d}/dm-version", "qemu_xen")
            if dom.device_model == "stubdom":
                self._seed(f"{dp}/image/device-model-domid", str(dom.stubdom))
            else:
                self._seed(f"/local/domain/0/device-model/{d}/state", "running")
        if dom.target is not None:
            self._seed(f"{dp}/target", str(dom.target))
            self.store.set_target(None, d, dom.target)
            # QEMU in the stub domain, reached through vchan-socket-proxy.
            self._seed(f"{dp}/device-model/{dom.target}/state", "running")
            self._seed(f"/local/domain/0/device-model/{d}/qmp-proxy-state", "running")

    def userdata_path(self, dom: DomainSpec) -> str:
        return os.path.join(self.paths["userdata_dir"], f"userdata-d.{dom.domid}.{dom.uuid}.libxl-json")

    def _write_userdata(self, dom: DomainSpec) -> None:
        """libxl's stored domain config (not for stub domains: they have none)."""
        if dom.is_stubdom:
            return
        if dom.passthrough == "disabled":
            pt = "disabled"
        else:
            # libxl__arch_passthrough_mode_setdefault: PV cannot share the
            # page tables with the IOMMU.
            pt = "sync_pt" if dom.type == "pv" else "share_pt"
        b_info: dict[str, Any] = {
            "max_vcpus": dom.vcpus,
            "max_memkb": dom.memory * 1024,
            "target_memkb": dom.memory * 1024,
            "type." + dom.type: {},
        }
        if dom.type == "hvm":
            b_info["device_model_version"] = "qemu_xen"
            if dom.device_model == "stubdom":
                b_info["device_model_stubdomain_override"] = "True"
        pcidevs = []
        for bdf in dom.devices:
            seg, bus, slot, func = bdf_parts(bdf)
            entry: dict[str, Any] = {}
            for key, val in (("domain", seg), ("bus", bus), ("dev", slot), ("func", func)):
                if val:
                    entry[key] = val
            entry.update({"rdm_policy": "strict", "vfunc_mask": 1})
            pcidevs.append(entry)
        config = {
            "c_info": {"type": dom.type, "name": dom.name, "uuid": dom.uuid, "passthrough": pt},
            "b_info": b_info,
        }
        if pcidevs:
            config["pcidevs"] = pcidevs
        with open(self.userdata_path(dom), "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=4)
            fh.write("\n")

    def _init_hypervisor(self) -> None:
        """Device ownership as the scenario's history left it."""
        hv = self.hypervisor
        devices = getattr(hv, "devices", None)
        if devices is None:
            return
        for dev in self.scenario.devices:
            seg, bus, slot, func = bdf_parts(dev.bdf)
            sbdf = seg << 16 | bus << 8 | slot << 3 | func
            owner = devices.get(sbdf)
            if owner is None:
                continue
            holder = self.scenario.owner_of(dev.bdf)
            if holder is not None:
                # libxl assigns to the guest, or (stubdom) to the guest too.
                owner.owner, owner.quarantine = holder.domid, False
            elif dev.driver == "pciback" and not dev.hidden:
                owner.owner, owner.quarantine = DOMID_IO, True

    # ------------------------------------------------------ initial devices

    async def _attach_initial(self, dom: DomainSpec) -> None:
        """libxl__device_pci_add at creation; a stub domain's as PV hotplug."""
        target = dom.stubdom if dom.device_model == "stubdom" else dom.domid
        starting = target == dom.domid
        be = f"/local/domain/0/backend/pci/{target}/0"
        fe = f"/local/domain/{target}/device/pci/0"
        ts = self.toolstack
        name = self.scenario.domain(target).name
        for bdf in dom.devices:
            ts.write(f"/libxl/pci/{bdf_to_xs(bdf)}/domid", str(dom.domid).encode())
            num_text = self.store.peek(f"{be}/num_devs")
            if num_text is not None and not starting:
                await self._wait_value(f"{be}/state", str(CONNECTED), 10)
            num = int(num_text) if num_text is not None else 0
            tx = ts.transaction_start()
            if num_text is None:
                with contextlib.suppress(XsError):     # libxl ignores xs_rm's result
                    ts.rm(be, tx)
                ts.mkdir(be, tx)
                ts.set_perms(be, ["n0", f"r{target}"], tx)
                for key, val in (("frontend", fe), ("frontend-id", str(target)), ("online", "1"),
                                 ("state", "1"), ("domain", name)):
                    ts.write(f"{be}/{key}", val.encode(), tx)
                with contextlib.suppress(XsError):
                    ts.rm(fe, tx)
                ts.mkdir(fe, tx)
                ts.set_perms(fe, [f"n{target}", "r0"], tx)
                for key, val in (("backend", be), ("backend-id", "0"), ("state", "1")):
                    ts.write(f"{fe}/{key}", val.encode(), tx)
            for key, val in ((f"key-{num}", bdf), (f"dev-{num}", bdf), (f"opts-{num}", OPTS),
                             (f"state-{num}", "1"), ("num_devs", str(num + 1))):
                ts.write(f"{be}/{key}", val.encode(), tx)
            if num and not starting:
                ts.write(f"{be}/state", b"7", tx)
            ts.transaction_end(tx, True)
            if not starting:
                await self._wait_value(f"{be}/state", str(CONNECTED), 10)

    async def _wait_value(self, path: str, value: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cur = self.store.peek(path)
            if cur is not None and cur.decode() == value:
                return True
            await asyncio.sleep(0.002)
        log.warning("%s did not become %s within %s s", path, value, timeout)
        return False

    # ------------------------------------------------------ guest kernels

    def _make_guest_kernel(self, dom: DomainSpec) -> None:
        if dom.domid in self.kernels:
            return
        running = self.domain_states.get(dom.domid) == "running"
        k = Kernel(self, dom.domid, running=running)
        k.start()
        g = GuestKernel(self, k, pcifront=dom.pcifront)
        self.kernels[dom.domid] = k
        self.guests[dom.domid] = g
        # The boot itself runs on the kernel's worker: a paused guest boots
        # (probes its devices) only once unpaused.
        k.call_soon(g.boot)

    def _set_paused(self, domid: int, paused: bool) -> None:
        doms = getattr(self.hypervisor, "domains", None) or {}
        dom = doms.get(domid)
        if dom is not None and hasattr(dom, "paused"):
            dom.paused = paused

    async def aunpause(self, domid: int) -> None:
        await self.astart_guest(domid)

    async def apause(self, domid: int) -> None:
        if domid not in self.domain_states:
            raise KeyError(f"no domain {domid}")
        self.domain_states[domid] = "paused"
        self._set_paused(domid, True)
        k = self.kernels.get(domid)
        if k is not None:
            k.pause()

    async def astart_guest(self, domid: int) -> None:
        dom = self.scenario.domain(domid)
        if dom is None or domid not in self.domain_states:
            raise KeyError(f"no domain {domid}")
        self.domain_states[domid] = "running"
        self._set_paused(domid, False)
        if domid not in self.kernels:
            self._make_guest_kernel(dom)
        self.kernels[domid].unpause()

    async def adestroy(self, domid: int) -> None:
        """xl destroy: the guest stops, libxl removes its nodes and devices."""
        dom = self.scenario.domain(domid)
        if dom is None or domid not in self.domain_states:
            raise KeyError(f"no domain {domid}")
        k = self.kernels.pop(domid, None)
        self.guests.pop(domid, None)
        if k is not None:
            await k.stop()
        if self.hypervisor is not None and hasattr(self.hypervisor, "destroy_domain"):
            self.hypervisor.destroy_domain(domid)
        ts = self.toolstack
        for bdf_xs in list(self.store.ls("/libxl/pci") or []):
            if self.store.peek(f"/libxl/pci/{bdf_xs}/domid") == str(domid).encode():
                ts.rm(f"/libxl/pci/{bdf_xs}/domid")
        for kind in list(self.store.ls("/local/domain/0/backend") or []):
            path = f"/local/domain/0/backend/{kind}/{domid}"
            if self.store.peek(path) is not None:
                ts.rm(path)
        for path in (f"/local/domain/0/device-model/{domid}", f"/local/domain/{domid}",
                     f"/vm/{dom.uuid}", f"/libxl/{domid}"):
            if self.store.peek(path) is not None:
                ts.rm(path)
        with contextlib.suppress(XsError):
            self.store.release(None, domid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.userdata_path(dom))
        del self.domain_states[domid]
        stub = self._stub_of.get(domid)
        if stub is not None and stub in self.domain_states:
            await self.adestroy(stub)


class _KernelStopper:
    """Stops every simulated kernel (as one component)."""

    def __init__(self, host: SimHost):
        self.host = host

    async def stop(self) -> None:
        for k in list(self.host.kernels.values()) + [self.host.dom0]:
            if k is not None:
                await k.stop()

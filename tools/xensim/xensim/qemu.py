"""QMP servers of the simulated device models (QEMU in dom0 or in a stub domain).

One ``DeviceModel`` per HVM guest of the scenario, serving QMP on
``<qmp_dir>/qmp-libxl-<guest domid>`` (libxl's path for both a dom0 QEMU and
a stubdom QEMU, whose ``vchan-socket-proxy`` serves the same path). It speaks
QMP as QEMU 7.2 does: the greeting, capabilities negotiation, one client at a
time (a second client is accepted by the kernel but greeted only when the
first one leaves), errors with QEMU's classes and texts (``QEMU_ERRORS``),
and the commands the toolstack uses: ``qmp_capabilities``, ``query-status``,
``query-pci``, ``device_add`` (driver ``xen-pci-passthrough``), ``device_del``
with ``DEVICE_DELETED``.

Machine models:

* ``pc``: Xen's ``xenfv`` (i440FX/PIIX3, ACPI PCI hotplug on ``pci.0``):
  host bridge 00.0, ISA 01.0, IDE 01.1, ACPI 01.3, Xen platform device
  02.0, Cirrus VGA 03.0 (as on real Xen 4.17); passed-through devices take
  the first free slot (04) unless ``addr`` asks for one. An unplug needs the
  guest's ACPI eject.
* ``q35``: the Q35 base devices; as in real QEMU 7.2 the root bus ``pcie.0``
  does not support hotplug, so ``device_add``/``device_del`` on it fail with
  QEMU's text (devices of the scenario are coldplugged at start).

Unplug (``qemu.unplug`` of the scenario, or a ``qemu.unplug`` fault): ``ack``
(the running guest ejects at once), ``delay`` (after ``unplug_delay`` s),
``never``. A guest that is not running never acknowledges. A second
``device_del`` within 5 s of the first is refused (the unplug is pending);
after that it sends the request again and succeeds.

Fault points (``host.faults.match(point, **ctx)``, see faults.py):

* ``qemu.device_add`` (ctx ``domid``, ``bdf`` = hostaddr, ``command``):
  ``error`` -- the device's realize fails (default text: the stubdom's sysfs
  does not show the device yet, Qubes issue 6203); params ``desc``,
  ``class``; ``times=N`` for "fails N times then works".
* ``qemu.command`` (ctx ``domid``, ``command``): ``delay`` (``seconds``:
  then the command runs, e.g. a ``device_add`` that completes late, and is
  answered if the client is still there), ``hang`` (the monitor answers
  nothing until the rule is removed, then runs the command), ``close`` (drop
  the connection, QEMU survives), ``error`` (``class``, ``desc``).
* ``qemu.unplug`` (ctx ``domid``, ``bdf``, ``name`` = qdev id): ``ack``,
  ``delay`` (``seconds``), ``never``: overrides the scenario for matching
  devices.
* ``qemu.dead`` (ctx ``domid``, ``command``): QEMU dies on that request: the
  connection is closed without a reply and nothing listens any more (the
  socket file stays, so a connect is refused, as after ``kill -9``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import os
import re
import socket
import threading
import time
from typing import Any

from .faults import until_removed
from .scenario import QemuSpec, normalise_bdf

# ---------------------------------------------------------------------------
# QEMU's texts. Observed with Debian's qemu-system-x86_64 7.2.22
# (1:7.2+dfsg-7+deb12u18) over QMP, started as in
# tests/unit/plugins/module_utils/test_qmp_real_qemu.py, unless marked
# "source:" (read from QEMU 7.2's code where a real QEMU cannot show it:
# xen-pci-passthrough exists only in Xen's QEMU build).
# tools/xensim/tests/test_qemu_sim.py checks the observed ones against a
# running QEMU whenever one is installed.
QEMU_ERRORS = {
    # (class, desc template)
    "need_capabilities": ("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"),
    "capabilities_done": ("CommandNotFound", "Capabilities negotiation is already complete, command ignored"),
    "command_not_found": ("CommandNotFound", "The command {command} has not been found"),
    "not_object": ("GenericError", "QMP input must be a JSON object"),
    "member_unexpected": ("GenericError", "QMP input member '{member}' is unexpected"),
    "execute_not_string": ("GenericError", "QMP input member 'execute' must be a string"),
    "arguments_not_object": ("GenericError", "QMP input member 'arguments' must be an object"),
    # source: qapi/qmp-dispatch.c qmp_dispatch_check_obj
    "execute_missing": ("GenericError", "QMP input lacks member 'execute'"),
    # observed for the bare word "garbage"; other syntax errors have other reasons
    "json_parse": ("GenericError", "JSON parse error, {reason}"),
    "param_missing": ("GenericError", "Parameter '{name}' is missing"),
    "param_unexpected": ("GenericError", "Parameter '{name}' is unexpected"),
    "id_not_identifier": ("GenericError", "Parameter 'id' expects an identifier"),
    # source: qapi/qobject-input-visitor.c (QERR_INVALID_PARAMETER_TYPE)
    "param_type": ("GenericError", "Invalid parameter type for '{name}', expected: {expected}"),
    "bad_driver": ("GenericError", "'{driver}' is not a valid device model name"),
    "duplicate_id": ("GenericError", "Duplicate device ID '{id}'"),
    "property_not_found": ("GenericError", "Property '{driver}.{prop}' not found"),
    "property_value": ("GenericError", "Property '{driver}.{prop}' doesn't take value '{value}'"),
    "bus_not_found": ("GenericError", "Bus '{bus}' not found"),
    "bus_no_hotplug": ("GenericError", "Bus '{bus}' does not support hotplugging"),
    "slot_in_use": ("GenericError", "PCI: slot {slot} function {function} not available for {driver}, in use by {other},id={other_id}"),
    "function0_occupied": ("GenericError",
                           "PCI: slot {slot} function 0 already occupied by {other}, new func {driver} cannot be exposed to guest."),
    # source: hw/pci/pci.c do_pci_register_device
    "no_slot": ("GenericError", "PCI: no slot/function available for {driver}, all in use or reserved"),
    # format observed ("Could not open '<path>': No such file or directory", blockdev-add of a
    # missing file); path and step: hw/xen/xen-host-pci-device.c xen_host_pci_config_open
    "host_open": ("GenericError", "Could not open '/sys/bus/pci/devices/{hostaddr}/config': No such file or directory"),
    "device_not_found": ("DeviceNotFound", "Device '{id}' not found"),
    "unplug_pending": ("GenericError", "Device {id} is already in the process of unplug"),
}

PT_DRIVER = "xen-pci-passthrough"
# Properties of xen-pci-passthrough and of every PCI device (source: hw/xen/xen_pt.c, hw/pci/pci.c).
PT_PROPERTIES = {"hostaddr", "permissive", "addr", "multifunction", "romfile", "rombar", "x-pcie-lnksta-dllla",
                 "x-pcie-extcap-init", "failover_pair_id", "acpi-index"}
QEMU_VERSION = {"qemu": {"micro": 1, "minor": 2, "major": 7}, "package": ""}   # Xen 4.17's qemu-xen is 7.2-based
ACK_DELAY = 0.02      # a running guest's ACPI eject, seconds
# A device_del of a device whose unplug is pending is refused for 5 s after
# the request, then sent again (QEMU's pending_deleted_expires_ms): real Xen's
# qemu-xen 7.2 answered {} to a second device_del some 10 s after the first.
UNPLUG_REPEAT_AFTER = 5.0
_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]*$")     # QEMU id_wellformed()
_BOOL_WORDS = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False}

# Class descriptions of query-pci (hw/pci/pci.c pci_class_descriptions), those we use.
CLASS_DESC = {0x0100: "SCSI controller", 0x0101: "IDE controller", 0x0106: "SATA controller",
              0x0200: "Ethernet controller", 0x0280: "Network controller", 0x0300: "VGA controller",
              0x0600: "Host bridge", 0x0601: "ISA bridge", 0x0604: "PCI bridge", 0x0680: "Bridge",
              0x0C03: "USB controller", 0x0C05: "SMBus"}


class QmpFailure(Exception):
    """A command's error reply."""

    def __init__(self, key: str, **fmt: Any):
        klass, desc = QEMU_ERRORS[key]
        super().__init__(desc.format(**fmt))
        self.klass, self.desc = klass, desc.format(**fmt)

    @classmethod
    def raw(cls, klass: str, desc: str) -> QmpFailure:
        err = cls.__new__(cls)
        Exception.__init__(err, desc)
        err.klass, err.desc = klass, desc
        return err


@dataclasses.dataclass
class PciFn:
    """One function on the guest's root bus."""

    slot: int
    function: int
    type_name: str                   # QOM type, as in "in use by <type>,id=<id>"
    class_code: int                  # 16-bit base class + subclass
    vendor: int
    device: int
    subsystem_vendor: int | None = 0x1AF4
    subsystem: int | None = 0x1100
    irq_pin: int = 0
    qdev_id: str = ""
    regions: list = dataclasses.field(default_factory=list)
    hostaddr: str | None = None      # passthrough only
    permissive: bool = False
    unplug_pending: bool = False
    unplug_requested: float = 0.0    # monotonic time of the last device_del
    coldplug: bool = False

    @property
    def devfn(self) -> int:
        return self.slot << 3 | self.function

    def query(self, running: bool) -> dict:
        cls = {"class": self.class_code}
        if self.class_code in CLASS_DESC:
            cls["desc"] = CLASS_DESC[self.class_code]
        ids = {"device": self.device, "vendor": self.vendor}
        if self.subsystem_vendor is not None:
            ids["subsystem-vendor"] = self.subsystem_vendor
            ids["subsystem"] = self.subsystem
        out: dict[str, Any] = {"irq_pin": self.irq_pin, "bus": 0, "qdev_id": self.qdev_id}
        if self.irq_pin:
            out["irq"] = 10 if running else 0
        out.update({"slot": self.slot, "class_info": cls, "id": ids, "function": self.function,
                    "regions": [dict(r) for r in self.regions]})
        return out


def _base_devices(machine: str) -> list[PciFn]:
    if machine == "q35":
        return [
            PciFn(0, 0, "mch", 0x0600, 0x8086, 0x29C0),
            PciFn(1, 0, "VGA", 0x0300, 0x1234, 0x1111,
                  regions=[{"prefetch": True, "mem_type_64": False, "bar": 0, "size": 16777216, "address": -1, "type": "memory"},
                           {"prefetch": False, "mem_type_64": False, "bar": 2, "size": 4096, "address": -1, "type": "memory"}]),
            PciFn(31, 0, "ICH9-LPC", 0x0601, 0x8086, 0x2918),
            PciFn(31, 2, "ich9-ahci", 0x0106, 0x8086, 0x2922, irq_pin=1,
                  regions=[{"bar": 4, "size": 32, "address": -1, "type": "io"},
                           {"prefetch": False, "mem_type_64": False, "bar": 5, "size": 4096, "address": -1, "type": "memory"}]),
            PciFn(31, 3, "ICH9-SMB", 0x0C05, 0x8086, 0x2930, irq_pin=1,
                  regions=[{"bar": 4, "size": 64, "address": -1, "type": "io"}]),
        ]
    return [
        PciFn(0, 0, "i440FX", 0x0600, 0x8086, 0x1237),
        PciFn(1, 0, "PIIX3", 0x0601, 0x8086, 0x7000),
        PciFn(1, 1, "piix3-ide", 0x0101, 0x8086, 0x7010, regions=[{"bar": 4, "size": 16, "address": -1, "type": "io"}]),
        PciFn(1, 3, "PIIX4_PM", 0x0680, 0x8086, 0x7113, irq_pin=1),
        # libxl puts the Xen platform device at slot 2, QEMU the VGA after it
        # (query-pci of a qemu-xen 7.2 HVM guest on Xen 4.17).
        PciFn(2, 0, "xen-platform", 0xFF80, 0x5853, 0x0001, subsystem_vendor=0x5853, subsystem=0x0001, irq_pin=1,
              regions=[{"bar": 0, "size": 256, "address": -1, "type": "io"},
                       {"prefetch": True, "mem_type_64": False, "bar": 1, "size": 16777216, "address": -1, "type": "memory"}]),
        PciFn(3, 0, "cirrus-vga", 0x0300, 0x1013, 0x00B8,
              regions=[{"prefetch": True, "mem_type_64": False, "bar": 0, "size": 33554432, "address": -1, "type": "memory"},
                       {"prefetch": False, "mem_type_64": False, "bar": 1, "size": 4096, "address": -1, "type": "memory"}]),
    ]


def _regions_of(resources) -> list[dict]:
    """query-pci regions of a host device from its sysfs resource lines."""
    out = []
    for line_no, (start, end, flags) in enumerate(list(resources)[:7]):
        if not start:
            continue
        size = end - start + 1
        bar_no = line_no   # line 6 is the expansion ROM, QEMU calls it bar 6
        if flags & 0x100:
            out.append({"bar": bar_no, "size": size, "address": -1, "type": "io"})
        else:
            out.append({"prefetch": bool(flags & 0x2000), "mem_type_64": bool(flags & 0x100000), "bar": bar_no,
                        "size": size, "address": -1, "type": "memory"})
    return out


def _parse_addr(value: Any) -> tuple[int, int] | None:
    """QEMU's pci-devfn property: "S" or "S.F" in hex (0x allowed); None if invalid."""
    if not isinstance(value, str):
        return None
    parts = value.split(".")
    if len(parts) not in (1, 2) or not all(parts):
        return None
    try:
        nums = [int(p, 16) for p in parts]
    except ValueError:
        return None
    slot, func = nums[0], (nums[1] if len(nums) == 2 else 0)
    if not (0 <= slot <= 0x1F and 0 <= func <= 7):
        return None
    return slot, func


def _parse_hostaddr(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return normalise_bdf(value)
    except ValueError:
        return None


class JsonStream:
    """Split a byte stream into top-level JSON values, as QEMU's streaming parser
    does: clients need not end a request with a newline (qemu.qmp does not)."""

    def __init__(self):
        self.buf = bytearray()
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.pos = 0          # scan position in buf
        self.start = None     # start of the current value

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self.buf += data
        out = []
        while self.pos < len(self.buf):
            c = self.buf[self.pos]
            if self.start is None:
                if c in b" \t\r\n":
                    self.pos += 1
                    continue
                if c in b"{[":
                    self.start, self.depth = self.pos, 0
                else:   # a bare token at top level: complete at the next delimiter
                    end = self.pos
                    while end < len(self.buf) and self.buf[end] not in b" \t\r\n{[":
                        end += 1
                    if end == len(self.buf):
                        break
                    out.append(("garbage", bytes(self.buf[self.pos:end])))
                    self.pos = end
                    continue
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == 0x5C:      # backslash
                    self.escape = True
                elif c == 0x22:      # quote
                    self.in_string = False
            elif c == 0x22:
                self.in_string = True
            elif c in b"{[":
                self.depth += 1
            elif c in b"}]":
                self.depth -= 1
                if self.depth == 0:
                    out.append(("value", bytes(self.buf[self.start:self.pos + 1])))
                    del self.buf[:self.pos + 1]
                    self.pos, self.start = 0, None
                    continue
            self.pos += 1
        if self.start is None and self.pos:
            del self.buf[:self.pos]
            self.pos = 0
        return out


class DeviceModel:
    """The QEMU of one HVM guest (in dom0 or in its stub domain)."""

    def __init__(self, farm: QemuFarm, domain):
        self.farm = farm
        self.host = farm.host
        self.domid: int = domain.domid
        self.domain = domain
        self.spec: QemuSpec = domain.qemu or QemuSpec()
        self.machine = self.spec.machine
        self.root_bus = "pcie.0" if self.machine == "q35" else "pci.0"
        self.hotplug = self.machine == "pc"
        self.stubdom: int | None = domain.stubdom if domain.device_model == "stubdom" else None
        self.path = os.path.join(farm.qmp_dir, f"qmp-libxl-{self.domid}")
        self.functions: list[PciFn] = _base_devices(self.machine)
        self.log: list[tuple[float, str, Any, Any]] = []   # (time, command, arguments, reply or error)
        self.alive = False
        self.clients_served = 0
        self._server: asyncio.base_events.Server | None = None
        self._sock: socket.socket | None = None
        self._one_client: asyncio.Lock | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._conn_tasks: set[asyncio.Task] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._lock = threading.Lock()   # tests read the state from their own thread

    @property
    def status(self) -> str:
        """query-status run state, from the guest's current state (SimHost tracks
        pause/unpause/start in ``domain_states``)."""
        states = getattr(self.host, "domain_states", None) or {}
        state = states.get(self.domid, self.domain.state)
        return {"running": "running", "paused": "paused"}.get(state, "prelaunch")

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._one_client = asyncio.Lock()
        if os.path.exists(self.path):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        sock.listen(8)
        kwargs = {}
        if "cleanup_socket" in inspect.signature(asyncio.start_unix_server).parameters:
            kwargs["cleanup_socket"] = False   # a killed QEMU leaves its socket file (3.13+ would unlink it)
        self._sock = sock
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, **kwargs)
        self.alive = True
        for bdf in self.domain.devices:          # coldplugged at domain creation
            dev = self.host.scenario.device(bdf)
            if dev is not None:
                self._plug(self._pt_function(dev, None, False, f"pci-pt-{bdf[5:7]}_{bdf[8:10]}.{bdf[11]}", coldplug=True))

    async def stop(self, leave_socket: bool = False) -> None:
        self.alive = False
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._writer is not None:
            self._writer.close()
        for task in list(self._conn_tasks):
            task.cancel()
        if self._conn_tasks:
            await asyncio.wait(self._conn_tasks, timeout=2)
        if not leave_socket and os.path.exists(self.path):
            os.unlink(self.path)

    async def die(self) -> None:
        """QEMU killed: connections dropped, nothing listens, socket file stays."""
        await self.stop(leave_socket=True)

    # ------------------------------------------------------------ connection
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conn_tasks.add(task)
        try:
            async with self._one_client:     # QEMU greets the next client only when this one left
                if not self.alive:
                    return
                self._writer = writer
                self.clients_served += 1
                await self._session(reader, writer)
        except (ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            self._conn_tasks.discard(task)

    async def _send(self, writer: asyncio.StreamWriter, obj: dict) -> None:
        writer.write(json.dumps(obj).encode() + b"\r\n")   # QEMU ends lines with CRLF
        await writer.drain()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._send(writer, {"QMP": {"version": QEMU_VERSION, "capabilities": ["oob"]}})
        negotiated = False
        splitter = JsonStream()
        while self.alive:
            chunk = await reader.read(65536)
            if not chunk:
                return
            for kind, item in splitter.feed(chunk):
                if kind == "garbage":
                    word = item.decode(errors="replace")
                    reason = f"invalid keyword '{word}'" if word[:1].isalpha() else "invalid JSON input"
                    await self._send(writer, self._error(QmpFailure("json_parse", reason=reason)))
                    continue
                try:
                    req = json.loads(item)
                except ValueError:
                    await self._send(writer, self._error(QmpFailure("json_parse", reason="invalid JSON input")))
                    continue
                reply, negotiated, action = await self._dispatch(req, negotiated)
                if action == "dead":
                    await self.die()
                    return
                if action == "close":
                    return
                await self._send(writer, reply)

    @staticmethod
    def _error(err: QmpFailure, req_id: Any = None, has_id: bool = False) -> dict:
        out: dict[str, Any] = {}
        if has_id:
            out["id"] = req_id
        out["error"] = {"class": err.klass, "desc": err.desc}
        return out

    async def _dispatch(self, req: Any, negotiated: bool) -> tuple[dict, bool, str | None]:
        if not isinstance(req, dict):
            return self._error(QmpFailure("not_object")), negotiated, None
        has_id, req_id = "id" in req, req.get("id")
        cmd = req.get("execute")

        def fail(err: QmpFailure) -> tuple[dict, bool, str | None]:
            self._record(cmd, req.get("arguments"), err)
            return self._error(err, req_id, has_id), negotiated, None

        for member in req:
            if member not in ("execute", "id", "arguments"):
                return fail(QmpFailure("member_unexpected", member=member))
        if "execute" not in req:
            return fail(QmpFailure("execute_missing"))
        if not isinstance(cmd, str):
            return fail(QmpFailure("execute_not_string"))
        args = req.get("arguments", {})
        if not isinstance(args, dict):
            return fail(QmpFailure("arguments_not_object"))

        faults = getattr(self.host, "faults", None)
        if faults is not None:
            if faults.match("qemu.dead", domid=self.domid, command=cmd):
                self._record(cmd, args, "qemu died")
                return {}, negotiated, "dead"
            fault = faults.match("qemu.command", domid=self.domid, command=cmd)
            if fault is not None:
                if fault.action == "delay":
                    await asyncio.sleep(float(fault.params.get("seconds", 1.0)))
                elif fault.action == "hang":
                    await until_removed(fault)
                elif fault.action == "close":
                    self._record(cmd, args, fault.action)
                    return {}, negotiated, fault.action
                elif fault.action == "error":
                    return fail(QmpFailure.raw(fault.params.get("class", "GenericError"),
                                               fault.params.get("desc", "simulated failure")))

        if not negotiated:
            if cmd != "qmp_capabilities":
                return fail(QmpFailure("need_capabilities"))
            # (qmp_capabilities' optional "enable" argument is not modelled)
            self._record(cmd, args, {})
            return self._ok({}, req_id, has_id), True, None
        handler = {
            "qmp_capabilities": self._cmd_capabilities_again,
            "query-status": self._cmd_query_status,
            "query-pci": self._cmd_query_pci,
            "device_add": self._cmd_device_add,
            "device_del": self._cmd_device_del,
        }.get(cmd)
        if handler is None:
            return fail(QmpFailure("command_not_found", command=cmd))
        try:
            ret = handler(args)
        except QmpFailure as err:
            return fail(err)
        self._record(cmd, args, ret)
        return self._ok(ret, req_id, has_id), negotiated, None

    @staticmethod
    def _ok(ret: Any, req_id: Any, has_id: bool) -> dict:
        out: dict[str, Any] = {"return": ret}
        if has_id:
            out["id"] = req_id
        return out

    def _record(self, cmd: Any, args: Any, result: Any) -> None:
        if isinstance(result, QmpFailure):
            result = {"class": result.klass, "desc": result.desc}
        with self._lock:
            self.log.append((time.monotonic(), cmd, args, result))

    def _emit(self, event: str, data: dict) -> None:
        """Send an event to the connected client, if any (QEMU does not queue them)."""
        now = time.time()
        msg = {"timestamp": {"seconds": int(now), "microseconds": int((now % 1) * 1e6)}, "event": event, "data": data}
        with self._lock:
            self.log.append((time.monotonic(), "event:" + event, data, None))
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(json.dumps(msg).encode() + b"\r\n")

    def _transition(self, what: str, value: str) -> None:
        transitions = getattr(self.host, "transitions", None)
        if transitions is not None:
            transitions.append((time.monotonic(), f"Q{self.domid}", what, value))

    # ------------------------------------------------------------ commands
    @staticmethod
    def _no_args(args: dict) -> None:
        for name in args:
            raise QmpFailure("param_unexpected", name=name)

    def _cmd_capabilities_again(self, args: dict) -> Any:
        raise QmpFailure("capabilities_done")

    def _cmd_query_status(self, args: dict) -> Any:
        self._no_args(args)
        return {"status": self.status, "singlestep": False, "running": self.status == "running"}

    def _cmd_query_pci(self, args: dict) -> Any:
        self._no_args(args)
        return self.query_pci()

    def query_pci(self) -> list:
        with self._lock:
            fns = sorted(self.functions, key=lambda f: f.devfn)
            return [{"bus": 0, "devices": [f.query(self.status == "running") for f in fns]}]

    def _find(self, qdev_id: str) -> PciFn | None:
        for fn in self.functions:
            if qdev_id and fn.qdev_id == qdev_id:
                return fn
        return None

    def _at(self, slot: int, function: int) -> PciFn | None:
        for fn in self.functions:
            if (fn.slot, fn.function) == (slot, function):
                return fn
        return None

    def _cmd_device_add(self, args: dict) -> Any:
        # Checks in QEMU 7.2's order (qdev_device_add, then pci_qdev_realize).
        if "driver" not in args:
            raise QmpFailure("param_missing", name="driver")
        driver = args["driver"]
        if driver != PT_DRIVER:
            # Only passthrough is modelled; real QEMU knows e1000 etc.
            raise QmpFailure("bad_driver", driver=driver)
        if "bus" in args and args["bus"] != self.root_bus:
            raise QmpFailure("bus_not_found", bus=args["bus"])
        if not self.hotplug:
            raise QmpFailure("bus_no_hotplug", bus=self.root_bus)
        qdev_id = args.get("id")
        if qdev_id is not None:
            if not isinstance(qdev_id, str) or not _ID_RE.match(qdev_id):
                raise QmpFailure("id_not_identifier")
            if self._find(qdev_id) is not None:
                raise QmpFailure("duplicate_id", id=qdev_id)
        for prop in args:
            if prop not in PT_PROPERTIES and prop not in ("driver", "id", "bus"):
                raise QmpFailure("property_not_found", driver=driver, prop=prop)
        hostaddr = _parse_hostaddr(args.get("hostaddr", "0000:00:00.0"))
        if hostaddr is None:
            raise QmpFailure("property_value", driver=driver, prop="hostaddr", value=args["hostaddr"])
        permissive = args.get("permissive", False)
        if isinstance(permissive, str) and permissive in _BOOL_WORDS:
            permissive = _BOOL_WORDS[permissive]
        if not isinstance(permissive, bool):
            raise QmpFailure("param_type", name="permissive", expected="boolean")
        want = None
        if "addr" in args:
            want = _parse_addr(args["addr"])
            if want is None:
                raise QmpFailure("property_value", driver=driver, prop="addr", value=args["addr"])
        # Slot: do_pci_register_device.
        if want is None:
            free = [s for s in range(32) if self._at(s, 0) is None]
            if not free:
                raise QmpFailure("no_slot", driver=driver)
            want = (free[0], 0)
        slot, function = want
        other = self._at(slot, function)
        if other is not None:
            raise QmpFailure("slot_in_use", slot=slot, function=function, driver=driver,
                             other=other.type_name, other_id=other.qdev_id or "(null)")
        func0 = self._at(slot, 0)
        if function != 0 and func0 is not None:
            raise QmpFailure("function0_occupied", slot=slot, other=func0.type_name, driver=driver)
        # (Function 0 added last over functions 1-7, as libxl does, is accepted:
        # xen-pci-passthrough mirrors the real device's multi-function header.)
        # Realize: xen_pt_realize opens the host device's sysfs files.
        faults = getattr(self.host, "faults", None)
        if faults is not None:
            fault = faults.match("qemu.device_add", domid=self.domid, bdf=hostaddr, command="device_add")
            if fault is not None and fault.action == "error":
                raise QmpFailure.raw(fault.params.get("class", "GenericError"),
                                     fault.params.get("desc", QEMU_ERRORS["host_open"][1].format(hostaddr=hostaddr)))
        dev = self.host.scenario.device(hostaddr)
        if dev is None or not self._visible(hostaddr):
            raise QmpFailure("host_open", hostaddr=hostaddr)
        self._plug(self._pt_function(dev, (slot, function), permissive, qdev_id or ""))
        return {}

    def _visible(self, hostaddr: str) -> bool:
        """Can this QEMU open the host device's sysfs? With a stubdom, only once
        pciback exported it to the stubdom (state-N = 3 in its PV backend)."""
        if self.stubdom is None:
            return True
        store = self.host.store
        be = f"/local/domain/0/backend/pci/{self.stubdom}/0"
        for name in store.ls(be) or ():
            if name.startswith("dev-"):
                idx = name[4:]
                dev = store.peek(f"{be}/dev-{idx}")
                if dev is not None and dev.decode() == hostaddr and store.peek(f"{be}/state-{idx}") == b"3":
                    return True
        return False

    def _pt_function(self, dev, where: tuple[int, int] | None, permissive: bool, qdev_id: str,
                     coldplug: bool = False) -> PciFn:
        if where is None:
            slot = next(s for s in range(32) if self._at(s, 0) is None)
            where = (slot, 0)
        return PciFn(where[0], where[1], PT_DRIVER, dev.klass >> 8, dev.vendor, dev.device,
                     subsystem_vendor=dev.subsystem_vendor, subsystem=dev.subsystem_device,
                     irq_pin=1 if dev.irq else 0, qdev_id=qdev_id, regions=_regions_of(dev.resources),
                     hostaddr=dev.bdf, permissive=permissive, coldplug=coldplug)

    def _plug(self, fn: PciFn) -> None:
        with self._lock:
            self.functions.append(fn)
        self._transition(f"qmp:{fn.qdev_id}", "added")

    def _cmd_device_del(self, args: dict) -> Any:
        if "id" not in args:
            raise QmpFailure("param_missing", name="id")
        for name in args:
            if name != "id":
                raise QmpFailure("param_unexpected", name=name)
        qdev_id = args["id"]
        if not isinstance(qdev_id, str):
            raise QmpFailure("param_type", name="id", expected="string")
        fn = self._find(qdev_id)
        if fn is None:
            raise QmpFailure("device_not_found", id=qdev_id)
        if not self.hotplug:
            raise QmpFailure("bus_no_hotplug", bus=self.root_bus)
        now = time.monotonic()
        if fn.unplug_pending and now - fn.unplug_requested < UNPLUG_REPEAT_AFTER:
            raise QmpFailure("unplug_pending", id=qdev_id)
        repeat = fn.unplug_pending
        fn.unplug_pending, fn.unplug_requested = True, now
        if repeat and qdev_id in self._timers:
            return {}             # the guest's eject is on its way already
        mode, delay = self.spec.unplug, self.spec.unplug_delay
        faults = getattr(self.host, "faults", None)
        if faults is not None:
            fault = faults.match("qemu.unplug", domid=self.domid, bdf=fn.hostaddr, name=qdev_id)
            if fault is not None:
                mode, delay = fault.action, float(fault.params.get("seconds", delay))
        if self.status != "running":
            mode = "never"        # a guest that does not run cannot eject
        loop = asyncio.get_running_loop()
        if mode == "ack":
            self._timers[qdev_id] = loop.call_later(ACK_DELAY, self._unplugged, qdev_id)
        elif mode == "delay":
            self._timers[qdev_id] = loop.call_later(delay, self._unplugged, qdev_id)
        return {}

    def _unplugged(self, qdev_id: str) -> None:
        self._timers.pop(qdev_id, None)
        with self._lock:
            fn = self._find(qdev_id)
            if fn is None:
                return
            self.functions.remove(fn)
        self._transition(f"qmp:{qdev_id}", "deleted")
        self._emit("DEVICE_DELETED", {"device": qdev_id, "path": f"/machine/peripheral/{qdev_id}"})

    # ------------------------------------------------------------ for tests
    def devices(self) -> list[dict]:
        """Passed-through devices as QEMU holds them now."""
        with self._lock:
            return [{"id": f.qdev_id, "hostaddr": f.hostaddr, "slot": f.slot, "function": f.function,
                     "devfn": f.devfn, "permissive": f.permissive, "unplug_pending": f.unplug_pending,
                     "coldplug": f.coldplug}
                    for f in sorted(self.functions, key=lambda f: f.devfn) if f.type_name == PT_DRIVER]

    def acknowledge_unplug(self, qdev_id: str) -> None:
        """The guest ejects a pending device now (loop thread)."""
        self._unplugged(qdev_id)


class QemuFarm:
    """Component: the device models of every HVM guest of the scenario."""

    def __init__(self, host):
        self.host = host
        self.qmp_dir = host.paths["qmp_dir"]
        self.models: dict[int, DeviceModel] = {}

    async def start(self) -> None:
        os.makedirs(self.qmp_dir, exist_ok=True)
        for dom in self.host.scenario.domains:
            if dom.type == "hvm":
                model = DeviceModel(self, dom)
                await model.start()
                self.models[dom.domid] = model

    async def stop(self) -> None:
        for model in self.models.values():
            await model.stop()

    def model(self, domid: int) -> DeviceModel:
        try:
            return self.models[int(domid)]
        except KeyError:
            raise KeyError(f"no device model for domain {domid}") from None

    def socket_path(self, domid: int) -> str:
        return self.model(domid).path

    def devices(self, domid: int) -> list[dict]:
        return self.model(domid).devices()

    def query_pci(self, domid: int) -> list:
        return self.model(domid).query_pci()

    def commands(self, domid: int) -> list[tuple[float, str, Any, Any]]:
        """(time, command, arguments, result) of every request, in order."""
        model = self.model(domid)
        with model._lock:   # pylint: disable=protected-access
            return list(model.log)

    async def kill(self, domid: int) -> None:
        await self.model(domid).die()

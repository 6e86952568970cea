# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""QMP client for the device models (QEMU) of Xen HVM guests.

What libxl does, and what we do the same way:

* the socket of a guest's device model is ``<run dir>/qmp-libxl-<domid>``
  (``libxl__qemu_qmp_path``, Xen 4.17), whether QEMU runs in dom0 or in a
  stub domain (then ``vchan-socket-proxy`` serves that path);
* QEMU serves one QMP client at a time, so libxl serialises its clients with
  an ``flock`` on ``<XEN_LIB_DIR>/userdata-l.<domid>.<uuid>.qmp-socket-lock``
  (``libxl__ev_qmplock_init`` + ``libxl__userdata_path``). We take the same
  lock, the same way: after ``flock`` succeeds, the inode of the path must
  still be the one we locked (the holder unlinks the file before it unlocks,
  libxl ``libxl__ev_slowlock_unlock``), otherwise we retry. Unlike libxl,
  which waits forever in a forked child, we retry a non-blocking ``flock``
  until a deadline;
* ``device_add`` of ``xen-pci-passthrough`` with the arguments of libxl's
  ``pci_add_qmp_device_add`` and the id ``pci-pt-BB_DD.F`` (``Bdf.qmp_id``).

Where we differ:

* Every call that waits takes a ``_deadline.Deadline`` (``None``: a fresh one
  of the client's ``timeout``), so one request's budget bounds all of its QMP
  traffic. A command whose deadline has already passed is not sent at all
  (``sent=False`` in the error): a command sent without time to read its
  reply could take effect unseen. A reply that comes after its deadline is
  recognised by its id and dropped, so the connection stays usable.
* Errors are typed and name the guest: ``QmpError`` for QEMU's
  ``{"error": ...}`` replies (class, description, ``is_duplicate_id``),
  ``QmpConnectionError`` for a missing socket, a refused connection, EOF or a
  dead QEMU, ``DeadlineExceeded`` for time running out. Their details always
  hold ``domain`` (the domid, None for a bare client) and ``socket``; those of
  a command also ``command``, ``arguments`` and ``waited`` (seconds).
* The connection has an explicit ``Runstate`` (see there); methods that need
  a negotiated session refuse in any other state, naming it.
* Removal waits for ``DEVICE_DELETED`` (libxl polls ``query-pci`` once a
  second, a TODO in its code) while still polling ``query-pci`` as a bounded
  fallback, since QEMU sends no event for an unplug that the guest never
  acknowledges.

Why our own client rather than ``qemu.qmp`` (PyPI): this file runs on every
target host, on whatever Python 3.9+ the host has. ``qemu.qmp`` would be one
more package to install on each Xen host (most have no pip and no network),
its main API is asyncio (the sync wrapper runs an event loop in the caller and
needs 3.8+ compatibility shims), and we need only one client, one command at
a time, a handful of commands and one event: about the size of this file,
with the stdlib only (``socket``, ``json``, ``fcntl``).
"""

from __future__ import annotations

import enum
import errno
import json
import os
import re
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from ansible_collections.xen.pci.plugins.module_utils._bdf import FUNC_MAX, VSLOT_MAX, Bdf
from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline
from ansible_collections.xen.pci.plugins.module_utils._errors import (
    DeadlineExceeded,
    QmpConnectionError,
    QmpError,
    SpecError,
)
from ansible_collections.xen.pci.plugins.module_utils._lock import FileLock

DEFAULT_QMP_DIR = "/var/run/xen"          # libxl__run_dir_path()
DEFAULT_USERDATA_DIR = "/var/lib/xen"     # XEN_LIB_DIR
DEFAULT_TIMEOUT = 10.0                    # LIBXL_QMP_CMD_TIMEOUT
PT_DRIVER = "xen-pci-passthrough"

# A QMP message is one JSON object per line; query-pci of a large guest is a
# few tens of KiB. Bound the buffer so a peer sending no newline cannot make
# us grow without limit.
_MAX_LINE = 16 * 1024 * 1024
# Poll interval of wait_device_gone when QEMU sends no event (libxl: 1 s).
_GONE_POLL = 1.0

# QEMU's refusal of an id already taken. 7.2 (qdev_set_id) says "Duplicate
# device ID 'x'" for device_add, whatever created the first device; releases
# whose device_add still went through the -device option list answer from
# that list's check: "Duplicate ID 'x' for device".
_DUPLICATE_ID = (
    re.compile(r"Duplicate device ID '(?P<id>[^']*)'\Z"),
    re.compile(r"Duplicate ID '(?P<id>[^']*)' for device\Z"),
)


class Runstate(enum.Enum):
    """Where a QmpClient is in its life (the states of qemu.qmp's Runstate,
    plus a final one).

    ``IDLE``: made, never connected. ``CONNECTING``: the socket is being
    opened, the greeting read and capabilities negotiated; only
    ``qmp_capabilities`` goes out. ``RUNNING``: negotiated; commands and
    events flow. ``DISCONNECTING``: the socket is being torn down; then IDLE
    after a failed connect (connect may be tried again, as with qemu.qmp), or
    CLOSED after ``close()`` or a connection that broke while running.
    ``CLOSED``: final, never reopened (a session's lock went with it): make a
    new client.
    """

    IDLE = "idle"
    CONNECTING = "connecting"
    RUNNING = "running"
    DISCONNECTING = "disconnecting"
    CLOSED = "closed"


_TRANSITIONS = {
    Runstate.IDLE: (Runstate.CONNECTING, Runstate.CLOSED),
    Runstate.CONNECTING: (Runstate.RUNNING, Runstate.DISCONNECTING),
    Runstate.RUNNING: (Runstate.DISCONNECTING,),
    Runstate.DISCONNECTING: (Runstate.IDLE, Runstate.CLOSED),
    Runstate.CLOSED: (),
}


def qmp_socket_path(domid, qmp_dir=DEFAULT_QMP_DIR):
    """Path of the QMP socket libxl uses for the device model of ``domid``."""
    return os.path.join(qmp_dir, "qmp-libxl-%d" % int(domid))


def qmp_lock_path(domid, uuid, userdata_dir=DEFAULT_USERDATA_DIR):
    """Path of libxl's QMP lock file of ``domid`` (``uuid``: the domain's UUID)."""
    return os.path.join(userdata_dir, "userdata-l.%d.%s.qmp-socket-lock" % (int(domid), str(uuid).lower()))


def pt_qdev_id(bdf):
    """QEMU id libxl gives the passthrough of ``bdf`` (a Bdf or an address string)."""
    return Bdf.parse(bdf).qmp_id


def duplicate_id_of(exc):
    """The device id QEMU says is taken, if ``exc`` is that refusal; else None."""
    if not isinstance(exc, QmpError) or exc.error_class != "GenericError":
        return None
    for pattern in _DUPLICATE_ID:
        match = pattern.match(exc.desc or "")
        if match:
            return match.group("id")
    return None


class QmpReplyError(QmpError):
    """A QmpError raised by this module (every QmpError it raises is one).

    Adds what the engine needs to tell one refusal from the others.
    """

    @property
    def is_duplicate_id(self):
        """True when QEMU refused a device_add because its id already exists
        (for a passthrough: the device is already in this QEMU, possibly
        added by a command whose reply came after its deadline)."""
        return duplicate_id_of(self) is not None

    @property
    def duplicate_id(self):
        """The id QEMU said is taken, or None."""
        return duplicate_id_of(self)


def _as_deadline(deadline, seconds, what):
    """``deadline`` itself, or a fresh Deadline of ``seconds`` when None."""
    if deadline is None:
        return Deadline(seconds, what)
    if not isinstance(deadline, Deadline):
        raise TypeError("deadline must be a _deadline.Deadline or None, not %s" % type(deadline).__name__)
    return deadline


def _errno_name(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))


def _since(started):
    return round(time.monotonic() - started, 3)


@dataclass(frozen=True)
class QmpPciDevice:
    """One function of ``query-pci``, flattened (devices behind bridges included)."""

    bus: int
    slot: int
    function: int
    qdev_id: str
    class_code: int
    class_desc: str | None
    vendor_id: int
    device_id: int
    subsystem_vendor_id: int | None = None
    subsystem_id: int | None = None
    irq: int | None = None
    bridge_secondary_bus: int | None = None   # set for PCI bridges / root ports
    regions: tuple = field(default=(), repr=False)

    @property
    def devfn(self):
        return (self.slot << 3) | self.function

    @property
    def address(self):
        """Guest-visible ``BB:DD.F`` (segment 0: QEMU has one PCI domain)."""
        return "%02x:%02x.%x" % (self.bus, self.slot, self.function)

    def to_dict(self):
        return {
            "bus": self.bus, "slot": self.slot, "function": self.function, "devfn": self.devfn,
            "qdev_id": self.qdev_id, "class": self.class_code, "class_desc": self.class_desc,
            "vendor_id": self.vendor_id, "device_id": self.device_id,
            "subsystem_vendor_id": self.subsystem_vendor_id, "subsystem_id": self.subsystem_id,
            "irq": self.irq, "bridge_secondary_bus": self.bridge_secondary_bus,
        }


def parse_query_pci(reply):
    """Flatten the return value of ``query-pci`` (list of buses) into devices.

    Devices behind a bridge sit in ``pci_bridge.devices``. QEMU lists them only
    once the bridge has a secondary bus number (firmware enumerated the bus):
    a QEMU started with ``-S`` shows root ports with no devices behind them.
    """
    out = []

    def walk(devices):
        for dev in devices:
            cls = dev["class_info"]
            ids = dev["id"]
            bridge = dev.get("pci_bridge")
            out.append(QmpPciDevice(
                bus=int(dev["bus"]), slot=int(dev["slot"]), function=int(dev["function"]),
                qdev_id=str(dev.get("qdev_id", "")), class_code=int(cls["class"]),
                class_desc=cls.get("desc"), vendor_id=int(ids["vendor"]), device_id=int(ids["device"]),
                subsystem_vendor_id=ids.get("subsystem-vendor"), subsystem_id=ids.get("subsystem"),
                irq=dev.get("irq"),
                bridge_secondary_bus=None if bridge is None else int(bridge["bus"]["secondary"]),
                regions=tuple(tuple(sorted(r.items())) for r in dev.get("regions", ())),
            ))
            if bridge is not None:
                walk(bridge.get("devices", ()))

    try:
        for bus in reply:
            walk(bus["devices"])
    except (KeyError, TypeError, ValueError) as exc:
        raise QmpReplyError("unexpected query-pci reply from QEMU (%s: %s)" % (type(exc).__name__, exc),
                            error_class=None, desc=None, command="query-pci", reply=repr(reply)[:2000]) from exc
    return out


class QmpClient:
    """One QMP connection: greeting, capabilities, commands with ids, events.

    Not thread safe; one command in flight at a time (QMP's model and libxl's).
    Events read while waiting for a reply are queued for ``wait_event``.
    ``domid`` and ``label`` (the guest's name for messages, default
    ``domid <n>``) only make errors name the guest.
    """

    def __init__(self, path, timeout=DEFAULT_TIMEOUT, domid=None, label=None):
        self.path = path
        self.timeout = float(timeout)
        self.domid = None if domid is None else int(domid)
        self.label = label or ("domid %d" % self.domid if self.domid is not None else None)
        self.greeting = None
        self._runstate = Runstate.IDLE
        self._sock = None
        self._buf = b""
        self._events = deque()
        self._abandoned = set()   # ids of commands that timed out, whose replies may still come
        self.late_replies = 0     # replies dropped because their command had timed out
        self._seq = 0
        self._id_prefix = "xen.pci-%d-%x-" % (os.getpid(), id(self) & 0xFFFFFF)

    # -- state ---------------------------------------------------------------
    @property
    def runstate(self):
        return self._runstate

    @property
    def connected(self):
        return self._runstate is Runstate.RUNNING

    @property
    def who(self):
        """The peer as messages name it: ``QEMU of win1 (domid 3)``."""
        return "QEMU of %s" % self.label if self.label else "QEMU at %s" % self.path

    def _set_runstate(self, new):
        """The one place the state changes; anything else is a bug here."""
        if new not in _TRANSITIONS[self._runstate]:
            raise RuntimeError("QMP client: no transition from %s to %s" % (self._runstate.value, new.value))
        self._runstate = new

    def _require(self, states, doing):
        if self._runstate in states:
            return
        state = self._runstate.value
        hint = {Runstate.IDLE: "not connected yet", Runstate.CLOSED: "closed"}.get(self._runstate, state)
        raise self._error(QmpConnectionError, "cannot %s: the QMP connection to %s is %s" % (doing, self.who, hint),
                          state=state)

    def _details(self, **extra):
        details = {"domain": self.domid, "socket": self.path}
        details.update(extra)
        return details

    def _error(self, cls, msg, **details):
        return cls(msg, **self._details(**details))

    # -- connection ---------------------------------------------------------
    def connect(self, deadline=None):
        """Connect, read the greeting, negotiate capabilities, all within ``deadline``.

        Only from IDLE; after a failure the client is IDLE again.
        """
        self._require((Runstate.IDLE,), "connect")
        dl = _as_deadline(deadline, self.timeout, "the QMP handshake")
        self._set_runstate(Runstate.CONNECTING)
        try:
            self._open(dl)
            # QEMU accepts a second client's connect but greets it only when the
            # first has gone: a missing greeting usually means another client.
            started = time.monotonic()
            msg = self._read_message(dl, "the QMP greeting", started)
            if msg is None:
                raise self._error(DeadlineExceeded, "no QMP greeting from %s within %.1f s (is another QMP client connected?)"
                                  % (self.who, _since(started)), step="greeting", waited=_since(started), timeout=dl.seconds)
            if "QMP" not in msg:
                raise self._error(QmpConnectionError, "%s did not greet with QMP: %s" % (self.who, _short(msg)),
                                  received=_short(msg))
            self.greeting = msg["QMP"]
            self._command("qmp_capabilities", None, dl)
        except BaseException:
            if self._runstate is Runstate.CONNECTING:
                self._teardown(Runstate.IDLE)
            raise
        self._set_runstate(Runstate.RUNNING)
        return self.greeting

    def _open(self, dl):
        if dl.expired:
            raise self._error(DeadlineExceeded, "no time left to connect to %s (deadline of %s passed)" % (self.who, dl.what),
                              step="connect", waited=0.0, timeout=dl.seconds)
        if not os.path.exists(self.path):
            whose = " of %s" % self.label if self.label else ""
            raise self._error(QmpConnectionError, "QMP socket %s%s does not exist (is the device model running?)"
                              % (self.path, whose), errno="ENOENT")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        started = time.monotonic()
        try:
            sock.settimeout(max(dl.remaining(), 0.001))
            sock.connect(self.path)
        except socket.timeout as exc:
            sock.close()
            raise self._error(DeadlineExceeded, "connecting to %s timed out after %.1f s" % (self.who, _since(started)),
                              step="connect", waited=_since(started), timeout=dl.seconds) from exc
        except OSError as exc:
            sock.close()
            dead = " (QEMU dead?)" if exc.errno == errno.ECONNREFUSED else ""
            raise self._error(QmpConnectionError, "cannot connect to %s: %s%s" % (self.who, exc.strerror or exc, dead),
                              errno=_errno_name(exc)) from exc
        self._sock = sock
        self._buf = b""

    def close(self):
        """Close the connection (idempotent); the client ends CLOSED."""
        if self._runstate is Runstate.IDLE:
            self._set_runstate(Runstate.CLOSED)
        elif self._runstate in (Runstate.CONNECTING, Runstate.RUNNING):
            self._teardown(Runstate.CLOSED)

    def _teardown(self, end):
        self._set_runstate(Runstate.DISCONNECTING)
        try:
            if self._sock is not None:
                self._sock.close()
        finally:
            self._sock = None
            self._buf = b""
            self._set_runstate(end)

    def __enter__(self):
        if self._runstate is Runstate.IDLE:
            self.connect()
        self._require((Runstate.RUNNING,), "use it")
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def qemu_version(self):
        """``(major, minor, micro)`` from the greeting, or None."""
        try:
            ver = self.greeting["version"]["qemu"]
            return (ver["major"], ver["minor"], ver["micro"])
        except (TypeError, KeyError):
            return None

    # -- wire ---------------------------------------------------------------
    def _broken(self, cls, msg, **details):
        """The connection is unusable: close it (connect tears down its own) and build the error."""
        if self._runstate is Runstate.RUNNING:
            self.close()
        return self._error(cls, msg, **details)

    def _read_message(self, dl, waiting_for, started, **ctx):
        """Next JSON object from QEMU, or None once ``dl`` has passed."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line, self._buf = self._buf[:nl], self._buf[nl + 1:]
                if not line.strip():
                    continue
                try:
                    msg = json.loads(line.decode("utf-8"))
                except ValueError as exc:
                    raise self._broken(QmpConnectionError, "unparseable QMP message from %s while waiting for %s: %r"
                                       % (self.who, waiting_for, line[:200]), received=repr(line[:200]),
                                       waited=_since(started), **ctx) from exc
                if not isinstance(msg, dict):
                    raise self._broken(QmpConnectionError, "QMP message from %s is not a JSON object: %r" % (self.who, line[:200]),
                                       received=repr(line[:200]), waited=_since(started), **ctx)
                return msg
            if len(self._buf) > _MAX_LINE:
                raise self._broken(QmpConnectionError, "QMP message from %s exceeds %d bytes without a newline"
                                   % (self.who, _MAX_LINE), waited=_since(started), **ctx)
            remaining = dl.remaining()
            if remaining <= 0:
                return None
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue   # the deadline check above ends the wait
            except OSError as exc:
                raise self._broken(QmpConnectionError, "QMP connection to %s failed while waiting for %s: %s"
                                   % (self.who, waiting_for, exc.strerror or exc), errno=_errno_name(exc),
                                   waited=_since(started), **ctx) from exc
            if not chunk:
                raise self._broken(QmpConnectionError, "%s closed the QMP connection while we waited for %s (QEMU gone?)"
                                   % (self.who, waiting_for), waited=_since(started), **ctx)
            self._buf += chunk

    def _send(self, obj, dl, started, **ctx):
        data = json.dumps(obj).encode("utf-8") + b"\n"
        self._sock.settimeout(max(dl.remaining(), 0.001))
        cmd = ctx.get("command")
        try:
            self._sock.sendall(data)
        except socket.timeout as exc:
            # Part of the line may be out: the connection cannot carry another command.
            raise self._broken(DeadlineExceeded, "sending QMP command %r to %s timed out after %.1f s"
                               % (cmd, self.who, _since(started)), step="send", waited=_since(started),
                               timeout=dl.seconds, **ctx) from exc
        except OSError as exc:
            raise self._broken(QmpConnectionError, "cannot send QMP command %r to %s: %s (QEMU gone?)"
                               % (cmd, self.who, exc.strerror or exc), errno=_errno_name(exc),
                               waited=_since(started), **ctx) from exc

    def _drop(self, msg):
        """A reply that is not the one awaited: late, for a command that timed out."""
        if msg.get("id") in self._abandoned:
            self._abandoned.discard(msg.get("id"))
            self.late_replies += 1

    # -- commands and events -------------------------------------------------
    def _command(self, cmd, args, dl):
        started = time.monotonic()
        ctx = {"command": cmd, "arguments": args}
        if dl.expired:
            raise self._error(DeadlineExceeded, "QMP command %r not sent to %s: the deadline of %s had passed"
                              % (cmd, self.who, dl.what), sent=False, waited=0.0, timeout=dl.seconds, **ctx)
        self._seq += 1
        req_id = self._id_prefix + str(self._seq)
        req = {"execute": cmd, "id": req_id}
        if args:
            req["arguments"] = args
        self._send(req, dl, started, **ctx)
        while True:
            msg = self._read_message(dl, "the reply to %r" % cmd, started, **ctx)
            if msg is None:
                self._abandoned.add(req_id)
                raise self._error(DeadlineExceeded, "QMP command %r got no reply from %s within %.1f s"
                                  % (cmd, self.who, _since(started)), sent=True, waited=_since(started),
                                  timeout=dl.seconds, **ctx)
            if "event" in msg:
                self._events.append(msg)
                continue
            if "QMP" in msg:
                continue   # a greeting here is nonsense; ignore as QEMU's own clients do
            # QEMU answers without an id only a request it could not read: ours.
            if msg.get("id") not in (req_id, None):
                self._drop(msg)
                continue
            if "error" in msg:
                err = msg["error"] if isinstance(msg["error"], dict) else {}
                klass, desc = err.get("class"), err.get("desc")
                raise self._error(QmpReplyError, "%s refused %r: %s (%s)" % (self.who, cmd, desc, klass),
                                  error_class=klass, desc=desc, waited=_since(started), **ctx)
            if "return" in msg:
                return msg["return"]
            # neither a reply nor an event: ignore (forward compatibility)

    def execute(self, cmd, args=None, deadline=None):
        """Run ``cmd`` and return its ``return`` value.

        Raises QmpError for an ``{"error": ...}`` reply, DeadlineExceeded when
        no reply came before ``deadline`` (``sent`` says whether the command
        went out), QmpConnectionError when the connection broke or is not
        running.
        """
        self._require((Runstate.RUNNING,), "send %r" % cmd)
        return self._command(cmd, args, _as_deadline(deadline, self.timeout, "QMP command %r" % cmd))

    def pending_events(self):
        """Events received so far and not yet consumed (oldest first); empties the queue."""
        out = list(self._events)
        self._events.clear()
        return out

    def wait_event(self, name, predicate=None, deadline=None):
        """Return the first event ``name`` (matching ``predicate(event)``), queued or new.

        Other events read meanwhile stay queued, in order. Events already
        received are returned even from a closed client.
        """
        for ev in list(self._events):
            if ev.get("event") == name and (predicate is None or predicate(ev)):
                self._events.remove(ev)
                return ev
        self._require((Runstate.RUNNING,), "wait for event %s" % name)
        dl = _as_deadline(deadline, self.timeout, "QMP event %s" % name)
        started = time.monotonic()
        while True:
            msg = self._read_message(dl, "event %s" % name, started, event=name)
            if msg is None:
                raise self._error(DeadlineExceeded, "no QMP event %s from %s within %.1f s" % (name, self.who, _since(started)),
                                  event=name, waited=_since(started), timeout=dl.seconds)
            if "event" not in msg:
                self._drop(msg)
                continue
            if msg.get("event") == name and (predicate is None or predicate(msg)):
                return msg
            self._events.append(msg)

    # -- helpers for PCI passthrough -----------------------------------------
    def query_status(self, deadline=None):
        return self.execute("query-status", deadline=deadline)

    def query_pci(self, deadline=None):
        """``query-pci`` as a flat list of QmpPciDevice (bridges' children included)."""
        reply = self.execute("query-pci", deadline=deadline)
        try:
            return parse_query_pci(reply)
        except QmpError as exc:
            details = dict(exc.details)
            details.update(self._details())
            raise QmpReplyError("%s: %s" % (self.who, exc.msg), **details) from exc

    def find_device(self, qdev_id, deadline=None):
        """The QmpPciDevice whose qdev id is ``qdev_id``, or None."""
        for dev in self.query_pci(deadline=deadline):
            if dev.qdev_id == qdev_id:
                return dev
        return None

    @staticmethod
    def passthrough_args(bdf, vslot=None, vfunc=0, permissive=False):
        """``device_add`` arguments libxl sends for ``bdf`` (pci_add_qmp_device_add)."""
        addr = Bdf.parse(bdf)
        args = {"driver": PT_DRIVER, "id": addr.qmp_id, "hostaddr": str(addr)}
        if vslot is not None:
            try:
                vslot, vfunc = int(vslot), int(vfunc or 0)
            except (TypeError, ValueError) as exc:
                raise SpecError("virtual slot %r / function %r: not integers" % (vslot, vfunc),
                                vslot=vslot, vfunc=vfunc) from exc
            if not (0 <= vslot <= VSLOT_MAX and 0 <= vfunc <= FUNC_MAX):
                raise SpecError("virtual slot %r / function %r out of range" % (vslot, vfunc), vslot=vslot, vfunc=vfunc)
            args["addr"] = "%x.%x" % (vslot, vfunc)
        if permissive:
            # Only when set: QEMU before the XSA-131 fix has no such property.
            args["permissive"] = True
        return args

    def device_add_passthrough(self, bdf, vslot=None, vfunc=0, permissive=False, deadline=None):
        """``device_add`` the host device ``bdf``; returns the qdev id.

        ``vslot`` (and ``vfunc`` for the functions of a multi-function device)
        ask for a guest slot; without it QEMU takes the first free slot:
        find it with ``find_device(id)``. A refusal because the id exists
        already has ``is_duplicate_id`` set.
        """
        args = self.passthrough_args(bdf, vslot=vslot, vfunc=vfunc, permissive=permissive)
        self.execute("device_add", args, deadline=deadline)
        return args["id"]

    def device_del(self, qdev_id, deadline=None):
        """Ask QEMU to unplug ``qdev_id`` (the guest must acknowledge on pc/ACPI)."""
        self.execute("device_del", {"id": qdev_id}, deadline=deadline)

    def wait_device_gone(self, qdev_id, deadline, poll=_GONE_POLL):
        """Wait until ``qdev_id`` has left QEMU: DEVICE_DELETED ("event"), or
        absent from query-pci ("query-pci").

        Bounded by ``deadline``; raises DeadlineExceeded naming the device.
        """
        dl = _as_deadline(deadline, self.timeout, "the unplug of %s" % qdev_id)
        started = time.monotonic()

        def is_ours(ev):
            return (ev.get("data") or {}).get("device") == qdev_id

        def take_event():
            for ev in list(self._events):
                if ev.get("event") == "DEVICE_DELETED" and is_ours(ev):
                    self._events.remove(ev)
                    return True
            return False

        while True:
            if take_event():
                return "event"
            try:
                gone = self.find_device(qdev_id, deadline=dl) is None
            except DeadlineExceeded:
                gone = False
            if take_event():   # the event may have come with the query-pci reply
                return "event"
            if gone:
                return "query-pci"
            if dl.expired:
                raise self._error(
                    DeadlineExceeded, "%s still has device %r %.1f s after device_del (unplug not acknowledged by the guest?)"
                    % (self.who, qdev_id, _since(started)), device=qdev_id, waited=_since(started), timeout=dl.seconds)
            try:
                self.wait_event("DEVICE_DELETED", is_ours, deadline=dl.sub(poll, "DEVICE_DELETED of %s" % qdev_id))
                return "event"
            except DeadlineExceeded:
                continue

    def remove_device(self, qdev_id, deadline):
        """Idempotent unplug: device_del + wait_device_gone, within ``deadline``.

        Returns "absent" (QEMU does not know the device), "event" or
        "query-pci" (how its removal was seen). An unplug already in
        progress is waited for, not an error.
        """
        dl = _as_deadline(deadline, self.timeout, "the unplug of %s" % qdev_id)
        try:
            self.device_del(qdev_id, deadline=dl)
        except QmpError as exc:
            if exc.error_class == "DeviceNotFound":
                return "absent"
            if not (exc.desc or "").endswith("is already in the process of unplug"):
                raise
        return self.wait_device_gone(qdev_id, dl)


class QmpLock(FileLock):
    """libxl's QMP lock of one domain (flock, acquired within a Deadline)."""

    def __init__(self, path):
        super().__init__(path, error_cls=QmpConnectionError)

    def acquire(self, deadline, holder_hint="another QMP client (libxl?)"):
        return super().acquire(_as_deadline(deadline, DEFAULT_TIMEOUT, "the QMP lock"), holder_hint)

    def __enter__(self):
        if not self.held:
            self.acquire(None)
        return self


class QmpSession(QmpClient):
    """A QMP connection to a guest's device model, under libxl's QMP lock.

    ``with QmpSession.open(domid, uuid, deadline, label="win1 (domid 3)") as qmp:
    qmp.device_add_passthrough(...)``. Closing it (or its connection
    breaking) releases the lock.
    """

    def __init__(self, path, lock, timeout=DEFAULT_TIMEOUT, domid=None, label=None):
        super().__init__(path, timeout=timeout, domid=domid, label=label)
        self.lock = lock

    @classmethod
    def open(cls, domid, uuid, deadline, qmp_dir=DEFAULT_QMP_DIR, userdata_dir=DEFAULT_USERDATA_DIR,
             label=None, command_timeout=DEFAULT_TIMEOUT):
        """Lock, connect and negotiate, all within ``deadline``.

        ``command_timeout``: the budget of each later call given no deadline.
        The socket is checked first, so a guest without a device model fails
        before any lock file is created.
        """
        domid = int(domid)
        session = cls(qmp_socket_path(domid, qmp_dir), QmpLock(qmp_lock_path(domid, uuid, userdata_dir)),
                      timeout=command_timeout, domid=domid, label=label)
        session._start(_as_deadline(deadline, command_timeout, "the QMP session of %s" % session.label))
        return session

    def _start(self, deadline):
        """Check the socket, take the lock, connect (``open`` without the making)."""
        if not os.path.exists(self.path):
            self.close()
            raise self._error(QmpConnectionError, "QMP socket %s of %s does not exist (is the device model running?)"
                              % (self.path, self.label), errno="ENOENT")
        try:
            self.lock.acquire(deadline)
        except (DeadlineExceeded, QmpConnectionError) as exc:
            self.close()
            details = dict(exc.details)
            details.update(self._details())
            raise type(exc)("QMP lock of %s: %s" % (self.label, exc.msg), **details) from exc
        try:
            self.connect(deadline)
        except BaseException:
            self.close()   # releases the lock
            raise

    def connect(self, deadline=None):
        """As QmpClient's, only under the QMP lock (``open`` takes it)."""
        if not self.lock.held:
            raise self._error(QmpConnectionError, "cannot connect to %s without its QMP lock (use QmpSession.open)"
                              % self.who, state=self._runstate.value)
        return super().connect(deadline)

    def close(self):
        try:
            super().close()
        finally:
            if self.lock is not None:
                self.lock.release()


def _short(obj, limit=300):
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "..."

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
  ``pci_add_qmp_device_add`` and the id ``pci-pt-BB_DD.F``.

Where we differ: every call has a deadline, errors are typed
(``_errors.QmpError`` for QEMU's ``{"error": ...}`` replies, with its class
and description; ``QmpConnectionError`` for a missing socket, a refused
connection, EOF or a dead QEMU; ``DeadlineExceeded`` naming the command and
the seconds waited), and removal waits for ``DEVICE_DELETED`` (libxl polls
``query-pci`` once a second, a TODO in its code) while still polling
``query-pci`` as a bounded fallback, since QEMU sends no event for an unplug
that the guest never acknowledges.

Why our own client rather than ``qemu.qmp`` (PyPI): this file runs on every
target host, on whatever Python 3.9+ the host has. ``qemu.qmp`` would be one
more package to install on each Xen host (most have no pip and no network),
its main API is asyncio (the sync wrapper runs an event loop in the caller and
needs 3.8+ compatibility shims), and we need only one client, one command at
a time, a handful of commands and one event: about the size of this file,
with the stdlib only (``socket``, ``json``, ``fcntl``).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field

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
PT_QDEV_ID_FMT = "pci-pt-%02x_%02x.%01x"  # libxl PCI_PT_QDEV_ID

# A QMP message is one JSON object per line; query-pci of a large guest is a
# few tens of KiB. Bound the buffer so a peer sending no newline cannot make
# us grow without limit.
_MAX_LINE = 16 * 1024 * 1024
# Poll interval of wait_device_gone when QEMU sends no event (libxl: 1 s).
_GONE_POLL = 1.0


def qmp_socket_path(domid, qmp_dir=DEFAULT_QMP_DIR):
    """Path of the QMP socket libxl uses for the device model of ``domid``."""
    return os.path.join(qmp_dir, "qmp-libxl-%d" % int(domid))


def qmp_lock_path(domid, uuid, userdata_dir=DEFAULT_USERDATA_DIR):
    """Path of libxl's QMP lock file of ``domid`` (``uuid``: the domain's UUID)."""
    return os.path.join(userdata_dir, "userdata-l.%d.%s.qmp-socket-lock" % (int(domid), str(uuid).lower()))


def _parse_bdf(bdf):
    """``[DDDD:]BB:DD.F`` (str) or a (domain, bus, dev, func) tuple -> tuple of ints."""
    if isinstance(bdf, (tuple, list)) and len(bdf) == 4:
        seg, bus, dev, func = (int(x) for x in bdf)
    else:
        text = str(bdf).strip()
        try:
            head, func_s = text.rsplit(".", 1)
            parts = head.split(":")
            if len(parts) == 2:
                parts.insert(0, "0")
            if len(parts) != 3:
                raise ValueError(text)
            seg, bus, dev = (int(p, 16) for p in parts)
            func = int(func_s, 16)
        except ValueError:
            raise SpecError("invalid PCI address %r: expected [DDDD:]BB:DD.F" % (bdf,), bdf=str(bdf))
    if not (0 <= seg <= 0xFFFF and 0 <= bus <= 0xFF and 0 <= dev <= 0x1F and 0 <= func <= 7):
        raise SpecError("PCI address %r out of range" % (bdf,), bdf=str(bdf))
    return seg, bus, dev, func


def pt_qdev_id(bdf):
    """QEMU id libxl gives the passthrough of ``bdf``: ``pci-pt-BB_DD.F``."""
    _seg, bus, dev, func = _parse_bdf(bdf)
    return PT_QDEV_ID_FMT % (bus, dev, func)


class _Deadline:
    """Monotonic deadline; ``remaining()`` never goes below zero."""

    def __init__(self, seconds):
        self.seconds = float(seconds)
        self.start = time.monotonic()
        self.end = self.start + self.seconds

    def remaining(self):
        return max(0.0, self.end - time.monotonic())

    def expired(self):
        return time.monotonic() >= self.end

    def waited(self):
        return round(time.monotonic() - self.start, 3)


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
        raise QmpError("unexpected query-pci reply from QEMU (%s: %s)" % (type(exc).__name__, exc),
                       error_class=None, desc=None, command="query-pci", reply=repr(reply)[:2000])
    return out


class QmpClient:
    """One QMP connection: greeting, capabilities, commands with ids, events.

    Not thread safe; one command in flight at a time (QMP's model and libxl's).
    Events read while waiting for a reply are queued for ``wait_event``.
    """

    def __init__(self, path, timeout=DEFAULT_TIMEOUT):
        self.path = path
        self.timeout = float(timeout)
        self.greeting = None
        self._sock = None
        self._buf = b""
        self._events = deque()
        self._seq = 0
        self._id_prefix = "xen.pci-%d-%x-" % (os.getpid(), id(self) & 0xFFFFFF)

    # -- connection ---------------------------------------------------------
    def connect(self, timeout=None):
        """Connect, read the greeting, negotiate capabilities (all within ``timeout``)."""
        dl = _Deadline(self.timeout if timeout is None else timeout)
        if not os.path.exists(self.path):
            raise QmpConnectionError("QMP socket %s does not exist (is the device model running?)" % self.path,
                                     socket=self.path, errno="ENOENT")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(dl.remaining(), 0.001))
            sock.connect(self.path)
        except socket.timeout:
            sock.close()
            raise DeadlineExceeded("connecting to QMP socket %s timed out after %.1f s" % (self.path, dl.waited()),
                                   socket=self.path, step="connect", waited=dl.waited())
        except OSError as exc:
            sock.close()
            raise QmpConnectionError("cannot connect to QMP socket %s: %s" % (self.path, exc.strerror or exc),
                                     socket=self.path, errno=errno.errorcode.get(exc.errno, str(exc.errno)))
        self._sock = sock
        self._buf = b""
        try:
            # QEMU accepts a second client's connect but greets it only when the
            # first has gone: a missing greeting usually means another client.
            msg = self._read_message(dl, "the QMP greeting (is another QMP client connected?)")
            if "QMP" not in msg:
                raise QmpConnectionError("%s did not greet with QMP: %s" % (self.path, _short(msg)),
                                         socket=self.path, received=_short(msg))
            self.greeting = msg["QMP"]
            self.execute("qmp_capabilities", timeout=dl.remaining())
        except BaseException:
            self.close()
            raise
        return self.greeting

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    @property
    def connected(self):
        return self._sock is not None

    def __enter__(self):
        if not self.connected:
            self.connect()
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
    def _read_message(self, dl, waiting_for):
        """Next JSON object from QEMU, honouring the deadline."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line, self._buf = self._buf[:nl], self._buf[nl + 1:]
                if not line.strip():
                    continue
                try:
                    msg = json.loads(line.decode("utf-8"))
                except ValueError:
                    self.close()
                    raise QmpConnectionError("unparseable QMP message from %s while waiting for %s: %r"
                                             % (self.path, waiting_for, line[:200]),
                                             socket=self.path, received=repr(line[:200]))
                if not isinstance(msg, dict):
                    self.close()
                    raise QmpConnectionError("QMP message from %s is not a JSON object: %r" % (self.path, line[:200]),
                                             socket=self.path, received=repr(line[:200]))
                return msg
            if len(self._buf) > _MAX_LINE:
                self.close()
                raise QmpConnectionError("QMP message from %s exceeds %d bytes without a newline" % (self.path, _MAX_LINE),
                                         socket=self.path)
            if self._sock is None:
                raise QmpConnectionError("QMP connection to %s is closed" % self.path, socket=self.path)
            remaining = dl.remaining()
            if remaining <= 0:
                raise DeadlineExceeded("no %s from QMP socket %s within %.1f s" % (waiting_for, self.path, dl.seconds),
                                       socket=self.path, waiting_for=waiting_for, waited=dl.waited())
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue   # the deadline check above raises
            except OSError as exc:
                self.close()
                raise QmpConnectionError("QMP connection to %s failed while waiting for %s: %s"
                                         % (self.path, waiting_for, exc.strerror or exc),
                                         socket=self.path, errno=errno.errorcode.get(exc.errno, str(exc.errno)))
            if not chunk:
                self.close()
                raise QmpConnectionError("QEMU closed the QMP connection %s while we waited for %s (QEMU gone?)"
                                         % (self.path, waiting_for), socket=self.path, waiting_for=waiting_for)
            self._buf += chunk

    def _send(self, obj, dl, what):
        if self._sock is None:
            raise QmpConnectionError("QMP connection to %s is not open (sending %s)" % (self.path, what), socket=self.path)
        data = json.dumps(obj).encode("utf-8") + b"\n"
        self._sock.settimeout(max(dl.remaining(), 0.001))
        try:
            self._sock.sendall(data)
        except socket.timeout:
            self.close()
            raise DeadlineExceeded("sending QMP command %r to %s timed out after %.1f s" % (what, self.path, dl.waited()),
                                   socket=self.path, command=what, waited=dl.waited())
        except OSError as exc:
            self.close()
            raise QmpConnectionError("cannot send QMP command %r to %s: %s (QEMU gone?)" % (what, self.path, exc.strerror or exc),
                                     socket=self.path, command=what, errno=errno.errorcode.get(exc.errno, str(exc.errno)))

    # -- commands and events -------------------------------------------------
    def execute(self, cmd, args=None, timeout=None):
        """Run ``cmd`` and return its ``return`` value.

        Raises QmpError for an ``{"error": ...}`` reply, DeadlineExceeded when
        no reply came within ``timeout`` seconds, QmpConnectionError when the
        connection broke. A reply that arrives after its deadline is dropped
        later by id, so the connection stays usable.
        """
        dl = _Deadline(self.timeout if timeout is None else timeout)
        self._seq += 1
        req_id = self._id_prefix + str(self._seq)
        req = {"execute": cmd, "id": req_id}
        if args:
            req["arguments"] = args
        self._send(req, dl, cmd)
        while True:
            try:
                msg = self._read_message(dl, "the reply to %r" % cmd)
            except DeadlineExceeded as exc:
                raise DeadlineExceeded("QMP command %r got no reply from %s within %.1f s" % (cmd, self.path, dl.seconds),
                                       socket=self.path, command=cmd, arguments=args, waited=exc.details.get("waited"))
            if "event" in msg:
                self._events.append(msg)
                continue
            if "QMP" in msg:
                continue   # a greeting here is nonsense; ignore as QEMU's own clients do
            if msg.get("id") not in (req_id, None):
                continue   # late reply to an earlier command that timed out
            if "error" in msg:
                err = msg["error"] if isinstance(msg["error"], dict) else {}
                klass, desc = err.get("class"), err.get("desc")
                raise QmpError("QEMU refused %r: %s (%s)" % (cmd, desc, klass), error_class=klass, desc=desc,
                               command=cmd, arguments=args, socket=self.path)
            if "return" in msg:
                return msg["return"]
            # neither a reply nor an event: ignore (forward compatibility)

    def pending_events(self):
        """Events received so far and not yet consumed (oldest first); empties the queue."""
        out = list(self._events)
        self._events.clear()
        return out

    def wait_event(self, name, predicate=None, timeout=None):
        """Return the first event ``name`` (matching ``predicate(event)``), queued or new.

        Other events read meanwhile stay queued, in order.
        """
        for ev in list(self._events):
            if ev.get("event") == name and (predicate is None or predicate(ev)):
                self._events.remove(ev)
                return ev
        dl = _Deadline(self.timeout if timeout is None else timeout)
        while True:
            try:
                msg = self._read_message(dl, "event %s" % name)
            except DeadlineExceeded as exc:
                raise DeadlineExceeded("no QMP event %s from %s within %.1f s" % (name, self.path, dl.seconds),
                                       socket=self.path, event=name, waited=exc.details.get("waited"))
            if "event" not in msg:
                continue   # stray late reply
            if msg.get("event") == name and (predicate is None or predicate(msg)):
                return msg
            self._events.append(msg)

    # -- helpers for PCI passthrough -----------------------------------------
    def query_status(self, timeout=None):
        return self.execute("query-status", timeout=timeout)

    def query_pci(self, timeout=None):
        """``query-pci`` as a flat list of QmpPciDevice (bridges' children included)."""
        return parse_query_pci(self.execute("query-pci", timeout=timeout))

    def find_device(self, qdev_id, timeout=None):
        """The QmpPciDevice whose qdev id is ``qdev_id``, or None."""
        for dev in self.query_pci(timeout=timeout):
            if dev.qdev_id == qdev_id:
                return dev
        return None

    @staticmethod
    def passthrough_args(bdf, vslot=None, vfunc=0, permissive=False):
        """``device_add`` arguments libxl sends for ``bdf`` (pci_add_qmp_device_add)."""
        seg, bus, dev, func = _parse_bdf(bdf)
        args = {
            "driver": PT_DRIVER,
            "id": PT_QDEV_ID_FMT % (bus, dev, func),
            "hostaddr": "%04x:%02x:%02x.%01x" % (seg, bus, dev, func),
        }
        if vslot is not None:
            vslot, vfunc = int(vslot), int(vfunc or 0)
            if not (0 <= vslot <= 0x1F and 0 <= vfunc <= 7):
                raise SpecError("virtual slot %r / function %r out of range" % (vslot, vfunc), vslot=vslot, vfunc=vfunc)
            args["addr"] = "%x.%x" % (vslot, vfunc)
        if permissive:
            # Only when set: QEMU before the XSA-131 fix has no such property.
            args["permissive"] = True
        return args

    def device_add_passthrough(self, bdf, vslot=None, vfunc=0, permissive=False, timeout=None):
        """``device_add`` the host device ``bdf``; returns the qdev id.

        ``vslot`` (and ``vfunc`` for the functions of a multi-function device)
        ask for a guest slot; without it QEMU takes the first free slot:
        find it with ``find_device(id)``.
        """
        args = self.passthrough_args(bdf, vslot=vslot, vfunc=vfunc, permissive=permissive)
        self.execute("device_add", args, timeout=timeout)
        return args["id"]

    def device_del(self, qdev_id, timeout=None):
        """Ask QEMU to unplug ``qdev_id`` (the guest must acknowledge on pc/ACPI)."""
        self.execute("device_del", {"id": qdev_id}, timeout=timeout)

    def wait_device_gone(self, qdev_id, timeout=DEFAULT_TIMEOUT, poll=_GONE_POLL):
        """Wait until ``qdev_id`` has left QEMU: DEVICE_DELETED, or absent from query-pci.

        Bounded by ``timeout``; raises DeadlineExceeded naming the device.
        """
        dl = _Deadline(timeout)

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
                gone = self.find_device(qdev_id, timeout=max(dl.remaining(), 0.5)) is None
            except DeadlineExceeded:
                gone = False
            if take_event():   # the event may have come with the query-pci reply
                return "event"
            if gone:
                return "query-pci"
            if dl.expired():
                raise DeadlineExceeded(
                    "QEMU still has device %r %.1f s after device_del (unplug not acknowledged by the guest?)"
                    % (qdev_id, dl.waited()), device=qdev_id, socket=self.path, waited=dl.waited())
            try:
                self.wait_event("DEVICE_DELETED", is_ours, timeout=min(poll, dl.remaining()))
                return "event"
            except DeadlineExceeded:
                continue

    def remove_device(self, qdev_id, timeout=DEFAULT_TIMEOUT):
        """Idempotent unplug: device_del + wait_device_gone.

        A device QEMU does not know is already gone; an unplug already in
        progress is waited for, not an error.
        """
        dl = _Deadline(timeout)
        try:
            self.device_del(qdev_id, timeout=max(dl.remaining(), 0.5))
        except QmpError as exc:
            if exc.error_class == "DeviceNotFound":
                return "absent"
            if not (exc.desc or "").endswith("is already in the process of unplug"):
                raise
        return self.wait_device_gone(qdev_id, timeout=dl.remaining())


class QmpLock(FileLock):
    """libxl's QMP lock of one domain (flock, acquired with a deadline)."""

    def __init__(self, path):
        super().__init__(path, error_cls=QmpConnectionError)

    def acquire(self, timeout=DEFAULT_TIMEOUT):  # pylint: disable=arguments-renamed
        return super().acquire(Deadline(max(timeout, 1e-6), "QMP lock"), "another QMP client (libxl?)")

    def __enter__(self):
        if not self.held:
            self.acquire()
        return self


class QmpSession(QmpClient):
    """A QMP connection to a guest's device model, under libxl's QMP lock.

    ``with QmpSession.open(domid, uuid) as qmp: qmp.device_add_passthrough(...)``
    """

    def __init__(self, path, lock, timeout=DEFAULT_TIMEOUT):
        super().__init__(path, timeout=timeout)
        self.lock = lock

    @classmethod
    def open(cls, domid, uuid, qmp_dir=DEFAULT_QMP_DIR, userdata_dir=DEFAULT_USERDATA_DIR,
             timeout=DEFAULT_TIMEOUT, command_timeout=DEFAULT_TIMEOUT):
        """Lock, connect and negotiate, all within ``timeout`` seconds.

        The socket is checked first, so a guest without a device model fails
        before any lock file is created.
        """
        dl = _Deadline(timeout)
        path = qmp_socket_path(domid, qmp_dir)
        if not os.path.exists(path):
            raise QmpConnectionError("QMP socket %s of domain %d does not exist (no device model running?)" % (path, int(domid)),
                                     socket=path, domid=int(domid), errno="ENOENT")
        lock = QmpLock(qmp_lock_path(domid, uuid, userdata_dir))
        lock.acquire(timeout=dl.remaining())
        session = cls(path, lock, timeout=command_timeout)
        try:
            session.connect(timeout=max(dl.remaining(), 0.001))
        except BaseException:
            lock.release()
            raise
        return session

    def close(self):
        try:
            super().close()
        finally:
            if self.lock is not None:
                self.lock.release()


def _short(obj, limit=300):
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "..."

"""Simulated Linux kernels: the xenbus core shared by pciback and pcifront.

Each simulated kernel (dom0's "D0", a guest's "D<domid>") owns one
in-process xenstore connection and one *xenwatch* worker: like Linux's
single xenwatch thread, watch callbacks run one at a time, in event order,
and may sleep (a driver scanning a bus) while later events queue behind.
Reads see the store as it is when the callback runs, not when the event was
fired, which is what makes the real traces' interleavings come out.

Timings: ``T_*`` constants are seconds measured on real Xen 4.17 under QEMU
TCG (real-xen-access-log.txt); ``Kernel.delay`` multiplies them by the
scenario's ``timing.scale`` (default 0.1).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Awaitable, Callable

from ..xenstore.server import InternalConn
from ..xenstore.store import XsError

log = logging.getLogger(__name__)

# XenbusState
UNKNOWN, INITIALISING, INITWAIT, INITIALISED, CONNECTED, CLOSING, CLOSED, RECONFIGURING, RECONFIGURED = range(9)

# errno values used in "<errno> <message>" error nodes
ENOENT, EINVAL, EFAULT, ENOMEM = 2, 22, 14, 12

# Delays (seconds at scale 1.0) read off the real access log.
T_BE_PROBE = 0.048          # new backend node seen -> InitWait written
T_BE_EXPORT = 0.021         # pcistub lookup + vpci add -> vdev-N written
T_BE_SUBSTATE = 0.013       # vdev-N -> state-N = 3
T_BE_ROOT = 0.007           # -> root-0 / root_num
T_BE_SWITCH = 0.010         # -> BE state Initialised / Reconfigured
T_BE_CONNECT = 0.023        # map the ring, bind the event channel -> Connected
T_BE_FE_CHANGED = 0.009     # frontend state seen -> own switch
T_FE_PROBE = 0.050          # new frontend node seen -> pci-op-ref ... (grant, evtchn)
T_FE_PUBLISH = 0.004        # between the writes of the publish transaction
T_FE_INITIALISED = 0.014    # publish committed -> FE Initialised
T_FE_SCAN = 0.200           # scanning a root bus at connect
T_FE_RESCAN = 0.120         # rescanning at Reconfigured
T_FE_DETACH = 0.030         # removing devices at Reconfiguring -> FE 7
T_FE_CLOSE = 0.010


_token_counter = itertools.count(0xFFFF888006700000, 0x7D0)


def heap_token() -> str:
    """A token that looks like the address of a kernel heap object, as the
    real kernel's watch tokens are."""
    return "%016X" % next(_token_counter)


class Kernel:
    """xenbus of one simulated kernel: connection, watches, xenwatch worker."""

    def __init__(self, host, domid: int, running: bool = True):
        self.host = host
        self.store = host.store
        self.domid = domid
        self.label = f"D{domid}"
        self.conn = InternalConn(host.store, domid, self.label, self._on_event, host.loop)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.watches: dict[str, tuple[str, Callable[[str], Awaitable[None]]]] = {}
        self.running = asyncio.Event()
        if running:
            self.running.set()
        self.busy = False
        self.holding: list = []     # hang faults a callback is blocked on
        self._worker: asyncio.Task | None = None
        self.stopped = False

    # ---------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._worker = asyncio.ensure_future(self._xenwatch())

    async def stop(self) -> None:
        self.stopped = True
        if self._worker is not None:
            self._worker.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout=5)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                pass
            except Exception:       # a driver bug must not block shutdown
                log.exception("%s: xenwatch worker failed", self.label)
            self._worker = None
        self.store.detach(self.conn)

    def pause(self) -> None:
        self.running.clear()

    def unpause(self) -> None:
        self.running.set()

    @property
    def idle(self) -> bool:
        return not self.busy and self.queue.empty()

    @property
    def held(self) -> bool:
        """Blocked by a hang fault still in place: nothing it does can
        happen before the fault is removed (settled, for SimHost.settle)."""
        return any(not f.removed.is_set() for f in self.holding)

    def _on_event(self, path: str, token: str) -> None:
        if not self.stopped:
            self.queue.put_nowait(("event", path, token))

    def call_soon(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` on the xenwatch worker (serialised with watch callbacks)."""
        self.queue.put_nowait(("call", fn, None))

    async def _xenwatch(self) -> None:
        while True:
            await self.running.wait()
            kind, a, b = await self.queue.get()
            await self.running.wait()       # a paused guest runs nothing
            self.busy = True
            try:
                if kind == "call":
                    await a()
                else:
                    entry = self.watches.get(b)
                    if entry is not None:
                        await entry[1](a)
            except asyncio.CancelledError:
                raise
            except XsError as exc:
                log.warning("%s: xenstore error in watch callback: %s", self.label, exc)
            except Exception:
                log.exception("%s: watch callback failed", self.label)
            finally:
                self.busy = False

    # ------------------------------------------------------------- timing

    async def delay(self, seconds: float) -> None:
        scale = self.host.timing_scale
        if seconds * scale > 0:
            await asyncio.sleep(seconds * scale)

    # ------------------------------------------------------ xenstore ops

    def read(self, path: str) -> str | None:
        try:
            # The kernel reads bytes and parses them (sscanf): a guest's
            # undecodable value is just text that does not parse.
            return self.store.read(self.conn, path).decode(errors="replace")
        except XsError as exc:
            if exc.name == "ENOENT":
                return None
            raise

    def read_int(self, path: str, default: int | None = None) -> int | None:
        text = self.read(path)
        if text is None:
            return default
        try:
            return int(text.strip(), 10)
        except ValueError:
            return default

    def exists(self, path: str) -> bool:
        try:
            self.store.read(self.conn, path)
            return True
        except XsError:
            return False

    def write(self, path: str, value: str, tx: int = 0) -> None:
        self.store.write(self.conn, path, value.encode(), tx)

    def directory(self, path: str) -> list[str]:
        try:
            return list(self.store.directory(self.conn, path))
        except XsError:
            return []

    def watch(self, path: str, callback: Callable[[str], Awaitable[None]], token: str | None = None) -> str:
        token = token or heap_token()
        self.watches[token] = (path, callback)
        self.store.watch(self.conn, path, token)
        return token

    def unwatch(self, token: str) -> None:
        entry = self.watches.pop(token, None)
        if entry is None:
            return
        try:
            self.store.unwatch(self.conn, entry[0], token)
        except XsError:
            pass

    def read_state(self, node: str) -> int:
        """xenbus_read_driver_state: Unknown when missing or unparsable."""
        value = self.read_int(f"{node}/state")
        return UNKNOWN if value is None else value

    async def switch_state(self, dev, state: int) -> None:
        """xenbus_switch_state: a transaction that checks the node still
        exists and writes ``state``; nothing when already in that state."""
        if dev.state == state:
            return
        for _attempt in range(10):
            tx = self.store.transaction_start(self.conn)
            try:
                self.store.read(self.conn, f"{dev.nodename}/state", tx)
            except XsError:
                # The node went away: xenbus gives up (the device is going).
                self.store.transaction_end(self.conn, tx, False)
                return
            self.store.write(self.conn, f"{dev.nodename}/state", str(state).encode(), tx)
            try:
                self.store.transaction_end(self.conn, tx, True)
            except XsError as exc:
                if exc.name == "EAGAIN":
                    continue
                raise
            dev.state = state
            return
        log.warning("%s: switch of %s to %d kept conflicting", self.label, dev.nodename, state)

    def dev_error(self, dev, err: int, message: str) -> None:
        """xenbus_dev_error: "<errno> <message>" at error/<nodename>/error."""
        path = f"error/{dev.nodename}/error"
        try:
            self.write(path, f"{err} {message}")
        except XsError as exc:
            log.warning("%s: could not write %s: %s", self.label, path, exc)
        log.info("%s: %s: %d %s", self.label, dev.nodename, err, message)

    async def dev_fatal(self, dev, err: int, message: str) -> None:
        """xenbus_dev_fatal: the error node, then Closing."""
        self.dev_error(dev, err, message)
        await self.switch_state(dev, CLOSING)

    def abs_path(self, path: str) -> str:
        return path if path.startswith("/") else f"/local/domain/{self.domid}/{path}"


class XenbusDevice:
    """What the xenbus core knows of one device node."""

    def __init__(self, nodename: str, otherend: str, otherend_id: int):
        self.nodename = nodename            # relative to the kernel's domain path
        self.otherend = otherend            # absolute
        self.otherend_id = otherend_id
        self.state = INITIALISING
        self.otherend_token: str | None = None
        self.removed = False


def split_bdf(text: str) -> tuple[int, int, int, int] | None:
    """sscanf("%x:%x:%x.%x"); None unless all four fields parse."""
    try:
        dom, bus, rest = text.strip().split(":")
        slot, func = rest.split(".")
        return int(dom, 16), int(bus, 16), int(slot, 16), int(func, 16)
    except (ValueError, AttributeError):
        return None


def node_depth_root(node: str, levels: int) -> str | None:
    """strsep_len(): the first ``levels + 1`` components of ``node``."""
    parts = node.split("/")
    if len(parts) < levels + 1:
        return None
    return "/".join(parts[:levels + 1])

"""Fault injection shared by every simulator component.

A rule is ``(point, action, criteria, params, times)``. A component asks
``faults.match(point, **ctx)`` at a named point; the first rule whose point
is the same and whose criteria all match ``ctx`` is returned (and its
``times`` count, when given, is used up), else ``None``. The component then
carries out the action.

Criteria are the keyword arguments of ``add`` named in ``MATCH_KEYS`` (or
anything passed in ``when=``); every other keyword is an action parameter.
``path`` matches as a prefix on component boundaries (``/a/b`` matches
``/a/b`` and ``/a/b/c``, not ``/a/bc``), ``file`` as a suffix on component
boundaries (``pciback/bind`` and ``bind`` match ``bus/pci/drivers/pciback/bind``,
not ``.../unbind``; a leading ``/`` is ignored, so a whole path is an exact
match), ``op`` case-insensitively, the rest by equality (compared as strings,
so ``domid=1`` matches ``domid="1"``). A criterion whose key the point does
not provide never matches.

Rules may be added and removed from any thread while the host runs. A
``hang`` lasts until its rule is removed (``remove`` or ``clear``; a rule
whose ``times`` are used up still holds what it hung) or the host stops;
then the hung operation proceeds. ``fault.removed`` is the
``threading.Event`` that says so.

Named points and their actions
------------------------------

``xenstore.request`` (xenstored server, every request read from a socket;
ctx: ``op`` wire name such as ``WRITE``, ``path`` canonical first argument,
``domid``, ``label`` such as ``A3``, ``tx``):

* ``delay``  -- answer ``seconds`` later (other requests of that connection
  queue behind it, the daemon keeps serving other connections);
* ``hang``   -- never answer that request (the connection stays open; later
  requests on it are not answered either, as replies are in order);
* ``close``  -- close the connection after reading the request, no reply;
* ``error``  -- reply with the error ``errno`` (e.g. ``EIO``, ``EACCES``)
  instead of running the request;
* ``eagain`` -- alias of ``error`` with ``EAGAIN``.

``xenstore.commit`` (store, each ``TRANSACTION_END`` with commit; ctx:
``domid``, ``label``, ``tx``, ``paths`` (changed paths)):

* ``eagain`` -- the commit fails with EAGAIN (the transaction is gone, as
  after a real conflict). ``times=N`` makes an "EAGAIN storm" of N commits;
* ``error``  -- the commit fails with ``errno``.

``xenstore.kernel`` (store, operations of in-process connections, i.e.
the simulated kernel drivers; ctx as ``xenstore.request``):

* ``error``  -- the operation raises ``XsError(errno)``.

Other components document their own points in their modules
(``sysfs.py``: ``sysfs.write``; ``kernel/pciback.py``: ``pciback.export``,
``pciback.reconfigure``, ``pciback.connect``; ``kernel/pcifront.py``:
``pcifront.reconfigure``, ``pcifront.connect``; ``qemu.py``: ``qemu.*``) and
all of them in docs/xensim.md's fault table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

MATCH_KEYS = frozenset({"op", "path", "domid", "label", "tx", "bdf", "command", "file", "target", "name"})


@dataclasses.dataclass(eq=False)      # a rule is itself: remove() takes that one out
class Fault:
    point: str
    action: str
    when: dict
    params: dict
    times: int | None = None     # None: forever
    hits: int = 0
    # Set once the rule is taken out of the registry: ends its hangs.
    removed: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False, compare=False)

    def matches(self, point: str, ctx: dict) -> bool:
        if point != self.point or (self.times is not None and self.hits >= self.times):
            return False
        for key, want in self.when.items():
            if key not in ctx or ctx[key] is None:
                return False
            have = ctx[key]
            if key == "path":
                w, h = str(want).rstrip("/") or "/", str(have)
                if not (w == "/" or h == w or h.startswith(w + "/")):
                    return False
            elif key == "file":
                w, h = str(want).strip("/"), str(have).strip("/")
                if not (h == w or h.endswith("/" + w)):
                    return False
            elif key == "op":
                if str(have).upper() != str(want).upper():
                    return False
            elif str(have) != str(want):
                return False
        return True

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times


class Faults:
    """Thread-safe registry of fault rules (tests add rules from their own
    thread while the simulator's loop matches them)."""

    def __init__(self, rules: list[dict] | None = None):
        self._lock = threading.Lock()
        self._rules: list[Fault] = []
        self.log: list[tuple[str, str, dict]] = []      # (point, action, ctx) of each hit
        for r in rules or ():
            self.load(r)

    def add(self, point: str, action: str, times: int | None = None, when: dict | None = None,
            **params: Any) -> Fault:
        crit = dict(when or {})
        for key in list(params):
            if key in MATCH_KEYS:
                crit[key] = params.pop(key)
        if action == "eagain" and point != "xenstore.commit":
            params.setdefault("errno", "EAGAIN")
        fault = Fault(point, action, crit, params, times)
        with self._lock:
            self._rules.append(fault)
        return fault

    def load(self, spec: dict) -> Fault:
        """Add a rule from a scenario entry ``{point, action, times?, ...}``."""
        spec = dict(spec)
        try:
            point = spec.pop("point")
            action = spec.pop("action")
        except KeyError as e:
            raise ValueError(f"fault needs {e.args[0]!r}: {spec}") from None
        return self.add(point, action, **spec)

    def match(self, point: str, **ctx: Any) -> Fault | None:
        with self._lock:
            for fault in self._rules:
                if fault.matches(point, ctx):
                    fault.hits += 1
                    self.log.append((point, fault.action, ctx))
                    return fault
        return None

    def remove(self, fault: Fault) -> None:
        with self._lock:
            if fault in self._rules:
                self._rules.remove(fault)
        fault.removed.set()

    def clear(self) -> None:
        with self._lock:
            gone, self._rules = self._rules, []
        for fault in gone:
            fault.removed.set()

    @property
    def rules(self) -> list[Fault]:
        with self._lock:
            return list(self._rules)


def wait_removed(fault: Fault, stop: threading.Event | None = None, poll: float = 0.05) -> bool:
    """Block this thread while ``fault`` is in its registry: True once it is
    removed, False if ``stop`` is set first (the host stopping)."""
    while not fault.removed.wait(poll):
        if stop is not None and stop.is_set():
            return False
    return True


async def until_removed(fault: Fault, poll: float = 0.02) -> None:
    """Wait on the loop while ``fault`` is in its registry (a task waiting
    here is cancelled when its component stops)."""
    while not fault.removed.is_set():
        await asyncio.sleep(poll)

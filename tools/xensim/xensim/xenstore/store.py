"""The xenstore tree: nodes, permissions, transactions, watches (no I/O).

Semantics follow Xen 4.17's C xenstored (``tools/xenstore/xenstored_core.c``,
``xenstored_transaction.c``, ``xenstored_watch.c``, ``xenstored_domain.c``),
corrected where the real host (which runs oxenstored, see
``docs/real-xen-*.txt``) behaves differently:

* ``directory`` lists children sorted by name (oxenstored; C xenstored keeps
  creation order). ``xenstore-ls`` output in the transcript is sorted.
* a transaction works on a snapshot of the tree taken at its start
  (oxenstored); conflicts are detected as in C xenstored, by comparing at
  commit the generation of every node the transaction read, listed, wrote or
  removed (a node that did not exist counts too) with the live tree.
* watch events of a committed transaction are fired per operation in order
  (oxenstored: an ``mkdir`` then ``setperms`` of one node gives two events,
  as in ``real-xen-access-log.txt``), after the whole transaction is applied.
* the access log has oxenstored's fields and format (``format_access_log``).

``Store(flavour=...)`` picks the daemon where the two differ in what a
client can see (docs/xensim.md, "Where xensim follows oxenstored rather than
C xenstored"): ``"oxenstored"`` (the default, what Debian's dom0 runs and the
real-Xen checks were taken from) or ``"c"`` (C xenstored 4.17):

* entry size: oxenstored refuses a WRITE whose value is over 2048 bytes with
  E2BIG, for every connection, after creating the missing parents (they
  stay); C refuses, for unprivileged connections, any node record (header,
  permissions, value and child names, ``write_node_raw``) of 2048 bytes or
  more with ENOSPC, and a transaction that met the refusal fails its commit
  with ENOMEM;
* numbers: domids in permission strings, GET_DOMAIN_PATH, INTRODUCE, ... are
  read and printed as each daemon does (``numbers.py``);
* WATCH/UNWATCH: oxenstored wants exactly ``path\0token\0``, C exactly two
  NUL-terminated strings (bytes after them ignored);
* SET_PERMS on an unknown ``@`` path: ENOENT (oxenstored) or EINVAL (C);
* INTRODUCE of a domain already introduced (dom0 is, from the start): C
  answers OK; oxenstored EINVAL unless mfn and port are the ones it has.

Everything here runs on the simulator's event loop thread: operations are
atomic with respect to each other, as in the single-threaded daemon.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import time
from typing import Callable, Iterable

from .numbers import c_atoi, c_strtol, c_unsigned, ocaml_c_int_of_string, ocaml_int_of_string, ocaml_unsigned

PERM_NONE = 0
PERM_READ = 1
PERM_WRITE = 2
PERM_OWNER = 4
PERM_ALL = PERM_READ | PERM_WRITE | PERM_OWNER

_LETTER_BITS = {"n": PERM_NONE, "r": PERM_READ, "w": PERM_WRITE, "b": PERM_READ | PERM_WRITE}

# Quotas of C xenstored 4.17 (xenstored_core.c), applied to unprivileged
# connections only, as there.
QUOTA_MAX_TRANSACTION = 10
QUOTA_NB_WATCH_PER_DOMAIN = 128
QUOTA_MAX_ENTRY_SIZE = 2048
QUOTA_NB_PERMS_PER_NODE = 5
XENSTORE_REL_PATH_MAX = 2048
XENSTORE_PAYLOAD_MAX = 4096

SPECIAL_WATCHES = ("@introduceDomain", "@releaseDomain")

FLAVOURS = ("oxenstored", "c")
DOMID_SELF = 0x7FF0
# C xenstored's node record (utils.h xs_tdb_record_hdr: u64 generation and
# three u32, padded to 24 bytes) and one struct xs_permissions per perm.
C_RECORD_HEADER = 24
C_RECORD_PERM = 8
# dom0's (mfn, event channel) as oxenstored holds them: it maps dom0's page
# itself (mfn 0) and reads the port from /proc/xen/xsd_port (13 on the
# real-Xen VM of tests/xenvm).
DOM0_INTRODUCTION = (0, 13)

_VALID_CHARS = re.compile(r"^[A-Za-z0-9\-/_@]*$")
_LOCAL_DOMAIN = re.compile(r"^/local/domain/(\d{1,5})/")


class XsError(Exception):
    """A xenstored error reply; ``name`` is the errno name sent on the wire."""

    def __init__(self, name: str, detail: str = ""):
        super().__init__(f"{name}: {detail}" if detail else name)
        self.name = name
        self.detail = detail


@dataclasses.dataclass
class ConnStats:
    """Per-connection counters (what a round-trip budget is checked with)."""

    ops: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    requests: int = 0           # round trips (requests answered or failed)
    events: int = 0             # XS_WATCH_EVENTs delivered
    bytes_in: int = 0           # wire bytes received from the client (header included)
    bytes_out: int = 0          # wire bytes sent to the client (replies and events)

    def as_dict(self) -> dict:
        return {"ops": dict(self.ops), "requests": self.requests, "events": self.events,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}


@dataclasses.dataclass
class LogEntry:
    """One access-log record, fields as oxenstored logs them."""

    time: float
    label: str          # "A12", "D0", "D1"
    tx: int             # transaction id, 0 outside transactions
    op: str             # oxenstored access type: "write", "rm", "w event", "error", ...
    path: str           # path as the client sent it (relative stays relative)
    value: str = ""     # write value, perms "n0 r1", watch token, ...


@dataclasses.dataclass
class Watch:
    path: str                   # canonical path or "@special"
    token: str
    prefix: str | None          # implicit path stripped from events (relative watch)

    def event_path(self, name: str) -> str:
        if self.prefix is None or not name.startswith(self.prefix):
            return name
        rest = name[len(self.prefix):]
        return rest[1:] if rest.startswith("/") else rest


class Conn:
    """A client of the store: a socket connection or an in-process driver.

    ``domid`` decides permissions (0 is privileged). Subclasses implement
    ``deliver_event``. ``count_bytes`` makes the store account wire-equivalent
    bytes itself (in-process connections, which have no wire).
    """

    count_bytes = False

    def __init__(self, domid: int = 0, label: str = "A0"):
        self.domid = int(domid)
        self.label = label
        self.stats = ConnStats()
        self.watches: list[Watch] = []
        self.transactions: dict[int, Transaction] = {}
        self.next_tx_id = 1
        self.closed = False

    @property
    def privileged(self) -> bool:
        return self.domid == 0

    def deliver_event(self, path: str, token: str) -> None:
        raise NotImplementedError

    def deliver_initial_event(self, path: str, token: str) -> None:
        """The event a new watch fires; xenstored sends it after the WATCH
        reply (a socket connection holds it until the reply is out)."""
        self.deliver_event(path, token)

    def __repr__(self):
        return f"<{type(self).__name__} {self.label} dom{self.domid}>"


class Node:
    """One tree node. Never mutated once stored: transactions share them."""

    __slots__ = ("value", "perms", "children", "gen")

    def __init__(self, value: bytes, perms: tuple, children: tuple = (), gen: int = 0):
        self.value = value
        self.perms = perms          # ((letter, domid), ...): owner first
        self.children = children    # sorted tuple of names
        self.gen = gen

    def replace(self, **kw) -> "Node":
        n = Node(self.value, self.perms, self.children, self.gen)
        for k, v in kw.items():
            setattr(n, k, v)
        return n


class Transaction:
    def __init__(self, tid: int, conn: Conn, nodes: dict):
        self.id = tid
        self.conn = conn
        self.nodes = nodes                      # private snapshot, modified in place
        self.accessed: dict[str, int | None] = {}   # path -> generation when first seen
        self.modified: dict[str, None] = {}     # ordered set of changed paths
        self.events: list[tuple] = []           # queued watch firings
        self.failed = False                     # C: a refused node write dooms the commit


def perms_to_strings(perms: Iterable, flavour: str = "oxenstored") -> list[str]:
    """Wire form; domids print as the daemon's ``%u`` does."""
    fmt = ocaml_unsigned if flavour == "oxenstored" else c_unsigned
    return [f"{letter}{fmt(domid)}" for letter, domid in perms]


def _perm_domid(text: str, flavour: str) -> int:
    """The domid after the letter: ``int_of_string`` (oxenstored) or
    ``strtol(p, &end, 0)`` that must use the whole string (C)."""
    if flavour == "oxenstored":
        return ocaml_int_of_string(text)
    value, end = c_strtol(text, 0)
    if not text or end != len(text):
        raise ValueError(text)
    return c_unsigned(value)


def parse_perms(strings: Iterable[str], flavour: str = "oxenstored") -> tuple:
    """Wire perms ["n0", "r1"] -> (("n", 0), ("r", 1)); EINVAL when malformed."""
    out = []
    for s in strings:
        if not s or s[0] not in _LETTER_BITS:
            raise XsError("EINVAL", f"bad permission {s!r}")
        try:
            out.append((s[0], _perm_domid(s[1:], flavour)))
        except ValueError:
            raise XsError("EINVAL", f"bad permission {s!r}") from None
    if not out:
        raise XsError("EINVAL", "no permissions")
    return tuple(out)


def c_record_size(node: "Node") -> int:
    """Bytes of C xenstored's record of ``node`` (what its quota counts)."""
    return (C_RECORD_HEADER + C_RECORD_PERM * len(node.perms) + len(node.value)
            + sum(len(c.encode("utf-8", "surrogateescape")) + 1 for c in node.children))


def parent_of(path: str) -> str:
    i = path.rfind("/")
    return path[:i] if i > 0 else "/"


def _child(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def _is_child(name: str, parent: str) -> bool:
    """Is ``name`` equal to ``parent`` or below it (xenstored is_child)."""
    if parent == "/":
        return True
    return name.startswith(parent) and (len(name) == len(parent) or name[len(parent)] == "/")


def is_valid_nodename(path: str) -> bool:
    """xenstored's is_valid_nodename: absolute, no trailing or double slash."""
    if not path.startswith("/"):
        return False
    if path.endswith("/") and path != "/":
        return False
    if "//" in path:
        return False
    m = _LOCAL_DOMAIN.match(path)
    off = m.end() if m else 0
    if len(path) > off + XENSTORE_REL_PATH_MAX:
        return False
    return bool(_VALID_CHARS.match(path))


def format_access_log(entries: Iterable[LogEntry], read_ops: bool = False, transaction_ops: bool = False,
                      special_ops: bool = False, iso_time: bool = True) -> str:
    """Format entries as oxenstored's xenstored-access.log.

    The filters mirror oxenstored's defaults (``access-log-read-ops``,
    ``-transaction-ops``, ``-special-ops`` all off; ENOENT errors are only
    logged with read ops). Line shape, from oxenstored logging.ml:
    ``[<date>]  <label[.tx] %-12s> <op %-9s> <data>`` where data is the
    request payload with NULs shown as spaces.
    """
    lines = []
    for e in entries:
        if e.op in ("read", "directory", "getperms") and not read_ops:
            continue
        if e.op in ("t start", "t end") and not transaction_ops:
            continue
        if e.op in ("introduce", "release", "getdomain", "is introduced", "resume") and not special_ops:
            continue
        if e.op == "error" and e.path.startswith("ENOENT") and not read_ops:
            continue
        if iso_time:
            t = time.gmtime(e.time)
            stamp = time.strftime("%Y%m%dT%H:%M:%S", t) + ".%03dZ" % int((e.time % 1) * 1000)
        else:
            stamp = "%.3f" % e.time
        who = e.label if not e.tx else f"{e.label}.{e.tx}"
        if e.op == "write":
            data = f"{e.path} {e.value}"
        elif e.op in ("commit", "conflict", "newconn", "endconn"):
            data = e.path
        else:
            data = f"{e.path} " + (f"{e.value} " if e.value else "")
        lines.append("[%s]  %-12s %-9s %s" % (stamp, who, e.op, data))
    return "".join(line + "\n" for line in lines)


class _View:
    """The tree as one operation sees it: live, or a transaction's snapshot."""

    def __init__(self, store: "Store", tx: Transaction | None):
        self.store = store
        self.tx = tx
        self.nodes = tx.nodes if tx is not None else store._nodes

    def get(self, path: str) -> Node | None:
        node = self.nodes.get(path)
        tx = self.tx
        if tx is not None and path not in tx.accessed:
            tx.accessed[path] = node.gen if node is not None else None
        return node

    def put(self, path: str, node: Node) -> None:
        self.get(path)
        if self.tx is not None:
            self.tx.modified[path] = None
        else:
            node.gen = self.store._next_gen()
        self.nodes[path] = node

    def delete(self, path: str) -> None:
        self.get(path)
        if self.tx is not None:
            self.tx.modified[path] = None
        self.nodes.pop(path, None)


class Store:
    """The xenstore database (see module docstring and docs/xensim.md)."""

    def __init__(self, faults=None, check_domains: bool = False, clock: Callable[[], float] = time.time,
                 flavour: str = "oxenstored"):
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, not {flavour!r}")
        # Which daemon to answer as where C xenstored and oxenstored differ.
        self.flavour = flavour
        self.faults = faults
        # C xenstored ignores permission entries naming domains that do not
        # exist, and refuses an owner that does not exist (ENOENT). The
        # simulator knows a domain once introduced; off unless asked for, so
        # a bare Store accepts any domid.
        self.check_domains = check_domains
        self.clock = clock
        self._gen = 0
        root_perms = (("n", 0),)
        self._nodes: dict[str, Node] = {}
        self._nodes["/"] = Node(b"", root_perms, ("tool",), self._next_gen())
        self._nodes["/tool"] = Node(b"", root_perms, ("xenstored",), self._next_gen())
        self._nodes["/tool/xenstored"] = Node(b"", root_perms, (), self._next_gen())
        self._conns: list[Conn] = []
        # domid -> (mfn, port) it was introduced with. Both daemons know dom0
        # from their start (C dom0_init, oxenstored Domains.create0).
        self._introduced: dict[int, tuple[int, int]] = {0: DOM0_INTRODUCTION}
        self._targets: dict[int, int] = {}
        self._special_perms = {name: (("n", 0),) for name in SPECIAL_WATCHES}
        self.access_log: list[LogEntry] = []
        self.log_enabled = True

    # ------------------------------------------------------------------ helpers

    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    def attach(self, conn: Conn) -> None:
        """Register a connection (done implicitly by its first operation)."""
        if conn not in self._conns:
            self._conns.append(conn)

    def detach(self, conn: Conn) -> None:
        """Forget a closed connection: its watches and open transactions go."""
        conn.closed = True
        conn.watches.clear()
        conn.transactions.clear()
        if conn in self._conns:
            self._conns.remove(conn)

    @property
    def connections(self) -> list[Conn]:
        return list(self._conns)

    def _log(self, conn: Conn | None, tx: int, op: str, path: str, value: str = "") -> None:
        if conn is not None and self.log_enabled:
            self.access_log.append(LogEntry(self.clock(), conn.label, tx, op, path, value))

    def _begin(self, conn: Conn, wire_op: str, log_op: str | None, tx: int, path: str, value: str = "",
               req_len: int = 0) -> Transaction | None:
        """Common start of every client operation: accounting, log, tx lookup."""
        if conn not in self._conns:
            self.attach(conn)
        conn.stats.ops[wire_op] += 1
        conn.stats.requests += 1
        if conn.count_bytes:
            conn.stats.bytes_in += 16 + req_len
        if log_op is not None:
            self._log(conn, tx, log_op, path, value)
        if self.faults is not None and getattr(conn, "in_process", False):
            cpath = self.canonical(conn, path) if path and not path.startswith("@") else path
            rule = self.faults.match("xenstore.kernel", op=wire_op, path=cpath, domid=conn.domid,
                                     label=conn.label, tx=tx)
            if rule is not None and rule.action == "error":
                raise XsError(rule.params.get("errno", "EIO"), "injected fault")
        if not tx:
            return None
        t = conn.transactions.get(tx)
        if t is None:
            raise XsError("ENOENT", f"no transaction {tx}")
        return t

    def _reply(self, conn: Conn, n: int) -> None:
        if conn.count_bytes:
            conn.stats.bytes_out += 16 + n

    def _op(self, conn, wire_op, log_op, tx, path, value="", req_len=0, fn=None):
        try:
            t = self._begin(conn, wire_op, log_op, tx, path, value, req_len)
            return fn(t)
        except XsError as e:
            self._log(conn, tx, "error", e.name)
            self._reply(conn, len(e.name) + 1)
            raise

    def domain_exists(self, domid: int) -> bool:
        return not self.check_domains or domid == 0 or domid in self._introduced

    def _perm_for(self, conn: Conn, perms: tuple) -> int:
        """xenstored perm_for_conn: privileged and owners get everything."""
        if conn is None or conn.privileged:
            return PERM_ALL
        target = self._targets.get(conn.domid)
        owner = perms[0][1]
        if owner == conn.domid or (target is not None and owner == target):
            return PERM_ALL
        for letter, domid in perms[1:]:
            if not self.domain_exists(domid):
                continue
            if domid == conn.domid or (target is not None and domid == target):
                return _LETTER_BITS[letter]
        return _LETTER_BITS[perms[0][0]]

    def canonical(self, conn: Conn | None, path: str) -> str:
        """Absolute form of ``path``; relative paths are under the conn's domain."""
        if path.startswith("/") or path.startswith("@"):
            return path
        domid = conn.domid if conn is not None else 0
        return f"/local/domain/{domid}/{path}"

    def _valid(self, conn, path: str) -> str:
        name = self.canonical(conn, path)
        if not is_valid_nodename(name):
            raise XsError("EINVAL", f"invalid path {path!r}")
        return name

    def _get_node(self, view: _View, conn: Conn, name: str, perm: int) -> Node:
        """xenstored get_node: the node if ``perm`` is granted, else the errno
        a client may see (ENOENT only when the nearest ancestor grants perm)."""
        node = view.get(name)
        if node is not None:
            if (self._perm_for(conn, node.perms) & perm) == perm:
                return node
            err = "EACCES"
        else:
            err = "ENOENT"
        parent_perm = PERM_NONE
        p = name
        while p != "/":
            p = parent_of(p)
            pn = view.get(p)
            if pn is not None:
                parent_perm = self._perm_for(conn, pn.perms)
                break
        raise XsError(err if parent_perm & perm else "EACCES", name)

    def _fire(self, view: _View, name: str, exact: bool, perms: tuple = ()) -> None:
        if view.tx is not None:
            view.tx.events.append((name, exact, perms))
        else:
            self._dispatch(name, exact, perms)

    def _watch_permitted(self, conn: Conn, name: str, perms: tuple) -> bool:
        """xenstored watch_permitted: the node (old perms included) or its
        parent must be readable by the watcher."""
        for p in perms:
            if self._perm_for(conn, p) & PERM_READ:
                return True
        node = self._nodes.get(name)
        if node is None:
            return False
        if self._perm_for(conn, node.perms) & PERM_READ:
            return True
        parent = self._nodes.get(parent_of(name))
        return parent is not None and bool(self._perm_for(conn, parent.perms) & PERM_READ)

    def _dispatch(self, name: str, exact: bool, perms: tuple = ()) -> None:
        special = name.startswith("@")
        for conn in list(self._conns):
            if conn.closed or not conn.watches:
                continue
            if special:
                if not self._perm_for(conn, self._special_perms.get(name, (("n", 0),))) & PERM_READ:
                    continue
            elif not self._watch_permitted(conn, name, perms):
                continue
            for w in list(conn.watches):
                if (w.path == name) if exact else _is_child(name, w.path):
                    self._send_event(conn, w, w.event_path(name))

    def _send_event(self, conn: Conn, w: Watch, path: str, initial: bool = False) -> None:
        conn.stats.events += 1
        if conn.count_bytes:
            conn.stats.bytes_out += 18 + len(path.encode("utf-8", "surrogateescape")) \
                + len(w.token.encode("utf-8", "surrogateescape"))
        self._log(conn, 0, "w event", path, w.token)
        if initial:
            conn.deliver_initial_event(path, w.token)
        else:
            conn.deliver_event(path, w.token)

    def _create(self, view: _View, conn: Conn | None, name: str, value: bytes) -> Node:
        """xenstored construct_node: create ``name`` and missing ancestors,
        each inheriting its parent's perms; unprivileged creators own them.
        Every record is checked (C's quota) before anything changes."""
        missing = []
        p = name
        while True:
            missing.append(p)
            p = parent_of(p)
            parent = view.get(p)
            if parent is not None:
                break
        perms = parent.perms
        if conn is not None and not conn.privileged:
            perms = ((perms[0][0], conn.domid),) + perms[1:]
        plan = []
        base = missing[-1].rsplit("/", 1)[1]
        if base not in parent.children:
            plan.append((p, parent.replace(children=tuple(sorted(parent.children + (base,))))))
        for i, path in enumerate(reversed(missing)):
            below = missing[-2 - i].rsplit("/", 1)[1] if path != name else None
            plan.append((path, Node(value if path == name else b"", perms, (below,) if below else ())))
        for _path, node in reversed(plan):       # C writes bottom up
            self._check_record(view, conn, node)
        for path, node in plan:
            view.put(path, node)
        return plan[-1][1]

    def _check_record(self, view: _View, conn: Conn | None, node: Node) -> None:
        """C xenstored write_node_raw's quota: an unprivileged connection may
        not store a record of QUOTA_MAX_ENTRY_SIZE bytes or more. In a
        transaction the failure also dooms the commit (fail_transaction)."""
        if self.flavour != "c" or conn is None or conn.privileged:
            return
        if c_record_size(node) >= QUOTA_MAX_ENTRY_SIZE:
            if view.tx is not None:
                view.tx.failed = True
            raise XsError("ENOSPC", "node record too large")

    def _implicit_parents(self, view: _View, conn: Conn, name: str) -> None:
        """oxenstored create_implicit_path: the missing parents of ``name``
        are made (no watch fires) before the write itself is checked, so
        they stay when it is refused."""
        parent = parent_of(name)
        if name == "/" or view.get(parent) is not None:
            return
        try:
            self._get_node(view, conn, parent, PERM_WRITE)
        except XsError as e:
            if e.name != "ENOENT":
                raise
            self._create(view, conn, parent, b"")

    # --------------------------------------------------------------- operations

    def read(self, conn: Conn, path: str, tx: int = 0) -> bytes:
        def fn(t):
            node = self._get_node(_View(self, t), conn, self._valid(conn, path), PERM_READ)
            self._reply(conn, len(node.value))
            return node.value
        return self._op(conn, "READ", "read", tx, path, req_len=len(path) + 1, fn=fn)

    def write(self, conn: Conn, path: str, value: bytes, tx: int = 0) -> None:
        if isinstance(value, str):
            value = value.encode()

        def fn(t):
            view = _View(self, t)
            name = self._valid(conn, path)
            if self.flavour == "oxenstored" and len(value) > QUOTA_MAX_ENTRY_SIZE:
                # Quota.check: the value only, for dom0 too, before the
                # target's permissions are looked at.
                self._implicit_parents(view, conn, name)
                raise XsError("E2BIG", "value too large")
            try:
                node = self._get_node(view, conn, name, PERM_WRITE)
            except XsError as e:
                if e.name != "ENOENT":
                    raise
                self._create(view, conn, name, value)
            else:
                node = node.replace(value=value)
                self._check_record(view, conn, node)
                view.put(name, node)
            self._fire(view, name, False)
            self._reply(conn, 3)
        return self._op(conn, "WRITE", "write", tx, path, value.decode("utf-8", "replace"),
                        req_len=len(path) + 1 + len(value), fn=fn)

    def mkdir(self, conn: Conn, path: str, tx: int = 0) -> None:
        def fn(t):
            view = _View(self, t)
            name = self._valid(conn, path)
            try:
                self._get_node(view, conn, name, PERM_WRITE)
            except XsError as e:
                if e.name != "ENOENT":
                    raise
                self._create(view, conn, name, b"")
                self._fire(view, name, False)
            self._reply(conn, 3)
        return self._op(conn, "MKDIR", "mkdir", tx, path, req_len=len(path) + 1, fn=fn)

    def rm(self, conn: Conn, path: str, tx: int = 0) -> None:
        def fn(t):
            view = _View(self, t)
            name = self._valid(conn, path)
            try:
                node = self._get_node(view, conn, name, PERM_WRITE)
            except XsError as e:
                # A missing node is fine if its parent exists.
                if e.name == "ENOENT" and name != "/" and view.get(parent_of(name)) is not None:
                    self._reply(conn, 3)
                    return
                raise
            if name == "/":
                raise XsError("EINVAL", "cannot remove /")
            self._rm_tree(view, name, node, view.get(parent_of(name)).perms, root=name)
            parent = view.get(parent_of(name))
            base = name.rsplit("/", 1)[1]
            view.put(parent_of(name), parent.replace(children=tuple(c for c in parent.children if c != base)))
            self._reply(conn, 3)
        return self._op(conn, "RM", "rm", tx, path, req_len=len(path) + 1, fn=fn)

    def _rm_tree(self, view: _View, name: str, node: Node, parent_perms: tuple, root: str) -> None:
        # Post-order as xenstored's walk: children are removed (and their
        # exact watches fired, with their perms) before the node itself.
        for c in node.children:
            cpath = _child(name, c)
            cnode = view.get(cpath)
            if cnode is not None:
                self._rm_tree(view, cpath, cnode, node.perms, root)
        view.delete(name)
        self._fire(view, name, name != root, (node.perms, parent_perms))

    def directory(self, conn: Conn, path: str, tx: int = 0) -> list[str]:
        def fn(t):
            node = self._get_node(_View(self, t), conn, self._valid(conn, path), PERM_READ)
            self._reply(conn, sum(len(c) + 1 for c in node.children))
            return list(node.children)
        return self._op(conn, "DIRECTORY", "directory", tx, path, req_len=len(path) + 1, fn=fn)

    def directory_part(self, conn: Conn, path: str, offset: int, tx: int = 0) -> bytes:
        """XS_DIRECTORY_PART reply payload: "<gen>\\0" then as many
        NUL-terminated children as fit from byte ``offset`` of the child
        list, and one more NUL once the list is complete."""
        def fn(t):
            node = self._get_node(_View(self, t), conn, self._valid(conn, path), PERM_READ)
            children = b"".join(c.encode() + b"\0" for c in node.children)
            gen = str(node.gen).encode() + b"\0"
            if offset >= len(children):
                data = gen + b"\0"
            else:
                maxlen = XENSTORE_PAYLOAD_MAX - len(gen) - 1
                end = offset
                while end < len(children):
                    nxt = children.index(b"\0", end) + 1
                    if nxt - offset > maxlen:
                        break
                    end = nxt
                data = gen + children[offset:end] + (b"\0" if end == len(children) else b"")
            self._reply(conn, len(data))
            return data
        return self._op(conn, "DIRECTORY_PART", "directory", tx, path, req_len=len(path) + 8, fn=fn)

    def get_perms(self, conn: Conn, path: str, tx: int = 0) -> list[str]:
        def fn(t):
            node = self._get_node(_View(self, t), conn, self._valid(conn, path), PERM_READ)
            out = perms_to_strings(node.perms, self.flavour)
            self._reply(conn, sum(len(s) + 1 for s in out))
            return out
        return self._op(conn, "GET_PERMS", "getperms", tx, path, req_len=len(path) + 1, fn=fn)

    def set_perms(self, conn: Conn, path: str, perms: list[str], tx: int = 0) -> None:
        perms = list(perms)

        def fn(t):
            parsed = parse_perms(perms, self.flavour)
            if not conn.privileged and len(parsed) > QUOTA_NB_PERMS_PER_NODE:
                raise XsError("ENOSPC", "too many permissions")
            if not self.domain_exists(parsed[0][1]):
                raise XsError("ENOENT", f"owner domain {parsed[0][1]} does not exist")
            if path.startswith("@"):
                if path not in self._special_perms:
                    # C: set_perms_special knows no such name. oxenstored
                    # keeps the two as nodes of the tree: no such node.
                    raise XsError("EINVAL" if self.flavour == "c" else "ENOENT", path)
                if not conn.privileged:
                    raise XsError("EACCES", path)
                self._special_perms[path] = parsed
                self._reply(conn, 3)
                return
            view = _View(self, t)
            name = self._valid(conn, path)
            node = self._get_node(view, conn, name, PERM_WRITE | PERM_OWNER)
            # Unprivileged domains may not give their nodes away.
            if not conn.privileged and parsed[0][1] != node.perms[0][1]:
                raise XsError("EPERM", "cannot change owner")
            new = node.replace(perms=parsed)
            self._check_record(view, conn, new)
            view.put(name, new)
            self._fire(view, name, False, (node.perms,))
            self._reply(conn, 3)
        return self._op(conn, "SET_PERMS", "setperms", tx, path, " ".join(perms),
                        req_len=len(path) + 1 + sum(len(p) + 1 for p in perms), fn=fn)

    def transaction_start(self, conn: Conn, tx: int = 0) -> int:
        def fn(t):
            if t is not None:
                raise XsError("EBUSY", "nested transaction")
            if not conn.privileged and len(conn.transactions) > QUOTA_MAX_TRANSACTION:
                raise XsError("ENOSPC", "too many transactions")
            tid = conn.next_tx_id
            while tid == 0 or tid in conn.transactions:
                tid = (tid + 1) & 0xFFFFFFFF
            conn.next_tx_id = (tid + 1) & 0xFFFFFFFF
            conn.transactions[tid] = Transaction(tid, conn, dict(self._nodes))
            self._log(conn, tid, "t start", "")
            self._reply(conn, len(str(tid)) + 1)
            return tid
        return self._op(conn, "TRANSACTION_START", None, tx, "", req_len=1, fn=fn)

    def transaction_end(self, conn: Conn, tx: int, commit: bool) -> None:
        def fn(_t):
            if not tx:
                raise XsError("ENOENT", "not in a transaction")
            t = conn.transactions.pop(tx)
            if not commit:
                self._reply(conn, 3)
                return
            if t.failed:
                raise XsError("ENOMEM", "transaction failed")
            rule = None
            if self.faults is not None:
                rule = self.faults.match("xenstore.commit", domid=conn.domid, label=conn.label, tx=tx,
                                         paths=list(t.modified))
            if rule is not None and rule.action in ("eagain", "error"):
                name = "EAGAIN" if rule.action == "eagain" else rule.params.get("errno", "EIO")
                self._log(conn, tx, "conflict", "")
                raise XsError(name, "injected fault")
            for path, gen in t.accessed.items():
                cur = self._nodes.get(path)
                if (cur.gen if cur is not None else None) != gen:
                    self._log(conn, tx, "conflict", "")
                    raise XsError("EAGAIN", f"{path} changed")
            for path in t.modified:
                node = t.nodes.get(path)
                if node is None:
                    self._nodes.pop(path, None)
                else:
                    self._nodes[path] = node.replace(gen=self._next_gen())
            self._log(conn, tx, "commit", "")
            for name, exact, perms in t.events:
                self._dispatch(name, exact, perms)
            self._reply(conn, 3)
        return self._op(conn, "TRANSACTION_END", "t end", tx, "", "T" if commit else "F", req_len=2, fn=fn)

    def watch(self, conn: Conn, path: str, token: str) -> None:
        def fn(_t):
            if path.startswith("@"):
                name, prefix = path, None
                if len(path) > XENSTORE_REL_PATH_MAX:
                    raise XsError("EINVAL", "watch path too long")
            else:
                name = self._valid(conn, path)
                prefix = None if path.startswith("/") else f"/local/domain/{conn.domid}"
            for w in conn.watches:
                if w.path == name and w.token == token:
                    raise XsError("EEXIST", f"watch {path} {token}")
            if not conn.privileged and len(conn.watches) > QUOTA_NB_WATCH_PER_DOMAIN:
                raise XsError("E2BIG", "too many watches")
            w = Watch(name, token, prefix)
            conn.watches.append(w)
            self._reply(conn, 3)
            # xenstored fires once up front, after the ack, without a
            # permission check ("simplifies clients and restart").
            self._send_event(conn, w, w.event_path(name), initial=True)
        return self._op(conn, "WATCH", "watch", 0, path, token, req_len=len(path) + len(token) + 2, fn=fn)

    def unwatch(self, conn: Conn, path: str, token: str) -> None:
        def fn(_t):
            name = self.canonical(conn, path)
            for w in conn.watches:
                if w.path == name and w.token == token:
                    conn.watches.remove(w)
                    self._reply(conn, 3)
                    return
            raise XsError("ENOENT", f"no watch {path} {token}")
        return self._op(conn, "UNWATCH", "unwatch", 0, path, token, req_len=len(path) + len(token) + 2, fn=fn)

    def reset_watches(self, conn: Conn) -> None:
        def fn(_t):
            conn.watches.clear()
            conn.transactions.clear()
            self._reply(conn, 3)
        return self._op(conn, "RESET_WATCHES", "reset watches", 0, "", req_len=1, fn=fn)

    def get_domain_path(self, domid, conn: Conn | None = None) -> str:
        """/local/domain/<domid> (no existence check, as xenstored). A
        string ``domid`` (the request's argument) is read as the daemon
        reads it: oxenstored takes the first run of digits ("-1" is 1), C
        ``atoi`` prints ``%u`` ("-1" is 4294967295)."""
        def path_of(d):
            if isinstance(d, str):
                n = ocaml_c_int_of_string(d) if self.flavour == "oxenstored" else c_atoi(d)
            else:
                n = int(d)
            return f"/local/domain/{ocaml_unsigned(n) if self.flavour == 'oxenstored' else c_unsigned(n)}"
        if conn is None:
            return path_of(domid)
        return self._op(conn, "GET_DOMAIN_PATH", "getdomain", 0, str(domid), req_len=len(str(domid)) + 1,
                        fn=lambda _t: path_of(domid))

    # ------------------------------------------------- domains (privileged ops)

    def _require_priv(self, conn: Conn | None) -> None:
        if conn is not None and not conn.privileged:
            raise XsError("EACCES", "privileged operation")

    def introduce(self, conn: Conn | None, domid: int, mfn: int = 0, port: int = 1) -> None:
        """XS_INTRODUCE; fires @introduceDomain the first time only (dom0 is
        introduced from the start). Again: C rebinds the event channel and
        answers OK; oxenstored answers EINVAL unless mfn and port are the
        ones it has (and EIO when only the port differs: rebinding to a port
        the domain did not offer fails)."""
        def fn(_t):
            self._require_priv(conn)
            d, mfn_, port_ = int(domid), int(mfn), int(port)
            known = self._introduced.get(d)
            if known is not None and self.flavour == "oxenstored":
                if known[0] != mfn_:
                    raise XsError("EINVAL", f"domain {d} has another mfn")
                if known[1] != port_:
                    raise XsError("EIO", f"cannot bind port {port_} of domain {d}")
                return
            if port_ <= 0:
                raise XsError("EINVAL", "bad event channel port")
            if known is None:
                self._introduced[d] = (mfn_, port_)
                self._dispatch("@introduceDomain", True)
            else:
                self._introduced[d] = (known[0], port_)     # C: the channel is bound again
        if conn is None:
            return fn(None)
        return self._op(conn, "INTRODUCE", "introduce", 0, f"{domid} {mfn} {port}", req_len=12, fn=fn)

    def release(self, conn: Conn | None, domid: int) -> None:
        """XS_RELEASE; fires @releaseDomain. Domain 0 is EINVAL, unknown ENOENT."""
        def fn(_t):
            self._require_priv(conn)
            if not int(domid):
                raise XsError("EINVAL", "cannot release domain 0")
            if domid not in self._introduced:
                raise XsError("ENOENT", f"domain {domid} not introduced")
            del self._introduced[int(domid)]
            self._targets.pop(int(domid), None)
            self._dispatch("@releaseDomain", True)
        if conn is None:
            return fn(None)
        return self._op(conn, "RELEASE", "release", 0, str(domid), req_len=4, fn=fn)

    def is_domain_introduced(self, conn: Conn | None, domid: int) -> bool:
        def fn(_t):
            self._require_priv(conn)
            return int(domid) == DOMID_SELF or int(domid) in self._introduced
        if conn is None:
            return fn(None)
        return self._op(conn, "IS_DOMAIN_INTRODUCED", "is introduced", 0, str(domid), req_len=4, fn=fn)

    def set_target(self, conn: Conn | None, domid: int, target: int) -> None:
        """XS_SET_TARGET: connections of ``domid`` (a stub domain) get the
        permissions of ``target`` as well. Both must be introduced."""
        def fn(_t):
            self._require_priv(conn)
            for d in (domid, target):
                if int(d) not in self._introduced:
                    raise XsError("ENOENT", f"domain {d} not introduced")
            self._targets[int(domid)] = int(target)
        if conn is None:
            return fn(None)
        return self._op(conn, "SET_TARGET", "settarget", 0, f"{domid} {target}", req_len=6, fn=fn)

    @property
    def introduced(self) -> set[int]:
        return set(self._introduced)

    # ---------------------------------------- simulator-only (no checks, no log)

    def peek(self, path: str) -> bytes | None:
        node = self._nodes.get(path)
        return None if node is None else node.value

    def ls(self, path: str) -> list[str] | None:
        node = self._nodes.get(path)
        return None if node is None else list(node.children)

    def perms(self, path: str) -> list[str] | None:
        node = self._nodes.get(path)
        return None if node is None else perms_to_strings(node.perms, self.flavour)

    def seed(self, path: str, value: bytes = b"", perms: list[str] | None = None) -> None:
        """Create or overwrite ``path`` as a privileged writer would (missing
        parents inherit perms); watches fire, nothing is logged."""
        if isinstance(value, str):
            value = value.encode()
        if not is_valid_nodename(path):
            raise XsError("EINVAL", path)
        view = _View(self, None)
        node = view.get(path)
        if node is None:
            node = self._create(view, None, path, value)
        if perms is not None or node.value != value:
            view.put(path, node.replace(value=value, perms=parse_perms(perms) if perms else node.perms))
        self._dispatch(path, False)

    def purge(self, path: str) -> None:
        """Remove ``path`` and its subtree as a privileged client would."""
        node = self._nodes.get(path)
        if node is None or path == "/":
            return
        view = _View(self, None)
        self._rm_tree(view, path, node, self._nodes[parent_of(path)].perms, root=path)
        parent = self._nodes[parent_of(path)]
        base = path.rsplit("/", 1)[1]
        view.put(parent_of(path), parent.replace(children=tuple(c for c in parent.children if c != base)))

    def dump(self, path: str = "/") -> list[tuple[str, bytes, list[str]]]:
        """(path, value, perms) of ``path`` and every descendant, depth first."""
        out = []

        def walk(p):
            node = self._nodes.get(p)
            if node is None:
                return
            out.append((p, node.value, perms_to_strings(node.perms, self.flavour)))
            for c in node.children:
                walk(_child(p, c))
        walk(path)
        return out

    def generation(self, path: str) -> int | None:
        node = self._nodes.get(path)
        return None if node is None else node.gen

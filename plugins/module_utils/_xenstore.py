# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""xenstore access with deadlines, pipelining, transactions and watch waits.

pyxs gives us the transport (Unix socket or xenbus device, with libxenstore's
path defaults), the op numbers and path checks. Its Client is not used:
it waits for replies without any timeout (a xenstored that dies mid-request
blocks the caller forever), allows one outstanding request per thread, and
its Monitor can spin. Here every request is written to the transport and its
reply read back with ``select`` bounded by the caller's deadline, several
requests can be in flight at once (xenstored answers them in order, matched
by request id), and watch events that arrive meanwhile are queued.

Values are untrusted text (guests write their own nodes): bytes that are not
UTF-8 are decoded with backslash escapes and recorded, never raised. A
listing over 4096 bytes is read in parts (XS_DIRECTORY_PART), as libxenstore
does. A connection lost mid-request says which request had no reply yet, and
``reconnect`` opens a new one.
"""

from __future__ import annotations

import os
import select
import struct
import time
import traceback
from collections import deque

from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline
from ansible_collections.xen.pci.plugins.module_utils._errors import DeadlineExceeded, XenstoreConnectionError, XenstoreError

try:
    from pyxs._internal import Op
    from pyxs.connection import UnixSocketConnection, XenBusConnection
    from pyxs.exceptions import PyXSError
    from pyxs.helpers import check_path, check_watch_path
    HAS_PYXS = True
    PYXS_IMPORT_ERROR = None
except ImportError:  # reported by the modules with missing_required_lib
    HAS_PYXS = False
    PYXS_IMPORT_ERROR = traceback.format_exc()

HEADER = struct.Struct("<IIII")
PAYLOAD_MAX = 4096
OP_ERROR = 16
OP_WATCH_EVENT = 15
DEFAULT_SOCKET = "/var/run/xenstored/socket"
# Wire ops that pyxs's Op may not know (xs_wire.h numbers).
RAW_OPS = {"DIRECTORY_PART": 22}

# Values come from guests too (a guest writes its own frontend nodes), so
# they are untrusted text: at most this many undecodable nodes are recorded
# per connection, each with at most this many bytes of its raw value.
UNDECODABLE_KEEP = 32
UNDECODABLE_RAW = 48

# Pauses between attempts to reconnect while xenstored is not accepting
# (restarting): short at first, growing to at most the second.
RECONNECT_PAUSE = (0.05, 1.0)

# How often a listing read in parts (DIRECTORY_PART) is started again
# because the directory changed between parts.
DIRECTORY_PART_RESTARTS = 8

# Budget of clean-up requests (aborting a transaction, removing watches)
# made after the caller's deadline may be spent.
CLEANUP_GRACE = 2.0

# How often a transaction is retried when xenstored answers EAGAIN (another
# writer touched what we read). libxl retries forever; we stop and say so.
TRANSACTION_RETRIES = 32


def _b(value):
    return value if isinstance(value, bytes) else str(value).encode()


def decode_text(raw):
    """xenstore bytes as str: valid UTF-8 unchanged, other bytes as ``\\xNN``.

    Never raises: what a guest wrote must not stop us reading the host.
    """
    return raw.decode("utf-8", "backslashreplace")


def _is_utf8(raw):
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _request_words(op_name, path):
    return ("%s %s" % (op_name, path)) if path else op_name


def _raw_repr(raw):
    if len(raw) <= UNDECODABLE_RAW:
        return repr(raw)
    return "%r... (%d bytes)" % (raw[:UNDECODABLE_RAW], len(raw))


class Stats:
    """What this connection cost: requests, round trips, writes."""

    WRITE_OPS = ("WRITE", "MKDIR", "RM", "SET_PERMS")

    def __init__(self):
        self.requests = 0
        self.round_trips = 0
        self.reconnects = 0
        self.by_op = {}

    @property
    def writes(self):
        return sum(self.by_op.get(op, 0) for op in self.WRITE_OPS)

    def as_dict(self):
        return {"requests": self.requests, "round_trips": self.round_trips, "writes": self.writes,
                "reconnects": self.reconnects, "by_op": dict(self.by_op)}


class XenStore:
    """One connection to xenstored, every call bounded by a deadline.

    ``path``: Unix socket of xenstored (default: ``XENSTORED_PATH`` or
    ``/var/run/xenstored/socket``); ``xenbus``: use the xenbus device instead
    (a domU or a dom0 without the socket). ``timeout``: default budget in
    seconds of calls made without an explicit deadline.
    """

    def __init__(self, path=None, xenbus=False, timeout=10.0):
        if not HAS_PYXS:
            raise XenstoreConnectionError("the pyxs Python library is required to talk to xenstored")
        self.timeout = timeout
        self.stats = Stats()
        # Nodes whose bytes are not UTF-8, for the caller to report:
        # [{"op", "path", "raw"}], one per path, at most UNDECODABLE_KEEP;
        # undecodable_dropped counts the records not kept.
        self.undecodable = []
        self.undecodable_dropped = 0
        # Why the connection was last lost (kept after reconnect() for the
        # report), None if it never was.
        self.lost = None
        self._events = deque()
        self._pending = deque()      # (rq, op, path) sent and not yet answered
        self._rbuf = b""
        self._next_rq = 1
        self._next_token = 1
        self._xenbus = xenbus
        self._conn = None
        self._fd = None
        self._why_closed = None      # set when we lost it, not when closed on purpose
        self.where = self._transport(path).path
        try:
            self._open()
        except PyXSError as exc:
            raise XenstoreConnectionError("cannot connect to xenstored at %s: %s" % (self.where, exc), path=self.where) from exc

    # -- lifecycle ---------------------------------------------------------

    def _transport(self, path):
        if self._xenbus:
            return XenBusConnection(path)
        return UnixSocketConnection(path or os.environ.get("XENSTORED_PATH") or DEFAULT_SOCKET)

    def _open(self):
        conn = self._transport(self.where)
        conn.connect()
        self._conn = conn
        self._fd = conn.fileno()
        self._rbuf = b""
        self._pending.clear()
        self._why_closed = None

    @property
    def connected(self):
        """True while the connection is open (False once lost or closed)."""
        return self._conn is not None

    def close(self):
        self._shut()
        self._why_closed = None

    def _shut(self):
        self._pending.clear()
        self._rbuf = b""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
                self._fd = None

    def _drop(self, why):
        """Close a connection we can no longer use; ``lost`` says why."""
        self.lost = self._why_closed = why
        self._shut()

    def reconnect(self, deadline=None):
        """Open a new connection to the same socket or xenbus device.

        For after the connection was lost (``lost`` says why): what is left
        of the old one is closed, its queued watch events dropped (its
        watches and transactions died with it). While xenstored does not
        accept (restarting), tries again after a short, growing pause until
        the deadline. Returns the number of attempts; ``stats`` carry on.
        """
        deadline = self._deadline(deadline, "reconnecting to xenstored")
        self._shut()
        self._events.clear()
        pause, attempts = RECONNECT_PAUSE[0], 0
        while True:
            attempts += 1
            try:
                self._open()
            except PyXSError as exc:
                remaining = deadline.remaining()
                if remaining <= 0:
                    raise XenstoreConnectionError(
                        "cannot reconnect to xenstored at %s: %d attempts in %.1f s, the last: %s"
                        % (self.where, attempts, deadline.elapsed(), exc),
                        path=self.where, attempts=attempts, waited=round(deadline.elapsed(), 3), lost=self.lost) from exc
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, RECONNECT_PAUSE[1])
                continue
            self.stats.reconnects += 1
            return attempts

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _deadline(self, deadline, what):
        return deadline if deadline is not None else Deadline(self.timeout, what)

    # -- wire --------------------------------------------------------------

    def _waiting(self):
        """Details and words for errors: which request still awaits its reply."""
        if not self._pending:
            return {"pending": False}, "no request was waiting for a reply"
        _rq, op, path = self._pending[0]
        details = {"pending": True, "op": op, "node": path, "unanswered": len(self._pending)}
        words = "no reply yet to " + _request_words(op, path)
        if len(self._pending) > 1:
            words += " (%d requests unanswered)" % len(self._pending)
        return details, words

    def _broken(self, why):
        """Close after a wire failure; the error says what was left unanswered."""
        details, words = self._waiting()
        where = self.where
        self._drop("%s (%s)" % (why, words))
        return XenstoreConnectionError("connection to xenstored at %s lost: %s; %s" % (where, why, words),
                                       path=where, **details)

    def _closed_error(self):
        if self._why_closed:
            msg = "connection to xenstored at %s was lost (%s); reconnect() to go on" % (self.where, self._why_closed)
        else:
            msg = "connection to xenstored at %s is closed" % self.where
        return XenstoreConnectionError(msg, path=self.where, pending=False, lost=self._why_closed)

    def _encode(self, op_name, payload, tx):
        """One request on the wire; nothing is sent yet."""
        if len(payload) > PAYLOAD_MAX:
            raise XenstoreError("xenstore %s request of %d bytes is over the %d-byte limit" % (op_name, len(payload), PAYLOAD_MAX),
                                "E2BIG", op=op_name)
        rq = self._next_rq
        self._next_rq = (self._next_rq + 1) & 0x7FFFFFFF or 1
        op = getattr(Op, op_name, None) if op_name not in RAW_OPS else None
        op = RAW_OPS[op_name] if op is None else op
        return rq, HEADER.pack(op, rq, tx, len(payload)) + payload

    def _send_all(self, batch, tx, deadline):
        """Write every ``(op, path, payload)``; returns [(rq, op, path)].

        Every request is encoded before the first byte is written, so a bad
        one cannot leave others unanswered on the wire.
        """
        if self._conn is None:
            raise self._closed_error()
        if deadline.expired:
            # Nothing sent: the connection stays in step.
            first = _request_words(batch[0][0], batch[0][1]) if batch else "a request"
            raise deadline.exceeded("before sending %s to xenstored" % first, path=self.where, pending=False)
        encoded = [(self._encode(op, payload, tx), op, path) for op, path, payload in batch]
        sent = []
        for (rq, _data), op, path in encoded:
            sent.append((rq, op, path))
            self._pending.append((rq, op, path))
            self.stats.requests += 1
            self.stats.by_op[op] = self.stats.by_op.get(op, 0) + 1
        view = memoryview(b"".join(data for (_rq, data), _op, _path in encoded))
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            raise self._broken(os.strerror(exc.errno)) from exc
        return sent

    def _fill(self, size, deadline, doing):
        """Read until ``size`` bytes are buffered, bounded by the deadline."""
        while len(self._rbuf) < size:
            remaining = deadline.remaining()
            if remaining <= 0:
                details, words = self._waiting()
                if self._pending:
                    # A reply still on its way would put the stream out of
                    # step with our next request: drop the connection.
                    self._drop("a deadline expired with a reply outstanding (%s); dropped so that a late "
                               "reply cannot be taken for the answer to a later request" % words)
                raise deadline.exceeded(doing, path=self.where, **details)
            try:
                ready, _w, _x = select.select([self._fd], [], [], remaining)
            except (OSError, ValueError) as exc:
                raise self._broken(str(exc)) from exc
            if not ready:
                continue
            try:
                chunk = os.read(self._fd, 65536)
            except OSError as exc:
                raise self._broken(os.strerror(exc.errno)) from exc
            if not chunk:
                raise self._broken("xenstored closed the connection")
            self._rbuf += chunk

    def _packet(self, deadline, doing):
        """Next packet off the wire; watch events are queued and give None.

        Nothing is taken from the buffer until the whole packet is there, so
        a deadline that expires mid-packet leaves the stream in step.
        """
        if self._conn is None:
            raise self._closed_error()
        self._fill(HEADER.size, deadline, doing)
        op, rq, _tx, size = HEADER.unpack(self._rbuf[:HEADER.size])
        self._fill(HEADER.size + size, deadline, doing)
        payload = self._rbuf[HEADER.size:HEADER.size + size]
        self._rbuf = self._rbuf[HEADER.size + size:]
        if op == OP_WATCH_EVENT:
            parts = payload.split(b"\0")
            if len(parts) >= 2:
                path, token = decode_text(parts[0]), decode_text(parts[1])
                if not (_is_utf8(parts[0]) and _is_utf8(parts[1])):
                    self._note_undecodable("WATCH_EVENT", path, payload)
                self._events.append((path, token))
            return None
        return op, rq, payload

    def _recv(self, deadline, doing):
        """Next reply packet; watch events met on the way are queued."""
        while True:
            packet = self._packet(deadline, doing)
            if packet is not None:
                return packet

    def _reply(self, rq, op_name, path, deadline):
        op, got_rq, payload = self._recv(deadline, "waiting for xenstored to answer " + _request_words(op_name, path))
        if got_rq != rq:
            raise self._broken("reply out of order (request %d, got %d)" % (rq, got_rq))
        self._pending.popleft()
        if op == OP_ERROR:
            name = payload.rstrip(b"\0").decode(errors="replace")
            return XenstoreError("xenstore %s %s failed: %s" % (op_name, path, name), name, path=path, op=op_name)
        if op_name in self.TEXT_OPS and not _is_utf8(payload):
            # Recorded here, where the path is known: pipelined callers
            # decode with the static decode_reply.
            self._note_undecodable(op_name, path, payload)
        return payload

    TEXT_OPS = ("READ", "DIRECTORY", "DIRECTORY_PART", "GET_PERMS")

    def _note_undecodable(self, op_name, path, raw):
        path = path if isinstance(path, str) else decode_text(_b(path))
        if any(rec["path"] == path for rec in self.undecodable):
            return
        if len(self.undecodable) >= UNDECODABLE_KEEP:
            self.undecodable_dropped += 1
            return
        self.undecodable.append({"op": op_name, "path": path, "raw": _raw_repr(raw)})

    def undecodable_warnings(self):
        """One operator message per recorded node (and one for those not kept)."""
        out = ["xenstore node %s holds bytes that are not UTF-8: %s" % (rec["path"], rec["raw"]) for rec in self.undecodable]
        if self.undecodable_dropped:
            out.append("%d more xenstore reads got bytes that are not UTF-8 (not recorded)" % self.undecodable_dropped)
        return out

    def pipeline(self, requests, tx=0, deadline=None):
        """Send every ``(op, path, payload)`` at once, then read the replies.

        One round trip for the lot. Returns the replies in order; a failed
        request gives its XenstoreError in its place instead of raising.
        """
        deadline = self._deadline(deadline, "xenstore")
        requests = list(requests)
        if not requests:
            return []
        sent = self._send_all(requests, tx, deadline)
        self.stats.round_trips += 1
        replies = [self._reply(rq, op, path, deadline) for rq, op, path in sent]
        for i, ((op, path, payload), reply) in enumerate(zip(requests, replies)):
            if op == "DIRECTORY" and isinstance(reply, XenstoreError) and reply.errno == "E2BIG":
                # Over 4096 bytes of names: read that one in parts, as
                # libxenstore does; the others keep their single round trip.
                replies[i] = self._directory_in_parts(payload.rstrip(b"\0"), path, tx, deadline)
        return replies

    def _directory_in_parts(self, raw_path, path, tx, deadline):
        """A listing too big for one reply, in DIRECTORY's reply format.

        XS_DIRECTORY_PART takes ``path\\0offset\\0`` (a byte offset into the
        NUL-separated child list) and answers the directory's generation
        ``\\0``-terminated, then as many whole names as fit, each
        ``\\0``-terminated, with one more ``\\0`` after the last name. A
        generation that changes between parts means the list moved under
        us: start again, at most DIRECTORY_PART_RESTARTS times.
        """
        restarts = 0
        while True:
            names, gen, offset = [], None, 0
            while True:
                request = ("DIRECTORY_PART", path, raw_path + b"\0" + str(offset).encode() + b"\0")
                reply = self.pipeline([request], tx, deadline)[0]
                if isinstance(reply, XenstoreError):
                    # A daemon without the op says ENOSYS (oxenstored) or
                    # EINVAL to a path it has just listed.
                    if reply.errno == "ENOSYS" or (reply.errno == "EINVAL" and gen is None):
                        return XenstoreError("xenstore DIRECTORY %s failed: the listing is over %d bytes and xenstored does not "
                                             "support DIRECTORY_PART (it answered %s)" % (path, PAYLOAD_MAX, reply.errno),
                                             "E2BIG", path=path, op="DIRECTORY")
                    return reply        # e.g. ENOENT: removed in the meantime
                end = reply.find(b"\0")
                chunk = reply[end + 1:]
                if end <= 0 or not chunk.endswith(b"\0"):
                    return XenstoreError("xenstore DIRECTORY_PART %s: malformed reply %r" % (path, reply[:64]), "EIO",
                                         path=path, op="DIRECTORY_PART")
                if gen is None:
                    gen = reply[:end]
                elif reply[:end] != gen:
                    break
                if chunk == b"\0" or chunk.endswith(b"\0\0"):
                    names.append(chunk[:-1])
                    return b"".join(names)
                names.append(chunk)
                offset += len(chunk)
            restarts += 1
            if restarts > DIRECTORY_PART_RESTARTS:
                return XenstoreError("xenstore DIRECTORY %s failed: the directory changed while it was read in parts, %d times"
                                     % (path, restarts), "EAGAIN", path=path, op="DIRECTORY", attempts=restarts)

    def _one(self, op, path, payload, tx, deadline, allow=()):
        reply = self.pipeline([(op, path, payload)], tx, deadline)[0]
        if isinstance(reply, XenstoreError):
            if reply.errno in allow:
                return None
            raise reply
        return reply

    @staticmethod
    def _path(path):
        raw = _b(path)
        try:
            check_path(raw)
        except (PyXSError, ValueError) as exc:
            raise XenstoreError("invalid xenstore path %r" % path, "EINVAL", path=path) from exc
        return raw

    # -- operations --------------------------------------------------------

    @staticmethod
    def decode_reply(op, reply):
        """A READ value (str) or DIRECTORY listing (list of names) from its payload.

        Never raises on bytes that are not UTF-8 (see ``decode_text``); the
        connection that got the reply has recorded them in ``undecodable``.
        """
        if op == "READ":
            return decode_text(reply)
        return [decode_text(name) for name in reply.split(b"\0") if name]

    def _query_many(self, op, paths, tx, deadline):
        """{path: decoded reply, or None where the node does not exist}, one round trip."""
        paths = list(paths)
        replies = self.pipeline([(op, p, self._path(p) + b"\0") for p in paths], tx, deadline)
        out = {}
        for path, reply in zip(paths, replies):
            if isinstance(reply, XenstoreError):
                if reply.errno != "ENOENT":
                    raise reply
                out[path] = None
            else:
                out[path] = self.decode_reply(op, reply)
        return out

    def read(self, path, tx=0, deadline=None, default=None):
        """Value as str, or ``default`` if the node does not exist."""
        value = self._query_many("READ", [path], tx, deadline)[path]
        return default if value is None else value

    def read_many(self, paths, tx=0, deadline=None):
        """{path: value or None} in one round trip."""
        return self._query_many("READ", paths, tx, deadline)

    def directory(self, path, tx=0, deadline=None):
        """Child names, or None if the node does not exist.

        A listing over 4096 bytes is read in parts (XS_DIRECTORY_PART).
        """
        return self._query_many("DIRECTORY", [path], tx, deadline)[path]

    def directory_many(self, paths, tx=0, deadline=None):
        """{path: child names or None} in one round trip (more for listings over 4096 bytes)."""
        return self._query_many("DIRECTORY", paths, tx, deadline)

    def get_perms(self, path, tx=0, deadline=None):
        reply = self._one("GET_PERMS", path, self._path(path) + b"\0", tx, deadline, allow=("ENOENT",))
        if reply is None:
            return None
        return [decode_text(p) for p in reply.split(b"\0") if p]

    @classmethod
    def read_request(cls, path):
        return ("READ", path, cls._path(path) + b"\0")

    @classmethod
    def directory_request(cls, path):
        return ("DIRECTORY", path, cls._path(path) + b"\0")

    @classmethod
    def write_request(cls, path, value):
        return ("WRITE", path, cls._path(path) + b"\0" + _b(value))

    @classmethod
    def rm_request(cls, path):
        return ("RM", path, cls._path(path) + b"\0")

    @classmethod
    def mkdir_request(cls, path):
        return ("MKDIR", path, cls._path(path) + b"\0")

    @classmethod
    def perms_request(cls, path, perms):
        return ("SET_PERMS", path, cls._path(path) + b"\0" + b"".join(_b(p) + b"\0" for p in perms))

    def write(self, path, value, tx=0, deadline=None):
        self._one(*self.write_request(path, value), tx=tx, deadline=deadline)

    def rm(self, path, tx=0, deadline=None):
        """Remove a subtree; removing a missing node is not an error."""
        self._one(*self.rm_request(path), tx=tx, deadline=deadline, allow=("ENOENT",))

    def mkdir(self, path, tx=0, deadline=None):
        self._one(*self.mkdir_request(path), tx=tx, deadline=deadline)

    def set_perms(self, path, perms, tx=0, deadline=None):
        self._one(*self.perms_request(path, perms), tx=tx, deadline=deadline)

    def apply(self, changes, tx=0, deadline=None):
        """Apply ``Changes`` (writes, removals, mkdirs, perms, in order) in one round trip."""
        requests = []
        for kind, path, arg in changes.items:
            if kind == "write":
                requests.append(self.write_request(path, arg))
            elif kind == "rm":
                requests.append(self.rm_request(path))
            elif kind == "mkdir":
                requests.append(self.mkdir_request(path))
            elif kind == "perms":
                requests.append(self.perms_request(path, arg))
        for (kind, _path, _arg), reply in zip(changes.items, self.pipeline(requests, tx, deadline)):
            # Removing what is already gone is success (xenstored says ENOENT
            # when the parent is missing too).
            if isinstance(reply, XenstoreError) and not (kind == "rm" and reply.errno == "ENOENT"):
                raise reply

    # -- transactions ------------------------------------------------------

    def transaction_start(self, deadline=None):
        return int(self._one("TRANSACTION_START", "", b"\0", 0, deadline).rstrip(b"\0"))

    def transaction_end(self, tx, commit=True, deadline=None):
        self._one("TRANSACTION_END", "", b"T\0" if commit else b"F\0", tx, deadline)

    def transaction(self, body, deadline=None, retries=TRANSACTION_RETRIES, what=None):
        """Run ``body(tx)`` in a transaction, again on EAGAIN, at most ``retries`` times.

        ``body`` reads and writes with ``tx=tx`` and returns a result; it may
        raise to abort (nothing it wrote is committed). ``what`` names the
        work for errors ("attaching 0000:00:10.0 to domu1 (domid 1)"): when
        the retries run out, the deadline expires or the connection is lost,
        the error says it and the attempt, with details ``what`` and
        ``attempts``.
        """
        deadline = self._deadline(deadline, what or "xenstore transaction")
        attempts, conflict = 0, None
        try:
            for attempts in range(1, retries + 1):
                tx = self.transaction_start(deadline)
                try:
                    result = body(tx)
                except BaseException:
                    self._abort(tx)
                    raise
                try:
                    self.transaction_end(tx, True, deadline)
                    return result
                except XenstoreError as exc:
                    if exc.errno != "EAGAIN":
                        raise
                    conflict = exc
                if attempts < retries:
                    deadline.check("retrying a conflicting xenstore transaction")
        except (DeadlineExceeded, XenstoreConnectionError) as exc:
            words = "xenstore transaction, attempt %d of %d" % (attempts, retries)
            msg = "%s: %s (%s)" % (what, exc.msg, words) if what else "%s (%s)" % (exc.msg, words)
            details = dict(exc.details, attempts=attempts, what=what)
            raise type(exc)(msg, **details) from exc
        msg = "xenstore transaction still conflicting after %d attempts" % retries
        raise XenstoreError("%s: %s" % (what, msg) if what else msg, "EAGAIN", attempts=retries, what=what) from conflict

    def _abort(self, tx):
        """End ``tx`` without committing, on a short budget of its own: the
        caller's may be spent, and a lost connection has ended it already."""
        if self._conn is None:
            return
        try:
            self.transaction_end(tx, False, Deadline(CLEANUP_GRACE, "aborting a xenstore transaction"))
        except (XenstoreError, XenstoreConnectionError, DeadlineExceeded):
            pass

    # -- watches -----------------------------------------------------------

    def _new_token(self):
        token = "xen.pci-%d" % self._next_token
        self._next_token += 1
        return token

    @staticmethod
    def _watch_payload(path, token):
        raw = _b(path)
        try:
            check_watch_path(raw)
        except (PyXSError, ValueError) as exc:
            raise XenstoreError("invalid watch path %r" % path, "EINVAL", path=path) from exc
        return raw + b"\0" + _b(token) + b"\0"

    def watch(self, path, token=None, deadline=None):
        """Register a watch; returns its token (unique on this connection)."""
        token = token or self._new_token()
        self._one("WATCH", path, self._watch_payload(path, token), 0, deadline)
        return token

    def watch_many(self, paths, deadline=None):
        """One watch per path, registered in one round trip; [(path, token)]."""
        pairs = [(p, self._new_token()) for p in paths]
        for reply in self.pipeline([("WATCH", p, self._watch_payload(p, t)) for p, t in pairs], deadline=deadline):
            if isinstance(reply, XenstoreError):
                raise reply
        return pairs

    def unwatch(self, path, token, deadline=None):
        self.unwatch_many([(path, token)], deadline)

    def unwatch_many(self, pairs, deadline=None):
        self.pipeline([("UNWATCH", p, _b(p) + b"\0" + _b(t) + b"\0") for p, t in pairs], deadline=deadline)
        tokens = {t for _p, t in pairs}
        self._events = deque(e for e in self._events if e[1] not in tokens)

    def next_event(self, deadline):
        """Next queued or arriving watch event (path, token), bounded."""
        while not self._events:
            packet = self._packet(deadline, "waiting for a xenstore watch event")
            if packet is not None:
                # No request is outstanding here, so any reply is a protocol error.
                raise self._broken("unexpected reply op %d while waiting for events: %r" % (packet[0], packet[2][:64]))
        return self._events.popleft()

    def _drain(self):
        """Queue every watch event already on the wire, without waiting."""
        while self._conn is not None:
            complete = len(self._rbuf) >= HEADER.size and \
                len(self._rbuf) >= HEADER.size + HEADER.unpack(self._rbuf[:HEADER.size])[3]
            if not complete:
                try:
                    ready, _w, _x = select.select([self._fd], [], [], 0)
                except (OSError, ValueError) as exc:
                    raise self._broken(str(exc)) from exc
                if not ready:
                    return
            packet = self._packet(Deadline(CLEANUP_GRACE, "drain"), "reading queued watch events")
            if packet is not None:
                raise self._broken("unexpected reply op %d while waiting for events: %r" % (packet[0], packet[2][:64]))

    @staticmethod
    def watch_points(paths):
        """The fewest watches that see every path: a watch fires for its node
        and every node below, so siblings share one watch on their parent."""
        parents = {}
        for path in paths:
            parents.setdefault(path.rsplit("/", 1)[0] or "/", []).append(path)
        out = []
        for parent, children in parents.items():
            out += [parent] if len(children) > 1 else children
        return sorted(set(out))

    def wait_until(self, paths, check, deadline, doing):
        """Wait until ``check(values)`` returns a true value, re-reading on watch events.

        ``paths``: the nodes to read (one pipelined read per wake-up); they are
        watched with as few watches as cover them (``watch_points``).
        ``check`` gets {path: value or None} and returns the result to hand
        back, or None to keep waiting. No polling: between reads we sleep in
        select() on the connection, until the deadline; every event already
        queued when we wake is taken before the one re-read.
        """
        paths = list(paths)
        tokens = []
        try:
            tokens = self.watch_many(self.watch_points(paths), deadline=deadline)
            mine = {t for _p, t in tokens}
            while True:
                # The watches' own first events are in the queue by now.
                self._drain()
                self._events = deque(e for e in self._events if e[1] not in mine)
                values = self.read_many(paths, deadline=deadline)
                result = check(values)
                if result is not None:
                    return result
                while True:
                    try:
                        _path, token = self.next_event(deadline)
                    except DeadlineExceeded as exc:
                        raise deadline.exceeded(doing, seen=values, pending=False) from exc
                    if token in mine:
                        break
        finally:
            if self._conn is not None and tokens:
                try:
                    self.unwatch_many(tokens, deadline=Deadline(CLEANUP_GRACE, "unwatch"))
                except (XenstoreConnectionError, DeadlineExceeded):
                    pass


class Changes:
    """An ordered batch of xenstore changes, applied in one round trip."""

    def __init__(self):
        self.items = []

    def write(self, path, value):
        self.items.append(("write", path, value))
        return self

    def rm(self, path):
        self.items.append(("rm", path, None))
        return self

    def mkdir(self, path):
        self.items.append(("mkdir", path, None))
        return self

    def perms(self, path, perms):
        self.items.append(("perms", path, list(perms)))
        return self

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


def remove_pruned(xs, paths, stop, deadline, what, tx=0, parents=()):
    """Remove ``paths`` and then each parent left empty (and ``parents``, if
    empty), up to (not including) ``stop``. In a transaction (unless ``tx``
    is one already): pruning a parent another writer has just given a child
    would delete that child."""
    extra = list(parents)

    def body(tx):
        for path in paths:
            xs.rm(path, tx=tx, deadline=deadline)
        parents = sorted({p.rsplit("/", 1)[0] for p in paths} | set(extra), key=len, reverse=True)
        seen = set()
        while parents:
            parent = parents.pop(0)
            if parent in seen or not parent.startswith(stop + "/"):
                continue
            seen.add(parent)
            if xs.directory(parent, tx=tx, deadline=deadline) == []:
                xs.rm(parent, tx=tx, deadline=deadline)
                parents.append(parent.rsplit("/", 1)[0])
                parents.sort(key=len, reverse=True)
    if tx:
        return body(tx)
    return xs.transaction(body, deadline, what=what)

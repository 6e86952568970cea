"""The simulated xenstored: an asyncio Unix-socket server over a ``Store``.

Every accepted socket becomes a ``SocketConn`` (label ``A<n>`` like
oxenstored's anonymous connections). Requests of one connection are answered
strictly in order, each reply echoing the request's ``req_id`` and
``tx_id``; several requests may be outstanding (pipelined). Watch events are
``XS_WATCH_EVENT`` packets (req_id 0, tx_id 0) sent as soon as the store
fires them, so a writer watching its own node gets the event before the
reply, as from xenstored.

``InternalConn`` is the in-process connection of the simulated kernel
drivers: same store API, events delivered through ``loop.call_soon``.

``run_in_thread`` runs a server on its own loop in a thread for tests that
do not need a whole ``SimHost``.

Daemon lifecycle, for "xenstored stopped / killed / restarted" faults (on
the loop; ``SimHost.xenstored_*`` and the ``run_in_thread`` handle call them
from any thread):

* ``kill()``: the daemon dies. Every client connection is closed, the
  listening socket is closed and its file stays (a connect is refused, as
  after kill -9; ``remove_socket=True``: the file goes too). The store keeps
  its content, and the in-process kernel connections keep using it;
* ``restart()``: a daemon listens again on the same path with the same
  tree (oxenstored restarted with its state); clients must reconnect;
* ``pause()`` / ``resume()``: SIGSTOP / SIGCONT. Connections stay open and
  new ones are accepted, requests are read but nothing is sent (replies,
  watch events) until ``resume()``, then everything goes out in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import socket
import threading
import types
from typing import Callable

from xensim.faults import until_removed
from xensim.xenstore import wire
from xensim.xenstore.numbers import c_atoi, ocaml_c_int_of_string, ocaml_int_of_string
from xensim.xenstore.store import Conn, Store, XsError
from xensim.xenstore.wire import Op

log = logging.getLogger(__name__)

# Ops only a privileged connection may send (xenstored XS_FLAG_PRIV).
_PRIV_OPS = {Op.CONTROL, Op.INTRODUCE, Op.RELEASE, Op.IS_DOMAIN_INTRODUCED, Op.RESUME, Op.SET_TARGET}
# Ops that ignore the header's tx_id (XS_FLAG_NOTID).
_NOTID_OPS = {Op.WATCH, Op.UNWATCH}


def _new_label(store: Store) -> str:
    # oxenstored numbers anonymous (socket) connections globally: A1, A2, ...
    seq = getattr(store, "_anon_labels", None)
    if seq is None:
        seq = store._anon_labels = itertools.count(1)
    return f"A{next(seq)}"


class SocketConn(Conn):
    """A client on a Unix socket."""

    def __init__(self, domid: int, label: str, writer: asyncio.StreamWriter):
        super().__init__(domid, label)
        self.writer = writer
        self.deferred: list[bytes] = []
        self.hung = False                # a "hang" fault holds its requests
        self.held_out: list[bytes] | None = None    # output held while the daemon is paused

    def send(self, data: bytes) -> None:
        if self.closed or self.writer.is_closing():
            return
        if self.held_out is not None:
            self.held_out.append(data)
            return
        self.stats.bytes_out += len(data)
        self.writer.write(data)

    def hold_output(self) -> None:
        if self.held_out is None:
            self.held_out = []

    def release_output(self) -> None:
        held, self.held_out = self.held_out or [], None
        for data in held:
            self.send(data)

    def deliver_event(self, path: str, token: str) -> None:
        self.send(wire.encode(Op.WATCH_EVENT, 0, 0, wire.watch_event_payload(path, token)))

    def deliver_initial_event(self, path: str, token: str) -> None:
        self.deferred.append(wire.encode(Op.WATCH_EVENT, 0, 0, wire.watch_event_payload(path, token)))

    def flush_deferred(self) -> None:
        pending, self.deferred = self.deferred, []
        for data in pending:
            self.send(data)


class InternalConn(Conn):
    """In-process connection (simulated kernel driver). ``handler(path,
    token)`` is called on the loop with ``call_soon`` for every watch event,
    i.e. after the operation that fired it has returned."""

    count_bytes = True
    in_process = True

    def __init__(self, store: Store, domid: int, label: str, handler: Callable[[str, str], None] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None):
        super().__init__(domid, label)
        self.store = store
        self.handler = handler
        self.loop = loop
        store.attach(self)

    def deliver_event(self, path: str, token: str) -> None:
        if self.handler is None:
            return
        loop = self.loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        if loop is None:
            # No loop (plain unit test of the store): deliver synchronously.
            self.handler(path, token)
        else:
            loop.call_soon(self.handler, path, token)

    def close(self) -> None:
        self.store.detach(self)

    # Convenience wrappers: the store API with this connection.
    def read(self, path, tx=0):
        return self.store.read(self, path, tx)

    def write(self, path, value, tx=0):
        return self.store.write(self, path, value, tx)

    def mkdir(self, path, tx=0):
        return self.store.mkdir(self, path, tx)

    def rm(self, path, tx=0):
        return self.store.rm(self, path, tx)

    def directory(self, path, tx=0):
        return self.store.directory(self, path, tx)

    def get_perms(self, path, tx=0):
        return self.store.get_perms(self, path, tx)

    def set_perms(self, path, perms, tx=0):
        return self.store.set_perms(self, path, perms, tx)

    def transaction_start(self):
        return self.store.transaction_start(self)

    def transaction_end(self, tx, commit=True):
        return self.store.transaction_end(self, tx, commit)

    def watch(self, path, token):
        return self.store.watch(self, path, token)

    def unwatch(self, path, token):
        return self.store.unwatch(self, path, token)


def _strings(payload: bytes, n: int) -> list[str]:
    """xenstored get_strings: the first ``n`` NUL-terminated strings, EINVAL
    when fewer are present."""
    parts = payload.split(b"\0")[:-1]
    if len(parts) < n:
        raise XsError("EINVAL", "missing arguments")
    return [p.decode("utf-8", "surrogateescape") for p in parts[:n]]


def _onearg(payload: bytes) -> str:
    arg = wire.onearg(payload)
    if arg is None:
        raise XsError("EINVAL", "expected one argument")
    return arg


def _atoi(s: str) -> int:
    return c_atoi(s)


def _fields(payload: bytes) -> list[str]:
    """oxenstored's split on NUL: every piece, the one after the last NUL
    too (empty when the payload ends with NUL)."""
    return [p.decode("utf-8", "surrogateescape") for p in payload.split(b"\0")]


def _exact_strings(store: Store, payload: bytes, n: int) -> list[str]:
    """WATCH/UNWATCH arguments. C: exactly ``n`` NUL-terminated strings
    (get_strings; bytes after the last NUL are not counted). oxenstored:
    the payload must be exactly the ``n`` strings, each NUL-terminated."""
    if store.flavour == "oxenstored":
        parts = _fields(payload)
        if len(parts) != n + 1 or parts[-1] != "":
            raise XsError("EINVAL", f"expected {n} strings")
        return parts[:n]
    parts = payload.split(b"\0")[:-1]
    if len(parts) != n:
        raise XsError("EINVAL", f"expected {n} strings")
    return [p.decode("utf-8", "surrogateescape") for p in parts]


def _domid(store: Store, payload: bytes, nargs: int = 1) -> list[int]:
    """The domid arguments of INTRODUCE (domid, mfn, port), RELEASE, RESUME
    and IS_DOMAIN_INTRODUCED as the daemon reads them: C with atoi (one
    argument: onearg, exactly one NUL at the end); oxenstored with OCaml's
    int_of_string on the NUL-separated fields (RELEASE: exactly one)."""
    if store.flavour == "c":
        args = [_onearg(payload)] if nargs == 1 else _strings(payload, nargs)
        return [_atoi(a) for a in args]
    parts = _fields(payload)
    if len(parts) < nargs:
        raise XsError("EINVAL", "missing arguments")
    try:
        return [ocaml_int_of_string(a) for a in parts[:nargs]]
    except ValueError:
        raise XsError("EINVAL", "not a number") from None


def _first_path(op: int, payload: bytes) -> str | None:
    if op in (Op.TRANSACTION_START, Op.TRANSACTION_END):
        return None
    end = payload.find(b"\0")
    return (payload if end < 0 else payload[:end]).decode("utf-8", "surrogateescape")


def execute(store: Store, conn: Conn, op: int, tx: int, payload: bytes) -> bytes:
    """Run one request against the store; return the reply payload (the
    reply type is the request's) or raise ``XsError``."""
    if op == Op.READ:
        return store.read(conn, _onearg(payload), tx)
    if op == Op.WRITE:
        end = payload.find(b"\0")
        if end < 0:
            raise XsError("EINVAL", "no path")
        store.write(conn, payload[:end].decode("utf-8", "surrogateescape"), payload[end + 1:], tx)
        return wire.ok_reply()
    if op == Op.DIRECTORY:
        return wire.strings(store.directory(conn, _onearg(payload), tx))
    if op == Op.DIRECTORY_PART:
        if wire.count_strings(payload) != 2:
            raise XsError("EINVAL", "DIRECTORY_PART takes path and offset")
        path, off = _strings(payload, 2)
        return store.directory_part(conn, path, max(_atoi(off), 0), tx)
    if op == Op.MKDIR:
        store.mkdir(conn, _onearg(payload), tx)
        return wire.ok_reply()
    if op == Op.RM:
        store.rm(conn, _onearg(payload), tx)
        return wire.ok_reply()
    if op == Op.GET_PERMS:
        return wire.strings(store.get_perms(conn, _onearg(payload), tx))
    if op == Op.SET_PERMS:
        if wire.count_strings(payload) < 2:
            raise XsError("EINVAL", "SET_PERMS takes a path and permissions")
        parts = payload.split(b"\0")[:-1]
        store.set_perms(conn, parts[0].decode("utf-8", "surrogateescape"),
                        [p.decode("utf-8", "surrogateescape") for p in parts[1:]], tx)
        return wire.ok_reply()
    if op == Op.WATCH:
        path, token = _exact_strings(store, payload, 2)
        store.watch(conn, path, token)
        return wire.ok_reply()
    if op == Op.UNWATCH:
        path, token = _exact_strings(store, payload, 2)
        store.unwatch(conn, path, token)
        return wire.ok_reply()
    if op == Op.TRANSACTION_START:
        return str(store.transaction_start(conn, tx)).encode() + b"\0"
    if op == Op.TRANSACTION_END:
        arg = wire.onearg(payload)
        if arg not in ("T", "F"):
            raise XsError("EINVAL", "TRANSACTION_END takes T or F")
        store.transaction_end(conn, tx, arg == "T")
        return wire.ok_reply()
    if op == Op.GET_DOMAIN_PATH:
        # Both want exactly one NUL-terminated argument; the store reads it.
        return store.get_domain_path(_onearg(payload), conn).encode() + b"\0"
    if op == Op.INTRODUCE:
        domid, mfn, port = _domid(store, payload, 3)
        store.introduce(conn, domid, mfn, port)
        return wire.ok_reply()
    if op == Op.RELEASE:
        if store.flavour == "oxenstored" and len(_fields(payload)) != 2:
            raise XsError("EINVAL", "RELEASE takes one domid")
        store.release(conn, _domid(store, payload)[0])
        return wire.ok_reply()
    if op == Op.IS_DOMAIN_INTRODUCED:
        return b"T\0" if store.is_domain_introduced(conn, _domid(store, payload)[0]) else b"F\0"
    if op == Op.SET_TARGET:
        if store.flavour == "oxenstored":
            parts = _fields(payload)
            if len(parts) != 3 or parts[2] != "":
                raise XsError("EINVAL", "SET_TARGET takes two domids")
            domid, target = (ocaml_c_int_of_string(p) for p in parts[:2])
        else:
            domid, target = (_atoi(a) for a in _strings(payload, 2))
        store.set_target(conn, domid, target)
        return wire.ok_reply()
    if op == Op.RESUME:
        domid = _domid(store, payload)[0]
        if not domid:
            raise XsError("EINVAL", "bad domid")
        if domid not in store.introduced:
            raise XsError("ENOENT", "domain not introduced")
        return wire.ok_reply()
    if op == Op.RESET_WATCHES:
        store.reset_watches(conn)
        return wire.ok_reply()
    if op == Op.CONTROL:
        raise XsError("EINVAL", "no control commands in the simulator")
    raise XsError("ENOSYS", f"operation {op}")


class XenstoredServer:
    """Component serving ``store`` on the Unix socket ``path``.

    Connections act as ``as_domid`` (0: privileged toolstack socket, like
    /run/xenstored/socket; N: every client is unprivileged domain N).
    """

    def __init__(self, host, path: str, as_domid: int = 0, store: Store | None = None, faults=None):
        self.host = host
        self.path = str(path)
        self.as_domid = int(as_domid)
        self.store = store if store is not None else host.store
        if faults is None and host is not None:
            faults = getattr(host, "faults", None)
        self.faults = faults
        self.conns: list[SocketConn] = []
        self._listener: socket.socket | None = None
        self._generation = 0        # of the listening socket: a killed one's accepts are dropped
        self._tasks: set[asyncio.Task] = set()
        self.killed = False
        self.paused = False
        self._running = asyncio.Event()
        self._running.set()

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        # Our own accept (not asyncio's server): kill() must know every
        # accepted connection at once, or one accepted just before would
        # outlive the daemon.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind(self.path)
        sock.listen(128)
        self._listener = sock
        self._generation += 1
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock, self._generation)
        self.killed = False
        self.resume()

    def _accept(self, sock: socket.socket, generation: int) -> None:
        while True:
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("xenstored %s: accept failed: %s", self.path, exc)
                return
            conn.setblocking(False)
            task = asyncio.ensure_future(self._serve_socket(conn, generation))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve_socket(self, sock: socket.socket, generation: int) -> None:
        if generation != self._generation or self.killed:
            sock.close()
            return
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        if generation != self._generation or self.killed:
            writer.close()
            return
        await self._client(reader, writer)

    def _stop_listening(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        self._generation += 1

    async def stop(self) -> None:
        self._stop_listening()
        for conn in list(self.conns):
            self._close(conn)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def kill_connections(self) -> None:
        """Drop every client at once (the daemon's listening socket stays)."""
        for conn in list(self.conns):
            self._close(conn)

    async def kill(self, remove_socket: bool = False) -> None:
        """The daemon dies: clients dropped, nothing listens (module doc)."""
        self.killed = True
        self._stop_listening()
        self.kill_connections()
        if remove_socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def restart(self) -> None:
        """A daemon again on the same path, with the same tree."""
        if not self.killed:
            await self.kill()
        await self.start()

    def pause(self) -> None:
        """SIGSTOP: requests are read but neither answered nor anything sent."""
        self.paused = True
        self._running.clear()
        for conn in self.conns:
            conn.hold_output()

    def resume(self) -> None:
        """SIGCONT: what was held goes out, pending requests are answered in order."""
        self.paused = False
        for conn in list(self.conns):
            conn.release_output()
        self._running.set()

    def _close(self, conn: SocketConn) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        self.store.detach(conn)
        with contextlib.suppress(Exception):
            conn.writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A handler cancelled at stop() must end normally: Python 3.12.1's
        # stream protocol calls task.exception() on it and logs the
        # CancelledError as an unhandled error.
        with contextlib.suppress(asyncio.CancelledError):
            await self._serve_client(reader, writer)

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = SocketConn(self.as_domid, _new_label(self.store), writer)
        if self.paused:
            conn.hold_output()      # accepted by the kernel, never served yet
        self.conns.append(conn)
        self.store.attach(conn)
        self.store._log(conn, 0, "newconn", "")
        queue: asyncio.Queue = asyncio.Queue()
        worker = asyncio.ensure_future(self._worker(conn, queue))
        me = asyncio.current_task()
        self._tasks.update((worker, me))
        try:
            while not conn.closed:
                try:
                    header = await reader.readexactly(wire.HEADER_SIZE)
                    op, req_id, tx_id, length = wire.decode_header(header)
                    payload = await reader.readexactly(length) if length else b""
                except (asyncio.IncompleteReadError, ConnectionError, wire.WireError):
                    break
                conn.stats.bytes_in += wire.HEADER_SIZE + length
                queue.put_nowait((op, req_id, tx_id, payload))
        finally:
            # Replies already queued are still sent if the client only shut
            # down its writing side; then the connection goes.
            queue.put_nowait(None)
            if not conn.hung and not self.paused:
                with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(worker), 5)
            worker.cancel()
            self.store._log(conn, 0, "endconn", "")
            self._close(conn)
            self._tasks.discard(worker)
            self._tasks.discard(me)

    async def _worker(self, conn: SocketConn, queue: asyncio.Queue) -> None:
        while True:
            item = await queue.get()
            if item is None or conn.closed:
                return
            await self._running.wait()          # a paused daemon answers nothing
            if conn.closed:
                return
            op, req_id, tx_id, payload = item
            if self.faults is not None:
                path = _first_path(op, payload)
                if path is not None and not path.startswith("@"):
                    path = self.store.canonical(conn, path)
                rule = self.faults.match("xenstore.request", op=wire.op_name(op), path=path,
                                         domid=conn.domid, label=conn.label, tx=tx_id)
                if rule is not None:
                    if rule.action == "delay":
                        await asyncio.sleep(float(rule.params.get("seconds", 1.0)))
                    elif rule.action == "hang":
                        # Not answered, nor anything after it (replies are
                        # in order), until the rule is removed; then it is.
                        conn.hung = True
                        await until_removed(rule)
                        conn.hung = False
                        if conn.closed:
                            return
                    elif rule.action == "close":
                        self._close(conn)
                        return
                    elif rule.action in ("error", "eagain"):
                        self._count(conn, op)
                        self._send_error(conn, req_id, tx_id, rule.params.get("errno", "EIO"))
                        continue
            self._answer(conn, op, req_id, tx_id, payload)

    @staticmethod
    def _count(conn: Conn, op: int) -> None:
        conn.stats.ops[wire.op_name(op)] += 1
        conn.stats.requests += 1

    def _send_error(self, conn: SocketConn, req_id: int, tx_id: int, name: str) -> None:
        conn.send(wire.encode(Op.ERROR, req_id, tx_id, wire.error_payload(name)))

    def _answer(self, conn: SocketConn, op: int, req_id: int, tx_id: int, payload: bytes) -> None:
        try:
            known = op in Op.__members__.values() and op not in (Op.WATCH_EVENT, Op.ERROR)
            if not known:
                self._count(conn, op)
                raise XsError("ENOSYS", f"unknown operation {op}")
            if op in _PRIV_OPS and not conn.privileged:
                self._count(conn, op)
                raise XsError("EACCES", "privileged operation")
            tx = 0 if op in _NOTID_OPS else tx_id
            # Argument errors are found before the store sees the request:
            # count it here so stats still show one round trip.
            before = conn.stats.requests
            try:
                reply = execute(self.store, conn, op, tx, payload)
            except XsError:
                if conn.stats.requests == before:
                    self._count(conn, op)
                raise
        except XsError as e:
            self._send_error(conn, req_id, tx_id, e.name)
            return
        if len(reply) > wire.PAYLOAD_MAX:
            # xenstored send_reply(): E2BIG; libxenstore then falls back to
            # XS_DIRECTORY_PART for a big directory.
            self._send_error(conn, req_id, tx_id, "E2BIG")
            return
        conn.send(wire.encode(op, req_id, tx_id, reply))
        conn.flush_deferred()


class _MiniHost(types.SimpleNamespace):
    """What a component needs from SimHost, for servers run without one."""


class ThreadedServer:
    """Handle returned by ``run_in_thread``."""

    def __init__(self, store: Store, path: str, as_domid: int, faults, extra: dict[int, str] | None):
        self.store = store
        self.path = str(path)
        self.faults = faults
        self.loop = asyncio.new_event_loop()
        self.host = _MiniHost(loop=self.loop, store=store, faults=faults)
        self.server = XenstoredServer(self.host, self.path, as_domid, store=store, faults=faults)
        self.servers = [self.server] + [XenstoredServer(self.host, p, d, store=store, faults=faults)
                                        for d, p in (extra or {}).items()]
        self.paths_as = {int(d): str(p) for d, p in (extra or {}).items()}
        self._thread = threading.Thread(target=self._run, name="xensim-xenstored", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            for s in self.servers:
                self.loop.run_until_complete(s.start())
        except BaseException as e:   # noqa: BLE001 - handed to the starting thread
            self._error = e
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def start(self, timeout: float = 10) -> "ThreadedServer":
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("xenstored simulator did not start")
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn: Callable, *args, timeout: float = 10, **kwargs):
        """Run ``fn(*args)`` on the server's loop thread and return its result
        (store access from a test thread must go through here)."""
        async def run():
            return fn(*args, **kwargs)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def _all(self, method: str, *args) -> None:
        async def run():
            for s in self.servers:
                result = getattr(s, method)(*args)
                if inspect.isawaitable(result):
                    await result
        asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def kill(self, remove_socket: bool = False) -> None:
        """The daemon dies (``XenstoredServer.kill``), from any thread."""
        self._all("kill", remove_socket)

    def restart(self) -> None:
        self._all("restart")

    def pause(self) -> None:
        self._all("pause")

    def resume(self) -> None:
        self._all("resume")

    def stop(self, timeout: float = 10) -> None:
        if not self._thread.is_alive():
            return

        async def shutdown():
            for s in self.servers:
                await s.stop()
        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def run_in_thread(store: Store, path: str, as_domid: int = 0, faults=None,
                  extra: dict[int, str] | None = None) -> ThreadedServer:
    """Serve ``store`` on ``path`` from a background thread; ``extra`` maps
    domids to more socket paths whose clients act as that domain. Returns a
    started handle (``.stop()``, ``.call(fn, ...)``, context manager)."""
    if faults is None:
        faults = store.faults
    return ThreadedServer(store, path, as_domid, faults, extra).start()

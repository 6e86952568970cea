"""The simulated xenstored on its Unix socket, driven by raw xs_wire packets,
by pyxs and by Debian's xenstore-* tools (the same clients as on real Xen)."""

import errno
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import xs_tool
from xensim.xenstore import wire
from xensim.xenstore.store import DOM0_INTRODUCTION
from xensim.xenstore.wire import Op

pyxs = pytest.importorskip("pyxs")


class Raw:
    """A bare xs_wire client with timeouts on every read."""

    def __init__(self, path, timeout=3.0):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)

    def send(self, op, payload=b"", req_id=0, tx_id=0):
        self.s.sendall(wire.encode(op, req_id, tx_id, payload))

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise EOFError("closed by xenstored")
            buf += chunk
        return buf

    def recv(self):
        op, req_id, tx_id, length = wire.decode_header(self._exact(16))
        return op, req_id, tx_id, self._exact(length) if length else b""

    def call(self, op, payload=b"", req_id=0, tx_id=0):
        self.send(op, payload, req_id, tx_id)
        return self.recv()

    def close(self):
        self.s.close()


@pytest.fixture
def raw(xenstored):
    r = Raw(xenstored.path)
    yield r
    r.close()


def test_reply_payload_shapes(raw):
    assert raw.call(Op.WRITE, b"/a/b\0v", req_id=7) == (Op.WRITE, 7, 0, b"OK\0")
    assert raw.call(Op.READ, b"/a/b\0", req_id=8) == (Op.READ, 8, 0, b"v")
    raw.call(Op.WRITE, b"/a/c\0")
    assert raw.call(Op.DIRECTORY, b"/a\0")[3] == b"b\0c\0"
    assert raw.call(Op.READ, b"/a/c\0")[3] == b""
    assert raw.call(Op.SET_PERMS, b"/a/b\0n0\0r1\0")[3] == b"OK\0"
    assert raw.call(Op.GET_PERMS, b"/a/b\0")[3] == b"n0\0r1\0"
    assert raw.call(Op.READ, b"/nothere\0", req_id=9) == (Op.ERROR, 9, 0, b"ENOENT\0")
    assert raw.call(Op.READ, b"/a/\0")[3] == b"EINVAL\0"
    assert raw.call(Op.GET_DOMAIN_PATH, b"3\0")[3] == b"/local/domain/3\0"
    op, _unused1, _unused, tid = raw.call(Op.TRANSACTION_START, b"\0")
    assert op == Op.TRANSACTION_START and tid == b"1\0"
    assert raw.call(Op.WRITE, b"/a/t\0x", tx_id=1) == (Op.WRITE, 0, 1, b"OK\0")
    assert raw.call(Op.TRANSACTION_START, b"\0", tx_id=1)[3] == b"EBUSY\0"
    assert raw.call(Op.TRANSACTION_END, b"X\0", tx_id=1)[3] == b"EINVAL\0"
    assert raw.call(Op.TRANSACTION_END, b"T\0", tx_id=1) == (Op.TRANSACTION_END, 0, 1, b"OK\0")
    assert raw.call(Op.READ, b"/a/t\0", tx_id=1)[3] == b"ENOENT\0"      # transaction gone
    assert raw.call(Op.IS_DOMAIN_INTRODUCED, b"5\0")[3] == b"F\0"
    assert raw.call(Op.INTRODUCE, b"5\0" + b"0\0" + b"1\0")[3] == b"OK\0"
    assert raw.call(Op.IS_DOMAIN_INTRODUCED, b"5\0")[3] == b"T\0"
    assert raw.call(Op.WATCH_EVENT, b"x\0y\0")[3] == b"ENOSYS\0"
    assert raw.call(99, b"")[3] == b"ENOSYS\0"
    assert raw.call(Op.RESET_WATCHES, b"")[3] == b"OK\0"


def test_watch_events_are_packets_and_initial_event_follows_ack(raw):
    assert raw.call(Op.WATCH, b"/w\0tok\0", req_id=3) == (Op.WATCH, 3, 0, b"OK\0")
    assert raw.recv() == (Op.WATCH_EVENT, 0, 0, b"/w\0tok\0")
    assert raw.call(Op.WATCH, b"/w\0tok\0")[3] == b"EEXIST\0"
    # the writer watches its own node: event comes before the reply
    raw.send(Op.WRITE, b"/w/x\0" + b"1", req_id=4)
    assert raw.recv() == (Op.WATCH_EVENT, 0, 0, b"/w/x\0tok\0")
    assert raw.recv() == (Op.WRITE, 4, 0, b"OK\0")
    raw.call(Op.WATCH, b"rel\0r\0")
    assert raw.recv()[3] == b"rel\0r\0"
    raw.send(Op.WRITE, b"/local/domain/0/rel/k\0" + b"v")
    assert raw.recv()[3] == b"rel/k\0r\0"          # relative watch, relative path
    assert raw.recv()[0] == Op.WRITE
    assert raw.call(Op.UNWATCH, b"rel\0r\0")[3] == b"OK\0"


def test_pyxs_monitor_receives_events(xenstored):
    events = []
    with pyxs.Client(unix_socket_path=xenstored.path) as c, c.monitor() as m:
        m.watch(b"/mon", b"t")

        def reader():
            for ev in m.wait():
                events.append(ev)
                if len(events) == 3:
                    return
        th = threading.Thread(target=reader, daemon=True)
        th.start()
        c[b"/mon/a"] = b"1"
        c.delete(b"/mon/a")
        th.join(5)
        assert not th.is_alive(), events
    assert [(e.path, e.token) for e in events] == [(b"/mon", b"t"), (b"/mon/a", b"t"), (b"/mon/a", b"t")]


def test_pipelined_requests_are_answered_in_order(raw):
    batch = b"".join(wire.encode(Op.WRITE, 100 + i, 0, b"/p/%d\0%d" % (i, i)) for i in range(20))
    batch += b"".join(wire.encode(Op.READ, 200 + i, 0, b"/p/%d\0" % i) for i in range(20))
    raw.s.sendall(batch)
    replies = [raw.recv() for _unused in range(40)]
    assert [r[1] for r in replies] == list(range(100, 120)) + list(range(200, 220))
    assert [r[3] for r in replies[20:]] == [str(i).encode() for i in range(20)]


def test_oversized_payload_drops_the_client(raw):
    raw.s.sendall(wire.HEADER.pack(Op.READ, 0, 0, 5000))
    with pytest.raises((EOFError, ConnectionError)):
        raw.recv()


def test_pyxs_basic_and_stats(xenstored):
    with pyxs.Client(unix_socket_path=xenstored.path) as c:
        c[b"/x/y"] = b"1"
        c.mkdir(b"/x/z")
        assert c[b"/x/y"] == b"1"
        assert sorted(c.list(b"/x")) == [b"y", b"z"]
        c.set_perms(b"/x/y", [b"n0", b"r1"])
        assert c.get_perms(b"/x/y") == [b"n0", b"r1"]
        assert c.get_domain_path(2) == b"/local/domain/2"
        c.delete(b"/x/z")
        assert not c.exists(b"/x/z")
        with pytest.raises(pyxs.PyXSError) as e:
            c[b"/x/none"]
        assert e.value.args[0] == errno.ENOENT
    # closed connections are detached (once the server has seen the EOF)
    deadline = time.monotonic() + 5
    while xenstored.call(lambda: xenstored.store.connections):
        assert time.monotonic() < deadline, "connection never detached"
        time.sleep(0.01)
    ops = xenstored.call(lambda: [(e.label, e.op) for e in xenstored.store.access_log if e.op == "newconn"])
    assert ops and all(label.startswith("A") for label, _unused in ops)


def test_stats_count_round_trips(xenstored):
    got = {}

    def grab():
        got["conns"] = {c.label: c.stats.as_dict() for c in xenstored.store.connections}
    with pyxs.Client(unix_socket_path=xenstored.path) as c:
        c[b"/s/a"] = b"1"
        c[b"/s/a"]
        c.list(b"/s")
        xenstored.call(grab)
    (stats,) = got["conns"].values()
    assert stats["requests"] == 3
    assert stats["ops"] == {"WRITE": 1, "READ": 1, "DIRECTORY": 1}
    assert stats["bytes_in"] == 3 * 16 + len(b"/s/a\x001") + len(b"/s/a\0") + len(b"/s\0")
    assert stats["bytes_out"] == 3 * 16 + 3 + 1 + 2


def test_transaction_conflict_between_two_clients(xenstored):
    with pyxs.Client(unix_socket_path=xenstored.path) as a, \
            pyxs.Client(unix_socket_path=xenstored.path) as b:
        a[b"/be/num_devs"] = b"0"
        a.transaction()
        n = int(a[b"/be/num_devs"])
        b[b"/be/num_devs"] = b"1"                   # b commits first
        a[b"/be/dev-%d" % n] = b"0000:00:10.0"
        a[b"/be/num_devs"] = str(n + 1).encode()
        assert a.commit() is False                 # EAGAIN
        assert not b.exists(b"/be/dev-0")
        a.transaction()
        n = int(a[b"/be/num_devs"])
        a[b"/be/dev-%d" % n] = b"0000:00:10.0"
        a[b"/be/num_devs"] = str(n + 1).encode()
        assert a.commit() is True
        assert b[b"/be/num_devs"] == b"2" and b[b"/be/dev-1"] == b"0000:00:10.0"


def test_guest_socket_permissions(xenstored):
    with pyxs.Client(unix_socket_path=xenstored.path) as d0:
        d0[b"/local/domain/0/backend/pci/1/0/state"] = b"4"
        d0.set_perms(b"/local/domain/0/backend/pci/1/0", [b"n0", b"r1"])
        d0.set_perms(b"/local/domain/0/backend/pci/1/0/state", [b"n0", b"r1"])
        d0.mkdir(b"/local/domain/1")
        d0.set_perms(b"/local/domain/1", [b"n1", b"r0"])
    with pyxs.Client(unix_socket_path=xenstored.paths_as[1]) as g1, \
            pyxs.Client(unix_socket_path=xenstored.paths_as[2]) as g2:
        assert g1[b"/local/domain/0/backend/pci/1/0/state"] == b"4"
        with pytest.raises(pyxs.PyXSError) as e:
            g1[b"/local/domain/0/backend/pci/1/0/state"] = b"5"
        assert e.value.args[0] == errno.EACCES
        with pytest.raises(pyxs.PyXSError) as e:
            g2[b"/local/domain/0/backend/pci/1/0/state"]
        assert e.value.args[0] == errno.EACCES
        g1[b"/local/domain/1/data/x"] = b"1"           # its own tree
        assert g1.get_perms(b"/local/domain/1/data/x") == [b"n1", b"r0"]
        assert g1.get_domain_path(1) == b"/local/domain/1"
        with pytest.raises(pyxs.PyXSError) as e:
            g1.introduce_domain(3, 0, 1)
        assert e.value.args[0] == errno.EACCES


# ------------------------------------------------------------ Debian's tools


def test_xenstore_utils_write_read_ls_chmod_rm(xenstored):
    p = xenstored.path
    r = xs_tool("xenstore-write", "/local/domain/0/backend/pci/1/0/num_devs", "1",
                "/local/domain/0/backend/pci/1/0/dev-0", "0000:00:10.0", path=p)
    assert r.returncode == 0, r.stderr
    assert xs_tool("xenstore-chmod", "-r", "/local/domain/0/backend/pci/1/0", "n0", "r1", path=p).returncode == 0
    r = xs_tool("xenstore-read", "/local/domain/0/backend/pci/1/0/dev-0", path=p)
    assert r.stdout == "0000:00:10.0\n"
    r = xs_tool("xenstore-ls", "-fp", "/local/domain/0/backend/pci", path=p)
    # format of the real transcript: /path = "value"   (perms)
    assert r.stdout == (
        '/local/domain/0/backend/pci/1 = ""   (n0)\n'
        '/local/domain/0/backend/pci/1/0 = ""   (n0,r1)\n'
        '/local/domain/0/backend/pci/1/0/dev-0 = "0000:00:10.0"   (n0,r1)\n'
        '/local/domain/0/backend/pci/1/0/num_devs = "1"   (n0,r1)\n')
    assert xs_tool("xenstore-rm", "/local/domain/0/backend/pci", path=p).returncode == 0
    r = xs_tool("xenstore-ls", "-fp", "/local/domain/0/backend/pci", path=p)
    assert r.returncode == 1
    assert r.stderr == "xenstore-ls: xs_directory (/local/domain/0/backend/pci): No such file or directory\n"
    r = xs_tool("xenstore-read", "/local/domain/0/backend/pci/1/0/dev-0", path=p)
    assert r.returncode == 1 and "couldn't read path" in r.stderr


def test_big_directory_falls_back_to_directory_part(xenstored, raw):
    names = [f"k{i:04d}-" + "x" * 40 for i in range(150)]       # ~7 KiB of names
    xenstored.call(lambda: [xenstored.store.seed(f"/big/{n}", b"") for n in names])
    assert raw.call(Op.DIRECTORY, b"/big\0")[3] == b"E2BIG\0"
    r = xs_tool("xenstore-list", "/big", path=xenstored.path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == names


def test_xenstore_utils_as_guest_get_eacces(xenstored):
    xs_tool("xenstore-write", "/local/domain/0/backend/x", "1", path=xenstored.path)
    r = xs_tool("xenstore-write", "/local/domain/0/backend/x", "2", path=xenstored.paths_as[1])
    assert r.returncode == 1 and "could not write path" in r.stderr
    assert xenstored.call(xenstored.store.peek, "/local/domain/0/backend/x") == b"1"


def test_xenstore_watch_subprocess(xenstored):
    exe = shutil.which("xenstore-watch")
    if exe is None:
        pytest.skip("xenstore-watch not installed (Debian package xenstore-utils)")
    xs_tool("xenstore-write", "/wt/a", "0", path=xenstored.path)
    env = dict(os.environ, XENSTORED_PATH=xenstored.path)
    proc = subprocess.Popen([exe, "-n", "3", "/wt"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        # wait until its watch is registered (the store knows it)
        deadline = time.monotonic() + 5
        while not xenstored.call(lambda: any(w.path == "/wt" for c in xenstored.store.connections
                                             for w in c.watches)):
            assert time.monotonic() < deadline, "xenstore-watch never registered"
            time.sleep(0.02)
        xs_tool("xenstore-write", "/wt/a", "1", path=xenstored.path)
        xs_tool("xenstore-rm", "/wt/a", path=xenstored.path)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)
    assert out.splitlines() == ["/wt", "/wt/a", "/wt/a"], err


# ------------------------------------------------------------------- faults


def test_fault_delay(xenstored, raw):
    xenstored.faults.add("xenstore.request", "delay", seconds=0.4, op="READ", path="/slow", times=1)
    raw.call(Op.WRITE, b"/slow/x\0" + b"1")
    t0 = time.monotonic()
    assert raw.call(Op.READ, b"/slow/x\0")[3] == b"1"
    assert time.monotonic() - t0 >= 0.38
    t0 = time.monotonic()
    raw.call(Op.READ, b"/slow/x\0")
    assert time.monotonic() - t0 < 0.3                   # times=1 used up


def test_fault_delay_does_not_block_other_connections(xenstored):
    xenstored.faults.add("xenstore.request", "delay", seconds=1.0, label="A1", times=1)
    slow, fast = Raw(xenstored.path), Raw(xenstored.path)     # A1, A2
    try:
        slow.send(Op.READ, b"/tool\0")
        t0 = time.monotonic()
        assert fast.call(Op.READ, b"/tool\0")[3] == b""
        assert time.monotonic() - t0 < 0.5
        assert slow.recv()[0] == Op.READ
    finally:
        slow.close()
        fast.close()


def test_fault_hang_never_answers(xenstored):
    xenstored.faults.add("xenstore.request", "hang", op="WRITE", path="/hang")
    r = Raw(xenstored.path, timeout=0.5)
    try:
        r.send(Op.WRITE, b"/hang/x\0" + b"1")
        r.send(Op.READ, b"/tool\0")                      # queued behind it
        with pytest.raises(socket.timeout):
            r.recv()
    finally:
        r.close()
    # the daemon is otherwise fine
    with pyxs.Client(unix_socket_path=xenstored.path) as c:
        c[b"/other"] = b"1"


def test_fault_close_drops_connection_without_reply(xenstored):
    xenstored.faults.add("xenstore.request", "close", op="TRANSACTION_START", times=1)
    r = Raw(xenstored.path)
    try:
        r.send(Op.TRANSACTION_START, b"\0")
        with pytest.raises((EOFError, ConnectionError)):
            r.recv()
    finally:
        r.close()
    r = Raw(xenstored.path)
    try:
        assert r.call(Op.TRANSACTION_START, b"\0")[0] == Op.TRANSACTION_START
    finally:
        r.close()


def test_fault_error_reply(xenstored):
    xenstored.faults.add("xenstore.request", "error", errno="EIO", op="write", path="/err", times=2)
    with pyxs.Client(unix_socket_path=xenstored.path) as c:
        for _unused in range(2):
            with pytest.raises(pyxs.PyXSError) as e:
                c[b"/err/a"] = b"1"
            assert e.value.args[0] == errno.EIO
        c[b"/err/a"] = b"1"
        assert c[b"/err/a"] == b"1"


def test_fault_eagain_storm_over_socket(xenstored):
    xenstored.faults.add("xenstore.commit", "eagain", times=3)
    attempts = 0
    with pyxs.Client(unix_socket_path=xenstored.path) as c:
        while True:
            attempts += 1
            c.transaction()
            c[b"/storm/k"] = b"%d" % attempts
            if c.commit():
                break
            assert attempts < 10
        assert attempts == 4 and c[b"/storm/k"] == b"4"


def test_fault_hang_lasts_until_the_fault_is_removed(xenstored):
    rule = xenstored.faults.add("xenstore.request", "hang", op="WRITE", path="/hang")
    r = Raw(xenstored.path, timeout=0.3)
    try:
        r.send(Op.WRITE, b"/hang/x\0" + b"1", req_id=1)
        r.send(Op.READ, b"/tool\0", req_id=2)             # queued behind it
        with pytest.raises(socket.timeout):
            r.recv()
        assert xenstored.call(xenstored.store.peek, "/hang/x") is None
        xenstored.faults.remove(rule)
        r.s.settimeout(10)
        assert r.recv()[:2] == (Op.WRITE, 1)              # then answered, in order
        assert r.recv()[:2] == (Op.READ, 2)
        assert xenstored.call(xenstored.store.peek, "/hang/x") == b"1"
    finally:
        r.close()


def test_fault_eagain_on_a_path(xenstored, raw):
    xenstored.faults.add("xenstore.request", "eagain", path="/busy")
    assert raw.call(Op.WRITE, b"/busy/a\0" + b"1")[::3] == (Op.ERROR, b"EAGAIN\0")
    assert raw.call(Op.MKDIR, b"/busy\0")[::3] == (Op.ERROR, b"EAGAIN\0")
    assert raw.call(Op.WRITE, b"/busyness\0" + b"1")[0] == Op.WRITE    # a prefix on components
    assert xenstored.call(xenstored.store.peek, "/busy") is None


def test_fault_commit_eagain_forever_until_removed(xenstored):
    rule = xenstored.faults.add("xenstore.commit", "eagain")       # times=None: endless
    with pyxs.Client(unix_socket_path=xenstored.path) as c:
        for attempt in range(20):
            c.transaction()
            c[b"/endless/k"] = b"%d" % attempt
            assert not c.commit()
        assert xenstored.call(xenstored.store.peek, "/endless/k") is None
        xenstored.faults.remove(rule)
        c.transaction()
        c[b"/endless/k"] = b"done"
        assert c.commit()
        assert c[b"/endless/k"] == b"done"
    assert rule.hits == 20


def test_server_stop_closes_clients(sockdir):
    from xensim.xenstore.server import run_in_thread
    from xensim.xenstore.store import Store

    h = run_in_thread(Store(), os.path.join(sockdir, "s2"))
    r = Raw(h.path)
    assert r.call(Op.READ, b"/tool\0")[0] == Op.READ
    done = threading.Event()
    threading.Thread(target=lambda: (h.stop(), done.set()), daemon=True).start()
    assert done.wait(5)
    with pytest.raises((EOFError, ConnectionError)):
        r.recv()
    assert not os.path.exists(h.path)
    r.close()


@pytest.mark.parametrize("daemon", ["xenstored", "xenstored_c"])
def test_watch_and_unwatch_take_exactly_two_strings(daemon, request):
    r = Raw(request.getfixturevalue(daemon).path)
    try:
        for payload in (b"/w\0tok\0extra\0", b"/w\0", b"/w\0tok"):
            assert r.call(Op.WATCH, payload)[::3] == (Op.ERROR, b"EINVAL\0"), payload
            assert r.call(Op.UNWATCH, payload)[::3] == (Op.ERROR, b"EINVAL\0"), payload
        # bytes after the second NUL: oxenstored refuses, C ignores them
        if daemon == "xenstored":
            assert r.call(Op.WATCH, b"/w\0tok\0junk")[::3] == (Op.ERROR, b"EINVAL\0")
            assert r.call(Op.WATCH, b"/w\0tok\0")[::3] == (Op.WATCH, b"OK\0")
        else:
            assert r.call(Op.WATCH, b"/w\0tok\0junk")[::3] == (Op.WATCH, b"OK\0")
        assert r.recv()[::3] == (Op.WATCH_EVENT, b"/w\0tok\0")
        assert r.call(Op.UNWATCH, b"/w\0tok\0extra\0")[::3] == (Op.ERROR, b"EINVAL\0")
        assert r.call(Op.UNWATCH, b"/w\0tok\0")[::3] == (Op.UNWATCH, b"OK\0")
    finally:
        r.close()


@pytest.mark.parametrize("daemon", ["xenstored", "xenstored_c"])
def test_dom0_is_introduced_on_the_wire(daemon, request):
    h = request.getfixturevalue(daemon)
    r, watcher = Raw(h.path), Raw(h.path)
    try:
        assert watcher.call(Op.WATCH, b"@introduceDomain\0i\0")[0] == Op.WATCH
        assert watcher.recv()[::3] == (Op.WATCH_EVENT, b"@introduceDomain\0i\0")
        assert r.call(Op.IS_DOMAIN_INTRODUCED, b"0\0")[::3] == (Op.IS_DOMAIN_INTRODUCED, b"T\0")
        assert r.call(Op.IS_DOMAIN_INTRODUCED, b"1\0")[::3] == (Op.IS_DOMAIN_INTRODUCED, b"F\0")
        mfn, port = DOM0_INTRODUCTION
        assert r.call(Op.INTRODUCE, b"0\0%d\0%d\0" % (mfn, port))[::3] == (Op.INTRODUCE, b"OK\0")
        # no @introduceDomain for dom0: the next packet is the reply to READ
        assert watcher.call(Op.READ, b"/tool\0")[0] == Op.READ
    finally:
        r.close()
        watcher.close()

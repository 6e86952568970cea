"""Fault points of the simulated host that a fault matrix drives from its
own thread: the kernels' connect steps, the xenstored lifecycle (killed,
restarted, paused), and host.stop() with hangs still active.

Waits are bounded generously and the assertions are on states, never on
how long something took."""

import errno
import os
import socket
import threading
import time

import pytest

from test_kernel_pciback_pcifront import Toolstack, be, fe, wait_for
from xensim.host import SimHost
from xensim.xenstore import wire
from xensim.xenstore.wire import Op

pyxs = pytest.importorskip("pyxs")

BDF = "0000:00:10.0"


@pytest.fixture
def make_host(sockdir):
    hosts = []

    def make(scenario="pv-no-backend", **kwargs):
        host = SimHost(scenario, os.path.join(sockdir, f"h{len(hosts)}"), mount_sysfs=False, **kwargs)
        host.start()
        hosts.append(host)
        return host
    yield make
    for host in hosts:
        host.stop()


class Raw:
    """A bare xs_wire client (also sees watch events)."""

    def __init__(self, path, timeout=10.0):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)

    def send(self, op, payload, req_id=1):
        self.s.sendall(wire.encode(op, req_id, 0, payload))

    def recv(self):
        def exact(n):
            buf = b""
            while len(buf) < n:
                chunk = self.s.recv(n - len(buf))
                if not chunk:
                    raise EOFError("closed by xenstored")
                buf += chunk
            return buf
        op, req_id, _tx, length = wire.decode_header(exact(16))
        return op, req_id, exact(length) if length else b""

    def call(self, op, payload, req_id=1):
        self.send(op, payload, req_id)
        return self.recv()

    def close(self):
        self.s.close()


def attach(host):
    ts = Toolstack(host)
    try:
        ts.attach(1, [BDF], "domu1")
    finally:
        ts.close()


def still(host, checks, seconds=0.3):
    """The states stay as they are while nothing may change them."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert {p: host.read(p) for p in checks} == checks
        time.sleep(0.02)


# ------------------------------------------------------ kernel connect points

def test_pcifront_connect_hang_leaves_the_frontend_initialised_until_removed(make_host):
    host = make_host()
    rule = host.faults.add("pcifront.connect", "hang", domid=1)
    attach(host)
    wait_for(host, be(1), "4")                  # pciback connected
    wait_for(host, fe(1), "3")
    host.settle()                               # a held guest counts as settled
    still(host, {be(1): "4", fe(1): "3"})
    assert host.guest_devices(1) == {}
    assert [(p, a) for p, a, _ctx in host.faults.log] == [("pcifront.connect", "hang")]
    host.faults.remove(rule)
    wait_for(host, fe(1), "4")
    assert host.guest_devices(1) == {"0000:00:00.0": BDF}


def test_pcifront_connect_delay_then_connects(make_host):
    host = make_host()
    host.faults.add("pcifront.connect", "delay", seconds=0.5, domid=1, times=1)
    attach(host)
    wait_for(host, be(1), "4")
    wait_for(host, fe(1), "4")
    assert host.guest_devices(1) == {"0000:00:00.0": BDF}
    assert host.faults.log[0][:2] == ("pcifront.connect", "delay")


def test_pcifront_connect_matches_its_guest_only(make_host):
    host = make_host()
    host.faults.add("pcifront.connect", "hang", domid=2)
    attach(host)
    wait_for(host, fe(1), "4")
    assert host.faults.log == []


def test_pciback_connect_hang_leaves_the_backend_initialised_until_removed(make_host):
    host = make_host()
    rule = host.faults.add("pciback.connect", "hang", domid=1)
    attach(host)
    wait_for(host, fe(1), "3")
    wait_for(host, be(1), "3")
    host.settle()
    still(host, {be(1): "3", fe(1): "3"})
    assert host.pciback.vbus(1) == {}
    host.faults.remove(rule)
    wait_for(host, be(1), "4")
    wait_for(host, fe(1), "4")
    assert host.guest_devices(1) == {"0000:00:00.0": BDF}


def test_pciback_connect_delay_then_connects(make_host):
    host = make_host()
    host.faults.add("pciback.connect", "delay", seconds=0.5, domid=1)
    attach(host)
    wait_for(host, be(1), "4")
    wait_for(host, fe(1), "4")
    assert ("pciback.connect", "delay", {"domid": 1}) in host.faults.log


def test_a_hung_pciback_connect_whose_backend_went_away_does_not_connect(make_host):
    host = make_host()
    rule = host.faults.add("pciback.connect", "hang", domid=1)
    attach(host)
    wait_for(host, be(1), "3")
    # the toolstack gives up and removes both ends while dom0 is held
    with pyxs.Client(unix_socket_path=host.paths["xenstored"]) as c:
        c.delete(b"/local/domain/0/backend/pci/1")
        c.delete(b"/local/domain/1/device/pci/0")
    host.faults.remove(rule)
    host.settle()
    assert host.read(be(1)) is None and host.pciback.device_for(1) is None
    assert host.sysfs is None or host.sysfs.in_use_by(BDF) is None


def test_pciback_reconfigure_hang_holds_dom0_until_removed(make_host):
    host = make_host("pv-with-backend")
    wait_for(host, be(1), "4")
    rule = host.faults.add("pciback.reconfigure", "hang", domid=1)
    ts = Toolstack(host)
    try:
        ts.attach(1, ["0000:00:11.0"], "domu1")            # a second device: BE 7 -> FE 7
    finally:
        ts.close()
    wait_for(host, fe(1), "7")
    host.settle()                                          # dom0 held: settled
    still(host, {be(1): "7", be(1, "state-1"): "1", fe(1): "7"})
    host.faults.remove(rule)
    wait_for(host, be(1, "state-1"), "3")
    wait_for(host, fe(1), "4")
    wait_for(host, be(1), "4")
    assert sorted(host.guest_devices(1).values()) == ["0000:00:10.0", "0000:00:11.0"]


# -------------------------------------------------------- xenstored lifecycle

def test_xenstored_kill_drops_clients_refuses_new_ones_and_keeps_the_tree(make_host):
    host = make_host()
    path, guest_path = host.paths["xenstored"], host.paths["xenstored_as"]["1"]
    client = Raw(path)
    assert client.call(Op.WRITE, b"/local/domain/0/kept\0yes")[0] == Op.WRITE
    attach(host)
    host.xenstored_kill()
    with pytest.raises((EOFError, ConnectionError)):
        client.recv()
    client.close()
    for p in (path, guest_path):
        assert os.path.exists(p)                 # left behind, as by kill -9
        with pytest.raises(ConnectionRefusedError):
            Raw(p)
    # the kernels are not socket clients: the attach completes meanwhile
    wait_for(host, be(1), "4")
    wait_for(host, fe(1), "4")
    host.xenstored_restart()
    with pyxs.Client(unix_socket_path=path) as c:
        assert c[b"/local/domain/0/kept"] == b"yes"
        assert c[b"/local/domain/1/device/pci/0/state"] == b"4"
    with pyxs.Client(unix_socket_path=guest_path) as c:     # acting as domain 1 again
        assert c[b"/local/domain/1/device/pci/0/state"] == b"4"
    assert host.guest_devices(1) == {"0000:00:00.0": BDF}


def test_xenstored_kill_can_remove_the_socket_file(make_host):
    host = make_host()
    host.xenstored_kill(remove_socket=True)
    assert not os.path.exists(host.paths["xenstored"])
    with pytest.raises(FileNotFoundError):
        Raw(host.paths["xenstored"])
    host.xenstored_restart()
    with pyxs.Client(unix_socket_path=host.paths["xenstored"]) as c:
        assert c[b"/local/domain/0/name"] == b"Domain-0"


def test_xenstored_restart_of_a_running_daemon_drops_its_clients(make_host):
    host = make_host()
    client = Raw(host.paths["xenstored"])
    host.xenstored_restart()
    with pytest.raises((EOFError, ConnectionError)):
        client.call(Op.READ, b"/local/domain/0/name\0")
    client.close()
    client = Raw(host.paths["xenstored"])
    assert client.call(Op.READ, b"/local/domain/0/name\0") == (Op.READ, 1, b"Domain-0")
    client.close()


def test_xenstored_pause_holds_replies_and_events_until_resume_in_order(make_host):
    host = make_host()
    watcher = Raw(host.paths["xenstored"])
    assert watcher.call(Op.WATCH, b"/local/domain/0/backend\0be\0")[0] == Op.WATCH
    assert watcher.recv()[0] == Op.WATCH_EVENT                 # the initial event
    host.xenstored_pause()
    watcher.send(Op.READ, b"/local/domain/0/name\0", req_id=7)
    late = Raw(host.paths["xenstored"], timeout=0.3)           # accepted, not served
    late.send(Op.READ, b"/local/domain/0/name\0", req_id=8)
    with pytest.raises(socket.timeout):
        late.recv()
    # the in-process toolstack and kernels keep working on the store
    host.call(host.toolstack.write, "/local/domain/0/backend/probe", b"1")
    assert host.read("/local/domain/0/backend/probe") == "1"
    watcher.s.settimeout(0.3)
    with pytest.raises(socket.timeout):
        watcher.recv()
    host.xenstored_resume()
    watcher.s.settimeout(10)
    late.s.settimeout(10)
    # the event fired while paused goes out first, then the pending reply
    assert watcher.recv() == (Op.WATCH_EVENT, 0, b"/local/domain/0/backend/probe\0be\0")
    assert watcher.recv() == (Op.READ, 7, b"Domain-0")
    assert late.recv() == (Op.READ, 8, b"Domain-0")
    watcher.close()
    late.close()


def test_xenstored_lifecycle_from_several_threads(make_host):
    host = make_host()
    errors = []

    def cycle():
        try:
            for _unused in range(3):
                host.xenstored_pause()
                host.xenstored_resume()
        except Exception as exc:     # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=cycle) for _unused in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    with pyxs.Client(unix_socket_path=host.paths["xenstored"]) as c:
        assert c[b"/local/domain/0/name"] == b"Domain-0"


# --------------------------------------------------- stop with hangs active

def test_stop_does_not_hang_on_active_hang_faults(sockdir):
    host = SimHost("pv-no-backend", os.path.join(sockdir, "stop"), mount_sysfs=True)
    host.start()
    thread = host._thread    # pylint: disable=protected-access
    hung = None
    writer, outcome = None, []
    try:
        host.faults.add("pcifront.connect", "hang", domid=1)
        host.faults.add("xenstore.request", "hang", op="READ", path="/hang")
        host.faults.add("sysfs.write", "hang", file="pciback/remove_slot")
        attach(host)
        wait_for(host, be(1), "4")
        hung = Raw(host.paths["xenstored"])
        hung.send(Op.READ, b"/hang\0")
        if host.paths["sysfs_root"]:
            target = os.path.join(host.paths["sysfs_root"], "bus/pci/drivers/pciback/remove_slot")

            def write():
                try:
                    fd = os.open(target, os.O_WRONLY)
                    try:
                        os.write(fd, b"0000:00:12.0")
                        outcome.append(0)
                    finally:
                        os.close(fd)
                except OSError as exc:
                    outcome.append(exc.errno)
            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            writer.join(0.3)
            assert writer.is_alive()
        host.xenstored_pause()
    finally:
        host.stop(timeout=60)
    assert not thread.is_alive()
    if writer is not None:
        writer.join(30)
        assert not writer.is_alive() and outcome in ([errno.EIO], [errno.ENOTCONN])
    if hung is not None:
        hung.close()

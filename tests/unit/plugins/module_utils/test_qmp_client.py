# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Edge cases of the QMP client against a real Unix-socket server in a thread
that plays scripted QEMU behaviour (interleaved events, garbage, EOF mid-reply,
silence), and libxl's QMP lock contended by another process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from ansible_collections.xen.pci.plugins.module_utils._errors import (
    DeadlineExceeded,
    QmpConnectionError,
    QmpError,
    SpecError,
)
from ansible_collections.xen.pci.plugins.module_utils._qmp import (
    QmpClient,
    QmpLock,
    QmpSession,
    parse_query_pci,
    pt_qdev_id,
    qmp_lock_path,
)

GREETING = {"QMP": {"version": {"qemu": {"micro": 1, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}


def dev(slot, qdev_id="", bus=0, func=0, bridge=None):
    out = {"irq_pin": 0, "bus": bus, "qdev_id": qdev_id, "slot": slot, "function": func,
           "class_info": {"class": 0x0200, "desc": "Ethernet controller"},
           "id": {"device": 0x10D3, "vendor": 0x8086, "subsystem-vendor": 0x1AF4, "subsystem": 0x1100}, "regions": []}
    if bridge is not None:
        out["pci_bridge"] = bridge
    return out


class FakeQemu:
    """A Unix-socket server; ``handler(req, send)`` answers each request.

    ``send(obj_or_bytes)`` writes one message (dict -> JSON + CRLF) or raw bytes.
    Return "close" from the handler to drop the connection.
    """

    def __init__(self, handler, greeting=True):
        self.dir = tempfile.mkdtemp(prefix="fq")
        self.path = os.path.join(self.dir, "qmp.sock")
        self.handler = handler
        self.greeting = greeting
        self.requests = []
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(self.path)
        self.srv.listen(4)
        self.srv.settimeout(0.2)
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_flag.is_set():
            try:
                conn = self.srv.accept()[0]
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                self._serve(conn)

    def _serve(self, conn):
        conn.settimeout(0.2)

        def send(obj):
            conn.sendall(obj if isinstance(obj, bytes) else json.dumps(obj).encode() + b"\r\n")

        if self.greeting:
            send(GREETING)
        buf = b""
        while not self.stop_flag.is_set():
            try:
                chunk = conn.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                self.requests.append(req)
                if req.get("execute") == "qmp_capabilities":
                    send({"return": {}, "id": req["id"]})
                    continue
                if self.handler(req, send) == "close":
                    return

    def close(self):
        self.stop_flag.set()
        self.srv.close()
        self.thread.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def fake():
    servers = []

    def start(handler, greeting=True):
        srv = FakeQemu(handler, greeting)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


def test_events_interleaved_with_replies_are_queued_in_order(fake):
    def handler(req, send):
        send({"event": "A", "data": {}, "timestamp": {"seconds": 1, "microseconds": 0}})
        send({"return": {"late": True}, "id": "someone-else"})          # not ours: skipped
        send({"event": "B", "data": {"n": 1}, "timestamp": {"seconds": 1, "microseconds": 1}})
        send({"return": {"cmd": req["execute"]}, "id": req["id"]})
    srv = fake(handler)
    with QmpClient(srv.path, timeout=2) as cli:
        assert cli.execute("query-status") == {"cmd": "query-status"}
        assert cli.execute("query-pci") == {"cmd": "query-pci"}
        assert cli.wait_event("B", lambda e: e["data"]["n"] == 1, timeout=1)["event"] == "B"
        assert [e["event"] for e in cli.pending_events()] == ["A", "A", "B"]
        ids = [r["id"] for r in srv.requests]
        assert len(set(ids)) == len(ids)           # unique ids


def test_reply_split_in_tiny_chunks_and_batched_messages(fake):
    def handler(req, send):
        data = json.dumps({"return": {"x": "y" * 50}, "id": req["id"]}).encode() + b"\r\n"
        for i in range(0, len(data), 3):
            send(data[i:i + 3])
            time.sleep(0.001)
        send(json.dumps({"event": "E1", "data": {}}).encode() + b"\r\n" + json.dumps({"event": "E2", "data": {}}).encode() + b"\r\n")
    srv = fake(handler)
    with QmpClient(srv.path, timeout=2) as cli:
        assert cli.execute("x") == {"x": "y" * 50}
        assert cli.wait_event("E2", timeout=1)["event"] == "E2"
        assert [e["event"] for e in cli.pending_events()] == ["E1"]


def test_error_replies_are_typed(fake):
    def handler(req, send):
        if req["execute"] == "noid":
            send({"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}})
        else:
            send({"id": req["id"], "error": {"class": "DeviceNotFound", "desc": "Device 'x' not found"}})
    srv = fake(handler)
    with QmpClient(srv.path, timeout=2) as cli:
        with pytest.raises(QmpError) as exc:
            cli.device_del("x")
        assert (exc.value.error_class, exc.value.desc) == ("DeviceNotFound", "Device 'x' not found")
        assert exc.value.details["command"] == "device_del" and exc.value.details["arguments"] == {"id": "x"}
        with pytest.raises(QmpError) as exc:
            cli.execute("noid")
        assert exc.value.error_class == "GenericError"
        assert cli.remove_device("x", timeout=1) == "absent"


def test_garbage_from_qemu_is_a_connection_error(fake):
    srv = fake(lambda req, send: send(b"this is not json\r\n"))
    cli = QmpClient(srv.path, timeout=2)
    cli.connect()
    with pytest.raises(QmpConnectionError) as exc:
        cli.execute("query-pci")
    assert "unparseable" in exc.value.msg and not cli.connected


def test_eof_mid_reply(fake):
    def handler(req, send):
        send(b'{"return": [{"bus": 0, "devi')
        return "close"
    srv = fake(handler)
    cli = QmpClient(srv.path, timeout=2)
    cli.connect()
    with pytest.raises(QmpConnectionError) as exc:
        cli.query_pci()
    assert "query-pci" in exc.value.msg


def test_command_timeout_names_command_and_seconds_and_connection_survives(fake):
    def handler(req, send):
        if req["execute"] == "slow":
            return None          # never answers
        send({"return": {}, "id": req["id"]})
        return None
    srv = fake(handler)
    with QmpClient(srv.path, timeout=2) as cli:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded) as exc:
            cli.execute("slow", timeout=0.4)
        assert 0.35 <= time.monotonic() - t0 < 1.5
        assert "'slow'" in exc.value.msg and "0.4 s" in exc.value.msg
        assert exc.value.details["command"] == "slow" and exc.value.details["waited"] >= 0.35
        assert cli.execute("fast") == {}


def test_no_greeting_and_no_capabilities_reply(fake):
    srv = fake(lambda req, send: None, greeting=False)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded) as exc:
        QmpClient(srv.path, timeout=0.5).connect()
    assert "greeting" in exc.value.msg and time.monotonic() - t0 < 2


def test_missing_and_refused_sockets(tmp_path):
    with pytest.raises(QmpConnectionError) as exc:
        QmpClient(str(tmp_path / "none"), timeout=1).connect()
    assert exc.value.details["errno"] == "ENOENT"
    d = tempfile.mkdtemp(prefix="rf")
    try:
        path = os.path.join(d, "s")
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()                      # a socket file nobody listens on (QEMU killed)
        with pytest.raises(QmpConnectionError) as exc:
            QmpClient(path, timeout=1).connect()
        assert exc.value.details["errno"] == "ECONNREFUSED"
    finally:
        shutil.rmtree(d)


def test_parse_query_pci_flattens_bridges():
    reply = [{"bus": 0, "devices": [
        dev(0),
        dev(4, "rp1", bridge={"bus": {"number": 0, "secondary": 1, "subordinate": 1}, "devices": [dev(0, "pci-pt-03_00.0", bus=1)]}),
        dev(5, "rp2", bridge={"bus": {"number": 0, "secondary": 0, "subordinate": 0}}),   # unnumbered: no devices key
    ]}]
    devs = parse_query_pci(reply)
    assert [(d.bus, d.slot, d.qdev_id) for d in devs] == [(0, 0, ""), (0, 4, "rp1"), (1, 0, "pci-pt-03_00.0"), (0, 5, "rp2")]
    assert devs[1].bridge_secondary_bus == 1 and devs[2].address == "01:00.0"
    with pytest.raises(QmpError):
        parse_query_pci([{"bus": 0, "devices": [{"slot": 1}]}])


def test_passthrough_arguments_are_libxls():
    assert QmpClient.passthrough_args("0000:03:00.1") == {
        "driver": "xen-pci-passthrough", "id": "pci-pt-03_00.1", "hostaddr": "0000:03:00.1"}
    assert QmpClient.passthrough_args("1:0a:1f.7", vslot=0x1F, vfunc=7, permissive=True) == {
        "driver": "xen-pci-passthrough", "id": "pci-pt-0a_1f.7", "hostaddr": "0001:0a:1f.7", "addr": "1f.7", "permissive": True}
    assert pt_qdev_id("03:00.0") == "pci-pt-03_00.0"
    for bad in ("03:00", "03:20.0", "zz:00.0", "03:00.8"):
        with pytest.raises(SpecError):
            QmpClient.passthrough_args(bad)
    with pytest.raises(SpecError):
        QmpClient.passthrough_args("03:00.0", vslot=0x20)


def test_wait_device_gone_polls_query_pci_without_events(fake):
    polls = []

    def handler(req, send):
        if req["execute"] == "query-pci":
            polls.append(time.monotonic())
            devices = [dev(0)] + ([dev(4, "pci-pt-03_00.0")] if len(polls) < 3 else [])
            send({"return": [{"bus": 0, "devices": devices}], "id": req["id"]})
        else:
            send({"return": {}, "id": req["id"]})
    srv = fake(handler)
    with QmpClient(srv.path, timeout=2) as cli:
        cli.device_del("pci-pt-03_00.0")
        assert cli.wait_device_gone("pci-pt-03_00.0", timeout=5, poll=0.2) == "query-pci"
        assert len(polls) == 3


def test_wait_device_gone_times_out_naming_the_device(fake):
    def handler(req, send):
        if req["execute"] == "query-pci":
            send({"return": [{"bus": 0, "devices": [dev(4, "pci-pt-03_00.0")]}], "id": req["id"]})
        else:
            send({"return": {}, "id": req["id"]})
            send({"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/other"}})   # not ours
    srv = fake(handler)
    with QmpClient(srv.path, timeout=2) as cli:
        cli.device_del("pci-pt-03_00.0")
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded) as exc:
            cli.wait_device_gone("pci-pt-03_00.0", timeout=0.8, poll=0.2)
        assert 0.75 <= time.monotonic() - t0 < 2.5
        assert exc.value.details["device"] == "pci-pt-03_00.0" and "pci-pt-03_00.0" in exc.value.msg


HOLDER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
if sys.argv[3] == "unlink":
    os.unlink(sys.argv[1])        # libxl's release order: unlink, then unlock
fcntl.flock(fd, fcntl.LOCK_UN)
"""


def _holder(path, seconds, mode="keep"):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, path, str(seconds), mode], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"locked"
    return proc


def test_lock_contention_with_another_process(tmp_path):
    path = qmp_lock_path(3, "AB12", str(tmp_path))
    assert path == str(tmp_path / "userdata-l.3.ab12.qmp-socket-lock")
    proc = _holder(path, 1.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded) as exc:
            QmpLock(path).acquire(timeout=0.3)
        assert 0.25 <= time.monotonic() - t0 < 1.0 and exc.value.details["lock"] == path
        lock = QmpLock(path).acquire(timeout=5)     # the holder lets go after 1 s
        assert lock.held
        lock.release()
        assert not os.path.exists(path)
    finally:
        proc.wait(timeout=10)


def test_lock_holder_unlinking_makes_us_retry_on_the_new_file(tmp_path):
    path = str(tmp_path / "userdata-l.3.x.qmp-socket-lock")
    proc = _holder(path, 0.5, "unlink")
    try:
        lock = QmpLock(path).acquire(timeout=5)
        # We hold the file the path names now, not the unlinked one.
        assert os.stat(path).st_ino == os.fstat(lock._fd).st_ino   # pylint: disable=protected-access
        lock.release()
    finally:
        proc.wait(timeout=10)


def test_session_lock_is_released_when_connect_fails(tmp_path):
    d = tempfile.mkdtemp(prefix="sl")
    try:
        sock_path = os.path.join(d, "qmp-libxl-4")
        s = socket.socket(socket.AF_UNIX)
        s.bind(sock_path)
        s.close()
        with pytest.raises(QmpConnectionError):
            QmpSession.open(4, "u", qmp_dir=d, userdata_dir=str(tmp_path), timeout=2)
        assert not os.path.exists(qmp_lock_path(4, "u", str(tmp_path)))
        QmpLock(qmp_lock_path(4, "u", str(tmp_path))).acquire(timeout=0.1).release()
    finally:
        shutil.rmtree(d)

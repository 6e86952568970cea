# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Edge cases of the QMP client against a real Unix-socket server in a thread
that plays scripted QEMU behaviour (interleaved events, garbage, EOF mid-reply,
silence, late replies), its Runstate, errors naming the domain, libxl's QMP
lock contended by another process, and QEMU's duplicate-id refusal as xensim
gives it."""

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

from ansible_collections.xen.pci.plugins.module_utils._bdf import Bdf
from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline
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
    Runstate,
    duplicate_id_of,
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

    def __init__(self, handler, greeting=True, name="qmp.sock"):
        self.dir = tempfile.mkdtemp(prefix="fq")
        self.path = os.path.join(self.dir, name)
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
                try:
                    if self.handler(req, send) == "close":
                        return
                except OSError:
                    return          # the client went away first

    def close(self):
        self.stop_flag.set()
        self.srv.close()
        self.thread.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def fake():
    servers = []

    def start(handler, greeting=True, name="qmp.sock"):
        srv = FakeQemu(handler, greeting, name)
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
        assert cli.wait_event("B", lambda e: e["data"]["n"] == 1, deadline=Deadline(1))["event"] == "B"
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
        assert cli.wait_event("E2", deadline=Deadline(1))["event"] == "E2"
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
        assert cli.remove_device("x", Deadline(1)) == "absent"


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
            cli.execute("slow", deadline=Deadline(0.4))
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
    # A Bdf is taken as is; a bad string is _bdf's SpecError, naming the token.
    assert QmpClient.passthrough_args(Bdf(2, 0x81, 3, 1))["hostaddr"] == "0002:81:03.1"
    assert pt_qdev_id(Bdf(2, 0x81, 3, 1)) == "pci-pt-81_03.1"
    with pytest.raises(SpecError) as exc:
        pt_qdev_id("03:20.0")
    assert exc.value.details["token"] == "20" and "slot is out of range" in exc.value.msg
    with pytest.raises(SpecError):
        QmpClient.passthrough_args(("0", "3", "0", "0"))     # tuples are no address any more


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
        assert cli.wait_device_gone("pci-pt-03_00.0", Deadline(5), poll=0.2) == "query-pci"
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
            cli.wait_device_gone("pci-pt-03_00.0", Deadline(0.8), poll=0.2)
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
            QmpLock(path).acquire(Deadline(0.3))
        assert 0.25 <= time.monotonic() - t0 < 1.0 and exc.value.details["lock"] == path
        lock = QmpLock(path).acquire(Deadline(5))     # the holder lets go after 1 s
        assert lock.held
        lock.release()
        assert not os.path.exists(path)
    finally:
        proc.wait(timeout=10)


def test_lock_holder_unlinking_makes_us_retry_on_the_new_file(tmp_path):
    path = str(tmp_path / "userdata-l.3.x.qmp-socket-lock")
    proc = _holder(path, 0.5, "unlink")
    try:
        lock = QmpLock(path).acquire(Deadline(5))
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
            QmpSession.open(4, "u", Deadline(2), qmp_dir=d, userdata_dir=str(tmp_path))
        assert not os.path.exists(qmp_lock_path(4, "u", str(tmp_path)))
        QmpLock(qmp_lock_path(4, "u", str(tmp_path))).acquire(Deadline(0.1)).release()
    finally:
        shutil.rmtree(d)


def echo(req, send):
    send({"return": {"cmd": req["execute"]}, "id": req["id"]})


def record_runstates(monkeypatch, cli):
    """The states ``cli`` goes through, from its one place of transition."""
    seen = []
    original = cli._set_runstate   # pylint: disable=protected-access

    def spy(new):
        original(new)
        seen.append(new)
    monkeypatch.setattr(cli, "_set_runstate", spy)
    return seen


# -- Runstate -------------------------------------------------------------------

def test_runstate_of_a_client_from_idle_to_closed(fake, monkeypatch):
    srv = fake(echo)
    cli = QmpClient(srv.path, timeout=2)
    seen = record_runstates(monkeypatch, cli)
    assert cli.runstate is Runstate.IDLE and not cli.connected
    cli.connect()
    assert seen == [Runstate.CONNECTING, Runstate.RUNNING] and cli.connected
    assert cli.execute("query-status") == {"cmd": "query-status"}
    cli.close()
    assert seen[2:] == [Runstate.DISCONNECTING, Runstate.CLOSED] and not cli.connected
    cli.close()                                         # idempotent: no transition
    assert len(seen) == 4


def test_methods_refuse_on_a_client_that_is_not_running_naming_the_state(fake):
    srv = fake(echo)
    cli = QmpClient(srv.path, timeout=2)
    with pytest.raises(QmpConnectionError) as exc:
        cli.execute("query-status")
    assert exc.value.details["state"] == "idle" and "not connected yet" in exc.value.msg
    assert srv.requests == []
    cli.connect()
    with pytest.raises(QmpConnectionError) as exc:
        cli.connect()
    assert exc.value.details["state"] == "running"
    cli.close()
    for call in (lambda: cli.execute("query-status"), cli.query_pci, lambda: cli.device_del("x"),
                 lambda: cli.wait_event("DEVICE_DELETED", deadline=Deadline(0.1)), cli.connect):
        with pytest.raises(QmpConnectionError) as exc:
            call()
        assert exc.value.details["state"] == "closed" and "is closed" in exc.value.msg
        assert exc.value.details["socket"] == srv.path
    with pytest.raises(QmpConnectionError):
        with cli:
            pass
    assert [r["execute"] for r in srv.requests] == ["qmp_capabilities"]


def test_a_failed_connect_returns_to_idle_and_may_be_retried(fake, monkeypatch):
    srv = fake(echo)
    cli = QmpClient(srv.path, timeout=2)
    seen = record_runstates(monkeypatch, cli)
    os.rename(srv.path, srv.path + ".away")
    with pytest.raises(QmpConnectionError) as exc:
        cli.connect()
    assert exc.value.details["errno"] == "ENOENT"
    assert cli.runstate is Runstate.IDLE
    assert seen == [Runstate.CONNECTING, Runstate.DISCONNECTING, Runstate.IDLE]
    os.rename(srv.path + ".away", srv.path)
    cli.connect()
    assert cli.execute("x") == {"cmd": "x"}
    cli.close()


def test_eof_before_the_greeting_leaves_the_client_idle(fake):
    srv = fake(echo)
    srv._serve = lambda conn: None   # pylint: disable=protected-access  # accept, then hang up at once
    cli = QmpClient(srv.path, timeout=2)
    with pytest.raises(QmpConnectionError) as exc:
        cli.connect()
    assert "greeting" in exc.value.msg and cli.runstate is Runstate.IDLE


def test_a_connection_that_breaks_while_running_ends_closed(fake):
    def handler(req, send):
        return "close" if req["execute"] == "die" else echo(req, send)
    srv = fake(handler)
    cli = QmpClient(srv.path, timeout=2)
    cli.connect()
    with pytest.raises(QmpConnectionError) as exc:
        cli.execute("die")
    assert "QEMU gone?" in exc.value.msg and exc.value.details["command"] == "die"
    assert cli.runstate is Runstate.CLOSED
    with pytest.raises(QmpConnectionError) as exc:
        cli.execute("query-status")
    assert exc.value.details["state"] == "closed"


# -- deadlines ------------------------------------------------------------------

def test_late_reply_is_dropped_and_the_connection_stays_usable(fake):
    late_sent = threading.Event()

    def handler(req, send):
        if req["execute"] in ("slow", "slow-error"):
            def answer():
                time.sleep(0.5)
                if req["execute"] == "slow":
                    send({"return": {"cmd": "slow"}, "id": req["id"]})
                else:
                    send({"error": {"class": "GenericError", "desc": "too late"}, "id": req["id"]})
                late_sent.set()
            threading.Thread(target=answer, daemon=True).start()
            return None
        late_sent.wait(5)          # the late reply is on the wire before this one
        late_sent.clear()
        return echo(req, send)
    srv = fake(handler)
    with QmpClient(srv.path, timeout=2) as cli:
        for slow in ("slow", "slow-error"):
            with pytest.raises(DeadlineExceeded) as exc:
                cli.execute(slow, deadline=Deadline(0.2))
            assert exc.value.details["sent"] is True and exc.value.details["command"] == slow
            assert cli.execute("fast") == {"cmd": "fast"}
        assert cli.late_replies == 2 and cli.runstate is Runstate.RUNNING


def test_a_command_past_its_deadline_is_not_sent(fake):
    srv = fake(echo)
    with QmpClient(srv.path, timeout=2) as cli:
        spent = Deadline(0.01)
        time.sleep(0.02)
        with pytest.raises(DeadlineExceeded) as exc:
            cli.device_add_passthrough("03:00.0", deadline=spent)
        assert exc.value.details["sent"] is False and exc.value.details["command"] == "device_add"
        assert [r["execute"] for r in srv.requests] == ["qmp_capabilities"]
        assert cli.connected


def test_one_deadline_bounds_several_commands(fake):
    def handler(req, send):
        time.sleep(0.3)
        echo(req, send)
    srv = fake(handler)
    with QmpClient(srv.path, timeout=5) as cli:
        budget = Deadline(0.5, "two commands")
        t0 = time.monotonic()
        assert cli.execute("one", deadline=budget) == {"cmd": "one"}
        with pytest.raises(DeadlineExceeded) as exc:
            cli.execute("two", deadline=budget)
        assert time.monotonic() - t0 < 0.9
        assert exc.value.details["timeout"] == 0.5 and 0.1 <= exc.value.details["waited"] < 0.4


def test_a_deadline_must_be_a_deadline(fake):
    srv = fake(echo)
    with QmpClient(srv.path, timeout=2) as cli:
        with pytest.raises(TypeError, match="Deadline"):
            cli.execute("x", deadline=5)
        with pytest.raises(TypeError):
            QmpLock(qmp_lock_path(1, "u", srv.dir)).acquire(5)


# -- errors name the domain ------------------------------------------------------

def _session_handler(req, send):
    if req["execute"] == "slow":
        return None
    if req["execute"] == "die":
        return "close"
    if req["execute"] == "bad":
        send({"error": {"class": "GenericError", "desc": "no"}, "id": req["id"]})
        return None
    return echo(req, send)


def test_session_errors_name_the_domain(fake, tmp_path):
    srv = fake(_session_handler, name="qmp-libxl-4")
    label = "win1 (domid 4)"

    def session(**kw):
        return QmpSession.open(4, "u", Deadline(2), qmp_dir=srv.dir, userdata_dir=str(tmp_path), label=label, **kw)

    with session() as qmp:
        assert qmp.label == label and qmp.who == "QEMU of win1 (domid 4)"
        with pytest.raises(DeadlineExceeded) as exc:
            qmp.execute("slow", deadline=Deadline(0.2))
        assert label in exc.value.msg and "'slow'" in exc.value.msg
        assert {k: exc.value.details[k] for k in ("domain", "socket", "command")} == {
            "domain": 4, "socket": srv.path, "command": "slow"}
        assert exc.value.details["waited"] >= 0.15
        with pytest.raises(QmpError) as exc:
            qmp.execute("bad", {"x": 1})
        assert exc.value.msg == "QEMU of win1 (domid 4) refused 'bad': no (GenericError)"
        assert exc.value.details["domain"] == 4 and exc.value.details["arguments"] == {"x": 1}
        assert exc.value.details["waited"] >= 0 and not exc.value.is_duplicate_id
        with pytest.raises(QmpConnectionError) as exc:
            qmp.execute("die")                      # QEMU dies on the command
        assert label in exc.value.msg and "QEMU gone?" in exc.value.msg
        assert exc.value.details["domain"] == 4 and exc.value.details["command"] == "die"
        assert not qmp.lock.held                    # a broken session lets the lock go
    # Default label: the domid.
    with QmpSession.open(4, "u", Deadline(2), qmp_dir=srv.dir, userdata_dir=str(tmp_path)) as qmp:
        assert qmp.label == "domid 4"
        with pytest.raises(QmpError, match=r"^QEMU of domid 4 refused"):
            qmp.execute("bad")


def test_session_missing_refused_and_locked_name_the_domain(fake, tmp_path):
    d = tempfile.mkdtemp(prefix="sd")
    try:
        with pytest.raises(QmpConnectionError) as exc:
            QmpSession.open(6, "u", Deadline(2), qmp_dir=d, userdata_dir=str(tmp_path), label="web (domid 6)")
        assert "qmp-libxl-6 of web (domid 6) does not exist" in exc.value.msg
        assert exc.value.details == {"domain": 6, "socket": os.path.join(d, "qmp-libxl-6"), "errno": "ENOENT"}
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.join(d, "qmp-libxl-6"))
        s.close()                                   # QEMU killed: the socket file stays
        with pytest.raises(QmpConnectionError) as exc:
            QmpSession.open(6, "u", Deadline(2), qmp_dir=d, userdata_dir=str(tmp_path), label="web (domid 6)")
        assert "web (domid 6)" in exc.value.msg and "QEMU dead?" in exc.value.msg
        assert exc.value.details["errno"] == "ECONNREFUSED" and exc.value.details["domain"] == 6
    finally:
        shutil.rmtree(d)
    srv = fake(echo, name="qmp-libxl-7")
    proc = _holder(qmp_lock_path(7, "u", str(tmp_path)), 2.0)
    try:
        with pytest.raises(DeadlineExceeded) as exc:
            QmpSession.open(7, "u", Deadline(0.3), qmp_dir=srv.dir, userdata_dir=str(tmp_path), label="db (domid 7)")
        assert exc.value.msg.startswith("QMP lock of db (domid 7): lock ")
        assert exc.value.details["domain"] == 7 and exc.value.details["lock"] == qmp_lock_path(7, "u", str(tmp_path))
    finally:
        proc.wait(timeout=10)


def test_session_connect_needs_its_lock(fake, tmp_path):
    srv = fake(echo, name="qmp-libxl-8")
    session = QmpSession(srv.path, QmpLock(qmp_lock_path(8, "u", str(tmp_path))), domid=8)
    with pytest.raises(QmpConnectionError, match="without its QMP lock"):
        session.connect()
    assert srv.requests == []


# -- duplicate ids ----------------------------------------------------------------

def test_is_duplicate_id_knows_both_qemu_texts(fake):
    texts = {"new": ("GenericError", "Duplicate device ID 'pci-pt-03_00.0'"),
             "old": ("GenericError", "Duplicate ID 'pci-pt-03_00.0' for device"),
             "object": ("GenericError", "Duplicate ID 'pci-pt-03_00.0' for object"),
             "class": ("DeviceNotFound", "Duplicate device ID 'pci-pt-03_00.0'"),
             "other": ("GenericError", "PCI: slot 4 function 0 not available for xen-pci-passthrough")}

    def handler(req, send):
        klass, desc = texts[req["arguments"]["id"]]
        send({"error": {"class": klass, "desc": desc}, "id": req["id"]})
    srv = fake(handler)
    with QmpClient(srv.path, timeout=2) as cli:
        found = {}
        for key in texts:
            with pytest.raises(QmpError) as exc:
                cli.execute("device_add", {"driver": "x", "id": key})
            found[key] = (exc.value.is_duplicate_id, exc.value.duplicate_id)
    assert found == {"new": (True, "pci-pt-03_00.0"), "old": (True, "pci-pt-03_00.0"), "object": (False, None),
                     "class": (False, None), "other": (False, None)}
    assert duplicate_id_of(ValueError("Duplicate device ID 'x'")) is None


XENSIM_HVM = """
name: qmp-client
devices:
  - {bdf: "0000:00:10.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback}
domains:
  - {domid: 5, name: hvm1, type: hvm, state: running, device_model: dom0, qemu: {machine: pc, unplug: ack}}
"""


def _xensim_session(host, deadline=None):
    return QmpSession.open(5, host.scenario.domain(5).uuid, deadline or Deadline(5), qmp_dir=host.paths["qmp_dir"],
                           userdata_dir=host.paths["userdata_dir"], label="hvm1 (domid 5)")


def test_is_duplicate_id_against_xensim(sim):
    host = sim(XENSIM_HVM)
    with _xensim_session(host) as qmp:
        assert qmp.device_add_passthrough(Bdf.parse("00:10.0"), deadline=Deadline(2)) == "pci-pt-00_10.0"
        with pytest.raises(QmpError) as exc:
            qmp.device_add_passthrough("0000:00:10.0", vslot=9)
        assert exc.value.is_duplicate_id and exc.value.duplicate_id == "pci-pt-00_10.0"
        assert exc.value.desc == "Duplicate device ID 'pci-pt-00_10.0'"
        assert "hvm1 (domid 5)" in exc.value.msg and exc.value.details["domain"] == 5
        # Once unplugged, the id is free again.
        assert qmp.remove_device("pci-pt-00_10.0", Deadline(5)) == "event"
        qmp.device_add_passthrough("0000:00:10.0")


def test_xensim_dead_qemu_and_timeout_name_the_domain(sim):
    host = sim(XENSIM_HVM)
    hang = host.faults.add("qemu.command", "hang", domid=5, command="query-status")
    with _xensim_session(host) as qmp:
        with pytest.raises(DeadlineExceeded) as exc:
            qmp.query_status(deadline=Deadline(0.3))
        assert "hvm1 (domid 5)" in exc.value.msg and exc.value.details["command"] == "query-status"
        assert exc.value.details["domain"] == 5
    host.faults.remove(hang)      # a hang holds the monitor until its rule goes
    host.faults.add("qemu.dead", "close", domid=5, command="query-pci")
    with _xensim_session(host) as qmp:
        with pytest.raises(QmpConnectionError) as exc:
            qmp.query_pci()
        assert "hvm1 (domid 5)" in exc.value.msg and exc.value.details["command"] == "query-pci"
        assert qmp.runstate is Runstate.CLOSED
    with pytest.raises(QmpConnectionError) as exc:
        _xensim_session(host)
    assert exc.value.details["errno"] == "ECONNREFUSED" and "hvm1 (domid 5)" in exc.value.msg

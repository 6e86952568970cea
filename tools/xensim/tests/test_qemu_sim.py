"""The simulated device models (xensim.qemu) answered by two independent clients:
the collection's own (plugins/module_utils/_qmp.py) and qemu.qmp's legacy sync
API; and the simulator's error texts checked against a real QEMU 7.2 for the
same situations (differential test, skipped loudly without qemu-system-x86_64).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from xensim import scenario as scenario_mod
from xensim.faults import Faults
from xensim.qemu import QEMU_ERRORS, QemuFarm
from xensim.xenstore.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _import_client():
    """The collection's QMP client, imported as ansible-test would (via a
    throwaway ansible_collections/xen/pci tree pointing at this checkout)."""
    tree = tempfile.mkdtemp(prefix="acqmp-")
    # Only a symlink inside: gone when the tests end (the imports stay loaded).
    atexit.register(shutil.rmtree, tree, True)
    os.makedirs(os.path.join(tree, "ansible_collections", "xen"))
    os.symlink(ROOT, os.path.join(tree, "ansible_collections", "xen", "pci"))
    sys.path.insert(0, tree)
    from ansible_collections.xen.pci.plugins.module_utils import _deadline, _errors, _qmp  # pylint: disable=import-outside-toplevel
    return _qmp, _errors, _deadline


_qmp, _errors, _deadline = _import_client()
Deadline = _deadline.Deadline
QmpClient, QmpSession = _qmp.QmpClient, _qmp.QmpSession
QmpError, QmpConnectionError, DeadlineExceeded = _errors.QmpError, _errors.QmpConnectionError, _errors.DeadlineExceeded

BASE = """
name: qemu-test
devices:
  - {bdf: "0000:03:00.0", vendor: 0x8086, device: 0x10d3, class: 0x020000, driver: pciback,
     resources: [[0xf7c00000, 0xf7c1ffff, 0x40200], [0, 0, 0], [0xe000, 0xe01f, 0x40101]], irq: 16}
  - {bdf: "0000:04:00.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback}
  - {bdf: "0000:05:00.0", vendor: 0x1b36, device: 0x0005, class: 0x00ff00, driver: pciback}
domains:
"""


class MiniHost:
    """The parts of SimHost a component uses (docs/xensim.md "Components"),
    with the loop in a background thread; the store is the real xensim Store."""

    def __init__(self, domains_yaml: str):
        self.scenario = scenario_mod.loads(BASE + textwrap.dedent(domains_yaml))
        self.faults = Faults(self.scenario.faults)
        self.store = Store()
        self.transitions: list = []
        self.state_dir = tempfile.mkdtemp(prefix="qsim-")    # short: AF_UNIX path limit
        self.paths = {"qmp_dir": os.path.join(self.state_dir, "run", "xen"),
                      "userdata_dir": os.path.join(self.state_dir, "var", "lib", "xen")}
        os.makedirs(self.paths["userdata_dir"])
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.qemu = QemuFarm(self)
        self.call(self.qemu.start())

    def call(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def on_loop(self, fn, *args):
        async def run():
            return fn(*args)
        return self.call(run())

    def uuid(self, domid):
        return self.scenario.domain(domid).uuid

    def session(self, domid, timeout=5):
        return QmpSession.open(domid, self.uuid(domid), Deadline(timeout), qmp_dir=self.paths["qmp_dir"],
                               userdata_dir=self.paths["userdata_dir"])

    def stop(self):
        try:
            self.call(self.qemu.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            shutil.rmtree(self.state_dir, ignore_errors=True)


@pytest.fixture
def sim():
    hosts = []

    def start(domains_yaml):
        host = MiniHost(domains_yaml)
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        host.stop()


HVM = """
  - {domid: 3, name: win1, type: hvm, state: running, device_model: dom0,
     qemu: {machine: pc, unplug: %s, unplug_delay: 0.5}}
"""


def err(key, **fmt):
    klass, desc = QEMU_ERRORS[key]
    return klass, desc.format(**fmt)


# ------------------------------------------------------------------ our client

def test_our_client_attach_find_detach(sim):
    host = sim(HVM % "ack")
    with host.session(3) as qmp:
        assert qmp.qemu_version[0] == 7
        assert qmp.query_status() == {"status": "running", "singlestep": False, "running": True}
        base = {(d.slot, d.function): (d.vendor_id, d.device_id) for d in qmp.query_pci()}
        assert base == {(0, 0): (0x8086, 0x1237), (1, 0): (0x8086, 0x7000), (1, 1): (0x8086, 0x7010),
                        (1, 3): (0x8086, 0x7113), (2, 0): (0x5853, 0x0001), (3, 0): (0x1013, 0x00B8)}

        qid = qmp.device_add_passthrough("0000:03:00.0")
        assert qid == "pci-pt-03_00.0"
        dev = qmp.find_device(qid)
        assert (dev.bus, dev.slot, dev.function) == (0, 4, 0)              # first free slot
        assert (dev.vendor_id, dev.device_id, dev.class_code, dev.class_desc) == (0x8086, 0x10D3, 0x0200, "Ethernet controller")
        regions = [dict(r) for r in dev.regions]
        assert {"bar": 0, "size": 0x20000, "type": "memory"}.items() <= regions[0].items()
        assert {"bar": 2, "size": 0x20, "type": "io"}.items() <= regions[1].items()

        qmp.device_add_passthrough("04:00.0", vslot=7, permissive=True)
        assert qmp.find_device("pci-pt-04_00.0").devfn == 7 << 3
        assert host.qemu.devices(3) == [
            {"id": "pci-pt-03_00.0", "hostaddr": "0000:03:00.0", "slot": 4, "function": 0, "devfn": 0x20,
             "permissive": False, "unplug_pending": False, "coldplug": False},
            {"id": "pci-pt-04_00.0", "hostaddr": "0000:04:00.0", "slot": 7, "function": 0, "devfn": 0x38,
             "permissive": True, "unplug_pending": False, "coldplug": False}]
        # What reached QEMU is libxl's argument set.
        adds = [c for c in host.qemu.commands(3) if c[1] == "device_add"]
        assert adds[1][2] == {"driver": "xen-pci-passthrough", "id": "pci-pt-04_00.0", "hostaddr": "0000:04:00.0",
                              "addr": "7.0", "permissive": True}

        assert qmp.remove_device("pci-pt-03_00.0", Deadline(5)) == "event"
        assert qmp.find_device("pci-pt-03_00.0") is None
        assert [d["id"] for d in host.qemu.devices(3)] == ["pci-pt-04_00.0"]
        assert qmp.remove_device("pci-pt-03_00.0", Deadline(5)) == "absent"
    lock = _qmp.qmp_lock_path(3, host.uuid(3), host.paths["userdata_dir"])
    assert not os.path.exists(lock)


def test_unplug_never_is_bounded_and_delay_completes(sim):
    host = sim(HVM % "never" + """
  - {domid: 5, name: win2, type: hvm, device_model: dom0, qemu: {machine: pc, unplug: delay, unplug_delay: 0.5}}
""")
    with host.session(3) as qmp:
        qid = qmp.device_add_passthrough("0000:03:00.0")
        qmp.device_del(qid)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded) as exc:
            qmp.wait_device_gone(qid, Deadline(1.0), poll=0.2)
        assert 0.9 <= time.monotonic() - t0 < 3
        assert qid in exc.value.msg
        assert host.qemu.devices(3)[0]["unplug_pending"] is True
        with pytest.raises(QmpError) as exc2:
            qmp.device_del(qid)
        assert (exc2.value.error_class, exc2.value.desc) == err("unplug_pending", id=qid)
        # The guest finally ejects: the event reaches the connected client.
        host.on_loop(host.qemu.model(3).acknowledge_unplug, qid)
        assert qmp.wait_device_gone(qid, Deadline(2)) == "event"
    with host.session(5) as qmp:
        qid = qmp.device_add_passthrough("0000:04:00.0")
        qmp.device_del(qid)
        t0 = time.monotonic()
        assert qmp.wait_device_gone(qid, Deadline(5), poll=2) == "event"
        assert 0.45 <= time.monotonic() - t0 < 2


def test_a_pending_unplug_may_be_asked_again_once_qemus_window_has_passed(sim, monkeypatch):
    """Real Xen's qemu-xen 7.2 refuses a second device_del while the first is
    pending, and takes it (``{}``) once its 5 s window has passed; the
    window is shortened here."""
    from xensim import qemu as sim_qemu
    monkeypatch.setattr(sim_qemu, "UNPLUG_REPEAT_AFTER", 0.3)
    host = sim(HVM % "never")
    with host.session(3) as qmp:
        qid = qmp.device_add_passthrough("0000:03:00.0")
        qmp.device_del(qid)
        with pytest.raises(QmpError) as exc:
            qmp.device_del(qid)
        assert (exc.value.error_class, exc.value.desc) == err("unplug_pending", id=qid)
        time.sleep(0.4)
        assert qmp.device_del(qid) in (None, {})
        assert host.qemu.devices(3)[0]["unplug_pending"] is True
        with pytest.raises(QmpError):
            qmp.device_del(qid)


STUB = """
  - {domid: 3, name: win1, type: hvm, state: creating, device_model: stubdom, stubdom: 4}
  - {domid: 4, name: win1-dm, type: pv, state: running, target: 3, pcifront: true}
"""


def test_stubdom_device_must_be_exported_to_the_stubdom(sim):
    host = sim(STUB)
    with host.session(3) as qmp:
        with pytest.raises(QmpError) as exc:
            qmp.device_add_passthrough("0000:03:00.0", permissive=True)
        assert (exc.value.error_class, exc.value.desc) == err("host_open", hostaddr="0000:03:00.0")
        be = "/local/domain/0/backend/pci/4/0"
        host.on_loop(host.store.seed, be + "/num_devs", b"1")
        host.on_loop(host.store.seed, be + "/dev-0", b"0000:03:00.0")
        host.on_loop(host.store.seed, be + "/state-0", b"1")
        with pytest.raises(QmpError):                      # attached but not yet exported
            qmp.device_add_passthrough("0000:03:00.0", permissive=True)
        host.on_loop(host.store.seed, be + "/state-0", b"3")
        qmp.device_add_passthrough("0000:03:00.0", permissive=True)
        assert qmp.find_device("pci-pt-03_00.0").slot == 4
        # The guest is being created: its QEMU has not started the CPUs.
        assert qmp.query_status()["status"] == "prelaunch"


def test_device_add_fault_fails_n_times_then_works(sim):
    host = sim(HVM % "ack")
    host.faults.add("qemu.device_add", "error", times=2, domid=3)
    with host.session(3) as qmp:
        for _unused in range(2):
            with pytest.raises(QmpError) as exc:
                qmp.device_add_passthrough("0000:05:00.0")
            assert exc.value.desc == err("host_open", hostaddr="0000:05:00.0")[1]
        qmp.device_add_passthrough("0000:05:00.0")
    assert [d["id"] for d in host.qemu.devices(3)] == ["pci-pt-05_00.0"]


def test_dead_qemu_and_missing_socket(sim):
    host = sim(HVM % "ack")
    host.faults.add("qemu.dead", "close", domid=3, command="query-pci")
    with host.session(3) as qmp:
        with pytest.raises(QmpConnectionError) as exc:
            qmp.query_pci()
        assert "query-pci" in exc.value.msg
    path = host.qemu.socket_path(3)
    assert os.path.exists(path)                       # left behind, as by a killed QEMU
    with pytest.raises(QmpConnectionError) as exc:
        host.session(3)
    assert exc.value.details["errno"] == "ECONNREFUSED"
    with pytest.raises(QmpConnectionError):
        QmpSession.open(9, "00000000-0000-0000-0000-000000000009", Deadline(2), qmp_dir=host.paths["qmp_dir"],
                        userdata_dir=host.paths["userdata_dir"])


def test_slow_device_add_completes_late_and_is_then_listed(sim):
    host = sim(HVM % "ack")
    host.faults.add("qemu.command", "delay", seconds=1.0, domid=3, command="device_add", times=1)
    with host.session(3) as qmp:
        with pytest.raises(DeadlineExceeded):
            qmp.device_add_passthrough("0000:03:00.0", deadline=Deadline(0.2))
    # The client gave up; QEMU finishes the command all the same.
    with host.session(3, timeout=10) as qmp:         # greeted once the first client has left
        dev = qmp.find_device("pci-pt-03_00.0")
        assert dev is not None and (dev.slot, dev.vendor_id) == (4, 0x8086)
    assert [d["id"] for d in host.qemu.devices(3)] == ["pci-pt-03_00.0"]


def test_command_hang_until_the_fault_is_removed(sim):
    host = sim(HVM % "ack")
    rule = host.faults.add("qemu.command", "hang", domid=3, command="query-pci")
    with host.session(3) as qmp:
        with pytest.raises(DeadlineExceeded):
            qmp.query_pci(deadline=Deadline(0.3))
        with pytest.raises(DeadlineExceeded):      # the monitor answers nothing meanwhile
            qmp.query_status(deadline=Deadline(0.3))
    host.faults.remove(rule)
    with host.session(3, timeout=10) as qmp:
        assert qmp.query_status()["running"] is True
        assert len(qmp.query_pci()) == 6


def test_unplug_fault_never_overrides_the_scenario(sim):
    host = sim(HVM % "ack")
    host.faults.add("qemu.unplug", "never", domid=3, name="pci-pt-03_00.0")
    with host.session(3) as qmp:
        stuck = qmp.device_add_passthrough("0000:03:00.0")
        other = qmp.device_add_passthrough("0000:04:00.0")
        qmp.device_del(stuck)
        qmp.device_del(other)
        assert qmp.wait_device_gone(other, Deadline(5)) == "event"      # ack, as the scenario says
        with pytest.raises(DeadlineExceeded):
            qmp.wait_device_gone(stuck, Deadline(0.5), poll=0.1)
    assert host.qemu.devices(3) == [
        {"id": "pci-pt-03_00.0", "hostaddr": "0000:03:00.0", "slot": 4, "function": 0, "devfn": 0x20,
         "permissive": False, "unplug_pending": True, "coldplug": False}]


def test_one_client_at_a_time(sim):
    host = sim(HVM % "ack")
    first = QmpClient(host.qemu.socket_path(3), timeout=2)
    first.connect()
    second = QmpClient(host.qemu.socket_path(3), timeout=0.5)
    with pytest.raises(DeadlineExceeded) as exc:
        second.connect()
    assert "greeting" in exc.value.msg
    first.close()
    second.connect(Deadline(2))
    assert second.query_status()["running"] is True
    second.close()


def test_raw_protocol_greeting_and_pre_negotiation(sim):
    host = sim(HVM % "ack")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(host.qemu.socket_path(3))
        f = s.makefile("rwb", buffering=0)
        line = f.readline()
        assert line.endswith(b"\r\n")
        greeting = json.loads(line)
        assert greeting["QMP"]["capabilities"] == ["oob"] and greeting["QMP"]["version"]["qemu"]["major"] == 7

        def ask(raw):
            f.write(raw.encode() + b"\n")
            return json.loads(f.readline())

        assert ask('{"execute": "query-pci", "id": 1}') == {"id": 1, "error": dict(zip(("class", "desc"), err("need_capabilities")))}
        assert ask('{"execute": "qmp_capabilities", "id": 2}') == {"return": {}, "id": 2}
        assert ask("garbage") == {"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword 'garbage'"}}
        assert ask('{"execute": "query-status"}') == {"return": {"status": "running", "singlestep": False, "running": True}}


def test_q35_refuses_root_bus_hotplug_and_lists_coldplugged(sim):
    host = sim("""
  - {domid: 6, name: q, type: hvm, device_model: dom0, qemu: {machine: q35}, devices: ["0000:04:00.0"]}
""")
    with host.session(6) as qmp:
        devs = {(d.slot, d.function): d for d in qmp.query_pci()}
        assert devs[(31, 0)].class_desc == "ISA bridge" and devs[(0, 0)].device_id == 0x29C0
        assert devs[(2, 0)].qdev_id == "pci-pt-04_00.0"          # coldplugged at creation
        with pytest.raises(QmpError) as exc:
            qmp.device_add_passthrough("0000:03:00.0")
        assert exc.value.desc == err("bus_no_hotplug", bus="pcie.0")[1]


# ------------------------------------------------------------------ qemu.qmp as a second client

def _in_thread(fn, timeout=20):
    """Run ``fn`` in a thread with a bounded join: qemu.qmp's legacy connect() has no timeout."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:   # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail("qemu.qmp client did not finish within %s s" % timeout)
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_qemu_qmp_legacy_client_against_the_simulator(sim):
    legacy = pytest.importorskip("qemu.qmp.legacy", reason="qemu.qmp (PyPI) is not installed")
    from qemu.qmp import ExecuteError  # pylint: disable=import-outside-toplevel
    host = sim(HVM % "ack")
    path = host.qemu.socket_path(3)

    def scenario():
        mon = legacy.QEMUMonitorProtocol(path)
        mon.settimeout(5.0)   # float: the legacy API ignores non-float timeouts in places
        greeting = mon.connect(negotiate=True)
        try:
            out = {"greeting": greeting}
            out["add"] = mon.cmd("device_add", driver="xen-pci-passthrough", id="pci-pt-03_00.0",
                                 hostaddr="0000:03:00.0", addr="9.0")
            out["pci"] = mon.cmd("query-pci")
            try:
                mon.cmd("device_add", driver="xen-pci-passthrough", id="pci-pt-03_00.0", hostaddr="0000:03:00.0")
            except ExecuteError as exc:
                out["dup"] = (exc.error_class, exc.error.error.desc)
            out["del"] = mon.cmd("device_del", id="pci-pt-03_00.0")
            out["event"] = mon.pull_event(wait=5.0)
            out["raw"] = mon.cmd_obj({"execute": "nope", "id": "x"})
            return out
        finally:
            mon.close()

    out = _in_thread(scenario)
    assert out["greeting"]["QMP"]["version"]["qemu"]["major"] == 7
    assert out["add"] == {}
    devs = out["pci"][0]["devices"]
    pt = [d for d in devs if d["qdev_id"] == "pci-pt-03_00.0"]
    assert pt and pt[0]["slot"] == 9 and pt[0]["id"]["vendor"] == 0x8086
    assert out["dup"] == err("duplicate_id", id="pci-pt-03_00.0")
    assert out["del"] == {}
    assert out["event"]["event"] == "DEVICE_DELETED"
    assert out["event"]["data"] == {"device": "pci-pt-03_00.0", "path": "/machine/peripheral/pci-pt-03_00.0"}
    assert out["raw"] == {"id": "x", "error": dict(zip(("class", "desc"), err("command_not_found", command="nope")))}
    assert host.qemu.devices(3) == []


# ------------------------------------------------------------------ same situations, real QEMU vs simulator

# (name, machine, setup requests, probe request). "DRIVER" is xen-pci-passthrough for the
# simulator and e1000 for Debian's QEMU (which has no Xen passthrough); HOST adds a hostaddr
# for the simulator only.
SITUATIONS = [
    ("duplicate id", "pc", [{"execute": "device_add", "arguments": {"driver": "DRIVER", "id": "d1", "HOST": 1}}],
     {"execute": "device_add", "arguments": {"driver": "DRIVER", "id": "d1", "HOST": 1}}),
    ("bad driver", "pc", [], {"execute": "device_add", "arguments": {"driver": "no-such-device", "id": "d2"}}),
    ("slot in use by a base device", "pc", [],
     {"execute": "device_add", "arguments": {"driver": "DRIVER", "id": "d3", "addr": "1.0", "HOST": 1}}),
    ("slot in use by an added device", "pc",
     [{"execute": "device_add", "arguments": {"driver": "DRIVER", "id": "d4", "addr": "9.0", "HOST": 1}}],
     {"execute": "device_add", "arguments": {"driver": "DRIVER", "id": "d5", "addr": "9.0", "HOST": 2}}),
    ("function 0 occupied", "pc",
     [{"execute": "device_add", "arguments": {"driver": "DRIVER", "id": "d6", "addr": "9.0", "HOST": 1}}],
     {"execute": "device_add", "arguments": {"driver": "DRIVER", "id": "d7", "addr": "9.1", "HOST": 2}}),
    ("bad addr", "pc", [], {"execute": "device_add", "arguments": {"driver": "DRIVER", "id": "d8", "addr": "20.0", "HOST": 1}}),
    ("bad id", "pc", [], {"execute": "device_add", "arguments": {"driver": "DRIVER", "id": "bad id", "HOST": 1}}),
    ("missing driver", "pc", [], {"execute": "device_add", "arguments": {"id": "d9"}}),
    ("unknown property", "pc", [], {"execute": "device_add", "arguments": {"driver": "DRIVER", "id": "d10", "bogus": 1}}),
    ("unknown bus", "pc", [], {"execute": "device_add", "arguments": {"driver": "DRIVER", "id": "d11", "bus": "pci.7"}}),
    ("q35 root bus", "q35", [], {"execute": "device_add", "arguments": {"driver": "DRIVER", "id": "d12", "HOST": 1}}),
    ("device_del unknown", "pc", [], {"execute": "device_del", "arguments": {"id": "nope"}}),
    ("device_del without id", "pc", [], {"execute": "device_del", "arguments": {}}),
    ("unplug pending", "pc",
     [{"execute": "device_add", "arguments": {"driver": "DRIVER", "id": "d13", "HOST": 1}},
      {"execute": "device_del", "arguments": {"id": "d13"}}],
     {"execute": "device_del", "arguments": {"id": "d13"}}),
    ("unknown command", "pc", [], {"execute": "no-such-command"}),
    ("capabilities twice", "pc", [], {"execute": "qmp_capabilities"}),
    ("unexpected argument", "pc", [], {"execute": "query-pci", "arguments": {"x": 1}}),
    ("unexpected member", "pc", [], {"execute": "query-status", "foo": 1}),
    ("arguments not an object", "pc", [], {"execute": "query-status", "arguments": [1]}),
]
HOSTADDRS = {1: "0000:03:00.0", 2: "0000:04:00.0"}


def _render(req, real):
    req = json.loads(json.dumps(req))
    args = req.get("arguments")
    if isinstance(args, dict):
        if args.get("driver") == "DRIVER":
            args["driver"] = "e1000" if real else "xen-pci-passthrough"
        host = args.pop("HOST", None)
        if host and not real:
            args["hostaddr"] = HOSTADDRS[host]
    return req


class RawQmp:
    def __init__(self, path, negotiate=True):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        deadline = time.monotonic() + 5
        while True:   # QEMU creates the socket file (bind) a moment before it listens
            try:
                self.sock.connect(path)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.f = self.sock.makefile("rwb", buffering=0)
        json.loads(self.f.readline())
        if negotiate:
            assert "return" in self.ask({"execute": "qmp_capabilities"})

    def ask(self, req):
        self.f.write(json.dumps(dict(req, id=1)).encode() + b"\n")
        while True:
            msg = json.loads(self.f.readline())
            if "event" not in msg:
                return msg

    def close(self):
        self.f.close()
        self.sock.close()


def _run_situation(path, setup, probe, real):
    cli = RawQmp(path)
    try:
        for req in setup:
            reply = cli.ask(_render(req, real))
            assert "return" in reply, reply
        reply = cli.ask(_render(probe, real))
    finally:
        cli.close()
    assert "error" in reply, reply
    err_ = reply["error"]
    desc = err_["desc"].replace("e1000", "xen-pci-passthrough") if real else err_["desc"]
    return err_["class"], desc


@pytest.fixture(scope="module")
def real_qemu_sockets():
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed: cannot compare the simulator's QMP errors with real QEMU")
    procs, d = [], tempfile.mkdtemp(prefix="rq-")

    def start(machine):
        path = os.path.join(d, machine + str(len(procs)))
        proc = subprocess.Popen([qemu, "-machine", machine, "-nodefaults", "-nographic", "-display", "none", "-S",
                                 "-qmp", "unix:%s,server=on,wait=off" % path],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 15
        while not os.path.exists(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("real QEMU (%s) did not start" % machine)
            time.sleep(0.02)
        return path

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("name,machine,setup,probe", SITUATIONS, ids=[s[0] for s in SITUATIONS])
def test_simulator_errors_equal_real_qemu(sim, real_qemu_sockets, name, machine, setup, probe):
    host = sim("""
  - {domid: 3, name: g, type: hvm, device_model: dom0, qemu: {machine: %s, unplug: never}}
""" % machine)
    simulated = _run_situation(host.qemu.socket_path(3), setup, probe, real=False)
    real = _run_situation(real_qemu_sockets(machine), setup, probe, real=True)
    assert simulated == real, name
    # ...and the text is one of the constants of xensim.qemu.
    assert simulated[1] in {d.split("{", maxsplit=1)[0] for _k, d in QEMU_ERRORS.values()} or any(
        simulated[1].startswith(d.split("{", maxsplit=1)[0]) for _k, d in QEMU_ERRORS.values())


def test_missing_capabilities_text_equals_real_qemu(sim, real_qemu_sockets):
    host = sim(HVM % "ack")
    replies = []
    for path in (host.qemu.socket_path(3), real_qemu_sockets("pc")):
        cli = RawQmp(path, negotiate=False)
        try:
            replies.append(cli.ask({"execute": "query-pci"}))
        finally:
            cli.close()
    assert replies[0] == replies[1] == {"id": 1, "error": dict(zip(("class", "desc"), err("need_capabilities")))}


# ------------------------------------------------------------------ inside the real SimHost

def test_farm_inside_simhost():
    host_mod = pytest.importorskip("xensim.host", reason="xensim.host (SimHost) is not importable")
    scen = scenario_mod.loads(BASE + textwrap.dedent(HVM % "ack"))
    state_dir = tempfile.mkdtemp(prefix="qsh-")
    host = host_mod.SimHost(scen, state_dir, mount_sysfs=False)
    host.start()
    try:
        assert host.qemu is not None, host.warnings
        path = host.qemu.socket_path(3)
        assert path == os.path.join(host.paths["qmp_dir"], "qmp-libxl-3")
        with QmpSession.open(3, scen.domain(3).uuid, Deadline(5), qmp_dir=host.paths["qmp_dir"],
                             userdata_dir=host.paths["userdata_dir"]) as qmp:
            assert qmp.query_status()["running"] is True
            qmp.device_add_passthrough("0000:03:00.0", vslot=5)
            assert qmp.find_device("pci-pt-03_00.0").slot == 5
            host.pause(3)
            assert qmp.query_status()["status"] == "paused"
        assert [d["id"] for d in host.qemu.devices(3)] == ["pci-pt-03_00.0"]
    finally:
        host.stop()
        shutil.rmtree(state_dir, ignore_errors=True)

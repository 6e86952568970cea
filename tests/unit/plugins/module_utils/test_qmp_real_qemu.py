# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The QMP client against a real qemu-system-x86_64 (Debian's, QEMU 7.2), started without a guest.

Facts these tests rely on (observed with QEMU 7.2.22):
- ``-S`` keeps the machine in ``prelaunch``; QMP works fully.
- With ``-S`` the firmware never numbers bridge buses, so query-pci shows a
  ``pcie-root-port`` with no devices behind it: find devices behind root
  ports on a running machine (SeaBIOS without a disk just idles).
- q35 with ``ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off``: a device
  behind a ``pcie-root-port`` unplugs at once (no guest powered the slot)
  and QEMU sends ``DEVICE_DELETED``; pcie.0 itself refuses hotplug.
- pc (ACPI hotplug): ``device_del`` returns ``{}`` and the unplug waits for a
  guest that never comes.
- A second client's connect succeeds but it is greeted only when the first
  disconnects.
- A device_add whose id is taken, by a hotplugged device or one given with
  ``-device``, is refused with GenericError "Duplicate device ID '<id>'".
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid as uuidlib

import pytest

from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline
from ansible_collections.xen.pci.plugins.module_utils._errors import (
    DeadlineExceeded,
    QmpConnectionError,
    QmpError,
)
from ansible_collections.xen.pci.plugins.module_utils._qmp import (
    QmpClient,
    QmpLock,
    QmpSession,
    Runstate,
    qmp_lock_path,
    qmp_socket_path,
)

QEMU = shutil.which("qemu-system-x86_64")
if QEMU is None:
    pytest.skip("qemu-system-x86_64 is not installed (Debian package qemu-system-x86): "
                "the QMP client cannot be checked against real QEMU", allow_module_level=True)

START_TIMEOUT = 15.0
Q35_HOTPLUG = ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
               "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=4.0",
               "-device", "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2,addr=5.0"]


class RealQemu:
    """qemu-system-x86_64 with a QMP socket; started bounded, always killed."""

    def __init__(self, machine, extra=(), stopped=True, domid=None):
        self.dir = tempfile.mkdtemp(prefix="qmpq")   # short: AF_UNIX paths are limited to 107 bytes
        self.domid = domid
        self.path = qmp_socket_path(domid, self.dir) if domid is not None else os.path.join(self.dir, "qmp.sock")
        self.errlog = os.path.join(self.dir, "stderr")
        cmd = [QEMU, "-machine", machine, "-nodefaults", "-nographic", "-display", "none",
               "-qmp", "unix:%s,server=on,wait=off" % self.path]
        if stopped:
            cmd.append("-S")
        cmd.extend(extra)
        with open(self.errlog, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                with open(self.errlog, "rb") as err:
                    pytest.fail("QEMU did not create %s within %.0f s (rc=%s): %s"
                                % (self.path, START_TIMEOUT, self.proc.returncode, err.read().decode(errors="replace")))
            time.sleep(0.02)

    def client(self, timeout=5.0):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            cli = QmpClient(self.path, timeout=timeout)
            try:
                cli.connect()
                return cli
            except QmpConnectionError as exc:
                # QEMU creates the socket file (bind) a moment before it listens.
                if exc.details.get("errno") != "ECONNREFUSED" or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:   # pragma: no cover - SIGKILL does not fail
            pass

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def qemu():
    started = []

    def start(machine, extra=(), stopped=True, domid=None):
        q = RealQemu(machine, extra, stopped, domid)
        started.append(q)
        return q

    yield start
    for q in started:
        q.cleanup()


def test_handshake_and_status(qemu):
    q = qemu("pc")
    cli = q.client()
    try:
        assert cli.qemu_version is not None and cli.qemu_version[0] >= 7
        assert "capabilities" in cli.greeting
        assert cli.query_status() == {"status": "prelaunch", "singlestep": False, "running": False}
        with pytest.raises(QmpError) as exc:
            cli.execute("no-such-command")
        assert exc.value.error_class == "CommandNotFound"
        assert exc.value.desc == "The command no-such-command has not been found"
        with pytest.raises(QmpError) as exc:
            cli.execute("qmp_capabilities")
        assert exc.value.desc == "Capabilities negotiation is already complete, command ignored"
    finally:
        cli.close()


def test_query_pci_pc_base_devices(qemu):
    q = qemu("pc")
    with q.client() as cli:
        devs = {(d.bus, d.slot, d.function): d for d in cli.query_pci()}
    assert set(devs) == {(0, 0, 0), (0, 1, 0), (0, 1, 1), (0, 1, 3)}
    assert devs[(0, 0, 0)].class_code == 0x0600 and devs[(0, 0, 0)].class_desc == "Host bridge"
    assert (devs[(0, 0, 0)].vendor_id, devs[(0, 0, 0)].device_id) == (0x8086, 0x1237)   # i440FX
    assert (devs[(0, 1, 0)].vendor_id, devs[(0, 1, 0)].device_id) == (0x8086, 0x7000)   # PIIX3 ISA
    assert devs[(0, 1, 1)].class_desc == "IDE controller"
    assert all(d.qdev_id == "" for d in devs.values())


def test_query_pci_q35_flattens_devices_behind_root_ports(qemu):
    # Running (no -S): SeaBIOS numbers the root ports' buses, so query-pci nests.
    q = qemu("q35", Q35_HOTPLUG + ["-device", "pci-testdev,id=t1,bus=rp1"], stopped=False)
    with q.client() as cli:
        deadline = time.monotonic() + 10
        while True:
            t1 = cli.find_device("t1")
            if t1 is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)   # the firmware needs a moment to program the bridges
        devs = cli.query_pci()
    assert t1 is not None, "pci-testdev behind rp1 not listed: %r" % (devs,)
    rp1 = next(d for d in devs if d.qdev_id == "rp1")
    assert rp1.bridge_secondary_bus == t1.bus == 1
    assert (t1.slot, t1.function, t1.vendor_id, t1.device_id) == (0, 0, 0x1B36, 0x0005)
    base = {(d.slot, d.function): d.class_desc for d in devs if d.bus == 0 and d.qdev_id == ""}
    assert base == {(0, 0): "Host bridge", (31, 0): "ISA bridge", (31, 2): "SATA controller", (31, 3): "SMBus"}


def test_query_pci_q35_stopped_hides_devices_behind_bridges(qemu):
    q = qemu("q35", Q35_HOTPLUG + ["-device", "pci-testdev,id=t1,bus=rp1"], stopped=True)
    with q.client() as cli:
        devs = cli.query_pci()
    rp1 = next(d for d in devs if d.qdev_id == "rp1")
    assert rp1.bridge_secondary_bus == 0
    assert all(d.qdev_id != "t1" for d in devs)


def test_device_add_finds_slot_and_real_errors(qemu):
    q = qemu("pc")
    with q.client() as cli:
        cli.execute("device_add", {"driver": "e1000", "id": "nic0"})
        nic = cli.find_device("nic0")
        assert (nic.bus, nic.slot, nic.function) == (0, 2, 0)   # first free slot on a bare pc
        assert nic.class_desc == "Ethernet controller"
        cli.execute("device_add", {"driver": "pci-testdev", "id": "t5", "addr": "5.0"})
        assert cli.find_device("t5").devfn == 5 << 3

        with pytest.raises(QmpError) as exc:
            cli.execute("device_add", {"driver": "e1000", "id": "nic0"})
        assert (exc.value.error_class, exc.value.desc) == ("GenericError", "Duplicate device ID 'nic0'")
        assert exc.value.is_duplicate_id and exc.value.duplicate_id == "nic0"

        with pytest.raises(QmpError) as exc:
            cli.execute("device_add", {"driver": "e1000", "id": "nic1", "addr": "5.0"})
        assert exc.value.desc == "PCI: slot 5 function 0 not available for e1000, in use by pci-testdev,id=t5"

        # The libxl-shaped passthrough request: Debian's QEMU has no Xen passthrough.
        with pytest.raises(QmpError) as exc:
            cli.device_add_passthrough("0000:03:00.0", vslot=6, permissive=True)
        assert exc.value.error_class == "GenericError"
        assert exc.value.desc == "'xen-pci-passthrough' is not a valid device model name"
        assert exc.value.details["arguments"] == {"driver": "xen-pci-passthrough", "id": "pci-pt-03_00.0",
                                                  "hostaddr": "0000:03:00.0", "addr": "6.0", "permissive": True}

        with pytest.raises(QmpError) as exc:
            cli.device_del("nope")
        assert (exc.value.error_class, exc.value.desc) == ("DeviceNotFound", "Device 'nope' not found")
        # Still usable after errors.
        assert cli.query_status()["status"] == "prelaunch"


def _wait_listed(cli, qdev_id, timeout=10.0):
    """Wait until the firmware has numbered the bridge buses and ``qdev_id`` shows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dev = cli.find_device(qdev_id)
        if dev is not None:
            return dev
        time.sleep(0.1)
    pytest.fail("%s never appeared in query-pci" % qdev_id)


def test_device_del_q35_native_pcie_sends_device_deleted(qemu):
    q = qemu("q35", Q35_HOTPLUG, stopped=False)
    with q.client() as cli:
        with pytest.raises(QmpError) as exc:
            cli.execute("device_add", {"driver": "e1000", "id": "root0"})
        assert exc.value.desc == "Bus 'pcie.0' does not support hotplugging"
        cli.execute("device_add", {"driver": "pci-testdev", "id": "t1", "bus": "rp1"})
        cli.execute("device_add", {"driver": "e1000", "id": "t2", "bus": "rp2"})
        assert _wait_listed(cli, "t1").bus == 1
        assert _wait_listed(cli, "t2").bus == 2

        cli.device_del("t1")
        ev = cli.wait_event("DEVICE_DELETED", lambda e: e["data"].get("device") == "t1", deadline=Deadline(5))
        assert ev["data"] == {"device": "t1", "path": "/machine/peripheral/t1"}
        assert "seconds" in ev["timestamp"]
        assert cli.wait_device_gone("t1", Deadline(5)) in ("event", "query-pci")
        with pytest.raises(QmpError) as exc:
            cli.device_del("t1")
        assert exc.value.error_class == "DeviceNotFound"

        t0 = time.monotonic()
        assert cli.remove_device("t2", Deadline(10)) in ("event", "query-pci")
        assert time.monotonic() - t0 < 5
        assert cli.find_device("t2") is None
        assert cli.remove_device("t2", Deadline(2)) == "absent"   # idempotent


def test_unplug_never_completes_on_pc_times_out_naming_the_device(qemu):
    q = qemu("pc")
    with q.client() as cli:
        cli.execute("device_add", {"driver": "e1000", "id": "pci-pt-03_00.0"})
        cli.device_del("pci-pt-03_00.0")
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded) as exc:
            cli.wait_device_gone("pci-pt-03_00.0", Deadline(1.5), poll=0.3)
        waited = time.monotonic() - t0
        assert 1.4 <= waited < 4.0
        assert "pci-pt-03_00.0" in exc.value.msg and exc.value.details["device"] == "pci-pt-03_00.0"
        # A second device_del: QEMU says the unplug is pending; remove_device waits (and times out).
        with pytest.raises(QmpError) as exc2:
            cli.device_del("pci-pt-03_00.0")
        assert exc2.value.desc == "Device pci-pt-03_00.0 is already in the process of unplug"
        with pytest.raises(DeadlineExceeded):
            cli.remove_device("pci-pt-03_00.0", Deadline(0.8))
        assert cli.find_device("pci-pt-03_00.0") is not None


def test_killed_qemu_gives_connection_error(qemu):
    q = qemu("pc")
    cli = q.client()
    q.kill()
    with pytest.raises(QmpConnectionError) as exc:
        cli.query_pci()
    assert "query-pci" in exc.value.msg
    assert not cli.connected
    # The socket file stays behind; connecting to it is refused.
    assert os.path.exists(q.path)
    with pytest.raises(QmpConnectionError) as exc:
        QmpClient(q.path, timeout=2).connect()
    assert exc.value.details["errno"] == "ECONNREFUSED"


def test_missing_socket_fails_before_the_lock(tmp_path):
    uuid = str(uuidlib.uuid4())
    t0 = time.monotonic()
    with pytest.raises(QmpConnectionError) as exc:
        QmpSession.open(7, uuid, Deadline(5), qmp_dir=str(tmp_path), userdata_dir=str(tmp_path))
    assert time.monotonic() - t0 < 1
    assert exc.value.details["socket"] == str(tmp_path / "qmp-libxl-7")
    assert list(tmp_path.iterdir()) == []   # no lock file was created


def test_session_holds_libxl_lock_and_second_client_waits(qemu, tmp_path):
    q = qemu("pc", domid=9)
    uuid = str(uuidlib.uuid4())
    lockfile = qmp_lock_path(9, uuid, str(tmp_path))
    assert os.path.basename(lockfile) == "userdata-l.9.%s.qmp-socket-lock" % uuid
    q.client().close()   # QEMU is listening
    with QmpSession.open(9, uuid, Deadline(5), qmp_dir=q.dir, userdata_dir=str(tmp_path)) as qmp:
        assert os.path.exists(lockfile) and qmp.lock.held
        with pytest.raises(DeadlineExceeded):
            QmpLock(lockfile).acquire(Deadline(0.3))
        # QEMU accepts a second connection but does not greet it while we are connected.
        other = QmpClient(q.path, timeout=0.5)
        with pytest.raises(DeadlineExceeded) as exc:
            other.connect()
        assert "greeting" in exc.value.msg
        assert qmp.query_status()["status"] == "prelaunch"
    assert not os.path.exists(lockfile)   # unlinked on release, as libxl does
    with QmpSession.open(9, uuid, Deadline(5), qmp_dir=q.dir, userdata_dir=str(tmp_path)) as qmp:
        assert qmp.find_device("anything") is None


def test_duplicate_id_is_recognised_whatever_made_the_first_device(qemu):
    # Debian's QEMU has no xen-pci-passthrough: any device with an id shows the refusal.
    q = qemu("pc", ["-device", "pci-testdev,id=cold"])
    with q.client() as cli:
        cli.execute("device_add", {"driver": "pci-testdev", "id": "x"})
        for taken in ("x", "cold"):           # hotplugged, and given on the command line
            with pytest.raises(QmpError) as exc:
                cli.execute("device_add", {"driver": "pci-testdev", "id": taken})
            assert exc.value.is_duplicate_id and exc.value.duplicate_id == taken, exc.value.desc
        with pytest.raises(QmpError) as exc:
            cli.execute("device_add", {"driver": "pci-testdev", "id": "y", "addr": "1.0"})
        assert not exc.value.is_duplicate_id          # slot in use: another refusal
        with pytest.raises(QmpError) as exc:
            cli.device_add_passthrough("0000:00:10.0")
        assert not exc.value.is_duplicate_id          # no such driver here
        assert cli.find_device("x") is not None and cli.connected


def test_session_errors_name_the_domain_on_real_qemu(qemu, tmp_path):
    q = qemu("pc", domid=11)
    uuid = str(uuidlib.uuid4())
    q.client().close()   # QEMU is listening
    qmp = QmpSession.open(11, uuid, Deadline(5), qmp_dir=q.dir, userdata_dir=str(tmp_path), label="win7 (domid 11)")
    try:
        with pytest.raises(QmpError) as exc:
            qmp.device_del("nope")
        assert exc.value.msg == "QEMU of win7 (domid 11) refused 'device_del': Device 'nope' not found (DeviceNotFound)"
        assert exc.value.details["domain"] == 11 and exc.value.details["command"] == "device_del"
        q.kill()
        with pytest.raises(QmpConnectionError) as exc:
            qmp.query_pci()
        assert "win7 (domid 11)" in exc.value.msg and "QEMU gone?" in exc.value.msg
        assert exc.value.details["domain"] == 11 and exc.value.details["socket"] == q.path
        assert qmp.runstate is Runstate.CLOSED and not qmp.lock.held
    finally:
        qmp.close()
    with pytest.raises(QmpConnectionError) as exc:
        QmpSession.open(11, uuid, Deadline(2), qmp_dir=q.dir, userdata_dir=str(tmp_path), label="win7 (domid 11)")
    assert "win7 (domid 11)" in exc.value.msg and exc.value.details["errno"] == "ECONNREFUSED"

"""Replay the toolstack's side of real-xen-access-log.txt against the simulator.

The real log (Xen 4.17, oxenstored's access log) records, in order, what xl
wrote (A<n>), what dom0's xen-pciback wrote (D0) and what the guest's
xen-pcifront wrote (D1). Here the toolstack entries of each step are sent
through the simulator's xenstored socket with pyxs (transactions as in the
log), and the simulated kernels must answer with the same writes, values,
transaction grouping, watch registrations and the same order of
backend/frontend state changes. The xenstore dump after the first attach must
equal the real one in real-xen-transcript.txt, permissions included (the
grant ref and event channel come out as the real 8/8: the simulated guest
allocates lowest-free from 8, what a 1-vCPU guest gets).
"""

import errno
import os
import re
import time
from pathlib import Path

import pytest

from xensim import accesslog
from xensim.host import SimHost

pyxs = pytest.importorskip("pyxs")

HERE = Path(__file__).resolve()
# Real Xen 4.17's traces are kept beside the tests (tests/data), so the
# replay runs wherever the repository is.
_CANDIDATES = [HERE.parent / "data"]


def _doc(name):
    for d in _CANDIDATES:
        if (d / name).exists():
            return d / name
    pytest.skip(f"{name} not found in {', '.join(map(str, _CANDIDATES))}")


def parse_log():
    """Steps of the real log: [(mark, [(label, tx, op, path, value), ...])]."""
    steps = []
    for entry in accesslog.parse(_doc("real-xen-access-log.txt").read_text()):
        _label, _tx, op, path, value = entry
        if op == "write" and path == "/tool/mark":
            steps.append((value, []))
        elif steps:
            steps[-1][1].append(entry)
    return steps


def parse_dump(title):
    """{path: (value, perms)} of the xenstore-ls sections after ``title``."""
    text = _doc("real-xen-transcript.txt").read_text()
    start = text.index(f"==================== xenstore dump: {title}")
    end = text.index("\n====================", start + 1)
    out = {}
    for line in text[start:end].splitlines():
        m = re.match(r'^(/\S+) = "(.*)"\s+\((\S+)\)$', line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3).split(","))
    return out


kernel_ops = accesslog.kernel_ops
state_order = accesslog.state_order


class Replayer:
    def __init__(self, host):
        self.host = host
        self.client = pyxs.Client(unix_socket_path=host.paths["xenstored"])
        self.client.connect()

    def close(self):
        self.client.close()

    def wait(self, path, value, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.host.read(path) == value:
                return
            time.sleep(0.005)
        raise AssertionError(f"{path} never became {value!r} (is {self.host.read(path)!r})")

    def run(self, entries):
        """Send the toolstack (A*) entries; wait for BE 4 after a state=7
        transaction before the next one, as libxl's detach does."""
        groups = []
        for label, tx, op, path, value in entries:
            if not label.startswith("A") or op not in ("write", "rm", "mkdir", "setperms"):
                continue
            if not groups or groups[-1][0] != (label, tx):
                groups.append(((label, tx), []))
            groups[-1][1].append((op, path, value))
        be = "/local/domain/0/backend/pci/1/0"
        for (_label, tx), ops in groups:
            if tx:
                self.client.transaction()
            for op, path, value in ops:
                try:
                    if op == "write":
                        self.client.write(path.encode(), value.encode())
                    elif op == "rm":
                        self.client.delete(path.encode())
                    elif op == "mkdir":
                        self.client.mkdir(path.encode())
                    else:
                        self.client.set_perms(path.encode(), [p.encode() for p in value.split()])
                except pyxs.PyXSError as exc:
                    # libxl ignores xs_rm's result (ENOENT for a missing parent)
                    assert op == "rm" and exc.args[0] == errno.ENOENT, (op, path, exc)
            if tx:
                assert self.client.commit(), "replayed transaction conflicted"
            if any(op == "write" and path == f"{be}/state" and value == "7" for op, path, value in ops):
                self.wait(f"{be}/state", "4")


@pytest.fixture
def replay(sockdir):
    # Real timing (scale 1.0): which of two independent drivers writes first
    # is decided by their delays, as on the real host; at full scale the
    # margins are the real ones (tens of ms), so the order is not flaky.
    host = SimHost("pv-no-backend", os.path.join(sockdir, "h"), mount_sysfs=False, timing_scale=1.0)
    host.start()
    r = Replayer(host)
    try:
        yield r
    finally:
        r.close()
        host.stop()


def _step(replay, steps, index):
    mark, entries = steps[index]
    start = replay.host.call(lambda: len(replay.host.store.access_log))
    replay.run(entries)
    replay.host.settle()
    sim = replay.host.call(lambda: [(e.label, e.tx, e.op, e.path, e.value)
                                    for e in replay.host.store.access_log[start:]])
    return mark, entries, sim


def test_replay_attach_detach_matches_real_log(replay):
    steps = parse_log()
    assert [m.split(" (")[0] for m, _unused in steps] == [
        "attach 00:10.0", "attach 00:11.0", "attach 00:12.0", "detach 00:11.0", "detach 00:10.0",
        "detach 00:12.0", "end"]
    host = replay.host

    # 1. first attach: the backend is created with the device.
    mark, real, sim = _step(replay, steps, 0)
    assert kernel_ops(sim) == kernel_ops(real), mark
    assert state_order(sim) == state_order(real) == [
        ("D0", "backend", "2"), ("D1", "device", "3"), ("D0", "backend", "3"),
        ("D0", "backend", "4"), ("D1", "device", "4")]
    expected = parse_dump("after attach #1")
    for prefix in ("/local/domain/0/backend/pci", "/local/domain/1/device/pci"):
        # xenstore-ls -fp lists what is below its argument.
        got = {p: (v.decode(), perms) for p, v, perms in host.call(host.store.dump, prefix) if p != prefix}
        want = {p: v for p, v in expected.items() if p.startswith(prefix + "/")}
        assert want
        assert got == want, prefix
    assert host.guest_devices(1) == {"0000:00:00.0": "0000:00:10.0"}

    # 2. second attach: a Reconfiguring cycle (BE 7 -> FE 7 -> BE 8 -> FE 4 -> BE 4).
    mark, real, sim = _step(replay, steps, 1)
    assert kernel_ops(sim) == kernel_ops(real), mark
    assert state_order(sim) == state_order(real) == [
        ("D1", "device", "7"), ("D0", "backend", "8"), ("D1", "device", "4"), ("D0", "backend", "4")]
    assert host.read("/local/domain/0/backend/pci/1/0/vdev-1") == "0000:00:01.00"
    assert host.guest_devices(1) == {"0000:00:00.0": "0000:00:10.0", "0000:00:01.0": "0000:00:11.0"}

    # 3. third attach, then 4. the middle detach (state-1 = 5, found through vdev-1).
    mark, real, sim = _step(replay, steps, 2)
    assert kernel_ops(sim) == kernel_ops(real), mark
    mark, real, sim = _step(replay, steps, 3)
    assert kernel_ops(sim) == kernel_ops(real), mark
    assert state_order(sim) == state_order(real)
    assert host.guest_devices(1) == {"0000:00:00.0": "0000:00:10.0", "0000:00:02.0": "0000:00:12.0"}
    assert host.pciback.device_for(1).vbus() == {(0, 0): "0000:00:10.0", (2, 0): "0000:00:12.0"}

    # 5. detach 00:10.0, then 6. the last one: both ends vanish, the guest
    # leaves its "22 freeing event channel 8", watches go in the real order.
    for index in (4, 5):
        mark, real, sim = _step(replay, steps, index)
        assert kernel_ops(sim) == kernel_ops(real), mark
        assert state_order(sim) == state_order(real), mark
    assert host.read("/local/domain/1/error/device/pci/0/error") == "22 freeing event channel 8"
    assert host.read("/local/domain/0/backend/pci") is None
    assert host.guest_devices(1) == {}
    assert host.pciback.device_for(1) is None
    assert not host._stub_in_use

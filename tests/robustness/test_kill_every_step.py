# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A request killed (SIGKILL) at every point of its steps: the next run
finds its journal, finishes or rolls it back, and converges on exactly the
host a clean run leaves (the one real Xen's differential test shows equal
to what xl leaves).

Each scenario is run once cleanly to learn its points and its end state;
then, for every point, a fresh host, a run killed there, and a rerun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest

from conftest import bookkeeping_consistent, params_for, settle, snapshot  # pylint: disable=import-error

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "request_driver.py")

DEVICES = """
devices:
  - {bdf: "0000:00:10.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback, irq: 10,
     resources: [[0xfe000000, 0xfe0fffff, 0x40200]]}
  - {bdf: "0000:00:11.0", vendor: 0x1b36, device: 0x0005, class: 0x00ff00, driver: pciback,
     resources: [[0xfe100000, 0xfe100fff, 0x40200]]}
  - {bdf: "0000:00:12.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: e1000, irq: 11,
     resources: [[0xfe200000, 0xfe21ffff, 0x40200], [0xc000, 0xc03f, 0x40101]]}
"""

SCENARIOS = {
    # name: (host, setup requests, the request killed)
    "attach-pv-no-backend": (
        "name: kill-pv" + DEVICES + "domains:\n  - {domid: 1, name: web, type: pv, state: running, pcifront: true}\n",
        [], ("passthrough", {"state": "present"}, {"web": ["00:10.0", "00:11.0"]})),
    "attach-pv-with-backend": (
        "name: kill-pv2" + DEVICES + "domains:\n  - {domid: 1, name: web, type: pv, state: running, pcifront: true,"
        " devices: [\"0000:00:10.0\"]}\n",
        [], ("passthrough", {"state": "present"}, {"web": ["00:11.0"]})),
    "detach-pv-middle": (
        "name: kill-pv3" + DEVICES + "domains:\n  - {domid: 1, name: web, type: pv, state: running, pcifront: true}\n",
        [("passthrough", {"state": "present"}, {"web": ["00:10.0", "00:11.0", "00:12.0,seize=1"]})],
        ("passthrough", {"state": "absent"}, {"web": ["00:11.0"]})),
    "seize-pv": (
        "name: kill-seize" + DEVICES + "domains:\n  - {domid: 1, name: web, type: pv, state: running, pcifront: true}\n",
        [], ("passthrough", {"state": "present"}, {"web": ["00:12.0,seize=1"]})),
    "assignable-take": (
        "name: kill-pool" + DEVICES + "domains: []\n",
        [], ("assignable", {"state": "present", "devices": ["00:12.0"], "take_from_driver": True}, None)),
    "hotplug-hvm-dom0": (
        "name: kill-hvm" + DEVICES + "domains:\n  - {domid: 5, name: hvm1, type: hvm, state: running, passthrough: enabled,"
        " device_model: dom0, qemu: {machine: pc, unplug: ack}}\n",
        [], ("passthrough", {"state": "present"}, {"hvm1": ["00:10.0"]})),
    "hotplug-hvm-stubdom": (
        "name: kill-stub" + DEVICES + "domains:\n  - {domid: 3, name: win1, type: hvm, state: running, passthrough: enabled,"
        " device_model: stubdom, stubdom: 4, qemu: {machine: pc, unplug: ack}}\n"
        "  - {domid: 4, name: win1-dm, type: pv, state: running, target: 3, pcifront: true}\n",
        [], ("passthrough", {"state": "present"}, {"win1": ["00:11.0"]})),
    "unplug-hvm-dom0": (
        "name: kill-hvm2" + DEVICES + "domains:\n  - {domid: 5, name: hvm1, type: hvm, state: running, passthrough: enabled,"
        " device_model: dom0, qemu: {machine: pc, unplug: ack}}\n",
        [("passthrough", {"state": "present"}, {"hvm1": ["00:10.0", "00:11.0"]})],
        ("passthrough", {"state": "absent"}, {"hvm1": ["00:10.0"]})),
}


def drive(host, request, kill_at=None, points=None):
    runner, extra, desired = request
    spec = {"runner": runner, "params": params_for(host, **extra), "desired": desired, "kill_at": kill_at, "points": points}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, DRIVER, json.dumps(spec)], capture_output=True, text=True, timeout=120,
                          env=env, check=False)
    if kill_at is not None:
        return proc
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return json.loads(proc.stdout.splitlines()[-1])


def prepared(sim, name):
    text, setup, request = SCENARIOS[name]
    host = sim(text)
    for step in setup:
        drive(host, step)
    settle(host)
    return host, request


def learn(sim, name):
    """Points of a clean run, and the host it leaves."""
    host, request = prepared(sim, name)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        path = handle.name
    try:
        drive(host, request, points=path)
        with open(path, encoding="utf-8") as handle:
            points = json.load(handle)
    finally:
        os.unlink(path)
    settle(host)
    return points, snapshot(host)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_request_killed_at_any_point_converges_on_the_next_run(sim, name):
    points, reference = learn(sim, name)
    assert len(points) >= 6, points
    assert not any(p.startswith(("undo:", "recover:")) for p in points)
    failures = []
    for point in points:
        host, request = prepared(sim, name)
        proc = drive(host, request, kill_at=point)
        assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stdout[-400:], proc.stderr[-2000:])
        rerun = drive(host, request)
        settle(host)
        if not rerun.get("ok"):
            failures.append("%s: the rerun failed: %s" % (point, rerun.get("error")))
            continue
        got = snapshot(host)
        if got != reference:
            diff = [k for k in reference if reference[k] != got[k]]
            detail = {k: (reference[k], got[k]) for k in diff}
            failures.append("%s: the host differs from a clean run in %s: %s" % (point, diff, detail))
        problems = bookkeeping_consistent(host)
        if problems:
            failures.append("%s: %s" % (point, problems))
        if any(p.startswith("/tool/xen-pci") for p in got["xenstore"]):
            failures.append("%s: a journal is left after the rerun" % point)
        outcomes = [r.get("outcome") for r in rerun["result"].get("recovered") or []]
        if len(outcomes) != 1 or outcomes[0] not in ("rolled back", "finished", "complete (only its journal was left)"):
            failures.append("%s: the rerun did not report the recovery of the killed request: %s" % (point, outcomes))
    assert not failures, "\n".join(failures)

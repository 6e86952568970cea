# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fault matrix: every kind of fault the simulated host can inject into
xenstored, pciback/pcifront, QEMU, sysfs and the hypervisor, against a
request that meets it. For each, the promise of the engine:

- bounded: the request returns within its timeout and a small margin;
- a clean error naming the domain, the device and the step (or, where the
  fault only slows things down, a success that says what it met);
- the host as it was, or every node and device left named in ``left``;
- a rerun without the fault converging on the declared state.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest

from conftest import MARGIN, bookkeeping_consistent, differences, params_for, settle, snapshot  # pylint: disable=import-error

from ansible_collections.xen.pci.plugins.module_utils import _steps_qmp
from ansible_collections.xen.pci.plugins.module_utils._errors import XenPciError
from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough

DEVICES = """
devices:
  - {bdf: "0000:00:10.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback, irq: 10,
     resources: [[0xfe000000, 0xfe0fffff, 0x40200]]}
  - {bdf: "0000:00:11.0", vendor: 0x1b36, device: 0x0005, class: 0x00ff00, driver: pciback,
     resources: [[0xfe100000, 0xfe100fff, 0x40200]]}
  - {bdf: "0000:00:12.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: e1000, irq: 11, reset: true,
     resources: [[0xfe200000, 0xfe21ffff, 0x40200]]}
  - {bdf: "0000:00:14.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback, reset: true}
  - {bdf: "0000:00:15.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: null}
"""

# web has a connected backend (00:14.0): attaches run a Reconfiguring cycle.
PV = "name: matrix-pv" + DEVICES + """
domains:
  - {domid: 1, name: web, type: pv, state: running, pcifront: true, devices: ["0000:00:14.0"]}
"""
PV_BARE = "name: matrix-bare" + DEVICES + """
domains:
  - {domid: 1, name: web, type: pv, state: running, pcifront: true}
"""
PV_NOFRONT = "name: matrix-nofront" + DEVICES + """
domains:
  - {domid: 1, name: web, type: pv, state: running, pcifront: false}
"""
HVM = "name: matrix-hvm" + DEVICES + """
domains:
  - {domid: 5, name: web, type: hvm, state: running, passthrough: enabled, device_model: dom0,
     qemu: {machine: pc, unplug: ack}}
"""
BE = "/local/domain/0/backend/pci/1/0"

ATTACH = ({"state": "present"}, {"web": ["00:10.0", "00:11.0"]})
SEIZE = ({"state": "present"}, {"web": ["00:12.0,seize=1"]})
MAKE_ASSIGNABLE = ({"state": "present", "make_assignable": True}, {"web": ["00:15.0"]})
DETACH = ({"state": "absent"}, {"web": ["00:14.0"]})
DETACH_FORCE = ({"state": "absent", "force": True}, {"web": ["00:14.0"]})
HVM_ATTACH = ({"state": "present"}, {"web": ["00:10.0"]})
HVM_DETACH = ({"state": "absent"}, {"web": ["00:10.0"]})


@dataclass
class Case:
    host: str
    request: tuple
    fault: Callable
    expect: str                    # ok | error | either
    timeout: float = 20.0
    setup: tuple = ()              # requests run before the fault
    warning: Optional[str] = None  # what a success must warn about
    extra: float = 0.0             # bound beyond timeout + MARGIN (a blocked kernel write)
    cleanup: Callable = field(default=lambda host: None)
    rerun: dict = field(default_factory=dict)   # the rerun's options (a guest that ignored an unplug needs force)


def later(seconds, fn):
    timer = threading.Timer(seconds, fn)
    timer.daemon = True
    timer.start()


def on_point(point, action):
    """A hook that runs ``action`` once, when the request reaches ``point``."""
    fired = []

    def hook(where):
        if where == point and not fired:
            fired.append(where)
            action()
    return hook


def kill_xenstored(host):
    host.xenstored_kill()
    later(1.5, host.xenstored_restart)


def pause_xenstored(host):
    host.xenstored_pause()
    later(3.0, host.xenstored_resume)


def restart_qemu(host):
    """A new device model for the guest (as after the toolstack restarted it)."""
    model = host.qemu.model(5)
    host.call(model.stop)
    host.call(model.start)


def fault(point, action, **kw):
    return lambda host: host.faults.add(point, action, **kw)


CASES = {
    # -- xenstored ------------------------------------------------------------
    "xenstored killed before the request": Case(
        PV, ATTACH, lambda host: host.xenstored_kill(), "error", cleanup=lambda host: host.xenstored_restart()),
    "xenstored killed mid-request, back 1.5 s later": Case(
        PV, ATTACH, ("hook", "step:1:grant:before", kill_xenstored), "either"),
    "xenstored stopped mid-request for 3 s": Case(
        PV, ATTACH, ("hook", "step:2:backend-append:before", pause_xenstored), "either", timeout=6.0),
    "connection closed by xenstored in a transaction": Case(
        PV, ATTACH, fault("xenstore.request", "close", op="WRITE", path=BE + "/dev-1", times=1), "either"),
    "connection closed during the confirmation wait": Case(
        PV, ATTACH, fault("xenstore.request", "close", op="WATCH", path=BE, times=1), "ok",
        warning="reconnected"),
    "slow replies (0.2 s each under the backend)": Case(
        PV, ATTACH, fault("xenstore.request", "delay", seconds=0.2, op="READ", path=BE), "ok", timeout=30.0),
    "a confirmation answered 3 s late": Case(
        PV, ATTACH, fault("xenstore.request", "delay", seconds=3.0, op="READ", path=BE + "/state-1", times=1),
        "either", timeout=4.0, extra=3.0),
    "EAGAIN storm of 5 commits": Case(
        PV, ATTACH, fault("xenstore.commit", "eagain", times=5), "ok"),
    "endless EAGAIN": Case(
        PV, ATTACH, fault("xenstore.commit", "eagain"), "error"),
    "EIO on a backend write": Case(
        PV, ATTACH, fault("xenstore.request", "error", errno="EIO", op="WRITE", path=BE + "/dev-1", times=1), "error"),
    "EACCES on the claim": Case(
        PV, ATTACH, fault("xenstore.request", "error", errno="EACCES", op="WRITE", path="/libxl/pci"), "error"),
    "a request xenstored never answers": Case(
        PV, ATTACH, fault("xenstore.request", "hang", op="TRANSACTION_START", times=1), "either", timeout=6.0),
    # -- pciback and pcifront ---------------------------------------------------
    "pciback fatal error on export": Case(
        PV, ATTACH, fault("pciback.export", "error", bdf="0000:00:11.0"), "error"),
    "pciback never answers the cycle": Case(
        PV, ATTACH, fault("pciback.reconfigure", "hang", domid=1), "error", timeout=8.0),
    "pciback never connects a new backend": Case(
        PV_BARE, ATTACH, fault("pciback.connect", "hang", domid=1), "ok", timeout=8.0, warning="had not connected"),
    "pcifront never connects a new backend": Case(
        PV_BARE, ATTACH, fault("pcifront.connect", "hang", domid=1), "ok", timeout=8.0, warning="had not connected"),
    "pcifront never acknowledges the attach": Case(
        PV, ATTACH, fault("pcifront.reconfigure", "hang", domid=1), "error", timeout=8.0),
    "pcifront acknowledges 2 s late": Case(
        PV, ATTACH, fault("pcifront.reconfigure", "delay", seconds=2.0, domid=1, times=1), "ok"),
    "pcifront never releases (no force)": Case(
        PV, DETACH, fault("pcifront.reconfigure", "hang", domid=1), "error", timeout=6.0),
    "pcifront never releases (force)": Case(
        PV, DETACH_FORCE, fault("pcifront.reconfigure", "hang", domid=1), "ok", timeout=10.0, warning="forced"),
    "a guest without pcifront": Case(
        PV_NOFRONT, ATTACH, lambda host: None, "ok", timeout=8.0, warning="pcifront"),
    # -- sysfs ------------------------------------------------------------------
    "pciback bind fails (EIO) while seizing": Case(
        PV, SEIZE, fault("sysfs.write", "error", errno="EIO", file="pciback/bind"), "error"),
    "pciback bind fails (EIO) for a driverless device": Case(
        PV, MAKE_ASSIGNABLE, fault("sysfs.write", "error", errno="EIO", file="pciback/bind"), "error"),
    "unbind from the dom0 driver fails (EBUSY)": Case(
        PV, SEIZE, fault("sysfs.write", "error", errno="EBUSY", file="e1000/unbind"), "error"),
    "pciback bind blocks in the kernel": Case(
        PV, SEIZE, fault("sysfs.write", "hang", file="pciback/bind"), "error", timeout=30.0),
    "reset fails after a detach": Case(
        PV, DETACH, fault("sysfs.write", "error", errno="EIO", file="reset"), "ok", warning="reset of 0000:00:14.0 failed"),
    # -- hypervisor -------------------------------------------------------------
    "assign_device EBUSY": Case(
        PV, ATTACH, lambda host: host.hypervisor.inject("assign_device", "EBUSY", domid=1), "error"),
    "iomem_permission EPERM": Case(
        PV, ATTACH, lambda host: host.hypervisor.inject("iomem_permission", "EPERM", domid=1), "error"),
    # -- QEMU -------------------------------------------------------------------
    "device_add refused": Case(
        HVM, HVM_ATTACH, fault("qemu.device_add", "error", domid=5), "error"),
    "device_add slower than the deadline": Case(
        HVM, HVM_ATTACH, fault("qemu.command", "delay", seconds=6.0, domid=5, command="device_add", times=1),
        "error", timeout=5.0, extra=2.0),
    "QEMU dead": Case(
        HVM, HVM_ATTACH, fault("qemu.dead", "close", domid=5), "error", cleanup=restart_qemu),
    "QMP socket gone": Case(
        HVM, HVM_ATTACH, lambda host: os.unlink(os.path.join(host.paths["qmp_dir"], "qmp-libxl-5")), "error",
        cleanup=restart_qemu),
    "unplug never completes": Case(
        HVM, HVM_DETACH, fault("qemu.unplug", "never", domid=5), "error", setup=(HVM_ATTACH,), rerun={"force": True}),
    "QMP query-pci hangs": Case(
        HVM, HVM_ATTACH, fault("qemu.command", "hang", domid=5, command="query-pci"), "error", timeout=15.0),
}


def _clear(host, case):
    host.faults.clear()
    host.hypervisor.inject("assign_device", None, domid=1)
    host.hypervisor.inject("iomem_permission", None, domid=1)
    case.cleanup(host)


def _named(diff, left, devices):
    """Every difference is named in ``left``: a node by its path or an
    ancestor (at least the backend or bookkeeping node), a device by its
    address."""
    text = " ".join(str(item) for item in left or [])
    missing = []
    for item in diff:
        if item.startswith("/"):
            # Named itself, by an ancestor below the tree roots, or as the
            # parent created for a named node.
            parts = item.split("/")
            ancestors = ["/".join(parts[:n]) for n in range(len(parts), 3, -1)]
            if not any(a in text for a in ancestors) and item + "/" not in text:
                missing.append(item)
        elif not any(bdf in text and bdf in item for bdf in devices):
            missing.append(item)
    return missing


def _structure(snap):
    """A snapshot where the guest's and pciback's connection states count by
    presence only: a guest the fault hangs cannot reconnect, whatever we do."""
    out = dict(snap)
    out["xenstore"] = {p: (None if p.endswith("/state") else v) for p, v in snap["xenstore"].items()}
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_fault(sim, name, monkeypatch):
    monkeypatch.setattr(_steps_qmp, "UNPLUG_WAIT", 2.0)
    monkeypatch.setattr(_steps_qmp, "DEVICE_ADD_PAUSE", 0.1)
    case = CASES[name]
    host = sim(case.host)
    for extra, desired in case.setup:
        run_passthrough(params_for(host, **extra), desired)
    settle(host)
    extra, desired = case.request
    bdfs = ["0000:" + b.split(",")[0] if b.count(":") == 1 else b.split(",")[0] for b in desired["web"]]
    before = snapshot(host)
    hook = None
    if isinstance(case.fault, tuple):
        _kind, point, action = case.fault
        hook = on_point(point, lambda: action(host))
    else:
        case.fault(host)
    start = time.monotonic()
    try:
        result = run_passthrough(params_for(host, timeout=case.timeout, **extra), desired, hook=hook)
        outcome, details, msg = "ok", result, ""
    except XenPciError as exc:
        outcome, details, msg = "error", exc.details, exc.msg
    elapsed = time.monotonic() - start
    # One line per case for the record (shown with -s or -rP).
    print("matrix | %s | %s in %.1f s | %s" % (name, outcome, elapsed, (msg or "; ".join(details.get("warnings_detail", [])))[:300]))
    assert elapsed < case.timeout + MARGIN + case.extra, "%s: took %.1f s (timeout %.1f)" % (name, elapsed, case.timeout)
    assert case.expect in (outcome, "either"), "%s: expected %s, got %s: %s" % (name, case.expect, outcome, msg)
    settle(host, 0.5)
    after = snapshot(host)
    if outcome == "error":
        assert "web" in msg and any(b in msg for b in bdfs), "%s: the message names no domain or device: %s" % (name, msg)
        assert details.get("step") or details.get("problems") or details.get("input") or details.get("path"), \
            "%s: no step, input or path in %s" % (name, sorted(details))
        if details.get("changed"):
            diff = differences(_structure(before), _structure(after))
            assert details.get("left"), "%s: changed but nothing named as left: %s" % (name, diff)
            missing = _named(diff, details.get("left"), bdfs)
            assert not missing, "%s: left but not named: %s (left: %s)" % (name, missing, details.get("left"))
        else:
            assert _structure(after) == _structure(before), "%s: unchanged, it says, but: %s" % (
                name, differences(before, after))
    elif case.warning:
        assert any(case.warning in w for w in details["warnings_detail"]), (name, details["warnings_detail"])
    # The rerun without the fault converges.
    _clear(host, case)
    settle(host, 0.5)
    rerun = run_passthrough(params_for(host, timeout=30.0, **dict(extra, **case.rerun)), desired)
    settle(host)
    devices = {d["bdf"] for d in rerun["domains"]["web"]["devices"]}
    if extra["state"] == "absent":
        assert not devices & set(bdfs), (name, devices)
    else:
        assert set(bdfs) <= devices, (name, devices)
    assert bookkeeping_consistent(host) == [], name
    assert not rerun["interrupted"], (name, rerun["interrupted"])


def test_the_matrix_has_at_least_25_fault_kinds():
    assert len(CASES) >= 25

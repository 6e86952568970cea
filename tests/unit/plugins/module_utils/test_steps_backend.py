# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The PCI backend steps against xensim: the cases of Xen commit 73ee2795aaef and more."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from ansible_collections.xen.pci.plugins.module_utils import _steps_backend
from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline
from ansible_collections.xen.pci.plugins.module_utils._errors import HotplugError, RefusedError
from ansible_collections.xen.pci.plugins.module_utils._host_options import platform_from
from ansible_collections.xen.pci.plugins.module_utils._platform import connect
from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough
from ansible_collections.xen.pci.plugins.module_utils._state import read_host
from ansible_collections.xen.pci.plugins.module_utils._steps_backend import backend_wait_needed

DEVICES = """
name: test-host
devices:
  - {bdf: "0000:00:10.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback, irq: 10,
     resources: [[0xfe000000, 0xfe0fffff, 0x40200]]}
  - {bdf: "0000:00:11.0", vendor: 0x1b36, device: 0x0005, class: 0x00ff00, driver: pciback,
     resources: [[0xfe100000, 0xfe100fff, 0x40200]]}
  - {bdf: "0000:00:12.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: pciback, irq: 11,
     resources: [[0xfe200000, 0xfe21ffff, 0x40200], [0xc000, 0xc03f, 0x40101]]}
  - {bdf: "0000:00:13.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: e1000}
"""

PV_NO_BACKEND = DEVICES + """
domains:
  - {domid: 1, name: domu1, type: pv, state: running, passthrough: enabled, pcifront: true}
"""

PV_WITH_BACKEND = DEVICES + """
domains:
  - {domid: 1, name: domu1, type: pv, state: running, passthrough: enabled, pcifront: true, devices: ["0000:00:10.0"]}
"""

PV_PAUSED = DEVICES + """
domains:
  - {domid: 1, name: domu1, type: pv, state: paused, passthrough: enabled, pcifront: true, devices: ["0000:00:10.0"]}
"""

BE = "/local/domain/0/backend/pci/1/0"
FE = "/local/domain/1/device/pci/0"


def peek(host, path):
    value = host.call(host.store.peek, path)
    return value.decode() if value is not None else None


def be_keys(host, domid=1):
    base = "/local/domain/0/backend/pci/%d/0" % domid
    names = host.call(host.store.ls, base) or []
    return {n: peek(host, base + "/" + n) for n in names}


def log_of(host, label=None):
    entries = host.call(lambda: list(host.store.access_log))
    return [e for e in entries if label is None or e.label == label]


def cycles(host):
    """Reconfiguring cycles started on domu1's backend (toolstack writes of state=7)."""
    return [e for e in log_of(host) if e.op == "write" and e.path == BE + "/state" and e.value == "7"]


def wait_for(host, path, value, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if peek(host, path) == value:
            return True
        time.sleep(0.01)
    return False


def test_the_wait_rule_is_pv_and_running_and_a_backend_exists():
    assert backend_wait_needed("pv", True, True)
    for args in (("pv", True, False), ("pv", False, True), ("hvm", True, True), ("pvh", True, True), ("pv", False, False)):
        assert not backend_wait_needed(*args), args


def test_running_pv_domain_with_no_backend_gets_one_without_a_wait(sim, run):
    host = sim(PV_NO_BACKEND)
    result = run(host, {"domu1": ["00:10.0"]})
    assert [d["bdf"] for d in result["domains"]["domu1"]["devices"]] == ["0000:00:10.0"]
    assert any("created the PCI backend" in a and "no wait" in a for a in result["actions"])
    keys = be_keys(host)
    assert keys["state"] == "4" and keys["state-0"] == "3" and keys["num_devs"] == "1"
    assert keys["vdev-0"] == "0000:00:00.00"
    assert peek(host, FE + "/state") == "4"
    assert peek(host, "/libxl/pci/0000-00-10-0/domid") == "1"
    xs = connect(xenstore_path=host.paths["xenstored"], hypervisor="none").xs
    assert xs.get_perms(BE) == ["n0", "r1"]
    assert xs.get_perms(FE) == ["n1", "r0"]
    # The journal of the request is gone once it finished.
    assert host.call(host.store.ls, "/tool/xen-pci/journal") in (None, [])


def test_the_old_unconditional_wait_fails_on_a_running_domain_without_backend(sim, run, monkeypatch):
    """Xen 4.15.0-4.16.0 (commit 0fdb48ffe7a1) waited for the backend unconditionally."""
    host = sim(PV_NO_BACKEND)
    monkeypatch.setattr(_steps_backend, "backend_wait_needed", lambda *_args: True)
    with pytest.raises(HotplugError, match="Backend /local/domain/0/backend/pci/1/0 does not exist") as info:
        run(host, {"domu1": ["00:10.0"]}, timeout=5.0)
    assert peek(host, BE + "/num_devs") is None
    assert peek(host, "/libxl/pci/0000-00-10-0/domid") is None
    assert info.value.details["changed"] is False


def test_running_pv_domain_with_a_backend_waits_for_connected_then_one_cycle(sim, run):
    host = sim(PV_WITH_BACKEND)
    assert wait_for(host, BE + "/state", "4")
    # Another toolstack's cycle is in flight: our attach must wait for it.
    # The delay runs from the write below: on a loaded machine the run starts
    # a few tenths of a second later (0.5 s once left only 0.27 s to wait).
    host.faults.add("pcifront.reconfigure", "delay", seconds=1.0, times=1)
    raw = connect(xenstore_path=host.paths["xenstored"], hypervisor="none").xs
    raw.write(BE + "/state", "7")
    before = len(cycles(host))
    result = run(host, {"domu1": ["00:11.0"]})
    assert result["waited"] > 0.3
    assert len(cycles(host)) - before == 1
    keys = be_keys(host)
    assert keys["state"] == "4" and keys["state-1"] == "3" and keys["dev-1"] == "0000:00:11.0"
    # Our state=7 came after pciback went back to Connected.
    log = log_of(host)
    ours = max(i for i, e in enumerate(log) if e.path == BE + "/state" and e.value == "7")
    back = [i for i, e in enumerate(log) if e.label == "D0" and e.path.endswith("backend/pci/1/0/state") and e.value == "4"]
    assert any(i < ours for i in back)


def test_pv_domain_not_running_gets_keys_appended_without_a_cycle(sim, run):
    host = sim(PV_PAUSED)
    start = time.monotonic()
    result = run(host, {"domu1": ["00:11.0"]})
    assert time.monotonic() - start < 5
    assert cycles(host) == []
    keys = be_keys(host)
    assert keys["num_devs"] == "2" and keys["dev-1"] == "0000:00:11.0"
    # pciback (dom0's) exported it on its own: the guest takes it when it connects.
    assert keys["state-1"] == "3"
    host.unpause(1)
    assert wait_for(host, BE + "/state", "4")
    assert wait_for(host, FE + "/state", "4")
    assert sorted(host.call(host.guest_devices, 1).values()) == ["0000:00:10.0", "0000:00:11.0"]
    assert result["changed"]


def test_backend_stuck_in_reconfiguring_is_a_bounded_clear_error_and_the_claim_is_undone(sim, run):
    host = sim(PV_WITH_BACKEND)
    assert wait_for(host, BE + "/state", "4")
    host.faults.add("pcifront.reconfigure", "hang")
    raw = connect(xenstore_path=host.paths["xenstored"], hypervisor="none").xs
    raw.write(BE + "/state", "7")
    before = be_keys(host)
    start = time.monotonic()
    with pytest.raises(HotplugError, match=r"stayed in state 7 \(Reconfiguring\)") as info:
        run(host, {"domu1": ["00:11.0"]}, timeout=4.0)
    assert time.monotonic() - start < 4.0 + 2
    assert be_keys(host) == before
    assert peek(host, "/libxl/pci/0000-00-11-0/domid") is None
    assert "undone" in info.value.msg and info.value.details["changed"] is False
    assert info.value.details["step"] == "backend-append"


def test_three_devices_in_one_request_make_exactly_one_reconfiguring_cycle(sim, run):
    host = sim(PV_WITH_BACKEND)
    assert wait_for(host, BE + "/state", "4")
    result = run(host, {"domu1": ["00:10.0", "00:11.0", "00:12.0"]})
    assert len(cycles(host)) == 1
    fe_cycles = [e for e in log_of(host, "D1") if e.path.endswith("device/pci/0/state") and e.value == "7"]
    assert len(fe_cycles) == 1
    keys = be_keys(host)
    assert [keys["state-%d" % i] for i in range(3)] == ["3", "3", "3"]
    assert sorted(result["devices"]) == ["0000:00:11.0", "0000:00:12.0"]
    assert result["devices"]["0000:00:12.0"]["vdev"] == keys["vdev-2"]


def libxl_remove(keys, index):
    """libxl__device_pci_remove_xenstore's key moves, on a dict (the reference)."""
    out = dict(keys)
    num = int(out["num_devs"])
    for k in ("state", "key", "dev", "vdev", "opts", "vdevfn", "name"):
        out.pop("%s-%d" % (k, index), None)
    out["num_devs"] = str(num - 1)
    for j in range(index + 1, num):
        for k in ("state", "dev", "key", "vdev", "opts", "vdevfn", "name"):
            if "%s-%d" % (k, j) in out:
                out["%s-%d" % (k, j - 1)] = out.pop("%s-%d" % (k, j))
    return out


def test_detach_of_the_middle_of_three_renumbers_like_libxl(sim, run):
    host = sim(PV_WITH_BACKEND)
    assert wait_for(host, BE + "/state", "4")
    run(host, {"domu1": ["00:11.0", "00:12.0"]})
    before = be_keys(host)
    assert before["dev-1"] == "0000:00:11.0"
    result = run(host, {"domu1": ["00:11.0"]}, state="absent")
    assert [d["bdf"] for d in result["domains"]["domu1"]["devices"]] == ["0000:00:10.0", "0000:00:12.0"]
    after = be_keys(host)
    expected = libxl_remove(before, 1)
    assert after == expected
    assert after["dev-1"] == "0000:00:12.0" and after["vdev-1"] == before["vdev-2"]
    assert peek(host, "/libxl/pci/0000-00-11-0/domid") is None


def test_a_pciback_fatal_error_fails_with_the_error_node_and_keeps_the_other_devices(sim, run):
    host = sim(PV_WITH_BACKEND)
    assert wait_for(host, BE + "/state", "4")
    host.faults.add("pciback.export", "error", bdf="0000:00:11.0")
    with pytest.raises(HotplugError, match="Couldn't locate PCI device") as info:
        run(host, {"domu1": ["00:11.0"]})
    assert "0000:00:11.0" in str(info.value) and "domu1 (domid 1)" in str(info.value)
    assert wait_for(host, BE + "/state", "4", timeout=10)
    keys = be_keys(host)
    assert keys["num_devs"] == "1" and keys["dev-0"] == "0000:00:10.0" and keys["state-0"] == "3"
    assert peek(host, "/libxl/pci/0000-00-11-0/domid") is None
    assert peek(host, "/libxl/pci/0000-00-10-0/domid") == "1"


def test_safety_refusals_come_before_any_write_and_are_all_listed(sim, run, params_of):
    host = sim(DEVICES + """
domains:
  - {domid: 1, name: domu1, type: pv, state: running, passthrough: enabled, pcifront: true, devices: ["0000:00:10.0"]}
  - {domid: 2, name: domu2, type: pv, state: running, passthrough: enabled, pcifront: true}
  - {domid: 3, name: pvh1, type: pvh, state: running, passthrough: disabled}
  - {domid: 4, name: nopt, type: pv, state: running, passthrough: disabled, pcifront: true}
""")
    params = params_of(host)
    platform = platform_from(params)
    for desired, pattern in (({"domu2": ["00:10.0"]}, r"0000:00:10.0 is assigned to domu1 \(domid 1\)"),
                             ({"domu2": ["00:13.0"]}, "in use by the dom0 driver e1000"),
                             ({"domu2": ["00:1e.0"]}, "does not exist"),
                             ({"pvh1": ["00:11.0"]}, "PVH"),
                             ({"nopt": ["00:11.0"]}, "passthrough disabled")):
        with pytest.raises(RefusedError, match=pattern):
            run_passthrough(params, desired, platform=platform)
    with pytest.raises(RefusedError, match=r"PVH.*and 3 more problems") as info:
        run_passthrough(params, {"domu2": ["00:10.0", "00:13.0", "00:1e.0"], "pvh1": ["00:11.0"]}, platform=platform)
    problems = info.value.details["problems"]
    assert sorted((p["domain"], p["device"]) for p in problems) == [
        ("domu2 (domid 2)", "0000:00:10.0"), ("domu2 (domid 2)", "0000:00:13.0"), ("domu2 (domid 2)", "0000:00:1e.0"),
        ("pvh1 (domid 3)", None)]
    assert platform.xs.stats.writes == 0


def _attach_in_process(params, bdf, queue):
    try:
        run_passthrough(params, {"domu1": [bdf]})
        queue.put(("ok", bdf))
    except Exception as exc:  # pylint: disable=broad-except
        queue.put(("error", "%s: %s" % (bdf, exc)))


def test_two_processes_attaching_to_one_domain_lose_nothing(sim, params_of):
    host = sim(PV_WITH_BACKEND)
    assert wait_for(host, BE + "/state", "4")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    params = params_of(host)
    procs = [ctx.Process(target=_attach_in_process, args=(params, b, queue)) for b in ("00:11.0", "00:12.0")]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _proc in procs]
    for p in procs:
        p.join(10)
    assert sorted(r[0] for r in results) == ["ok", "ok"], results
    keys = be_keys(host)
    devs = sorted(keys["dev-%d" % i] for i in range(int(keys["num_devs"])))
    assert devs == ["0000:00:10.0", "0000:00:11.0", "0000:00:12.0"]
    assert all(keys["state-%d" % i] == "3" for i in range(3))


def test_state_read_and_attach_costs_are_few_round_trips(sim, run, params_of):
    host = sim(PV_WITH_BACKEND)
    params = params_of(host)
    platform = platform_from(params)
    assert wait_for(host, BE + "/state", "4")
    state = read_host(platform.xs, Deadline(10))
    assert state.round_trips == 3
    assert state.domains[1].backend.devices[0].bdf == "0000:00:10.0"
    rt = platform.xs.stats.round_trips
    run(host, {"domu1": ["00:11.0"]}, platform=platform)
    attach_rts = platform.xs.stats.round_trips - rt
    # read host three times (3 each: before, under the lock, read back), claim (tx: 4),
    # journal (begin, 3 marks, finish), backend read + transaction (2 + 4), the
    # read of the verify (2), confirm (watch, drain and read, wake-ups, unwatch)
    assert attach_rts <= 36, attach_rts


def test_detach_from_a_guest_that_is_not_running_rebuilds_the_backend_without_waiting_for_it(sim, run):
    host = sim(DEVICES.replace("name: test-host", "name: paused-two") + """
domains:
  - {domid: 1, name: domu1, type: pv, state: paused, passthrough: enabled, pcifront: true,
     devices: ["0000:00:10.0", "0000:00:11.0"]}
""")
    assert wait_for(host, BE + "/state-1", "3")
    start = time.monotonic()
    result = run(host, {"domu1": ["0000:00:10.0"]}, state="absent", timeout=60.0)
    assert time.monotonic() - start < 5
    assert [d["bdf"] for d in result["domains"]["domu1"]["devices"]] == ["0000:00:11.0"]
    assert any("rebuilt the PCI backend" in a for a in result["actions"])
    keys = be_keys(host)
    assert keys["num_devs"] == "1" and keys["dev-0"] == "0000:00:11.0"
    host.unpause(1)
    assert wait_for(host, FE + "/state", "4")
    assert sorted(host.call(host.guest_devices, 1).values()) == ["0000:00:11.0"]

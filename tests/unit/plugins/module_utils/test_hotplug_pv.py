# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The PV hotplug core against xensim: the cases of Xen commit 73ee2795aaef and more."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from ansible_collections.xen.pci.plugins.module_utils._bdf import PciSpec
from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline
from ansible_collections.xen.pci.plugins.module_utils._errors import HotplugError, RefusedError
from ansible_collections.xen.pci.plugins.module_utils._hotplug import AttachItem, Hotplug, connect
from ansible_collections.xen.pci.plugins.module_utils._hotplug_pv import PvHotplug
from ansible_collections.xen.pci.plugins.module_utils._state import read_host

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


def items(*bdfs):
    return [AttachItem(PciSpec.parse(b).expand()[0]) for b in bdfs]


def platform_of(host, **kwargs):
    p = host.paths
    return connect(xenstore_path=p["xenstored"], sysfs_root=p["sysfs_root"], hypervisor="xensim:" + p["hypervisor"],
                   userdata_dir=p["userdata_dir"], **kwargs)


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


def test_running_pv_domain_with_no_backend_gets_one_without_a_wait(sim):
    host = sim(PV_NO_BACKEND)
    platform = platform_of(host)
    outcome = Hotplug(platform, timeout=20).attach("domu1", items("00:10.0"))
    assert outcome.attached == ["0000:00:10.0"]
    assert any("created the PCI backend" in a and "no wait" in a for a in outcome.report.actions)
    keys = be_keys(host)
    assert keys["state"] == "4" and keys["state-0"] == "3" and keys["num_devs"] == "1"
    assert keys["vdev-0"] == "0000:00:00.00"
    assert peek(host, FE + "/state") == "4"
    assert peek(host, "/libxl/pci/0000-00-10-0/domid") == "1"
    assert platform.xs.get_perms(BE) == ["n0", "r1"]
    assert platform.xs.get_perms(FE) == ["n1", "r0"]


def legacy_attach(platform, domid, funcs, deadline):
    """Xen 4.15.0-4.16.0: wait for the backend unconditionally (commit 0fdb48ffe7a1)."""

    class Legacy(PvHotplug):
        def must_wait(self, current):
            return True

    pv = Legacy(platform.xs, domid, "domu1")
    return pv.attach(funcs, deadline)


def test_the_old_unconditional_wait_fails_on_a_running_domain_without_backend(sim):
    host = sim(PV_NO_BACKEND)
    platform = platform_of(host)
    with pytest.raises(HotplugError, match="Backend /local/domain/0/backend/pci/1/0 does not exist"):
        legacy_attach(platform, 1, [i.request for i in items("00:10.0")], Deadline(5))
    assert peek(host, BE + "/num_devs") is None


def test_running_pv_domain_with_a_backend_waits_for_connected_then_one_cycle(sim):
    host = sim(PV_WITH_BACKEND)
    platform = platform_of(host)
    assert wait_for(host, BE + "/state", "4")
    # Another toolstack's cycle is in flight: our attach must wait for it.
    host.faults.add("pcifront.reconfigure", "delay", seconds=0.5, times=1)
    raw = connect(xenstore_path=host.paths["xenstored"], hypervisor="none").xs
    raw.write(BE + "/state", "7")
    before = len(cycles(host))
    outcome = Hotplug(platform, timeout=20).attach("domu1", items("00:11.0"))
    assert outcome.report.waited > 0.3
    assert len(cycles(host)) - before == 1
    keys = be_keys(host)
    assert keys["state"] == "4" and keys["state-1"] == "3" and keys["dev-1"] == "0000:00:11.0"
    # Our state=7 came after pciback went back to Connected.
    log = log_of(host)
    ours = max(i for i, e in enumerate(log) if e.path == BE + "/state" and e.value == "7")
    back = [i for i, e in enumerate(log) if e.label == "D0" and e.path.endswith("backend/pci/1/0/state") and e.value == "4"]
    assert any(i < ours for i in back)


def test_pv_domain_not_running_gets_keys_appended_without_a_wait(sim):
    host = sim(PV_PAUSED)
    platform = platform_of(host)
    start = time.monotonic()
    outcome = Hotplug(platform, timeout=20).attach("domu1", items("00:11.0"))
    assert time.monotonic() - start < 2
    assert outcome.report.waited == 0
    assert cycles(host) == []
    keys = be_keys(host)
    assert keys["num_devs"] == "2" and keys["dev-1"] == "0000:00:11.0"
    assert any("not running" in w for w in outcome.report.warnings)
    host.unpause(1)
    assert wait_for(host, BE + "/state", "4")
    assert wait_for(host, BE + "/state-1", "3")
    assert wait_for(host, FE + "/state", "4")


def test_backend_stuck_in_reconfiguring_is_a_bounded_clear_error_and_nothing_is_written(sim):
    host = sim(PV_WITH_BACKEND)
    platform = platform_of(host)
    assert wait_for(host, BE + "/state", "4")
    host.faults.add("pcifront.reconfigure", "hang")
    raw = connect(xenstore_path=host.paths["xenstored"], hypervisor="none").xs
    raw.write(BE + "/state", "7")
    before = be_keys(host)
    start = time.monotonic()
    with pytest.raises(HotplugError, match=r"stayed in state 7 \(Reconfiguring\).*nothing was written"):
        Hotplug(platform, timeout=3).attach("domu1", items("00:11.0"))
    assert time.monotonic() - start < 6
    assert be_keys(host) == before
    assert peek(host, "/libxl/pci/0000-00-11-0/domid") is None
    assert platform.xs.stats.writes == 0


def test_three_devices_in_one_request_make_exactly_one_reconfiguring_cycle(sim):
    host = sim(PV_WITH_BACKEND)
    platform = platform_of(host)
    assert wait_for(host, BE + "/state", "4")
    outcome = Hotplug(platform, timeout=20).attach("domu1", items("00:11.0", "00:12.0"))
    assert len(cycles(host)) == 1
    fe_cycles = [e for e in log_of(host, "D1") if e.path.endswith("device/pci/0/state") and e.value == "7"]
    assert len(fe_cycles) == 1
    keys = be_keys(host)
    assert [keys["state-%d" % i] for i in range(3)] == ["3", "3", "3"]
    assert sorted(outcome.report.devices) == ["0000:00:11.0", "0000:00:12.0"]
    assert outcome.report.devices["0000:00:12.0"]["vdev"] == keys["vdev-2"]


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


def test_detach_of_the_middle_of_three_renumbers_like_libxl(sim):
    host = sim(PV_WITH_BACKEND)
    platform = platform_of(host)
    assert wait_for(host, BE + "/state", "4")
    Hotplug(platform, timeout=20).attach("domu1", items("00:11.0", "00:12.0"))
    before = be_keys(host)
    assert before["dev-1"] == "0000:00:11.0"
    outcome = Hotplug(platform, timeout=20).detach("domu1", ["0000:00:11.0"])
    assert outcome.detached == ["0000:00:11.0"]
    after = be_keys(host)
    expected = libxl_remove(before, 1)
    assert after == expected
    assert after["dev-1"] == "0000:00:12.0" and after["vdev-1"] == before["vdev-2"]
    assert peek(host, "/libxl/pci/0000-00-11-0/domid") is None


def test_a_pciback_fatal_error_fails_with_the_error_node_and_keeps_the_other_devices(sim):
    host = sim(PV_WITH_BACKEND)
    platform = platform_of(host)
    assert wait_for(host, BE + "/state", "4")
    host.faults.add("pciback.export", "error", bdf="0000:00:11.0")
    with pytest.raises(HotplugError, match="Couldn't locate PCI device") as info:
        Hotplug(platform, timeout=20).attach("domu1", items("00:11.0"))
    assert "0000:00:11.0" in str(info.value)
    assert wait_for(host, BE + "/state", "4", timeout=10)
    keys = be_keys(host)
    assert keys["num_devs"] == "1" and keys["dev-0"] == "0000:00:10.0" and keys["state-0"] == "3"
    assert peek(host, "/libxl/pci/0000-00-11-0/domid") is None
    assert peek(host, "/libxl/pci/0000-00-10-0/domid") == "1"


def test_safety_refusals_come_before_any_write(sim):
    host = sim(DEVICES + """
domains:
  - {domid: 1, name: domu1, type: pv, state: running, passthrough: enabled, pcifront: true, devices: ["0000:00:10.0"]}
  - {domid: 2, name: domu2, type: pv, state: running, passthrough: enabled, pcifront: true}
  - {domid: 3, name: pvh1, type: pvh, state: running, passthrough: disabled}
  - {domid: 4, name: nopt, type: pv, state: running, passthrough: disabled, pcifront: true}
""")
    platform = platform_of(host)
    hp = Hotplug(platform, timeout=10)
    with pytest.raises(RefusedError, match=r"0000:00:10.0 is assigned to domu1 \(domid 1\)"):
        hp.attach("domu2", items("00:10.0"))
    with pytest.raises(RefusedError, match="in use by the dom0 driver e1000"):
        hp.attach("domu2", items("00:13.0"))
    with pytest.raises(RefusedError, match="does not exist"):
        hp.attach("domu2", items("00:1e.0"))
    with pytest.raises(RefusedError, match="PVH"):
        hp.attach("pvh1", items("00:11.0"))
    with pytest.raises(RefusedError, match="passthrough disabled"):
        hp.attach("nopt", items("00:11.0"))
    assert platform.xs.stats.writes == 0


def _attach_in_process(paths, bdf, queue):
    try:
        platform = connect(xenstore_path=paths["xenstored"], sysfs_root=paths["sysfs_root"],
                           hypervisor="xensim:" + paths["hypervisor"], userdata_dir=paths["userdata_dir"])
        Hotplug(platform, timeout=30).attach("domu1", items(bdf))
        queue.put(("ok", bdf))
    except Exception as exc:  # pylint: disable=broad-except
        queue.put(("error", "%s: %s" % (bdf, exc)))


def test_two_processes_attaching_to_one_domain_lose_nothing(sim):
    host = sim(PV_WITH_BACKEND)
    assert wait_for(host, BE + "/state", "4")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_attach_in_process, args=(dict(host.paths), b, queue)) for b in ("00:11.0", "00:12.0")]
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


def test_state_read_and_attach_costs_are_few_round_trips(sim):
    host = sim(PV_WITH_BACKEND)
    platform = platform_of(host)
    assert wait_for(host, BE + "/state", "4")
    deadline = Deadline(10)
    state = read_host(platform.xs, deadline)
    assert state.round_trips == 3
    assert state.domains[1].backend.devices[0].bdf == "0000:00:10.0"
    rt = platform.xs.stats.round_trips
    Hotplug(platform, timeout=20).attach("domu1", items("00:11.0"))
    attach_rts = platform.xs.stats.round_trips - rt
    # read host twice (3+3), prepare (2), domid (1), transaction (start, reads, writes, end: 4), confirm (watches + reads)
    assert attach_rts <= 25, attach_rts


def test_detach_from_a_guest_that_is_not_running_rebuilds_the_backend_without_waiting_for_it(sim):
    host = sim(DEVICES.replace("name: test-host", "name: paused-two") + """
domains:
  - {domid: 1, name: domu1, type: pv, state: paused, passthrough: enabled, pcifront: true,
     devices: ["0000:00:10.0", "0000:00:11.0"]}
""")
    platform = platform_of(host)
    assert wait_for(host, BE + "/state-1", "3")
    start = time.monotonic()
    outcome = Hotplug(platform, timeout=60).detach("domu1", ["0000:00:10.0"])
    assert time.monotonic() - start < 5
    assert outcome.detached == ["0000:00:10.0"]
    assert any("rebuilt the PCI backend" in a for a in outcome.report.actions)
    keys = be_keys(host)
    assert keys["num_devs"] == "1" and keys["dev-0"] == "0000:00:11.0"
    host.unpause(1)
    assert wait_for(host, FE + "/state", "4")
    assert sorted(host.call(host.guest_devices, 1).values()) == ["0000:00:11.0"]

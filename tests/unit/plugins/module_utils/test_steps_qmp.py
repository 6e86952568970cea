# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The QEMU (QMP) steps against xensim: dom0 QEMU, stubdom coldplug and hotplug, QMP failures."""

from __future__ import annotations

import os
import time

import pytest

from ansible_collections.xen.pci.plugins.module_utils import _steps_qmp
from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline
from ansible_collections.xen.pci.plugins.module_utils._errors import HotplugError, QmpConnectionError, RefusedError
from ansible_collections.xen.pci.plugins.module_utils._host_options import platform_from
from ansible_collections.xen.pci.plugins.module_utils._state import read_host

DEVICES = """
devices:
  - {bdf: "0000:00:10.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback, irq: 10,
     resources: [[0xfe000000, 0xfe0fffff, 0x40200]]}
  - {bdf: "0000:00:11.0", vendor: 0x1b36, device: 0x0005, class: 0x00ff00, driver: pciback,
     resources: [[0xfe100000, 0xfe100fff, 0x40200]]}
"""

STUBDOM_COLDPLUG = "name: hvm-stub-cold" + DEVICES + """
domains:
  - {domid: 3, name: win1, type: hvm, state: creating, passthrough: enabled, device_model: stubdom, stubdom: 4,
     qemu: {machine: pc, unplug: ack}}
  - {domid: 4, name: win1-dm, type: pv, state: running, target: 3, pcifront: true}
"""

STUBDOM_HOTPLUG = "name: hvm-stub-hot" + DEVICES + """
domains:
  - {domid: 3, name: win1, type: hvm, state: running, passthrough: enabled, device_model: stubdom, stubdom: 4,
     qemu: {machine: pc, unplug: ack}, devices: ["0000:00:10.0"]}
  - {domid: 4, name: win1-dm, type: pv, state: running, target: 3, pcifront: true}
"""

DOM0_QEMU = "name: hvm-dom0" + DEVICES + """
domains:
  - {domid: 5, name: hvm1, type: hvm, state: running, passthrough: enabled, device_model: dom0,
     qemu: {machine: pc, unplug: never}}
"""

STUB_BE = "/local/domain/0/backend/pci/4/0"


def devices_of(result, name):
    return [d["bdf"] for d in result["domains"][name]["devices"]]


def peek(host, path):
    value = host.call(host.store.peek, path)
    return value.decode() if value is not None else None


def test_stubdom_coldplug_creates_the_stubdom_backend_without_a_wait_then_device_add(sim, run, params_of):
    host = sim(STUBDOM_COLDPLUG)
    result = run(host, {"win1": ["00:10.0"]})
    assert devices_of(result, "win1") == ["0000:00:10.0"]
    assert any("created the PCI backend of win1-dm (domid 4)" in a and "no wait" in a for a in result["actions"])
    assert peek(host, STUB_BE + "/state") == "4" and peek(host, STUB_BE + "/state-0") == "3"
    assert [d["id"] for d in host.qemu.devices(3)] == ["pci-pt-00_10.0"]
    # Listed by the guest's own name.
    state = read_host(platform_from(params_of(host)).xs, Deadline(5))
    assert [d.bdf for d in state.resolve("win1").devices] == ["0000:00:10.0"]
    assert state.holder_of("0000:00:10.0") == 3
    # Nothing written for the guest's own domid.
    assert peek(host, "/local/domain/0/backend/pci/3/0/num_devs") is None


def test_stubdom_hotplug_with_a_backend_waits_then_one_cycle_then_qmp(sim, run):
    host = sim(STUBDOM_HOTPLUG)
    result = run(host, {"win1": ["00:11.0"]})
    assert any("appended 0000:00:11.0 to the PCI backend of win1-dm" in a and "one Reconfiguring cycle" in a
               for a in result["actions"])
    assert peek(host, STUB_BE + "/state-1") == "3"
    assert "pci-pt-00_11.0" in [d["id"] for d in host.qemu.devices(3)]
    assert result["devices"]["0000:00:11.0"]["qdev_id"] == "pci-pt-00_11.0"
    # Detach by the guest's name: QEMU first, then the stubdom's backend.
    out = run(host, {"win1": ["0000:00:11.0"]}, state="absent")
    assert devices_of(out, "win1") == ["0000:00:10.0"]
    assert "pci-pt-00_11.0" not in [d["id"] for d in host.qemu.devices(3)]
    assert peek(host, STUB_BE + "/num_devs") == "1"


def test_device_add_failing_twice_then_succeeding_is_retried(sim, run, monkeypatch):
    monkeypatch.setattr(_steps_qmp, "DEVICE_ADD_PAUSE", 0.1)
    host = sim(STUBDOM_COLDPLUG)
    host.faults.add("qemu.device_add", "error", times=2)
    result = run(host, {"win1": ["00:10.0"]})
    assert devices_of(result, "win1") == ["0000:00:10.0"]
    assert any("succeeded at try 3" in a for a in result["actions"])


def test_device_add_failing_always_is_a_clear_error_and_the_stubdom_attach_is_undone(sim, run, monkeypatch):
    # Same ten tries, a tenth of libxl's pause, to keep the suite fast.
    monkeypatch.setattr(_steps_qmp, "DEVICE_ADD_PAUSE", 0.1)
    host = sim(STUBDOM_HOTPLUG)
    host.faults.add("qemu.device_add", "error")
    with pytest.raises(HotplugError, match=r"QEMU of win1 \(domid 3\) refused 0000:00:11.0 after 10 tries") as info:
        run(host, {"win1": ["00:11.0"]}, timeout=40.0)
    assert peek(host, STUB_BE + "/num_devs") == "1" and peek(host, STUB_BE + "/dev-0") == "0000:00:10.0"
    assert peek(host, "/libxl/pci/0000-00-11-0/domid") is None
    assert info.value.details["changed"] is False and info.value.details["step"] == "qmp-add"


def test_unplug_never_acknowledged_is_bounded_and_force_completes_it(sim, run, monkeypatch):
    monkeypatch.setattr(_steps_qmp, "UNPLUG_WAIT", 2.0)
    host = sim(DOM0_QEMU)
    run(host, {"hvm1": ["00:10.0"]})
    assert [d["id"] for d in host.qemu.devices(5)] == ["pci-pt-00_10.0"]
    start = time.monotonic()
    with pytest.raises(HotplugError, match=r"did not release 0000:00:10.0.*use force") as info:
        run(host, {"hvm1": ["0000:00:10.0"]}, state="absent")
    assert time.monotonic() - start < _steps_qmp.UNPLUG_WAIT + 5
    # The device_del stays pending in QEMU (the guest may still acknowledge
    # it): said, not reported as undone.
    assert info.value.details["changed"] is True and "undone" not in info.value.msg
    assert "cannot be taken back (device_del 0000:00:10.0" in info.value.msg and info.value.details["journal"]
    assert peek(host, "/libxl/pci/0000-00-10-0/domid") == "5"
    start = time.monotonic()
    out = run(host, {"hvm1": ["0000:00:10.0"]}, state="absent", force=True)
    assert [r["outcome"] for r in out["recovered"]] == ["finished"], out["recovered"]
    # One wait for the unplug (the recovery's), not a second one by the request.
    assert time.monotonic() - start < 2 * _steps_qmp.UNPLUG_WAIT
    assert devices_of(out, "hvm1") == []
    assert peek(host, "/libxl/pci/0000-00-10-0/domid") is None
    assert any("forced" in w for w in out["warnings_detail"])
    # QEMU still has it (the guest never let go): said, not hidden.
    assert [left for left in out["left"] if "pci-pt-00_10.0" in left] and \
        len([left for left in out["left"] if "pci-pt-00_10.0" in left]) == 1, out["left"]


def test_the_slot_qemu_chose_is_recorded_as_vdevfn_as_libxl_does(sim, run, params_of):
    """Real Xen 4.17: after xl pci-attach to a HVM guest, vdevfn-N holds the
    devfn query-pci shows (xl pci-list prints it); a requested slot is
    written as asked, before device_add."""
    host = sim(DOM0_QEMU)
    run(host, {"hvm1": ["00:10.0", "00:11.0@7"]})
    platform = platform_from(params_of(host))
    placed = {d.qdev_id: d.slot << 3 | d.function
              for d in _steps_qmp.qemu_devices(platform, 5, None, "hvm1", Deadline(5))}
    be = "/local/domain/0/backend/pci/5/0"
    index = {peek(host, be + "/dev-%d" % i): i for i in range(2)}
    assert peek(host, be + "/vdevfn-%d" % index["0000:00:10.0"]) == "%x" % placed["pci-pt-00_10.0"]
    assert peek(host, be + "/vdevfn-%d" % index["0000:00:11.0"]) == "38" == "%x" % placed["pci-pt-00_11.0"]
    # What the host read sees; a rerun changes nothing.
    again = run(host, {"hvm1": ["00:10.0", "00:11.0@7"]})
    assert again["changed"] is False
    state = read_host(platform.xs, Deadline(5))
    assert {str(d.bdf): d.vdevfn for d in state.resolve("hvm1").devices} == {
        "0000:00:10.0": placed["pci-pt-00_10.0"], "0000:00:11.0": 0x38}


def test_the_slot_is_recorded_from_the_attachs_own_read_back_or_else_from_query_pci(sim, run, params_of):
    """The slot QEMU chose is what QmpAdd's check read back: no QMP session
    of its own. Run without that check in the process, the step reads it
    from query-pci."""
    # pylint: disable=import-outside-toplevel
    from ansible_collections.xen.pci.plugins.module_utils._budget import Budget
    from ansible_collections.xen.pci.plugins.module_utils._engine import Context
    host = sim(DOM0_QEMU)
    run(host, {"hvm1": ["00:10.0"]})
    commands = [c[1] for c in host.qemu.commands(5)]
    # Planned (before and under the lock), device_add, its check: no fourth read for the slot.
    assert commands.count("query-pci") == 3 and commands.count("device_add") == 1, commands
    be = "/local/domain/0/backend/pci/5/0"
    recorded = peek(host, be + "/vdevfn-0")
    platform = platform_from(params_of(host))
    platform.xs.rm(be + "/vdevfn-0")
    ctx = Context(platform, Budget(10.0, "test"))
    dom = read_host(platform.xs, Deadline(5)).resolve("hvm1")
    _steps_qmp.RecordSlots(domid=5, uuid=dom.uuid, label="hvm1", bdfs=["0000:00:10.0"]).do(ctx)
    assert peek(host, be + "/vdevfn-0") == recorded
    assert [c[1] for c in host.qemu.commands(5)].count("query-pci") == 4


def test_qmp_socket_missing_is_a_clear_error_before_any_xenstore_write(sim, run, params_of):
    host = sim(DOM0_QEMU)
    platform = platform_from(params_of(host))
    os.unlink(os.path.join(host.paths["qmp_dir"], "qmp-libxl-5"))
    with pytest.raises(QmpConnectionError, match=r"qmp-libxl-5 of hvm1 \(domid 5\) does not exist"):
        run(host, {"hvm1": ["00:10.0"]}, platform=platform)
    assert platform.xs.stats.writes == 0


def test_dead_qemu_is_a_clear_error_before_any_xenstore_write(sim, run, params_of):
    host = sim(DOM0_QEMU)
    platform = platform_from(params_of(host))
    host.call(host.qemu.kill, 5)
    with pytest.raises(QmpConnectionError, match=r"hvm1 \(domid 5\)"):
        run(host, {"hvm1": ["00:10.0"]}, platform=platform)
    assert platform.xs.stats.writes == 0


MULTIFUNCTION = """
name: multifunction
devices:
  - {bdf: "0000:00:14.0", vendor: 0x8086, device: 0x10c9, class: 0x020000, driver: pciback}
  - {bdf: "0000:00:14.1", vendor: 0x8086, device: 0x10c9, class: 0x020000, driver: pciback}
domains:
  - {domid: 1, name: pv1, type: pv, state: running, pcifront: true}
  - {domid: 5, name: hvm1, type: hvm, state: running, passthrough: enabled, device_model: dom0, qemu: {machine: pc, unplug: ack}}
"""


def test_multifunction_device_keeps_its_function_numbers_in_pv_and_hvm(sim, run):
    host = sim(MULTIFUNCTION)
    pv = run(host, {"pv1": ["00:14.*@5"]})
    assert devices_of(pv, "pv1") == ["0000:00:14.1", "0000:00:14.0"]        # function 0 last, as libxl
    be = "/local/domain/0/backend/pci/1/0"
    assert peek(host, be + "/vdevfn-0") == "29" and peek(host, be + "/vdevfn-1") == "28"
    assert peek(host, be + "/state-0") == "3" and peek(host, be + "/state-1") == "3"
    run(host, {"pv1": ["0000:00:14.0", "0000:00:14.1"]}, state="absent")
    hvm = run(host, {"hvm1": ["00:14.*@6"]})
    assert {b: (d["vslot"], d["vfunc"]) for b, d in hvm["devices"].items()} == {"0000:00:14.1": (6, 1), "0000:00:14.0": (6, 0)}


def test_a_stub_domain_named_instead_of_its_guest_is_refused_whatever_the_state(sim, run):
    """Detaching from the stub domain itself would leave the device in the guest's QEMU."""
    host = sim(STUBDOM_HOTPLUG)
    for state in ("present", "absent", "exact"):
        with pytest.raises(RefusedError, match=r"win1-dm \(domid 4\) is the stub domain of domid 3; give the devices to that guest"):
            run(host, {"4": ["0000:00:10.0"]}, state=state)
    assert peek(host, STUB_BE + "/dev-0") == "0000:00:10.0"
    assert "pci-pt-00_10.0" in [d["id"] for d in host.qemu.devices(3)]

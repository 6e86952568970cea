# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_grants against xensim: the FUSE sysfs and the hypervisor recorder."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import types

import pytest

from ansible_collections.xen.pci.plugins.module_utils._errors import HypervisorError, SpecError, SysfsError
from ansible_collections.xen.pci.plugins.module_utils._grants import Grants, plan
from ansible_collections.xen.pci.plugins.module_utils._sysfs import Sysfs
from ansible_collections.xen.pci.plugins.module_utils._xenctrl import DOMID_IO, SimXenCtrl

_XENSIM = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "tools", "xensim"))
if os.path.isdir(_XENSIM) and _XENSIM not in sys.path:
    sys.path.insert(0, _XENSIM)
sysfs_sim = pytest.importorskip("xensim.sysfs", reason="xensim (tools/xensim) is not importable")
hypervisor = pytest.importorskip("xensim.hypervisor", reason="xensim (tools/xensim) is not importable")

SCENARIO = {
    "devices": [
        {"bdf": "00:10.0", "vendor": 0x1234, "device": 0x11E8, "driver": "pciback",
         "resources": [[0xFE000000, 0xFE0FFFFF, 0x40200]], "irq": 11},
        {"bdf": "00:11.0", "vendor": 0x1B36, "device": 0x0005, "hidden": True, "irq": 10,
         "resources": [[0xC000, 0xC03F, 0x40101], [0xFE100000, 0xFE100FFF, 0x40200], [0, 0, 0],
                       [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0],
                       [0xFD000000, 0xFD003FFF, 0x40200]]},   # an SR-IOV BAR: not granted
        {"bdf": "00:12.0", "vendor": 0x8086, "device": 0x100E, "driver": "pciback", "irq": 0,
         "resources": [[0xFEB80000, 0xFEB9FFFF, 0x40200]]},
    ],
    "domains": [
        {"domid": 1, "type": "pv", "state": "running", "passthrough": "enabled"},
        {"domid": 2, "type": "pv", "state": "running", "passthrough": "disabled"},
        {"domid": 3, "type": "hvm", "state": "running", "passthrough": "enabled"},
        {"domid": 4, "type": "pv", "state": "running", "passthrough": "enabled", "target": 3},
    ],
}


@pytest.fixture
def env(tmp_path):
    why = sysfs_sim.SysfsFS.available()
    if why:
        pytest.skip("FUSE sysfs cannot run here: %s" % why)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    host = types.SimpleNamespace(paths={"sysfs_root": str(tmp_path / "sys"), "hypervisor": str(tmp_path / "privcmd")},
                                 scenario=SCENARIO, grants=[], loop=loop)
    fs = sysfs_sim.SysfsFS(host)
    try:
        fs.start_sync()
    except RuntimeError as exc:
        pytest.skip("FUSE cannot mount here: %s" % exc)
    hv = hypervisor.Hypervisor(host)
    asyncio.run_coroutine_threadsafe(hv.start(), loop).result(10)
    xc = SimXenCtrl(hv.path, timeout=5)
    yield types.SimpleNamespace(fs=fs, hv=hv, host=host, grants=Grants(xc, Sysfs(fs.root, timeout=5)))
    xc.close()
    asyncio.run_coroutine_threadsafe(hv.stop(), loop).result(10)
    fs.stop_sync()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def ops(host):
    return [(g["op"], g["args"].get("allow"), g["result"] if isinstance(g["result"], str) else "ok")
            for g in host.grants]


def test_plan_reads_resources_and_irq(env):
    steps = plan(Sysfs(env.fs.root), "00:11.0", permissive=True)
    assert [s["op"] for s in steps] == ["ioport_permission", "iomem_permission", "physdev_map_pirq",
                                        "irq_permission", "permissive", "assign_device"]
    assert steps[0] == {"op": "ioport_permission", "first_port": 0xC000, "nr_ports": 0x40}
    assert steps[1] == {"op": "iomem_permission", "first_mfn": 0xFE100, "nr_mfns": 1}
    # no legacy irq (0): no pirq steps; a stubdom target: no assign
    assert [s["op"] for s in plan(Sysfs(env.fs.root), "00:12.0", assign=False)] == ["iomem_permission"]
    with pytest.raises(SpecError):
        plan(Sysfs(env.fs.root), "00:12.0", rdm_policy="loose")


def test_grant_then_revoke_pv(env):
    rec = env.grants.grant(1, "00:11.0", permissive=True, hvm=False)
    assert rec["pirq"] == 10
    assert [s["result"] for s in rec["steps"]] == ["ok"] * 6
    assert ops(env.host) == [("ioport_permission", True, "ok"), ("iomem_permission", True, "ok"),
                             ("physdev_map_pirq", None, "ok"), ("irq_permission", True, "ok"),
                             ("assign_device", None, "ok")]
    assert env.hv.permissions(1) == {"iomem": [(0xFE100, 0xFE100)], "ioport": [(0xC000, 0xC03F)],
                                     "irq": [(10, 10)], "pirqs": {10: 10}}
    assert env.hv.owner("0000:00:11.0") == 1
    assert env.fs.is_permissive("00:11.0")
    env.host.grants.clear()

    rev = env.grants.revoke(1, "00:11.0", pirq=rec["pirq"], reset=True)
    assert ops(env.host) == [("ioport_permission", False, "ok"), ("iomem_permission", False, "ok"),
                             ("physdev_unmap_pirq", None, "ok"), ("irq_permission", False, "ok"),
                             ("deassign_device", None, "ok")]
    assert env.hv.permissions(1) == {"iomem": [], "ioport": [], "irq": [], "pirqs": {}}
    # Xen quarantines on deassign from a guest
    assert env.hv.owner("0000:00:11.0") == DOMID_IO
    assert [s for s in rev["steps"] if s["op"] == "reset"] == [{"op": "reset", "result": "none"}]
    # a second revoke finds everything undone and says so
    again = env.grants.revoke(1, "00:11.0", pirq=10)
    assert {s["op"]: s["result"] for s in again["steps"]}["deassign_device"] == "ENODEV (already undone)"
    assert {s["op"]: s["result"] for s in again["steps"]}["physdev_unmap_pirq"] == "EINVAL (already undone)"


def test_domain_without_passthrough_rolls_back(env):
    with pytest.raises(HypervisorError) as ei:
        env.grants.grant(2, "00:10.0")
    err = ei.value
    assert err.errno == "EOPNOTSUPP"
    assert isinstance(err.__cause__, HypervisorError) and err.__cause__.errno == "EOPNOTSUPP"   # the call's own error
    assert "0000:00:10.0" in err.msg and "domain 2" in err.msg
    steps = err.details["record"]["steps"]
    assert [(s["op"], s["result"], s.get("undone")) for s in steps] == [
        ("iomem_permission", "ok", True), ("physdev_map_pirq", "ok", True), ("irq_permission", "ok", True),
        ("assign_device", "EOPNOTSUPP", None)]
    assert env.hv.permissions(2) == {"iomem": [], "ioport": [], "irq": [], "pirqs": {}}
    assert [entry[0] for entry in ops(env.host)][-3:] == ["irq_permission", "physdev_unmap_pirq", "iomem_permission"]
    assert env.hv.owner("0000:00:10.0") == 0


def test_device_of_another_guest_is_ebusy(env):
    env.grants.grant(1, "00:12.0")
    with pytest.raises(HypervisorError) as ei:
        env.grants.grant(3, "00:12.0", hvm=True)
    assert ei.value.errno == "EBUSY"
    assert env.hv.owner("00:12.0") == 1
    assert env.hv.permissions(3)["iomem"] == []
    assert env.hv.permissions(1)["iomem"] == [(0xFEB80, 0xFEB9F)]


def test_stubdom_target_gets_permissions_but_no_assign(env):
    env.grants.grant(4, "00:12.0", assign=False)
    assert "assign_device" not in [entry[0] for entry in ops(env.host)]
    assert env.hv.permissions(4)["iomem"] == [(0xFEB80, 0xFEB9F)]
    env.grants.grant(3, "00:12.0", rdm_policy="relaxed")
    assert env.hv.calls("assign_device")[-1]["args"]["flags"] == 1
    assert env.hv.owner("00:12.0") == 3


def test_enosys_is_tolerated_only_for_pv(env):
    env.hv.inject("assign_device", "ENOSYS")
    rec = env.grants.grant(1, "00:12.0")          # type asked from Xen: PV
    assert rec["steps"][-1]["result"] == "ENOSYS (tolerated: PV target)"
    with pytest.raises(HypervisorError) as ei:
        env.grants.grant(3, "00:12.0")            # HVM
    assert ei.value.errno == "ENOSYS"
    assert env.hv.permissions(3)["iomem"] == []


def test_permissive_needs_pciback_and_rolls_back(env):
    sysfs = Sysfs(env.fs.root)
    sysfs.write(sysfs.pciback_path("unbind"), "0000:00:12.0")   # someone took it from pciback meanwhile
    with pytest.raises(SysfsError) as ei:
        env.grants.grant(1, "00:12.0", permissive=True)
    assert ei.value.details["errno"] == "ENODEV"
    assert isinstance(ei.value.__cause__, SysfsError)
    assert env.hv.permissions(1)["iomem"] == []
    assert env.hv.owner("00:12.0") == 0

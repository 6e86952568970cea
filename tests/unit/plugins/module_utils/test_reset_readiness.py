# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reset policy and host readiness (_reset, _readiness) against xensim:
refusals before any write, warnings, a failed reset on detach reported."""

from __future__ import annotations

import pytest

from ansible_collections.xen.pci.plugins.module_utils._errors import RefusedError
from ansible_collections.xen.pci.plugins.module_utils._host_options import platform_from
from ansible_collections.xen.pci.plugins.module_utils._readiness import device_facts, host_readiness
from ansible_collections.xen.pci.plugins.module_utils._reset import config_capabilities, reset_report
from ansible_collections.xen.pci.plugins.module_utils._xenctrl import virt_caps

HOST = """
name: reset-host
{extra}
devices:
  - {{bdf: "0000:00:10.0", vendor: 0x1234, device: 0x11e8, driver: pciback, reset_method: [flr, pm], iommu_group: 3}}
  - {{bdf: "0000:00:10.1", vendor: 0x1234, device: 0x11e9, driver: pciback, reset: false, iommu_group: 3}}
  - {{bdf: "0000:00:1c.0", vendor: 0x8086, device: 0x2448, class: 0x060400, header_type: 1, driver: pciback}}
domains:
  - {{domid: 1, name: web, type: pv, state: running, pcifront: true}}
"""


def host_text(extra=""):
    return HOST.format(extra=extra)


def test_reset_report_reads_every_source(sim, params_of):
    host = sim(host_text())
    sysfs = platform_from(params_of(host)).sysfs
    good = reset_report(sysfs, "0000:00:10.0")
    assert good["usable"] and good["method"] == "reset" and good["methods"] == ["flr", "pm"]
    assert good["sources"]["config"] == {"flr": True, "af_flr": False, "pm": True}
    bad = reset_report(sysfs, "0000:00:10.1")
    assert not bad["usable"] and bad["method"] is None and bad["methods"] == []
    assert bad["sources"]["reset_method"] is None and bad["sources"]["reset_file"] is False
    assert "0000:00:10.1 has no reset" in bad["why"] and "flr no" in bad["why"] and "pm no" in bad["why"]


def test_config_capabilities_needs_the_whole_header():
    assert config_capabilities(b"\0" * 64) == {}     # what a non-root reader gets
    assert config_capabilities(b"\0" * 256) == {"flr": False, "af_flr": False, "pm": None}


def test_virt_caps_as_xl_info_prints_them():
    assert virt_caps(0b1100111111) == "pv hvm hvm_directio pv_directio hap shadow iommu_hap_pt_share gnttab-v1 gnttab-v2"
    assert virt_caps(0b1100011011) == "pv hvm hap shadow gnttab-v1 gnttab-v2"


def test_readiness_of_host_and_devices(sim, params_of):
    host = sim(host_text())
    platform = platform_from(params_of(host))
    ready = host_readiness(platform)
    assert ready["passthrough_ready"] is True and ready["iommu"] is True and ready["reasons"] == []
    assert "hvm_directio" in ready["virt_caps"] and ready["pciback"] == "module"
    assert ready["rmrr"].startswith("unknown")
    facts = device_facts(platform.sysfs, "0000:00:10.0")
    assert facts == {"header_type": 0, "kind": "endpoint", "endpoint": True, "iommu_group": 3,
                     "group_peers": ["0000:00:10.1"], "slot_peers": ["0000:00:10.1"]}
    assert device_facts(platform.sysfs, "0000:00:1c.0")["kind"] == "pci_bridge"


def test_host_without_iommu_is_not_ready_and_refuses_before_any_write(sim, params_of, run):
    host = sim(host_text("iommu: false\npciback: builtin"))
    ready = host_readiness(platform_from(params_of(host)))
    assert ready["passthrough_ready"] is False and ready["iommu"] is False and ready["pciback"] == "builtin"
    assert "hvm_directio" not in ready["virt_caps"] and "without an IOMMU" in ready["reasons"][0]
    before = len(host.grants)
    with pytest.raises(RefusedError) as ei:
        run(host, {"web": ["00:10.0"]})
    assert "0000:00:10.0 cannot be assigned on this host" in ei.value.msg and "IOMMU" in ei.value.msg
    assert ei.value.details["readiness"]["passthrough_ready"] is False
    # only physinfo was asked: no grant, no assign
    assert host.grants[before:] and {g["op"] for g in host.grants[before:]} == {"physinfo"}


def test_bridge_is_refused_whatever_the_policy(sim, run):
    host = sim(host_text())
    for policy in ("none", "best_effort", "strict"):
        with pytest.raises(RefusedError) as ei:
            run(host, {"web": ["00:1c.0"]}, reset=policy)
        assert "0000:00:1c.0 is a pci bridge (config space header type 1), not an endpoint" in ei.value.msg


def test_strict_refuses_a_device_without_reset_in_check_mode_and_for_real(sim, params_of):
    from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough
    host = sim(host_text())
    params = params_of(host, reset="strict", timeout=20.0)
    for check in (True, False):
        with pytest.raises(RefusedError) as ei:
            run_passthrough(params, {"web": ["00:10.1"]}, check_mode=check)
        assert "0000:00:10.1 has no reset" in ei.value.msg and "reset: strict refuses it" in ei.value.msg
        assert ei.value.details["reset"]["usable"] is False
    assert not any(g["op"] == "assign_device" for g in host.grants)
    # a device with a reset is attached under strict, then nothing changes on a rerun
    real = run_passthrough(params, {"web": ["00:10.0"]})
    assert real["changed"] and [d["bdf"] for d in real["domains"]["web"]["devices"]] == ["0000:00:10.0"]
    assert not run_passthrough(params, {"web": ["00:10.0"]})["changed"]


def test_best_effort_attaches_and_warns_none_stays_quiet(sim, run):
    host = sim(host_text())
    result = run(host, {"web": ["00:10.1"]})
    assert result["changed"]
    assert any("0000:00:10.1 has no reset" in w and "best_effort" in w for w in result["warnings_detail"])
    run(host, {"web": ["00:10.1"]}, state="absent")
    quiet = run(host, {"web": ["00:10.1"]}, reset="none")
    assert quiet["changed"] and not any("has no reset" in w for w in quiet["warnings_detail"])


def test_failed_reset_on_detach_is_reported(sim, run):
    host = sim(host_text())
    run(host, {"web": ["00:10.1"]}, reset="none")
    result = run(host, {"web": ["00:10.1"]}, state="absent")
    assert result["changed"] and result["domains"]["web"]["devices"] == []
    assert [r["bdf"] for r in result["reset_failed"]] == ["0000:00:10.1"]
    assert "no reset" in result["reset_failed"][0]["error"]
    run(host, {"web": ["00:10.0"]})
    ok = run(host, {"web": ["00:10.0"]}, state="absent")
    assert ok["reset_failed"] == [] and host.sysfs.resets("0000:00:10.0")[-1] == "reset"


POOL = """
name: pool-host
{extra}
devices:
  - {{bdf: "0000:00:10.0", vendor: 0x1234, device: 0x11e8, driver: null, reset_method: [flr]}}
  - {{bdf: "0000:00:11.0", vendor: 0x1234, device: 0x11e9, driver: null, reset: false}}
  - {{bdf: "0000:00:1c.0", vendor: 0x8086, device: 0x2448, class: 0x060400, header_type: 1, driver: null}}
"""


def test_assignable_reset_policy_and_refusals(sim, params_of):
    from ansible_collections.xen.pci.plugins.module_utils._runner_assignable import run_assignable
    host = sim(POOL.format(extra=""))
    strict = params_of(host, devices=["00:11.0"], reset="strict", timeout=20.0)
    for check in (True, False):
        with pytest.raises(RefusedError) as ei:
            run_assignable(strict, check_mode=check)
        assert "0000:00:11.0 has no reset" in ei.value.msg
    assert host.sysfs.driver_of("0000:00:11.0") is None
    with pytest.raises(RefusedError) as ei:
        run_assignable(params_of(host, devices=["00:1c.0"], timeout=20.0))
    assert "not an endpoint" in ei.value.msg and host.sysfs.driver_of("0000:00:1c.0") is None
    # four steps under strict for a device with a reset
    ok = params_of(host, devices=["00:10.0"], reset="strict", timeout=20.0)
    check, real = run_assignable(ok, check_mode=True), run_assignable(ok)
    again, again_check = run_assignable(ok), run_assignable(ok, check_mode=True)
    assert check["changed"] and real["changed"] and check["diff"] == real["diff"]
    assert not again["changed"] and not again_check["changed"]
    assert host.sysfs.driver_of("0000:00:10.0") == "pciback"
    warned = run_assignable(params_of(host, devices=["00:11.0"], timeout=20.0))
    assert warned["changed"] and any("0000:00:11.0 has no reset" in w for w in warned["warnings_detail"])


def test_assignable_refuses_every_device_without_iommu(sim, params_of):
    from ansible_collections.xen.pci.plugins.module_utils._runner_assignable import run_assignable
    host = sim(POOL.format(extra="iommu: false"))
    with pytest.raises(RefusedError) as ei:
        run_assignable(params_of(host, devices=["00:10.0"], timeout=20.0), check_mode=True)
    assert "cannot be assigned on this host" in ei.value.msg and "IOMMU" in ei.value.msg
    assert host.sysfs.driver_of("0000:00:10.0") is None


def test_info_readiness_detail(sim, params_of):
    from ansible_collections.xen.pci.plugins.module_utils._runner_info import run_info
    host = sim(host_text())
    full = run_info(params_of(host, detail="full"))
    assert "readiness" not in full and "reset" not in full["devices"][0]
    out = run_info(params_of(host, detail="readiness"))
    assert out["readiness"]["passthrough_ready"] is True
    by_bdf = {d["bdf"]: d for d in out["devices"]}
    assert by_bdf["0000:00:10.0"]["reset"]["usable"] and not by_bdf["0000:00:10.1"]["reset"]["usable"]
    assert by_bdf["0000:00:10.0"]["assignability"]["refused"] is None
    assert "not an endpoint" in by_bdf["0000:00:1c.0"]["assignability"]["refused"]
    off = sim(host_text("iommu: false"))
    ready = run_info(params_of(off, detail="readiness"))["readiness"]
    assert ready["passthrough_ready"] is False and "without an IOMMU" in ready["reasons"][0]


def test_a_selected_device_gets_the_reset_refusal_before_any_write(sim, params_of):
    """A select entry whose single match has no reset, under reset: strict:
    refused in check mode and for real, naming the chosen device, with no
    write to xenstore, sysfs or the hypervisor."""
    from ansible_collections.xen.pci.plugins.module_utils._runner_assignable import run_assignable
    from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough
    host = sim(host_text())
    desired = {"web": [{"select": {"id": "1234:11e9"}}]}
    params = params_of(host, reset="strict", timeout=20.0)

    def toolstack_writes():
        return [e for e in host.call(lambda: list(host.store.access_log))
                if e.label.startswith("A") and e.op in ("write", "mkdir", "rm", "setperms")]
    store_before = len(toolstack_writes())
    for check in (True, False):
        with pytest.raises(RefusedError) as ei:
            run_passthrough(params, desired, check_mode=check)
        assert "0000:00:10.1 has no reset" in ei.value.msg and "reset: strict refuses it" in ei.value.msg
        assert ei.value.details["reset"]["usable"] is False
    assert len(toolstack_writes()) == store_before and host.sysfs.events == []
    assert not any(g["op"] == "assign_device" for g in host.grants)
    # best_effort takes the same selected device and says why it warns
    result = run_passthrough(params_of(host, timeout=20.0), desired)
    assert [d["bdf"] for d in result["domains"]["web"]["devices"]] == ["0000:00:10.1"]
    assert result["selected"]["web"][0]["bdfs"] == ["0000:00:10.1"]
    assert any("0000:00:10.1 has no reset" in w for w in result["warnings_detail"])
    assert len(toolstack_writes()) > store_before        # the attach wrote: the count above could see a write
    # assignable: the pool's selector sees the same refusal, nothing bound
    pool = sim(POOL.format(extra=""))
    with pytest.raises(RefusedError) as ei:
        run_assignable(params_of(pool, devices=[{"select": {"device": "11e9"}}], reset="strict", timeout=20.0))
    assert "0000:00:11.0 has no reset" in ei.value.msg
    assert pool.sysfs.driver_of("0000:00:11.0") is None and pool.sysfs.events == []

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan module's runner against xensim: one read says what a real run
would change (hotplug, journals, pciback, config files) and changes nothing."""

from __future__ import annotations

import os

import pytest

from ansible_collections.xen.pci.plugins.module_utils._errors import RefusedError, SpecError
from ansible_collections.xen.pci.plugins.module_utils._host_options import HOST_ARGS, platform_from
from ansible_collections.xen.pci.plugins.module_utils._runner_plan import run_plan
from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough

HOST = """
name: plan-host
devices:
  - {bdf: "0000:00:10.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback, iommu_group: 3}
  - {bdf: "0000:00:11.0", vendor: 0x1b36, device: 0x0005, class: 0x00ff00, driver: pciback}
  - {bdf: "0000:00:12.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: e1000}
  - {bdf: "0000:00:13.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: null}
domains:
  - {domid: 1, name: web, type: pv, state: running, pcifront: true, devices: ["0000:00:10.0"]}
  - {domid: 2, name: db, type: pv, state: running, pcifront: true, devices: ["0000:00:11.0"]}
"""


class Killed(BaseException):
    """Stops a request part-way, as a kill -9 would (no undo runs)."""


def params_for(host, config_dir=None, **extra):
    p = {k: v.get("default") for k, v in HOST_ARGS.items()}
    p.update(xenstore_path=host.paths["xenstored"], sysfs_root=host.paths["sysfs_root"],
             hypervisor="xensim:" + host.paths["hypervisor"], userdata_dir=host.paths["userdata_dir"],
             qmp_dir=host.paths["qmp_dir"], timeout=30.0, domain=None, devices=None, state="present",
             make_assignable=False, take_from_driver=[], force=False, reset="best_effort", config_dir=config_dir,
             config_files={}, config_create=False, require_iommu=False)
    p.update(extra)
    return p


def write(path, text):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def plan_without_writes(params, desired):
    """The plan, and the number of xenstore writes it made (must be 0)."""
    platform = platform_from(params)
    result = run_plan(params, desired, platform=platform)
    return result, platform.xs.stats.writes


def test_a_converged_host_has_no_changes_and_nothing_is_written(sim, tmp_path):
    host = sim(HOST)
    write(str(tmp_path / "web.cfg"), "name = 'web'\npci = ['0000:00:10.0']\n")
    write(str(tmp_path / "db.cfg"), "name = 'db'\npci = [ '00:11.0' ]\n")
    result, writes = plan_without_writes(params_for(host, str(tmp_path)), {"web": ["00:10.0"], "db": ["00:11.0"]})
    assert result["changed"] is False and result["changes"] is False and result["why"] == []
    assert writes == 0
    assert [(c["path"], c["changed"]) for c in result["configs"]] == [
        (str(tmp_path / "db.cfg"), False), (str(tmp_path / "web.cfg"), False)]
    assert [d["bdf"] for d in result["domains"]["web"]["devices"]] == ["0000:00:10.0"]
    assert result["resolved"]["web"][0]["driver"] == "pciback"
    # The file written another way (00:11.0 for 0000:00:11.0) is not a change, and is left byte for byte.
    assert read(str(tmp_path / "db.cfg")) == "name = 'db'\npci = [ '00:11.0' ]\n"


def test_each_pending_change_is_named_and_none_is_made(sim, tmp_path):
    host = sim(HOST)
    write(str(tmp_path / "web.cfg"), "name = 'web'\n")
    params = params_for(host, str(tmp_path), make_assignable=True, config_create=True)
    result, writes = plan_without_writes(params, {"web": ["00:10.0", "00:13.0"], "db": ["00:11.0"]})
    assert result["changed"] is False and result["changes"] is True and writes == 0
    assert result["why"] == [
        "attach 0000:00:13.0 to web (domid 1)",
        "bind to pciback: 0000:00:13.0",
        "config file: %s" % (tmp_path / "db.cfg"),
        "config file: %s" % (tmp_path / "web.cfg"),
    ]
    # Nothing changed: the device is still free and unbound, no file was created or edited.
    again = run_passthrough(params_for(host), {"web": ["00:10.0"]}, check_mode=True)
    assert [d["bdf"] for d in again["domains"]["web"]["devices"]] == ["0000:00:10.0"]
    assert not os.path.exists(str(tmp_path / "db.cfg"))
    assert read(str(tmp_path / "web.cfg")) == "name = 'web'\n"
    assert not os.path.lexists(os.path.join(host.paths["sysfs_root"], "bus/pci/devices/0000:00:13.0/driver"))


def test_config_files_name_files_outside_config_dir_and_ignore_other_guests(sim, tmp_path):
    host = sim(HOST)
    other = tmp_path / "elsewhere"
    other.mkdir()
    write(str(other / "w.cfg"), "name = 'web'\n")
    params = params_for(host, str(tmp_path), config_files={"web": str(other / "w.cfg"), "not-here": "/nonexistent.cfg"})
    result, _writes = plan_without_writes(params, {"web": ["00:10.0"]})
    assert result["why"] == ["config file: %s" % (other / "w.cfg")]
    assert result["configs"][0]["devices"] == ["0000:00:10.0"]


def test_without_config_dir_only_the_files_named_are_compared(sim, tmp_path):
    host = sim(HOST)
    nothing, _writes = plan_without_writes(params_for(host, None), {"web": ["00:10.0"], "db": ["00:11.0"]})
    assert nothing["configs"] == [] and nothing["changes"] is False
    write(str(tmp_path / "w.cfg"), "name = 'web'\n")
    named, _writes = plan_without_writes(params_for(host, None, config_files={"web": str(tmp_path / "w.cfg")}),
                                         {"web": ["00:10.0"], "db": ["00:11.0"]})
    assert [c["path"] for c in named["configs"]] == [str(tmp_path / "w.cfg")]
    assert named["why"] == ["config file: %s" % (tmp_path / "w.cfg")]


def test_a_selector_goes_into_the_config_file_as_the_address_chosen(sim, tmp_path):
    host = sim(HOST)
    write(str(tmp_path / "web.cfg"), "name = 'web'\n")
    result, _writes = plan_without_writes(params_for(host, str(tmp_path)),
                                          {"web": [{"select": {"id": "1234:11e8"}, "count": 1, "permissive": True}]})
    # The guest's own device is chosen first; its options differ, so it would be attached again.
    assert result["selected"]["web"][0]["bdfs"] == ["0000:00:10.0"]
    assert result["configs"][0]["devices"] == ["0000:00:10.0,permissive=1"]
    assert result["changes"] is True


def test_a_bad_config_files_value_is_refused_before_the_host_is_read(tmp_path):
    params = {k: v.get("default") for k, v in HOST_ARGS.items()}
    # No xenstored behind this path: the refusal must come first.
    params.update(xenstore_path=str(tmp_path / "no-socket"), sysfs_root=str(tmp_path), domain=None, devices=None,
                  state="present", config_dir=str(tmp_path), config_files={"web": ["a.cfg"], "db": ""})
    with pytest.raises(SpecError) as caught:
        run_plan(params, {"web": ["00:10.0"]})
    assert caught.value.details["input"] == "config_files"
    assert "not a path for db, web" in caught.value.msg


def test_the_core_refusal_rules_apply(sim, tmp_path):
    host = sim(HOST)
    with pytest.raises(RefusedError) as caught:
        run_plan(params_for(host, str(tmp_path)), {"web": ["00:12.0"], "db": ["00:10.0"]})
    problems = [p["msg"] for p in caught.value.details["problems"]]
    assert any("in use by the dom0 driver e1000" in m for m in problems)
    assert any("0000:00:10.0 is assigned to web" in m for m in problems)


def test_require_iommu_names_the_devices_without_a_group(sim):
    host = sim(HOST)
    ok = run_plan(params_for(host, require_iommu=True), {"web": ["00:10.0"]})
    assert ok["changes"] is False
    with pytest.raises(SpecError) as caught:
        run_plan(params_for(host, require_iommu=True), {"web": ["00:10.0"], "db": ["00:11.0"]})
    assert caught.value.msg.startswith("no IOMMU group for 0000:00:11.0 ")
    assert caught.value.details["device"] == "0000:00:11.0"


def test_a_killed_request_is_a_change_to_finish(sim):
    host = sim(HOST)
    calls = []

    def kill(point):
        calls.append(point)
        if len(calls) == 2:
            raise Killed(point)
    with pytest.raises(Killed):
        run_passthrough(params_for(host, make_assignable=True), {"web": ["00:13.0"]}, hook=kill)
    result = run_plan(params_for(host), {"web": ["00:10.0"]})
    assert result["changes"] is True
    assert result["why"][-1].startswith("finish the interrupted request of /tool/xen-pci/journal/")
    assert result["interrupted"]

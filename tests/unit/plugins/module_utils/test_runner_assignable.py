# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The assignable module's runner against xensim: pool in and out, check mode predicts, reruns write nothing."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.xen.pci.plugins.module_utils._errors import RefusedError, SpecError
from ansible_collections.xen.pci.plugins.module_utils._host_options import HOST_ARGS, platform_from
from ansible_collections.xen.pci.plugins.module_utils._runner_assignable import parse_pool_devices, run_assignable
from ansible_collections.xen.pci.plugins.module_utils._state import libxl_pci_path

HOST = """
name: pool-host
devices:
  - {bdf: "0000:00:10.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback, name: gpu0}
  - {bdf: "0000:00:11.0", vendor: 0x1b36, device: 0x0005, class: 0x00ff00, driver: pciback}
  - {bdf: "0000:00:12.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: e1000}
  - {bdf: "0000:00:13.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: null}
  - {bdf: "0000:00:14.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, hidden: true}
domains:
  - {domid: 1, name: web, type: pv, state: running, pcifront: true}
  - {domid: 2, name: db, type: pv, state: running, pcifront: true, devices: ["0000:00:11.0"]}
"""


def params_for(host, **extra):
    p = {k: v.get("default") for k, v in HOST_ARGS.items()}
    p.update(xenstore_path=host.paths["xenstored"], sysfs_root=host.paths["sysfs_root"],
             hypervisor="xensim:" + host.paths["hypervisor"], userdata_dir=host.paths["userdata_dir"], timeout=30.0,
             state="present", take_from_driver=False, rebind=True, names="keep")
    p.update(extra)
    return p


def driver_of(host, bdf):
    link = os.path.join(host.paths["sysfs_root"], "bus/pci/devices", bdf, "driver")
    return os.path.basename(os.readlink(link)) if os.path.lexists(link) else None


def xs_read(params, path):
    platform = platform_from(params)
    try:
        return platform.xs.read(path)
    except Exception as exc:  # pylint: disable=broad-except
        if getattr(exc, "errno", None) == "ENOENT":
            return None
        raise


def four_steps(params):
    """check, real, idempotent (counting xenstore writes), idempotent-check."""
    check = run_assignable(params, check_mode=True)
    real = run_assignable(params)
    platform = platform_from(params)
    again = run_assignable(params, platform=platform)
    writes = platform.xs.stats.writes
    again_check = run_assignable(params, check_mode=True)
    return check, real, again, writes, again_check


def test_device_held_by_a_dom0_driver_needs_consent_and_goes_back_to_it(sim):
    host = sim(HOST)
    with pytest.raises(RefusedError, match="in use by the dom0 driver e1000.*take_from_driver") as info:
        run_assignable(params_for(host, devices=["00:12.0"]))
    assert info.value.details["driver"] == "e1000"
    assert driver_of(host, "0000:00:12.0") == "e1000"     # refused before any write

    params = params_for(host, devices=["00:12.0"], take_from_driver=True)
    check, real, again, writes, again_check = four_steps(params)
    assert check["changed"] and real["changed"]
    assert check["diff"] == real["diff"]
    assert real["diff"]["before"]["0000:00:12.0"]["driver"] == "e1000"
    assert real["diff"]["after"]["0000:00:12.0"] == {"exists": True, "driver": "pciback", "pool": True, "name": None,
                                                     "remembered_driver": "/sys/bus/pci/drivers/e1000"}
    assert driver_of(host, "0000:00:12.0") == "pciback"
    assert xs_read(params, libxl_pci_path("0000:00:12.0", "driver_path")) == "/sys/bus/pci/drivers/e1000"
    assert real["devices"][0]["assignable"] is True
    assert not again["changed"] and not again_check["changed"] and writes == 0 and again["actions"] == []
    # The device was quarantined (assigned to DOMID_IO), as xl pci-assignable-add does.
    assert any(g["op"] == "assign_device" and g["args"].get("domid") == 0x7FF1 for g in host.grants)

    back = params_for(host, devices=["0000:00:12.0"], state="absent")
    check, real, again, writes, again_check = four_steps(back)
    assert check["changed"] and real["changed"] and check["diff"] == real["diff"]
    assert real["diff"]["after"]["0000:00:12.0"]["driver"] == "e1000"
    assert driver_of(host, "0000:00:12.0") == "e1000"
    assert xs_read(back, libxl_pci_path("0000:00:12.0", "driver_path")) is None
    assert any("rebind 0000:00:12.0 to /sys/bus/pci/drivers/e1000" in a for a in real["actions"])
    assert not again["changed"] and writes == 0 and not again_check["changed"]


def test_absent_without_rebind_leaves_the_device_driverless_and_remembers_the_driver(sim):
    host = sim(HOST)
    run_assignable(params_for(host, devices=["00:12.0"], take_from_driver=True))
    params = params_for(host, devices=["00:12.0"], state="absent", rebind=False)
    result = run_assignable(params)
    assert result["changed"] and driver_of(host, "0000:00:12.0") is None
    assert result["devices"][0]["driver_path"] == "/sys/bus/pci/drivers/e1000"
    assert not run_assignable(params)["changed"]


def test_hidden_device_is_already_in_the_pool_and_can_be_given_back(sim):
    host = sim(HOST)
    params = params_for(host, devices=["00:14.0"])
    result = run_assignable(params)
    assert not result["changed"] and result["devices"][0]["assignable"] is True

    back = params_for(host, devices=["00:14.0"], state="absent")
    check = run_assignable(back, check_mode=True)
    real = run_assignable(back)
    assert check["diff"] == real["diff"] and real["changed"]
    # Never quarantined: the de-quarantine is skipped, the device is unbound and has no driver to go back to.
    assert driver_of(host, "0000:00:14.0") is None
    assert any("no dom0 driver" in w for w in real["warnings_detail"])
    assert not run_assignable(back)["changed"]


def test_driverless_device_needs_no_consent(sim):
    host = sim(HOST)
    params = params_for(host, devices=[{"bdf": "00:13.0", "name": "nic9"}])
    check, real, again, writes, again_check = four_steps(params)
    assert check["changed"] and check["diff"] == real["diff"]
    assert driver_of(host, "0000:00:13.0") == "pciback"
    assert xs_read(params, libxl_pci_path("0000:00:13.0", "name")) == "nic9"
    assert not again["changed"] and writes == 0 and not again_check["changed"]


def test_attached_device_is_not_given_back_and_the_guest_is_named(sim):
    host = sim(HOST)
    with pytest.raises(RefusedError, match=r"0000:00:11.0 is attached to db \(domid 2\)"):
        run_assignable(params_for(host, devices=["00:11.0"], state="absent"))
    assert driver_of(host, "0000:00:11.0") == "pciback"
    # present on an attached device: it is bound to pciback already, nothing to do.
    assert not run_assignable(params_for(host, devices=["00:11.0"]))["changed"]


def test_names_set_keep_clear_and_resolve(sim):
    host = sim(HOST)
    # A device named by its name alone is found through /libxl/pci/*/name.
    assert not run_assignable(params_for(host, devices=[{"name": "gpu0"}]))["changed"]
    # keep: listed without a name, the name stays.
    assert not run_assignable(params_for(host, devices=["00:10.0"]))["changed"]
    # a name held by another device is refused, naming it
    with pytest.raises(RefusedError, match="already given to 0000:00:10.0"):
        run_assignable(params_for(host, devices=[{"bdf": "00:11.0", "name": "gpu0"}]))
    # rename
    params = params_for(host, devices=[{"bdf": "00:10.0", "name": "gpu1"}])
    result = run_assignable(params)
    assert result["changed"] and result["diff"]["after"]["0000:00:10.0"]["name"] == "gpu1"
    assert xs_read(params, libxl_pci_path("0000:00:10.0", "name")) == "gpu1"
    # exact: listed without a name, the name is forgotten (xl pci-assignable-add without -n)
    params = params_for(host, devices=["00:10.0"], names="exact")
    check = run_assignable(params, check_mode=True)
    real = run_assignable(params)
    assert check["diff"] == real["diff"] and real["actions"] == ["forget the name of 0000:00:10.0"]
    assert xs_read(params, libxl_pci_path("0000:00:10.0", "name")) is None
    # absent by an unknown name: nothing to do
    assert not run_assignable(params_for(host, devices=[{"name": "nosuch"}], state="absent"))["changed"]
    with pytest.raises(SpecError, match="no PCI device is named 'nosuch'"):
        run_assignable(params_for(host, devices=[{"name": "nosuch"}]))


def test_one_refusal_means_no_write_at_all(sim):
    host = sim(HOST)
    with pytest.raises(RefusedError, match="e1000"):
        run_assignable(params_for(host, devices=["00:13.0", "00:12.0"]))
    assert driver_of(host, "0000:00:13.0") is None


def test_missing_device_and_bad_input(sim):
    host = sim(HOST)
    with pytest.raises(RefusedError, match="0000:00:1e.0 does not exist"):
        run_assignable(params_for(host, devices=["00:1e.0"]))
    assert not run_assignable(params_for(host, devices=["00:1e.0"], state="absent"))["changed"]
    with pytest.raises(SpecError, match=r"devices\[0\]"):
        run_assignable(params_for(host, devices=["00:1g.0"]))


def test_parse_pool_devices():
    assert parse_pool_devices(["3:0.1", {"bdf": "0000:04:00.0", "name": "nic"}, {"name": "gpu"}]) == [
        ("0000:03:00.1", None), ("0000:04:00.0", "nic"), (None, "gpu")]
    with pytest.raises(SpecError, match="bdf 0000:03:00.0 is already given by device #0"):
        parse_pool_devices(["03:00.0", "0000:03:00.0"])
    with pytest.raises(SpecError, match="name gpu is already given"):
        parse_pool_devices([{"name": "gpu"}, {"bdf": "04:00.0", "name": "gpu"}])
    with pytest.raises(SpecError, match="unknown key"):
        parse_pool_devices([{"bdf": "04:00.0", "vslot": 3}])
    with pytest.raises(SpecError, match="name must not contain blanks"):
        parse_pool_devices([{"bdf": "04:00.0", "name": "a b"}])
    with pytest.raises(SpecError, match="give bdf, name or both"):
        parse_pool_devices([{}])


def test_the_module_itself_in_check_and_diff_mode(sim, capsys):
    testing = pytest.importorskip("ansible.module_utils.testing", reason="ansible-core 2.19+ is needed for patch_module_args")
    from ansible_collections.xen.pci.plugins.modules import assignable
    host = sim(HOST)
    args = {k: v for k, v in params_for(host, devices=["00:12.0"]).items() if v is not None}

    def run(extra):
        with testing.patch_module_args(dict(args, **extra)):
            with pytest.raises(SystemExit):
                assignable.main()
        return json.loads(capsys.readouterr().out)

    refused = run({})
    assert refused["failed"] and "dom0 driver e1000" in refused["msg"] and refused["driver"] == "e1000"
    check = run({"take_from_driver": True, "_ansible_check_mode": True, "_ansible_diff": True})
    assert check["changed"] and check["diff"]["after"]["0000:00:12.0"]["driver"] == "pciback"
    assert driver_of(host, "0000:00:12.0") == "e1000"
    real = run({"take_from_driver": True})
    assert real["changed"] and "diff" not in real and driver_of(host, "0000:00:12.0") == "pciback"
    assert not run({"take_from_driver": True})["changed"]

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Selectors: devices named by identity, resolved on a simulated host from its sysfs."""

from __future__ import annotations

import os

import pytest

from ansible_collections.xen.pci.plugins.module_utils._errors import SpecError
from ansible_collections.xen.pci.plugins.module_utils._runner_assignable import run_assignable
from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough
from ansible_collections.xen.pci.plugins.module_utils._selectors import parse_selector
from ansible_collections.xen.pci.plugins.module_utils._sysfs import Sysfs, dsn_from_config
from ansible_collections.xen.pci.plugins.module_utils._validate import PASSTHROUGH_KEYS

# Three NICs of one model: one on board (label, DSN, held by e1000), one
# behind the root port 00:1c.0 (bus 01), one conventional PCI; and a GPU.
HOST = """
name: selectors
devices:
  - {bdf: "0000:00:02.0", vendor: 0x10de, device: 0x20b0, class: 0x030000, driver: pciback}
  - {bdf: "0000:00:19.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: e1000,
     label: "Onboard LAN", serial: 0x001b21ffff6c3a2e}
  - {bdf: "0000:00:1c.0", vendor: 0x8086, device: 0xa110, class: 0x060400, driver: pcieport}
  - {bdf: "0000:01:00.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: pciback,
     parent: "0000:00:1c.0", subsystem_vendor: 0x8086, subsystem_device: 0x0001}
  - {bdf: "0000:00:1d.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: pciback, pcie: false}
domains:
  - {domid: 1, name: web, type: pv, state: running, pcifront: true}
  - {domid: 2, name: db, type: pv, state: running, pcifront: true, devices: ["0000:01:00.0"]}
"""
NIC = {"id": "8086:100e"}


def four_steps(call):
    """check, real, idempotent rerun, idempotent check; returns the real run."""
    check = call(True)
    assert check["changed"] is True
    real = call(False)
    assert real["changed"] is True
    assert call(False)["changed"] is False
    assert call(True)["changed"] is False
    return check, real


def test_sysfs_reads_identity_as_the_kernel_shows_it(sim):
    host = sim(HOST)
    sysfs = Sysfs(host.paths["sysfs_root"])
    assert sysfs.physical_path("0000:01:00.0") == "pci0000:00/1c.0/00.0"
    assert sysfs.physical_path("0000:00:19.0") == "pci0000:00/19.0"
    assert os.path.realpath(sysfs.dev_path("0000:01:00.0")).endswith("devices/pci0000:00/0000:00:1c.0/0000:01:00.0")
    assert sysfs.label("0000:00:19.0") == "Onboard LAN"
    assert sysfs.label("0000:01:00.0") is None
    assert not os.path.exists(sysfs.dev_path("0000:01:00.0", "label"))
    assert sysfs.serial_number("0000:00:19.0") == "00-1b-21-ff-ff-6c-3a-2e"
    assert sysfs.serial_number("0000:01:00.0") is None
    assert sysfs.serial_number("0000:00:1d.0") is None
    # the header agrees with the id files; PCIe 4096 bytes, conventional 256
    with open(sysfs.dev_path("0000:01:00.0", "config"), "rb") as f:
        cfg = f.read()
    assert len(cfg) == 4096 and os.path.getsize(sysfs.dev_path("0000:01:00.0", "config")) == 4096
    assert cfg[0:4] == bytes([0x86, 0x80, 0x0e, 0x10]) and cfg[0x2c:0x30] == bytes([0x86, 0x80, 0x01, 0x00])
    assert cfg[0x09:0x0c] == bytes([0x00, 0x00, 0x02])
    with open(sysfs.dev_path("0000:00:1d.0", "config"), "rb") as f:
        assert len(f.read()) == 256
    # the nested device keeps its driver, iommu and subsystem links working
    assert sysfs.driver_name("0000:01:00.0") == "pciback"
    assert "0000:01:00.0" in sysfs.pciback_devices()
    assert sysfs.device("0000:01:00.0").subsystem_vendor == 0x8086


def test_dsn_parser_walks_the_extended_list_and_stops_on_loops():
    cfg = bytearray(4096)
    cfg[0x100:0x104] = (0x0001 | 1 << 16 | 0x140 << 20).to_bytes(4, "little")   # AER, next 0x140
    cfg[0x140:0x144] = (0x0003 | 1 << 16).to_bytes(4, "little")
    cfg[0x144:0x14c] = (0x1122334455667788).to_bytes(8, "little")
    assert dsn_from_config(bytes(cfg)) == 0x1122334455667788
    loop = bytearray(4096)
    loop[0x100:0x104] = (0x0001 | 0x100 << 20).to_bytes(4, "little")
    assert dsn_from_config(bytes(loop)) is None
    assert dsn_from_config(bytes(256)) is None


@pytest.mark.parametrize("entry, msg", [
    ({"select": {"colour": "red"}}, "unknown key(s) colour"),
    ({"select": {"id": "8086"}}, "vendor:device"),
    ({"select": NIC, "count": 0}, "count must be"),
    ({"select": NIC, "count": 2, "vslot": 4}, "vslot belongs to one device"),
    ({"select": NIC, "bdf": "00:19.0"}, "drop bdf"),
    ({"select": {"path": "pci0000:00/01:00.0"}}, "path must be"),
    ({"select": {"serial": "12-34"}}, "serial must be"),
    ({"select": {"physfn": "03:00"}}, "physfn must be the PCI address of a physical function"),
    ({"select": NIC, "colour": 1}, "unknown key(s) colour"),
])
def test_bad_selectors_are_refused_with_the_reason(entry, msg):
    with pytest.raises(SpecError) as err:
        parse_selector(entry, PASSTHROUGH_KEYS)
    assert msg in err.value.msg


def test_physfn_is_normalised_to_the_kernel_form():
    assert parse_selector({"select": {"physfn": "3:00.0"}, "count": "all"}, PASSTHROUGH_KEYS).match == {
        "physfn": "0000:03:00.0"}


def test_bad_selector_is_refused_before_the_host_is_read(params_of):
    params = params_of(type("H", (), {"paths": {k: "/nonexistent" for k in (
        "xenstored", "sysfs_root", "hypervisor", "userdata_dir", "qmp_dir")}})(), timeout=5.0)
    with pytest.raises(SpecError) as err:
        run_passthrough(params, {"web": [{"select": NIC, "count": -1}]})
    assert "assignments[web][0]" in err.value.msg or "devices" in err.value.msg
    assert "count must be" in err.value.msg


def test_select_by_id_attaches_in_four_steps_and_reports_the_choice(sim, params_of):
    host = sim(HOST)
    params = params_of(host)
    _check, real = four_steps(lambda cm: run_passthrough(params, {"web": [{"select": {"id": "10de:20b0"}, "permissive": True}]},
                                                         check_mode=cm))
    assert real["selected"] == {"web": [{"entry": 0, "select": {"id": "10de:20b0"}, "count": None, "bdfs": ["0000:00:02.0"]}]}
    devs = real["domains"]["web"]["devices"]
    assert [d["bdf"] for d in devs] == ["0000:00:02.0"] and devs[0]["opts"]["permissive"] is True
    assert host.sysfs.is_permissive("0000:00:02.0")


def test_count_prefers_the_guests_own_devices_then_the_pool(sim, params_of):
    host = sim(HOST)
    params = params_of(host)
    # db already has 01:00.0: it keeps it although 00:1d.0 sorts first
    again = run_passthrough(params, {"db": [{"select": NIC, "count": 1}]}, check_mode=True)
    assert again["selected"]["db"][0]["bdfs"] == ["0000:01:00.0"] and again["changed"] is False
    # web gets the free assignable one (00:1d.0), not e1000's 00:19.0 nor db's
    _check, real = four_steps(lambda cm: run_passthrough(params, {"web": [{"select": NIC, "count": 1}]}, check_mode=cm))
    assert real["selected"]["web"][0]["bdfs"] == ["0000:00:1d.0"]
    assert [d["bdf"] for d in real["domains"]["web"]["devices"]] == ["0000:00:1d.0"]


def test_two_guests_one_device_each_never_the_same(sim, params_of):
    host = sim(HOST)
    params = params_of(host)
    out = run_passthrough(params, {"web": [{"select": NIC, "count": 1}], "db": [{"select": NIC, "count": 1}]},
                          check_mode=True)
    assert out["selected"]["web"][0]["bdfs"] == ["0000:00:1d.0"]
    assert out["selected"]["db"][0]["bdfs"] == ["0000:01:00.0"]


def test_too_few_and_ambiguous_fail_listing_the_candidates(sim, params_of):
    host = sim(HOST)
    params = params_of(host)
    with pytest.raises(SpecError) as err:
        run_passthrough(params, {"web": [{"select": NIC, "count": 3}]}, check_mode=True)
    assert "asks for 3 devices, 2 are free to take" in err.value.msg
    for bdf in ("0000:00:19.0", "0000:00:1d.0", "0000:01:00.0"):
        assert bdf in err.value.msg
    assert "attached to another guest" in err.value.msg
    with pytest.raises(SpecError) as err:
        run_passthrough(params, {"web": [{"select": NIC}]})
    assert "matches 3 devices, not exactly one" in err.value.msg
    assert err.value.details["problems"][0]["input"] == "assignments[web][0]"
    with pytest.raises(SpecError) as err:
        run_passthrough(params, {"web": [{"select": {"id": "1234:5678"}, "count": "all"}]})
    assert "matches no device" in err.value.msg
    assert host.sysfs.driver_of("0000:00:1d.0") == "pciback" and not host.sysfs.in_use_by("0000:00:1d.0")


def test_a_device_chosen_twice_names_both_entries(sim, params_of):
    host = sim(HOST)
    params = params_of(host)
    with pytest.raises(SpecError) as err:
        run_passthrough(params, {"web": ["0000:00:1d.0"], "db": [{"select": {"class": "0x0200"}, "count": "all"}]},
                        check_mode=True)
    assert "assignments[db][0]" in err.value.msg and "assignments[web][0]" in err.value.msg
    assert "0000:00:1d.0" in err.value.msg


def test_select_by_path_serial_label_and_class(sim, params_of):
    host = sim(HOST)
    params = params_of(host, make_assignable=True)

    def chosen(select, **extra):
        out = run_passthrough(params, {"db": [dict(select=select, **extra)]}, check_mode=True)
        return out["selected"]["db"][0]["bdfs"]

    assert chosen({"path": "pci0000:00/1c.0/00.0"}) == ["0000:01:00.0"]
    assert chosen({"serial": "00-1b-21-ff-ff-6c-3a-2e"}, seize=True) == ["0000:00:19.0"]
    assert chosen({"serial": "0x001b21ffff6c3a2e"}, seize=True) == ["0000:00:19.0"]
    assert chosen({"label": "Onboard LAN"}, seize=True) == ["0000:00:19.0"]
    assert chosen({"subsystem": "8086:0001"}) == ["0000:01:00.0"]
    assert chosen({"class": "0x03"}) == ["0000:00:02.0"]
    assert chosen({"class": 0x0200}, count="all", seize=True) == ["0000:01:00.0", "0000:00:1d.0", "0000:00:19.0"]


def test_all_nics_of_a_model_with_seize_in_four_steps(sim, params_of):
    host = sim(HOST)
    params = params_of(host, state="exact", make_assignable=True)
    entry = {"select": NIC, "count": "all", "seize": True}
    _check, real = four_steps(lambda cm: run_passthrough(params, {"db": [entry]}, check_mode=cm))
    assert sorted(d["bdf"] for d in real["domains"]["db"]["devices"]) == ["0000:00:19.0", "0000:00:1d.0", "0000:01:00.0"]
    assert host.sysfs.driver_of("0000:00:19.0") == "pciback"


def test_assignable_by_label_in_four_steps(sim, params_of):
    host = sim(HOST)
    params = params_of(host, devices=[{"select": {"label": "Onboard LAN"}, "name": "lan0"}], take_from_driver=True)
    _check, real = four_steps(lambda cm: run_assignable(params, check_mode=cm))
    assert real["selected"] == [{"entry": 0, "select": {"label": "Onboard LAN"}, "count": None, "bdfs": ["0000:00:19.0"]}]
    assert host.sysfs.driver_of("0000:00:19.0") == "pciback"
    assert [d["bdf"] for d in real["devices"]] == ["0000:00:19.0"]
    gone = run_assignable(params_of(host, devices=[{"select": {"label": "Onboard LAN"}}], state="absent"))
    assert gone["changed"] is True and host.sysfs.driver_of("0000:00:19.0") == "e1000"


def test_domain_configs_get_the_addresses_never_the_same_twice(sim, tmp_path):
    from ansible_collections.xen.pci.plugins.module_utils._runner_domain_config import run_domain_configs  # pylint: disable=import-outside-toplevel
    host = sim(HOST)
    web, db = tmp_path / "web.cfg", tmp_path / "db.cfg"
    web.write_text('name = "web"\n')
    db.write_text('name = "db"\npci = [ "0000:00:1d.0" ]\n')
    entry = {"select": NIC, "count": 1, "permissive": True}
    params = {"configs": [{"path": str(web), "devices": [entry]}, {"path": str(db), "devices": [entry]}],
              "state": "exact", "sysfs_root": host.paths["sysfs_root"], "create": False, "backup": False}
    check = run_domain_configs(params, check_mode=True)
    assert check["changed"] is True and web.read_text() == 'name = "web"\n'
    real = run_domain_configs(params)
    # db keeps the NIC its file lists; web gets the next free one, not db's
    assert real["results"][1]["selected"][0]["bdfs"] == ["0000:00:1d.0"]
    assert real["results"][0]["selected"][0]["bdfs"] == ["0000:01:00.0"]
    assert '"0000:01:00.0,permissive=1"' in web.read_text()
    assert '"0000:00:1d.0,permissive=1"' in db.read_text()
    assert run_domain_configs(params)["changed"] is False
    assert run_domain_configs(params, check_mode=True)["changed"] is False
    with pytest.raises(SpecError) as err:
        run_domain_configs(dict(params, configs=[{"path": str(web), "devices": [{"select": NIC, "count": 4}]}]))
    assert "configs[%s][0]" % web in err.value.msg and "asks for 4 devices" in err.value.msg


def test_a_device_given_by_its_name_is_not_chosen_again(sim, params_of):
    host = sim(HOST.replace("driver: pciback, pcie: false}", "driver: pciback, pcie: false, name: nic9}"))
    params = params_of(host, make_assignable=True)
    out = run_passthrough(params, {"web": [{"select": NIC, "count": 1, "seize": True}], "db": ["name=nic9"]},
                          check_mode=True)
    # 00:1d.0 would come first (assignable, free), but db asks for it by name
    assert out["selected"]["web"][0]["bdfs"] == ["0000:00:19.0"]
    with pytest.raises(SpecError) as err:
        run_passthrough(params, {"web": [{"select": {"path": "pci0000:00/1d.0"}}], "db": ["name=nic9"]}, check_mode=True)
    assert "0000:00:1d.0, which assignments[db][0] also gives" in err.value.msg

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""SR-IOV in xen.pci.assignable: the number of VFs of a PF, the VFs made
assignable, refusals before any write, undo, and the parsing of ``sriov``."""

from __future__ import annotations

import os
import re

import pytest

from ansible_collections.xen.pci.plugins.module_utils._errors import RefusedError, SpecError, XenPciError
from ansible_collections.xen.pci.plugins.module_utils._host_options import platform_from
from ansible_collections.xen.pci.plugins.module_utils._runner_assignable import run_assignable
from ansible_collections.xen.pci.plugins.module_utils._sriov import parse_sriov
from ansible_collections.xen.pci.plugins.module_utils._state import libxl_pci_path
from ansible_collections.xen.pci.plugins.module_utils._sysfs import Sysfs, predicted_vfs

PF, PF2, NIC = "0000:01:00.0", "0000:02:00.0", "0000:00:12.0"
VFS = ["0000:01:10.0", "0000:01:10.2", "0000:01:10.4", "0000:01:10.6"]

HOST = """
name: sriov-host
devices:
  - bdf: "0000:01:00.0"
    vendor: 0x8086
    device: 0x10c9
    class: 0x020000
    driver: igb
    sriov: {totalvfs: 7, vf_device: 0x10ca, offset: 128, stride: 2, vf_driver: igbvf}
  - bdf: "0000:02:00.0"
    vendor: 0x8086
    device: 0x10c9
    class: 0x020000
    sriov: {totalvfs: 7, vf_device: 0x10ca, offset: 128, stride: 2}
  - {bdf: "0000:00:12.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: e1000}
domains:
  - {domid: 1, name: web, type: pv, state: running, pcifront: true}
"""


def dev(host, bdf, *attr):
    return os.path.join(host.paths["sysfs_root"], "bus/pci/devices", bdf, *attr)


def driver_of(host, bdf):
    link = dev(host, bdf, "driver")
    return os.path.basename(os.readlink(link)) if os.path.lexists(link) else None


def numvfs(host, pf=PF):
    with open(dev(host, pf, "sriov_numvfs"), encoding="ascii") as f:
        return int(f.read())


def xs_read(prm, path):
    return platform_from(prm).xs.read(path)


def run(prm, check=False):
    return run_assignable(prm, check_mode=check)


# -- parsing (no host) --------------------------------------------------------


@pytest.mark.parametrize("entries, message", [
    ("0000:01:00.0", "sriov must be a list"),
    (["0000:01:00.0"], r"sriov\[0\]: expected a mapping"),
    ([{"pf": PF}], r"sriov\[0\]: numvfs must be a number"),
    ([{"pf": PF, "numvfs": -1}], r"sriov\[0\]: numvfs must be a number"),
    ([{"pf": PF, "numvfs": True}], r"sriov\[0\]: numvfs must be a number"),
    ([{"pf": "01:00", "numvfs": 2}], r"sriov\[0\]: pf must be the PCI address"),
    ([{"pf": PF, "numvfs": 2, "count": 2}], r"sriov\[0\]: unknown key\(s\) count"),
    ([{"pf": PF, "numvfs": 2}, {"pf": "01:00.0", "numvfs": 1}], r"sriov\[1\]: 0000:01:00.0 is already given by sriov\[0\]"),
    ([{"select": {"colour": "red"}, "numvfs": 2}], r"sriov\[0\]: select: unknown key"),
    ([{"select": {"id": "8086:10c9"}, "count": 0, "numvfs": 2}], r"sriov\[0\]: count must be"),
])
def test_bad_sriov_entries_are_named(entries, message):
    problems = []
    parse_sriov(entries, problems)
    assert problems and problems[0].input.startswith("sriov")
    assert re.search(message, problems[0].msg), problems[0].msg


def test_numvfs_may_be_left_out_when_removing():
    problems = []
    assert parse_sriov([{"pf": "01:00.0"}], problems, "absent") == [
        {"where": "sriov[0]", "pf": PF, "selector": None, "numvfs": None, "pool": False}]
    assert not problems


def test_predicted_addresses_follow_offset_and_stride_across_buses():
    info = {"pf": "0000:03:00.1", "offset": 127, "stride": 2}
    # routing id 0x301 + 127 = 0x380 (bus 3, slot 0x10, fn 0); + 2 each.
    assert predicted_vfs(info, 3) == ["0000:03:10.0", "0000:03:10.2", "0000:03:10.4"]
    info = {"pf": "0000:03:00.0", "offset": 256, "stride": 1}
    assert predicted_vfs(info, 2) == ["0000:04:00.0", "0000:04:00.1"]


# -- on the simulator ------------------------------------------------------------


def test_vfs_created_and_made_assignable_in_four_steps(sim, params_of):
    host = sim(HOST)
    prm = params_of(host, sriov=[{"pf": PF, "numvfs": 4}], devices=[{"select": {"physfn": PF}, "count": "all"}])
    check = run(prm, check=True)
    assert check["changed"] and numvfs(host) == 0          # check mode writes nothing
    assert check["sriov"] == [{"pf": PF, "entry": "sriov[0]", "numvfs": 4, "totalvfs": 7, "vfs": VFS, "changed": True,
                               "predicted": True}]
    assert check["selected"][0]["bdfs"] == VFS
    real = run(prm)
    assert real["changed"]
    assert real["diff"] == check["diff"]
    assert real["diff"]["before"]["sriov"] == {PF: 0} and real["diff"]["after"]["sriov"] == {PF: 4}
    assert real["sriov"] == [dict(check["sriov"][0], predicted=False)]      # read back, as predicted
    assert numvfs(host) == 4
    for vf in VFS:
        assert os.path.basename(os.readlink(dev(host, vf, "physfn"))) == PF
        assert driver_of(host, vf) == "pciback"
        # taken from the VF driver its PF bound, which is remembered for absent
        assert xs_read(prm, libxl_pci_path(vf, "driver_path")) == "/sys/bus/pci/drivers/igbvf"
    assert [d["assignable"] for d in real["devices"]] == [True] * 4
    assert real["actions"][0].startswith("create 4 virtual functions of 0000:01:00.0")
    platform = platform_from(prm)
    again = run_assignable(prm, platform=platform)
    assert not again["changed"] and again["actions"] == []
    assert platform.xs.stats.writes == 0
    again_check = run(prm, check=True)
    assert not again_check["changed"]
    assert again_check["sriov"][0]["changed"] is False


def test_absent_gives_the_vfs_back_then_removes_them(sim, params_of):
    host = sim(HOST)
    present = params_of(host, sriov=[{"pf": PF, "numvfs": 2}], devices=[{"select": {"physfn": PF}, "count": "all"}])
    run(present)
    absent = dict(present, state="absent", sriov=[{"pf": PF}])
    check = run(absent, check=True)
    assert check["changed"] and numvfs(host) == 2
    real = run(absent)
    assert real["changed"] and numvfs(host) == 0
    assert real["sriov"] == [{"pf": PF, "entry": "sriov[0]", "numvfs": 0, "totalvfs": 7, "vfs": [], "changed": True,
                              "predicted": False}]
    assert real["actions"][-1] == "remove the 2 virtual functions of 0000:01:00.0 (sriov_numvfs 2 -> 0)"
    assert not os.path.exists(dev(host, VFS[0]))
    assert xs_read(absent, libxl_pci_path(VFS[0])) is None        # libxl's record of them is gone too
    slots = Sysfs(host.paths["sysfs_root"]).pciback_slots()
    assert VFS[0] not in slots and VFS[1] not in slots
    assert not run(absent)["changed"]


def test_a_vf_in_the_pool_is_never_removed_under_it(sim, params_of):
    host = sim(HOST)
    run(params_of(host, sriov=[{"pf": PF, "numvfs": 2}], devices=[VFS[0]]))
    with pytest.raises(RefusedError, match=r"sriov\[0\]: changing the number of virtual functions of 0000:01:00.0 "
                                           r"from 2 to 3 removes all 2 it has, and 0000:01:10.0 \(in the pool\)"):
        run(params_of(host, sriov=[{"pf": PF, "numvfs": 3}]))
    assert numvfs(host) == 2 and driver_of(host, VFS[0]) == "pciback"
    # Nor by state: absent of the PF alone.
    with pytest.raises(RefusedError, match=r"0000:01:10.0 \(in the pool\)"):
        run(params_of(host, sriov=[{"pf": PF}], state="absent"))
    assert numvfs(host) == 2


def test_a_vf_attached_to_a_guest_is_refused_by_name(sim, params_of):
    host = sim(HOST)
    prm = params_of(host, sriov=[{"pf": PF, "numvfs": 2}], devices=[VFS[0]])
    run(prm)
    platform_from(prm).xs.write(libxl_pci_path(VFS[0], "domid"), "1")     # as an attach records it
    with pytest.raises(RefusedError, match=r"0000:01:10.0 \(attached to web \(domid 1\)\)"):
        run(params_of(host, sriov=[{"pf": PF, "numvfs": 0}]))
    assert numvfs(host) == 2


def test_count_changes_go_through_zero(sim, params_of):
    host = sim(HOST)
    run(params_of(host, sriov=[{"pf": PF, "numvfs": 2}]))
    assert driver_of(host, VFS[0]) == "igbvf"        # not in devices: left to the VF driver
    # dom0 may use them (a VF network interface): removing them needs consent
    with pytest.raises(RefusedError, match=r"0000:01:10.0 \(held by the dom0 driver igbvf\), 0000:01:10.2 \(held by "
                                           r"the dom0 driver igbvf\), which dom0 may be using; set take_from_driver"):
        run(params_of(host, sriov=[{"pf": PF, "numvfs": 3}]))
    assert numvfs(host) == 2
    result = run(params_of(host, sriov=[{"pf": PF, "numvfs": 3}], take_from_driver=True))
    assert result["actions"] == ["create 3 virtual functions of 0000:01:00.0 (sriov_numvfs 2 -> 3, through 0)"]
    assert numvfs(host) == 3 and result["sriov"][0]["vfs"] == VFS[:3]


@pytest.mark.parametrize("entry, message", [
    ({"pf": PF, "numvfs": 8}, r"0000:01:00.0 supports at most 7 virtual functions \(sriov_totalvfs\), 8 asked"),
    ({"pf": PF2, "numvfs": 2}, r"0000:02:00.0 has no dom0 driver"),
    ({"pf": NIC, "numvfs": 2}, r"0000:00:12.0 has no SR-IOV capability"),
    ({"pf": "0000:05:00.0", "numvfs": 2}, r"PCI device 0000:05:00.0 does not exist"),
])
def test_refused_before_any_write(sim, params_of, entry, message):
    host = sim(HOST)
    with pytest.raises(RefusedError, match=r"sriov\[0\]: " + message) as info:
        run(params_of(host, sriov=[entry], devices=[NIC], take_from_driver=True))
    assert info.value.details["input"] == "sriov[0]"
    assert numvfs(host) == 0 and driver_of(host, NIC) == "e1000"     # the NIC was not touched either


def test_a_vf_is_not_a_physical_function(sim, params_of):
    host = sim(HOST)
    run(params_of(host, sriov=[{"pf": PF, "numvfs": 1}]))
    with pytest.raises(RefusedError, match="0000:01:10.0 is a virtual function of 0000:01:00.0"):
        run(params_of(host, sriov=[{"pf": VFS[0], "numvfs": 1}]))


def test_a_pf_in_the_pool_is_refused(sim, params_of):
    host = sim(HOST)
    run(params_of(host, devices=[PF], take_from_driver=True))
    with pytest.raises(RefusedError, match="0000:01:00.0 is bound to pciback"):
        run(params_of(host, sriov=[{"pf": PF, "numvfs": 2}]))


def test_pfs_selected_by_model_on_each_host(sim, params_of):
    host = sim(HOST)
    # Both PFs match; the second has no driver: refused, with the first left untouched.
    with pytest.raises(RefusedError, match="0000:02:00.0 has no dom0 driver"):
        run(params_of(host, sriov=[{"select": {"id": "8086:10c9"}, "count": "all", "numvfs": 1}]))
    assert numvfs(host) == 0
    # count: 1 takes the first by address.
    result = run(params_of(host, sriov=[{"select": {"id": "8086:10c9"}, "count": 1, "numvfs": 1}],
                           devices=[{"select": {"id": "8086:10ca"}, "count": "all"}]))
    assert [p["pf"] for p in result["sriov"]] == [PF]
    assert result["selected"][0]["bdfs"] == [VFS[0]] and driver_of(host, VFS[0]) == "pciback"
    # The e1000 is no SR-IOV device: a selector of PFs never chooses it.
    with pytest.raises(SpecError, match=r"sriov\[0\]: select id=8086:100e matches no device"):
        run(params_of(host, sriov=[{"select": {"id": "8086:100e"}, "count": "all", "numvfs": 1}]))


def test_a_vf_to_be_recreated_cannot_be_made_assignable_by_the_same_task(sim, params_of):
    host = sim(HOST)
    run(params_of(host, sriov=[{"pf": PF, "numvfs": 2}]))
    with pytest.raises(RefusedError, match="0000:01:10.2 is a virtual function that sriov removes"):
        run(params_of(host, sriov=[{"pf": PF, "numvfs": 1}], devices=[VFS[1]], take_from_driver=True))
    assert numvfs(host) == 2


def test_persistent_cannot_be_combined(sim, params_of):
    host = sim(HOST)
    with pytest.raises(SpecError, match="persistent cannot be combined with sriov"):
        run(params_of(host, sriov=[{"pf": PF, "numvfs": 2}], persistent=True))


def test_a_failed_seize_undoes_the_vfs(sim, params_of):
    """The second VF cannot be bound: the first goes back to its driver, the VFs are removed again."""
    host = sim(HOST)
    prm = params_of(host, sriov=[{"pf": PF, "numvfs": 2}], devices=[{"select": {"physfn": PF}, "count": "all"}])

    def hook(where):
        if where == "step:2:seize-vf:before":
            raise XenPciError("injected failure before seizing the second VF")
    with pytest.raises(XenPciError, match="injected failure") as info:
        run_assignable(prm, hook=hook)
    assert info.value.details.get("left") is None
    assert numvfs(host) == 0 and not os.path.exists(dev(host, VFS[0]))
    assert xs_read(prm, libxl_pci_path(VFS[0])) is None
    assert VFS[0] not in Sysfs(host.paths["sysfs_root"]).pciback_slots()
    # And it converges afterwards.
    assert run(prm)["changed"] and numvfs(host) == 2


def test_a_killed_request_is_recovered_by_the_next(sim, params_of):
    host = sim(HOST)
    prm = params_of(host, sriov=[{"pf": PF, "numvfs": 2}], devices=[{"select": {"physfn": PF}, "count": "all"}])

    class Killed(BaseException):
        pass

    def hook(where):
        if where == "step:1:seize-vf:bound":
            raise Killed()
    with pytest.raises(Killed):
        run_assignable(prm, hook=hook)
    assert numvfs(host) == 2            # the VFs exist, the journal names what was done
    result = run(prm)
    assert result["recovered"] and result["changed"]
    assert numvfs(host) == 2 and [driver_of(host, vf) for vf in VFS[:2]] == ["pciback", "pciback"]


def test_info_reports_pfs_and_vfs(sim, params_of):
    host = sim(HOST)
    run(params_of(host, sriov=[{"pf": PF, "numvfs": 2}]))
    sysfs = Sysfs(host.paths["sysfs_root"])
    pf = sysfs.device(PF).to_dict()
    assert pf["sriov"] == {"pf": PF, "totalvfs": 7, "numvfs": 2, "offset": 128, "stride": 2, "vf_device": "0x10ca",
                           "drivers_autoprobe": True, "vfs": VFS[:2]}
    assert pf["physfn"] is None
    vf = sysfs.device(VFS[1]).to_dict()
    assert vf["physfn"] == PF and vf["sriov"] is None and vf["device"] == "0x10ca" and vf["vendor"] == "0x8086"


def test_vfs_of_a_pf_without_autoprobe_are_bound_through_driver_override(sim, params_of):
    """sriov_drivers_autoprobe 0: the VFs come up with no driver and Linux
    refuses pciback's bind (ENODEV) unless driver_override names it; given
    back, the override is cleared again."""
    host = sim(HOST)
    with open(dev(host, PF, "sriov_drivers_autoprobe"), "w", encoding="ascii") as f:
        f.write("0")
    prm = params_of(host, sriov=[{"pf": PF, "numvfs": 2}], devices=[{"select": {"physfn": PF}, "count": "all"}])
    result = run(prm)
    assert [driver_of(host, vf) for vf in VFS[:2]] == ["pciback", "pciback"]
    assert [d["driver_path"] for d in result["devices"]] == [None, None]        # no VF driver had them
    with open(dev(host, VFS[0], "driver_override"), encoding="ascii") as f:
        assert f.read() == "pciback\n"
    run(dict(prm, state="absent"))
    assert numvfs(host) == 0
    run(params_of(host, sriov=[{"pf": PF, "numvfs": 1}]))
    with open(dev(host, VFS[0], "driver_override"), encoding="ascii") as f:
        assert f.read() == "(null)\n"                 # a new VF at the address starts clean
    assert driver_of(host, VFS[0]) is None


def test_given_back_vf_loses_its_driver_override(sim, params_of):
    host = sim(HOST)
    with open(dev(host, PF, "sriov_drivers_autoprobe"), "w", encoding="ascii") as f:
        f.write("0")
    run(params_of(host, sriov=[{"pf": PF, "numvfs": 1}], devices=[VFS[0]]))
    run(params_of(host, devices=[VFS[0]], state="absent"))
    with open(dev(host, VFS[0], "driver_override"), encoding="ascii") as f:
        assert f.read() == "(null)\n"
    assert driver_of(host, VFS[0]) is None and VFS[0] not in Sysfs(host.paths["sysfs_root"]).pciback_slots()


def test_a_new_vf_goes_to_a_guest_and_the_pf_cannot_shrink_under_it(sim, params_of):
    """The operator's path: VFs created into the pool, one passed to web by
    a physfn selector (PV hotplug), then a change of count is refused naming
    the guest, and the detach gives it back for the VFs to go."""
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough
    host = sim(HOST)
    run(params_of(host, sriov=[{"pf": PF, "numvfs": 2}], devices=[{"select": {"physfn": PF}, "count": "all"}]))
    desired = {"web": [{"select": {"physfn": PF}, "count": 1}]}
    attached = run_passthrough(params_of(host, timeout=20.0), desired)
    assert attached["changed"] and [d["bdf"] for d in attached["domains"]["web"]["devices"]] == [VFS[0]]
    assert xs_read(params_of(host), libxl_pci_path(VFS[0], "domid")) == "1"
    with pytest.raises(RefusedError, match=r"0000:01:10.0 \(attached to web \(domid 1\)\), 0000:01:10.2 \(in the pool\)"):
        run(params_of(host, sriov=[{"pf": PF, "numvfs": 4}]))
    assert numvfs(host) == 2
    run_passthrough(params_of(host, timeout=20.0, state="exact"), {"web": []})
    gone = run(params_of(host, sriov=[{"pf": PF}], devices=[{"select": {"physfn": PF}, "count": "all"}], state="absent"))
    assert gone["changed"] and numvfs(host) == 0


def test_pool_puts_every_vf_of_the_entry_in_the_pool_and_takes_it_back(sim, params_of):
    host = sim(HOST)
    present = params_of(host, sriov=[{"select": {"id": "8086:10c9"}, "count": 1, "numvfs": 3, "pool": True}])
    check = run(present, check=True)
    assert check["changed"] and [d["bdf"] for d in check["devices"]] == VFS[:3]
    real = run(present)
    assert [driver_of(host, vf) for vf in VFS[:3]] == ["pciback"] * 3
    assert [d["assignable"] for d in real["devices"]] == [True] * 3
    assert not run(present)["changed"]
    absent = params_of(host, sriov=[{"pf": PF, "pool": True}], state="absent")
    gone = run(absent)
    assert gone["changed"] and numvfs(host) == 0
    assert not run(absent)["changed"]
    problems = []
    parse_sriov([{"pf": PF, "numvfs": 1, "pool": "yes"}], problems)
    assert problems[0].msg == "sriov[0]: pool must be true or false, got 'yes'"


def test_the_plan_counts_vfs_to_be_created_as_changes(sim, params_of):
    """xen.pci.plan with sriov: pending VFs are the plan (the assignments,
    which may name them, are not checked yet); once they exist, the plan
    goes on to the assignments."""
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.xen.pci.plugins.module_utils._runner_plan import run_plan
    host = sim(HOST)
    sriov = [{"pf": PF, "numvfs": 2, "pool": True}]
    desired = {"web": [{"select": {"physfn": PF}, "count": 1}]}
    prm = params_of(host, sriov=sriov, config_files={}, timeout=20.0)
    before = run_plan(prm, desired)
    assert before["changes"] and not before["changed"]
    assert before["why"][0] == "sriov: create 2 virtual functions of 0000:01:00.0 (sriov_numvfs 0 -> 2)"
    assert before["sriov"][0]["predicted"] and numvfs(host) == 0        # nothing written
    with pytest.raises(RefusedError, match=r"sriov\[0\]: 0000:01:00.0 supports at most 7"):
        run_plan(dict(prm, sriov=[{"pf": PF, "numvfs": 9}]), desired)
    run(params_of(host, sriov=sriov))
    after = run_plan(prm, desired)
    assert after["why"] == ["attach 0000:01:10.0 to web (domid 1)"] and after["changes"]
    assert after["sriov"][0]["changed"] is False

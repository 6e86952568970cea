# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The planner on its own: desired versus actual, pure (no host, no I/O)."""

from __future__ import annotations

from ansible_collections.xen.pci.plugins.module_utils._bdf import PciSpec
from ansible_collections.xen.pci.plugins.module_utils._plan import plan
from ansible_collections.xen.pci.plugins.module_utils._qmp import QmpPciDevice
from ansible_collections.xen.pci.plugins.module_utils._state import Backend, DomainState, HostState

OPTS = "msitranslate=0,power_mgmt=0,permissive=%d,rdm_policy=strict"


def backend(domid, *devices):
    keys = {"state": "4", "num_devs": str(len(devices))}
    for i, (bdf, permissive) in enumerate(devices):
        keys.update({"dev-%d" % i: bdf, "key-%d" % i: bdf, "opts-%d" % i: OPTS % permissive, "state-%d" % i: "3"})
    return Backend(domid=domid, keys=keys, fe_state=4)


def host(**domains):
    doms = {}
    for domid, (name, devices) in enumerate(domains.items(), start=1):
        doms[domid] = DomainState(domid=domid, name=name, type="pv", backend=backend(domid, *devices) if devices else None)
    return HostState(domains=doms, libxl_pci={})


def funcs(*specs):
    return [f for s in specs for f in PciSpec.parse(s).expand()]


def test_present_attaches_what_is_missing_and_leaves_the_rest():
    h = host(web=[("0000:00:10.0", 0)])
    p = plan(h, {1: funcs("00:10.0", "00:11.0")}, "present")
    (dp,) = p.domains
    assert [str(f.bdf) for f in dp.attach] == ["0000:00:11.0"] and dp.detach == []
    assert p.actions() == ["attach 0000:00:11.0 to web (domid 1)"]
    assert p.diff() == {"before": {"web (domid 1)": ["0000:00:10.0"]},
                        "after": {"web (domid 1)": ["0000:00:10.0", "0000:00:11.0"]}}


def test_nothing_to_do_is_an_empty_plan():
    h = host(web=[("0000:00:10.0", 0)])
    assert not plan(h, {1: funcs("00:10.0")}, "present").changed
    assert not plan(h, {1: ["0000:00:11.0"]}, "absent").changed
    assert not plan(h, {1: funcs("00:10.0")}, "exact").changed


def test_exact_detaches_what_is_not_declared_and_absent_only_what_is():
    h = host(web=[("0000:00:10.0", 0), ("0000:00:11.0", 0)])
    assert plan(h, {1: funcs("00:11.0")}, "exact").domains[0].detach == ["0000:00:10.0"]
    assert plan(h, {1: ["0000:00:11.0"]}, "absent").domains[0].detach == ["0000:00:11.0"]


def test_other_options_mean_a_reattach_reported_with_what_differs():
    h = host(web=[("0000:00:10.0", 0)])
    (dp,) = plan(h, {1: funcs("00:10.0,permissive=1")}, "present").domains
    assert dp.detach == ["0000:00:10.0"] and [str(f.bdf) for f in dp.attach] == ["0000:00:10.0"]
    assert dp.reattach == [{"bdf": "0000:00:10.0", "differs": {"permissive": [False, True]}}]
    assert dp.after == ["0000:00:10.0,permissive=1"]


def test_a_move_between_guests_detaches_before_it_attaches():
    h = host(web=[], db=[("0000:00:10.0", 0)])
    p = plan(h, {1: funcs("00:10.0"), 2: []}, "exact")
    assert p.actions() == ["detach 0000:00:10.0 from db (domid 2)", "attach 0000:00:10.0 to web (domid 1)"]


def qemu_device(qdev, slot):
    return QmpPciDevice(bus=0, slot=slot, function=0, qdev_id=qdev, class_code=0xff00, class_desc=None,
                        vendor_id=0x1234, device_id=0x11e8)


def test_query_pci_decides_for_hvm_guests():
    h = host(hvm=[("0000:00:10.0", 0), ("0000:00:11.0", 0)])
    qemu = {1: [qemu_device("pci-pt-00_10.0", 4), qemu_device("pci-pt-00_12.0", 5), qemu_device("", 1)]}
    # present: the device QEMU lost is attached again; a stray id is none of present's business
    (dp,) = plan(h, {1: funcs("00:10.0", "00:11.0")}, "present", qemu).domains
    assert dp.repair == ["0000:00:11.0"] and dp.detach == ["0000:00:11.0"] and dp.stray == []
    assert dp.reattach == [{"bdf": "0000:00:11.0", "differs": {"qemu": ["absent", "present"]}}]
    # exact: the device only QEMU has goes, unless it is declared (then its device_add adopts it)
    assert plan(h, {1: funcs("00:10.0")}, "exact", qemu).domains[0].stray == ["pci-pt-00_12.0"]
    assert plan(h, {1: funcs("00:10.0", "00:12.0")}, "exact", qemu).domains[0].stray == []
    # absent of the stray's address removes it from QEMU
    (dp,) = plan(h, {1: ["0000:00:12.0"]}, "absent", qemu).domains
    assert dp.stray == ["pci-pt-00_12.0"] and dp.changed

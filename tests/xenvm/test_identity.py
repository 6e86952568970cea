# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Devices named by what they are, host readiness and the reset policy on
real Xen 4.17, through ansible-playbook as users run them:

- ``xen.pci.info`` ``detail: readiness`` agrees with ``xl info``'s
  ``virt_caps`` (Xen's physinfo read through libxenctrl) and with dom0's
  sysfs on each device's reset (QEMU's edu and pci-testdev have none);
- selectors resolve QEMU's emulated devices by vendor/device id and by
  class: ``1234:11e8`` is edu at 00:10.0; class ``0x0200`` alone matches
  dom0's virtio NIC and the e1000 and is refused with both listed, with
  vendor ``8086`` it is the e1000 at 00:12.0 (held by dom0's e1000 driver);
  all in check mode, which changes nothing;
- ``reset: strict`` refuses edu, chosen by a selector, before anything is
  written, naming the device and what is missing.
"""

from __future__ import annotations

import pytest

from conftest import E1000, EDU, TESTDEV, vm_fixture_body
from test_ansible_scenario import ansible_with_guest

XENVM_SHARED = True    # conftest.py: the one VM of the layer
DOMU = "idu"
VIRTIO_NET = "0000:00:01.0"     # dom0's own NIC (QEMU -device virtio-net-pci, first free slot)


@pytest.fixture(scope="module", name="host")
def host_fixture():
    yield from vm_fixture_body("identity", DOMU)


@pytest.fixture(scope="module", name="ansible")
def ansible_fixture(host, tmp_path_factory):
    for bdf in (EDU, TESTDEV):
        if bdf not in host.assignable_list():
            host.xl("pci-assignable-add %s" % bdf)
    return ansible_with_guest(host, str(tmp_path_factory.mktemp("identity")))


def test_readiness_agrees_with_xl_info_and_sysfs(host, ansible):
    result = ansible.ok("info detail=readiness", "info", detail="readiness")
    ready = result["readiness"]
    virt_caps = host.sh("xl info | sed -n 's/^virt_caps *: //p'").stdout.split()
    assert sorted(ready["virt_caps"].split()) == sorted(virt_caps), (ready, virt_caps)
    assert ready["iommu"] is ("hvm_directio" in virt_caps or "pv_directio" in virt_caps), ready
    assert ready["pciback"] in ("module", "builtin"), ready
    assert ready["passthrough_ready"] is True, ready
    devices = {d["bdf"]: d for d in result["devices"]}
    for bdf in (EDU, TESTDEV, E1000):
        has_reset = host.sh("test -e /sys/bus/pci/devices/%s/reset" % bdf, check=False).returncode == 0
        reset = devices[bdf]["reset"]
        assert reset["sources"]["reset_file"] is has_reset, (bdf, reset)
        assert devices[bdf]["assignability"]["endpoint"] is True, devices[bdf]
    assert devices[EDU]["reset"]["usable"] is False and devices[EDU]["reset"]["why"], devices[EDU]


def test_selectors_resolve_qemu_devices_by_id_and_class(host, ansible):
    by_id = ansible.ok("passthrough select id, check mode", "passthrough", domain=DOMU, check_mode=True,
                       devices=[{"select": {"id": "1234:11e8"}}])
    assert by_id["selected"][DOMU][0]["bdfs"] == [EDU], by_id["selected"]
    assert by_id["changed"] is True
    # Two Ethernet controllers: dom0's own virtio NIC (ssh) and the e1000.
    # Class alone is ambiguous and refused, naming both; with the vendor, the e1000.
    ambiguous, _seconds = ansible.run("assignable", check_mode=True, take_from_driver=True,
                                      devices=[{"select": {"class": "0x0200"}}])
    assert ambiguous.get("failed") and "matches 2 devices" in ambiguous["msg"], ambiguous
    assert E1000 in ambiguous["msg"] and VIRTIO_NET in ambiguous["msg"], ambiguous["msg"]
    by_class = ansible.ok("assignable select class+vendor, check mode", "assignable", check_mode=True,
                          take_from_driver=True, devices=[{"select": {"class": "0x0200", "vendor": "8086"}}])
    assert by_class["selected"][0]["bdfs"] == [E1000], by_class["selected"]
    # Check mode: nothing happened.
    assert host.driver(E1000) == "e1000"
    assert host.pci_list() == []


def test_strict_reset_refuses_a_selected_device_without_reset(host, ansible):
    result, _seconds = ansible.run("passthrough", domain=DOMU, reset="strict", devices=[{"select": {"vendor": "1234"}}])
    assert result.get("failed"), result
    assert EDU in result["msg"] and "reset" in result["msg"], result["msg"]
    # Refused before any write: no backend, no bookkeeping.
    assert host.sh("xenstore-read /local/domain/0/backend/pci/%d/0/num_devs" % host.domid, check=False).returncode != 0
    assert host.sh("xenstore-read /libxl/pci/0000-00-10-0/domid", check=False).returncode != 0
    assert host.pci_list() == []

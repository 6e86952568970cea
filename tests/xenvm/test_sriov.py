# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""SR-IOV on real Xen 4.17: QEMU's igb (an Intel 82576, PF 8086:10c9, up to 7
VFs 8086:10ca) behind a PCIe root port, driven by dom0's igb driver.

Bookworm's QEMU (7.2) has no igb: this module boots its own VM (the shared
one is stopped first) with bookworm-backports' QEMU 10, downloaded and
unpacked in the cache by ``qemu_backports.py`` (or the system's QEMU when it
has igb), and skips loudly when that QEMU or the VM cannot be had. The PF
sits at 0000:01:00.0 behind ``pcie-root-port`` 00:13.0 (on the root bus its
VFs, 128 functions further at stride 2, would overflow the bus: QEMU refuses
"VF addr overflows"); its VFs appear at 0000:01:10.0, 0000:01:10.2, ...

- ``test_kernel_sriov_interface``: what Linux and Xen do, which the module
  relies on: 2 VFs created (``virtfnN``, ``physfn``, igbvf binds them, Xen
  logs "PCI add virtual function"), 3 while 2 exist is EBUSY, 8 (over
  ``sriov_totalvfs`` 7) ERANGE, 0 while a VF is pciback's is EPERM (igb:
  "Cannot deallocate SR-IOV virtual functions while they are assigned"),
  0 after the VF is given back removes them (Xen: "PCI remove device").
- ``test_assignable_sriov``: ``xen.pci.assignable`` with ``sriov`` (the PF
  with 2 VFs) and a ``physfn`` selector with ``count: all``: changed, 2
  ``virtfn`` links, both VFs pciback's and in ``xl pci-assignable-list``;
  the rerun changes nothing; ``state: absent`` gives them back and leaves
  ``sriov_numvfs`` 0.
- ``test_assignable_sriov_without_autoprobe``: the same with the PF's
  ``sriov_drivers_autoprobe`` 0, through the VFs' ``driver_override``.
- ``test_a_new_vf_hot_plugged_into_a_running_pv_guest``: a VF of the pool
  to a running PV guest by a ``physfn`` selector (the guest's pcifront sees
  8086:10ca), a change of count refused naming the guest, the detach.

``XENVM_STATE`` (a VM of ``xenvm.py boot``) is used when it has the PF::

    xenvm.py --state S boot --qemu backports --cpu max,-smap,-xsave,-x2apic \\
        --qemu-args "-device pcie-root-port,id=rp1,chassis=1,slot=1,bus=pcie.0,addr=0x13 \\
                     -device igb,netdev=n2,bus=rp1,addr=0x0 -netdev user,id=n2,restrict=on"
"""

from __future__ import annotations

import os
import re
import sys
import time

import pytest

from conftest import LAYER_TIMES, ROOT, Host, boot_or_skip, loud_skip, own_vm_on_request, paced, write_layer_times, xenvm_artifacts
from test_ansible_scenario import Ansible
import qemu_backports
import xenvm

XENVM_SHARED = False    # conftest.py: the shared VM is stopped before this module
PF = "0000:01:00.0"
VFS = ["0000:01:10.0", "0000:01:10.2"]      # sriov_offset 128, sriov_stride 2
PF_SYSFS = "/sys/bus/pci/devices/%s" % PF
# Without -x2apic dom0's virtio disk hung under QEMU 10's TCG.
CPU = "max,-smap,-xsave,-x2apic"
EXTRA_ARGS = ["-device", "pcie-root-port,id=rp1,chassis=1,slot=1,bus=pcie.0,addr=0x13",
              "-device", "igb,netdev=n2,bus=rp1,addr=0x0", "-netdev", "user,id=n2,restrict=on"]


def banner_skip(why):
    loud_skip("REAL-XEN SR-IOV TEST SKIPPED: %s" % why, "real-Xen SR-IOV: %s" % why)


def igb_qemu():
    """A QEMU with the igb device: the system's if it has one, else
    bookworm-backports' (pytest.skip, loudly, when there is none)."""
    if qemu_backports.has_device(xenvm.QEMU, "igb"):
        return None
    try:
        return qemu_backports.ensure(say=lambda line: sys.stderr.write(line + "\n"))
    except qemu_backports.Unavailable as exc:
        banner_skip("no QEMU with the igb (SR-IOV) device: bookworm-backports' QEMU: %s" % exc)
    return None


@pytest.fixture(scope="module", name="host")
def host_fixture():
    own_vm_on_request("test_sriov.py (bookworm-backports' QEMU with an igb)", 160)
    artifacts = xenvm_artifacts("sriov")
    start = time.monotonic()
    if os.environ.get("XENVM_STATE"):
        vm, owned = boot_or_skip(artifacts, sub="vm")
    else:
        vm, owned = boot_or_skip(artifacts, sub="vm", qemu=igb_qemu(), cpu=CPU, extra_args=EXTRA_ARGS)
    LAYER_TIMES["boots"].append("sriov (igb): %.1f s (%s)" % (time.monotonic() - start, "; ".join(vm.attempts)))
    write_layer_times()
    try:
        host = Host(vm, artifacts, "none")
        if host.sh("cat %s/sriov_totalvfs" % PF_SYSFS, check=False).returncode != 0:
            banner_skip("dom0 has no SR-IOV PF at %s (a XENVM_STATE VM booted without the igb?)" % PF)
        yield host
    finally:
        if owned:
            with open(os.path.join(artifacts, "serial.log"), "w", encoding="utf-8") as handle:
                handle.write(vm.serial())
            vm.stop()


def sysfs_state(host):
    """(numvfs, [VF addresses of the virtfnN links, in order], {VF: driver})."""
    out = host.sh("cat %s/sriov_numvfs; for l in %s/virtfn*; do [ -e \"$l\" ] && basename \"$(readlink \"$l\")\"; done; true"
                  % (PF_SYSFS, PF_SYSFS)).stdout.split()
    vfs = sorted(out[1:], key=lambda bdf: int(bdf.replace(":", "").replace(".", ""), 16))
    return int(out[0]), vfs, {vf: host.driver(vf) for vf in vfs}


def write_numvfs(host, count):
    """(exit status, stderr) of ``echo count > sriov_numvfs``."""
    proc = host.sh("echo %d > %s/sriov_numvfs" % (count, PF_SYSFS), check=False)
    return proc.returncode, proc.stderr.strip()


def wait_drivers(host, want, timeout=30.0):
    """Wait until every VF has the driver ``want`` (udev may still be loading igbvf); the last state."""
    deadline = time.monotonic() + paced(timeout)
    state = sysfs_state(host)
    while set(state[2].values()) != {want} and time.monotonic() < deadline:
        time.sleep(0.5)
        state = sysfs_state(host)
    return state


def test_kernel_sriov_interface(host):
    assert host.driver(PF) == "igb", "dom0's igb does not hold the PF %s" % PF
    facts = host.sh("cd %s && cat sriov_totalvfs sriov_offset sriov_stride sriov_vf_device sriov_numvfs" % PF_SYSFS).stdout.split()
    assert facts == ["7", "128", "2", "10ca", "0"], facts
    host.sh("dmesg -c >/dev/null; xl dmesg -c >/dev/null")
    try:
        assert write_numvfs(host, 2)[0] == 0
        numvfs, vfs, drivers = wait_drivers(host, "igbvf")
        assert (numvfs, vfs) == (2, VFS), (numvfs, vfs)
        assert drivers == {vf: "igbvf" for vf in VFS}, drivers
        for vf in VFS:
            assert host.sh("basename $(readlink /sys/bus/pci/devices/%s/physfn)" % vf).stdout.strip() == PF
        xen_log = host.sh("xl dmesg").stdout
        for vf in VFS:
            assert "PCI add virtual function %s" % vf in xen_log, xen_log

        status, err = write_numvfs(host, 3)
        assert status != 0 and "Device or resource busy" in err, (status, err)
        assert "2 VFs already enabled. Disable before enabling 3 VFs" in host.sh("dmesg").stdout
        status, err = write_numvfs(host, 8)
        assert status != 0 and "Numerical result out of range" in err, (status, err)
        assert write_numvfs(host, 2)[0] == 0, "writing the current count is no change"

        host.xl("pci-assignable-add %s" % VFS[0])
        assert host.driver(VFS[0]) == "pciback" and VFS[0] in host.assignable_list()
        status, err = write_numvfs(host, 0)
        assert status != 0 and "Operation not permitted" in err, (status, err)
        assert "Cannot deallocate SR-IOV virtual functions while they are assigned" in host.sh("dmesg").stdout
        assert sysfs_state(host)[:2] == (2, VFS)

        host.xl("pci-assignable-remove -r %s" % VFS[0])
        assert host.driver(VFS[0]) == "igbvf"
        assert write_numvfs(host, 0)[0] == 0
        assert sysfs_state(host)[:2] == (0, [])
        xen_log = host.sh("xl dmesg").stdout
        for vf in VFS:
            assert "PCI remove device %s" % vf in xen_log, xen_log
    finally:
        # Leave the PF as booted for the module's test.
        host.sh("for v in %s; do xl pci-assignable-remove -r $v; done 2>/dev/null; echo 0 > %s/sriov_numvfs"
                % (" ".join(VFS), PF_SYSFS), check=False)


def module_has_sriov():
    with open(os.path.join(ROOT, "plugins", "modules", "assignable.py"), encoding="utf-8") as handle:
        return re.search(r"^\s+sriov=dict\(", handle.read(), re.M) is not None


def module_runner(host, tmp_path):
    """The collection's modules run on the VM, once the PF has no VFs (or a skip, loudly)."""
    if not module_has_sriov():
        banner_skip("xen.pci.assignable in %s has no sriov option yet" % ROOT)
    runner = Ansible(host, str(tmp_path))
    if not runner.binary:
        pytest.skip("ansible-playbook is not installed next to %s nor on PATH" % sys.executable)
    assert sysfs_state(host)[:2] == (0, []), "the PF has VFs before the module runs"
    return runner


# Two VFs of the PF, all of them in the pool.
MODULE_ARGS = dict(sriov=[{"pf": PF, "numvfs": 2}], devices=[{"select": {"physfn": PF}, "count": "all"}])


def test_assignable_sriov(host, tmp_path):
    runner = module_runner(host, tmp_path)
    args = MODULE_ARGS
    try:
        result = runner.ok("sriov present", "assignable", state="present", **args)
        assert result["changed"], result
        numvfs, vfs, drivers = sysfs_state(host)
        assert (numvfs, vfs) == (2, VFS), (numvfs, vfs, result)
        assert drivers == {vf: "pciback" for vf in VFS}, (drivers, result)
        assert set(VFS) <= set(host.assignable_list()), host.assignable_list()
        entry = result["sriov"][0]
        assert (entry["pf"], entry["numvfs"], entry["vfs"], entry["changed"]) == (PF, 2, VFS, True), result["sriov"]

        again = runner.ok("sriov present again", "assignable", state="present", **args)
        assert not again["changed"], again
        assert sysfs_state(host) == (numvfs, vfs, drivers)

        gone = runner.ok("sriov absent", "assignable", state="absent", **args)
        assert gone["changed"], gone
        assert sysfs_state(host)[:2] == (0, []), (sysfs_state(host), gone)
        assert not set(VFS) & set(host.assignable_list()), host.assignable_list()
        # pciback's slots name addresses: one left behind would take the
        # VFs created there later before their VF driver does.
        slots = host.sh("cat /sys/bus/pci/drivers/pciback/slots").stdout.split()
        assert not set(VFS) & set(slots), slots
        assert host.driver(PF) == "igb"
    finally:
        host.sh("for v in %s; do xl pci-assignable-remove -r $v; done 2>/dev/null; echo 0 > %s/sriov_numvfs"
                % (" ".join(VFS), PF_SYSFS), check=False)


def test_assignable_sriov_without_autoprobe(host, tmp_path):
    """sriov_drivers_autoprobe 0 (VFs for guests only, no VF driver in dom0):
    the VFs come up with no driver and pciback's bind of them is ENODEV
    (xl pci-assignable-add fails so); the module binds them through
    driver_override, lists them assignable, and clears the override when it
    gives them back."""
    runner = module_runner(host, tmp_path)
    args = MODULE_ARGS
    host.sh("echo 0 > %s/sriov_drivers_autoprobe" % PF_SYSFS)
    try:
        result = runner.ok("sriov present, no autoprobe", "assignable", state="present", **args)
        assert result["changed"], result
        numvfs, vfs, drivers = sysfs_state(host)
        assert (numvfs, vfs, drivers) == (2, VFS, {vf: "pciback" for vf in VFS}), (numvfs, vfs, drivers, result)
        assert set(VFS) <= set(host.assignable_list()), host.assignable_list()
        overrides = host.sh("cat %s" % " ".join("/sys/bus/pci/devices/%s/driver_override" % vf for vf in VFS)).stdout.split()
        assert overrides == ["pciback", "pciback"], overrides
        assert [d["driver_path"] for d in result["devices"]] == [None, None], result["devices"]

        gone = runner.ok("sriov absent, no autoprobe", "assignable", state="absent", **args)
        assert gone["changed"], gone
        assert sysfs_state(host)[:2] == (0, []), (sysfs_state(host), gone)
        slots = host.sh("cat /sys/bus/pci/drivers/pciback/slots").stdout.split()
        assert not set(VFS) & set(slots), slots
        # Created again, the VFs start with no override and no driver.
        assert write_numvfs(host, 1)[0] == 0
        assert host.sh("cat /sys/bus/pci/devices/%s/driver_override" % VFS[0]).stdout.strip() == "(null)"
        assert host.driver(VFS[0]) == ""
    finally:
        host.sh("for v in %s; do xl pci-assignable-remove -r $v; done 2>/dev/null; echo 0 > %s/sriov_numvfs; "
                "echo 1 > %s/sriov_drivers_autoprobe" % (" ".join(VFS), PF_SYSFS, PF_SYSFS), check=False)


def guest_sees(guest, want, timeout=60.0):
    """Wait until the guest's own view (its data/pci-devices) holds exactly
    the ids ``want``; the last view."""
    deadline = time.monotonic() + paced(timeout)
    view = guest.guest_view()
    while sorted(view) != sorted(want) and time.monotonic() < deadline:
        time.sleep(0.5)
        view = guest.guest_view()
    return view


def test_a_new_vf_hot_plugged_into_a_running_pv_guest(host, tmp_path):
    """The operator's path on real Xen: VFs created into the pool, one
    passed to a running PV guest by a physfn selector (the guest's pcifront
    sees 8086:10ca), a change of count refused naming the guest, the VF
    detached, the VFs given back and removed."""
    runner = module_runner(host, tmp_path)
    guest = Host(host.vm, host.artifacts, "sriovu")
    guest.install()
    try:
        runner.ok("VFs into the pool", "assignable", state="present", **MODULE_ARGS)
        guest.create()
        assert guest.guest_view() == {}, "the guest sees PCI devices before any attach"
        attached = runner.ok("a VF to the guest", "passthrough", domain="sriovu",
                             devices=[{"select": {"physfn": PF}, "count": 1}])
        assert attached["changed"], attached
        assert guest.pci_list() == [VFS[0]], guest.pci_list()
        view = guest_sees(guest, ["8086:10ca"])
        assert sorted(view) == ["8086:10ca"], view

        refused, _seconds = runner.run("assignable", state="present", devices=[], sriov=[{"pf": PF, "numvfs": 3}])
        assert refused.get("failed") and "0000:01:10.0 (attached to sriovu" in refused["msg"], refused
        assert sysfs_state(host)[:2] == (2, VFS)

        detached = runner.ok("the VF detached", "passthrough", domain="sriovu", devices=[], state="exact")
        assert detached["changed"], detached
        assert guest_sees(guest, []) == {}
        gone = runner.ok("VFs given back and removed", "assignable", state="absent", **MODULE_ARGS)
        assert gone["changed"] and sysfs_state(host)[:2] == (0, []), (gone, sysfs_state(host))
    finally:
        guest.destroy()
        host.sh("for v in %s; do xl pci-assignable-remove -r $v; done 2>/dev/null; echo 0 > %s/sriov_numvfs"
                % (" ".join(VFS), PF_SYSFS), check=False)

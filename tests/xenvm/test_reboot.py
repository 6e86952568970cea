# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``persistent: true`` across a real reboot of dom0 on Xen 4.17.

This module has its own VM (the layer's shared one is stopped first), whose
dom0 disk is a writable copy kept from one boot to the next. The e1000 at
00:12.0 is dom0's at boot. ``xen.pci.assignable`` with ``persistent: true``
takes it for pciback now and writes the modprobe.d setup (dom0 loads
xen-pciback as a module from its root file system, so the setup needs no
initramfs: ``update_initramfs`` is ``/bin/true``). After a reboot, the device
must be pciback's before any run of ours: ``xl pci-assignable-list`` lists
it, sysfs shows pciback holding it, and ``xen.pci.info`` says it is
assignable now and after the next reboot.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

from conftest import LAYER_TIMES, Host, boot_or_skip, own_vm_on_request, paced, write_layer_times, xenvm_artifacts
from test_ansible_scenario import Ansible

XENVM_SHARED = False    # conftest.py: the shared VM is stopped before this module
E1000 = "0000:00:12.0"


def boot(artifacts, disk, what):
    """A VM on ``disk`` (or pytest.skip, loudly, when real Xen is unavailable)."""
    start = time.monotonic()
    vm, _owned = boot_or_skip(artifacts, disk=disk, sub=what)
    LAYER_TIMES["boots"].append("%s: %.1f s (%s)" % (what, time.monotonic() - start, "; ".join(vm.attempts)))
    write_layer_times()
    return vm


def test_persistent_assignment_survives_a_reboot(tmp_path):
    own_vm_on_request("test_reboot.py (two boots of a copy of dom0's disk)", 95)
    artifacts = xenvm_artifacts("reboot")
    disk = os.path.join(str(tmp_path), "dom0.ext4")
    vm = boot(artifacts, disk, "first-boot")
    try:
        host = Host(vm, artifacts, "none")
        assert host.driver(E1000) == "e1000", "dom0's e1000 does not hold %s at boot" % E1000
        runner = Ansible(host, str(tmp_path))
        if not runner.binary:
            pytest.skip("ansible-playbook is not installed next to %s nor on PATH" % sys.executable)
        result = runner.ok("assignable persistent (modprobe.d)", "assignable", devices=[E1000], take_from_driver=True,
                           persistent=True, update_initramfs="/bin/true")
        assert result["changed"] and result["reboot_required"], result
        assert result["boot_setup"]["setup"] == "modprobe" and result["boot_setup"]["pciback"] == "module", result
        assert result["boot_setup"]["hidden_after_reboot"] == [E1000], result
        assert host.driver(E1000) == "pciback"
        conf = host.sh("cat /etc/modprobe.d/xen-pci.conf").stdout
        assert "hide=(%s)" % E1000 in conf and "softdep e1000 pre: xen_pciback" in conf, conf
        host.sh("sync")
    finally:
        vm.stop()

    vm = boot(artifacts, disk, "second-boot")
    try:
        host = Host(vm, artifacts, "none")
        # Nothing of ours has run since the boot: what the boot setup did.
        deadline = time.monotonic() + paced(30.0)
        while host.driver(E1000) != "pciback" and time.monotonic() < deadline:
            time.sleep(1.0)     # udev and systemd-modules-load may still be at work
        assert host.driver(E1000) == "pciback", "after the reboot %s is held by %s, not pciback\n%s" % (
            E1000, host.driver(E1000), host.diagnose())
        assert E1000 in host.assignable_list()
        info = Ansible(host, str(tmp_path)).ok("info after the reboot", "info")
        dev = {d["bdf"]: d for d in info["devices"]}[E1000]
        assert dev["assignable_now"] and dev["assignable_after_reboot"], dev
    finally:
        vm.stop()

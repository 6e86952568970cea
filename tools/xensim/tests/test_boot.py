"""The simulated dom0's boot setup: layout, and update-grub / update-initramfs as the real tools behave."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from xensim.boot import build, parse_boot
from xensim.scenario import ScenarioError, loads


def _run(root, name, *args):
    return subprocess.run([os.path.join(root, "usr/sbin", name), *args], capture_output=True, text=True, check=False)


def _read(root, rel):
    with open(os.path.join(root, rel), encoding="utf-8") as handle:
        return handle.read()


def test_builtin_pciback_on_grub(tmp_path):
    root = str(tmp_path)
    build(root, parse_boot({"pciback": "builtin"}), ["0000:00:14.0"])
    assert _read(root, "sys/module/xen_pciback/parameters/hide") == "(0000:00:14.0)\n"
    assert not os.path.exists(os.path.join(root, "sys/module/xen_pciback/initstate"))
    assert "xen-pciback.hide=(0000:00:14.0)" in _read(root, "proc/cmdline")
    assert "xen-pciback/xen-pciback.ko" in _read(root, "lib/modules/6.1.0-30-amd64/modules.builtin")
    with open(os.path.join(root, "etc/default/grub.d/zz.cfg"), "w", encoding="utf-8") as handle:
        handle.write('GRUB_CMDLINE_LINUX_XEN_REPLACE="${GRUB_CMDLINE_LINUX_XEN_REPLACE:-$GRUB_CMDLINE_LINUX} x=1"\n')
    proc = _run(root, "update-grub")
    assert proc.returncode == 0, proc.stderr
    assert "module2 /boot/vmlinuz-6.1.0-30-amd64 placeholder root=/dev/xvda1 ro console=hvc0 x=1 quiet\n" in _read(
        root, "boot/grub/grub.cfg")
    with open(os.path.join(root, "etc/default/grub.d/zz.cfg"), "w", encoding="utf-8") as handle:
        handle.write('GRUB_CMDLINE_LINUX="unterminated\n')
    assert _run(root, "update-grub").returncode == 1
    log = [json.loads(line) for line in _read(root, "var/log/xensim-boot.log").splitlines()]
    assert log == [["update-grub"], ["update-grub"]]


def test_module_pciback_direct_boot_and_initramfs(tmp_path):
    root = str(tmp_path)
    build(root, parse_boot({"loader": "direct"}), [])
    assert _read(root, "sys/module/xen_pciback/parameters/hide") == "(null)\n"
    assert _read(root, "sys/module/xen_pciback/initstate") == "live\n"
    assert not os.path.exists(os.path.join(root, "etc/default/grub"))
    assert _run(root, "update-initramfs").returncode == 2
    with open(os.path.join(root, "etc/modprobe.d/xen-pci.conf"), "w", encoding="utf-8") as handle:
        handle.write("options xen_pciback hide=(0000:00:12.0)\n")
    proc = _run(root, "update-initramfs", "-u")
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(root, "boot/initrd.img-6.1.0-30-amd64"), "rb") as handle:
        cpio = handle.read()
    assert cpio.startswith(b"070701") and b"etc/modprobe.d/xen-pci.conf\0" in cpio
    assert b"options xen_pciback hide=(0000:00:12.0)\n" in cpio and b"TRAILER!!!" in cpio


def test_scenario_boot_key():
    assert loads("name: x\nboot: {pciback: builtin}\n").boot["pciback"] == "builtin"
    with pytest.raises(ScenarioError, match="boot.loader"):
        loads("name: x\nboot: {loader: lilo}\n")
    with pytest.raises(ScenarioError, match="unknown"):
        loads("name: x\nboot: {grub: true}\n")


def test_pciback_and_boot_pciback_are_one_kernel():
    assert loads("name: x\npciback: builtin\n").boot["pciback"] == "builtin"
    assert loads("name: x\nboot: {pciback: builtin}\n").pciback == "builtin"
    both = loads("name: x\npciback: builtin\nboot: {pciback: builtin}\n")
    assert both.pciback == both.boot["pciback"] == "builtin"
    assert loads("name: x\n").pciback == loads("name: x\n").boot["pciback"] == "module"
    with pytest.raises(ScenarioError, match="boot.pciback: module disagrees with pciback builtin"):
        loads("name: x\npciback: builtin\nboot: {pciback: module}\n")

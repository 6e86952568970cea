# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""persistent: true of the assignable runner against xensim and a host root
(GRUB defaults, modprobe.d, /proc, /sys/module) with stand-ins for
update-grub and update-initramfs that record their calls."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from ansible_collections.xen.pci.plugins.module_utils._bootsetup import (
    GRUB_DROPIN, MODPROBE_CONF, after_reboot, hide_items, pciback_kind, running_hide)
from ansible_collections.xen.pci.plugins.module_utils._errors import BootSetupError, RefusedError, XenPciError
from ansible_collections.xen.pci.plugins.module_utils._runner_assignable import run_assignable

HOST = """
name: boot-host
devices:
  - {bdf: "0000:00:11.0", vendor: 0x1b36, device: 0x0005, class: 0x00ff00, driver: pciback}
  - {bdf: "0000:00:12.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: e1000}
  - {bdf: "0000:00:13.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: null}
  - {bdf: "0000:00:14.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, hidden: true}
domains:
  - {domid: 2, name: db, type: pv, state: running, pcifront: true, devices: ["0000:00:11.0"]}
"""

KVER = "6.1.0-30-amd64"


def write(root, rel, text):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def read(root, rel):
    with open(os.path.join(root, rel), encoding="utf-8") as handle:
        return handle.read()


def tool(root, name, rc=0):
    """A stand-in that logs its argv (and sources GRUB's defaults as grub-mkconfig does)."""
    body = "#!/bin/sh\necho \"%s $*\" >> %s/calls.log\n" % (name, root)
    if name == "update-grub":
        body += ('. %s/etc/default/grub\nfor f in %s/etc/default/grub.d/*.cfg; do [ -e "$f" ] && . "$f"; done\n'
                 'echo "module2 /boot/vmlinuz-%s ${GRUB_CMDLINE_LINUX_XEN_REPLACE:-$GRUB_CMDLINE_LINUX} '
                 '${GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT:-$GRUB_CMDLINE_LINUX_DEFAULT}" > %s/boot/grub/grub.cfg\n'
                 % (root, root, KVER, root))
        os.makedirs(os.path.join(root, "boot/grub"), exist_ok=True)
    body += "exit %d\n" % rc
    path = write(root, "usr/sbin/" + name, body)
    os.chmod(path, stat.S_IRWXU)
    return path


def calls(root):
    try:
        return read(root, "calls.log").splitlines()
    except FileNotFoundError:
        return []


@pytest.fixture
def grub_root(tmp_path):
    """A Debian host whose kernel has pciback built in, with a device hidden by hand."""
    root = str(tmp_path / "grub-host")
    write(root, "etc/default/grub", 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
                                    'GRUB_CMDLINE_LINUX="console=hvc0 xen-pciback.hide=(0000:00:14.0)"\n')
    write(root, "etc/default/grub.d/xen.cfg", 'GRUB_CMDLINE_XEN_DEFAULT="dom0_mem=1024M"\n')
    write(root, "etc/debian_version", "12.8\n")
    write(root, "proc/sys/kernel/osrelease", KVER + "\n")
    write(root, "proc/cmdline", "placeholder root=/dev/xvda console=hvc0 xen-pciback.hide=(0000:00:14.0) quiet\n")
    write(root, "lib/modules/%s/modules.builtin" % KVER, "kernel/drivers/xen/xen-pciback/xen-pciback.ko\n")
    write(root, "sys/module/xen_pciback/parameters/hide", "(0000:00:14.0)\n")
    tool(root, "update-grub")
    return root


@pytest.fixture
def modprobe_root(tmp_path):
    """A dom0 booted without GRUB, pciback a loaded module, initramfs-tools installed."""
    root = str(tmp_path / "modprobe-host")
    write(root, "proc/sys/kernel/osrelease", KVER + "\n")
    write(root, "proc/cmdline", "root=/dev/vda console=hvc0\n")
    write(root, "lib/modules/%s/modules.builtin" % KVER, "kernel/drivers/base/firmware.ko\n")
    write(root, "sys/module/xen_pciback/initstate", "live\n")
    write(root, "sys/module/xen_pciback/parameters/hide", "(null)\n")
    write(root, "etc/modprobe.d/local.conf", "options xen_pciback hide=(0000:00:14.0)\n")
    os.makedirs(os.path.join(root, "etc/initramfs-tools"))
    tool(root, "update-initramfs")
    return root


def run_command(cmd):
    """What AnsibleModule.run_command(cmd, handle_exceptions=False) returns (OSError when it cannot start)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def run(params, **kwargs):
    return run_assignable(params, run_command=run_command, **kwargs)


@pytest.fixture
def boot_params(params_of):
    """``boot_params(host, root, **extra)``: the assignable runner's parameters with persistent on
    that host root, its update-grub and update-initramfs."""
    def make(host, root, **extra):
        extra.setdefault("persistent", True)
        return params_of(host, boot_root=root, update_grub=os.path.join(root, "usr/sbin/update-grub"),
                         update_initramfs=os.path.join(root, "usr/sbin/update-initramfs"), **extra)
    return make


def four_steps(params):
    """check, real, rerun, rerun in check mode; the real run's result."""
    predicted = run(params, check_mode=True)
    assert predicted["changed"] and predicted["boot_setup"]["commands"] == []
    real = run(params)
    assert real["changed"]
    assert predicted["reboot_required"] == real["reboot_required"]
    assert predicted["boot_setup"]["hidden_after_reboot"] == real["boot_setup"]["hidden_after_reboot"]
    assert predicted["diff"]["after"]["boot_setup"] == real["diff"]["after"]["boot_setup"]
    again = run(params)
    assert not again["changed"] and again["boot_setup"]["commands"] == []
    assert not run(params, check_mode=True)["changed"]
    return real


def test_hide_helpers(grub_root, modprobe_root):
    assert hide_items("(0000:03:00.0)(04:00.*)") == ["0000:03:00.0", "04:00.*"]
    assert pciback_kind(grub_root) == "builtin"
    assert pciback_kind(modprobe_root) == "module"
    assert running_hide(grub_root) == ["0000:00:14.0"]
    assert running_hide(modprobe_root) == []


def test_grub_dropin_merges_the_hand_written_list_and_update_grub_runs(sim, grub_root, boot_params):
    host = sim(HOST)
    params = boot_params(host, grub_root, devices=["0000:00:12.0", "00:13.0"], take_from_driver=True)
    real = four_steps(params)
    assert real["boot_setup"]["setup"] == "grub" and real["boot_setup"]["pciback"] == "builtin"
    assert real["boot_setup"]["commands"] == [{"cmd": [params["update_grub"]], "rc": 0}]
    assert real["reboot_required"] is True
    assert real["boot_setup"]["hidden_after_reboot"] == ["0000:00:14.0", "0000:00:12.0", "0000:00:13.0"]
    text = read(grub_root, GRUB_DROPIN)
    assert "# xen.pci owns: 0000:00:12.0 0000:00:13.0\n" in text
    # What grub-mkconfig makes of it: the last hide list holds the hand-written device and ours.
    cfg = read(grub_root, "boot/grub/grub.cfg")
    assert cfg.rstrip().endswith("quiet xen-pciback.hide=(0000:00:14.0)(0000:00:12.0)(0000:00:13.0)")
    assert read(grub_root, "etc/default/grub").count("hide") == 1     # the operator's file is untouched
    assert calls(grub_root) == ["update-grub "]
    assert all(d["assignable"] for d in real["devices"])

    # The running kernel now hides them: no reboot needed.
    write(grub_root, "sys/module/xen_pciback/parameters/hide", "(0000:00:14.0)(0000:00:12.0)(0000:00:13.0)\n")
    assert run(params, check_mode=True)["reboot_required"] is False

    gone = four_steps(dict(params, state="absent", devices=["0000:00:13.0"]))
    assert gone["boot_setup"]["hidden_after_reboot"] == ["0000:00:14.0", "0000:00:12.0"]
    assert gone["reboot_required"] is True
    assert "# xen.pci owns: 0000:00:12.0\n" in read(grub_root, GRUB_DROPIN)
    last = four_steps(dict(params, state="absent", devices=["0000:00:12.0"]))
    assert not os.path.exists(os.path.join(grub_root, GRUB_DROPIN))
    assert last["boot_setup"]["hidden_after_reboot"] == ["0000:00:14.0"]
    assert after_reboot({"boot_root": grub_root}) == ["0000:00:14.0"]


def test_modprobe_conf_softdeps_initramfs_and_backup(sim, modprobe_root, boot_params):
    host = sim(HOST)
    params = boot_params(host, modprobe_root, devices=["0000:00:12.0"], take_from_driver=True, backup=True)
    real = four_steps(params)
    assert real["boot_setup"]["setup"] == "modprobe"
    assert real["boot_setup"]["commands"] == [{"cmd": [params["update_initramfs"], "-u"], "rc": 0}]
    assert "backup_file" not in real["boot_setup"]         # no file before: nothing to keep
    text = read(modprobe_root, MODPROBE_CONF)
    assert "options xen_pciback hide=(0000:00:14.0)(0000:00:12.0)\n" in text
    assert "softdep e1000 pre: xen_pciback\n" in text
    assert real["reboot_required"] is True
    assert calls(modprobe_root) == ["update-initramfs -u"]

    more = run(dict(params, devices=["0000:00:13.0"]))
    assert os.path.exists(more["boot_setup"]["backup_file"])
    assert "(0000:00:12.0)(0000:00:13.0)" in read(modprobe_root, MODPROBE_CONF)
    # The hand-written device cannot be removed by us: refused, nothing written.
    with pytest.raises(RefusedError, match="local.conf"):
        run(dict(params, state="absent", devices=["0000:00:14.0"]))
    assert "(0000:00:12.0)(0000:00:13.0)" in read(modprobe_root, MODPROBE_CONF)


def test_refusals_write_no_boot_file(sim, grub_root, modprobe_root, boot_params):
    host = sim(HOST)
    with pytest.raises(RefusedError, match="built into the running kernel"):
        run(boot_params(host, grub_root, devices=["0000:00:13.0"], boot_setup="modprobe"))
    with pytest.raises(RefusedError, match="needs GRUB's defaults file"):
        run(boot_params(host, modprobe_root, devices=["0000:00:13.0"], boot_setup="grub"))
    # A pool refusal and a boot refusal are reported together, in problems.
    with pytest.raises(RefusedError) as both:
        run(boot_params(host, grub_root, devices=["0000:00:11.0"], state="absent", boot_setup="modprobe"))
    assert [(p["input"], p["error"]) for p in both.value.details["problems"]] == [
        ("devices", "RefusedError"), ("boot_setup", "RefusedError")]
    assert "built into the running kernel" in both.value.details["problems"][1]["msg"]
    # One bad device: the task is refused before the boot file is written.
    with pytest.raises(RefusedError, match="does not exist"):
        run(boot_params(host, grub_root, devices=["0000:00:13.0", "0000:09:00.0"]))
    with pytest.raises(RefusedError, match="attached to db"):
        run(boot_params(host, grub_root, devices=["0000:00:11.0"], state="absent"))
    assert not os.path.exists(os.path.join(grub_root, GRUB_DROPIN))
    assert not os.path.exists(os.path.join(modprobe_root, MODPROBE_CONF))
    assert calls(grub_root) == [] and calls(modprobe_root) == []


def test_a_failing_update_grub_is_reported_with_rc_and_stderr(sim, grub_root, boot_params):
    host = sim(HOST)
    tool(grub_root, "update-grub", rc=3)
    with pytest.raises(BootSetupError, match=r"update-grub failed \(rc 3\)") as caught:
        run(boot_params(host, grub_root, devices=["0000:00:13.0"]))
    assert caught.value.details["rc"] == 3
    assert isinstance(caught.value, XenPciError)
    assert not os.path.exists(os.path.join(grub_root, GRUB_DROPIN))     # put back: there was none


def test_a_missing_update_initramfs_is_a_boot_setup_error(sim, modprobe_root, boot_params):
    host = sim(HOST)
    params = dict(boot_params(host, modprobe_root, devices=["0000:00:13.0"]),
                  update_initramfs=os.path.join(modprobe_root, "usr/sbin/no-such-tool"))
    with pytest.raises(BootSetupError, match=r"cannot run .*no-such-tool: .*; .*xen-pci.conf was put back") as caught:
        run(params)
    assert caught.value.details["path"] == os.path.join(modprobe_root, MODPROBE_CONF)
    # Put back as it was (no file), so the next run writes it and runs the tool again.
    assert not os.path.exists(os.path.join(modprobe_root, MODPROBE_CONF))
    again = run(dict(params, update_initramfs=os.path.join(modprobe_root, "usr/sbin/update-initramfs")))
    assert again["changed"] and calls(modprobe_root) == ["update-initramfs -u"]
    assert "(0000:00:14.0)(0000:00:13.0)" in read(modprobe_root, MODPROBE_CONF)


def test_info_reports_now_and_after_reboot(sim, modprobe_root, boot_params, params_of):
    from ansible_collections.xen.pci.plugins.module_utils._runner_info import run_info  # pylint: disable=import-outside-toplevel
    host = sim(HOST)
    run(boot_params(host, modprobe_root, devices=["0000:00:13.0"]))
    full = {d["bdf"]: d for d in run_info(params_of(host, boot_root=modprobe_root, detail="full"))["devices"]}
    assert full["0000:00:13.0"]["assignable_now"] and full["0000:00:13.0"]["assignable_after_reboot"]
    assert full["0000:00:14.0"]["assignable_after_reboot"]          # hidden by hand in local.conf
    assert not full["0000:00:12.0"]["assignable_now"] and not full["0000:00:12.0"]["assignable_after_reboot"]
    assert not full["0000:00:11.0"]["assignable_now"]                # attached to db
    summary = run_info(params_of(host, boot_root=modprobe_root, detail="summary"))["devices"]
    assert all("assignable_after_reboot" not in d and "assignable_now" in d for d in summary)
    # An unreadable boot setup (a directory where a file should be) costs only that answer.
    os.makedirs(os.path.join(modprobe_root, "etc/modprobe.d/broken.conf"))
    broken = run_info(params_of(host, boot_root=modprobe_root, detail="full"))
    assert all(d["assignable_after_reboot"] is None for d in broken["devices"])
    assert any("assignable_after_reboot is unknown: cannot read" in w and "broken.conf" in w
               for w in broken["warnings_detail"])
    assert {d["bdf"]: d["assignable_now"] for d in broken["devices"]}["0000:00:13.0"] is True


def test_on_the_simulated_dom0_boot_setup(sim, boot_params):
    """xensim's own boot root: a built-in pciback with a device hidden by this boot, update-grub faithful."""
    host = sim(HOST + "boot: {pciback: builtin}\n")
    root = host.paths["boot_root"]
    params = boot_params(host, root, devices=["0000:00:13.0"])
    real = four_steps(params)
    assert real["boot_setup"]["setup"] == "grub" and real["boot_setup"]["hidden_now"] == ["0000:00:14.0"]
    assert real["boot_setup"]["hidden_after_reboot"] == ["0000:00:13.0"]    # 00:14.0 was hidden by no file
    assert real["reboot_required"] is True
    assert "quiet xen-pciback.hide=(0000:00:13.0)" in read(root, "boot/grub/grub.cfg")
    assert read(root, "var/log/xensim-boot.log").splitlines() == ['["update-grub"]']
    gone = four_steps(dict(params, state="absent"))
    assert "xen-pciback.hide" not in read(root, "boot/grub/grub.cfg")
    assert gone["boot_setup"]["hidden_after_reboot"] == []
    # 00:13.0 is hidden neither now nor at the next boot; 00:14.0 (hidden only
    # on this boot, not by the task) is no reason to reboot.
    assert gone["reboot_required"] is False and gone["boot_setup"]["hidden_now"] == ["0000:00:14.0"]


SELECT_HOST = """
name: boot-select-host
devices:
  - {bdf: "0000:00:12.0", vendor: 0x8086, device: 0x100e, class: 0x020000, driver: e1000}
  - {bdf: "0000:00:13.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: null, reset: false}
  - {bdf: "0000:00:14.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, hidden: true}
"""


def test_a_selected_device_is_hidden_at_boot_by_its_address(sim, modprobe_root, boot_params):
    host = sim(SELECT_HOST)
    params = boot_params(host, modprobe_root, devices=[{"select": {"id": "8086:100e"}, "name": "lan0"}],
                         take_from_driver=True, reset="strict")
    real = four_steps(params)
    assert real["selected"] == [{"entry": 0, "select": {"id": "8086:100e"}, "count": None, "bdfs": ["0000:00:12.0"]}]
    assert real["boot_setup"]["hidden_after_reboot"] == ["0000:00:14.0", "0000:00:12.0"]
    text = read(modprobe_root, MODPROBE_CONF)
    assert "# xen.pci owns: 0000:00:12.0\n" in text
    assert "options xen_pciback hide=(0000:00:14.0)(0000:00:12.0)\n" in text
    assert "softdep e1000 pre: xen_pciback\n" in text     # the selected device's dom0 driver
    assert [(d["bdf"], d["driver"], d["name"]) for d in real["devices"]] == [("0000:00:12.0", "pciback", "lan0")]
    assert real["reboot_required"] is True

    # Given back by the same selector (now chosen in the pool): the file goes.
    gone = four_steps(dict(params, state="absent"))
    assert gone["selected"][0]["bdfs"] == ["0000:00:12.0"]
    assert not os.path.exists(os.path.join(modprobe_root, MODPROBE_CONF))
    assert gone["boot_setup"]["hidden_after_reboot"] == ["0000:00:14.0"]
    assert calls(modprobe_root) == ["update-initramfs -u", "update-initramfs -u"]


def test_reset_strict_refuses_a_selected_device_before_the_boot_file(sim, modprobe_root, boot_params):
    host = sim(SELECT_HOST)
    params = boot_params(host, modprobe_root, devices=[{"select": {"id": "1234:11e8", "class": "0x00ff00"},
                                                        "count": "all"}], reset="strict")
    with pytest.raises(RefusedError, match="0000:00:13.0 has no reset") as caught:
        run(params)
    assert [p["device"] for p in caught.value.details["problems"]] == ["0000:00:13.0"]
    assert not os.path.exists(os.path.join(modprobe_root, MODPROBE_CONF)) and calls(modprobe_root) == []
    # best_effort: both chosen devices are hidden at boot, with the reset warning.
    real = four_steps(dict(params, reset="best_effort"))
    assert real["selected"][0]["bdfs"] == ["0000:00:14.0", "0000:00:13.0"]     # the pool's first
    assert sorted(real["boot_setup"]["hidden_after_reboot"]) == ["0000:00:13.0", "0000:00:14.0"]
    assert "# xen.pci owns: " in read(modprobe_root, MODPROBE_CONF)
    assert any("0000:00:13.0 has no reset" in w for w in real["warnings_detail"])


def test_info_readiness_carries_the_boot_setup_too(sim, modprobe_root, params_of):
    from ansible_collections.xen.pci.plugins.module_utils._runner_info import run_info  # pylint: disable=import-outside-toplevel
    host = sim(SELECT_HOST)
    out = run_info(params_of(host, boot_root=modprobe_root, detail="readiness"))
    assert out["readiness"]["passthrough_ready"] is True
    devices = {d["bdf"]: d for d in out["devices"]}
    assert devices["0000:00:14.0"]["assignable_after_reboot"] and devices["0000:00:14.0"]["assignable_now"]
    assert devices["0000:00:13.0"]["assignable_after_reboot"] is False
    assert devices["0000:00:13.0"]["reset"]["usable"] is False
    assert devices["0000:00:12.0"]["assignability"]["refused"] is None

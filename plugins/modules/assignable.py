#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: assignable
short_description: Host PCI devices bound to pciback, ready for Xen guests
version_added: 0.1.0
description:
  - Keeps host PCI devices in the pool of assignable devices (bound to C(xen-pciback) and quarantined)
    or out of it, as C(xl pci-assignable-add) and C(xl pci-assignable-remove -r) do, deciding from the
    live state (sysfs and xenstore) rather than from exit codes, so every run is idempotent.
  - Devices hidden from dom0 at boot (C(xen-pciback.hide)) are already assignable; giving them back works
    although they were never quarantined.
  - Keeps libxl's bookkeeping (C(/libxl/pci/<bdf>/driver_path) and C(name)), so C(xl pci-assignable-list)
    and C(xl pci-assignable-remove -r) keep working beside this module.
  - Every device of the task is checked before the first change; a refused task changes nothing.
author:
  - xen.pci contributors (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - xen.pci.host
  - xen.pci.host.ATTRIBUTES
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff shows, per device, its driver, pool membership, libxl name and remembered driver before and after.
      - With O(sriov), it shows the number of VFs of each PF under C(sriov), before and after.
  idempotent:
    description: Running the task again with the same options changes nothing and reports no change.
    support: full
  platform:
    platforms: posix
options:
  devices:
    description:
      - The host PCI devices, each a PCI address (V(0000:03:00.0), the segment may be left out) or a
        dictionary with C(bdf) and/or C(name).
      - C(name) is the libxl device name (C(xl pci-assignable-add -n)). With O(state=present) and a
        C(bdf), the device gets that name; a C(name) alone names a device that already carries it.
      - A device may also be named by what it is, a dictionary with C(select) and optionally C(count) and C(name),
        with the keys of M(xen.pci.passthrough)'s selectors (C(id), C(vendor), C(device), C(subsystem),
        C(subsystem_vendor), C(subsystem_device), C(class), C(serial), C(path), C(label)), and C(physfn) (the
        virtual functions of the SR-IOV physical function at that address). Without C(count) it must
        match exactly one device; C(count=N) takes N (devices already in the pool first, then by address);
        C(count=all) every match. See RV(selected).
      - With O(sriov), the selectors choose among the virtual functions as they will be once O(sriov) is applied
        (in check mode too). A virtual function still to be created is matched on C(id), C(vendor), C(device),
        C(class), C(path) and C(physfn), which its physical function predicts; not on subsystem ids, C(serial) or C(label).
      - At least one of O(devices) and O(sriov) is given.
    type: list
    elements: raw
  sriov:
    description:
      - SR-IOV physical functions (PFs) and the number of virtual functions (VFs) each must have
        (its C(sriov_numvfs)), made so before the devices of O(devices) are made assignable, so that O(devices)
        can name the VFs (by address, or with a C(physfn) or C(id) selector).
      - Each entry is C({pf, numvfs}), C(pf) a PCI address, or C({select, count, numvfs}) with a selector as in
        O(devices) that chooses among the host's SR-IOV PFs (C(count=all) for every PF of a model).
      - An entry with C(pool=true) also makes every VF of its PFs assignable (with O(state=absent), gives them back
        first), as if O(devices) listed them; without it, only the VFs O(devices) names enter the pool.
      - C(numvfs) is checked against the PF's C(sriov_totalvfs). The PF's dom0 driver creates the VFs; Linux
        changes a non-zero count only through 0, so a change from N to M removes every VF first. A change is refused
        before anything is written when it would remove a VF that is in the pool or attached to a guest
        (give it back first), when the PF has no dom0 driver or is itself assignable or attached, and for a device
        without the SR-IOV capability. Removing VFs that a dom0 driver holds (dom0 may use a VF network interface)
        needs O(take_from_driver).
      - The PF keeps its dom0 driver; Xen learned of it when dom0 booted, so the VFs are reported to Xen after their
        PF, as Xen 4.20 and later require.
      - A VF created by the task that its PF's driver bound to a VF driver (for example C(igbvf)) is taken from it
        without O(take_from_driver) when O(devices) names it (the task created it for the pool). The driver is
        remembered, so O(state=absent) gives the VF back to it.
      - With O(state=absent), the devices of O(devices) are given back first, then every VF of these PFs is removed
        (C(sriov_numvfs) 0); C(numvfs) may be left out.
      - The number of VFs does not survive a reboot of dom0, so O(persistent) cannot be combined with O(sriov).
      - See RV(sriov).
    type: list
    elements: dict
    version_added: 0.2.0
  state:
    description:
      - V(present) binds the devices to C(pciback) and quarantines them.
      - V(absent) gives them back to dom0 (see O(rebind)) and forgets their names.
        A device attached to a guest is refused, naming the guest.
    type: str
    choices: [present, absent]
    default: present
  take_from_driver:
    description:
      - Consent to unbind a device from the dom0 driver that holds it (for example a network card's C(e1000)).
        The driver is remembered in xenstore so that O(state=absent) can give the device back to it.
      - Without it, such a device is refused and the error names the driver.
      - Devices bound to no driver need no consent.
    type: bool
    default: false
  rebind:
    description:
      - With O(state=absent), bind each device back to the dom0 driver remembered when it was made assignable.
      - A device that had no driver (or was hidden at boot) is left bound to no driver, with a warning.
    type: bool
    default: true
  names:
    description:
      - What happens to the libxl name of a device listed without one, with O(state=present).
      - V(keep) leaves the name it has.
      - V(exact) forgets it, as C(xl pci-assignable-add) without C(-n) does.
      - A name already given to another device is refused.
    type: str
    choices: [keep, exact]
    default: keep
  reset:
    description:
      - With O(state=present), what to do with a device entering the pool that the host cannot reset
        (no C(do_flr) in pciback, no C(reset) file in sysfs); such a device keeps its state from one guest to the next.
      - V(strict) refuses it before anything is written, naming what is missing; V(best_effort) makes it
        assignable and says so in RV(warnings_detail); V(none) does not look.
      - Whatever the policy, a device that cannot be assigned on this host is refused before anything is
        written - a PCI bridge, or any device when Xen runs without an IOMMU.
      - A device a C(select) entry chooses is checked the same way, and the refusal names its address.
    type: str
    choices: [strict, best_effort, none]
    default: best_effort
    version_added: 0.2.0
  persistent:
    description:
      - Also keep the devices hidden from dom0 drivers at boot, so they are assignable again after dom0 reboots
        (with O(state=absent), stop hiding them). The pool changes now as without it; the boot setup takes
        effect at the next boot (see RV(reboot_required)).
      - The boot setup is chosen by O(boot_setup). The module owns one file and merges with hide lists written
        by hand elsewhere, which it keeps; a comment in its file names the devices it owns, and O(state=absent)
        removes only those (a device hidden by a line written by hand is refused, naming the file).
      - With O(boot_setup=grub), C(xen-pciback.hide=(BDF)...) goes into the drop-in
        C(/etc/default/grub.d/zz-xen-pci.cfg) (read last by Debian's grub-mkconfig, so its list wins), which sets
        only the Xen entries' variables C(GRUB_CMDLINE_LINUX_XEN_REPLACE) and C(GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT)
        (starting from C(GRUB_CMDLINE_LINUX) and C(GRUB_CMDLINE_LINUX_DEFAULT) when they are unset); then
        O(update_grub) runs.
      - 'With O(boot_setup=modprobe), C(options xen_pciback hide=(BDF)...) and one C(softdep <driver> pre: xen_pciback)
        per dom0 driver of the devices go into C(/etc/modprobe.d/xen-pci.conf); then, on initramfs-tools hosts
        (C(/etc/initramfs-tools) exists), C(update-initramfs -u) copies it into the initramfs.'
      - A device a C(select) entry chooses is hidden by its address (RV(selected)); the reset policy of O(reset) and the
        refusals of devices that cannot be assigned on this host apply to it before the boot setup is written.
    type: bool
    default: false
    version_added: 0.2.0
  boot_setup:
    description:
      - How O(persistent) hides devices at boot.
      - V(auto) picks V(grub) when xen-pciback is built into the running kernel (C(modules.builtin) lists it and
        C(/sys/module/xen_pciback/initstate) does not exist) and V(modprobe) when it is a module.
      - V(grub) needs C(/etc/default/grub) and Debian's C(/etc/default/grub.d) layout; V(modprobe) is refused when
        pciback is built in. A host that boots dom0 without GRUB (direct kernel load) needs V(modprobe).
    type: str
    choices: [auto, grub, modprobe]
    default: auto
    version_added: 0.2.0
  boot_root:
    description:
      - The directory under which C(/etc), C(/proc), C(/sys/module) and C(/lib/modules) of O(persistent) are read and
        written. For tests and chroots; leave it at V(/) on a host.
    type: path
    default: /
    version_added: 0.2.0
  backup:
    description:
      - With O(persistent), keep a time-stamped copy of the module's boot file before changing it (RV(boot_setup.backup_file)).
    type: bool
    default: false
    version_added: 0.2.0
  update_grub:
    description:
      - The command that regenerates GRUB's configuration after O(boot_setup=grub) changed the drop-in, run without
        arguments. A name is looked up in the module's C(PATH); give a path for a wrapper.
      - When it cannot run or fails, the drop-in is put back as it was and the task fails (C(BootSetupError)).
    type: str
    default: update-grub
    version_added: 0.2.0
  update_initramfs:
    description:
      - The C(update-initramfs) command, run with C(-u) after O(boot_setup=modprobe) changed its file on an
        initramfs-tools host. A wrapper that accepts C(-u) serves hosts with another initramfs tool.
      - When it cannot run or fails, the file is put back as it was and the task fails (C(BootSetupError)).
    type: str
    default: update-initramfs
    version_added: 0.2.0
notes:
  - In check mode nothing is written and no command runs; RV(boot_setup) and RV(reboot_required) say what would change.
  - Making a device assignable takes it away from dom0. Do not use O(take_from_driver) on a device dom0 needs
    (its disk or management network).
seealso:
  - module: xen.pci.passthrough
  - module: xen.pci.info
  - name: xl(1), pci-assignable-add
    description: The toolstack command this module replaces.
    link: https://xenbits.xen.org/docs/unstable/man/xl.1.html
"""

EXAMPLES = r"""
- name: Make two devices assignable, one of them held by dom0's e1000 driver
  xen.pci.assignable:
    devices:
      - "0000:03:00.0"
      - bdf: "0000:04:00.0"
        name: nic1
    take_from_driver: true

- name: Give a device back to its dom0 driver
  xen.pci.assignable:
    devices: ["0000:04:00.0"]
    state: absent

- name: Every NIC of one model into the pool, whatever its address on this host
  xen.pci.assignable:
    devices:
      - select: {id: "8086:100e", class: "0x0200"}
        count: all
    take_from_driver: true

- name: The on-board NIC, found by its firmware label, named lan0
  xen.pci.assignable:
    devices:
      - select: {label: "Onboard LAN"}
        name: lan0
    take_from_driver: true

- name: Admit to the pool only devices the host can reset between guests
  xen.pci.assignable:
    devices: ["0000:03:00.0", "0000:03:00.1"]
    reset: strict

- name: Forget the names of listed devices that are given without one
  xen.pci.assignable:
    devices: ["0000:03:00.0"]
    names: exact

- name: Assignable now and after every reboot (the boot setup chosen for this host)
  xen.pci.assignable:
    devices: ["0000:03:00.0", "0000:04:00.1"]
    take_from_driver: true
    persistent: true
    backup: true
  register: pool

- name: Tell the operator when the boot setup waits for a reboot
  ansible.builtin.debug:
    msg: "reboot to apply {{ pool.boot_setup.files }}"
  when: pool.reboot_required

- name: Every NIC of one model, assignable now and after every reboot, by address on this host
  xen.pci.assignable:
    devices:
      - select: {id: "8086:100e"}
        count: all
    take_from_driver: true
    persistent: true
    reset: strict

- name: A dom0 booted without GRUB, pciback a module (the modprobe.d way)
  xen.pci.assignable:
    devices: ["0000:03:00.0"]
    persistent: true
    boot_setup: modprobe

- name: No longer hidden at boot (and given back now)
  xen.pci.assignable:
    devices: ["0000:03:00.0"]
    state: absent
    persistent: true

- name: The GRUB way on a host whose GRUB configuration is made by a wrapper
  xen.pci.assignable:
    devices: ["0000:03:00.0"]
    persistent: true
    boot_setup: grub
    update_grub: /usr/local/sbin/update-grub-and-sign

- name: The modprobe.d way on a host whose initramfs is built by a wrapper that takes -u
  xen.pci.assignable:
    devices: ["0000:03:00.0"]
    persistent: true
    boot_setup: modprobe
    update_initramfs: /usr/local/sbin/initramfs-wrapper

- name: Four virtual functions of an SR-IOV NIC, all in the pool
  xen.pci.assignable:
    sriov:
      - pf: "0000:03:00.0"
        numvfs: 4
    devices:
      - select: {physfn: "0000:03:00.0"}
        count: all

- name: On every host, every Intel 82576 port with 7 VFs, and every VF of that model in the pool
  xen.pci.assignable:
    sriov:
      - select: {id: "8086:10c9"}
        count: all
        numvfs: 7
    devices:
      - select: {id: "8086:10ca"}
        count: all

- name: Every 82576 port with 2 VFs, each VF in the pool (pool, no devices list)
  xen.pci.assignable:
    sriov:
      - select: {id: "8086:10c9"}
        count: all
        numvfs: 2
        pool: true

- name: The VFs given back and removed (sriov_numvfs 0)
  xen.pci.assignable:
    sriov:
      - pf: "0000:03:00.0"
    devices:
      - select: {physfn: "0000:03:00.0"}
        count: all
    state: absent

- name: Against the simulated dom0 of xensim (its boot_root), as the collection's tests do
  xen.pci.assignable:
    devices: ["0000:00:14.0"]
    take_from_driver: true
    persistent: true
    boot_root: "{{ xensim.paths.boot_root }}"
    update_initramfs: "{{ xensim.paths.boot_root }}/usr/sbin/update-initramfs"
  check_mode: true
  diff: true
"""

RETURN = r"""
selected:
  description: What each selector entry of O(devices) chose - its index, C(select), C(count) and the addresses.
  returned: always
  type: list
  elements: dict
  sample: [{"entry": 0, "select": {"label": "Onboard LAN"}, "count": null, "bdfs": ["0000:00:19.0"]}]
actions:
  description: Steps taken, in order (in check mode, the steps that would be taken).
  returned: always
  type: list
  elements: str
  sample: ["remember driver e1000 and unbind 0000:04:00.0 from it", "bind 0000:04:00.0 to pciback and quarantine it"]
devices:
  description: The listed devices after the task (in check mode, as they are). A name that names no device is left out.
  returned: always
  type: list
  elements: dict
  contains:
    bdf:
      description: PCI address.
      type: str
    exists:
      description: Whether the device exists on the host.
      type: bool
    driver:
      description: The dom0 driver bound to the device (C(pciback) when it is in the pool), or V(null).
      type: str
    in_slots:
      description: Whether C(pciback) lists the device in its slots.
      type: bool
    assignable:
      description: Bound to C(pciback) and attached to no guest.
      type: bool
    assigned_to:
      description: Domain id of the guest the device is attached to, or V(null).
      type: int
    assigned_to_name:
      description: Name of that guest.
      type: str
    name:
      description: The libxl name of the device.
      type: str
    driver_path:
      description: The dom0 driver remembered to give the device back to (libxl's C(driver_path)).
      type: str
  sample:
    - {bdf: "0000:04:00.0", exists: true, driver: pciback, in_slots: true, assignable: true, assigned_to: null,
       assigned_to_name: null, name: nic1, driver_path: /sys/bus/pci/drivers/e1000}
reboot_required:
  description:
    - With O(persistent), whether one of the task's devices is hidden at the next boot (as the boot setup reads
      after the task) but not by the running kernel, or the other way round. The running kernel's list is pciback's
      C(hide) parameter, else the C(xen-pciback.hide) of C(/proc/cmdline).
    - It stays V(true) on reruns until dom0 reboots; the pool itself changed already (RV(devices)).
  returned: when O(persistent=true)
  type: bool
boot_setup:
  description: With O(persistent), the boot setup read back after the task.
  returned: when O(persistent=true)
  type: dict
  contains:
    setup:
      description: V(grub) or V(modprobe).
      type: str
    pciback:
      description: V(module) or V(builtin), how the running kernel has xen-pciback.
      type: str
    files:
      description: The file the module owns.
      type: list
      elements: str
    commands:
      description: The commands run (C(update-grub), C(update-initramfs -u)) with their C(rc); empty in check mode.
      type: list
      elements: dict
    backup_file:
      description: The copy made with O(backup).
      type: str
    initramfs:
      description:
        - With V(modprobe) on a host without initramfs-tools (no C(/etc/initramfs-tools)), why no initramfs was rebuilt.
          Such a host reads modprobe.d from its root file system, or its own initramfs tool must be run.
      type: str
    hidden_after_reboot:
      description: The devices the boot setup hides at the next boot (ours and those written by hand).
      type: list
      elements: str
    hidden_now:
      description: The devices the running kernel was told to hide.
      type: list
      elements: str
  sample: {setup: grub, pciback: builtin, files: [/etc/default/grub.d/zz-xen-pci.cfg],
           commands: [{cmd: [update-grub], rc: 0}], hidden_after_reboot: ["0000:03:00.0"], hidden_now: []}
sriov:
  description:
    - With O(sriov), each physical function as sysfs shows it after the task (in check mode, as it would be).
  returned: when O(sriov) is given
  type: list
  elements: dict
  contains:
    pf:
      description: The address of the physical function.
      type: str
    entry:
      description: The entry of O(sriov) that named it (C(sriov[N])).
      type: str
    numvfs:
      description: Its number of virtual functions (C(sriov_numvfs)).
      type: int
    totalvfs:
      description: The most it supports (C(sriov_totalvfs)).
      type: int
    vfs:
      description: The addresses of its virtual functions (its C(virtfnN) links, in order).
      type: list
      elements: str
    changed:
      description: Whether the task changed its number of virtual functions.
      type: bool
    predicted:
      description:
        - V(true) in check mode, where the entry is what the task would make (the VFs do not exist yet);
          V(false) when it is read back from sysfs after the task.
      type: bool
  sample: [{pf: "0000:03:00.0", entry: "sriov[0]", numvfs: 2, totalvfs: 7, vfs: ["0000:03:10.0", "0000:03:10.2"],
            changed: true, predicted: false}]
warnings_detail:
  description: Conditions that did not fail the task, such as a device left with no driver.
  returned: always
  type: list
  elements: str
"""

from functools import partial

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xen.pci.plugins.module_utils import _bytecode
from ansible_collections.xen.pci.plugins.module_utils._edge import finish
from ansible_collections.xen.pci.plugins.module_utils._host_options import HOST_ARGS


def main():
    argument_spec = dict(
        devices=dict(type="list", elements="raw"),
        sriov=dict(type="list", elements="dict"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        take_from_driver=dict(type="bool", default=False),
        rebind=dict(type="bool", default=True),
        names=dict(type="str", choices=["keep", "exact"], default="keep"),
        reset=dict(type="str", choices=["strict", "best_effort", "none"], default="best_effort"),
        persistent=dict(type="bool", default=False),
        boot_setup=dict(type="str", choices=["auto", "grub", "modprobe"], default="auto"),
        boot_root=dict(type="path", default="/"),
        backup=dict(type="bool", default=False),
        update_grub=dict(type="str", default="update-grub"),
        update_initramfs=dict(type="str", default="update-initramfs"),
    )
    argument_spec.update(HOST_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_one_of=[("devices", "sriov")])
    # The runner, and all it imports, only now: through the bytecode cache.
    _bytecode.install()
    from ansible_collections.xen.pci.plugins.module_utils._runner_assignable import run_assignable  # pylint: disable=import-outside-toplevel
    finish(module, lambda: run_assignable(module.params, check_mode=module.check_mode,
                                          run_command=partial(module.run_command, handle_exceptions=False)))


if __name__ == "__main__":
    main()

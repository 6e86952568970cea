#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: info
short_description: PCI devices of a Xen host and the PCI assignments of its guests
version_added: 0.1.0
description:
  - Reads the host's PCI devices from sysfs (ids, class, driver, resources, reset method, IOMMU group)
    and, from xenstore, what every guest has (devices, backend and frontend states, error nodes and
    stub domain links).
  - The whole host is read in a few pipelined xenstore round trips.
author:
  - xen.pci contributors (!UNKNOWN)
extends_documentation_fragment:
  - xen.pci.host
  - xen.pci.host.ATTRIBUTES
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reads only; runs the same in check mode.
  platform:
    support: full
    platforms: posix
  diff_mode:
    support: none
  idempotent:
    description: Running it twice with the same arguments changes nothing the second time.
    support: full
options:
  detail:
    description:
      - V(full) reports every attribute of each device (ids, class, resources, IRQ, reset method, IOMMU group).
      - V(summary) reports only what ownership needs (address, driver, pool, holder, name), reading one link per
        device instead of a dozen files. It is the cheap read for fleet reports.
      - V(readiness) reports what V(full) does, and whether the host can pass devices through at all
        (RV(readiness)) and, for each device, its reset capability (C(reset)) and whether it can be assigned
        (C(assignability)). It reads every device's config space; use it to check a host, not for fleet reports.
      - The guests (RV(domains)) are the same at every level.
    type: str
    choices: [full, summary, readiness]
    default: full
    version_added: 0.2.0
  boot_root:
    description:
      - The directory under which the boot setup (C(/etc/default/grub), C(/etc/default/grub.d), C(/etc/modprobe.d))
        is read for RV(devices[].assignable_after_reboot). For tests and chroots; leave it at V(/) on a host.
    type: path
    default: /
    version_added: 0.2.0
seealso:
  - module: xen.pci.passthrough
  - module: xen.pci.assignable
"""

EXAMPLES = r"""
- name: Read the passthrough state of a host
  xen.pci.info:
  register: pci

- name: List the devices ready for guests
  ansible.builtin.debug:
    msg: "{{ pci.assignable }}"

- name: Devices that come back assignable after a reboot
  ansible.builtin.debug:
    msg: "{{ pci.devices | selectattr('assignable_after_reboot') | map(attribute='bdf') | list }}"

- name: Against the simulated dom0 of xensim, whose boot setup is under its boot_root
  xen.pci.info:
    boot_root: "{{ xensim.paths.boot_root }}"
  register: sim_pci

- name: A cheap read for a fleet report
  xen.pci.info:
    detail: summary
  register: pci_summary

- name: Can this host pass devices through, and which devices can be reset?
  xen.pci.info:
    detail: readiness
  register: pci_ready

- name: The SR-IOV physical functions of a host, with how many virtual functions each has and can have
  ansible.builtin.debug:
    msg: "{{ pci.devices | selectattr('sriov') | map(attribute='sriov') | list }}"

- name: Stop when the host cannot pass devices through
  ansible.builtin.assert:
    that: pci_ready.readiness.passthrough_ready is not false
    fail_msg: "{{ pci_ready.readiness.reasons | join('; ') }}"
"""

RETURN = r"""
devices:
  description: The host's PCI functions.
  returned: always
  type: list
  elements: dict
  contains:
    assignable_now:
      description: Bound to pciback and attached to no guest (the same as C(assignable)).
      type: bool
    assignable_after_reboot:
      description:
        - Whether the boot setup hides the device from dom0 drivers at the next boot (C(xen-pciback.hide) in the
          dom0 arguments of GRUB's Xen entries, or C(options xen_pciback hide=) in modprobe.d), so it is
          assignable again after a reboot. Written by M(xen.pci.assignable) with O(xen.pci.assignable#module:persistent=true)
          or by hand.
        - A dom0 booted without GRUB reads only the modprobe.d list.
        - V(null) when a file of the boot setup cannot be read (RV(warnings_detail) says which).
      type: bool
      returned: with O(detail=full) and O(detail=readiness)
    physfn:
      description: For an SR-IOV virtual function, the address of its physical function (its C(physfn) link); else V(null).
      type: str
      returned: with O(detail=full) and O(detail=readiness)
      version_added: 0.2.0
    sriov:
      description:
        - For a device with the SR-IOV capability (a physical function), its state; else V(null).
        - C(totalvfs), C(numvfs), C(offset), C(stride) (decimal), C(vf_device) (the VFs' device id),
          C(drivers_autoprobe) (whether new VFs are bound to a driver) and C(vfs) (the VFs' addresses).
        - M(xen.pci.assignable)'s O(xen.pci.assignable#module:sriov) sets C(numvfs).
      type: dict
      returned: with O(detail=full) and O(detail=readiness)
      version_added: 0.2.0
  sample:
    - bdf: "0000:00:10.0"
      vendor: "0x1234"
      device: "0x11e8"
      class: "0x00ff00"
      driver: pciback
      assignable: true
      assigned_to: null
      assigned_to_name: null
      name: null
      pciback_slot: true
      remembered_driver: null
      assignable_now: true
      assignable_after_reboot: true
      reset_method: reset
      iommu_group: 4
      reset:
        usable: true
        method: reset
        methods: [flr, pm]
        sources: {do_flr: false, reset_file: true, reset_method: [flr, pm], config: {flr: true, af_flr: false, pm: true}}
        why: null
      assignability:
        header_type: 0
        kind: endpoint
        endpoint: true
        iommu_group: 4
        group_peers: []
        slot_peers: ["0000:00:10.1"]
        refused: null
readiness:
  description:
    - Whether this host can pass devices through at all, with O(detail=readiness).
    - C(passthrough_ready) is V(true), V(false) (C(reasons) say why) or V(null) when Xen could not be asked
      (C(hypervisor=none)). C(iommu) comes from Xen's physinfo (C(directio)), C(virt_caps) is what C(xl info)
      prints, C(pciback) is V(module), V(builtin) or V(absent). C(pcifront) and C(rmrr) (reserved memory regions
      shared between devices, shown only in Xen's console log) are reported as unknown rather than guessed.
  returned: with O(detail=readiness)
  type: dict
  sample:
    passthrough_ready: true
    reasons: []
    iommu: true
    virt_caps: pv hvm hvm_directio pv_directio hap shadow iommu_hap_pt_share gnttab-v1 gnttab-v2
    pciback: module
    pcifront: unknown (a guest kernel's driver, not visible from dom0)
    rmrr: unknown (Xen's console log, xl dmesg, is not read)
assignable:
  description: BDFs bound to pciback and not attached to any guest (what C(xl pci-assignable-list) prints).
  returned: always
  type: list
  elements: str
pciback_loaded:
  description: Whether the xen-pciback driver is loaded in dom0 (C(/sys/bus/pci/drivers/pciback) exists).
  returned: always
  type: bool
interrupted:
  description:
    - Requests a killed run left unfinished (their journal in xenstore); the next M(xen.pci.passthrough) or
      M(xen.pci.assignable) run finishes or rolls them back. This module only reports them.
  returned: always
  type: list
  elements: dict
domains:
  description: Every guest, by name, with its PCI backend (if any) and devices.
  returned: always
  type: dict
  sample:
    web1:
      domid: 3
      type: pv
      stubdom: null
      stubdom_of: null
      device_model_state: null
      backend: {path: /local/domain/0/backend/pci/3/0, state: 4, frontend_state: 4, num_devs: 1, error: null}
      devices: [{bdf: "0000:00:10.0", index: 0, state: 3, vdev: "0000:00:00.00"}]
warnings_detail:
  description:
    - Conditions worth knowing that did not fail the read, such as an unfinished request or a boot setup that
      cannot be read (then RV(devices[].assignable_after_reboot) is V(null)).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xen.pci.plugins.module_utils import _bytecode
from ansible_collections.xen.pci.plugins.module_utils._edge import finish
from ansible_collections.xen.pci.plugins.module_utils._host_options import HOST_ARGS


def main():
    argument_spec = dict(detail=dict(type="str", choices=["full", "summary", "readiness"], default="full"),
                         boot_root=dict(type="path", default="/"))
    argument_spec.update(HOST_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    # The runner, and all it imports, only now: through the bytecode cache.
    _bytecode.install()
    from ansible_collections.xen.pci.plugins.module_utils._runner_info import run_info  # pylint: disable=import-outside-toplevel
    finish(module, lambda: run_info(module.params))


if __name__ == "__main__":
    main()

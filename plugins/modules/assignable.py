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
    details: The diff shows, per device, its driver, pool membership, libxl name and remembered driver before and after.
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
        C(subsystem_vendor), C(subsystem_device), C(class), C(serial), C(path), C(label)). Without C(count) it must
        match exactly one device; C(count=N) takes N (devices already in the pool first, then by address);
        C(count=all) every match. See RV(selected).
    type: list
    elements: raw
    required: true
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
notes:
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
warnings_detail:
  description: Conditions that did not fail the task, such as a device left with no driver.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xen.pci.plugins.module_utils._edge import finish
from ansible_collections.xen.pci.plugins.module_utils._host_options import HOST_ARGS
from ansible_collections.xen.pci.plugins.module_utils._runner_assignable import run_assignable


def main():
    argument_spec = dict(
        devices=dict(type="list", elements="raw", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        take_from_driver=dict(type="bool", default=False),
        rebind=dict(type="bool", default=True),
        names=dict(type="str", choices=["keep", "exact"], default="keep"),
        reset=dict(type="str", choices=["strict", "best_effort", "none"], default="best_effort"),
    )
    argument_spec.update(HOST_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    finish(module, lambda: run_assignable(module.params, check_mode=module.check_mode))


if __name__ == "__main__":
    main()

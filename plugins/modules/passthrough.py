#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: passthrough
short_description: PCI devices passed through to Xen guests
version_added: 0.1.0
description:
  - Keeps the PCI devices of one or many Xen guests in the declared state, hot-plugging them
    with the toolstack's protocol (xenstore, C(xen-pciback)/C(xen-pcifront)) only where the
    live state differs from what is declared.
  - Follows the rule of Xen commit 73ee2795aaef, waiting for the guest's PCI backend only when the
    guest is PV, running and already has a backend. All devices of one guest go into one
    reconfigure cycle, and every attach and detach is confirmed.
  - Keeps libxl's bookkeeping, so C(xl pci-list), C(xl pci-detach) and C(xl pci-assignable-list)
    keep working beside this module.
  - Every input is checked before anything is written, in check mode too; all the problems found are
    listed in the failed result's C(problems), the first one in C(msg).
  - Each change is a step with its undo, recorded in a journal in xenstore while it runs. A failure undoes
    the task's own steps in reverse, within a share of O(timeout) kept for it, and reports what the host shows
    afterwards. A task killed part-way (an OOM kill, a dropped connection) is finished or rolled back by the
    next run of M(xen.pci.passthrough) or M(xen.pci.assignable) before anything else; see RV(recovered).
  - HVM guests get their devices through QMP C(device_add) to their QEMU, in dom0 or in a stub domain;
    with a stub domain the device is first hot-plugged into the stub domain with the PV rules.
    A HVM guest whose device model is not running yet is refused (give it the devices in its config instead).
author:
  - xen.pci contributors (!UNKNOWN)
extends_documentation_fragment:
  - xen.pci.host
  - xen.pci.host.ATTRIBUTES
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  platform:
    support: full
    platforms: posix
  diff_mode:
    support: full
  idempotent:
    description: Running it twice with the same arguments changes nothing the second time.
    support: full
options:
  domain:
    description:
      - The guest, by name or domain id. Use with O(devices).
    type: str
  devices:
    description:
      - PCI devices of O(domain), each an C(xl) PCI spec string (see the xl-pci-configuration man page),
        for example V(0000:03:00.0@4,permissive=1) or a dictionary with the same keys.
      - A device is named by C(bdf) or by C(name) (a name given with C(xl pci-assignable-add -n)).
      - A device may also be named by what it is, a selector (see the Device selectors guide), a dictionary
        with C(select), a mapping of any of C(id) (V(10de:20b0), vendor:device in hex), C(vendor), C(device),
        C(subsystem) (V(17aa:1234)), C(subsystem_vendor), C(subsystem_device), C(class) (V(0x02) base class,
        V(0x0200) class and subclass, V(0x020000) with the programming interface), C(serial) (the PCIe Device Serial
        Number as lspci shows it, V(00-1b-21-ff-ff-6c-3a-2e)), C(path) (where it sits, the root bus then slot.function
        per hop, V(pci0000:00/1c.0/00.0), stable when buses are renumbered), C(label) (the firmware's name, sysfs
        C(label)) and C(physfn) (the SR-IOV virtual functions of the physical function at that address); every key
        given must match. Quote the hex values, YAML reads an unquoted V(8086) as a decimal number.
      - C(count) says how many devices the selector stands for. Not given, it must match exactly one device;
        a number N takes N of the matches; V(all) takes every match. Too few matches (or several without C(count))
        fail the task before anything changes, listing the candidates.
      - The other keys of a selector (C(permissive), C(seize), C(msitranslate), C(power_mgmt), C(rdm_policy), and
        C(vslot) when it stands for one device) apply to each device it chooses. The choice is stable, the guest's own
        devices first, then those bound to C(pciback) and free, then the others, each in address order. A device given
        by another entry of the task is skipped by C(count=N) and refused (naming both entries) otherwise; a device of
        another guest is never taken by C(count=N). See RV(selected).
    type: list
    elements: raw
  assignments:
    description:
      - Many guests at once, a mapping of guest name or id to its device list (as O(devices)).
      - One task per host, however many guests. The host is read once and each guest is changed once.
    type: dict
  state:
    description:
      - V(present) attaches the listed devices and leaves the others alone.
      - V(absent) detaches the listed devices.
      - V(exact) attaches the listed devices and detaches every other device of the guest.
      - A listed device that is attached with other options (for example C(permissive)) is
        detached and attached again with V(present) and V(exact); the result lists it in RV(reattached).
    type: str
    choices: [present, absent, exact]
    default: present
  make_assignable:
    description:
      - Bind listed devices that no dom0 driver holds to C(pciback) before attaching them.
      - A device held by a dom0 driver is taken only when its spec says C(seize=1).
    type: bool
    default: false
  take_from_driver:
    description:
      - Addresses of listed devices that may be taken from the dom0 driver holding them, as if their specs
        said C(seize=1). Explicit consent, device by device; a device held by a dom0 driver and neither listed
        here nor seized by its spec is refused before anything changes.
    type: list
    elements: str
    default: []
  reset:
    description:
      - What to do with a device to attach that the host cannot reset (no C(do_flr) in pciback, no C(reset)
        file in sysfs); a device that is not reset keeps its state (DMA setup, data) from one guest to the next.
      - V(strict) refuses such a device before anything is written, naming what is missing.
      - V(best_effort) attaches it and says so in RV(warnings_detail).
      - V(none) does not look. Detaching still resets each device the way C(xl) does; a failed reset is
        listed in RV(reset_failed) with every policy.
      - Whatever the policy, a device that cannot be assigned on this host is refused before anything is
        written - a PCI bridge (not an endpoint), or any device when Xen runs without an IOMMU
        (no C(hvm_directio)/C(pv_directio) in C(xl info)'s C(virt_caps)).
      - A device a C(select) entry chooses is checked the same way, and the refusal names its address.
    type: str
    choices: [strict, best_effort, none]
    default: best_effort
    version_added: 0.2.0
  force:
    description:
      - Detach even when the guest never acknowledges the removal (the PCI backend is rebuilt
        without the device). The guest may be left with a device it thinks it still has.
    type: bool
    default: false
notes:
  - The devices must be assignable (bound to C(pciback)), see M(xen.pci.assignable), unless O(make_assignable) is set.
  - Assignments made here last until the guest is destroyed; use M(xen.pci.domain_config) to keep them in the guest's config file.
seealso:
  - module: xen.pci.assignable
  - module: xen.pci.info
"""

EXAMPLES = r"""
- name: Pass two devices through to a running PV guest
  xen.pci.passthrough:
    domain: web1
    devices:
      - "0000:03:00.0"
      - bdf: "0000:04:00.0"
        permissive: true

- name: Give every guest of a host exactly its declared devices, in one task
  xen.pci.passthrough:
    assignments:
      web1: ["03:00.0"]
      db1: ["04:00.0@5", "name=gpu0"]
    state: exact

- name: Pass every NIC of one model through to db1, taking them from their dom0 driver
  xen.pci.passthrough:
    domain: db1
    devices:
      - select: {id: "8086:100e"}
        count: all
        seize: true
    make_assignable: true

- name: One GPU each for two guests, from the host's identical GPUs (never the same one)
  xen.pci.passthrough:
    assignments:
      render1: [{select: {class: "0x0300", vendor: "10de"}, count: 1}]
      render2: [{select: {class: "0x0300", vendor: "10de"}, count: 1, permissive: true}]

- name: The NIC behind root port 00:1c.0, and the one with this serial number
  xen.pci.passthrough:
    domain: web1
    devices:
      - select: {path: "pci0000:00/1c.0/00.0"}
      - select: {serial: "00-1b-21-ff-ff-6c-3a-2e"}
        vslot: 5

- name: Attach only devices the host can reset between guests
  xen.pci.passthrough:
    domain: web1
    devices: ["0000:03:00.0"]
    reset: strict

- name: Take a device away from a guest that does not answer
  xen.pci.passthrough:
    domain: 7
    devices: ["0000:03:00.0"]
    state: absent
    force: true
"""

RETURN = r"""
actions:
  description: Steps taken, in order (in check mode, the steps that would be taken).
  returned: always
  type: list
  elements: str
  sample: ["attach 0000:03:00.0 to web1 (domid 3)", "appended 0000:03:00.0 to the PCI backend of web1 (domid 3) at index 1 in one Reconfiguring cycle"]
domains:
  description: The PCI devices of each guest named in the task, after the task (in check mode, as they are).
  returned: always
  type: dict
  sample:
    web1:
      domid: 3
      backend_state: 4
      devices:
        - {bdf: "0000:03:00.0", vdev: "0000:00:01.00", state: 3, index: 1, vdevfn: null, name: null,
           opts: {permissive: false, msitranslate: false, power_mgmt: false, rdm_policy: strict}}
reattached:
  description: Devices attached with other options than declared, re-attached to apply them.
  returned: always
  type: list
  elements: dict
  sample: [{"domain": "web1 (domid 3)", "bdf": "0000:03:00.0", "differs": {"permissive": [false, true]}}]
resolved:
  description:
    - What the declaration resolved to on this host, per guest (names through libxl's device names,
      C(*) specs through the functions present), with the driver holding each device when the task started.
  returned: always
  type: dict
  sample: {"web1": [{"bdf": "0000:03:00.0", "spec": "0000:03:00.0", "seize": false, "driver": "pciback"}]}
selected:
  description:
    - What each selector entry chose on this host, per guest (by its name) - the entry's index in the guest's list,
      its C(select), C(count) and the addresses chosen, in the order of choice.
  returned: always
  type: dict
  sample: {"db1": [{"entry": 0, "select": {"id": "8086:100e"}, "count": "all", "bdfs": ["0000:01:00.0", "0000:00:19.0"]}]}
declared:
  description: The declaration as given, per guest (by its name), with the key it was given under and its specs.
  returned: always
  type: dict
  sample: {"web1": {"key": "web1", "specs": ["0000:03:00.0", {"bdf": "0000:04:00.0", "permissive": true}]}}
recovered:
  description:
    - Requests a killed run had left unfinished (their journal in xenstore), finished or rolled back by this
      task before it did anything else, with what was done.
  returned: always
  type: list
  elements: dict
  sample: [{"journal": "/tool/xen-pci/journal/dom-3", "op": "attach", "domain": "web1 (domid 3)", "outcome": "rolled back"}]
interrupted:
  description: Unfinished requests still found after the task (another run holds their lock).
  returned: always
  type: list
  elements: dict
left:
  description:
    - What the task could not finish or take back (nodes, devices, the journal kept for the next run).
      Empty on success; on failure it is also in the failed result, with C(changed) saying whether
      the host differs from before the task.
  returned: always
  type: list
  elements: str
devices:
  description: Per attached device, where the guest sees it (backend index and C(vdev), or QEMU's slot).
  returned: when devices were attached
  type: dict
  sample: {"0000:03:00.0": {"index": 1, "state": 3, "vdev": "0000:00:01.00"}}
waited:
  description: Seconds spent waiting for guests and kernels to answer.
  returned: when something was changed
  type: float
reset_failed:
  description:
    - Detached devices whose reset failed or that have no reset, each with the error; the devices are
      detached, but they may keep the state the guest left in them.
  returned: when something was changed
  type: list
  elements: dict
  sample: [{"bdf": "0000:03:00.0", "error": "0000:03:00.0: the kernel offers no reset for this device", "errno": "ENOENT"}]
warnings_detail:
  description:
    - Conditions that did not fail the task, such as a guest that is not running yet, or a device attached
      without a reset under O(reset=best_effort).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xen.pci.plugins.module_utils import _bytecode
from ansible_collections.xen.pci.plugins.module_utils._edge import finish
from ansible_collections.xen.pci.plugins.module_utils._host_options import HOST_ARGS


def main():
    argument_spec = dict(
        domain=dict(type="str"),
        devices=dict(type="list", elements="raw"),
        assignments=dict(type="dict"),
        state=dict(type="str", choices=["present", "absent", "exact"], default="present"),
        make_assignable=dict(type="bool", default=False),
        take_from_driver=dict(type="list", elements="str", default=[]),
        force=dict(type="bool", default=False),
        reset=dict(type="str", choices=["strict", "best_effort", "none"], default="best_effort"),
    )
    argument_spec.update(HOST_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=[("domain", "assignments"), ("devices", "assignments")],
        required_one_of=[("domain", "assignments")],
        required_together=[("domain", "devices")],
        supports_check_mode=True,
    )
    # The runner, and all it imports, only now: through the bytecode cache.
    _bytecode.install()
    from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough  # pylint: disable=import-outside-toplevel
    params = module.params
    desired = params["assignments"] if params["assignments"] is not None else {params["domain"]: params["devices"]}
    finish(module, lambda: run_passthrough(params, desired, check_mode=module.check_mode))


if __name__ == "__main__":
    main()

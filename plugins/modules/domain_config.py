#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: domain_config
short_description: PCI devices of a Xen guest's xl config file
version_added: 0.1.0
description:
  - Keeps the C(pci = [...]) list of an xl domain config file (see the xl.cfg(5) manual page) in step with the declared
    devices, so that the guest gets them again when it is next created. Optionally keeps the settings that go
    with it, C(passthrough), C(e820_host) and the C(pci_*) defaults.
  - Everything else in the file is kept byte for byte (comments, blank lines, order, other settings, quoting).
    Only a setting that differs is rewritten, and new settings are added at the end of the file.
  - Devices are compared by address (or name) and their options as xl reads them, the file's C(pci_*)
    defaults included, so a device written another way (V(03:00.0) for V(0000:03:00.0)) is not a change.
  - A rewritten C(pci) list keeps its layout (one line, or one device per line with the comments of the devices
    that stay); devices that stay keep their text, new and changed ones are written in canonical form.
  - The file is written atomically (a temporary file renamed over it).
author:
  - xen.pci contributors (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - action_common_attributes.files
  - ansible.builtin.files
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The diff is the file's text before and after.
  idempotent:
    description: Running the task again with the same options changes nothing and reports no change.
    support: full
  safe_file_operations:
    support: full
  vault:
    support: none
  platform:
    platforms: posix
options:
  path:
    description:
      - The xl domain config file, for example C(/etc/xen/web1.cfg).
      - Exactly one of O(path) and O(configs).
    type: path
  configs:
    description:
      - Several config files in one task, each a mapping with its O(path) and any of O(devices), O(state),
        O(passthrough), O(e820_host), the C(pci_*) options, O(backup) and O(create); what an entry does not give
        comes from the task's own options.
      - Every file is read and edited first; a file that cannot be (unreadable, a bad device spec) fails the task
        before any file is written. The file attributes (O(mode), O(owner)...) apply to every file.
    type: list
    elements: dict
    version_added: 0.2.0
  devices:
    description:
      - PCI devices, each an C(xl) PCI spec string (see the xl-pci-configuration(5) manual page, for example
        V(0000:03:00.0@4,permissive=1)) or a dictionary with the same keys, as in M(xen.pci.passthrough).
      - When not given, the C(pci) list is left as it is (only the other options are applied).
      - A device may also be a selector, a dictionary with C(select) and C(count) as in M(xen.pci.passthrough), resolved on
        this host's sysfs (O(sysfs_root)) before the file is edited. The file gets the addresses chosen, without
        a comment (the selector lives in the playbook; the result's RV(selected) says what it chose). Devices the file
        lists already are chosen first, and, with O(configs), a device one file lists is never chosen for another.
    type: list
    elements: raw
  sysfs_root:
    description:
      - Where this host's sysfs is mounted, read only to resolve selectors in O(devices).
    type: path
    default: /sys
    version_added: 0.2.0
  state:
    description:
      - V(present) adds the listed devices that are missing and rewrites those listed with other options.
      - V(absent) removes the listed devices (whatever their options).
      - V(exact) makes the list hold the listed devices and no others; devices already listed keep their place.
    type: str
    choices: [present, absent, exact]
    default: present
  passthrough:
    description:
      - The C(passthrough) setting (how the guest's IOMMU page tables are set up). Left alone when not given.
    type: str
    choices: [enabled, disabled, sync_pt, share_pt]
  e820_host:
    description:
      - The C(e820_host) setting (PV guests see the host's memory map). Left alone when not given.
    type: bool
  pci_permissive:
    description:
      - The C(pci_permissive) setting, the default of C(permissive) for the devices of the list. Left alone when not given.
    type: bool
  pci_msitranslate:
    description:
      - The C(pci_msitranslate) setting, the default of C(msitranslate). Left alone when not given.
    type: bool
  pci_power_mgmt:
    description:
      - The C(pci_power_mgmt) setting, the default of C(power_mgmt). Left alone when not given.
    type: bool
  pci_seize:
    description:
      - The C(pci_seize) setting, the default of C(seize). Left alone when not given.
    type: bool
  backup:
    description:
      - Keep a copy of the file, with a time stamp in its name, before changing it.
    type: bool
    default: false
  create:
    description:
      - Create the file when it does not exist. Without it a missing file fails the task.
    type: bool
    default: false
notes:
  - A C(pci) list extended with C(pci += [...]) is refused, with the line it is on; merge it into one list first.
  - Files xl cannot read (for example with CRLF line ends) are refused, naming the line and column.
  - This changes what the guest gets when it is next created; use M(xen.pci.passthrough) for a running guest.
  - The module keeps the compiled code of the collection's module_utils in C(~/.cache/xen-pci/bytecode/) of the user
    it runs as (in check mode too), and uses it only while it matches the shipped source; set
    C(XEN_PCI_BYTECODE_CACHE=off) in the task's C(environment) to keep nothing, or an absolute path to keep it there.
seealso:
  - module: xen.pci.passthrough
  - name: xl.cfg(5)
    description: The syntax of xl domain config files.
    link: https://xenbits.xen.org/docs/unstable/man/xl.cfg.5.html
"""

EXAMPLES = r"""
- name: Give web1 its network card at every boot
  xen.pci.domain_config:
    path: /etc/xen/web1.cfg
    devices:
      - "0000:03:00.0"
    backup: true

- name: Exactly these devices, permissive by default, passthrough enabled
  xen.pci.domain_config:
    path: /etc/xen/db1.cfg
    devices:
      - "0000:04:00.0@5"
      - bdf: "0000:05:00.0"
        rdm_policy: relaxed
    state: exact
    pci_permissive: true
    passthrough: enabled

- name: Take a device out of a guest's config
  xen.pci.domain_config:
    path: /etc/xen/web1.cfg
    devices: ["0000:03:00.0"]
    state: absent

- name: Every NIC of one model in db1's config, whatever their addresses on this host
  xen.pci.domain_config:
    path: /etc/xen/db1.cfg
    devices:
      - select: {id: "8086:100e"}
        count: all
        permissive: true
    state: exact

- name: Every guest's config of a host in one task
  xen.pci.domain_config:
    configs:
      - {path: /etc/xen/web1.cfg, devices: ["0000:03:00.0"]}
      - {path: /etc/xen/db1.cfg, devices: ["0000:04:00.0@5"], pci_permissive: true}
    state: exact
    backup: true
"""

RETURN = r"""
results:
  description: With O(configs), the result of each file (as the keys below give it for one file), in order.
  returned: when O(configs) is given
  type: list
  elements: dict
actions:
  description: Changes made (in check mode, that would be made), in order.
  returned: always
  type: list
  elements: str
  sample: ["add 0000:03:00.0 to pci", "change pci_permissive from 0 to 1 (line 7)"]
devices:
  description: The C(pci) list of the file after the task (in check mode, as it would be), as canonical spec strings.
  returned: always
  type: list
  elements: str
  sample: ["0000:03:00.0", "0000:04:00.0@05,permissive=1"]
settings:
  description: The settings among O(passthrough), O(e820_host) and the C(pci_*) options that the task set, with their values.
  returned: always
  type: dict
  sample: {pci_permissive: true}
selected:
  description: What each selector of the file's O(devices) chose - its index, C(select), C(count) and the addresses.
  returned: always
  type: list
  elements: dict
  sample: [{"entry": 0, "select": {"id": "8086:100e"}, "count": "all", "bdfs": ["0000:01:00.0", "0000:00:1d.0"]}]
path:
  description: The config file.
  returned: when O(path) is given
  type: str
  sample: /etc/xen/web1.cfg
backup_file:
  description: The copy made before the change.
  returned: changed and O(backup) is true
  type: str
  sample: /etc/xen/web1.cfg.2301.2026-01-02@10:11:12~
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xen.pci.plugins.module_utils import _bytecode
from ansible_collections.xen.pci.plugins.module_utils._edge import finish


def main():
    argument_spec = dict(
        path=dict(type="path"),
        configs=dict(type="list", elements="dict"),
        devices=dict(type="list", elements="raw"),
        state=dict(type="str", choices=["present", "absent", "exact"], default="present"),
        passthrough=dict(type="str", choices=["enabled", "disabled", "sync_pt", "share_pt"]),
        e820_host=dict(type="bool"),
        pci_permissive=dict(type="bool"),
        pci_msitranslate=dict(type="bool"),
        pci_power_mgmt=dict(type="bool"),
        pci_seize=dict(type="bool"),
        backup=dict(type="bool", default=False),
        create=dict(type="bool", default=False),
        sysfs_root=dict(type="path", default="/sys"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, add_file_common_args=True,
                           required_one_of=[("path", "configs")], mutually_exclusive=[("path", "configs")])
    # The runner, and all it imports, only now: through the bytecode cache.
    _bytecode.install()
    from ansible_collections.xen.pci.plugins.module_utils._runner_domain_config import run_domain_configs  # pylint: disable=import-outside-toplevel

    def file_attributes(params, result):
        if os.path.exists(params["path"]):
            # owner, group, mode, SELinux context of the file options (in check mode, only reported)
            file_args = module.load_file_common_arguments(module.params, path=params["path"])
            result["changed"] = module.set_fs_attributes_if_different(file_args, result["changed"])

    def run():
        result = run_domain_configs(module.params, check_mode=module.check_mode, atomic_move=module.atomic_move,
                                    backup_local=module.backup_local, file_attributes=file_attributes)
        if "results" in result:
            result["changed"] = any(r["changed"] for r in result["results"])
        return result

    finish(module, run, needs_pyxs=False)


if __name__ == "__main__":
    main()

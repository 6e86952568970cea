#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: plan
short_description: What a PCI passthrough declaration would change on a Xen host, changing nothing
version_added: 0.2.0
description:
  - Answers, in one module run, whether a host needs a change for its declaration, and which. It asks the same
    question as M(xen.pci.passthrough) in check mode (the same read of the host, the same refusal rules, the same plan)
    and, with O(config_dir), the question M(xen.pci.domain_config) would answer in check mode for the xl config file
    of each declared guest.
  - Never changes anything, in check mode or not; RV(changes) and RV(why) say what a real run would do.
  - A declaration that M(xen.pci.passthrough) would refuse fails this module with the same problems, listed in the
    failed result's C(problems).
  - Made for fleet rollouts, where most hosts need nothing - one module start per host decides whether the host
    goes through a change at all. The P(xen.pci.passthrough#role) role's C(plan) entry point is one call of it.
author:
  - xen.pci contributors (!UNKNOWN)
extends_documentation_fragment:
  - xen.pci.host
  - xen.pci.host.ATTRIBUTES
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: It changes nothing in either mode.
  platform:
    support: full
    platforms: posix
  diff_mode:
    support: none
  idempotent:
    description: It changes nothing.
    support: full
options:
  assignments:
    description:
      - The declaration, a mapping of guest name or id to its device list, as O(xen.pci.passthrough#module:assignments).
    type: dict
    required: true
  state:
    description: As O(xen.pci.passthrough#module:state); the config files are compared with the same state.
    type: str
    choices: [present, absent, exact]
    default: present
  make_assignable:
    description:
      - As O(xen.pci.passthrough#module:make_assignable). Also, each declared device not bound to C(pciback) yet is
        a change (RV(why) says V(bind to pciback), the work of M(xen.pci.assignable)).
    type: bool
    default: false
  take_from_driver:
    description: As O(xen.pci.passthrough#module:take_from_driver).
    type: list
    elements: str
    default: []
  force:
    description: As O(xen.pci.passthrough#module:force).
    type: bool
    default: false
  reset:
    description: As O(xen.pci.passthrough#module:reset).
    type: str
    choices: [strict, best_effort, none]
    default: best_effort
  config_dir:
    description:
      - Compare each declared guest's xl config file with the declaration, the file being
        C(<config_dir>/<guest name>.cfg) unless O(config_files) names it.
      - Not given, only the files O(config_files) names are compared; with neither, no config file is read.
    type: path
  config_files:
    description:
      - Guest name to the path of its xl config file, for the guests whose file is not in O(config_dir).
        Guests not declared in O(assignments) are ignored.
      - The files are compared with the state of O(state), each with the guest's declared devices (a selector as
        the addresses it chooses on this host).
    type: dict
    default: {}
  config_create:
    description: A missing config file is a change (it would be created), as O(xen.pci.domain_config#module:create).
    type: bool
    default: false
  require_iommu:
    description:
      - Fail unless every declared device has an IOMMU group in dom0's sysfs. Under Xen, dom0 often shows none
        (Xen owns the IOMMU), so this is off by default.
    type: bool
    default: false
  sriov:
    description:
      - SR-IOV physical functions and their number of virtual functions, the entries of
        M(xen.pci.assignable)'s O(xen.pci.assignable#module:sriov) (C(pf) or C(select) and C(count), C(numvfs), C(pool)),
        asked in check mode first.
      - When VFs are still to be created (or, with C(pool), put in the pool), RV(changes) is V(true) and RV(why) lists
        those steps, prefixed V(sriov:); O(assignments) is then not checked, since what it names may be one of those
        VFs. Otherwise the plan goes on as without it.
      - The SR-IOV refusals (a count over C(sriov_totalvfs), VFs in the pool that a change would remove...) fail the
        plan as the assignments' do.
    type: list
    elements: dict
    default: []
    version_added: 0.2.0
notes:
  - It reads the config files on the managed host, as M(xen.pci.domain_config) does.
seealso:
  - module: xen.pci.passthrough
  - module: xen.pci.domain_config
"""

EXAMPLES = r"""
- name: Does this host need a change for its declaration?
  xen.pci.plan:
    assignments:
      web1: ["0000:03:00.0"]
      db1: [{select: {id: "8086:100e"}, count: all}]
    state: exact
    config_dir: /etc/xen
  register: plan

- name: Say why
  ansible.builtin.debug:
    var: plan.why
  when: plan.changes

- name: Change only the hosts that need it
  xen.pci.passthrough:
    assignments:
      web1: ["0000:03:00.0"]
      db1: [{select: {id: "8086:100e"}, count: all}]
    state: exact
  when: plan.changes
"""

RETURN = r"""
changes:
  description: Whether a real run would change the host (its guests' devices, a killed request to finish, a device to
    bind to C(pciback) with O(make_assignable), or a config file).
  returned: always
  type: bool
  sample: true
why:
  description: What a real run would do, one line each; empty when nothing.
  returned: always
  type: list
  elements: str
  sample: ["attach 0000:03:00.0 to web1 (domid 3)", "config file: /etc/xen/web1.cfg"]
sriov:
  description: With O(sriov), each physical function as M(xen.pci.assignable) in check mode predicts it
    (see RV(xen.pci.assignable#module:sriov)).
  returned: when O(sriov) is given
  type: list
  elements: dict
configs:
  description: Each declared guest's config file, when O(config_dir) is given - its path, whether it would change,
    the edits and the device list it would have.
  returned: always
  type: list
  elements: dict
  sample: [{"path": "/etc/xen/web1.cfg", "changed": true, "actions": ["add 0000:03:00.0"], "devices": ["0000:03:00.0"]}]
actions:
  description: The hotplug steps a real run of M(xen.pci.passthrough) would take.
  returned: always
  type: list
  elements: str
domains:
  description: The PCI devices of each declared guest, as they are (see M(xen.pci.passthrough)).
  returned: always
  type: dict
reattached:
  description: Devices attached with other options than declared, which a real run would attach again.
  returned: always
  type: list
  elements: dict
resolved:
  description: What the declaration resolves to on this host, per guest, with the driver holding each device.
  returned: always
  type: dict
  sample: {"web1": [{"bdf": "0000:03:00.0", "spec": "0000:03:00.0", "seize": false, "driver": "pciback"}]}
selected:
  description: What each selector entry chooses on this host, per guest.
  returned: always
  type: dict
declared:
  description: The declaration as given, per guest, with the key it was given under and its specs.
  returned: always
  type: dict
interrupted:
  description: Requests a killed run left unfinished; a real run finishes them first.
  returned: always
  type: list
  elements: dict
warnings_detail:
  description: Conditions that would not fail a real run, such as a device attached without a reset.
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
        assignments=dict(type="dict", required=True),
        state=dict(type="str", choices=["present", "absent", "exact"], default="present"),
        make_assignable=dict(type="bool", default=False),
        take_from_driver=dict(type="list", elements="str", default=[]),
        force=dict(type="bool", default=False),
        reset=dict(type="str", choices=["strict", "best_effort", "none"], default="best_effort"),
        config_dir=dict(type="path"),
        config_files=dict(type="dict", default={}),
        config_create=dict(type="bool", default=False),
        require_iommu=dict(type="bool", default=False),
        sriov=dict(type="list", elements="dict", default=[]),
    )
    argument_spec.update(HOST_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    # The runner, and all it imports, only now: through the bytecode cache.
    _bytecode.install()
    from ansible_collections.xen.pci.plugins.module_utils._runner_plan import run_plan  # pylint: disable=import-outside-toplevel
    params = dict(module.params, domain=None, devices=None)
    finish(module, lambda: run_plan(params, params["assignments"]))


if __name__ == "__main__":
    main()

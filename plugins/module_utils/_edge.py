# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place where the core meets AnsibleModule: run a runner, report.

Everything else in module_utils stays free of Ansible; the modules call
``finish(module, lambda: runner(...))``.
"""

from __future__ import annotations

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.xen.pci.plugins.module_utils._errors import XenPciError


def finish(module, run, needs_pyxs=True):
    """Call ``run()`` and exit the module with its result, or fail with the
    core's error (message plus its machine-readable details)."""
    if needs_pyxs:
        # Only the modules that talk to xenstored load the client (and pyxs).
        from ansible_collections.xen.pci.plugins.module_utils import _xenstore  # pylint: disable=import-outside-toplevel
        if not _xenstore.HAS_PYXS:
            module.fail_json(msg=missing_required_lib("pyxs"), exception=_xenstore.PYXS_IMPORT_ERROR)
    try:
        result = run()
    except XenPciError as exc:
        module.fail_json(**exc.to_dict())
    if not module._diff:  # pylint: disable=protected-access
        result.pop("diff", None)
    for text in result.get("warnings_detail", []):
        module.warn(text)
    module.exit_json(**result)

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host connection options every module shares (doc_fragments/host.py)
and the Platform built from them."""

from __future__ import annotations

from ansible_collections.xen.pci.plugins.module_utils._budget import check_timeout
from ansible_collections.xen.pci.plugins.module_utils._errors import SpecError

# The options of doc_fragments/host.py, as an argument_spec fragment.
HOST_ARGS = dict(
    xenstore_path=dict(type="path"),
    xenbus=dict(type="bool", default=False),
    sysfs_root=dict(type="path", default="/sys"),
    hypervisor=dict(type="str", default="libxenctrl"),
    userdata_dir=dict(type="path", default="/var/lib/xen"),
    qmp_dir=dict(type="path", default="/var/run/xen"),
    timeout=dict(type="float", default=60.0),
)


def host_defaults(**overrides):
    """HOST_ARGS' defaults, for callers that are not modules (tests, benchmarks)."""
    params = {k: v.get("default") for k, v in HOST_ARGS.items()}
    params.update(overrides)
    return params


def platform_from(params):
    # Imported here: a module reads HOST_ARGS before it installs the bytecode
    # cache, and the platform (sysfs, xenstore) is most of what it imports.
    from ansible_collections.xen.pci.plugins.module_utils._platform import connect  # pylint: disable=import-outside-toplevel

    problem = check_timeout(params.get("timeout"))
    if problem:
        raise SpecError(problem, input="timeout")
    return connect(xenstore_path=params["xenstore_path"], xenbus=params["xenbus"], sysfs_root=params["sysfs_root"],
                   hypervisor=params["hypervisor"], userdata_dir=params["userdata_dir"], timeout=params["timeout"],
                   qmp_dir=params["qmp_dir"])

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runner of xen.pci.plan: what a host's declaration would change, asked
in one module run and changing nothing.

It is the core in check mode (the same read, refusal rules and plan as a
real request) followed, when config files are asked about, by the config
files' edits made in memory: a fleet rollout pays one module start per host
to learn whether the host needs a change at all.

Kept free of Ansible imports, so tests and benchmarks drive it directly.
"""

from __future__ import annotations

import os

from ansible_collections.xen.pci.plugins.module_utils._errors import SpecError
from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import run_passthrough

# What a caller gets of the core's check-mode result.
CORE_KEYS = ("actions", "reattached", "domains", "interrupted", "resolved", "selected", "declared", "warnings_detail")


def config_file_problems(params):
    """``config_files`` maps a guest name to a path: the guests whose value is not one."""
    files = params.get("config_files") or {}
    if not isinstance(files, dict):
        raise SpecError("config_files maps a guest name to the path of its xl config file, got %s"
                        % type(files).__name__, input="config_files")
    bad = sorted(str(name) for name, path in files.items() if not isinstance(path, str) or not path.strip())
    if bad:
        raise SpecError("config_files maps a guest name to the path of its xl config file: not a path for %s"
                        % ", ".join(bad), input="config_files", domain=bad[0])


def config_entries(params, core):
    """One domain_config entry per declared guest: its file, and its specs with
    each selector replaced by the devices the core chose, so the file names
    what the hotplug attaches."""
    files = params.get("config_files") or {}
    entries = []
    for name in sorted(core["declared"]):
        if name not in files and not params.get("config_dir"):
            continue        # without config_dir, only the files named are compared
        specs = core["declared"][name]["specs"]
        chosen = core["selected"].get(name)
        if chosen:
            # Imported here: only a declaration with selectors needs it.
            from ansible_collections.xen.pci.plugins.module_utils._selectors import expand_selected  # pylint: disable=import-outside-toplevel
            specs = expand_selected(specs, chosen)
        path = files.get(name) or os.path.join(params["config_dir"], "%s.cfg" % name)
        entries.append({"path": path, "devices": specs})
    return entries


def iommu_problems(sysfs, core):
    """The resolved devices without an IOMMU group (require_iommu)."""
    missing = sorted({item["bdf"] for items in core["resolved"].values() for item in items
                      if sysfs.iommu_group(item["bdf"]) is None})
    if missing:
        raise SpecError("no IOMMU group for %s (require_iommu is set; under Xen, dom0 often shows none: Xen owns the "
                        "IOMMU)" % ", ".join(missing), input="require_iommu", device=missing[0])


def why(params, core, configs):
    """Each thing the main run would do, in words; empty when nothing."""
    out = list(core["actions"])
    out += ["finish the interrupted request of %s" % j["journal"] for j in core["interrupted"]]
    if params.get("make_assignable"):
        unbound = [item["bdf"] for items in core["resolved"].values() for item in items
                   if item.get("driver") != "pciback"]
        out += ["bind to pciback: %s" % bdf for bdf in unbound]
    out += ["config file: %s" % r["path"] for r in configs if r["changed"]]
    return out


def sriov_plan(params, platform=None):
    """xen.pci.assignable's SR-IOV entries in check mode: (why, its sriov
    result). Its refusals are the plan's."""
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.xen.pci.plugins.module_utils._runner_assignable import run_assignable
    # The host options are the plan's own; the pool's are assignable's defaults.
    checked = run_assignable(dict(params, devices=None, state="present", reset=params.get("reset", "best_effort"),
                                  take_from_driver=False, rebind=True, names="keep", persistent=False),
                             check_mode=True, platform=platform)
    return ["sriov: %s" % action for action in checked["actions"]], checked["sriov"]


def run_plan(params, desired, platform=None):
    """The plan of ``desired`` on this host; returns the module result
    (``changed`` is always false: nothing is changed).

    With ``sriov``, VFs still to be created (or pooled) are a change by
    themselves, and the declaration is not checked: what it names may be
    one of those VFs, which the host does not show yet."""
    config_file_problems(params)
    if params.get("sriov"):
        pending, sriov = sriov_plan(params, platform)
        if pending:
            result = {key: [] for key in CORE_KEYS}
            result.update(domains={}, resolved={}, selected={}, declared={}, changed=False, changes=True, why=pending,
                          configs=[], sriov=sriov)
            return result
    core = run_passthrough(params, desired, check_mode=True, platform=platform)
    if params.get("require_iommu"):
        # pylint: disable-next=import-outside-toplevel
        from ansible_collections.xen.pci.plugins.module_utils._sysfs import Sysfs
        iommu_problems(platform.sysfs if platform is not None else Sysfs(params["sysfs_root"]), core)
    configs = []
    entries = config_entries(params, core)
    if entries:
        # pylint: disable-next=import-outside-toplevel
        from ansible_collections.xen.pci.plugins.module_utils._runner_domain_config import run_domain_configs
        checked = run_domain_configs({"configs": entries, "state": params["state"],
                                      "create": params.get("config_create", False), "backup": False,
                                      "sysfs_root": params.get("sysfs_root")}, check_mode=True)
        configs = [{k: r[k] for k in ("path", "changed", "actions", "devices")} for r in checked["results"]]
    reasons = why(params, core, configs)
    result = {key: core[key] for key in CORE_KEYS}
    result.update(changed=False, changes=bool(reasons), why=reasons, configs=configs)
    if params.get("sriov"):
        result["sriov"] = sriov
    return result

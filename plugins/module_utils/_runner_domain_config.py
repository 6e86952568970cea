# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runner of xen.pci.domain_config: read the file, edit, write atomically.

The module hands in its ``atomic_move`` and ``backup_local`` so the file is
written the Ansible way (ownership, mode and SELinux context kept); the
defaults here do the same job without Ansible, for tests and scripts.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile

from ansible_collections.xen.pci.plugins.module_utils._errors import SpecError, XenPciError
from ansible_collections.xen.pci.plugins.module_utils._xlconfig import GLOBAL_ORDER, XlConfig, edit_pci_config, pci_addresses

# xl reads its config as bytes; surrogateescape lets any byte through unchanged.
_ENCODING = ("utf-8", "surrogateescape")


def read_config(path, create=False):
    """The text of ``path``; '' for a missing file when ``create``, else an error."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        if create:
            return None
        raise SpecError("%s does not exist; set create to start a new domain config there" % path, path=path) from None
    except OSError as exc:
        raise XenPciError("cannot read %s: %s" % (path, exc.strerror or exc), path=path) from None
    return data.decode(*_ENCODING)


def default_backup(path):
    """A copy next to ``path``, named as Ansible's backup_local names it."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")
    dest = "%s.%d.%s~" % (path, os.getpid(), stamp)
    shutil.copy2(path, dest)
    return dest


def default_atomic_move(src, dest):
    """Rename ``src`` over ``dest``, keeping dest's mode and owner (or the umask's mode for a new file)."""
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(src, 0o666 & ~umask)
    else:
        os.chmod(src, st.st_mode & 0o7777)
        try:
            os.chown(src, st.st_uid, st.st_gid)
        except PermissionError:
            pass    # not root: the file stays ours, as with any editor
    os.replace(src, dest)


def write_config(path, text, atomic_move=None):
    """Write ``text`` to a temporary file beside ``path``, then move it over."""
    atomic_move = atomic_move or default_atomic_move
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path), suffix=".tmp")
    except OSError as exc:
        raise XenPciError("cannot write %s: %s" % (path, exc.strerror or exc), path=path) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode(*_ENCODING))
            handle.flush()
            os.fsync(handle.fileno())
        atomic_move(tmp, path)
    except OSError as exc:
        raise XenPciError("cannot write %s: %s" % (path, exc.strerror or exc), path=path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# Selectors are resolved into addresses before the edit; the file holds the
# addresses only (the selector is in the playbook and the task's result).
SELECTED = "_selected"
PER_FILE = ("path", "devices", "state", "passthrough", "e820_host", "pci_permissive", "pci_msitranslate",
            "pci_power_mgmt", "pci_seize", "backup", "create")


def plan_domain_config(params):
    """The edit of ``params['path']`` (read and edited in memory, nothing
    written): (result, the new text or None when unchanged, whether it exists)."""
    path = params["path"]
    before = read_config(path, params.get("create", False))
    exists = before is not None
    settings = {key: params[key] for key in GLOBAL_ORDER if params.get(key) is not None}
    edit = edit_pci_config(before or "", params.get("devices"), params.get("state", "present"), settings, source=path)
    changed = edit.changed or not exists
    actions = list(edit.actions)
    if not exists:
        actions.insert(0, "create %s" % path)
    result = {
        "changed": changed,
        "path": path,
        "actions": actions,
        "devices": edit.devices,
        "settings": edit.settings,
        "selected": params.get(SELECTED, []),
        "diff": {"before": before or "", "after": edit.text, "before_header": path if exists else "/dev/null",
                 "after_header": path},
    }
    return result, (edit.text if changed else None), exists


def _apply(params, planned, atomic_move, backup_local):
    result, text, exists = planned
    if text is None:
        return
    if params.get("backup") and exists:
        result["backup_file"] = (backup_local or default_backup)(result["path"])
    write_config(result["path"], text, atomic_move)


def run_domain_config(params, check_mode=False, atomic_move=None, backup_local=None):
    """Edit the config at ``params['path']``; returns the module result."""
    planned = plan_domain_config(params)
    if not check_mode:
        _apply(params, planned, atomic_move, backup_local)
    return planned[0]


def config_params(params):
    """Each file's own parameters: ``configs`` entries over the task's defaults."""
    configs = params.get("configs")
    if configs is None:
        return [params]
    if not isinstance(configs, list) or not configs:
        raise SpecError("configs must be a non-empty list of {path, devices, ...} mappings", input="configs")
    out, seen = [], {}
    for index, entry in enumerate(configs):
        where = "configs[%d]" % index
        if not isinstance(entry, dict):
            raise SpecError("%s: expected a mapping with path and devices, got %s %r" % (where, type(entry).__name__, entry),
                            input=where)
        unknown = sorted(str(k) for k in entry if k not in PER_FILE)
        if unknown:
            raise SpecError("%s: unknown key(s) %s (known: %s)" % (where, ", ".join(unknown), ", ".join(PER_FILE)),
                            input=where)
        if not entry.get("path"):
            raise SpecError("%s: path is required" % where, input=where)
        merged = dict(params)
        merged.update({k: v for k, v in entry.items() if v is not None})
        merged["path"] = os.path.abspath(os.path.expanduser(str(merged["path"])))
        if merged["path"] in seen:
            raise SpecError("%s: %s is also configs[%d]" % (where, merged["path"], seen[merged["path"]]), input=where)
        seen[merged["path"]] = index
        out.append(merged)
    return out


def select_in_configs(entries, many):
    """Resolve the selectors of every file at once on this host's sysfs, so
    that no device goes to two files; a device a file lists already is
    chosen for it first, one another file lists is left to that one."""
    # Imported here: a task with plain addresses edits files and needs nothing of the host.
    # pylint: disable=import-outside-toplevel
    from ansible_collections.xen.pci.plugins.module_utils._validate import has_selectors, raise_problems, select_devices
    desired = {e["path"]: e["devices"] for e in entries if isinstance(e.get("devices"), list)}
    if not has_selectors(desired):
        return
    from ansible_collections.xen.pci.plugins.module_utils._sysfs import Sysfs
    listed = {}
    for each in entries:
        try:
            text = read_config(each["path"], each.get("create", False))
            for bdf in pci_addresses(XlConfig.parse(text or "", each["path"])):
                listed.setdefault(bdf, each["path"])
        except XenPciError:
            continue        # the edit reports what is wrong with the file
    sysfs = Sysfs(entries[0].get("sysfs_root") or "/sys")
    concrete, selected, problems = select_devices(sysfs, desired, lambda path: path, listed.get,
                                                  "configs" if many else "devices")
    raise_problems(problems)
    for each in entries:
        if each["path"] in concrete:
            each["devices"] = concrete[each["path"]]
            each[SELECTED] = selected.get(each["path"], [])


def run_domain_configs(params, check_mode=False, atomic_move=None, backup_local=None, file_attributes=None):
    """Several config files in one task (``configs``), or the one of ``path``.
    Every file is read and edited in memory first: one bad file means
    nothing is written to any."""
    many = params.get("configs") is not None
    plans = []
    entries = config_params(params)
    select_in_configs(entries, many)
    for each in entries:
        try:
            plans.append((each, plan_domain_config(each)))
        except XenPciError as exc:
            if not many:
                raise
            raise type(exc)("%s: %s" % (each["path"], exc.msg), **dict(exc.details, path=each["path"])) from exc
    for each, planned in plans:
        if not check_mode:
            _apply(each, planned, atomic_move, backup_local)
        if file_attributes is not None:
            file_attributes(each, planned[0])
    results = [planned[0] for _each, planned in plans]
    if not many:
        return results[0]
    return {"changed": any(r["changed"] for r in results), "results": results,
            "actions": ["%s: %s" % (r["path"], a) for r in results for a in r["actions"]],
            "diff": [r["diff"] for r in results if r["changed"]]}

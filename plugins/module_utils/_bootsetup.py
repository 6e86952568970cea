# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Devices hidden from dom0 drivers at boot: the persistent half of the pool.

Two ways a dom0 kernel learns which devices pciback takes at boot:

* ``grub``: ``xen-pciback.hide=(BDF)(BDF)`` on the dom0 kernel command
  line.  Debian's grub-mkconfig sources ``/etc/default/grub`` and then
  ``/etc/default/grub.d/*.cfg`` in name order; its Xen entries use
  ``GRUB_CMDLINE_LINUX_XEN_REPLACE`` (and ``..._DEFAULT``) instead of
  ``GRUB_CMDLINE_LINUX`` (``..._DEFAULT``) when those are set.  We own one
  drop-in, ``zz-xen-pci.cfg``, named to be read last (after Debian's own
  ``xen.cfg``) so the hide list in it is the one the kernel keeps: for a
  repeated parameter the last occurrence wins.  It sets only the Xen
  variables, so native (non-Xen) entries are left alone.
* ``modprobe``: ``options xen_pciback hide=(...)`` in
  ``/etc/modprobe.d/xen-pci.conf``, plus ``softdep <driver> pre: xen_pciback``
  so pciback is loaded (and claims the devices) before the dom0 driver that
  would otherwise take them; ``update-initramfs -u`` copies it into the
  initramfs on initramfs-tools hosts.  Works only when pciback is a module.

The list we write is the union of what the operator wrote by hand elsewhere
(kept, never dropped) and our own devices; a comment in our file names the
ones we own, so ``state=absent`` removes only those.  Nothing here knows
about Ansible: commands run through the ``run_command`` the caller passes.
"""

from __future__ import annotations

import os
import re

from ansible_collections.xen.pci.plugins.module_utils._errors import BootSetupError, RefusedError, SpecError, XenPciError

GRUB_DROPIN = "etc/default/grub.d/zz-xen-pci.cfg"
GRUB_MAIN = "etc/default/grub"
GRUB_DIR = "etc/default/grub.d"
MODPROBE_CONF = "etc/modprobe.d/xen-pci.conf"
MODPROBE_DIR = "etc/modprobe.d"
SETUPS = ("auto", "grub", "modprobe")
OWNED_MARK = "# xen.pci owns:"
HEADER = "# Managed by xen.pci.assignable (persistent: true); edits to this file are overwritten.\n"

_HIDE_ITEM = re.compile(r"\(([^()]*)\)")
_HIDE_CMDLINE = re.compile(r"(?:^|\s)xen[-_]pciback\.hide=(\S*)")
_HIDE_OPTION = re.compile(r"^\s*options\s+xen[-_]pciback\s+(.*)$")
_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_EXPAND = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_XEN_VARS = ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT",
             "GRUB_CMDLINE_LINUX_XEN_REPLACE", "GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT")


def hide_items(value):
    """``(0000:03:00.0)(04:00.*)`` -> ['0000:03:00.0', '04:00.*'] (text kept as written)."""
    return [m.group(1).strip() for m in _HIDE_ITEM.finditer(value or "")]


def hide_value(items):
    return "".join("(%s)" % i for i in items)


def _norm(item):
    """A hide entry compared as the kernel reads it: 3-part addresses are in segment 0."""
    item = item.lower()
    return item if item.count(":") == 2 else "0000:" + item


def _path(root, rel):
    return os.path.join(root, rel)


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BootSetupError("cannot read %s: %s" % (path, exc.strerror or exc), path=path) from exc


def pciback_kind(root):
    """``module`` or ``builtin``: how the running kernel has xen-pciback."""
    if os.path.exists(_path(root, "sys/module/xen_pciback/initstate")):
        return "module"     # only loadable modules have initstate
    release = (_read(_path(root, "proc/sys/kernel/osrelease")) or "").strip()
    builtin = _read(_path(root, "lib/modules/%s/modules.builtin" % release)) if release else None
    if builtin and any(line.strip().endswith("/xen-pciback.ko") for line in builtin.splitlines()):
        return "builtin"
    return "module"


def running_hide(root):
    """The hide list the running kernel has: pciback's parameter, else the boot command line."""
    param = _read(_path(root, "sys/module/xen_pciback/parameters/hide"))
    if param is not None:
        return [] if param.strip() in ("", "(null)") else hide_items(param)
    found = _HIDE_CMDLINE.findall(_read(_path(root, "proc/cmdline")) or "")
    return hide_items(found[-1]) if found else []


# -- GRUB defaults ---------------------------------------------------------

def _shell_value(raw, env):
    """The value of a simple shell assignment (quoted or bare, $VAR expanded)."""
    raw = raw.strip()
    if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
        return raw[1:-1]
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        raw = raw[1:-1]
    else:
        raw = raw.split(" #", 1)[0].strip()

    def expand(m):
        name = m.group(1) or m.group(3)
        value = env.get(name, "")
        if not value and m.group(2) is not None:
            return _EXPAND.sub(expand, m.group(2))
        return value
    return _EXPAND.sub(expand, raw)


def _grub_env(root, with_ours=True):
    env = {}
    files = [_path(root, GRUB_MAIN)]
    directory = _path(root, GRUB_DIR)
    if os.path.isdir(directory):
        files += [os.path.join(directory, f) for f in sorted(os.listdir(directory)) if f.endswith(".cfg")]
    for path in files:
        if not with_ours and path == _path(root, GRUB_DROPIN):
            continue
        for line in (_read(path) or "").splitlines():
            m = _ASSIGN.match(line)
            if m and m.group(1) in _XEN_VARS:
                env[m.group(1)] = _shell_value(m.group(2), env)
    return env


def _grub_xen_cmdline(env):
    """The dom0 arguments of Debian's default Xen entry (20_linux_xen)."""
    base = env.get("GRUB_CMDLINE_LINUX_XEN_REPLACE") or env.get("GRUB_CMDLINE_LINUX", "")
    default = env.get("GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT") or env.get("GRUB_CMDLINE_LINUX_DEFAULT", "")
    return "%s %s" % (base, default)


def _last_hide(cmdline):
    found = _HIDE_CMDLINE.findall(cmdline)
    return hide_items(found[-1]) if found else []


def _grub_text(items, owned):
    value = hide_value(items)
    return (HEADER + "%s %s\n" % (OWNED_MARK, " ".join(owned))
            + "# Read last: for a repeated parameter the kernel keeps the last one, and this list holds\n"
            + "# the devices written by hand elsewhere too.\n"
            + 'GRUB_CMDLINE_LINUX_XEN_REPLACE="${GRUB_CMDLINE_LINUX_XEN_REPLACE:-$GRUB_CMDLINE_LINUX} '
              'xen-pciback.hide=%s"\n' % value
            + 'GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT="${GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT:-'
              '$GRUB_CMDLINE_LINUX_DEFAULT} xen-pciback.hide=%s"\n' % value)


# -- modprobe.d ------------------------------------------------------------

def _modprobe_hand_written(root):
    """Hide entries in modprobe.d files other than ours (kmod joins all options lines)."""
    directory = _path(root, MODPROBE_DIR)
    items, files = [], []
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if not name.endswith(".conf") or path == _path(root, MODPROBE_CONF):
                continue
            for line in (_read(path) or "").splitlines():
                m = _HIDE_OPTION.match(line)
                if m:
                    for word in m.group(1).split():
                        if word.startswith("hide="):
                            items = hide_items(word[5:])
                            files.append(path)
    return items, files


def _modprobe_text(items, owned, drivers):
    lines = [HEADER, "%s %s\n" % (OWNED_MARK, " ".join(owned))]
    if items:
        lines.append("options xen_pciback hide=%s\n" % hide_value(items))
    # pciback must claim the devices before the drivers that would bind them.
    lines += ["softdep %s pre: xen_pciback\n" % d for d in sorted(drivers)]
    return "".join(lines)


def _owned(text):
    for line in (text or "").splitlines():
        if line.startswith(OWNED_MARK):
            return line[len(OWNED_MARK):].split()
    return []


def _modprobe_items(text):
    for line in (text or "").splitlines():
        m = _HIDE_OPTION.match(line)
        if m:
            for word in m.group(1).split():
                if word.startswith("hide="):
                    return hide_items(word[5:])
    return []


def _softdeps(text):
    return [line.split()[1] for line in (text or "").splitlines()
            if line.startswith("softdep ") and len(line.split()) > 1]


# -- the plan ---------------------------------------------------------------

def choose_setup(params):
    """``grub`` or ``modprobe`` for this host (``boot_setup: auto`` decides from pciback's kind)."""
    root = params.get("boot_root") or "/"
    setup = params.get("boot_setup") or "auto"
    if setup not in SETUPS:
        raise SpecError("boot_setup must be one of %s, got %r" % (", ".join(SETUPS), setup), input="boot_setup")
    kind = pciback_kind(root)
    if setup == "auto":
        setup = "grub" if kind == "builtin" else "modprobe"
    if setup == "modprobe" and kind == "builtin":
        raise RefusedError("xen-pciback is built into the running kernel, so modprobe.d options never reach it; "
                           "use boot_setup=grub (the kernel command line)", input="boot_setup")
    if setup == "grub":
        if not os.path.exists(_path(root, GRUB_MAIN)):
            raise RefusedError("boot_setup=grub needs GRUB's defaults file %s, which does not exist; this host "
                               "may boot without GRUB (set boot_setup=modprobe if xen-pciback is a module, or "
                               "put xen-pciback.hide on the kernel command line its boot loader passes)"
                               % _path(root, GRUB_MAIN), input="boot_setup")
        if not os.path.isdir(_path(root, GRUB_DIR)) and not os.path.exists(_path(root, "etc/debian_version")):
            raise RefusedError("%s does not exist and this is not a Debian host, whose grub-mkconfig reads it; "
                               "this layout is not supported: put xen-pciback.hide in GRUB_CMDLINE_LINUX by hand"
                               % _path(root, GRUB_DIR), input="boot_setup")
    return setup, kind


def plan_boot(params, bdfs, state, drivers):
    """What the boot setup should hold after the task (pure but for reading files).

    ``bdfs``: the task's devices (normalised); ``drivers``: module names of
    their dom0 drivers (for softdeps).  Returns a dict: setup, path, before,
    after (file texts), owned, after_reboot (hide entries), changed."""
    root = params.get("boot_root") or "/"
    setup, kind = choose_setup(params)
    path = _path(root, GRUB_DROPIN if setup == "grub" else MODPROBE_CONF)
    before = _read(path)
    owned = [_norm(b) for b in _owned(before)]
    if state == "present":
        owned += [b for b in bdfs if b not in owned]
    else:
        owned = [b for b in owned if b not in bdfs]
    if setup == "grub":
        hand = _last_hide(_grub_xen_cmdline(_grub_env(root, with_ours=False)))
        hand_files = []
    else:
        hand, hand_files = _modprobe_hand_written(root)
    if state == "absent" and hand_files:
        kept = [b for b in bdfs if b in [_norm(h) for h in hand]]
        if kept:
            raise RefusedError("%s is hidden at boot by a line written by hand in %s; remove it there"
                               % (", ".join(kept), ", ".join(hand_files)), device=kept[0], path=hand_files[0])
    if state == "absent" and setup == "grub":
        kept = [b for b in bdfs if b in [_norm(h) for h in hand]]
        if kept:
            raise RefusedError("%s is hidden at boot by xen-pciback.hide written by hand in GRUB's defaults "
                               "(%s or another drop-in); remove it there" % (", ".join(kept), _path(root, GRUB_MAIN)),
                               device=kept[0], path=_path(root, GRUB_MAIN))
    items = list(hand)
    items += [b for b in owned if b not in [_norm(h) for h in items]]
    if not owned:
        after = None        # nothing of ours left: the file goes
    elif setup == "grub":
        after = _grub_text(items, owned)
    else:
        # Softdeps stay while we own devices: a driver may serve more than one of them.
        deps = set(_softdeps(before)) | (set(drivers) if state == "present" else set())
        after = _modprobe_text(items, owned, deps)
    return {"setup": setup, "pciback": kind, "path": path, "before": before, "after": after, "owned": owned,
            "after_reboot": [_norm(i) for i in items] if owned else [_norm(h) for h in hand],
            "changed": before != after}


def after_reboot(params):
    """The devices hidden at the next boot as the readable boot setup says (both ways)."""
    root = params.get("boot_root") or "/"
    items = _last_hide(_grub_xen_cmdline(_grub_env(root)))
    hand, _files = _modprobe_hand_written(root)
    items = items + hand + _modprobe_items(_read(_path(root, MODPROBE_CONF)))
    return sorted({_norm(i) for i in items})


def _put(path, text):
    """Write ``text`` to ``path`` atomically, or remove ``path`` when ``text`` is None."""
    # Imported here: only a change writes files (a read, or info's report, needs no writer).
    from ansible_collections.xen.pci.plugins.module_utils._runner_domain_config import write_config  # pylint: disable=import-outside-toplevel
    try:
        if text is None:
            if os.path.exists(path):
                os.unlink(path)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_config(path, text)
    except OSError as exc:
        raise BootSetupError("cannot write %s: %s" % (path, exc.strerror or exc), path=path) from exc
    except XenPciError as exc:
        raise BootSetupError(str(exc), path=path) from exc


def apply_boot(plan, params, run_command):
    """Write (or remove) our file, then regenerate what the boot reads.

    When the regenerating command cannot run or fails, our file is put back
    as it was (what the boot reads was not regenerated from it), so the
    next run writes it again and retries the command.  Returns the
    ``boot_setup`` result: files, backup, commands with rc."""
    out = {"setup": plan["setup"], "pciback": plan["pciback"], "files": [plan["path"]], "commands": []}
    if not plan["changed"]:
        return out
    if params.get("backup") and plan["before"] is not None:
        from ansible_collections.xen.pci.plugins.module_utils._runner_domain_config import default_backup  # pylint: disable=import-outside-toplevel
        try:
            out["backup_file"] = default_backup(plan["path"])
        except OSError as exc:
            raise BootSetupError("cannot back up %s: %s" % (plan["path"], exc.strerror or exc),
                                 path=plan["path"]) from exc
    _put(plan["path"], plan["after"])
    root = params.get("boot_root") or "/"
    if plan["setup"] == "grub":
        cmd = [params.get("update_grub") or "update-grub"]
    elif os.path.isdir(_path(root, "etc/initramfs-tools")):
        cmd = [params.get("update_initramfs") or "update-initramfs", "-u"]
    else:
        out["initramfs"] = "not initramfs-tools (no %s): not rebuilt" % _path(root, "etc/initramfs-tools")
        return out
    try:
        rc, stdout, stderr = run_command(cmd)
    except OSError as exc:      # the tool is not there, or not executable
        _put(plan["path"], plan["before"])
        msg = "cannot run %s: %s; %s was put back as it was" % (cmd[0], exc.strerror or exc, plan["path"])
        raise BootSetupError(msg, path=plan["path"], cmd=cmd, boot_setup=out) from exc
    out["commands"].append({"cmd": cmd, "rc": rc})
    if rc != 0:
        _put(plan["path"], plan["before"])
        said = (stderr or stdout or "").strip()[-400:]
        msg = "%s failed (rc %d); %s was put back as it was: %s" % (" ".join(cmd), rc, plan["path"], said)
        raise BootSetupError(msg, path=plan["path"], rc=rc, cmd=cmd, boot_setup=out)
    return out

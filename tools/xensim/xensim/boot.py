"""The boot setup of the simulated dom0: the files that decide what is
hidden from dom0 drivers at the next boot, and the tools that regenerate
what the boot loader and the initramfs read.

Served as a plain directory tree at ``host.paths['boot_root']`` (the
modules' ``boot_root`` option), laid out as on a Debian bookworm dom0:

* ``etc/default/grub`` and ``etc/default/grub.d/`` (``loader: grub``),
  ``etc/modprobe.d/``, ``etc/initramfs-tools/`` (``initramfs: true``),
  ``etc/debian_version``;
* ``proc/cmdline`` and ``proc/sys/kernel/osrelease``;
* ``lib/modules/<release>/modules.builtin`` (lists ``xen-pciback.ko`` when
  ``pciback: builtin``);
* ``sys/module/xen_pciback/``: ``parameters/hide`` (mode 0444 as
  ``module_param_named(hide, ..., charp, 0444)`` makes it; ``(null)`` when
  the parameter was never set, as the kernel prints a NULL charp) and, for a
  loadable module only, ``initstate`` and ``refcnt``.  The running hide list
  is the scenario's devices with ``hidden: true``, which the kernel was told
  on this boot;
* ``usr/sbin/update-grub`` and ``usr/sbin/update-initramfs``: stand-ins
  that behave as the real tools in what callers depend on.  update-grub
  sources the defaults with ``/bin/sh`` as grub-mkconfig does (a broken file
  fails it, exit 1) and writes ``boot/grub/grub.cfg`` with the Xen entry's
  dom0 arguments; update-initramfs accepts ``-u`` (``-k <version>``) and
  packs ``etc/modprobe.d`` into ``boot/initrd.img-<release>`` (a cpio
  ``newc`` archive, as initramfs-tools does), exit 2 on bad usage.  Both log
  their argv as a JSON line in ``var/log/xensim-boot.log``.

Scenario key ``boot`` (all optional): ``loader`` (``grub`` | ``direct``),
``pciback`` (``module`` | ``builtin``), ``initramfs`` (bool),
``kernel_release``, ``cmdline`` (dom0 arguments), ``files`` ({path: text}
written as given, for hand-written setups).
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Any

DEFAULTS = {"loader": "grub", "pciback": "module", "initramfs": True, "kernel_release": "6.1.0-30-amd64",
            "cmdline": "root=/dev/xvda1 ro console=hvc0", "files": {}}
KEYS = set(DEFAULTS)

_UPDATE_GRUB = r'''#!{python}
"""update-grub as xensim's dom0 has it (grub-mkconfig -o /boot/grub/grub.cfg)."""
import json, os, subprocess, sys
root = {root!r}
with open(os.path.join(root, "var/log/xensim-boot.log"), "a") as log:
    log.write(json.dumps(["update-grub"] + sys.argv[1:]) + "\n")
files = [os.path.join(root, "etc/default/grub")]
drop = os.path.join(root, "etc/default/grub.d")
if os.path.isdir(drop):
    files += [os.path.join(drop, f) for f in sorted(os.listdir(drop)) if f.endswith(".cfg")]
script = "".join('. "%s" || exit 1\n' % f for f in files if os.path.exists(f))
script += 'printf "%s\\n%s\\n" "${{GRUB_CMDLINE_LINUX_XEN_REPLACE:-$GRUB_CMDLINE_LINUX}}" ' \
          '"${{GRUB_CMDLINE_LINUX_XEN_REPLACE_DEFAULT:-$GRUB_CMDLINE_LINUX_DEFAULT}}"\n'
proc = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True)
if proc.returncode != 0:
    sys.stderr.write(proc.stderr)
    sys.exit(1)
linux, default = (proc.stdout.split("\n") + ["", ""])[:2]
sys.stderr.write("Generating grub configuration file ...\n")
os.makedirs(os.path.join(root, "boot/grub"), exist_ok=True)
with open(os.path.join(root, "boot/grub/grub.cfg"), "w") as cfg:
    cfg.write("menuentry 'Debian GNU/Linux, with Xen hypervisor' {{\n"
              "\tmultiboot2 /boot/xen.gz placeholder\n"
              "\tmodule2 /boot/vmlinuz-{release} placeholder %s %s\n"
              "\tmodule2 --nounzip /boot/initrd.img-{release}\n}}\n" % (linux.strip(), default.strip()))
sys.stderr.write("done\n")
'''

_UPDATE_INITRAMFS = r'''#!{python}
"""update-initramfs -u as xensim's dom0 has it: etc/modprobe.d packed into the initrd."""
import json, os, sys
root = {root!r}
with open(os.path.join(root, "var/log/xensim-boot.log"), "a") as log:
    log.write(json.dumps(["update-initramfs"] + sys.argv[1:]) + "\n")
args = sys.argv[1:]
version = "{release}"
if "-k" in args:
    i = args.index("-k")
    version = args[i + 1] if i + 1 < len(args) else ""
    del args[i:i + 2]
if args != ["-u"] or not version:
    sys.stderr.write("Usage: update-initramfs {{-c|-d|-u}} [-k version] [-v] [-b directory]\n")
    sys.exit(2)
if version == "all":
    version = "{release}"
entries = []
conf = os.path.join(root, "etc/modprobe.d")
for name in sorted(os.listdir(conf)) if os.path.isdir(conf) else []:
    with open(os.path.join(conf, name), "rb") as handle:
        entries.append(("etc/modprobe.d/" + name, handle.read()))
out = bytearray()
for ino, (name, data) in enumerate(entries + [("TRAILER!!!", b"")], 1):
    mode = 0o100644 if data or name != "TRAILER!!!" else 0
    head = "070701" + "".join("%08x" % v for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0))
    out += head.encode() + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4) + data
    out += b"\0" * (-len(out) % 4)
os.makedirs(os.path.join(root, "boot"), exist_ok=True)
with open(os.path.join(root, "boot/initrd.img-%s" % version), "wb") as handle:
    handle.write(bytes(out))
sys.stderr.write("update-initramfs: Generating /boot/initrd.img-%s\n" % version)
'''


def parse_boot(raw: Any) -> dict:
    """The scenario's ``boot`` mapping with defaults; ValueError names a bad field."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise ValueError("boot: unknown key(s) %s" % ", ".join(unknown))
    out = dict(DEFAULTS, **raw)
    if out["loader"] not in ("grub", "direct"):
        raise ValueError("boot.loader: expected grub or direct, got %r" % (out["loader"],))
    if out["pciback"] not in ("module", "builtin"):
        raise ValueError("boot.pciback: expected module or builtin, got %r" % (out["pciback"],))
    if not isinstance(out["files"], dict):
        raise ValueError("boot.files: expected a mapping of path: text")
    return out


def _write(root: str, rel: str, text: str, mode: int = 0o644) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)


def build(root: str, boot: dict, hidden: list[str]) -> None:
    """Lay out the boot setup of a dom0 that booted with ``hidden`` devices hidden."""
    release = boot["kernel_release"]
    hide = "".join("(%s)" % b for b in hidden)
    for rel in ("etc/modprobe.d", "var/log", "boot"):
        os.makedirs(os.path.join(root, rel), exist_ok=True)
    _write(root, "etc/debian_version", "12.8\n")
    cmdline = boot["cmdline"]
    if hidden and boot["pciback"] == "builtin":
        cmdline += " xen-pciback.hide=" + hide
    _write(root, "proc/cmdline", "placeholder " + cmdline + "\n", 0o444)
    _write(root, "proc/sys/kernel/osrelease", release + "\n", 0o444)
    builtin = "kernel/drivers/xen/xen-pciback/xen-pciback.ko\n" if boot["pciback"] == "builtin" else ""
    _write(root, "lib/modules/%s/modules.builtin" % release, "kernel/drivers/base/firmware_class.ko\n" + builtin)
    _write(root, "sys/module/xen_pciback/parameters/hide", (hide or "(null)") + "\n", 0o444)
    if boot["pciback"] == "module":
        _write(root, "sys/module/xen_pciback/initstate", "live\n", 0o444)
        _write(root, "sys/module/xen_pciback/refcnt", "0\n", 0o444)
    if boot["loader"] == "grub":
        _write(root, "etc/default/grub", 'GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
                                         'GRUB_CMDLINE_LINUX="%s"\n' % boot["cmdline"].replace('"', '\\"'))
        os.makedirs(os.path.join(root, "etc/default/grub.d"), exist_ok=True)
    if boot["initramfs"]:
        os.makedirs(os.path.join(root, "etc/initramfs-tools"), exist_ok=True)
    for rel, text in boot["files"].items():
        _write(root, rel.lstrip("/"), text)
    exe = stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    _write(root, "usr/sbin/update-grub", _UPDATE_GRUB.format(python=sys.executable, root=root, release=release), exe)
    _write(root, "usr/sbin/update-initramfs",
           _UPDATE_INITRAMFS.format(python=sys.executable, root=root, release=release), exe)

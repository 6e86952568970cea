# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Assemble a Linux stub domain's initramfs from dom0's own files.

Run in dom0 of the test VM (python3, standard library only)::

    python3 build_stubdom.py [--diag] OUT.cpio.gz [INIT]

Debian ships no stub domain, but dom0 already has what one needs: the
kernel libxl boots the stub domain with (``/var/lib/xenvm/vmlinuz``, the
one dom0 runs, so dom0's ``/lib/modules`` fit it), Debian's qemu-xen
(``/usr/libexec/xen-qemu-system-i386``), xen-utils' ``vchan-socket-proxy``
(libxl talks QMP to a Linux stub domain over a vchan that this proxy serves
inside it), the multi-call ``xenstore`` client and busybox. This script
copies them with their shared libraries (``ldd``'s closure), the Xen device
modules the stub domain loads itself (with ``modules.dep``'s dependencies),
QEMU's firmware files and ``INIT`` (default: ``init.sh`` beside this file)
as ``/init``, and packs a gzip'd cpio "newc" archive (dom0 has no cpio).

Building in dom0 at test time keeps the image recipe (``build_image.py``,
``initramfs-init.sh``) unchanged, and the stub domain's binaries are
exactly dom0's. Prints one JSON line: files, sizes, seconds.

``--diag`` adds python3 (with ctypes) and ``diag.py``; a stub domain booted
with ``stubdom.diag=1`` in ``stubdomain_cmdline`` runs it before QEMU.
"""

import gzip
import json
import os
import re
import stat
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DM = "/usr/libexec/xen-qemu-system-i386"
PROXY = "/usr/lib/xen-4.17/bin/vchan-socket-proxy"
# xenstore is one binary whose name picks the command.
XENSTORE_TOOLS = ("xenstore-read", "xenstore-write", "xenstore-list", "xenstore-ls", "xenstore-exists", "xenstore-rm",
                  "xenstore-watch")
BINARIES = (DM, PROXY, "/usr/bin/xenstore", "/usr/bin/busybox")
# Load order matters: each after the ones it needs (modules.dep adds deps).
# evtchn, gntdev, privcmd: QEMU's event channels, grant maps and foreign
# memory of the guest; gntalloc: the vchan server side offers grants;
# xenfs: /proc/xen, which some libxen* fall back on; pcifront: the devices
# libxl passes through reach QEMU through the stub domain's PCI frontend.
MODULES = ("xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xenfs", "xen-pcifront")
# In a domU, Debian's privcmd (6.1.y) restricts itself to the domain named
# by xenstore's "target" and refuses IOCTL_PRIVCMD_HYPERCALL outright; so
# restricted, QEMU's first dm_op (create_ioreq_server) and its HVM-param
# hypercall both failed with EPERM here (diag.py), and QEMU then failed to
# map the default ioreq server. Xen still checks every call against the
# stub domain's target.
MODULE_ARGS = {"xen-privcmd.ko": "unrestricted=1"}
# QEMU's firmware search path in Debian's build (option ROMs of emulated
# devices); small, so the whole set of what is there.
FIRMWARE_DIRS = ("/usr/share/qemu", "/usr/share/seabios")
FIRMWARE_RE = re.compile(r".*\.(bin|rom)$")


def ldd_closure(paths):
    """Every shared object the binaries load, as dom0 resolves them."""
    libs = set()
    for path in paths:
        out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if m:
                libs.add(m.group(1))
    return sorted(libs)


def module_files(kver):
    """Module files in load order, dependencies first."""
    base = "/lib/modules/%s" % kver
    deps = {}
    with open(os.path.join(base, "modules.dep"), encoding="utf-8") as handle:
        for line in handle:
            name, _sep, rest = line.partition(":")
            deps[name] = rest.split()
    by_name = {re.sub(r"\.ko(\.xz|\.zst)?$", "", os.path.basename(p)).replace("_", "-"): p for p in deps}
    order = []

    def add(rel):
        for dep in reversed(deps.get(rel, [])):
            add(dep)
        if rel not in order:
            order.append(rel)

    for module in MODULES:
        rel = by_name.get(module.replace("_", "-"))
        if rel is None:
            raise SystemExit("module %s not in %s/modules.dep" % (module, base))
        add(rel)
    return [os.path.join(base, rel) for rel in order]


class Tree:
    """The archive's entries, parents made as needed."""

    def __init__(self):
        self.entries = {}       # name -> (mode, data, rdev)

    def dir(self, name):
        name = name.strip("/")
        if name and name not in self.entries:
            self.dir(os.path.dirname(name))
            self.entries[name] = (stat.S_IFDIR | 0o755, b"", 0)

    def file(self, name, data, mode=0o755):
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        self.entries[name] = (stat.S_IFREG | mode, data, 0)

    def link(self, name, target):
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        self.entries[name] = (stat.S_IFLNK | 0o777, target.encode(), 0)

    def copy(self, path, mode=0o755):
        """dom0's file at ``path``, with every symlink on the way (a
        library's soname link, the ELF interpreter's /lib64 link) made a
        symlink in the archive too, so that the same paths resolve there."""
        where = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if os.path.islink(where):
            target = os.readlink(where)
            self.link(where, target)
            return self.copy(os.path.join(os.path.dirname(where), target), mode)
        with open(where, "rb") as handle:
            self.file(where, handle.read(), mode)
        return where

    def newc(self):
        out = bytearray()

        def header(ino, mode, size, rdev, name):
            raw = name.encode() + b"\0"
            fields = (ino, mode, 0, 0, 1, 0, size, 0, 0, os.major(rdev), os.minor(rdev), len(raw), 0)
            out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
            out.extend(b"\0" * (-len(out) % 4))

        # Directories before their contents: the kernel creates in order.
        for ino, name in enumerate(sorted(self.entries, key=lambda n: (n.count("/"), n)), start=1):
            mode, data, rdev = self.entries[name]
            header(ino, mode, len(data), rdev, name)
            out.extend(data)
            out.extend(b"\0" * (-len(out) % 4))
        header(0, 0, 0, 0, "TRAILER!!!")
        return bytes(out)


def add_python(tree):
    """python3 with just what diag.py imports (ctypes), for --diag."""
    ver = "python%d.%d" % sys.version_info[:2]
    lib = "/usr/lib/" + ver
    exe = os.path.realpath(sys.executable)
    tree.copy(exe)
    tree.link("usr/bin/python3", os.path.basename(exe))
    extra = [os.path.join(lib, "lib-dynload", n) for n in os.listdir(os.path.join(lib, "lib-dynload"))
             if n.startswith("_ctypes.")]
    for path in extra:
        tree.copy(path, 0o644)
    for lib_path in ldd_closure([exe] + extra):
        tree.copy(lib_path)
    # The modules diag.py's imports load, as dom0's python finds them.
    files = subprocess.run([exe, "-c", "import sys, ctypes, encodings.utf_8, encodings.latin_1; print('\\n'.join("
                            "getattr(m, '__file__', None) or '' for m in list(sys.modules.values())))"],
                           capture_output=True, text=True, check=True).stdout.split()
    for path in files:
        if path.startswith(lib):
            tree.copy(path, 0o644)
    tree.copy(os.path.join(HERE, "diag.py"), 0o644)
    tree.link("usr/lib/stubdom-diag.py", os.path.join(HERE, "diag.py"))


def build(out_path, init_path, diag=False):
    start = time.monotonic()
    kver = os.uname().release
    tree = Tree()
    for top in ("bin", "sbin", "lib", "lib64"):
        if os.path.islink("/" + top):
            tree.link(top, os.readlink("/" + top))
        else:
            tree.dir(top)
    for name in ("dev", "proc", "sys", "tmp", "run", "var", "etc", "usr/bin", "usr/sbin"):
        tree.dir(name)
    tree.link("var/run", "../run")
    tree.entries["dev/console"] = (stat.S_IFCHR | 0o600, b"", os.makedev(5, 1))
    for path in BINARIES:
        tree.copy(path)
    for tool in XENSTORE_TOOLS:
        tree.link("usr/bin/" + tool, "xenstore")
    # /init's interpreter (/bin is usr/bin in Debian's merged /usr).
    tree.link("usr/bin/sh", "busybox")
    if not os.path.islink("/bin"):
        tree.link("bin/sh", "/usr/bin/busybox")
    for lib in ldd_closure(BINARIES):
        tree.copy(lib)
    modules = module_files(kver)
    for path in modules:
        tree.copy(path, 0o644)
    tree.file("etc/modules", "".join(("%s %s" % (os.path.realpath(p), MODULE_ARGS.get(os.path.basename(p), ""))).strip()
                                     + "\n" for p in modules).encode(), 0o644)
    firmware = 0
    for fwdir in FIRMWARE_DIRS:
        for name in sorted(os.listdir(fwdir)) if os.path.isdir(fwdir) else ():
            if FIRMWARE_RE.match(name) and os.path.isfile(os.path.join(fwdir, name)):
                tree.copy(os.path.join(fwdir, name), 0o644)
                # QEMU looks in its data dir; seabios' VGA ROMs live beside.
                if fwdir != "/usr/share/qemu" and not os.path.exists(os.path.join("/usr/share/qemu", name)):
                    tree.link("usr/share/qemu/" + name, os.path.join(fwdir, name))
                firmware += 1
    if diag:
        add_python(tree)
    with open(init_path, "rb") as handle:
        tree.file("init", handle.read())
    tree.file("etc/stubdom-dm", (DM + "\n").encode(), 0o644)
    tree.file("etc/stubdom-qmp-proxy", (PROXY + "\n").encode(), 0o644)
    archive = tree.newc()
    packed = gzip.compress(archive, compresslevel=6)
    with open(out_path + ".tmp", "wb") as handle:
        handle.write(packed)
    os.replace(out_path + ".tmp", out_path)
    print(json.dumps({"out": out_path, "kernel_release": kver, "entries": len(tree.entries), "cpio_bytes": len(archive),
                      "gz_bytes": len(packed), "modules": [os.path.basename(p) for p in modules],
                      "firmware_files": firmware, "seconds": round(time.monotonic() - start, 2)}))


if __name__ == "__main__":
    argv = [a for a in sys.argv[1:] if a != "--diag"]
    if len(argv) not in (1, 2):
        raise SystemExit(__doc__)
    build(argv[0], argv[1] if len(argv) == 2 else os.path.join(HERE, "init.sh"), diag="--diag" in sys.argv)

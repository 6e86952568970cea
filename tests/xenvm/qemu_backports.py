# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU from Debian bookworm-backports, unpacked in the cache, never installed.

Bookworm's QEMU (7.2) has no ``igb`` device; the SR-IOV test needs one (the
82576 model: PF 8086:10c9, VFs 8086:10ca, up to 7 VFs), which bookworm-backports'
QEMU 10 has.  ``ensure()`` returns the path of a wrapper that runs that QEMU
from ``<cache>/qemu-backports/<version>/`` (default ``~/.cache/xen-pci``):

- the apt source: when no source names ``bookworm-backports``, a deb822 file
  ``/etc/apt/sources.list.d/xen-pci-bookworm-backports.sources``
  (deb.debian.org, main, the Debian archive keyring) is added and
  ``apt-get update`` reads that source only.  Backports are pinned at 100
  by their Release file: nothing from them is installed unless asked for;
- ``apt-get download`` of ``qemu-system-x86``, ``qemu-system-common``,
  ``qemu-system-data`` (that version), ``seabios`` (bookworm-backports':
  QEMU 10 depends on a newer one) and ``ipxe-qemu`` (the NICs' option ROMs),
  each unpacked with ``dpkg-deb -x`` into ``<version>/root``; the shared
  libraries must be bookworm's installed ones (checked with ``ldd``);
- the wrapper ``<version>/bin/qemu-system-x86_64`` execs the binary with
  ``QEMU_MODULE_DIR`` at the unpacked modules (else QEMU 10 loads the
  system's 7.2 modules, which abort it) and ``-L`` at the unpacked data,
  BIOS and option-ROM directories; it execs, so the harness's pid and
  process group are QEMU's.

A complete unpacked version is reused (no apt, no network); the newest
cached one is used when apt cannot say which version is current.  Anything
that fails raises ``Unavailable`` with the reason, for a loud skip.

CLI: ``python3 tests/xenvm/qemu_backports.py`` prints the wrapper's path.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

SUITE = "bookworm-backports"
SOURCE_FILE = "/etc/apt/sources.list.d/xen-pci-bookworm-backports.sources"
SOURCE_TEXT = """\
# Added by xen.pci's tests/xenvm/qemu_backports.py: QEMU with the igb (SR-IOV)
# device for the real-Xen SR-IOV test; its packages are downloaded and
# unpacked in a cache, never installed. Backports are pinned at 100.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
QEMU_PACKAGE = "qemu-system-x86"
SAME_VERSION = ("qemu-system-common", "qemu-system-data")
# Not tied to QEMU's version: bookworm-backports' seabios when there is one
# (QEMU 10 depends on seabios >> 1.16.3), ipxe-qemu from wherever apt has it.
FIRMWARE = (("seabios", SUITE), ("ipxe-qemu", None))
BINARY = "usr/bin/qemu-system-x86_64"
MODULE_DIR = "usr/lib/x86_64-linux-gnu/qemu"
# -L: QEMU's own data (multiboot/linuxboot option ROMs), SeaBIOS, iPXE ROMs.
DATA_DIRS = ("usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu")
TIMEOUT = 300


class Unavailable(Exception):
    """bookworm-backports' QEMU cannot be had here; the message says why."""


def cache_root():
    base = os.environ.get("XEN_PCI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "xen-pci")
    return os.path.join(base, "qemu-backports")


def _run(argv, timeout=TIMEOUT, cwd=None):
    """CompletedProcess (text); Unavailable when the command is missing or times out."""
    try:
        return subprocess.run(argv, cwd=cwd, timeout=timeout, check=False, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, env=dict(os.environ, LC_ALL="C"))
    except FileNotFoundError:
        raise Unavailable("%s is not installed" % argv[0]) from None
    except subprocess.TimeoutExpired:
        raise Unavailable("%s timed out after %d s" % (" ".join(argv[:4]), timeout)) from None


def _why(proc):
    return (proc.stderr.strip() or proc.stdout.strip()).replace("\n", " | ")[-600:]


def source_files():
    """The apt source files that name bookworm-backports."""
    found = []
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")
                                                   + glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = [line.split("#", 1)[0] for line in handle]
        except OSError:
            continue
        if any(re.search(r"(^|\s)%s(\s|$)" % re.escape(SUITE), line) for line in lines):
            found.append(path)
    return found


def add_source(say):
    """The source files naming bookworm-backports; adds ours when there is none."""
    found = source_files()
    if found:
        return found
    if os.geteuid() != 0:
        raise Unavailable("no apt source names %s and adding %s needs root" % (SUITE, SOURCE_FILE))
    if not os.path.exists("/usr/share/keyrings/debian-archive-keyring.gpg"):
        raise Unavailable("no /usr/share/keyrings/debian-archive-keyring.gpg (package debian-archive-keyring)")
    tmp = SOURCE_FILE + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(SOURCE_TEXT)
    os.rename(tmp, SOURCE_FILE)
    say("qemu-backports: added %s" % SOURCE_FILE)
    return [SOURCE_FILE]


def apt_update(files, say):
    """``apt-get update`` of the given source files only (the other lists are kept)."""
    if os.geteuid() != 0:
        raise Unavailable("apt-get update of %s needs root" % SUITE)
    start = time.monotonic()
    for path in files:
        rel = os.path.relpath(path, "/etc/apt")
        proc = _run(["apt-get", "update", "-o", "Dir::Etc::sourcelist=%s" % rel, "-o", "Dir::Etc::sourceparts=-",
                     "-o", "APT::Get::List-Cleanup=0"])
        if proc.returncode != 0 or re.search(r"^(E|W): .*(Failed to fetch|not signed|NO_PUBKEY)", proc.stdout + proc.stderr,
                                             re.M):
            raise Unavailable("apt-get update of %s failed (no network?): %s" % (path, _why(proc)))
    say("qemu-backports: apt-get update of %s: %.1f s" % (", ".join(files), time.monotonic() - start))


def backports_version(package):
    """The version of ``package`` apt knows in bookworm-backports, or None."""
    proc = _run(["apt-cache", "policy", package], timeout=60)
    if proc.returncode != 0:
        return None
    version = None
    for line in proc.stdout.splitlines():
        match = re.match(r"^\s+(?:\*\*\* )?(\S+) (-?\d+)$", line)
        if match:
            version = match.group(1)
        elif version and re.search(r"\s%s/main\s" % re.escape(SUITE), line):
            return version
    return None


def cached_versions():
    root = cache_root()
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if complete(os.path.join(root, name)))


def complete(vdir):
    return os.path.isfile(os.path.join(vdir, "complete.json")) and os.access(wrapper_path(vdir), os.X_OK)


def wrapper_path(vdir):
    return os.path.join(vdir, "bin", "qemu-system-x86_64")


def _version_dir_name(version):
    return version.replace(":", "_").replace("/", "_")


def download(version, dest, say):
    """The .debs of ``version`` (and its firmware) into ``dest``; [(package, version, file)]."""
    specs = ["%s=%s" % (QEMU_PACKAGE, version)] + ["%s=%s" % (name, version) for name in SAME_VERSION]
    for name, suite in FIRMWARE:
        own = backports_version(name) if suite else None
        specs.append("%s=%s" % (name, own) if own else name)
    # apt's _apt user cannot write into root's private temporary directory: let it.
    os.chmod(dest, 0o777)
    start = time.monotonic()
    proc = _run(["apt-get", "download"] + specs, cwd=dest)
    if proc.returncode != 0:
        raise Unavailable("apt-get download %s failed: %s" % (" ".join(specs), _why(proc)))
    debs = sorted(glob.glob(os.path.join(dest, "*.deb")))
    got = []
    for deb in debs:
        fields = _run(["dpkg-deb", "-f", deb, "Package", "Version"], timeout=60).stdout.split("\n")
        got.append(tuple(f.split(": ", 1)[-1] for f in fields[:2]) + (deb,))
    missing = {s.split("=")[0] for s in specs} - {g[0] for g in got}
    if missing:
        raise Unavailable("apt-get download gave no %s" % ", ".join(sorted(missing)))
    say("qemu-backports: downloaded %s (%.1f s)" % (", ".join("%s %s" % g[:2] for g in got), time.monotonic() - start))
    return got


def write_wrapper(vdir):
    root = os.path.join(vdir, "root")
    data = " ".join("-L '%s'" % os.path.join(root, d) for d in DATA_DIRS if os.path.isdir(os.path.join(root, d)))
    path = wrapper_path(vdir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("#!/bin/sh\n# bookworm-backports' QEMU unpacked here (tests/xenvm/qemu_backports.py)\n"
                     "QEMU_MODULE_DIR='%s'\nexport QEMU_MODULE_DIR\nexec '%s' %s \"$@\"\n"
                     % (os.path.join(root, MODULE_DIR), os.path.join(root, BINARY), data))
    os.chmod(path, 0o755)
    return path


def check(vdir):
    """Unavailable unless the unpacked QEMU runs here and has igb and pcie-root-port."""
    binary = os.path.join(vdir, "root", BINARY)
    ldd = _run(["ldd", binary], timeout=60)
    missing = sorted({line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line})
    if missing:
        raise Unavailable("bookworm-backports' QEMU needs shared libraries not installed here: %s "
                          "(apt-get install the packages that hold them)" % " ".join(missing))
    wrapper = wrapper_path(vdir)
    version = _run([wrapper, "--version"], timeout=60)
    if version.returncode != 0:
        raise Unavailable("%s --version failed: %s" % (wrapper, _why(version)))
    for device in ("igb", "pcie-root-port"):
        proc = _run([wrapper, "-device", "%s,help" % device], timeout=60)
        if not _lists_device(proc, device):
            raise Unavailable("%s has no %s device: %s" % (wrapper, device, _why(proc)))
    return version.stdout.splitlines()[0].strip()


def unpack(version, say):
    """Download and unpack ``version`` into the cache; its directory."""
    root = cache_root()
    vdir = os.path.join(root, _version_dir_name(version))
    work = vdir + ".work"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "root"))
    with tempfile.TemporaryDirectory(prefix="qemu-backports-") as debs:
        got = download(version, debs, say)
        for _name, _version, deb in got:
            proc = _run(["dpkg-deb", "-x", deb, os.path.join(work, "root")], timeout=120)
            if proc.returncode != 0:
                raise Unavailable("dpkg-deb -x %s failed: %s" % (os.path.basename(deb), _why(proc)))
    shutil.rmtree(os.path.join(work, "root", "usr", "share", "doc"), ignore_errors=True)
    write_wrapper(work)
    banner = check(work)
    with open(os.path.join(work, "complete.json"), "w", encoding="utf-8") as handle:
        json.dump({"version": version, "packages": {n: v for n, v, _deb in got}, "banner": banner,
                   "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, handle, indent=1, sort_keys=True)
    shutil.rmtree(vdir, ignore_errors=True)
    # The wrapper names its own directory: written again at the final path.
    os.rename(work, vdir)
    write_wrapper(vdir)
    say("qemu-backports: %s in %s" % (banner, vdir))
    return vdir


def ensure(say=None):
    """Path of the wrapper of bookworm-backports' QEMU (see the module's
    docstring).  Raises Unavailable."""
    try:
        return _ensure(say or (lambda line: None))
    except OSError as exc:
        raise Unavailable("%s: %s" % (type(exc).__name__, exc)) from None


def _ensure(say):
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        version = backports_version(QEMU_PACKAGE)
        cached = cached_versions()
        if version and _version_dir_name(version) in cached:
            return wrapper_path(os.path.join(root, _version_dir_name(version)))
        if version is None and cached:
            # apt does not know bookworm-backports (yet or any more): what we have.
            say("qemu-backports: apt knows no %s %s; using the cached %s" % (SUITE, QEMU_PACKAGE, cached[-1]))
            return wrapper_path(os.path.join(root, cached[-1]))
        if not os.path.exists("/etc/debian_version") or shutil.which("apt-get") is None:
            raise Unavailable("not a Debian system with apt (bookworm-backports' QEMU needs bookworm's libraries)")
        files = add_source(say)
        if version is None:
            apt_update(files, say)
            version = backports_version(QEMU_PACKAGE)
            if version is None:
                raise Unavailable("apt knows no %s in %s after apt-get update of %s"
                                  % (QEMU_PACKAGE, SUITE, ", ".join(files)))
        try:
            vdir = unpack(version, say)
        except Unavailable as first:
            # The lists may name a version the archive no longer has: once more after an update.
            say("qemu-backports: %s; apt-get update and again" % first)
            apt_update(files, say)
            version = backports_version(QEMU_PACKAGE)
            if version is None:
                raise Unavailable("%s; and apt knows no %s in %s after apt-get update" % (first, QEMU_PACKAGE, SUITE)) \
                    from None
            vdir = unpack(version, say)
        return wrapper_path(vdir)


def _lists_device(proc, device):
    """Whether ``-device <device>,help`` answered with the device's options
    (QEMU 7.2 exits 0 also for "Device 'igb' not found")."""
    return proc.returncode == 0 and proc.stdout.startswith("%s options:" % device) and "not found" not in proc.stderr


def has_device(qemu, device):
    """True when the QEMU ``qemu`` (path or name) has ``-device <device>``."""
    path = shutil.which(qemu)
    if path is None:
        return False
    try:
        return _lists_device(_run([path, "-device", "%s,help" % device], timeout=60), device)
    except Unavailable:
        return False


def main():
    try:
        print(ensure(say=lambda line: sys.stderr.write(line + "\n")))
    except Unavailable as exc:
        sys.stderr.write("qemu-backports: UNAVAILABLE: %s\n" % exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build the real-Xen test image from Debian packages.

Artifacts, in ``<cache>/<recipe hash>/``:

- ``xen``: the Xen 4.17 hypervisor as a plain ELF (QEMU's multiboot loader
  cannot take the .gz Debian ships);
- ``vmlinuz``: the bookworm kernel, for dom0 and the PV domU;
- ``initrd.gz``: a busybox initramfs; ``xenvm=domu`` on the kernel command
  line selects the guest mode (load xen-pcifront, stay in the initramfs and
  publish ``/sys/bus/pci/devices`` to the guest's xenstore ``data/``);
- ``dom0.ext4``: the dom0 root filesystem (mmdebstrap minbase + Xen tools);
- ``id_ed25519``: the ssh key root in dom0 accepts;
- ``manifest.json``: package versions and build timings.

The recipe hash covers this file and the initramfs init script, so editing
either rebuilds; otherwise a cached image is reused.  Every external command
runs with a timeout.  Needs root (mmdebstrap --mode=root, chroot), apt with
bookworm indices, mmdebstrap, kmod (modprobe/depmod), e2fsprogs, ssh-keygen.

CLI: ``python3 tests/xenvm/build_image.py [--cache DIR] [--force]`` prints
the image directory.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPE_FILES = ("build_image.py", "initramfs-init.sh")

SUITE = "bookworm"
XEN_PACKAGE = "xen-hypervisor-4.17-amd64"
XEN_GZ = "boot/xen-4.17-amd64.gz"
KERNEL_META = "linux-image-amd64"
ROOTFS_PACKAGES = ("systemd-sysv", "udev", "kmod", "openssh-server", "xen-utils-4.17", "xenstore-utils", "python3",
                   "python3-pyxs", "iproute2", "pciutils", "procps", "busybox", "qemu-system-xen")
# dom0 modules (backends, the virtio disk/NIC, the e1000 dom0 holds, igb and
# igbvf for the SR-IOV test's 82576 PF and its VFs, on QEMU's igb) plus the
# guest's pcifront, all copied into the rootfs with their dependencies.
DOM0_MODULES = ("xenfs", "xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xen-pciback", "xen-blkback",
                "xen-netback", "virtio_pci", "virtio_blk", "virtio_net", "ext4", "e1000", "igb", "igbvf")
# What the initramfs loads itself: only what mounting the root needs in dom0
# (front-end drivers there stalled boot by ~20 s), pcifront in the guest.
INITRD_DOM0_MODULES = ("virtio_pci", "virtio_blk", "ext4")
INITRD_DOMU_MODULES = ("xen-pcifront",)
GUEST_XENSTORE_TOOLS = ("xenstore-write", "xenstore-read")

MAC = "52:54:00:12:34:56"        # the ssh NIC; xenvm.py gives QEMU the same
READY_MARKER = "XENVM-READY"
NOT_READY_MARKER = "XENVM-NOT-READY"

DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
                 "/usr/share/lintian/*")


class BuildError(Exception):
    """A build step failed; the message says which and why."""


def recipe_hash():
    digest = hashlib.sha256()
    for name in RECIPE_FILES:
        with open(os.path.join(HERE, name), "rb") as handle:
            digest.update(name.encode() + b"\0" + handle.read() + b"\0")
    return digest.hexdigest()[:16]


def default_cache_root():
    base = os.environ.get("XEN_PCI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "xen-pci")
    return os.path.join(base, "xenvm")


def image_dir(cache_root=None):
    return os.path.join(cache_root or default_cache_root(), recipe_hash())


ARTIFACTS = ("xen", "vmlinuz", "initrd.gz", "dom0.ext4", "id_ed25519", "manifest.json")


def image_complete(path):
    return all(os.path.isfile(os.path.join(path, name)) for name in ARTIFACTS)


class Builder:
    def __init__(self, out, log=None):
        self.out = out
        self.work = out + ".work"
        self.log = log or sys.stderr
        self.timings = {}
        self.versions = {}

    def say(self, text):
        self.log.write("build-image: %s\n" % text)
        self.log.flush()

    def run(self, argv, timeout, cwd=None, capture=False):
        """Run a command bounded by ``timeout``; its output goes to our log unless captured."""
        try:
            proc = subprocess.run(argv, cwd=cwd, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE if capture else self.log,
                                  stderr=subprocess.PIPE if capture else self.log)
        except subprocess.TimeoutExpired:
            raise BuildError("%s: timed out after %ds" % (" ".join(argv[:3]), timeout)) from None
        except OSError as exc:
            raise BuildError("%s: cannot run: %s" % (argv[0], exc)) from None
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")[-2000:] if capture else "(see the output above)"
            raise BuildError("%s exited %d: %s" % (" ".join(argv), proc.returncode, err))
        return proc.stdout.decode(errors="replace") if capture else ""

    def step(self, name, fn, *args):
        start = time.monotonic()
        self.say("%s..." % name)
        result = fn(*args)
        self.timings[name] = round(time.monotonic() - start, 1)
        self.say("%s: %.1f s" % (name, self.timings[name]))
        return result

    # -- steps ------------------------------------------------------------

    def kernel_package(self):
        text = self.run(["apt-cache", "depends", KERNEL_META], timeout=60, capture=True)
        found = re.findall(r"Depends:\s+(linux-image-6\.1\.0-[0-9]+-amd64)\b", text)
        if not found:
            raise BuildError("apt-cache depends %s names no linux-image-6.1.0-*-amd64 (apt indices missing?): %s"
                             % (KERNEL_META, text.strip()[:300]))
        return found[0]

    def download(self, packages):
        debs = os.path.join(self.work, "debs")
        os.makedirs(debs, exist_ok=True)
        # apt drops privileges to _apt for downloads when it can reach the directory
        os.chmod(debs, 0o777)
        try:
            self.run(["apt-get", "download", "-q"] + list(packages), timeout=600, cwd=debs)
        except BuildError:
            self.say("apt-get download failed; refreshing the indices once")
            self.run(["apt-get", "update", "-q"], timeout=300)
            self.run(["apt-get", "download", "-q"] + list(packages), timeout=600, cwd=debs)
        found = {}
        for package in packages:
            match = glob.glob(os.path.join(debs, "%s_*.deb" % package))
            if len(match) != 1:
                raise BuildError("expected one .deb of %s in %s, found %s" % (package, debs, match))
            found[package] = match[0]
            self.versions[package] = urllib.parse.unquote(os.path.basename(match[0]).split("_")[1])
        return found

    def extract(self, deb, name):
        dest = os.path.join(self.work, "x-" + name)
        self.run(["dpkg-deb", "-x", deb, dest], timeout=300)
        return dest

    def hypervisor(self, tree):
        src = os.path.join(tree, XEN_GZ)
        with gzip.open(src, "rb") as fin, open(os.path.join(self.work, "xen"), "wb") as fout:
            shutil.copyfileobj(fin, fout)

    def ssh_key(self):
        key = os.path.join(self.work, "id_ed25519")
        self.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "xen-pci-xenvm", "-f", key], timeout=60)

    def rootfs(self, root):
        sources = sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
        if os.path.isfile("/etc/apt/sources.list") and os.path.getsize("/etc/apt/sources.list"):
            sources.insert(0, "/etc/apt/sources.list")
        if not sources:
            raise BuildError("no apt sources on this host (/etc/apt/sources.list.d/*.sources)")
        argv = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory", "-q",
                "--include=" + ",".join(ROOTFS_PACKAGES), '--aptopt=APT::Install-Recommends "false"']
        argv += ["--dpkgopt=path-exclude=%s" % pattern for pattern in DPKG_EXCLUDES]
        argv += ["--dpkgopt=path-include=/usr/share/locale/locale.alias"]
        argv += [SUITE, root] + sources
        self.run(argv, timeout=900)

    def modules(self, ktree, root):
        """Copy the closure of DOM0_MODULES (+ pcifront) into the rootfs; depmod there."""
        kvers = os.listdir(os.path.join(ktree, "lib", "modules"))
        if len(kvers) != 1:
            raise BuildError("expected one kernel version in the kernel package, found %s" % kvers)
        kver = kvers[0]
        self.versions["kernel-release"] = kver
        self.run(["depmod", "-b", ktree, kver], timeout=300)
        wanted = set(DOM0_MODULES) | set(INITRD_DOMU_MODULES)
        order = {}
        for module in sorted(wanted) + list(INITRD_DOM0_MODULES) + list(INITRD_DOMU_MODULES):
            order[module] = self.closure(ktree, kver, module)
        mdir = os.path.join("lib", "modules", kver)
        for paths in order.values():
            for path in paths:
                rel = os.path.relpath(path, ktree)
                dest = os.path.join(root, rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copy2(path, dest)
        for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
            src = os.path.join(ktree, mdir, name)
            if os.path.exists(src):
                shutil.copy2(src, os.path.join(root, mdir, name))
        self.run(["depmod", "-b", root, kver], timeout=300)
        shutil.copy2(glob.glob(os.path.join(ktree, "boot", "vmlinuz-*"))[0], os.path.join(self.work, "vmlinuz"))
        return kver, order

    def closure(self, ktree, kver, module):
        text = self.run(["modprobe", "-d", ktree, "-S", kver, "--show-depends", module], timeout=60, capture=True)
        paths = []
        for line in text.splitlines():
            parts = line.split()
            if parts and parts[0] == "insmod":
                paths.append(parts[1])
        return paths            # empty for a built-in module

    def customize(self, root):
        """Make the minbase rootfs a dom0: ssh key, network, readiness marker."""
        ssh_dir = os.path.join(root, "root", ".ssh")
        os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
        shutil.copy(os.path.join(self.work, "id_ed25519.pub"), os.path.join(ssh_dir, "authorized_keys"))
        os.chmod(os.path.join(ssh_dir, "authorized_keys"), 0o600)
        files = {
            "etc/hostname": "xenvm-dom0\n",
            "etc/fstab": "/dev/vda / ext4 rw,errors=remount-ro 0 0\n",
            "etc/ssh/sshd_config.d/xenvm.conf": "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n",
            # the NIC QEMU forwards ssh to is matched by MAC: the e1000 at 00:12.0 is a test device
            "etc/systemd/network/10-xenvm.network": ("[Match]\nMACAddress=%s\n\n[Network]\nAddress=10.0.2.15/24\n"
                                                     "Gateway=10.0.2.2\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n" % MAC),
            # xl pci-assignable-add needs pciback; the init script loads the rest
            "etc/modules-load.d/xenvm.conf": "xen-privcmd\nxen-gntalloc\nxen-pciback\n",
            "etc/systemd/journald.conf.d/xenvm.conf": "[Journal]\nStorage=volatile\n",
            "usr/local/sbin/xenvm-ready": (
                "#!/bin/sh\n"
                "# One line on the console once the Xen tools answer: the harness waits for it.\n"
                "if timeout 30 xl list 0 >/dev/null 2>&1 && timeout 10 xenstore-read /local/domain/0/domid >/dev/null 2>&1; then\n"
                "    echo \"%s uptime=$(cut -d' ' -f1 /proc/uptime)\" >/dev/hvc0\n"
                "else\n"
                "    echo \"%s: xl list 0 or xenstore-read failed\" >/dev/hvc0\n"
                "fi\n" % (READY_MARKER, NOT_READY_MARKER)),
            "etc/systemd/system/xenvm-ready.service": (
                "[Unit]\nDescription=xen-pci test harness readiness marker\n"
                "Wants=xen.service ssh.service systemd-networkd.service\n"
                "After=xen.service ssh.service systemd-networkd.service systemd-modules-load.service\n\n"
                "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/local/sbin/xenvm-ready\n\n"
                "[Install]\nWantedBy=multi-user.target\n"),
        }
        for rel, text in files.items():
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        os.chmod(os.path.join(root, "usr/local/sbin/xenvm-ready"), 0o755)
        # Guest consoles to /var/log/xen/console/guest-<name>.log, for diagnostics.
        with open(os.path.join(root, "etc/default/xen"), "a", encoding="utf-8") as handle:
            handle.write('XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"\n')
        self.run(["systemctl", "--root", root, "enable", "systemd-networkd.service", "xenvm-ready.service"], timeout=60)
        # Timers that would compete for the emulated CPUs during a test.
        # Units that only slow the emulated boot down or compete for its CPUs.
        self.run(["systemctl", "--root", root, "mask", "apt-daily.timer", "apt-daily-upgrade.timer",
                  "e2scrub_all.timer", "fstrim.timer", "e2scrub_reap.service", "xendomains.service",
                  "getty-static.service", "systemd-networkd-wait-online.service"], timeout=60)
        self.versions["rootfs"] = self.run(["chroot", root, "dpkg-query", "-W", "-f", "${Package}=${Version} ",
                                            "xen-utils-4.17", "python3-pyxs", "python3", "openssh-server"],
                                           timeout=60, capture=True).strip()

    def initramfs(self, root, busybox_tree, kver, order):
        entries = []        # (name in archive, mode, data or None, rdev)

        def add_dir(name):
            entries.append((name, stat.S_IFDIR | 0o755, None, 0))

        for name in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib64", "etc", "tmp", "run", "modules"):
            add_dir(name)
        entries.append(("dev/console", stat.S_IFCHR | 0o600, None, os.makedev(5, 1)))
        with open(os.path.join(HERE, "initramfs-init.sh"), "rb") as handle:
            entries.append(("init", stat.S_IFREG | 0o755, handle.read(), 0))
        with open(os.path.join(busybox_tree, "bin", "busybox"), "rb") as handle:
            entries.append(("bin/busybox", stat.S_IFREG | 0o755, handle.read(), 0))
        # /init's interpreter; init installs the other applets itself
        entries.append(("bin/sh", stat.S_IFLNK | 0o777, b"busybox", 0))
        lists = {}
        seen = set()
        for mode, wanted in (("dom0", INITRD_DOM0_MODULES), ("domu", INITRD_DOMU_MODULES)):
            names = []
            for module in wanted:
                for path in order[module]:
                    base = os.path.basename(path)
                    data = open(path, "rb").read()      # pylint: disable=consider-using-with
                    if base.endswith(".xz"):            # busybox insmod takes plain .ko only
                        data, base = lzma.decompress(data), base[:-3]
                    if base not in seen:
                        seen.add(base)
                        entries.append(("modules/" + base, stat.S_IFREG | 0o644, data, 0))
                    if base not in names:
                        names.append(base)
            lists[mode] = names
            entries.append(("etc/modules-" + mode, stat.S_IFREG | 0o644, "".join(n + "\n" for n in names).encode(), 0))
        entries.append(("etc/kernel-release", stat.S_IFREG | 0o644, (kver + "\n").encode(), 0))
        # The guest publishes what it sees with the rootfs's own xenstore client
        # (it goes through /dev/xen/xenbus in a domU): the binary and its libraries.
        for tool in GUEST_XENSTORE_TOOLS:
            target = os.path.realpath(os.path.join(root, "usr/bin", tool))
            if not target.startswith(os.path.realpath(root)):
                raise BuildError("%s resolves outside the rootfs: %s" % (tool, target))
            entries.append(("bin/" + tool, stat.S_IFREG | 0o755, open(target, "rb").read(), 0))  # pylint: disable=consider-using-with
        libs = self.run(["chroot", root, "/lib64/ld-linux-x86-64.so.2", "--list", "/usr/bin/" + GUEST_XENSTORE_TOOLS[0]],
                        timeout=60, capture=True)
        for line in libs.splitlines():
            match = re.search(r"(/\S+)\s+\(0x", line)
            if not match:
                continue
            path = match.group(1)
            inside = os.path.realpath(os.path.join(root, path.lstrip("/")))
            dest = "lib64/" + os.path.basename(path) if path.startswith("/lib64/") else "lib/" + os.path.basename(path)
            entries.append((dest, stat.S_IFREG | 0o755, open(inside, "rb").read(), 0))  # pylint: disable=consider-using-with
        out = os.path.join(self.work, "initrd.gz")
        with gzip.open(out, "wb", compresslevel=6) as handle:
            handle.write(newc_archive(entries))
        self.versions["initrd-modules"] = lists
        guest = os.path.join(root, "var", "lib", "xenvm")
        os.makedirs(guest, exist_ok=True)
        shutil.copy2(out, os.path.join(guest, "initrd.gz"))
        shutil.copy2(os.path.join(self.work, "vmlinuz"), os.path.join(guest, "vmlinuz"))

    def filesystem(self, root):
        used = int(self.run(["du", "-s", "-B1", "-x", root], timeout=120, capture=True).split()[0])
        size_mb = used * 13 // 10 // (1 << 20) + 256
        img = os.path.join(self.work, "dom0.ext4")
        self.run(["mkfs.ext4", "-q", "-F", "-L", "xenvm-dom0", "-d", root, img, "%dM" % size_mb], timeout=600)
        self.versions["dom0.ext4-size-mb"] = size_mb

    # -- driver -----------------------------------------------------------

    def build(self):
        start = time.monotonic()
        if os.path.exists(self.work):
            shutil.rmtree(self.work)
        os.makedirs(self.work)
        kernel = self.step("resolve kernel package", self.kernel_package)
        debs = self.step("download packages", self.download, [XEN_PACKAGE, kernel, "busybox-static"])
        xen_tree = self.step("extract xen", self.extract, debs[XEN_PACKAGE], "xen")
        self.step("gunzip hypervisor", self.hypervisor, xen_tree)
        ktree = self.step("extract kernel", self.extract, debs[kernel], "kernel")
        bb_tree = self.step("extract busybox-static", self.extract, debs["busybox-static"], "busybox")
        self.step("ssh key", self.ssh_key)
        root = os.path.join(self.work, "rootfs")
        self.step("mmdebstrap rootfs", self.rootfs, root)
        self.step("customize rootfs", self.customize, root)
        kver, order = self.step("kernel modules", self.modules, ktree, root)
        self.step("initramfs", self.initramfs, root, bb_tree, kver, order)
        self.step("mkfs.ext4", self.filesystem, root)
        for name in ("rootfs", "debs", "x-xen", "x-kernel", "x-busybox"):
            shutil.rmtree(os.path.join(self.work, name), ignore_errors=True)
        self.timings["total"] = round(time.monotonic() - start, 1)
        with open(os.path.join(self.work, "manifest.json"), "w", encoding="utf-8") as handle:
            json.dump({"recipe": os.path.basename(self.out), "versions": self.versions, "timings": self.timings,
                       "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, handle, indent=2, sort_keys=True)
        os.rename(self.work, self.out)
        self.say("image ready in %s (%.1f s)" % (self.out, self.timings["total"]))


def newc_archive(entries):
    """A cpio "newc" archive (what the kernel unpacks as an initramfs)."""
    out = bytearray()

    def pad4():
        out.extend(b"\0" * (-len(out) % 4))

    def header(ino, mode, size, rdev, name):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, size, 0, 0, os.major(rdev), os.minor(rdev), len(raw), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(raw)
        pad4()

    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        data = data or b""
        header(ino, mode, len(data), rdev, name)
        out.extend(data)
        pad4()
    header(0, 0, 0, 0, "TRAILER!!!")
    return bytes(out)


def ensure_image(cache_root=None, force=False, log=None, lock_timeout=1200.0):
    """The image directory, built if missing (or if ``force``).  Raises BuildError."""
    path = image_dir(cache_root)
    if image_complete(path) and not force:
        return path
    if os.geteuid() != 0:
        raise BuildError("building the image needs root (mmdebstrap --mode=root, chroot); run as root or prebuild it")
    for tool in ("mmdebstrap", "modprobe", "depmod", "mkfs.ext4", "ssh-keygen", "apt-get", "dpkg-deb", "chroot"):
        if shutil.which(tool) is None:
            raise BuildError("%s is not installed (apt-get install mmdebstrap kmod e2fsprogs openssh-client)" % tool)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w", encoding="utf-8") as lock:
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildError("another build of %s holds %s.lock for over %ds" % (path, path, lock_timeout)) from None
                time.sleep(1)
        if image_complete(path) and not force:
            return path          # built by whoever held the lock
        if os.path.exists(path):
            shutil.rmtree(path)
        Builder(path, log=log).build()
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--cache", help="cache root (default: %s)" % default_cache_root())
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached image exists")
    args = parser.parse_args(argv)
    try:
        path = ensure_image(args.cache, force=args.force)
    except BuildError as exc:
        sys.stderr.write("build-image: FAILED: %s\n" % exc)
        return 1
    sys.stdout.write(path + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

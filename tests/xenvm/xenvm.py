# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Boot real Xen 4.17 with a PV dom0 under QEMU and drive it over ssh.

Library::

    with XenVM.booted() as vm:            # builds/reuses the image, boots, waits
        out = vm.ssh("xl info", timeout=30)

``Unavailable`` means the harness cannot run here (no QEMU, image cannot be
built, boot failed twice): callers skip with its message, loudly.

CLI (``python3 tests/xenvm/xenvm.py ...``): ``build``, ``boot`` (leaves QEMU
running, state in ``--state``), ``ssh -- CMD``, ``stop``.

QEMU runs TCG by default: ``/dev/kvm`` may be kvm-pvm (no VT-x/AMD-V), under
which Xen hangs building dom0; KVM is used only when the host has
kvm_intel/kvm_amd and the CPU flag, or ``XENVM_ACCEL=kvm`` forces it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import io
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import build_image  # noqa: E402  pylint: disable=wrong-import-position

QEMU = "qemu-system-x86_64"
XEN_CMDLINE = ("console=com1 com1=115200,8n1 dom0_mem=512M,max:512M dom0_max_vcpus=2 bootscrub=0 "
               "loglvl=all guest_loglvl=all")
DOM0_CMDLINE = "root=/dev/vda rw console=hvc0 earlyprintk=xen"
READY_TIMEOUT = 120.0
# Serial-log lines that mean this boot will never become ready: retry at once.
FATAL_PATTERNS = ("Panic on CPU", "Kernel panic", "XENVM-NOT-READY", "cannot mount", "(XEN) Reboot in")


class Unavailable(Exception):
    """The real-Xen harness cannot run here; the message says why."""


class BootFailed(Exception):
    """One boot attempt failed; the message quotes the serial log."""


def kvm_usable():
    """(usable, why).  Only a hardware-virtualization KVM can run Xen."""
    forced = os.environ.get("XENVM_ACCEL", "").lower()
    if forced in ("tcg", "kvm"):
        return forced == "kvm", "XENVM_ACCEL=%s" % forced
    if not os.path.exists("/dev/kvm"):
        return False, "no /dev/kvm"
    if os.path.isdir("/sys/module/kvm_pvm"):
        return False, "/dev/kvm is kvm-pvm (no VT-x/AMD-V): Xen hangs building dom0 there"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        flags = ""
    for module, flag in (("kvm_intel", " vmx"), ("kvm_amd", " svm")):
        if os.path.isdir("/sys/module/" + module) and flag in flags:
            return True, module
    return False, "/dev/kvm is not kvm_intel/kvm_amd on a CPU with vmx/svm"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def image_or_unavailable(cache_root=None, build=True):
    """The image directory; builds it if allowed.  Raises Unavailable."""
    path = build_image.image_dir(cache_root)
    if build_image.image_complete(path):
        return path
    if not build:
        raise Unavailable("no xenvm image at %s and building is disabled" % path)
    try:
        return build_image.ensure_image(cache_root)
    except build_image.BuildError as exc:
        raise Unavailable("the xenvm image cannot be built: %s" % exc) from None


class XenVM:
    """One QEMU running Xen + dom0.  ``stop()`` always kills QEMU."""

    def __init__(self, image, workdir=None, memory=1024, smp=2):
        self.image = image
        self.workdir = workdir or os.path.join(image, "..", "run-%d" % os.getpid())
        self.memory = memory
        self.smp = smp
        self.proc = None
        self.pid = None
        self.port = None
        self.serial_log = None
        self.boot_seconds = None
        self.attempts = []          # one line per boot attempt, for the report
        self.accel = "tcg"
        self.key = os.path.join(image, "id_ed25519")
        # One ssh master connection for every command: a new connection costs
        # about 2.5 s of key exchange on dom0's emulated CPU, a multiplexed
        # one 0.3 s.  Short path: unix socket names are limited to 108 bytes;
        # the socket's name (%C) hashes host, port and user.
        self.control_dir = os.path.join(tempfile.gettempdir(), "xenvm-ssh-%d" % os.getuid())

    # -- boot -------------------------------------------------------------

    def qemu_argv(self):
        qemu = shutil.which(QEMU)
        if qemu is None:
            raise Unavailable("%s is not installed (apt-get install qemu-system-x86)" % QEMU)
        use_kvm, why = kvm_usable()
        self.accel = "kvm" if use_kvm else "tcg"
        accel = "kvm" if use_kvm else "tcg,thread=multi,tb-size=256"
        img = self.image
        for name in ("xen", "vmlinuz", "initrd.gz", "dom0.ext4"):
            if "," in os.path.join(img, name):
                raise Unavailable("image path %s contains a comma (QEMU's -initrd list separator)" % img)
        # Multiboot modules are separated by ",": commas inside one module's
        # command line are doubled.
        modules = "%s %s,%s" % (os.path.join(img, "vmlinuz"), DOM0_CMDLINE.replace(",", ",,"), os.path.join(img, "initrd.gz"))
        return [
            qemu, "-name", "xen-pci-xenvm", "-machine", "q35", "-accel", accel,
            "-cpu", "max,-smap,-xsave" if not use_kvm else "host,-smap",
            "-m", str(self.memory), "-smp", str(self.smp),
            "-nodefaults", "-display", "none", "-vga", "none", "-no-reboot",
            "-device", "intel-iommu,intremap=on",
            "-kernel", os.path.join(img, "xen"), "-append", XEN_CMDLINE, "-initrd", modules,
            "-drive", "file=%s,format=raw,if=virtio,snapshot=on" % os.path.join(img, "dom0.ext4"),
            "-netdev", "user,id=n0,restrict=off,hostfwd=tcp:127.0.0.1:%d-:22" % self.port,
            "-device", "virtio-net-pci,netdev=n0,mac=%s" % build_image.MAC,
            "-netdev", "user,id=n1,restrict=on",
            "-device", "edu,addr=0x10", "-device", "pci-testdev,addr=0x11",
            "-device", "e1000,netdev=n1,addr=0x12",
            "-chardev", "file,id=ser0,path=%s" % self.serial_log, "-serial", "chardev:ser0",
        ], why

    def _start(self, attempt):
        os.makedirs(self.workdir, exist_ok=True)
        self.port = free_port()
        self.serial_log = os.path.join(self.workdir, "serial-%d.log" % attempt)
        if os.path.exists(self.serial_log):      # a previous run's: QEMU appends
            os.unlink(self.serial_log)
        argv, why = self.qemu_argv()
        with open(os.path.join(self.workdir, "qemu-%d.cmd" % attempt), "w", encoding="utf-8") as handle:
            handle.write(" ".join(shlex.quote(a) for a in argv) + "\n# accel: %s (%s)\n" % (self.accel, why))
        stderr = open(os.path.join(self.workdir, "qemu-%d.stderr" % attempt), "wb")  # pylint: disable=consider-using-with
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,  # pylint: disable=consider-using-with
                                         start_new_session=True)
        finally:
            stderr.close()
        self.pid = self.proc.pid

    def serial(self):
        try:
            with open(self.serial_log, "rb") as handle:
                return handle.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""

    def _wait_ready(self, timeout):
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            text = self.serial()
            if build_image.READY_MARKER + " " in text:
                return time.monotonic() - start
            for pattern in FATAL_PATTERNS:
                if pattern in text:
                    raise BootFailed("serial log shows %r: %s" % (pattern, tail(text)))
            if self.proc is not None and self.proc.poll() is not None:
                err = ""
                try:
                    with open(os.path.join(self.workdir, os.path.basename(self.serial_log).replace("serial", "qemu")
                                           .replace(".log", ".stderr")), encoding="utf-8", errors="replace") as handle:
                        err = handle.read()[-1500:]
                except OSError:
                    pass
                raise BootFailed("QEMU exited with %s: %s\n%s" % (self.proc.returncode, err.strip(), tail(text)))
            time.sleep(0.25)
        raise BootFailed("no %s on the serial console within %ds: %s" % (build_image.READY_MARKER, timeout, tail(self.serial())))

    def boot(self, timeout=READY_TIMEOUT, attempts=2):
        """Boot and wait for the readiness marker and ssh; retry once (a rare
        memory corruption of dom0 under TCG was seen).  Raises Unavailable after the last attempt."""
        for attempt in range(1, attempts + 1):
            start = time.monotonic()
            self._start(attempt)
            try:
                marker = self._wait_ready(timeout)
                self.wait_ssh(max(10.0, timeout - marker))
                self.boot_seconds = time.monotonic() - start
                self.attempts.append("attempt %d: ready in %.1f s (marker after %.1f s, accel %s)"
                                     % (attempt, self.boot_seconds, marker, self.accel))
                return self
            except BootFailed as exc:
                self.attempts.append("attempt %d FAILED after %.1f s: %s" % (attempt, time.monotonic() - start, exc))
                sys.stderr.write("xenvm: boot %s\n" % self.attempts[-1])
                self.stop()
        raise Unavailable("Xen did not boot in %d attempts:\n%s" % (attempts, "\n".join(self.attempts)))

    def wait_ssh(self, timeout):
        start = time.monotonic()
        last = None
        while time.monotonic() - start < timeout:
            try:
                proc = self.run("true", timeout=15, check=False)
                if proc.returncode == 0:
                    return
                last = proc.stderr.strip()
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
            time.sleep(0.5)
        raise BootFailed("ssh to 127.0.0.1:%d not answering within %ds: %s" % (self.port, timeout, last))

    # -- commands in dom0 ---------------------------------------------------

    def ssh_options(self):
        os.makedirs(self.control_dir, mode=0o700, exist_ok=True)
        return ["-q", "-i", self.key, "-p", str(self.port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
                "-o", "ServerAliveInterval=5", "-o", "LogLevel=ERROR", "-o", "ControlMaster=auto",
                "-o", "ControlPath=%s/%%C" % self.control_dir, "-o", "ControlPersist=300"]

    def ssh_argv(self, command):
        return ["ssh"] + self.ssh_options() + ["root@127.0.0.1", command]

    def run(self, command, timeout=60.0, check=True, stdin=None):
        """Run a shell command in dom0; CompletedProcess with text output.
        Raises subprocess.TimeoutExpired / CalledProcessError."""
        proc = subprocess.run(self.ssh_argv(command), input=stdin if stdin is not None else b"", capture_output=True,
                              timeout=timeout, check=False)
        out = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                          proc.stderr.decode(errors="replace"))
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, command, out.stdout, out.stderr)
        return out

    def ssh(self, command, timeout=60.0):
        """stdout of a command that must succeed."""
        return self.run(command, timeout=timeout).stdout

    def put_tree(self, files, dest, timeout=60.0):
        """Copy ``{relative path: bytes}`` under ``dest`` in dom0 (one tar over ssh)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for rel, data in sorted(files.items()):
                info = tarfile.TarInfo(rel)
                info.size = len(data)
                info.mode = 0o644
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(data))
        self.run("mkdir -p %s && tar -x -C %s" % (shlex.quote(dest), shlex.quote(dest)), timeout=timeout,
                 stdin=buf.getvalue())

    # -- teardown ---------------------------------------------------------

    def stop(self):
        """Kill QEMU (its whole process group), whatever state it is in."""
        self.close_ssh()
        pid, self.pid = self.pid, None
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None

    def close_ssh(self):
        """End the ssh master connection of this VM, if there is one."""
        if self.port is not None:
            subprocess.run(["ssh"] + self.ssh_options() + ["-O", "exit", "root@127.0.0.1"], capture_output=True,
                           timeout=15, check=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    @classmethod
    def booted(cls, cache_root=None, workdir=None, timeout=READY_TIMEOUT):
        """Build (or reuse) the image and boot it.  Raises Unavailable."""
        if shutil.which(QEMU) is None:
            raise Unavailable("%s is not installed (apt-get install qemu-system-x86)" % QEMU)
        if shutil.which("ssh") is None:
            raise Unavailable("ssh (openssh-client) is not installed")
        vm = cls(image_or_unavailable(cache_root), workdir=workdir)
        try:
            return vm.boot(timeout=timeout)
        except BaseException:
            vm.stop()
            raise


def tail(text, lines=25):
    return "\n".join(text.replace("\r", "").rstrip().splitlines()[-lines:])


# -- CLI ----------------------------------------------------------------------

def _state_path(args):
    return args.state or os.path.join(build_image.default_cache_root(), "cli-state.json")


def main(argv=None):
    parser = argparse.ArgumentParser(description="real Xen under QEMU for xen-pci tests")
    parser.add_argument("--cache", help="image cache root")
    parser.add_argument("--state", help="state file of a running VM (CLI boot/ssh/stop)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build (or reuse) the image; print its directory")
    boot = sub.add_parser("boot", help="boot and leave QEMU running")
    boot.add_argument("--timeout", type=float, default=READY_TIMEOUT)
    ssh = sub.add_parser("ssh", help="run a command in dom0")
    ssh.add_argument("--timeout", type=float, default=300.0)
    ssh.add_argument("--stdin", action="store_true", help="pass our standard input to the command")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("stop", help="kill the QEMU started by boot")
    args = parser.parse_args(argv)
    state_file = _state_path(args)
    try:
        if args.cmd == "build":
            print(image_or_unavailable(args.cache))
            return 0
        if args.cmd == "boot":
            vm = XenVM.booted(args.cache, workdir=os.path.join(os.path.dirname(state_file), "cli-run"),
                              timeout=args.timeout)
            vm.proc = None      # leave it running
            with open(state_file, "w", encoding="utf-8") as handle:
                json.dump({"pid": vm.pid, "port": vm.port, "image": vm.image, "serial": vm.serial_log}, handle)
            print("dom0 ready: ssh -i %s -p %d root@127.0.0.1 (%s)" % (vm.key, vm.port, "; ".join(vm.attempts)))
            return 0
        with open(state_file, encoding="utf-8") as handle:
            state = json.load(handle)
        vm = XenVM(state["image"])
        vm.pid, vm.port, vm.serial_log = state["pid"], state["port"], state["serial"]
        if args.cmd == "ssh":
            command = " ".join(shlex.quote(a) for a in args.command if a != "--") or "true"
            proc = vm.run(command, timeout=args.timeout, check=False, stdin=sys.stdin.buffer.read() if args.stdin else None)
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            return proc.returncode
        vm.stop()
        os.unlink(state_file)
        return 0
    except Unavailable as exc:
        sys.stderr.write("xenvm: UNAVAILABLE: %s\n" % exc)
        return 2
    except FileNotFoundError:
        sys.stderr.write("xenvm: no running VM (no %s); use boot first\n" % state_file)
        return 1


if __name__ == "__main__":
    sys.exit(main())

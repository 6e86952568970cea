# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Boot real Xen 4.17 with a PV dom0 under QEMU and drive it over ssh.

Library::

    with XenVM.booted() as vm:            # builds/reuses the image, boots, waits
        out = vm.ssh("xl info", timeout=30)

``Unavailable`` means the harness cannot run here (no QEMU, image cannot be
built, boot failed twice): callers skip with its message, loudly.

CLI (``python3 tests/xenvm/xenvm.py ...``): ``build``, ``boot`` (leaves QEMU
running, state in ``--state``; ``--qemu PATH|backports``, ``--cpu``,
``--qemu-args '...'`` for another QEMU and more devices), ``ssh -- CMD``,
``stop``, ``reap``.

Lifetime: a QEMU never outlives the process that started it (its owner).
QEMU runs in its own process group, is recorded in a pidfile under
``<cache>/qemu-pids/`` with its owner's pid and start time, and dies with its
owner on every path: ``stop()``, an exit handler, SIGTERM/SIGINT/SIGHUP
handlers, and ``PR_SET_PDEATHSIG`` (SIGKILL of the owner kills QEMU).  Every
boot first reaps the recorded QEMUs whose owner is dead and leaves all others
alone (another run's live VM, a VM the CLI left running on purpose).

Readiness, not fixed limits: a boot attempt waits for the marker as long as
the serial console makes progress; it fails when the console stays silent
for ``XENVM_STALL_TIMEOUT`` seconds, on a fatal line, or when the layer's
budget (``XENVM_DEADLINE``, an epoch time set from ``XENVM_TIMEOUT``) would
be spent, so a slow but healthy boot on a busy machine is not thrown away
and booted again.

QEMU runs TCG by default: ``/dev/kvm`` may be kvm-pvm (no VT-x/AMD-V), under
which Xen hangs building dom0; KVM is used only when the host has
kvm_intel/kvm_amd and the CPU flag, or ``XENVM_ACCEL=kvm`` forces it.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import ctypes.util
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
import threading
import io
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import build_image  # noqa: E402  pylint: disable=wrong-import-position

QEMU = "qemu-system-x86_64"
# One CPU for Xen (and so one vCPU for dom0) unless XENVM_SMP says otherwise.
# Under TCG each CPU is a host thread; on a busy host a preempted one leaves
# the other spinning on Xen's and dom0's locks. Measured beside two busy loops
# on a 2-core host: with 2 CPUs dom0 booted in 86 s and a guest came up in
# 30 s; with 1, in 32 s and 12 s (idle: 21/28 s and 9/10 s).
SMP = 1
XEN_CMDLINE = ("console=com1 com1=115200,8n1 dom0_mem=768M,max:768M dom0_max_vcpus=%d bootscrub=0 "
               "loglvl=all guest_loglvl=all")
DOM0_CMDLINE = "root=/dev/vda rw console=hvc0 earlyprintk=xen"
# Upper bound of one boot attempt (the layer's budget may cut it shorter).
READY_TIMEOUT = 600.0
# A boot attempt whose serial console shows nothing new for this long hangs.
STALL_TIMEOUT = float(os.environ.get("XENVM_STALL_TIMEOUT") or 150.0)
# Left of the layer's budget when a boot gives up, so that the layer ends
# with its report (a loud skip) instead of being killed by its time limit.
BUDGET_RESERVE = 60.0
PR_SET_PDEATHSIG = 1
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


# -- lifetime: no QEMU outlives its owner -------------------------------------

def process_start(pid):
    """Start time (clock ticks since boot) of the live process ``pid``; None
    when there is none (a zombie counts as gone).  With the pid it names one
    process for good: a pid reused later has another start time."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read()
    except (OSError, TypeError):
        return None
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def is_running(pid, start):
    return pid is not None and start is not None and process_start(pid) == start


def wait_gone(pid, start, timeout=10.0):
    """True once the process (pid, start) is gone, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while is_running(pid, start):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_qemu(pid, start):
    """SIGKILL the QEMU (pid, start) and its process group (it leads one);
    nothing when that process is gone or the pid now names another."""
    if not is_running(pid, start):
        return False
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def registry_dir(cache_root=None):
    """The pidfiles of the QEMUs started from this cache (one per QEMU)."""
    return os.path.join(cache_root or build_image.default_cache_root(), "qemu-pids")


def read_records(registry):
    """[(path, record)] of every pidfile in ``registry``."""
    records = []
    try:
        names = sorted(os.listdir(registry))
    except FileNotFoundError:
        return records
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(registry, name)
        try:
            with open(path, encoding="utf-8") as handle:
                records.append((path, json.load(handle)))
        except (OSError, ValueError):
            continue            # being written, or removed meanwhile
    return records


def reap_stale(registry, say=None):
    """Kill the recorded QEMUs whose owner is dead; drop the pidfiles of
    QEMUs that are gone.  A QEMU whose owner lives (another run's VM) and a
    detached one (``owner_pid`` null: ``xenvm.py boot``) are left alone.
    Returns the records of the QEMUs killed."""
    killed = []
    for path, record in read_records(registry):
        pid, start = record.get("qemu_pid"), record.get("qemu_start")
        if not is_running(pid, start):
            _unlink(path)
            continue
        owner = record.get("owner_pid")
        if owner is None or is_running(owner, record.get("owner_start")):
            continue
        kill_qemu(pid, start)
        if wait_gone(pid, start):
            _unlink(path)
        killed.append(record)
        if say:
            say("xenvm: killed QEMU %d of dead owner %d (%s)" % (pid, owner, record.get("workdir")))
    return killed


def processes():
    """(pid, argv as bytes) of every process that can still be read."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as handle:
                yield int(name), handle.read().split(b"\0")
        except OSError:
            continue


def unregistered_qemus(registry):
    """Pids of running ``-name xen-pci-xenvm`` QEMUs that no pidfile records
    (another checkout's older harness, or a leftover): reported, never killed."""
    known = {record.get("qemu_pid") for _path, record in read_records(registry)}
    return [pid for pid, argv in processes()
            if pid not in known and argv and os.path.basename(argv[0]) == QEMU.encode() and b"xen-pci-xenvm" in argv]


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_json(path, data):
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    os.rename(tmp, path)


def _die_with_parent(parent):
    """preexec_fn of QEMU: SIGKILL it when its parent (the owner) dies, even
    by SIGKILL; exit at once if the owner died before the request took."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def preexec():
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)     # pylint: disable=protected-access
    return preexec


# The VMs this process started and has not stopped or detached: stopped at
# exit and on SIGTERM/SIGINT/SIGHUP, before the signal takes its course.
_LIVE = {}
_PREVIOUS = {}


def stop_live():
    for vm in list(_LIVE.values()):
        try:
            vm.stop()
        except Exception:  # pylint: disable=broad-except
            pass


def _on_signal(signum, frame):
    stop_live()
    previous = _PREVIOUS.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def guard_process():
    """Install the exit and signal handlers once per process (signal
    handlers only from the main thread; pdeathsig covers the rest)."""
    if _PREVIOUS.get("installed"):
        return
    _PREVIOUS["installed"] = True
    atexit.register(stop_live)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        previous = signal.getsignal(signum)
        if previous is _on_signal or previous == signal.SIG_IGN:
            continue
        _PREVIOUS[signum] = previous
        signal.signal(signum, _on_signal)


# -- the layer's time budget ----------------------------------------------------

def budget_left():
    """Seconds left of the layer's budget (``XENVM_DEADLINE``), None if unbounded."""
    deadline = os.environ.get("XENVM_DEADLINE")
    if not deadline:
        return None
    return float(deadline) - time.time()


def image_or_unavailable(cache_root=None, build=True):
    """The image directory; builds it if allowed.  Raises Unavailable."""
    path = build_image.image_dir(cache_root)
    if build_image.image_complete(path):
        return path
    if not build:
        why = os.environ.get("XENVM_IMAGE_ERROR") or "building is disabled"
        raise Unavailable("no xenvm image at %s: %s" % (path, why))
    try:
        return build_image.ensure_image(cache_root)
    except build_image.BuildError as exc:
        raise Unavailable("the xenvm image cannot be built: %s" % exc) from None


class XenVM:
    """One QEMU running Xen + dom0.  ``stop()`` always kills QEMU."""

    def __init__(self, image, workdir=None, memory=2048, smp=None, die_with_owner=True, disk=None, qemu=None,
                 cpu=None, extra_args=()):
        self.image = image
        # Another QEMU than the system's (a path, e.g. qemu_backports.py's
        # wrapper), another ``-cpu`` value under TCG, and QEMU arguments
        # appended to ours (more devices): the defaults are unchanged.
        self.qemu = qemu
        self.cpu = cpu
        self.extra_args = list(extra_args)
        # dom0's disk: the image's, with every write thrown away (QEMU's
        # snapshot), or ``disk``, a writable copy that keeps them from one
        # boot to the next (a test of what survives a reboot).
        self.disk = disk
        self.workdir = workdir or os.path.join(image, "..", "run-%d" % os.getpid())
        self.memory = memory
        self.smp = smp or int(os.environ.get("XENVM_SMP") or SMP)
        # The image lies in <cache root>/<recipe hash>: the pidfiles beside it.
        self.registry = registry_dir(os.path.dirname(os.path.abspath(image)))
        # False only for the CLI's boot, whose QEMU outlives the CLI process
        # (it is detached once ready; killed at the next boot if the CLI dies first).
        self.die_with_owner = die_with_owner
        self.stall_timeout = STALL_TIMEOUT
        self.proc = None
        self.pid = None
        self.pid_start = None
        self.pidfile = None
        self.port = None
        self.serial_log = None
        self.boot_seconds = None
        self.attempts = []          # one line per boot attempt, for the report
        self.attempt_seconds = []   # seconds of each failed attempt
        self.accel = "tcg"
        self.key = os.path.join(image, "id_ed25519")
        # One ssh master connection for every command: a new connection costs
        # about 2.5 s of key exchange on dom0's emulated CPU, a multiplexed
        # one 0.3 s.  Short path: unix socket names are limited to 108 bytes;
        # the socket's name (%C) hashes host, port and user.
        self.control_dir = os.path.join(tempfile.gettempdir(), "xenvm-ssh-%d" % os.getuid())

    # -- boot -------------------------------------------------------------

    def qemu_binary(self):
        """The QEMU to run: ``self.qemu`` (a path or a name on PATH) or the system's."""
        qemu = shutil.which(self.qemu or QEMU)
        if qemu is None:
            if self.qemu:
                raise Unavailable("QEMU %s is not there or not executable" % self.qemu)
            raise Unavailable("%s is not installed (apt-get install qemu-system-x86)" % QEMU)
        return qemu

    def qemu_argv(self):
        qemu = self.qemu_binary()
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
            "-cpu", ("host,-smap" if use_kvm else self.cpu or "max,-smap,-xsave"),
            "-m", str(self.memory), "-smp", str(self.smp),
            "-nodefaults", "-display", "none", "-vga", "none", "-no-reboot",
            "-device", "intel-iommu,intremap=on",
            "-kernel", os.path.join(img, "xen"), "-append", XEN_CMDLINE % self.smp, "-initrd", modules,
            "-drive", ("file=%s,format=raw,if=virtio" % self.disk) if self.disk else
            "file=%s,format=raw,if=virtio,snapshot=on" % os.path.join(img, "dom0.ext4"),
            "-netdev", "user,id=n0,restrict=off,hostfwd=tcp:127.0.0.1:%d-:22" % self.port,
            "-device", "virtio-net-pci,netdev=n0,mac=%s" % build_image.MAC,
            "-netdev", "user,id=n1,restrict=on",
            "-device", "edu,addr=0x10", "-device", "pci-testdev,addr=0x11",
            "-device", "e1000,netdev=n1,addr=0x12",
            "-chardev", "file,id=ser0,path=%s" % self.serial_log, "-serial", "chardev:ser0",
        ] + self.extra_args, why

    def _start(self, attempt):
        os.makedirs(self.workdir, exist_ok=True)
        os.makedirs(self.registry, exist_ok=True)
        reap_stale(self.registry, say=sys.stderr.write)
        guard_process()
        self.port = free_port()
        self.serial_log = os.path.join(self.workdir, "serial-%d.log" % attempt)
        if os.path.exists(self.serial_log):      # a previous run's: QEMU appends
            os.unlink(self.serial_log)
        argv, why = self.qemu_argv()
        with open(os.path.join(self.workdir, "qemu-%d.cmd" % attempt), "w", encoding="utf-8") as handle:
            handle.write(" ".join(shlex.quote(a) for a in argv) + "\n# accel: %s (%s)\n" % (self.accel, why))
        stderr = open(os.path.join(self.workdir, "qemu-%d.stderr" % attempt), "wb")  # pylint: disable=consider-using-with
        try:
            # Its own process group: stop() kills the group; a terminal's or
            # timeout's signal to ours reaches it only through our handlers.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,  # pylint: disable=consider-using-with
                                         start_new_session=True,
                                         preexec_fn=_die_with_parent(os.getpid()) if self.die_with_owner else None)
        finally:
            stderr.close()
        self.pid = self.proc.pid
        self.pid_start = process_start(self.pid)
        _LIVE[self.pid] = self
        self.pidfile = os.path.join(self.registry, "%d.json" % self.pid)
        self._record(owner=os.getpid())

    def _record(self, owner):
        """The pidfile: QEMU and its owner (None: detached), each by pid and start time."""
        _write_json(self.pidfile, {
            "qemu_pid": self.pid, "qemu_start": self.pid_start, "owner_pid": owner,
            "owner_start": process_start(owner) if owner is not None else None,
            "owner_argv": sys.argv[:4], "workdir": self.workdir, "port": self.port,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def detach(self):
        """Leave QEMU running after this process ends (``xenvm.py boot``);
        ``stop()`` from another process (the CLI's state file) ends it."""
        _LIVE.pop(self.pid, None)
        self._record(owner=None)
        self.proc = None

    def serial(self):
        try:
            with open(self.serial_log, "rb") as handle:
                return handle.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""

    def _wait_ready(self, timeout):
        """Seconds until the readiness marker.  Waits while the serial console
        makes progress; fails on a fatal line, QEMU's exit, a console silent
        for ``stall_timeout`` s, or after ``timeout`` s."""
        start = time.monotonic()
        seen, progress = -1, start
        while True:
            text = self.serial()
            now = time.monotonic()
            if build_image.READY_MARKER + " " in text:
                return now - start
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
            if len(text) != seen:
                seen, progress = len(text), now
            if now - progress > self.stall_timeout:
                raise BootFailed("the serial console showed nothing new for %d s (%d bytes after %.0f s): %s" % (
                    self.stall_timeout, seen, now - start, tail(text)))
            if now - start > timeout:
                raise BootFailed("no %s on the serial console within %ds: %s" % (build_image.READY_MARKER, timeout, tail(text)))
            time.sleep(0.25)

    def boot(self, timeout=READY_TIMEOUT, attempts=2):
        """Boot and wait for the readiness marker and ssh; retry once (a rare
        memory corruption of dom0 under TCG was seen) when the layer's budget
        leaves room for it.  An attempt takes at most ``timeout`` s and half
        of the budget left (the tests need the other half).  Raises
        Unavailable after the last attempt."""
        for attempt in range(1, attempts + 1):
            left = budget_left()
            # At most half of what is left: the tests need the rest.
            limit = timeout if left is None else min(timeout, (left - BUDGET_RESERVE) / 2)
            if attempt > 1 and left is not None and limit < min(timeout, 1.5 * self.last_attempt_seconds()):
                self.attempts.append("attempt %d not started: %.0f s left of the layer's budget (XENVM_TIMEOUT)" % (
                    attempt, left))
                break
            if limit <= 0:
                self.attempts.append("attempt %d not started: the layer's budget is spent (XENVM_TIMEOUT)" % attempt)
                break
            start = time.monotonic()
            self._start(attempt)
            try:
                marker = self._wait_ready(limit)
                self.wait_ssh(max(10.0, limit - marker))
                self.boot_seconds = time.monotonic() - start
                self.attempts.append("attempt %d: ready in %.1f s (marker after %.1f s, accel %s)"
                                     % (attempt, self.boot_seconds, marker, self.accel))
                return self
            except BootFailed as exc:
                self.attempts.append("attempt %d FAILED after %.1f s: %s" % (attempt, time.monotonic() - start, exc))
                self.attempt_seconds.append(time.monotonic() - start)
                sys.stderr.write("xenvm: boot %s\n" % self.attempts[-1])
                self.stop()
        raise Unavailable("Xen did not boot in %d attempts:\n%s" % (attempts, "\n".join(self.attempts)))

    def last_attempt_seconds(self):
        return self.attempt_seconds[-1] if self.attempt_seconds else 0.0

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
        """Kill QEMU (its whole process group), whatever state it is in, and
        drop its pidfile."""
        pid, self.pid = self.pid, None
        if pid is None:
            self.close_ssh()
            return
        _LIVE.pop(pid, None)
        start = self.pid_start
        if self.proc is not None:
            # Our child, not reaped yet: the pid cannot name another process.
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        elif start is not None:
            kill_qemu(pid, start)
            wait_gone(pid, start)
        pidfile = self.pidfile or os.path.join(self.registry, "%d.json" % pid)
        if not is_running(pid, start):
            _unlink(pidfile)
        self.close_ssh()

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
    def booted(cls, cache_root=None, workdir=None, timeout=READY_TIMEOUT, die_with_owner=True, disk=None, qemu=None,
               cpu=None, extra_args=()):
        """Build (or reuse) the image and boot it.  Raises Unavailable.
        ``XENVM_BUILD=0``: never build here (``XENVM_IMAGE_ERROR`` says why).
        ``disk``: a writable copy of dom0's disk at that path (made from the
        image on first use, kept by later boots) instead of a throwaway one.
        ``qemu``, ``cpu``, ``extra_args``: as for the constructor."""
        if shutil.which(qemu or QEMU) is None:
            if qemu:
                raise Unavailable("QEMU %s is not there or not executable" % qemu)
            raise Unavailable("%s is not installed (apt-get install qemu-system-x86)" % QEMU)
        if shutil.which("ssh") is None:
            raise Unavailable("ssh (openssh-client) is not installed")
        image = image_or_unavailable(cache_root, build=os.environ.get("XENVM_BUILD", "1") != "0")
        if disk and not os.path.exists(disk):
            # Sparse: the image is mostly free space.
            subprocess.run(["cp", "--sparse=always", os.path.join(image, "dom0.ext4"), disk], check=True, timeout=120)
        vm = cls(image, workdir=workdir, die_with_owner=die_with_owner, disk=disk, qemu=qemu, cpu=cpu,
                 extra_args=extra_args)
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
    boot.add_argument("--qemu", help="QEMU binary to run instead of %s on PATH; 'backports': bookworm-backports' "
                                     "QEMU (qemu_backports.py: downloaded and unpacked in the cache, not installed)" % QEMU)
    boot.add_argument("--cpu", help="-cpu value under TCG (default max,-smap,-xsave)")
    boot.add_argument("--qemu-args", action="append", default=[], metavar="ARGS",
                      help="more QEMU arguments, one shell-quoted string (repeatable), appended to ours")
    ssh = sub.add_parser("ssh", help="run a command in dom0")
    ssh.add_argument("--timeout", type=float, default=300.0)
    ssh.add_argument("--stdin", action="store_true", help="pass our standard input to the command")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("stop", help="kill the QEMU started by boot")
    sub.add_parser("reap", help="kill the recorded QEMUs whose owner is dead; list the unrecorded ones")
    args = parser.parse_args(argv)
    state_file = _state_path(args)
    try:
        if args.cmd == "build":
            print(image_or_unavailable(args.cache))
            return 0
        if args.cmd == "reap":
            registry = registry_dir(args.cache)
            killed = reap_stale(registry, say=lambda line: sys.stdout.write(line + "\n"))
            others = unregistered_qemus(registry)
            if others:
                print("xenvm: running xen-pci-xenvm QEMUs not recorded here (not ours to kill): %s"
                      % " ".join(map(str, others)))
            print("xenvm: reaped %d QEMU(s) of dead owners" % len(killed))
            return 0
        if args.cmd == "boot":
            # Not tied to this process: detached once ready (until then a
            # kill of this process leaves a pidfile with a dead owner, which
            # the next boot reaps).
            qemu = args.qemu
            if qemu == "backports":
                import qemu_backports  # pylint: disable=import-outside-toplevel
                try:
                    qemu = qemu_backports.ensure(say=lambda line: sys.stderr.write(line + "\n"))
                except qemu_backports.Unavailable as exc:
                    raise Unavailable("bookworm-backports' QEMU: %s" % exc) from None
            extra = [word for text in args.qemu_args for word in shlex.split(text)]
            vm = XenVM.booted(args.cache, workdir=os.path.join(os.path.dirname(state_file), "cli-run"),
                              timeout=args.timeout, die_with_owner=False, qemu=qemu, cpu=args.cpu, extra_args=extra)
            vm.detach()
            _write_json(state_file, {"pid": vm.pid, "pid_start": vm.pid_start, "port": vm.port, "image": vm.image,
                                     "serial": vm.serial_log, "key": vm.key, "pidfile": vm.pidfile,
                                     "boot": "; ".join(vm.attempts), "qemu": vm.qemu})
            print("dom0 ready: ssh -i %s -p %d root@127.0.0.1 (%s)" % (vm.key, vm.port, "; ".join(vm.attempts)))
            return 0
        vm = from_state(state_file)
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


def from_state(state_file):
    """The XenVM a state file (``xenvm.py boot``) describes; ``stop()`` on it
    kills that QEMU only if its pid still names it."""
    with open(state_file, encoding="utf-8") as handle:
        state = json.load(handle)
    vm = XenVM(state["image"])
    vm.pid, vm.port, vm.serial_log = state["pid"], state["port"], state["serial"]
    vm.pid_start, vm.pidfile = state.get("pid_start"), state.get("pidfile")
    return vm


if __name__ == "__main__":
    sys.exit(main())

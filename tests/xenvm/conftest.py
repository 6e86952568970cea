# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The real-Xen harness (build_image, xenvm) lives beside its tests; the
helpers here are shared by every real-Xen test module, which all run on one
VM booted once (never two QEMUs at a time: TCG needs the host's cores)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# -- shared by the real-Xen test modules: one VM, booted once -----------------

import build_image  # noqa: E402  pylint: disable=wrong-import-position
import xenvm  # noqa: E402  pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(HERE))
REMOTE = "/root/ac"
EDU, TESTDEV, E1000 = "0000:00:10.0", "0000:00:11.0", "0000:00:12.0"
# What the guest reports for each (vendor:device); its BDFs are virtual.
GUEST_ID = {EDU: "1234:11e8", TESTDEV: "1b36:0005", E1000: "8086:100e"}
GUEST_TIMEOUT = 45.0
GUEST_UP_TIMEOUT = 90.0
# The request timeout our core gets in dom0 (the modules' default).
REQUEST_TIMEOUT = 60.0
# The limits here (commands in dom0, guest and backend waits, playbooks, the
# request timeout) are for a machine on which dom0 boots in NOMINAL_BOOT
# seconds and a test guest comes up in NOMINAL_GUEST_UP. A slower or busier
# one gets them stretched by what it measures: the boot, then each guest's
# start (all of Xen is in it: both domains, xenstored, the event channels),
# as the load on the machine may change during the layer. Every wait still
# ends as soon as what it waits for is there; XENVM_TIMEOUT bounds the whole.
# (Python's start-up in dom0 is no such measure: two busy loops beside a
# 2-vCPU VM left it at 1.5x while guests took 3-5x as long.)
NOMINAL_BOOT = 120.0
NOMINAL_GUEST_UP = 15.0
MAX_PACE = 6.0
PACE = {"factor": 1.0, "boot": 1.0}


def paced(seconds):
    """``seconds`` stretched by this run's pace factor (1 to MAX_PACE)."""
    return seconds * PACE["factor"]


def measure_pace(what, seconds, nominal):
    """The pace factor after ``what`` took ``seconds`` (``nominal`` on the
    reference machine); the boot's factor is the floor. Noted in the layer's times."""
    factor = min(MAX_PACE, max(1.0, seconds / nominal))
    if what == "boot":
        PACE["boot"] = factor
    PACE["factor"] = max(PACE["boot"], factor)
    LAYER_TIMES["pace"].append("%s: %.1f s (nominal %.0f): limits paced x%.1f" % (what, seconds, nominal, PACE["factor"]))
    write_layer_times()
    return PACE["factor"]


DOMU_CFG = """\
name = "%s"
type = "pv"
kernel = "/var/lib/xenvm/vmlinuz"
ramdisk = "/var/lib/xenvm/initrd.gz"
extra = "console=hvc0 xenvm=domu iommu=soft"
memory = 128
vcpus = 1
passthrough = "enabled"
on_crash = "preserve"
"""


RUN_STARTED = time.strftime("%Y%m%d-%H%M%S")


def xenvm_artifacts(sub):
    """``$XENVM_ARTIFACTS/<sub>`` (default: under the image cache, one
    directory per run), created."""
    base = os.environ.get("XENVM_ARTIFACTS") or os.path.join(build_image.default_cache_root(), "artifacts", RUN_STARTED)
    path = os.path.join(base, sub)
    os.makedirs(path, exist_ok=True)
    return path


def boot_or_skip(artifacts, disk=None, sub="vm", **vm_options):
    """A booted XenVM, or pytest.skip with the reason in a loud banner.

    ``XENVM_STATE=<file>`` (written by ``xenvm.py boot``) reuses a VM left
    running by the CLI instead of booting one (for development; it is not
    stopped). ``disk``: dom0's disk as a writable copy at that path (see
    XenVM.booted), for a test that boots again; never the CLI's VM.
    ``sub``: the directory of this boot under ``artifacts``. ``vm_options``:
    XenVM.booted's ``qemu``, ``cpu`` and ``extra_args`` (another QEMU, more
    devices); a VM so booted that fails says nothing of the layer's VM, so
    its failure does not make the later modules skip."""
    state = os.environ.get("XENVM_STATE")
    if state and disk:
        pytest.skip("a test that boots again needs a VM of its own: not with XENVM_STATE's")
    if state:
        with open(state, encoding="utf-8") as handle:
            data = json.load(handle)
        vm = xenvm.XenVM(data["image"], workdir=os.path.join(artifacts, "vm"))
        vm.port, vm.serial_log = data["port"], data["serial"]
        vm.attempts.append("reused the VM of %s" % state)
        return vm, False
    if UNAVAILABLE:
        # One verdict per run: the next module does not try to boot again.
        pytest.skip("real Xen unavailable: %s" % UNAVAILABLE[0])
    try:
        return xenvm.XenVM.booted(workdir=os.path.join(artifacts, sub), disk=disk, **vm_options), True
    except xenvm.Unavailable as exc:
        if not vm_options:
            UNAVAILABLE.append(str(exc))
        loud_skip("REAL-XEN TESTS SKIPPED: %s" % exc, "real Xen unavailable: %s" % exc)
    return None, False


UNAVAILABLE = []    # why this run has no VM, once a boot gave up


def own_vm_on_request(what, seconds):
    """A module that boots a VM of its own (another disk, another QEMU) runs
    on request, ``XENVM_OWN_VMS=1``: with the shared VM's modules alone the
    layer keeps the whole CI run well within its time on 2 cores. Skipped
    loudly, saying how to run it."""
    if os.environ.get("XENVM_OWN_VMS") != "1":
        why = "%s boots a VM of its own (about %d s): XENVM_OWN_VMS=1 make xen runs it" % (what, seconds)
        loud_skip("REAL-XEN TEST ON REQUEST ONLY: %s" % why, why)


def loud_skip(banner, reason):
    """pytest.skip(reason), with ``banner`` framed on stderr first: a skipped
    real-Xen test must be seen in the layer's output, not only in -rs."""
    sys.stderr.write("\n" + "!" * 78 + "\n%s\n" % banner + "!" * 78 + "\n")
    pytest.skip(reason)


def skip_if_unavailable():
    """For tests that use no VM themselves but compare what the VM's tests
    collected: skip (not fail) when the run had no VM."""
    if UNAVAILABLE:
        pytest.skip("real Xen unavailable: %s" % UNAVAILABLE[0])


def collections_path(tmp_root):
    """A directory holding ansible_collections/xen/pci -> the work tree:
    ``$XEN_PCI_COLLECTION_TREE/link`` (the Makefile's symlink tree) when set,
    else one under ``tmp_root``."""
    tree = os.environ.get("XEN_PCI_COLLECTION_TREE")
    base = os.path.join(tree, "link") if tree else os.path.join(tmp_root, "collections")
    link = os.path.join(base, "ansible_collections", "xen", "pci")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if not (os.path.islink(link) and os.path.realpath(link) == os.path.realpath(ROOT)):
        if os.path.islink(link):
            os.unlink(link)
        os.symlink(ROOT, link)
    return base


def import_paths(tmp_root):
    """The controller-side imports of the fidelity check: the collection's
    core as ``ansible_collections.xen.pci`` and the simulator as ``xensim``."""
    for path in (collections_path(tmp_root), os.path.join(ROOT, "tools", "xensim")):
        if path not in sys.path:
            sys.path.insert(0, path)


def core_files():
    """{path under REMOTE: bytes}: plugins/module_utils as a package, dom0_driver.py."""
    files = {}
    utils = os.path.join(ROOT, "plugins", "module_utils")
    for name in sorted(os.listdir(utils)):
        if name.endswith(".py"):
            with open(os.path.join(utils, name), "rb") as handle:
                files["ansible_collections/xen/pci/plugins/module_utils/" + name] = handle.read()
    for pkg in ("ansible_collections", "ansible_collections/xen", "ansible_collections/xen/pci",
                "ansible_collections/xen/pci/plugins", "ansible_collections/xen/pci/plugins/module_utils"):
        files.setdefault(pkg + "/__init__.py", b"")
    with open(os.path.join(HERE, "dom0_driver.py"), "rb") as handle:
        files["dom0_driver.py"] = handle.read()
    return files


class Host:
    """dom0 of a booted VM, seen from a test: commands with diagnostics on
    failure, one PV test guest at a time (``self.domain``/``self.domid``)."""

    def __init__(self, vm, artifacts, domain):
        self.vm = vm
        self.artifacts = artifacts
        self.domain = domain
        self.domid = None

    def run(self, command, timeout):
        """vm.run with a paced limit; a command over it fails the test with the diagnosis."""
        limit = paced(timeout)
        try:
            return self.vm.run(command, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail("dom0 command did not finish within %.0f s (pace factor %.1f): %s\n%s" % (
                limit, PACE["factor"], command, self.diagnose()))
        return None

    def sh(self, command, timeout=60.0, check=True):
        proc = self.run(command, timeout)
        if check and proc.returncode != 0:
            pytest.fail("dom0 command failed (exit %d): %s\nstdout: %s\nstderr: %s\n%s" % (
                proc.returncode, command, proc.stdout.strip(), proc.stderr.strip(), self.diagnose()))
        return proc

    def timed(self, command, timeout=90.0):
        """(seconds measured in dom0, CompletedProcess): no ssh overhead in the time."""
        wrapped = "s=$(date +%%s.%%N); %s; rc=$?; e=$(date +%%s.%%N); echo \"XENVM-TIME $s $e $rc\" >&2; exit $rc" % command
        proc = self.run(wrapped, timeout)
        for line in proc.stderr.splitlines():
            if line.startswith("XENVM-TIME "):
                fields = line.split()
                return float(fields[2]) - float(fields[1]), proc
        pytest.fail("no timing from dom0 for %s: %s %s" % (command, proc.stdout, proc.stderr))
        return None, proc

    def xl(self, args, timeout=90.0, log=None):
        """Seconds an xl command took in dom0; it must succeed.  ``log``:
        save xenstored's access log of this command under that name."""
        self.clear_access_log(log)
        seconds, proc = self.timed("xl " + args, timeout=timeout)
        self.save_access_log(log and "xl-" + log)
        if proc.returncode != 0:
            pytest.fail("xl %s failed (exit %d): %s\n%s" % (args, proc.returncode, proc.stderr.strip(), self.diagnose()))
        return seconds

    def clear_access_log(self, log):
        if log:
            self.sh(": > /var/log/xen/xenstored-access.log")

    def save_access_log(self, log):
        """xenstored's access log (PCI and guest data paths) as an artifact."""
        if log:
            proc = self.vm.run("grep -E 'pci|/data/' /var/log/xen/xenstored-access.log", timeout=30, check=False)
            with open(os.path.join(self.artifacts, log + ".access.log"), "w", encoding="utf-8") as handle:
                handle.write(proc.stdout)

    def core(self, op, *bdfs, log=None, force=False, check=True, qmp_transcript=False):
        """Our hotplug core in dom0 (dom0_driver.py); (process seconds, result
        dict).  ``log`` as for ``xl``; ``check=False`` returns a failed
        request's result instead of failing the test; ``qmp_transcript``:
        the result's ``qmp`` lists every QMP message of the request."""
        self.clear_access_log(log)
        command = ("cd %s && XEN_PCI_TIMEOUT=%.0f XEN_PCI_FORCE=%d XEN_PCI_QMP_TRANSCRIPT=%d PYTHONPATH=%s "
                   "python3 dom0_driver.py %s %s %s" % (
                       REMOTE, paced(REQUEST_TIMEOUT), int(force), int(qmp_transcript), REMOTE, op, self.domain,
                       " ".join(shlex.quote(b) for b in bdfs)))
        seconds, proc = self.timed(command, timeout=REQUEST_TIMEOUT + 30.0)
        self.save_access_log(log and "ours-" + log)
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            pytest.fail("the driver printed no result (exit %d):\n%s\n%s\n%s" % (
                proc.returncode, proc.stdout, proc.stderr, self.diagnose()))
        if check and not result.get("ok"):
            pytest.fail("OUR CORE FAILED ON REAL XEN: %s %s %s\nerror: %s\n%s\n%s" % (
                op, self.domain, " ".join(bdfs), json.dumps(result.get("error"), indent=2, default=repr),
                result.get("traceback", ""), self.diagnose()))
        return seconds, result

    def install(self):
        """Our core and the guest config into dom0 (REMOTE)."""
        files = core_files()
        files["%s.cfg" % self.domain] = (DOMU_CFG % self.domain).encode()
        self.vm.put_tree(files, REMOTE)

    def create(self, paused=False, wait_up=True):
        """``xl create`` the test guest; waits until its user space reports
        ready (not when paused).  Returns xl create's seconds."""
        seconds = self.xl("create %s%s/%s.cfg" % ("-p " if paused else "", REMOTE, self.domain))
        self.domid = int(self.sh("xl domid %s" % self.domain).stdout.strip())
        if wait_up and not paused:
            self.wait_up()
        return seconds

    def wait_up(self, timeout=GUEST_UP_TIMEOUT):
        timeout = paced(timeout)
        start = time.monotonic()
        while self.sh("xenstore-read /local/domain/%d/data/xenvm-guest" % self.domid, check=False).stdout.strip() != "ready":
            if time.monotonic() - start > timeout:
                pytest.fail("the guest did not report ready within %d s\n%s" % (timeout, self.diagnose()))
            time.sleep(0.5)
        seconds = time.monotonic() - start
        measure_pace("%s up" % self.domain, seconds, NOMINAL_GUEST_UP)
        return seconds

    def destroy(self, timeout=60.0):
        """``xl destroy`` and wait (bounded) until xl no longer lists the guest."""
        timeout = paced(timeout)
        self.sh("xl destroy %s" % self.domain, check=False)
        start = time.monotonic()
        while self.sh("xl domid %s" % self.domain, check=False).returncode == 0:
            if time.monotonic() - start > timeout:
                pytest.fail("%s still exists %d s after xl destroy\n%s" % (self.domain, timeout, self.diagnose()))
            time.sleep(0.5)
        self.domid = None

    def guest_view(self):
        """{vendor:device: guest BDF} from the guest's data/pci-devices."""
        value = self.sh("xenstore-read /local/domain/%d/data/pci-devices" % self.domid).stdout.strip()
        view = {}
        for word in value.split():
            bdf, _sep, ident = word.partition("=")
            view[ident] = bdf
        return view

    def wait_guest(self, want, timeout=GUEST_TIMEOUT):
        """Wait until the guest sees exactly the devices ``want``; seconds waited."""
        timeout = paced(timeout)
        start = time.monotonic()
        want_ids = sorted(GUEST_ID[b] for b in want)
        view = {}
        while time.monotonic() - start < timeout:
            view = self.guest_view()
            if sorted(view) == want_ids:
                return time.monotonic() - start
            time.sleep(0.3)
        pytest.fail("after %.0f s the guest sees %s, expected %s\n%s" % (timeout, view or "nothing", want_ids, self.diagnose()))
        return None

    def pci_list(self):
        out = self.sh("xl pci-list %s" % self.domain).stdout
        # The Vdev column is not trusted (xl printed 00.0 for two devices once);
        # the host BDF is the last column.
        return sorted(line.split()[-1] for line in out.splitlines()[1:] if line.strip())

    def assignable_list(self):
        return sorted(self.sh("xl pci-assignable-list").stdout.split())

    def fresh_assignable(self, *bdfs):
        """Each of ``bdfs`` assignable, with no /libxl/pci entry an earlier
        test on the shared VM left (libxl leaves an empty one on detach)."""
        for bdf in bdfs:
            self.sh("xenstore-rm /libxl/pci/%s" % bdf.replace(":", "-").replace(".", "-"), check=False)
            if bdf not in self.assignable_list():
                self.xl("pci-assignable-add %s" % bdf)

    def driver(self, bdf):
        """Name of the dom0 driver bound to ``bdf`` ('' when none)."""
        proc = self.sh("readlink /sys/bus/pci/devices/%s/driver" % bdf, check=False)
        return os.path.basename(proc.stdout.strip()) if proc.returncode == 0 else ""

    def diagnose(self):
        """The state that explains a failure, as text (also saved as an artifact)."""
        domid = self.domid if self.domid is not None else "*"
        parts = []
        for title, command in (
                ("xl list", "xl list"),
                ("xenstore backend", "xenstore-ls -fp /local/domain/0/backend/pci"),
                ("xenstore frontend", "xenstore-ls -fp /local/domain/%s/device/pci" % domid),
                ("xenstore /libxl/pci", "xenstore-ls -fp /libxl/pci"),
                ("xenstore errors", "xenstore-ls -fp /local/domain/0/error; xenstore-ls -fp /local/domain/%s/error" % domid),
                ("guest data", "xenstore-ls -fp /local/domain/%s/data" % domid),
                ("access log (PCI paths)", "grep -E 'pci' /var/log/xen/xenstored-access.log | tail -200"),
                ("guest console", "tail -30 /var/log/xen/console/guest-%s.log" % self.domain),
                ("xl dmesg", "xl dmesg | tail -30"),
                ("dom0 dmesg", "dmesg | tail -30"),
                ("pciback", "ls /sys/bus/pci/drivers/pciback/")):
            try:
                proc = self.vm.run(command, timeout=30, check=False)
                parts.append("--- %s: %s\n%s%s" % (title, command, proc.stdout, proc.stderr))
            except Exception as exc:  # pylint: disable=broad-except
                parts.append("--- %s: could not run: %s" % (title, exc))
        text = "\n".join(parts)
        with open(os.path.join(self.artifacts, "diagnosis-%d.txt" % int(time.time() * 1000)), "w", encoding="utf-8") as handle:
            handle.write(text)
        return text


# One VM shared by the modules that set XENVM_SHARED = True (they run one
# after the other): it is stopped before any other test runs and at the end of
# the session, so that no two QEMUs ever run at once.
SHARED = {}


def stop_shared():
    vm, owned, artifacts = SHARED.pop("vm", None), SHARED.pop("owned", False), SHARED.pop("artifacts", None)
    SHARED.pop("events", None)
    if vm is None or not owned:
        return
    try:
        with open(os.path.join(artifacts, "serial.log"), "w", encoding="utf-8") as handle:
            handle.write(vm.serial())
    finally:
        vm.stop()


# A test does not start with less of the layer's budget left than this: the
# layer ends with its report instead of being killed in the middle of a test.
# Such a test fails (it did not run for lack of time, which is no reason to
# call the layer green), quickly and naming the budget.
TEST_MARGIN = 90.0


def pytest_runtest_setup(item):
    if not getattr(item.module, "XENVM_SHARED", False):
        stop_shared()
    left = xenvm.budget_left()
    if left is not None and left < TEST_MARGIN:
        LAYER_TIMES["not run"].append(item.nodeid)
        pytest.fail("NOT RUN: the layer's budget (XENVM_TIMEOUT) is spent, %.0f s left" % left, pytrace=False)


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
    stop_shared()


def shared_vm():
    """The shared VM (booted on first use, or pytest.skip)."""
    if "vm" not in SHARED:
        if UNAVAILABLE:
            pytest.skip("real Xen unavailable: %s" % UNAVAILABLE[0])
        start = time.monotonic()
        try:
            vm, owned = boot_or_skip(xenvm_artifacts("shared-vm"))
        except BaseException:
            LAYER_TIMES["boots"].append("no VM after %.1f s: %s" % (
                time.monotonic() - start, (UNAVAILABLE or ["interrupted"])[0].replace("\n", " | ")))
            write_layer_times()
            raise
        if vm.boot_seconds:
            measure_pace("boot", vm.boot_seconds, NOMINAL_BOOT)
        SHARED.update(vm=vm, owned=owned, artifacts=xenvm_artifacts("shared-vm"),
                      events={"image+boot": time.monotonic() - start, "boot": vm.boot_seconds,
                              "boot attempts": "; ".join(vm.attempts)})
        LAYER_TIMES["boots"].append("%.1f s (%s); limits paced x%.1f" % (
            time.monotonic() - start, "; ".join(vm.attempts), PACE["factor"]))
        write_layer_times()
    return SHARED["vm"]


def vm_fixture_body(sub, domain):
    """Generator body of the module-scoped fixtures of the XENVM_SHARED
    modules: yields a Host on the shared VM (booted on first use) and
    destroys the module's guest afterwards."""
    artifacts = xenvm_artifacts(sub)
    shared_vm()
    host = Host(SHARED["vm"], artifacts, domain)
    host.install()
    try:
        yield host
    finally:
        host.sh("xl destroy %s" % domain, check=False)


def timings_table(title, rows):
    """Markdown table of ``[(operation, ours seconds|None, xl seconds|None, note)]``."""
    lines = ["", title, "| operation | ours (s) | xl (s) | notes |", "|---|---|---|---|"]
    for op, ours, xl, note in rows:
        lines.append("| %s | %s | %s | %s |" % (op, "-" if ours is None else "%.2f" % ours, "-" if xl is None else "%.2f" % xl, note))
    return "\n".join(lines)


# -- the layer's times: boots and every test, in $XENVM_TIMES -----------------
# Rewritten after each test, so that a layer killed by its time limit still
# tells where its time went and which test was running (tools/make/xen.sh
# prints the file and puts it in run-layers.sh's summary).

LAYER_TIMES = {"boots": [], "pace": [], "tests": {}, "running": None, "not run": []}


def pytest_runtest_logstart(nodeid, location):  # pylint: disable=unused-argument
    LAYER_TIMES["running"] = (nodeid, time.monotonic())
    write_layer_times()


def pytest_runtest_logreport(report):
    entry = LAYER_TIMES["tests"].setdefault(report.nodeid, {"seconds": 0.0, "outcome": "passed"})
    entry["seconds"] += report.duration
    if report.failed:
        entry["outcome"] = "FAILED" if report.when == "call" else "ERROR"
    elif report.skipped and entry["outcome"] == "passed":
        # With its reason: pytest -q shows none, and a banner on stderr is
        # captured with the test's output.
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        entry["outcome"] = "skipped: %s" % reason.replace("Skipped: ", "", 1)


def pytest_runtest_logfinish(nodeid, location):  # pylint: disable=unused-argument
    LAYER_TIMES["running"] = None
    write_layer_times()


def layer_times_text():
    """Boots, each module's total, the slowest tests; then every test (indented)."""
    tests = LAYER_TIMES["tests"]
    lines = ["boot: %s" % b for b in LAYER_TIMES["boots"]] or ["boot: none"]
    lines.extend("pace %s" % p for p in LAYER_TIMES["pace"])
    modules = {}
    for nodeid, entry in tests.items():
        module = modules.setdefault(nodeid.split("::")[0].rsplit("/", 1)[-1], {"seconds": 0.0, "count": 0, "outcomes": {}})
        module["seconds"] += entry["seconds"]
        module["count"] += 1
        outcome = entry["outcome"].split(":", 1)[0]
        module["outcomes"][outcome] = module["outcomes"].get(outcome, 0) + 1
    for name, module in modules.items():
        lines.append("%s: %.1f s, %s" % (name, module["seconds"], ", ".join(
            "%d %s" % (n, outcome) for outcome, n in sorted(module["outcomes"].items()))))
    slowest = sorted(tests.items(), key=lambda item: -item[1]["seconds"])[:5]
    if slowest:
        lines.append("slowest: " + ", ".join("%s %.1f s" % (nodeid.split("::")[-1], e["seconds"]) for nodeid, e in slowest))
    if LAYER_TIMES["not run"]:
        lines.append("BUDGET SPENT: %d test(s) not run, from %s" % (
            len(LAYER_TIMES["not run"]), LAYER_TIMES["not run"][0].split("/", 2)[-1]))
    running = LAYER_TIMES["running"]
    if running is not None:
        lines.append("RUNNING when this was written: %s (for %.0f s)" % (running[0], time.monotonic() - running[1]))
    lines.extend("    %-60s %7.1f s  %s" % (nodeid.split("/", 2)[-1], e["seconds"], e["outcome"]) for nodeid, e in tests.items())
    return "\n".join(lines) + "\n"


def write_layer_times():
    path = os.environ.get("XENVM_TIMES")
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(layer_times_text())
    os.replace(tmp, path)

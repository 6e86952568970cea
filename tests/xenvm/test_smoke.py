# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Smoke test of the hotplug core on real Xen 4.17 (QEMU TCG, PV dom0).

One boot for the module.  A PV domU with ``passthrough = "enabled"`` and no
``pci=``; edu (00:10.0) and pci-testdev (00:11.0) made assignable with xl;
then, in dom0, the collection's plugins/module_utils (copied there) attach
both in one request, detach one, detach the last; the guest's own view (its
xenstore ``data/pci-devices``, written by the test initramfs) and
``xl pci-list`` must agree at every step.  The same devices then go through
``xl pci-attach``/``pci-detach`` for reference timings, and xl detaches a
device our core attached (interop).

Every failure carries the xenstore state and xenstored's access-log lines for
PCI paths.  Artifacts (access logs per step, serial log, timings) go to
``$XENVM_ARTIFACTS`` or ``<cache>/xenvm/artifacts/<time>``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

import pytest

import build_image
import xenvm

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REMOTE = "/root/ac"
DOMU = "domu1"
EDU, TESTDEV = "0000:00:10.0", "0000:00:11.0"
# What the guest reports for each (vendor:device); its BDFs are virtual.
GUEST_ID = {EDU: "1234:11e8", TESTDEV: "1b36:0005"}
GUEST_TIMEOUT = 45.0

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
""" % DOMU

TIMINGS = []        # (operation, ours, xl, note)
EVENTS = {}


def split(result):
    """Where our process's time went (python startup is the rest)."""
    return "core call %.2f s (imports %.2f, connect %.2f, in process %.2f)" % (
        result["seconds"], result.get("import_seconds", 0), result.get("connect_seconds", 0), result.get("in_process_seconds", 0))


def artifacts_dir():
    default = os.path.join(build_image.default_cache_root(), "artifacts", time.strftime("%Y%m%d-%H%M%S"))
    path = os.environ.get("XENVM_ARTIFACTS") or default
    os.makedirs(path, exist_ok=True)
    return path


class Dom0:
    """Commands in dom0 for the test, with diagnostics on failure."""

    def __init__(self, vm, artifacts):
        self.vm = vm
        self.artifacts = artifacts
        self.domid = None

    def sh(self, command, timeout=60.0, check=True):
        proc = self.vm.run(command, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            pytest.fail("dom0 command failed (exit %d): %s\nstdout: %s\nstderr: %s\n%s" % (
                proc.returncode, command, proc.stdout.strip(), proc.stderr.strip(), self.diagnose()))
        return proc

    def timed(self, command, timeout=90.0):
        """(seconds measured in dom0, CompletedProcess): no ssh overhead in the time."""
        wrapped = "s=$(date +%%s.%%N); %s; rc=$?; e=$(date +%%s.%%N); echo \"XENVM-TIME $s $e $rc\" >&2; exit $rc" % command
        proc = self.vm.run(wrapped, timeout=timeout, check=False)
        for line in proc.stderr.splitlines():
            if line.startswith("XENVM-TIME "):
                _tag, start, end, _rc = line.split()
                return float(end) - float(start), proc
        pytest.fail("no timing from dom0 for %s: %s %s" % (command, proc.stdout, proc.stderr))
        return None

    def core(self, op, *bdfs):
        """Run our hotplug core in dom0; (process seconds, result dict)."""
        self.sh(": > /var/log/xen/xenstored-access.log")
        command = "cd %s && PYTHONPATH=%s python3 dom0_driver.py %s %s %s" % (
            REMOTE, REMOTE, op, DOMU, " ".join(shlex.quote(b) for b in bdfs))
        seconds, proc = self.timed(command)
        self.save_access_log("ours-%s-%s" % (op, "+".join(b[-4:] for b in bdfs)))
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            pytest.fail("the driver printed no result (exit %d):\n%s\n%s\n%s" % (
                proc.returncode, proc.stdout, proc.stderr, self.diagnose()))
        if not result.get("ok"):
            pytest.fail("OUR CORE FAILED ON REAL XEN: %s %s %s\nerror: %s\n%s\n%s" % (
                op, DOMU, " ".join(bdfs), json.dumps(result.get("error"), indent=2, default=repr),
                result.get("traceback", ""), self.diagnose()))
        return seconds, result

    def xl(self, args, what):
        self.sh(": > /var/log/xen/xenstored-access.log")
        seconds, proc = self.timed("xl " + args)
        self.save_access_log("xl-" + what)
        if proc.returncode != 0:
            pytest.fail("xl %s failed (exit %d): %s\n%s" % (args, proc.returncode, proc.stderr.strip(), self.diagnose()))
        return seconds

    def save_access_log(self, name):
        proc = self.vm.run("grep -E 'pci|/data/' /var/log/xen/xenstored-access.log", timeout=30, check=False)
        with open(os.path.join(self.artifacts, name + ".access.log"), "w", encoding="utf-8") as handle:
            handle.write(proc.stdout)

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
        out = self.sh("xl pci-list %s" % DOMU).stdout
        # Vdev column not trusted (XENVM.md); the host BDF is the last column.
        return sorted(line.split()[-1] for line in out.splitlines()[1:] if line.strip())

    def diagnose(self):
        """The state that explains a failure, as text (also saved as an artifact)."""
        domid = self.domid if self.domid is not None else "*"
        parts = []
        for title, command in (
                ("xenstore backend", "xenstore-ls -fp /local/domain/0/backend/pci"),
                ("xenstore frontend", "xenstore-ls -fp /local/domain/%s/device/pci" % domid),
                ("xenstore /libxl/pci", "xenstore-ls -fp /libxl/pci"),
                ("xenstore errors", "xenstore-ls -fp /local/domain/0/error; xenstore-ls -fp /local/domain/%s/error" % domid),
                ("guest data", "xenstore-ls -fp /local/domain/%s/data" % domid),
                ("access log (PCI paths)", "grep -E 'pci' /var/log/xen/xenstored-access.log | tail -200"),
                ("guest console", "tail -30 /var/log/xen/console/guest-%s.log" % DOMU),
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


@pytest.fixture(scope="module", name="dom0")
def dom0_fixture():
    artifacts = artifacts_dir()
    start = time.monotonic()
    try:
        vm = xenvm.XenVM.booted(workdir=os.path.join(artifacts, "vm"))
    except xenvm.Unavailable as exc:
        banner = "\n" + "!" * 78 + "\nREAL-XEN TESTS SKIPPED: %s\n" % exc + "!" * 78 + "\n"
        sys.stderr.write(banner)
        pytest.skip("real Xen unavailable: %s" % exc)
    EVENTS["image+boot"] = time.monotonic() - start
    EVENTS["boot"] = vm.boot_seconds
    EVENTS["boot attempts"] = "; ".join(vm.attempts)
    EVENTS["artifacts"] = artifacts
    try:
        yield Dom0(vm, artifacts)
    finally:
        try:
            with open(os.path.join(artifacts, "serial.log"), "w", encoding="utf-8") as handle:
                handle.write(vm.serial())
        finally:
            vm.stop()


@pytest.fixture(scope="module", name="domu")
def domu_fixture(dom0):
    """The running PV domU, both devices assignable, our code in dom0."""
    files = {}
    for name in sorted(os.listdir(os.path.join(ROOT, "plugins", "module_utils"))):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, "plugins", "module_utils", name), "rb") as handle:
                files["ansible_collections/xen/pci/plugins/module_utils/" + name] = handle.read()
    for pkg in ("ansible_collections", "ansible_collections/xen", "ansible_collections/xen/pci",
                "ansible_collections/xen/pci/plugins"):
        files[pkg + "/__init__.py"] = b""
    files.setdefault("ansible_collections/xen/pci/plugins/module_utils/__init__.py", b"")
    with open(os.path.join(HERE, "dom0_driver.py"), "rb") as handle:
        files["dom0_driver.py"] = handle.read()
    files["domu1.cfg"] = DOMU_CFG.encode()
    dom0.vm.put_tree(files, REMOTE)
    seconds, _proc = dom0.timed("xl create %s/domu1.cfg" % REMOTE)
    EVENTS["xl create"] = seconds
    dom0.domid = int(dom0.sh("xl domid %s" % DOMU).stdout.strip())
    start = time.monotonic()
    while dom0.sh("xenstore-read /local/domain/%d/data/xenvm-guest" % dom0.domid, check=False).stdout.strip() != "ready":
        if time.monotonic() - start > 90:
            pytest.fail("the guest did not report ready within 90 s\n%s" % dom0.diagnose())
        time.sleep(0.5)
    EVENTS["guest up after xl create"] = time.monotonic() - start
    assert dom0.guest_view() == {}, "the guest sees PCI devices before any attach"
    for bdf in (EDU, TESTDEV):
        TIMINGS.append(("xl pci-assignable-add %s" % bdf[5:], None, dom0.xl("pci-assignable-add %s" % bdf, "assignable-" + bdf[-4:]), ""))
    listed = dom0.sh("xl pci-assignable-list").stdout.split()
    assert EDU in listed and TESTDEV in listed, listed
    return dom0


def test_attach_two_devices_in_one_request(domu):
    """No backend yet (the case of Xen commit 73ee2795aaef): both in one request."""
    seconds, result = domu.core("attach", EDU, TESTDEV)
    assert result["attached"] == [EDU, TESTDEV], result
    seen = domu.wait_guest([EDU, TESTDEV])
    TIMINGS.append(("attach 10.0+11.0 (no backend)", seconds, None,
                    "%s, guest saw both %.1f s later; %s" % (split(result), seen, "; ".join(result["warnings"]) or "no warnings")))
    EVENTS["ours attach result"] = result
    assert domu.pci_list() == [EDU, TESTDEV]
    backend = domu.sh("xenstore-read /local/domain/0/backend/pci/%d/0/num_devs /local/domain/0/backend/pci/%d/0/state"
                      % (domu.domid, domu.domid)).stdout.split()
    assert backend == ["2", "4"], backend
    for bdf in (EDU, TESTDEV):
        owner = domu.sh("xenstore-read /libxl/pci/%s/domid" % bdf.replace(":", "-").replace(".", "-")).stdout.strip()
        assert owner == str(domu.domid)


def test_detach_one_keeps_the_other(domu):
    seconds, result = domu.core("detach", EDU)
    assert result["detached"] == [EDU], result
    seen = domu.wait_guest([TESTDEV])
    TIMINGS.append(("detach 10.0 (not last)", seconds, None,
                    "%s, guest view %.1f s later; %s" % (split(result), seen, "; ".join(result["warnings"]) or "no warnings")))
    assert domu.pci_list() == [TESTDEV]
    be = "/local/domain/0/backend/pci/%d/0" % domu.domid
    keys = domu.sh("xenstore-read %s/num_devs %s/key-0 %s/dev-0 %s/state-0" % (be, be, be, be)).stdout.split()
    assert keys == ["1", TESTDEV, TESTDEV, "3"], keys
    assert domu.sh("xenstore-read %s/key-1" % be, check=False).returncode != 0, "key-1 left after renumbering"


def test_detach_last_removes_backend(domu):
    seconds, result = domu.core("detach", TESTDEV)
    assert result["detached"] == [TESTDEV], result
    seen = domu.wait_guest([])
    TIMINGS.append(("detach 11.0 (last)", seconds, None,
                    "%s, guest view %.1f s later; %s" % (split(result), seen, "; ".join(result["warnings"]) or "no warnings")))
    assert domu.pci_list() == []
    assert domu.sh("xenstore-read /local/domain/0/backend/pci/%d/0/state" % domu.domid, check=False).returncode != 0, \
        "backend still present after the last detach"


def test_xl_reference_cycle(domu):
    """The same devices through xl, for reference timings (and a clean slate check)."""
    assert domu.pci_list() == [], "precondition: nothing attached"
    first = domu.xl("pci-attach %s %s" % (DOMU, EDU), "attach-10.0")
    second = domu.xl("pci-attach %s %s" % (DOMU, TESTDEV), "attach-11.0")
    seen = domu.wait_guest([EDU, TESTDEV])
    TIMINGS.append(("attach 10.0+11.0 (no backend)", None, first + second,
                    "xl: %.2f s + %.2f s (second with backend present), guest saw both %.1f s later" % (first, second, seen)))
    assert domu.pci_list() == [EDU, TESTDEV]
    gone = domu.xl("pci-detach %s %s" % (DOMU, EDU), "detach-10.0")
    seen = domu.wait_guest([TESTDEV])
    TIMINGS.append(("detach 10.0 (not last)", None, gone, "xl: guest view %.1f s later" % seen))
    last = domu.xl("pci-detach %s %s" % (DOMU, TESTDEV), "detach-11.0")
    seen = domu.wait_guest([])
    TIMINGS.append(("detach 11.0 (last)", None, last, "xl: guest view %.1f s later" % seen))
    assert domu.pci_list() == []


def test_xl_detaches_what_we_attached(domu):
    """Interop: a device attached by our core is a normal libxl device to xl."""
    assert domu.pci_list() == [], "precondition: nothing attached"
    _seconds, result = domu.core("attach", EDU)
    assert result["attached"] == [EDU], result
    domu.wait_guest([EDU])
    assert domu.pci_list() == [EDU]
    domu.xl("pci-detach %s %s" % (DOMU, EDU), "interop-detach-10.0")
    domu.wait_guest([])
    assert domu.pci_list() == []
    listed = domu.sh("xl pci-assignable-list").stdout.split()
    assert EDU in listed, "after xl detached it, %s should be assignable again: %s" % (EDU, listed)


def test_zz_report(domu, capsys):
    """Print the timings table (ours next to xl) and save it with the artifacts."""
    rows = {}
    for op, ours, xl, note in TIMINGS:
        row = rows.setdefault(op, {"ours": None, "xl": None, "notes": []})
        if ours is not None:
            row["ours"] = ours
        if xl is not None:
            row["xl"] = xl
        row["notes"].append(note)
    lines = ["| operation | ours (s) | xl (s) | notes |", "|---|---|---|---|"]
    for op, row in rows.items():
        ours = "%.2f" % row["ours"] if row["ours"] is not None else "-"
        xl = "%.2f" % row["xl"] if row["xl"] is not None else "-"
        lines.append("| %s | %s | %s | %s |" % (op, ours, xl, " / ".join(n for n in row["notes"] if n)))
    events = ["%s: %s" % (k, ("%.1f s" % v) if isinstance(v, float) else v) for k, v in EVENTS.items()
              if k != "ours attach result"]
    text = "\n".join(["", "real Xen 4.17 (QEMU TCG) smoke run; times measured in dom0, whole processes:"] + lines + events)
    with open(os.path.join(domu.artifacts, "timings.md"), "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    with capsys.disabled():
        sys.stdout.write(text + "\n")
    assert rows, "no timings recorded"

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The real-Xen harness's QEMU dies with the process that started it.

Each test starts an owner (idle_owner.py: the harness's own boot path with a
``qemu-system-x86_64 -machine none`` that never becomes ready), waits until
its QEMU runs and is recorded, kills the owner mid-boot one way or another,
and asserts by pid (and start time) that the QEMU is gone within a few
seconds -- and that no QEMU carrying the test's own ``-name`` is left.  The
pidfiles live in the test's temporary cache: nothing here touches another
run's VM.  Needs QEMU, not the Xen image: skips loudly without QEMU.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "xenvm"))

import xenvm  # noqa: E402  pylint: disable=wrong-import-position,import-error

OWNER = os.path.join(HERE, "idle_owner.py")
GONE_WITHIN = 5.0       # seconds a QEMU may outlive its owner
UP_WITHIN = 30.0        # seconds for an owner to start and record its QEMU


@pytest.fixture(autouse=True)
def need_qemu():
    if shutil.which(xenvm.QEMU) is None:
        banner = "\n" + "!" * 78 + "\nVM LIFETIME TESTS SKIPPED: %s is not installed\n" % xenvm.QEMU + "!" * 78 + "\n"
        sys.stderr.write(banner)
        pytest.skip("%s is not installed (apt-get install qemu-system-x86)" % xenvm.QEMU)


class Run:
    """One test's owners and their QEMUs, in a cache of the test's own."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.image = tmp_path / "cache" / "image"
        self.image.mkdir(parents=True)
        self.registry = xenvm.registry_dir(str(tmp_path / "cache"))
        self.tag = "xen-pci-lifetime-%d-%s" % (os.getpid(), tmp_path.name)
        self.owners = []

    def owner(self, *args, wrapper=(), env=None, name="owner"):
        """Start an owner (optionally under ``wrapper``, e.g. timeout) in a
        session of its own, so that no signal meant for it reaches pytest."""
        log = open(self.tmp / ("%s-%d.log" % (name, len(self.owners))), "w", encoding="utf-8")  # pylint: disable=consider-using-with
        argv = list(wrapper) + [sys.executable, OWNER, str(self.image), str(self.tmp / ("work-%d" % len(self.owners))),
                                self.tag] + list(args)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # pylint: disable=consider-using-with
                                env=dict(os.environ, **(env or {})))
        log.close()
        proc.log = log.name
        self.owners.append(proc)
        return proc

    def qemu_of(self, owner_pid, timeout=UP_WITHIN):
        """The pidfile record of ``owner_pid``'s QEMU once that QEMU runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _path, record in xenvm.read_records(self.registry):
                if record["owner_pid"] == owner_pid and xenvm.is_running(record["qemu_pid"], record["qemu_start"]):
                    return record
            time.sleep(0.05)
        pytest.fail("no running QEMU recorded for owner %d within %d s; records: %s" % (
            owner_pid, timeout, xenvm.read_records(self.registry)))
        return None

    def tagged(self):
        """Pids of running QEMUs carrying this test's -name."""
        return [pid for pid, argv in xenvm.processes()
                if self.tag.encode() in argv and xenvm.process_start(pid) is not None]

    def cleanup(self):
        for proc in self.owners:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in self.tagged():       # only ever this test's own QEMUs
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(name="run")
def run_fixture(tmp_path):
    run = Run(tmp_path)
    yield run
    run.cleanup()


def assert_gone(run, record, what):
    pid, start = record["qemu_pid"], record["qemu_start"]
    began = time.monotonic()
    gone = xenvm.wait_gone(pid, start, timeout=GONE_WITHIN)
    assert gone, "QEMU %d still runs %.0f s after %s" % (pid, GONE_WITHIN, what)
    assert run.tagged() == [], "QEMUs of this run still running after %s: %s" % (what, run.tagged())
    return time.monotonic() - began


def pidfile(run, record):
    return os.path.join(run.registry, "%d.json" % record["qemu_pid"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_mid_boot_stops_qemu(run, signum):
    """The owner's handlers stop QEMU, drop its pidfile, then let the signal end it."""
    owner = run.owner()
    record = run.qemu_of(owner.pid)
    assert xenvm.is_running(record["qemu_pid"], record["qemu_start"])
    assert os.getpgid(record["qemu_pid"]) == record["qemu_pid"], "QEMU does not lead a process group of its own"
    assert record["owner_start"] == xenvm.process_start(owner.pid)
    owner.send_signal(signum)
    status = owner.wait(timeout=15)
    assert status != 0, "the owner went on after %s" % signum.name
    assert_gone(run, record, signum.name)
    assert not os.path.exists(pidfile(run, record)), "the handler left the pidfile behind"


def test_sigkill_mid_boot_kills_qemu(run):
    """No handler runs on SIGKILL: PR_SET_PDEATHSIG takes QEMU down; the
    pidfile left behind names a dead QEMU, and the next reap only drops it."""
    owner = run.owner()
    record = run.qemu_of(owner.pid)
    owner.kill()
    owner.wait(timeout=15)
    assert_gone(run, record, "SIGKILL of its owner")
    assert os.path.exists(pidfile(run, record))
    assert xenvm.reap_stale(run.registry) == []
    assert not os.path.exists(pidfile(run, record))


def test_timeout_like_run_layers(run):
    """The chain of `make test`: run-layers.sh's ``timeout --kill-after=30 LIMIT make LAYER``,
    whose target runs the layer under a ``timeout`` of its own (a process group
    of its own, which the outer timeout's signal does not reach): the outer
    limit fires mid-boot and the QEMU is gone a few seconds later."""
    if shutil.which("make") is None or shutil.which("timeout") is None:
        pytest.skip("make or timeout (coreutils) is not installed")
    makefile = run.tmp / "Makefile"
    owner_argv = " ".join([sys.executable, OWNER, str(run.image), str(run.tmp / "work-make"), run.tag])
    makefile.write_text("layer:\n\ttimeout --kill-after=30 120 %s\n" % owner_argv, encoding="utf-8")
    argv = ["timeout", "--kill-after=30", "4", "make", "--no-print-directory", "-f", str(makefile), "layer"]
    outer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,  # pylint: disable=consider-using-with
                             start_new_session=True)
    run.owners.append(outer)
    deadline = time.monotonic() + UP_WITHIN
    record = None
    while record is None and time.monotonic() < deadline:
        records = [r for _p, r in xenvm.read_records(run.registry) if xenvm.is_running(r["qemu_pid"], r["qemu_start"])]
        record = records[0] if records else None
        time.sleep(0.05)
    assert record is not None, "the owner under make never started its QEMU"
    assert outer.wait(timeout=60) == 124, "the outer timeout did not fire"
    assert_gone(run, record, "the outer timeout")


def test_direct_timeout(run):
    """The Makefile's own ``timeout LIMIT`` around the layer, alone."""
    owner = run.owner(wrapper=("timeout", "--kill-after=30", "3"))
    # timeout's child (the owner python) is the QEMU's owner
    deadline = time.monotonic() + UP_WITHIN
    while not xenvm.read_records(run.registry) and time.monotonic() < deadline:
        time.sleep(0.05)
    records = xenvm.read_records(run.registry)
    assert records, "no QEMU recorded"
    record = records[0][1]
    assert owner.wait(timeout=60) == 124
    assert_gone(run, record, "timeout 3")


def test_stale_pidfile_reaped_at_next_boot(run):
    """At the start of a boot, QEMUs whose owner is dead are killed; a live
    owner's QEMU, a detached (CLI) one and a pid now naming another process
    are left alone."""
    # Every boot reaps first: all three QEMUs start before any owner dies.
    # A: no pdeathsig (as the CLI's boot before it detaches), owner SIGKILLed.
    orphaned_owner = run.owner("--detached", name="orphaned")
    orphan = run.qemu_of(orphaned_owner.pid)
    # B: a live owner mid-boot.
    live_owner = run.owner(name="live")
    live = run.qemu_of(live_owner.pid)
    # C: detached on purpose (owner_pid null, as `xenvm.py boot` leaves it).
    cli_owner = run.owner("--detached", name="cli")
    cli = run.qemu_of(cli_owner.pid)
    for proc in (orphaned_owner, cli_owner):
        proc.kill()
        proc.wait(timeout=15)
    time.sleep(1.0)
    assert xenvm.is_running(orphan["qemu_pid"], orphan["qemu_start"]), \
        "a QEMU without pdeathsig died with its owner: this test would prove nothing"
    xenvm._write_json(pidfile(run, cli), dict(cli, owner_pid=None, owner_start=None))  # pylint: disable=protected-access
    # D: a pidfile of a dead owner whose pid now names another process (start time differs).
    bystander = subprocess.Popen(["sleep", "60"])  # pylint: disable=consider-using-with
    try:
        reused = {"qemu_pid": bystander.pid, "qemu_start": xenvm.process_start(bystander.pid) - 1,
                  "owner_pid": orphan["owner_pid"], "owner_start": orphan["owner_start"]}
        xenvm._write_json(os.path.join(run.registry, "%d.json" % bystander.pid), reused)  # pylint: disable=protected-access
        # The next boot (a new owner) reaps before it starts its QEMU.
        next_owner = run.owner(name="next")
        run.qemu_of(next_owner.pid)
        assert_gone_only = xenvm.wait_gone(orphan["qemu_pid"], orphan["qemu_start"], timeout=GONE_WITHIN)
        assert assert_gone_only, "the next boot left the QEMU of a dead owner running"
        assert not os.path.exists(pidfile(run, orphan))
        assert xenvm.is_running(live["qemu_pid"], live["qemu_start"]), "the next boot killed a live owner's QEMU"
        assert xenvm.is_running(cli["qemu_pid"], cli["qemu_start"]), "the next boot killed a detached QEMU"
        assert bystander.poll() is None, "a reused pid was killed"
        assert not os.path.exists(os.path.join(run.registry, "%d.json" % bystander.pid))
    finally:
        bystander.kill()
        bystander.wait()
    xenvm.kill_qemu(cli["qemu_pid"], cli["qemu_start"])
    for proc in (live_owner, next_owner):
        proc.terminate()
        proc.wait(timeout=15)
    assert_gone(run, live, "SIGTERM of the remaining owners")


def test_silent_console_ends_the_attempt(run):
    """Readiness, not a fixed limit: an attempt whose console shows nothing
    for XENVM_STALL_TIMEOUT seconds fails at once (the 300 s cap is not
    waited for), and its QEMU is stopped."""
    began = time.monotonic()
    owner = run.owner(env={"XENVM_STALL_TIMEOUT": "2"})
    record = run.qemu_of(owner.pid)
    assert owner.wait(timeout=60) == 3
    assert time.monotonic() - began < 30
    with open(owner.log, encoding="utf-8") as handle:
        out = handle.read()
    assert "showed nothing new for 2 s" in out, out
    assert_gone(run, record, "a stalled attempt")
    assert not os.path.exists(pidfile(run, record))


def test_spent_budget_starts_no_qemu(run):
    """With less of the layer's budget (XENVM_DEADLINE) left than the
    reserve, no boot starts: a loud reason instead of a kill by the limit."""
    owner = run.owner(env={"XENVM_DEADLINE": "%d" % (time.time() + 10)})
    assert owner.wait(timeout=60) == 3
    with open(owner.log, encoding="utf-8") as handle:
        out = handle.read()
    assert "budget is spent" in out, out
    assert xenvm.read_records(run.registry) == []
    assert run.tagged() == []

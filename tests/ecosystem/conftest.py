# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ecosystem layer: xen.pci as its users' tools see it.

``make ecosystem`` runs it with the controller venv on PATH. It checks the
collection the way it is shipped (its artifact, built once per session by
tools/make/ee-context.sh, which also writes an execution environment's build
context), run by ansible-runner as AWX runs jobs, and the simulator as a
package that users' molecule scenarios start. Every simulated host a test
starts is stopped on every way out of it, and the tests check that no
process and no FUSE mount of theirs is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
XENSIM_SRC = os.path.join(ROOT, "tools", "xensim")


def _terminate(signum, frame):
    """SIGTERM (a layer's timeout) ends the session like Ctrl-C, so that
    pytest still runs the teardowns that stop the simulated hosts."""
    raise KeyboardInterrupt("SIGTERM")


def pytest_configure(config):
    signal.signal(signal.SIGTERM, _terminate)


def clean_env(**extra):
    """The environment of a tool run: no PYTHONPATH and no ANSIBLE_* of the
    caller (each test says what it means), no bytecode written anywhere."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    env.update(PYTHONDONTWRITEBYTECODE="1", ANSIBLE_NOCOLOR="1", NO_COLOR="1", ANSIBLE_FORCE_COLOR="0")
    env.update(extra)
    return env


def run(cmd, timeout, check=True, **kwargs):
    """subprocess.run with text output captured; a failure shows both streams."""
    kwargs.setdefault("env", clean_env())
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired as exc:
        pytest.fail("%s did not finish within %s s:\n%s\n%s" % (cmd, timeout, exc.stdout, exc.stderr))
    if check and res.returncode != 0:
        pytest.fail("%s exited %s:\n--- stdout\n%s\n--- stderr\n%s" % (cmd, res.returncode, res.stdout[-6000:],
                                                                       res.stderr[-6000:]))
    return res


def run_group(cmd, timeout, **kwargs):
    """Runs cmd in a session of its own, so that a timeout, a failure or an
    interrupt of the test ends it and everything it started (ansible-runner's
    ansible-playbook, molecule's); returns (returncode, stdout, stderr)."""
    kwargs.setdefault("env", clean_env())
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                          **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException as exc:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            out, err = proc.communicate()
            if isinstance(exc, subprocess.TimeoutExpired):
                pytest.fail("%s did not finish within %s s:\n%s\n%s" % (cmd, timeout, out[-6000:], err[-6000:]))
            raise
    return proc.returncode, out, err


def short_tmpdir(prefix):
    """A directory directly under /tmp: AF_UNIX socket paths are limited to 107 bytes."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def mounts_under(prefix):
    prefix = prefix.rstrip("/") + "/"
    with open("/proc/mounts", encoding="utf-8") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points if p.startswith(prefix)]


def processes_mentioning(text):
    """Pids of the processes (other than this one) whose command line contains text."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(pid))
    return found


def force_clean(prefix):
    """Kill every process that names prefix and unmount what is under it;
    returns what it had to clean (nothing, when the code under test did its job)."""
    left = []
    for pid in processes_mentioning(prefix):
        left.append("process %d" % pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for mnt in sorted(mounts_under(prefix), reverse=True):
        left.append("mount %s" % mnt)
        subprocess.run(["fusermount", "-u", "-z", mnt], capture_output=True, check=False)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
    return left


class SimulatedHost:
    """``xensim serve`` in a subprocess, bounded in time by ``timeout``,
    started from the source tree (tools/xensim)."""

    def __init__(self, scenario, lifetime=900):
        self.dir = short_tmpdir("xe-")
        self.out = open(os.path.join(self.dir, "serve.out"), "w+", encoding="utf-8")   # pylint: disable=consider-using-with
        self.err = open(os.path.join(self.dir, "serve.err"), "w+", encoding="utf-8")   # pylint: disable=consider-using-with
        # Same process group as pytest: a Ctrl-C or a group-wide SIGTERM
        # reaches the simulator too. timeout bounds its life if all else fails.
        self.proc = subprocess.Popen(   # pylint: disable=consider-using-with
            ["timeout", "--foreground", "--kill-after=10", str(lifetime), sys.executable, "-m", "xensim", "serve",
             "--scenario", scenario, "--state-dir", self.dir],
            stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err, env=clean_env(PYTHONPATH=XENSIM_SRC))
        self.paths = None

    def wait_ready(self, seconds=60):
        """Waits for the JSON line of served paths."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.out.seek(0)
            line = self.out.readline()
            if line.endswith("\n"):
                self.paths = json.loads(line)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.err.seek(0)
        raise RuntimeError("xensim serve did not report ready within %s s: %s" % (seconds, self.err.read()))

    @property
    def connection(self):
        """The xen.pci modules' connection options for this host."""
        p = self.paths
        return {"xenstore_path": p["xenstored"], "sysfs_root": p["sysfs_root"], "hypervisor": "xensim:" + p["hypervisor"],
                "userdata_dir": p["userdata_dir"], "qmp_dir": p["qmp_dir"], "timeout": 60}

    def stop(self):
        """SIGTERM, a bounded wait for its clean stop (it unmounts its sysfs),
        then force; returns what had to be forced."""
        forced = []
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                forced.append("xensim did not stop within 15 s of SIGTERM")
                self.proc.kill()
                self.proc.wait(timeout=10)
            else:
                if self.proc.returncode != 0:
                    forced.append("xensim exited %s on SIGTERM" % self.proc.returncode)
        else:
            forced.append("xensim exited %s before it was stopped" % self.proc.returncode)
        if forced:
            self.err.seek(0)
            forced.append("its stderr: %s" % self.err.read()[-2000:])
        forced += force_clean(self.dir)
        self.out.close()
        self.err.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return forced


@pytest.fixture
def simulated_hosts():
    """``start(scenario)``: a started simulated host; every one is stopped at
    the end of the test, and the test fails if one had to be forced."""
    hosts = []

    def start(scenario):
        host = SimulatedHost(scenario)
        hosts.append(host)      # stopped at the end even if it never comes up
        host.wait_ready()
        return host

    yield start
    forced = []
    for host in hosts:
        forced += host.stop()
    assert not forced, "simulated hosts not stopped cleanly: %s" % forced


@pytest.fixture(scope="session")
def ee_build(tmp_path_factory):
    """tools/make/ee-context.sh (what ``make ee-context`` runs): the collection
    artifact and, beside it, the EE definition and its build context."""
    out = tmp_path_factory.mktemp("ee")
    res = run([os.path.join(ROOT, "tools", "make", "ee-context.sh"), str(out)], timeout=180,
              env=clean_env(XEN_PCI_ROOT=ROOT))
    context = res.stdout.strip().splitlines()[-1]
    artifacts = sorted(f for f in os.listdir(str(out)) if f.startswith("xen-pci-") and f.endswith(".tar.gz"))
    assert len(artifacts) == 1, artifacts
    return {"dir": str(out), "context": context, "artifact": os.path.join(str(out), artifacts[0])}


@pytest.fixture(scope="session")
def collections_path(ee_build, tmp_path_factory):
    """A collections path holding xen.pci installed from its artifact, as an
    EE or ``ansible-galaxy collection install`` has it."""
    path = str(tmp_path_factory.mktemp("collections"))
    run(["ansible-galaxy", "collection", "install", "--offline", "-p", path, ee_build["artifact"]], timeout=120)
    assert os.path.isfile(os.path.join(path, "ansible_collections", "xen", "pci", "MANIFEST.json"))
    return path

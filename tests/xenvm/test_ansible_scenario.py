# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's modules, run by ansible-playbook from the controller
against real Xen 4.17's dom0 as an ordinary inventory host (ssh on loopback).

Each step runs playbooks/module_step.yml (one module, its whole result saved
as JSON on the controller) and checks the result against what real Xen shows:
the guest's own view (its xenstore ``data/pci-devices``), ``xl pci-list``,
``xl pci-assignable-list``, the backend's keys and sysfs driver links.

The collection is found through ``$XEN_PCI_COLLECTION_TREE/link`` (the
Makefile's symlink tree) when set, else a symlink tree in a temporary
directory.  Module host options are the defaults, which fit a real dom0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import E1000, EDU, REMOTE, REQUEST_TIMEOUT, TESTDEV, collections_path, paced, timings_table, vm_fixture_body

XENVM_SHARED = True    # conftest.py: one VM with test_differential.py
DOMU = "ansu"
PLAYBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "playbooks", "module_step.yml")
PLAY_TIMEOUT = 240.0
TIMINGS = []        # (step, playbook seconds, None, note)


class Ansible:
    """ansible-playbook against the VM's dom0."""

    def __init__(self, host, workdir):
        self.host = host
        self.workdir = workdir
        binary = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
        self.binary = binary if os.access(binary, os.X_OK) else shutil.which("ansible-playbook")
        self.inventory = os.path.join(workdir, "inventory.json")
        vm = host.vm
        with open(self.inventory, "w", encoding="utf-8") as handle:
            json.dump({"all": {"hosts": {
                "dom0": {"ansible_host": "127.0.0.1", "ansible_port": vm.port, "ansible_user": "root",
                         "ansible_ssh_private_key_file": vm.key, "ansible_python_interpreter": "/usr/bin/python3",
                         "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"},
                "localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}, handle)
        self.env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(workdir), ANSIBLE_PIPELINING="1",
                        ANSIBLE_HOST_KEY_CHECKING="0", ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
                        ANSIBLE_LOCAL_TEMP=os.path.join(workdir, "tmp"), ANSIBLE_TIMEOUT="30")
        self.count = 0

    def run(self, module, **options):
        """(result dict, playbook seconds).  The result is the module's own,
        saved by the playbook even when the task failed."""
        self.count += 1
        name = "%02d-%s" % (self.count, module)
        result_file = os.path.join(self.workdir, name + ".result.json")
        extra = {"xenvm_module": module, "xenvm_result_file": result_file}
        if module in ("assignable", "passthrough", "info"):
            extra["xenvm_timeout"] = round(paced(REQUEST_TIMEOUT))
        extra.update(("xenvm_" + key, value) for key, value in options.items())
        extra_file = os.path.join(self.workdir, name + ".vars.json")
        with open(extra_file, "w", encoding="utf-8") as handle:
            json.dump(extra, handle)
        start = time.monotonic()
        try:
            proc = subprocess.run([self.binary, "-i", self.inventory, "-e", "@" + extra_file, PLAYBOOK], cwd=self.workdir,
                                  env=self.env, capture_output=True, text=True, timeout=paced(PLAY_TIMEOUT), check=False)
        except subprocess.TimeoutExpired as exc:
            pytest.fail("ansible-playbook (%s %s) did not finish within %d s:\n%s\n%s" % (
                module, options, paced(PLAY_TIMEOUT), exc.stdout, self.host.diagnose()))
        seconds = time.monotonic() - start
        with open(os.path.join(self.workdir, name + ".log"), "w", encoding="utf-8") as handle:
            handle.write(proc.stdout + proc.stderr)
        try:
            with open(result_file, encoding="utf-8") as handle:
                result = json.load(handle)
        except (OSError, ValueError):
            pytest.fail("ansible-playbook (%s %s) saved no result (exit %d):\n%s\n%s\n%s" % (
                module, options, proc.returncode, proc.stdout[-4000:], proc.stderr[-2000:], self.host.diagnose()))
        # The playbook fails exactly when the module failed.
        assert (proc.returncode != 0) == bool(result.get("failed")), (proc.returncode, result, proc.stdout[-3000:])
        return result, seconds

    def ok(self, step, module, **options):
        """Run a module that must succeed; its result."""
        result, seconds = self.run(module, **options)
        if result.get("failed"):
            pytest.fail("xen.pci.%s FAILED ON REAL XEN (%s): %s\n%s" % (
                module, options, json.dumps(result, indent=2, default=repr)[:6000], self.host.diagnose()))
        TIMINGS.append((step, seconds, None, "changed=%s" % result.get("changed")))
        return result


@pytest.fixture(scope="module", name="host")
def host_fixture():
    yield from vm_fixture_body("ansible", DOMU)


def ansible_with_guest(host, workdir):
    """An Ansible runner against dom0 (or pytest.skip), and the module's
    guest started, seeing no PCI device."""
    runner = Ansible(host, workdir)
    if not runner.binary:
        pytest.skip("ansible-playbook is not installed next to %s nor on PATH" % sys.executable)
    host.create()
    assert host.guest_view() == {}, "the guest sees PCI devices before any attach"
    return runner


@pytest.fixture(scope="module", name="ansible")
def ansible_fixture(host, tmp_path_factory):
    return ansible_with_guest(host, str(tmp_path_factory.mktemp("ansible")))


def backend_keys(host, *names):
    be = "/local/domain/0/backend/pci/%d/0" % host.domid
    return host.sh("xenstore-read %s" % " ".join("%s/%s" % (be, n) for n in names)).stdout.split()


def missing(host, name):
    return host.sh("xenstore-read /local/domain/0/backend/pci/%d/0/%s" % (host.domid, name), check=False).returncode != 0


def wait_driver(host, bdf, want, timeout=20.0):
    timeout = paced(timeout)
    start = time.monotonic()
    while host.driver(bdf) != want:
        if time.monotonic() - start > timeout:
            pytest.fail("%s is bound to %r, not %r, %d s later\n%s" % (bdf, host.driver(bdf), want, timeout, host.diagnose()))
        time.sleep(0.5)


def info_agrees_with_xl(host, ansible, step, attached):
    """xen.pci.info's assignable list is xl's; the guest's devices are ``attached``."""
    info = ansible.ok(step, "info")
    assert info["changed"] is False
    assert sorted(info["assignable"]) == host.assignable_list(), info["assignable"]
    devices = sorted(d["bdf"] for d in info["domains"][DOMU]["devices"])
    assert devices == sorted(attached), info["domains"][DOMU]
    return info


def test_01_make_assignable(host, ansible):
    result = ansible.ok("assignable 10.0+11.0", "assignable", devices=[EDU, TESTDEV])
    assert result["changed"] is True, result
    listed = host.assignable_list()
    assert EDU in listed and TESTDEV in listed, listed


def test_02_attach_two_in_one_task(host, ansible):
    """No backend yet (the case of Xen commit 73ee2795aaef): one task, two devices."""
    result = ansible.ok("passthrough attach 10.0+11.0 (no backend)", "passthrough", domain=DOMU, devices=[EDU, TESTDEV])
    assert result["changed"] is True, result
    host.wait_guest([EDU, TESTDEV])
    assert host.pci_list() == [EDU, TESTDEV]
    assert backend_keys(host, "num_devs", "state") == ["2", "4"]


def test_03_rerun_changes_nothing(host, ansible):
    result = ansible.ok("passthrough rerun", "passthrough", domain=DOMU, devices=[EDU, TESTDEV])
    assert result["changed"] is False, result
    assert host.pci_list() == [EDU, TESTDEV]


def test_04_e1000_refused_unless_taken(host, ansible):
    assert host.driver(E1000) == "e1000", "precondition: dom0's e1000 driver holds %s" % E1000
    refused, _seconds = ansible.run("assignable", devices=[E1000])
    assert refused.get("failed") is True, refused
    assert "in use by the dom0 driver e1000" in refused.get("msg", ""), refused
    assert host.driver(E1000) == "e1000", "a refused request changed the driver"
    refused, _seconds = ansible.run("passthrough", domain=DOMU, devices=[E1000])
    assert refused.get("failed") is True, refused
    assert host.driver(E1000) == "e1000" and host.pci_list() == [EDU, TESTDEV]
    result = ansible.ok("assignable 12.0 take_from_driver", "assignable", devices=[E1000], take_from_driver=True)
    assert result["changed"] is True, result
    wait_driver(host, E1000, "pciback")
    assert E1000 in host.assignable_list()


def test_05_attach_third_backend_present(host, ansible):
    result = ansible.ok("passthrough attach 12.0 (backend present)", "passthrough", domain=DOMU, devices=[E1000])
    assert result["changed"] is True, result
    host.wait_guest([EDU, TESTDEV, E1000])
    assert host.pci_list() == [EDU, TESTDEV, E1000]
    assert backend_keys(host, "num_devs", "key-0", "key-1", "key-2") == ["3", EDU, TESTDEV, E1000]


def test_06_detach_middle(host, ansible):
    result = ansible.ok("passthrough detach 11.0 (middle)", "passthrough", domain=DOMU, devices=[TESTDEV], state="absent")
    assert result["changed"] is True, result
    host.wait_guest([EDU, E1000])
    assert host.pci_list() == [EDU, E1000]
    # the higher index moved down
    assert backend_keys(host, "num_devs", "key-0", "dev-0", "state-0", "key-1", "dev-1", "state-1") == [
        "2", EDU, EDU, "3", E1000, E1000, "3"]
    assert missing(host, "key-2") and missing(host, "state-2"), "index 2 left after renumbering"


def test_07_xl_and_info_agree(host, ansible):
    assert host.pci_list() == [EDU, E1000]
    assert TESTDEV in host.assignable_list()
    info_agrees_with_xl(host, ansible, "info", [EDU, E1000])


def test_08_xl_detaches_what_we_attached(host, ansible):
    seconds = host.xl("pci-detach %s %s" % (DOMU, EDU))
    TIMINGS.append(("xl pci-detach 10.0 (ours)", None, seconds, "interop"))
    host.wait_guest([E1000])
    assert host.pci_list() == [E1000]
    info = info_agrees_with_xl(host, ansible, "info", [E1000])
    assert EDU in info["assignable"]


def test_09_e1000_given_back(host, ansible):
    result = ansible.ok("passthrough detach 12.0 (last)", "passthrough", domain=DOMU, devices=[E1000], state="absent")
    assert result["changed"] is True, result
    host.wait_guest([])
    assert host.pci_list() == []
    result = ansible.ok("assignable 12.0 absent", "assignable", devices=[E1000], state="absent")
    assert result["changed"] is True, result
    wait_driver(host, E1000, "e1000")
    assert E1000 not in host.assignable_list()


def test_10_paused_domain(host, ansible):
    """Attach to a guest created paused: no wait; it sees the device once unpaused."""
    host.destroy()
    host.create(paused=True)
    result = ansible.ok("passthrough attach 10.0 (paused guest)", "passthrough", domain=DOMU, devices=[EDU])
    assert result["changed"] is True, result
    assert host.pci_list() == [EDU]
    host.sh("xl unpause %s" % DOMU)
    host.wait_up()
    host.wait_guest([EDU])


def test_11_domain_config_recreate(host, ansible):
    """xen.pci.domain_config writes pci=; a recreated guest gets its devices back."""
    path = "%s/%s.cfg" % (REMOTE, DOMU)
    result = ansible.ok("domain_config 10.0+11.0", "domain_config", path=path, devices=[EDU, TESTDEV])
    assert result["changed"] is True, result
    assert "pci" in host.sh("cat %s" % path).stdout
    host.destroy()
    host.create()
    host.wait_guest([EDU, TESTDEV])
    assert host.pci_list() == [EDU, TESTDEV]


def _xl_tasks(ansible, verb, devices):
    """``xl pci-<verb>`` of each device as an ansible.builtin.command module
    run (the baseline a playbook would use without the collection);
    playbook seconds."""
    result, seconds = ansible.run("command", commands=[["xl", "pci-" + verb, DOMU, bdf] for bdf in devices])
    assert not result.get("failed"), json.dumps(result, indent=2)[:4000]
    return seconds


def test_12_tasks_next_to_xl_tasks(host, ansible):
    """Our attach and detach as whole tasks next to xl pci-attach/pci-detach
    as command tasks, both paying Ansible's floor: one device, then three
    devices in one task next to three xl module runs.  A measurement (about
    270 s of the layer's budget), so run on request only:
    ``XENVM_TASK_COSTS=1 make xen``."""
    if os.environ.get("XENVM_TASK_COSTS") != "1":
        pytest.skip("a measurement, not a check of its own (about 270 s): XENVM_TASK_COSTS=1 make xen runs it")
    ansible.ok("passthrough detach 10.0+11.0 (one task)", "passthrough", domain=DOMU, devices=[EDU, TESTDEV],
               state="absent")
    host.wait_guest([])
    ansible.ok("assignable 12.0 take_from_driver", "assignable", devices=[E1000], take_from_driver=True)
    wait_driver(host, E1000, "pciback")
    rows = []
    for label, devices in (("1 device", [EDU]), ("3 devices", [EDU, TESTDEV, E1000])):
        ours_attach = ansible.run("passthrough", domain=DOMU, devices=devices)
        assert ours_attach[0].get("changed") is True, ours_attach[0]
        host.wait_guest(devices)
        ours_detach = ansible.run("passthrough", domain=DOMU, devices=devices, state="absent")
        assert ours_detach[0].get("changed") is True, ours_detach[0]
        host.wait_guest([])
        xl_attach = _xl_tasks(ansible, "attach", devices)
        host.wait_guest(devices)
        assert host.pci_list() == sorted(devices)
        xl_detach = _xl_tasks(ansible, "detach", devices)
        host.wait_guest([])
        assert host.pci_list() == []
        rows.append(("attach " + label, ours_attach[1], xl_attach))
        rows.append(("detach " + label, ours_detach[1], xl_detach))
    for op, ours, xl in rows:
        TIMINGS.append(("task: %s (ours: one task; xl: one command run per device)" % op, ours, xl,
                        "ours/xl %.2fx" % (ours / xl)))
    ansible.ok("assignable 12.0 absent", "assignable", devices=[E1000], state="absent")
    wait_driver(host, E1000, "e1000")


def test_zz_timings(host, capsys):
    text = timings_table("real Xen 4.17 (QEMU TCG) ansible scenario: whole ansible-playbook runs from the controller "
                         "(ssh, module transfer, python in dom0); xl measured in dom0:", TIMINGS)
    with open(os.path.join(host.artifacts, "timings.md"), "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    with capsys.disabled():
        sys.stdout.write(text + "\n")
    assert TIMINGS

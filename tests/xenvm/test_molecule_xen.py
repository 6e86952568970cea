# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The molecule scenario extensions/molecule/xen on the layer's shared VM.

``molecule test -s xen`` with ``XENVM_STATE`` naming the shared VM: create
reuses it (no second boot), prepare starts a PV guest, converge runs the
rollout role xen.pci.passthrough over ssh, idempotence reruns it (molecule
fails on any changed task), verify checks that ``xl pci-list``, the guest's
own view, xen.pci.info and the guest's config file agree with the
declaration, destroy gives the VM back without the guest and with the devices
off pciback.  Runs after the other real-Xen modules (file order), as the
scenario takes the devices they use.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

import xenvm
from conftest import REQUEST_TIMEOUT, ROOT, loud_skip, paced, shared_vm, xenvm_artifacts

XENVM_SHARED = True    # conftest.py: the VM of test_ansible_scenario.py and test_differential.py
MOLECULE_TIMEOUT = 900.0
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def test_molecule_xen_scenario(tmp_path):
    binary = os.path.join(os.path.dirname(sys.executable), "molecule")
    molecule = binary if os.access(binary, os.X_OK) else shutil.which("molecule")
    if not molecule:
        loud_skip("MOLECULE XEN SCENARIO SKIPPED: molecule is not installed",
                  "molecule is not installed next to %s nor on PATH" % sys.executable)
    vm = shared_vm()
    state = tmp_path / "xenvm-state.json"
    state.write_text(json.dumps({"port": vm.port, "key": vm.key, "image": vm.image, "serial": vm.serial_log}),
                     encoding="utf-8")
    left = xenvm.budget_left()
    limit = MOLECULE_TIMEOUT if left is None else max(60.0, min(MOLECULE_TIMEOUT, left - 30.0))
    env = dict(os.environ, XENVM_STATE=str(state), XENVM_REQUEST_TIMEOUT="%.0f" % paced(REQUEST_TIMEOUT),
               ANSIBLE_NOCOLOR="1", NO_COLOR="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    log = os.path.join(xenvm_artifacts("molecule"), "molecule-test-xen.log")
    start = time.monotonic()
    try:
        proc = subprocess.run([molecule, "test", "-s", "xen"], cwd=os.path.join(ROOT, "extensions"), env=env,
                              capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail("molecule test -s xen did not finish within %d s:\n%s" % (limit, out[-6000:]))
    output = proc.stdout + proc.stderr
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(output)
    assert proc.returncode == 0, "molecule test -s xen failed (exit %d, log %s):\n%s" % (
        proc.returncode, log, output[-8000:])
    # dom0's recaps in order: destroy (nothing), prepare, converge, idempotence, verify, destroy.
    dom0 = [(int(ok), int(changed)) for host, ok, changed, _u, _f in RECAP.findall(output) if host == "xen-dom0"]
    changed = [c for _ok, c in dom0]
    assert len(dom0) >= 5, "expected dom0 recaps of prepare, converge, idempotence, verify, destroy: %s" % dom0
    converge, idempotence, verify = changed[-4], changed[-3], changed[-2]
    assert converge > 0, "converge changed nothing on a fresh guest: %s" % dom0
    assert idempotence == 0 and verify == 0, dom0
    sys.stdout.write("\nmolecule test -s xen: %.1f s on the shared VM (dom0 recaps ok/changed: %s)\n" % (
        time.monotonic() - start, dom0))

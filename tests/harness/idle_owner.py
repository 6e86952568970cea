# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stand-in for the xen layer's pytest process, for test_vm_lifetime.py.

    python idle_owner.py IMAGE_DIR WORKDIR TAG [--detached]

Boots through ``xenvm.XenVM.boot()`` -- the harness's own start, pidfile,
handlers and readiness wait -- with one difference: QEMU runs ``-machine
none`` (no guest, no CPU load), so the readiness marker never comes and the
process waits "mid-boot" until it is killed, its console stall limit
(``XENVM_STALL_TIMEOUT``) or its budget (``XENVM_DEADLINE``) ends the wait.
``TAG`` names the QEMU (``-name``) so that a test finds every QEMU of its own
run.  ``--detached``: no PR_SET_PDEATHSIG, as for the CLI's ``boot``.
Prints ``UNAVAILABLE: <reason>`` and exits 3 when the boot gives up.
"""

from __future__ import annotations

import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "xenvm"))

import xenvm  # noqa: E402  pylint: disable=wrong-import-position,import-error


class IdleVM(xenvm.XenVM):
    """A XenVM whose QEMU has no machine: it starts, records itself and idles."""

    tag = "xen-pci-lifetime-test"

    def qemu_argv(self):
        qemu = shutil.which(xenvm.QEMU)
        if qemu is None:
            raise xenvm.Unavailable("%s is not installed" % xenvm.QEMU)
        return [qemu, "-name", self.tag, "-machine", "none", "-nodefaults", "-display", "none"], "idle test QEMU"


def main(argv):
    image, workdir, tag = argv[:3]
    vm = IdleVM(image, workdir=workdir, die_with_owner="--detached" not in argv)
    vm.tag = tag
    try:
        vm.boot(timeout=float(os.environ.get("IDLE_OWNER_TIMEOUT", "300")), attempts=1)
    except xenvm.Unavailable as exc:
        print("UNAVAILABLE: %s" % exc, flush=True)
        return 3
    print("READY (not expected)", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

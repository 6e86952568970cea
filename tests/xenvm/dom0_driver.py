# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the collection's hotplug core inside a real dom0 (copied there by
test_differential.py, with plugins/module_utils under PYTHONPATH).

    python3 dom0_driver.py attach DOMAIN BDF [BDF...]
    python3 dom0_driver.py detach DOMAIN BDF [BDF...]

Prints one JSON object: ok, seconds (the core's own call, connect excluded),
import_seconds, connect_seconds, in_process_seconds, attached/detached, actions, warnings, and on failure the
error's class, message, details and traceback.  Exit status 0 iff ok.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()      # before any import: import cost is reported

import json  # noqa: E402  pylint: disable=wrong-import-position
import sys  # noqa: E402  pylint: disable=wrong-import-position
import traceback  # noqa: E402  pylint: disable=wrong-import-position


def main(argv):
    op, domain, bdfs = argv[0], argv[1], argv[2:]
    result = {"ok": False, "op": op, "domain": domain, "bdfs": bdfs}
    platform = None
    try:
        # Imported here so that an import error is reported like any other.
        from ansible_collections.xen.pci.plugins.module_utils._bdf import PciSpec  # pylint: disable=import-outside-toplevel
        from ansible_collections.xen.pci.plugins.module_utils._hotplug import (  # pylint: disable=import-outside-toplevel
            AttachItem, Hotplug, connect)
        start = time.monotonic()
        result["import_seconds"] = round(start - STARTED, 3)
        platform = connect(hypervisor="libxenctrl")
        result["connect_seconds"] = round(time.monotonic() - start, 3)
        hotplug = Hotplug(platform, timeout=60)
        start = time.monotonic()
        if op == "attach":
            outcome = hotplug.attach(domain, [AttachItem(PciSpec.parse(b).expand()[0]) for b in bdfs])
        elif op == "detach":
            outcome = hotplug.detach(domain, bdfs)
        else:
            raise SystemExit("unknown op %r" % op)
        result["seconds"] = round(time.monotonic() - start, 3)
        result.update(ok=True, attached=outcome.attached, detached=outcome.detached, actions=outcome.report.actions,
                      warnings=outcome.report.warnings, waited=outcome.report.waited)
    except Exception as exc:  # pylint: disable=broad-except
        # Everything goes back to the test verbatim: a real-Xen failure is the finding.
        result["error"] = {"type": type(exc).__name__, "msg": str(exc),
                           "details": getattr(exc, "details", None)}
        result["traceback"] = traceback.format_exc()
    finally:
        if platform is not None:
            platform.xs.close()
            if platform.xenctrl is not None:
                platform.xenctrl.close()
    result["in_process_seconds"] = round(time.monotonic() - STARTED, 3)
    sys.stdout.write(json.dumps(result, default=repr) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the collection's hotplug core inside a real dom0 (copied there by
test_differential.py, with plugins/module_utils under PYTHONPATH).

    python3 dom0_driver.py attach DOMAIN BDF [BDF...]
    python3 dom0_driver.py detach DOMAIN BDF [BDF...]

``XEN_PCI_TIMEOUT`` (seconds, default 60): the request's timeout, which the
test stretches on a slow machine as it does its own limits.
``XEN_PCI_FORCE=1``: a detach with force.
``XEN_PCI_QMP_TRANSCRIPT=1``: record the request's QMP messages (result ``qmp``).

Prints one JSON object: ok, seconds (the core's own call, connect excluded),
import_seconds, connect_seconds, in_process_seconds, attached/detached, actions, warnings, qmp (the QMP
messages, when recorded), and on failure the error's class, message, details and traceback.  Exit status 0
iff ok.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()      # before any import: import cost is reported

import json  # noqa: E402  pylint: disable=wrong-import-position
import os  # noqa: E402  pylint: disable=wrong-import-position
import sys  # noqa: E402  pylint: disable=wrong-import-position
import traceback  # noqa: E402  pylint: disable=wrong-import-position


def record_qmp(transcript):
    """Every QMP message our core sends and receives from now on, appended
    to ``transcript`` as {"out": command} / {"in": reply, event or greeting}:
    what test_hvm.py compares between real QEMU and the simulator's.
    Returns the function that stops the recording."""
    # pylint: disable=import-outside-toplevel,protected-access
    from ansible_collections.xen.pci.plugins.module_utils._qmp import QmpSession
    send, read = QmpSession._send, QmpSession._read_message

    def _send(self, obj, dl, started, **ctx):
        transcript.append({"out": obj})
        return send(self, obj, dl, started, **ctx)

    def _read_message(self, dl, waiting_for, started, **ctx):
        msg = read(self, dl, waiting_for, started, **ctx)
        if msg is not None:
            transcript.append({"in": msg})
        return msg
    QmpSession._send, QmpSession._read_message = _send, _read_message

    def restore():
        QmpSession._send, QmpSession._read_message = send, read
    return restore


def main(argv):
    op, domain, bdfs = argv[0], argv[1], argv[2:]
    result = {"ok": False, "op": op, "domain": domain, "bdfs": bdfs, "qmp": []}
    platform = None
    try:
        # Imported here so that an import error is reported like any other.
        from ansible_collections.xen.pci.plugins.module_utils._host_options import (  # pylint: disable=import-outside-toplevel
            host_defaults, platform_from)
        from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import (  # pylint: disable=import-outside-toplevel
            run_passthrough)
        start = time.monotonic()
        result["import_seconds"] = round(start - STARTED, 3)
        if os.environ.get("XEN_PCI_QMP_TRANSCRIPT") == "1":
            record_qmp(result["qmp"])
        params = host_defaults(timeout=float(os.environ.get("XEN_PCI_TIMEOUT") or 60.0), state="present" if op == "attach" else "absent", make_assignable=False,
                               force=os.environ.get("XEN_PCI_FORCE", "0") == "1")
        if op not in ("attach", "detach"):
            raise SystemExit("unknown op %r" % op)
        platform = platform_from(params)
        result["connect_seconds"] = round(time.monotonic() - start, 3)
        start = time.monotonic()
        before = set(bdfs) if op == "detach" else set()
        outcome = run_passthrough(params, {domain: bdfs}, platform=platform)
        result["seconds"] = round(time.monotonic() - start, 3)
        now = {d["bdf"] for dom in outcome["domains"].values() for d in dom["devices"]}
        done = sorted(set(bdfs) & now) if op == "attach" else sorted(before - now)
        result.update(ok=True, attached=done if op == "attach" else [], detached=done if op == "detach" else [],
                      actions=outcome["actions"], warnings=outcome["warnings_detail"], waited=outcome.get("waited", 0),
                      left=outcome.get("left", []),
                      # What the request read back: (BDF, virtual devfn) of the guest's devices.
                      devices=sorted([d["bdf"], d.get("vdevfn")] for dom in outcome["domains"].values()
                                     for d in dom["devices"]))
    except Exception as exc:  # pylint: disable=broad-except
        # Everything goes back to the test verbatim: a real-Xen failure is the finding.
        result["error"] = {"type": type(exc).__name__, "msg": str(exc),
                           "details": getattr(exc, "details", None)}
        result["traceback"] = traceback.format_exc()
    finally:
        if platform is not None:
            platform.close()
    result["in_process_seconds"] = round(time.monotonic() - STARTED, 3)
    sys.stdout.write(json.dumps(result, default=repr) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

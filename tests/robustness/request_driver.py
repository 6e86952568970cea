# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One request of a module runner in a process of its own, for the tests
that kill requests part-way and that race several of them.

    python request_driver.py '{"runner": "passthrough", "params": {...},
                               "desired": {...}, "kill_at": "step:2:grant:before",
                               "points": "/tmp/points.json"}'

``kill_at``: the engine point (see _engine.Context.checkpoint) at which
the process sends itself SIGKILL, as an OOM kill or a dropped ssh
connection ends a module. ``points``: a file to write every point reached
to. Prints one JSON line: ok, result or error (class, message, details).
"""

from __future__ import annotations

import json
import os
import signal
import sys


def main(argv):
    spec = json.loads(argv[0])
    seen = []

    def hook(point):
        seen.append(point)
        if point == spec.get("kill_at"):
            if spec.get("points"):
                _dump(spec["points"], seen)
            os.kill(os.getpid(), signal.SIGKILL)

    out = {"ok": False}
    try:
        # Imported here, so that a broken import is reported like any other failure.
        from ansible_collections.xen.pci.plugins.module_utils._errors import XenPciError  # pylint: disable=import-outside-toplevel
        if spec["runner"] == "passthrough":
            from ansible_collections.xen.pci.plugins.module_utils._runner_passthrough import (  # pylint: disable=import-outside-toplevel
                run_passthrough)
            result = run_passthrough(spec["params"], spec["desired"], hook=hook)
        else:
            from ansible_collections.xen.pci.plugins.module_utils._runner_assignable import (  # pylint: disable=import-outside-toplevel
                run_assignable)
            result = run_assignable(spec["params"], hook=hook)
        out.update(ok=True, result=result)
    except XenPciError as exc:   # pylint: disable=used-before-assignment
        out["error"] = {"class": type(exc).__name__, "msg": exc.msg, "details": exc.details}
    if spec.get("points"):
        _dump(spec["points"], seen)
    sys.stdout.write(json.dumps(out, default=repr) + "\n")
    return 0 if out["ok"] else 1


def _dump(path, seen):
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(seen, handle)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A callback of the fleet benchmark: the wall time of each phase of the
rollout role (plan, preflight, assignable, persist, hotplug, verify, by the
prefix of its task names) and the module calls it made, written as JSON to
the file named by XEN_PCI_PHASES_FILE when the playbook ends."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

PHASES = ("Plan", "Preflight", "Assignable", "Persist", "Hotplug", "Verify")


def _phase(name):
    head = name.split("|", 1)[0].strip() if "|" in name else ""
    tail = head.split(":")[-1].strip()
    return tail if tail in PHASES else "other"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "xen_pci_phases"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.seconds = {}
        self.calls = {}
        self._current = None
        self._started = None

    def _close(self):
        if self._current is not None:
            self.seconds[self._current] = self.seconds.get(self._current, 0.0) + time.monotonic() - self._started
        self._current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self._current = _phase(task.get_name())
        self._started = time.monotonic()

    def _count(self, result):
        action = result._task.action  # pylint: disable=protected-access
        if action.startswith("xen.pci."):
            phase = _phase(result._task.get_name())  # pylint: disable=protected-access
            self.calls[phase] = self.calls.get(phase, 0) + 1

    def v2_runner_on_ok(self, result):
        self._count(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._count(result)

    def v2_playbook_on_stats(self, stats):
        self._close()
        path = os.environ.get("XEN_PCI_PHASES_FILE")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump({"seconds": self.seconds, "module_calls": self.calls}, handle)

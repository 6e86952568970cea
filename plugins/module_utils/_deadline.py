# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deadlines: one monotonic time budget handed down through nested calls.

A request (attach three devices) has one timeout; every step inside it
(xenstore round trips, watch waits, QMP commands) spends from the same
budget, so the whole request is bounded, not each step separately.
"""

from __future__ import annotations

import time

from ansible_collections.xen.pci.plugins.module_utils._errors import DeadlineExceeded


class Deadline:
    """A point in monotonic time; ``what`` names the operation for errors."""

    def __init__(self, seconds, what="operation"):
        if seconds is None or seconds <= 0:
            raise ValueError("a deadline needs a positive number of seconds")
        self.seconds = float(seconds)
        self.what = what
        self.start = time.monotonic()
        self.end = self.start + self.seconds

    def remaining(self):
        return max(0.0, self.end - time.monotonic())

    def elapsed(self):
        return time.monotonic() - self.start

    @property
    def expired(self):
        return time.monotonic() >= self.end

    def sub(self, seconds, what=None):
        """A shorter deadline inside this one (never longer than what is left)."""
        child = Deadline(max(min(seconds, self.remaining()), 1e-6), what or self.what)
        return child

    def check(self, doing=None, **details):
        """Raise DeadlineExceeded if the time is up."""
        if self.expired:
            raise self.exceeded(doing, **details)

    def exceeded(self, doing=None, **details):
        msg = "timed out after %.1f s %s" % (self.elapsed(), doing or ("waiting for " + self.what))
        return DeadlineExceeded(msg, waited=round(self.elapsed(), 3), timeout=self.seconds, **details)

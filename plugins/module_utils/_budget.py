# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A task's timeout, split by phase.

The forward work of a request (waits, writes, confirmations) may not spend
the whole timeout: a share is kept back so that a failure can still be
undone, ``force`` can still rebuild a backend, and the host can still be
read back for the report. Without that reserve, a wait that uses the whole
budget leaves the undo to run on an expired deadline, which is how a guest
used to end up half attached.

    budget = Budget(30, "xen.pci.passthrough")
    budget.work       # forward steps: ends RESERVE earlier than the timeout
    budget.reserve()  # undo / force / read-back: what is left of the whole
    budget.final()    # the read-back of the result, with a short grace
"""

from __future__ import annotations

import math

from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline

# Accepted task timeouts (seconds): long enough for one attach on a real
# host, short enough that a stuck guest cannot hold a task for hours.
TIMEOUT_MIN = 1.0
TIMEOUT_MAX = 3600.0

# The reserve: a quarter of the timeout, at least RESERVE_MIN (or half a
# very short timeout), never more than RESERVE_MAX.
RESERVE_SHARE = 0.25
RESERVE_MIN = 2.0
RESERVE_MAX = 30.0
# The read-back of a request that used everything still gets this much:
# reporting what the host shows is never skipped for lack of time.
READBACK_GRACE = 2.0


def reserve_for(seconds):
    return min(max(seconds * RESERVE_SHARE, min(RESERVE_MIN, seconds / 2.0)), RESERVE_MAX)


def check_timeout(value, name="timeout"):
    """The problem with a timeout value (a message), or None when it is usable."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "%s must be a number of seconds, got %r" % (name, value)
    if not math.isfinite(value):
        return "%s must be a finite number of seconds in %g..%g, got %r" % (name, TIMEOUT_MIN, TIMEOUT_MAX, value)
    if not TIMEOUT_MIN <= value <= TIMEOUT_MAX:
        return "%s must be in %g..%g seconds, got %g" % (name, TIMEOUT_MIN, TIMEOUT_MAX, value)
    return None


class Budget:
    """The deadlines of one task, all measured from its start."""

    def __init__(self, seconds, what="request"):
        problem = check_timeout(seconds)
        if problem:
            raise ValueError(problem)
        self.seconds = float(seconds)
        self.what = what
        self.total = Deadline(self.seconds, what)
        self.reserved = reserve_for(self.seconds)
        self.work = Deadline(self.seconds - self.reserved, what)

    def reserve(self, what="undo"):
        """What is left of the whole timeout (at least the reserve when the
        forward work stopped at its own deadline)."""
        return Deadline(max(self.total.remaining(), 1e-3), what)

    def final(self, what="read-back"):
        """The read-back of the outcome: what is left, or a short grace."""
        return Deadline(max(self.total.remaining(), READBACK_GRACE), what)

    def share(self, fraction, what):
        """A part of the remaining forward budget (``force`` keeps the rest
        for the rebuild)."""
        return self.work.sub(max(self.work.remaining() * fraction, 1e-3), what)

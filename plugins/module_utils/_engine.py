# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Steps as data, one executor, one undo journal.

Every change a request makes is a ``Step``: a kind (registered by name, so
a journal can bring it back in another process), JSON data saying what it
touches, and three idempotent methods decided from what the host shows,
not from what the code assumed:

``do``      make the change (nothing when it is already made);
``verify``  wait, bounded, until the host shows it (or raise);
``undo``    take the change back if it is in effect and still ours.

``execute`` runs the steps of one domain (or of the pool) in order, under
the caller's locks, with a journal in xenstore (``_journal``). When a step
fails it switches to the budget's reserve, reconnects to xenstored if the
connection was lost, looks once more at a confirmation that only ran out
of time, and otherwise undoes the steps in reverse, reporting every node
and device it could not put back. Steps marked ``no_return`` (a detach
whose removal the guest has been asked for) cannot be taken back once the
host shows them: past such a step the request is finished forward, now or
by the next run, never rolled back.

``recover`` does the same for a journal left by a killed request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from ansible_collections.xen.pci.plugins.module_utils._errors import (
    DeadlineExceeded, HotplugError, XenPciError, XenstoreConnectionError, with_context)
from ansible_collections.xen.pci.plugins.module_utils._journal import Journal

STEP_KINDS = {}
# Part of the reserve a late confirmation may use before the undo starts.
LATE_VERIFY_SHARE = 0.4
# The undo of the step that failed may use this share of the reserve; the
# others share the rest equally, each with at least UNDO_MIN seconds.
UNDO_FIRST_SHARE = 0.5
UNDO_MIN = 0.2


def _load_kinds():
    """Every step kind, for a journal written by another process (the
    modules import only the kinds their request needs)."""
    # pylint: disable=import-outside-toplevel,unused-import
    from ansible_collections.xen.pci.plugins.module_utils import _steps_backend, _steps_device, _steps_qmp, _steps_sriov  # noqa: F401


def register(cls):
    """Class decorator: make a step kind known to journals."""
    STEP_KINDS[cls.kind] = cls
    return cls


@dataclass
class Report:
    """What a request did, for the module's result."""

    actions: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    devices: Dict[str, dict] = field(default_factory=dict)
    left: List[str] = field(default_factory=list)
    recovered: List[dict] = field(default_factory=list)
    reset_failed: List[dict] = field(default_factory=list)     # {bdf, error}: detached devices not reset
    waited: float = 0.0

    def step(self, text):
        self.actions.append(text)


class Step:
    """One change of a request. Subclasses set ``kind`` and implement the three methods."""

    kind = None
    no_return = False

    def __init__(self, **data):
        self.data = data
        self.result = {}
        self.ran = False      # do() was called in this process (its result is complete)

    def describe(self):
        return self.kind

    def touches(self):
        """What this step changes, named for the report of a failed undo."""
        return []

    def do(self, ctx):
        raise NotImplementedError

    def verify(self, ctx):
        """Wait until the host shows the change; the default: ``do`` confirmed it."""

    def undo(self, ctx):
        raise NotImplementedError

    def effective(self, ctx):
        """For ``no_return`` steps: does the host show the change (so the
        request must be finished forward)? Others are never asked."""
        return False

    @classmethod
    def from_journal(cls, entry):
        _load_kinds()
        kind = STEP_KINDS.get(entry.get("kind"))
        if kind is None:
            raise HotplugError("the journal names a step this version does not know: %r" % entry.get("kind"),
                               step=entry.get("kind"))
        step = kind(**(entry.get("data") or {}))
        step.result = dict(entry.get("result") or {})
        return step


class Context:
    """What steps share: the platform, the budget, the current deadline, the report."""

    def __init__(self, platform, budget, report=None, hook=None, force=False):
        self.platform = platform
        self.xs = platform.xs
        self.budget = budget
        self.deadline = budget.work
        self.report = report if report is not None else Report()
        self.hook = hook
        self.force = force
        self.phase = "work"
        self.where = ""
        self.host = None          # the HostState the request was planned on

    def checkpoint(self, name):
        """A named point inside a step (tests stop a request there)."""
        if self.hook is not None:
            self.hook("%s:%s" % (self.where, name))

    def at(self, where):
        self.where = where
        self.checkpoint("before")

    def enter_reserve(self, what="undo"):
        self.phase = what
        self.deadline = self.budget.reserve(what)

    def bookkeeping(self):
        """Deadline of journal writes: the whole timeout, not the forward share."""
        return self.budget.reserve("journal")

    def ensure_connected(self):
        self.ensure_connected_within(self.deadline)

    def ensure_connected_within(self, deadline):
        if not self.xs.connected:
            self.xs.reconnect(deadline)
            self.report.warnings.append("the connection to xenstored was lost (%s); reconnected" % (self.xs.lost or "closed"))

    def label(self, domid, name=None):
        return "%s (domid %d)" % (name, domid) if name else "domid %d" % domid


def _timed_out(exc):
    return isinstance(exc, (DeadlineExceeded, XenstoreConnectionError)) or bool(exc.details.get("timed_out"))


def execute(ctx, steps, key, meta):
    """Run ``steps`` with a journal under ``key``; raise the first failure
    (with what was undone and what was left) or return normally."""
    if not steps:
        return
    journal = Journal(ctx.xs, key)
    try:
        _journal_write(ctx, lambda d: journal.begin(meta, steps, d))
    except XenPciError as exc:
        raise with_context(exc, "nothing was changed: ", journal=journal.path) from exc
    index, stage = 0, "do"
    try:
        for index, step in enumerate(steps):
            ctx.at("step:%d:%s" % (index, step.kind))
            stage = "do"
            step.ran = True
            step.do(ctx)
            ctx.checkpoint("done")
            stage = "verify"
            try:
                step.verify(ctx)
            except XenstoreConnectionError:
                # A wait lost its connection: what it waits for may still
                # come. Reconnect and look again, within the same deadline.
                ctx.ensure_connected()
                step.verify(ctx)
            ctx.checkpoint("verified")
            stage = "journal"
            _journal_write(ctx, lambda d, i=index, s=step: journal.mark(i, "done", s.result, d))
            ctx.report.step(step.describe())
        _journal_write(ctx, journal.finish)
    except XenPciError as exc:
        failure = _handle_failure(ctx, journal, steps, index, stage, exc)
        if failure is not None:
            raise failure from exc


def _journal_write(ctx, write):
    """A journal write, once more after reconnecting if the first failed:
    a request whose journal cannot be kept must not go on."""
    try:
        write(ctx.bookkeeping())
    except XenPciError:
        ctx.ensure_connected_within(ctx.bookkeeping())
        write(ctx.bookkeeping())


def _handle_failure(ctx, journal, steps, index, stage, exc):
    step = steps[index]
    ctx.enter_reserve()
    where = step.describe()
    try:
        ctx.ensure_connected()
    except XenPciError as lost:
        left = ["every change made by: %s" % "; ".join(s.describe() for s in steps[:index + 1]),
                "the journal %s (xenstored unreachable: %s)" % (journal.path, lost.msg)]
        ctx.report.left += left
        return with_context(exc, "%s: " % where, "; could not reconnect to xenstored to undo it", step=step.kind,
                            left=left, changed=True)
    if stage == "verify" and _timed_out(exc) and index == len(steps) - 1:
        # A confirmation that ran out of time (or lost its connection) may
        # have been answered meanwhile: the host decides, not the timer.
        saved = ctx.deadline
        ctx.deadline = saved.sub(saved.remaining() * LATE_VERIFY_SHARE, "late confirmation")
        try:
            step.verify(ctx)
            journal.mark(index, "done", step.result, saved)
            journal.finish(saved)
        except XenPciError:
            ctx.deadline = saved
        else:
            ctx.deadline = saved
            ctx.report.warnings.append("%s: confirmed only after the forward deadline (%s)" % (where, exc.msg))
            ctx.report.step(where)
            return None
    # A no_return step whose do() completed has passed its point of no
    # return even when the host does not show the effect yet (a device_del
    # the guest has not acknowledged stays pending in QEMU); one that failed
    # inside do() is asked.
    passed = [i for i, s in enumerate(steps[:index + 1])
              if s.no_return and (i < index or stage != "do" or _effective(ctx, s))]
    if passed:
        _mark(ctx, journal, index, "failed" if stage == "do" else "sent", step.result)
        rest = ["%s (%s)" % (s.describe(), ", ".join(s.touches()) or "-") for s in steps[index:]]
        left = ["unfinished: %s" % "; ".join(rest), "the journal %s, so that the next run finishes it" % journal.path]
        ctx.report.left += left
        return with_context(exc, "%s: " % where, "; this cannot be taken back (%s), the next run finishes it%s" % (
            steps[passed[0]].describe(), "" if ctx.force else " (with force if the guest never answers)"),
            step=step.kind, left=left, changed=True, journal=journal.path)
    undone, left = undo_steps(ctx, journal, steps[:index + 1])
    suffix = ""
    if undone:
        suffix += "; undone: %s" % "; ".join(undone)
    if left:
        suffix += "; could not undo: %s (journal %s kept for the next run)" % ("; ".join(left), journal.path)
        left.append("the journal %s, so that the next run finishes the undo" % journal.path)
        ctx.report.left += left
    else:
        try:
            journal.finish(ctx.deadline)
        except XenPciError as gone:
            ctx.report.warnings.append("journal %s not removed (%s); the next run removes it" % (journal.path, gone.msg))
    return with_context(exc, "%s: " % where, suffix, step=step.kind, undone=undone or None, left=left or None,
                        changed=bool(left))


def _effective(ctx, step):
    try:
        return bool(step.effective(ctx))
    except XenPciError:
        return True     # unknown: never roll back what may be past its point of no return


def _mark(ctx, journal, index, status, result):
    try:
        journal.mark(index, status, result, ctx.deadline)
    except XenPciError as exc:
        ctx.report.warnings.append("journal %s not updated: %s" % (journal.path, exc.msg))


def undo_steps(ctx, journal, steps):
    """Undo ``steps`` (the first ones of the journal) in reverse; returns
    (what was undone, what was left, each with the reason)."""
    undone, left = [], []
    whole = ctx.deadline
    for count, index in enumerate(reversed(range(len(steps)))):
        step = steps[index]
        ctx.at("undo:%d:%s" % (index, step.kind))
        # A fair share of what is left, so that one undo that cannot finish
        # (a QEMU that does not answer) leaves time for all the others; the
        # failed step itself, undone first, may take half.
        share = whole.remaining() * (UNDO_FIRST_SHARE if count == 0 else 1.0 / (index + 1))
        ctx.deadline = whole.sub(max(share, min(UNDO_MIN, whole.remaining())), "undo of %s" % step.kind)
        try:
            step.undo(ctx)
        except XenPciError as exc:
            left.append("%s (%s): %s" % (step.describe(), ", ".join(step.touches()) or "-", exc.msg))
            continue
        finally:
            ctx.deadline = whole
        undone.append(step.describe())
        if journal is not None:
            _mark(ctx, journal, index, "undone", step.result)
    return undone, left


def recover(ctx, record, domain_uuid=None):
    """Finish or roll back the request a journal describes (the caller holds
    its locks). Returns a summary for the report; raises if it could not."""
    journal = Journal(ctx.xs, record.key)
    summary = record.summary()
    if record.meta is None:
        # Killed while beginning: nothing was done yet.
        journal.finish(ctx.deadline)
        summary["outcome"] = "dropped (never begun)"
        return summary
    steps = [Step.from_journal(e) for e in record.steps]
    journal._entries = [dict(e) for e in record.steps]     # pylint: disable=protected-access
    statuses = [e.get("status") for e in record.steps]
    if statuses and all(st == "done" for st in statuses):
        journal.finish(ctx.deadline)
        summary["outcome"] = "complete (only its journal was left)"
        return summary
    if record.meta.get("uuid") and domain_uuid is not None and record.meta["uuid"] != domain_uuid:
        # The domain id now belongs to another domain: only the host-wide
        # steps (the pool) are put back, nothing of the new domain is touched.
        steps = [s for s in steps if getattr(s, "host_wide", False)]
        statuses = ["planned"] * len(steps)
        journal._entries = [{"kind": s.kind, "data": s.data} for s in steps]   # pylint: disable=protected-access
    # Steps that may have run: every one marked, and the one after them.
    reached = max([i for i, st in enumerate(statuses) if st != "planned"] or [-1]) + 1
    reached = min(reached, len(steps) - 1)
    forward = None
    for i in range(reached + 1):
        if steps[i].no_return and statuses[i] != "undone" and (statuses[i] in ("done", "sent") or _effective(ctx, steps[i])):
            forward = i
            break
    if forward is None:
        undone, left = undo_steps(ctx, journal, steps[:reached + 1])
        summary["undone"] = undone
        if left:
            summary["left"] = left
            raise HotplugError("could not roll back the interrupted %s of %s: %s" % (
                record.meta.get("op"), record.meta.get("label"), "; ".join(left)), journal=journal.path, left=left,
                recovered=summary)
        summary["outcome"] = "rolled back"
    else:
        done = []
        for i in range(forward, len(steps)):
            if statuses[i] == "done":
                continue
            step = steps[i]
            ctx.at("recover:%d:%s" % (i, step.kind))
            try:
                step.do(ctx)
                step.verify(ctx)
            except XenPciError as exc:
                summary["finished"] = done
                raise with_context(exc, "finishing the interrupted %s of %s: %s: " % (
                    record.meta.get("op"), record.meta.get("label"), step.describe()),
                    journal=journal.path, recovered=summary) from exc
            _mark(ctx, journal, i, "done", step.result)
            done.append(step.describe())
        summary["finished"] = done
        summary["outcome"] = "finished"
    journal.finish(ctx.deadline)
    return summary

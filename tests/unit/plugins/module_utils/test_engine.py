# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The executor: steps in order, one undo journal, undo in reverse on the
reserve, steps of no return finished forward, late confirmations, recovery."""

from __future__ import annotations

import pytest

from ansible_collections.xen.pci.plugins.module_utils._budget import Budget
from ansible_collections.xen.pci.plugins.module_utils._engine import Context, Step, execute, recover, register
from ansible_collections.xen.pci.plugins.module_utils._errors import HotplugError, XenPciError
from ansible_collections.xen.pci.plugins.module_utils._journal import JOURNAL_ROOT, read_journals
from ansible_collections.xen.pci.plugins.module_utils._platform import connect

HOST = """
name: engine-host
domains:
  - {domid: 1, name: g, type: pv, state: running, pcifront: true}
"""

LOG = []


class Killed(BaseException):
    """What a SIGKILL looks like to the code after it: nothing runs any more."""


@register
class Note(Step):
    """A toy step: writes /test/<name>, its undo removes it. data: name,
    fail (do|verify|undo|never), slow_verify (times verify times out first)."""

    kind = "test-note"

    def describe(self):
        return "note %s" % self.data["name"]

    def touches(self):
        return ["/test/" + self.data["name"]]

    def do(self, ctx):
        LOG.append(("do", self.data["name"], round(ctx.deadline.remaining(), 3)))
        if self.data.get("fail") == "do":
            raise HotplugError("%s refused" % self.data["name"], domain=1)
        ctx.xs.write("/test/" + self.data["name"], "1", deadline=ctx.deadline)
        self.result["wrote"] = True

    def verify(self, ctx):
        LOG.append(("verify", self.data["name"], ctx.phase))
        late = self.data.get("late", 0)
        if late:
            self.data["late"] = late - 1
            raise HotplugError("%s not confirmed" % self.data["name"], timed_out=True)
        if self.data.get("fail") == "verify":
            raise HotplugError("%s not confirmed" % self.data["name"])

    def undo(self, ctx):
        LOG.append(("undo", self.data["name"], round(ctx.deadline.remaining(), 3)))
        if self.data.get("fail") == "undo":
            raise XenPciError("%s cannot be undone" % self.data["name"])
        ctx.xs.rm("/test/" + self.data["name"], deadline=ctx.deadline)


@register
class Point(Note):
    """A toy step of no return (the guest was asked; it cannot be taken back)."""

    kind = "test-point"
    no_return = True

    def effective(self, ctx):
        return ctx.xs.read("/test/" + self.data["name"], deadline=ctx.deadline) is not None


@pytest.fixture
def ctx(sim):
    host = sim(HOST)
    platform = connect(xenstore_path=host.paths["xenstored"], sysfs_root=None, hypervisor="none",
                       userdata_dir=host.paths["userdata_dir"])
    del LOG[:]

    def make(timeout=10.0, hook=None):
        return Context(platform, Budget(timeout, "test"), hook=hook)
    make.host = host
    make.xs = platform.xs
    return make


def notes(xs):
    return sorted(xs.directory("/test") or [])


def journals(xs):
    return read_journals(xs, xs.directory(JOURNAL_ROOT) or [], Budget(5).work)


def test_steps_run_in_order_and_the_journal_is_gone_when_they_are_done(ctx):
    c = ctx()
    seen = []
    c.hook = seen.append
    execute(c, [Note(name="a"), Note(name="b"), Note(name="c")], "dom-1", {"op": "test", "domid": 1, "label": "g"})
    assert notes(ctx.xs) == ["a", "b", "c"]
    assert [e[:2] for e in LOG if e[0] == "do"] == [("do", "a"), ("do", "b"), ("do", "c")]
    assert c.report.actions == ["note a", "note b", "note c"]
    assert journals(ctx.xs) == []
    assert seen[:4] == ["step:0:test-note:before", "step:0:test-note:done", "step:0:test-note:verified",
                        "step:1:test-note:before"]


def test_a_failure_undoes_in_reverse_on_the_reserve_and_says_so(ctx):
    c = ctx(timeout=8.0)
    steps = [Note(name="a"), Note(name="b"), Note(name="c", fail="verify"), Note(name="d")]
    with pytest.raises(HotplugError) as info:
        execute(c, steps, "dom-1", {"op": "test", "domid": 1, "label": "g"})
    assert notes(ctx.xs) == []
    assert [e[1] for e in LOG if e[0] == "undo"] == ["c", "b", "a"]
    # The undo had the reserve (2 s of 8), not an expired deadline.
    assert all(e[2] >= 1.5 for e in LOG if e[0] == "undo")
    err = info.value
    assert err.msg.startswith("note c: c not confirmed; undone: note c; note b; note a")
    assert err.details["step"] == "test-note" and err.details["changed"] is False
    assert isinstance(err.__cause__, HotplugError)
    assert journals(ctx.xs) == []


def test_what_cannot_be_undone_is_named_and_the_journal_kept(ctx):
    c = ctx()
    steps = [Note(name="a", fail="undo"), Note(name="b"), Note(name="c", fail="do")]
    with pytest.raises(HotplugError) as info:
        execute(c, steps, "dom-1", {"op": "test", "domid": 1, "label": "g"})
    err = info.value
    assert notes(ctx.xs) == ["a"]
    assert err.details["changed"] is True
    assert err.details["left"] == ["note a (/test/a): a cannot be undone",
                                   "the journal /tool/xen-pci/journal/dom-1, so that the next run finishes the undo"]
    assert "could not undo: note a (/test/a): a cannot be undone (journal /tool/xen-pci/journal/dom-1 kept" in err.msg
    left = journals(ctx.xs)
    assert [s["status"] for s in left[0].steps] == ["done", "undone", "undone"]


def test_past_a_step_of_no_return_nothing_is_undone_and_the_next_run_finishes(ctx):
    c = ctx()
    steps = [Note(name="a"), Point(name="p"), Note(name="b", fail="do"), Note(name="c")]
    with pytest.raises(HotplugError, match=r"this cannot be taken back \(note p\), the next run finishes it") as info:
        execute(c, steps, "dom-1", {"op": "test", "domid": 1, "label": "g"})
    assert [e for e in LOG if e[0] == "undo"] == []
    assert info.value.details["changed"] is True
    record = journals(ctx.xs)[0]
    assert [s["status"] for s in record.steps] == ["done", "done", "failed", "planned"]
    # The next run (the fault gone) finishes it forward.
    record.steps[2]["data"]["fail"] = None
    summary = recover(ctx(), record)
    assert summary["outcome"] == "finished" and summary["finished"] == ["note b", "note c"]
    assert notes(ctx.xs) == ["a", "b", "c", "p"]
    assert journals(ctx.xs) == []


def test_a_confirmation_that_ran_out_of_time_is_looked_at_once_more(ctx):
    c = ctx()
    execute(c, [Note(name="a"), Note(name="b", late=1)], "dom-1", {"op": "test", "domid": 1, "label": "g"})
    assert notes(ctx.xs) == ["a", "b"]
    assert any("confirmed only after the forward deadline" in w for w in c.report.warnings)
    assert ("verify", "b", "undo") in LOG
    assert journals(ctx.xs) == []


def test_a_killed_request_leaves_its_journal_and_the_next_run_rolls_it_back(ctx):
    def kill(point):
        if point == "step:2:test-note:done":
            raise Killed()
    with pytest.raises(Killed):
        execute(ctx(hook=kill), [Note(name="a"), Note(name="b"), Note(name="c"), Note(name="d")], "dom-1",
                {"op": "test", "domid": 1, "label": "g"})
    assert notes(ctx.xs) == ["a", "b", "c"]
    record = journals(ctx.xs)[0]
    assert record.meta["op"] == "test" and [s["status"] for s in record.steps] == ["done", "done", "planned", "planned"]
    summary = recover(ctx(), record)
    assert summary["outcome"] == "rolled back" and summary["undone"] == ["note c", "note b", "note a"]
    assert notes(ctx.xs) == [] and journals(ctx.xs) == []


def test_a_journal_killed_while_beginning_is_dropped(ctx):
    xs = ctx.xs
    xs.write(JOURNAL_ROOT + "/dom-1/step-00", '{"kind": "test-note", "data": {"name": "a"}, "status": "planned"}')
    record = journals(xs)[0]
    assert record.meta is None
    assert recover(ctx(), record)["outcome"] == "dropped (never begun)"
    assert journals(xs) == []


def test_a_step_bigger_than_a_xenstore_value_is_journaled_in_parts(ctx):
    c = ctx()

    def kill(point):
        if point == "step:0:test-note:before":
            raise Killed()
    c.hook = kill
    big = Note(name="a", payload="x" * 10000)
    with pytest.raises(Killed):
        execute(c, [big], "dom-1", {"op": "test", "domid": 1, "label": "g"})
    record = journals(ctx.xs)[0]
    assert record.steps[0]["data"]["payload"] == "x" * 10000
    assert ctx.xs.read(JOURNAL_ROOT + "/dom-1/step-00") == "parts=6"      # 1800-byte parts

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Our xenstore client against the simulated xenstored: deadlines, pipelining, transactions, watches."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import threading
import time

import pytest

from ansible_collections.xen.pci.plugins.module_utils._deadline import Deadline
from ansible_collections.xen.pci.plugins.module_utils._errors import DeadlineExceeded, XenstoreConnectionError, XenstoreError
from ansible_collections.xen.pci.plugins.module_utils._xenstore import UNDECODABLE_KEEP, UNDECODABLE_RAW, Changes, XenStore

GUEST = """
name: guest-bytes
devices:
  - {bdf: "0000:00:10.0", vendor: 0x1234, device: 0x11e8, class: 0x00ff00, driver: pciback, irq: 10,
     resources: [[0xfe000000, 0xfe0fffff, 0x40200]]}
domains:
  - {domid: 1, name: domu1, type: pv, state: running, passthrough: enabled, pcifront: true, devices: ["0000:00:10.0"]}
"""
FE = "/local/domain/1/device/pci/0"


@pytest.fixture
def xenstored():
    server = pytest.importorskip("xensim.xenstore.server", reason="xensim (tools/xensim) is not importable")
    store_mod = pytest.importorskip("xensim.xenstore.store")
    faults_mod = pytest.importorskip("xensim.faults")
    sockdir = tempfile.mkdtemp(prefix="xsc-", dir="/tmp")

    class HookedFaults(faults_mod.Faults):
        """The simulator's fault rules, plus hooks run on the loop thread as
        each request is matched, just before xenstored executes it."""

        def __init__(self):
            super().__init__()
            self.hooks = []

        def match(self, point, **ctx):
            for hook in list(self.hooks):
                hook(point, ctx)
            return super().match(point, **ctx)

    faults = HookedFaults()
    store = store_mod.Store(faults=faults)
    handle = server.run_in_thread(store, os.path.join(sockdir, "socket"), faults=faults,
                                  extra={1: os.path.join(sockdir, "socket-dom1")})
    handle.path = os.path.join(sockdir, "socket")
    handle.faults = faults
    handle.server_store = store
    try:
        yield handle
    finally:
        handle.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_basic_operations_and_permissions(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        xs.write("/local/domain/0/backend/pci/1/0/state", "1")
        assert xs.read("/local/domain/0/backend/pci/1/0/state") == "1"
        assert xs.read("/nothing/here") is None
        assert xs.read("/nothing/here", default="x") == "x"
        assert xs.directory("/local/domain/0/backend/pci/1") == ["0"]
        assert xs.directory("/nothing") is None
        xs.set_perms("/local/domain/0/backend/pci/1/0", ["n0", "r1"])
        assert xs.get_perms("/local/domain/0/backend/pci/1/0") == ["n0", "r1"]
        xs.write("/empty", "")
        assert xs.read("/empty") == ""
        xs.rm("/local/domain/0/backend/pci")
        assert xs.directory("/local/domain/0/backend") == []
        with pytest.raises(XenstoreError, match="invalid xenstore path"):
            xs.read("/bad path")


def test_a_guest_connection_cannot_write_dom0_backend_nodes(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        xs.write("/local/domain/0/backend/pci/1/0/state", "4")
        xs.set_perms("/local/domain/0/backend/pci/1/0", ["n0", "r1"])
    with XenStore(xenstored.path + "-dom1", timeout=5) as guest:
        with pytest.raises(XenstoreError) as info:
            guest.write("/local/domain/0/backend/pci/1/0/state", "5")
        assert info.value.errno == "EACCES"


def test_pipelined_reads_are_one_round_trip(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        changes = Changes()
        for i in range(20):
            changes.write("/t/k%d" % i, str(i))
        xs.apply(changes)
        assert xs.stats.round_trips == 1 and xs.stats.writes == 20
        values = xs.read_many(["/t/k%d" % i for i in range(20)] + ["/t/missing"])
        assert xs.stats.round_trips == 2
        assert values["/t/k7"] == "7" and values["/t/missing"] is None


def test_transactions_retry_on_eagain_and_give_up_after_a_bound(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        xenstored.faults.add("xenstore.commit", "eagain", times=3)
        attempts = []

        def body(tx):
            attempts.append(tx)
            num = int(xs.read("/t/num", tx=tx, default="0"))
            xs.write("/t/num", str(num + 1), tx=tx)
            return num + 1

        assert xs.transaction(body) == 1
        assert len(attempts) == 4
        xenstored.faults.add("xenstore.commit", "eagain", times=1000)
        with pytest.raises(XenstoreError, match="still conflicting after 5 attempts"):
            xs.transaction(body, retries=5)
        assert xs.read("/t/num") == "1"


def test_a_real_conflict_between_two_clients_gets_eagain(xenstored):
    with XenStore(xenstored.path, timeout=5) as a, XenStore(xenstored.path, timeout=5) as b:
        a.write("/t/num", "0")
        tx = a.transaction_start()
        assert a.read("/t/num", tx=tx) == "0"
        b.write("/t/num", "5")
        a.write("/t/num", "1", tx=tx)
        with pytest.raises(XenstoreError) as info:
            a.transaction_end(tx, True)
        assert info.value.errno == "EAGAIN"
        assert a.read("/t/num") == "5"


def test_an_aborted_transaction_leaves_nothing(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        def body(tx):
            xs.write("/t/a", "1", tx=tx)
            raise RuntimeError("abort")

        with pytest.raises(RuntimeError):
            xs.transaction(body)
        assert xs.read("/t/a") is None


def test_a_hung_xenstored_is_a_bounded_error_and_the_connection_is_dropped(xenstored):
    xs = XenStore(xenstored.path, timeout=5)
    xenstored.faults.add("xenstore.request", "hang", op="READ", path="/t/slow")
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="waiting for xenstored to answer READ /t/slow") as info:
        xs.read("/t/slow", deadline=Deadline(0.5))
    assert 0.4 < time.monotonic() - start < 2.0
    # A reply that never came, not a missing node: the caller can tell.
    assert info.value.details["pending"] is True
    assert info.value.details["op"] == "READ" and info.value.details["node"] == "/t/slow"
    assert not xs.connected and "reply outstanding (no reply yet to READ /t/slow)" in xs.lost
    with pytest.raises(XenstoreConnectionError, match="was lost .*READ /t/slow.*reconnect") as info:
        xs.read("/t/other")
    assert info.value.details["pending"] is False


def test_a_deadline_spent_before_sending_leaves_the_connection_usable(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        xs.write("/t/a", "1")
        spent = Deadline(0.01)
        time.sleep(0.05)
        with pytest.raises(DeadlineExceeded, match="before sending READ /t/a") as info:
            xs.read("/t/a", deadline=spent)
        assert info.value.details["pending"] is False
        assert xs.connected and xs.lost is None
        assert xs.read("/t/a") == "1"


def test_xenstored_closing_mid_request_is_a_connection_error(xenstored):
    xs = XenStore(xenstored.path, timeout=5)
    xenstored.faults.add("xenstore.request", "close", op="WRITE")
    with pytest.raises(XenstoreConnectionError, match="lost: xenstored closed the connection; no reply yet to WRITE /t/x") as info:
        xs.write("/t/x", "1")
    assert info.value.details["pending"] is True
    assert info.value.details["op"] == "WRITE" and info.value.details["node"] == "/t/x"
    assert info.value.details["path"] == xenstored.path
    assert not xs.connected and xs.lost.startswith("xenstored closed the connection")


def test_a_lost_connection_names_the_first_unanswered_request_of_a_pipeline(xenstored):
    xs = XenStore(xenstored.path, timeout=5)
    xenstored.faults.add("xenstore.request", "close", op="READ", path="/t/b")
    with pytest.raises(XenstoreConnectionError, match=r"no reply yet to READ /t/b \(2 requests unanswered\)") as info:
        xs.read_many(["/t/a", "/t/b", "/t/c"])
    assert info.value.details["unanswered"] == 2


def test_an_oversized_request_sends_nothing_of_its_batch(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        with pytest.raises(XenstoreError, match="over the 4096-byte limit") as info:
            xs.apply(Changes().write("/t/small", "1").write("/t/big", "x" * 5000))
        assert info.value.errno == "E2BIG"
        assert xs.stats.requests == 0
        assert xs.read("/t/small") is None


def test_an_idle_wait_that_times_out_had_no_request_pending(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        xs.watch("/t/quiet")
        assert xs.next_event(Deadline(2)) == ("/t/quiet", "xen.pci-1")    # the initial event
        with pytest.raises(DeadlineExceeded, match="waiting for a xenstore watch event") as info:
            xs.next_event(Deadline(0.2))
        assert info.value.details["pending"] is False
        assert xs.connected


def test_missing_socket_is_a_connection_error():
    with pytest.raises(XenstoreConnectionError, match="cannot connect") as info:
        XenStore("/nonexistent/xenstored.sock")
    assert info.value.__cause__ is not None


def test_wait_until_wakes_on_a_watch_event_not_by_polling(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs, XenStore(xenstored.path, timeout=5) as other:
        xs.write("/t/state", "7")

        def later():
            time.sleep(0.3)
            other.write("/t/state", "4")

        thread = threading.Thread(target=later)
        thread.start()
        reads_before = xs.stats.by_op.get("READ", 0)
        result = xs.wait_until(["/t/state"], lambda v: v["/t/state"] if v["/t/state"] == "4" else None,
                               Deadline(5), "waiting for state 4")
        thread.join()
        assert result == "4"
        # One read at the start, then one per event (initial event and the write): no polling.
        assert xs.stats.by_op["READ"] - reads_before <= 3


def test_wait_until_times_out_with_what_it_saw(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        xs.write("/t/state", "7")
        with pytest.raises(DeadlineExceeded, match="waiting for state 4") as info:
            xs.wait_until(["/t/state"], lambda v: None, Deadline(0.3), "waiting for state 4")
        assert info.value.details["seen"] == {"/t/state": "7"}
        assert info.value.details["pending"] is False
        assert isinstance(info.value.__cause__, DeadlineExceeded)
        # The connection is still usable after a wait timed out.
        assert xs.read("/t/state") == "7"


def test_bytes_a_guest_wrote_that_are_not_utf8_are_read_escaped_and_recorded(sim):
    host = sim(GUEST, mount_sysfs=False)
    with XenStore(host.paths["xenstored_as"]["1"], timeout=5) as guest:
        # The guest owns its frontend directory: it may write any bytes there.
        guest.write(FE + "/x-note", b"ok\xff\xfe\x80end")
        guest.write(FE + "/x-text", "caf\u00e9".encode())
    with XenStore(host.paths["xenstored"], timeout=5) as xs:
        assert xs.read(FE + "/x-note") == "ok\\xff\\xfe\\x80end"
        # Valid UTF-8 is unchanged and not recorded.
        assert xs.read(FE + "/x-text") == "caf\u00e9"
        values = xs.read_many([FE + "/x-note", FE + "/x-text", FE + "/state"])
        assert values[FE + "/x-note"] == "ok\\xff\\xfe\\x80end" and values[FE + "/state"] == "4"
        assert "x-note" in xs.directory(FE)
        # The decode used by pipelined reads (read_host's way) does not raise either.
        replies = xs.pipeline([xs.read_request(FE + "/x-note"), xs.directory_request(FE)])
        assert XenStore.decode_reply("READ", replies[0]) == "ok\\xff\\xfe\\x80end"
        # One record per node however often it was read.
        assert xs.undecodable == [{"op": "READ", "path": FE + "/x-note", "raw": repr(b"ok\xff\xfe\x80end")}]
        assert xs.undecodable_warnings() == [
            "xenstore node %s/x-note holds bytes that are not UTF-8: %r" % (FE, b"ok\xff\xfe\x80end")]


def test_a_wait_on_a_node_with_bad_bytes_returns_and_records_it(sim):
    host = sim(GUEST, mount_sysfs=False)
    with XenStore(host.paths["xenstored_as"]["1"], timeout=5) as guest, \
            XenStore(host.paths["xenstored"], timeout=5) as xs:
        guest.write(FE + "/x-note", b"\xff")

        def later():
            time.sleep(0.2)
            guest.write(FE + "/x-note", b"done\xc3")

        thread = threading.Thread(target=later)
        thread.start()
        try:
            seen = xs.wait_until([FE + "/x-note"], lambda v: v[FE + "/x-note"] if v[FE + "/x-note"].startswith("done") else None,
                                 Deadline(10), "waiting for the guest's note")
        finally:
            thread.join()
        assert seen == "done\\xc3"
        assert [rec["path"] for rec in xs.undecodable] == [FE + "/x-note"]


def test_what_is_kept_about_undecodable_nodes_is_bounded(sim):
    host = sim(GUEST, mount_sysfs=False)
    count = UNDECODABLE_KEEP + 8
    paths = ["%s/x-junk-%d" % (FE, i) for i in range(count)]
    with XenStore(host.paths["xenstored_as"]["1"], timeout=5) as guest:
        changes = Changes()
        for path in paths:
            changes.write(path, b"\xff" * 2000)
        guest.apply(changes)
    with XenStore(host.paths["xenstored"], timeout=5) as xs:
        values = xs.read_many(paths)
        assert all(v == "\\xff" * 2000 for v in values.values())
        assert len(xs.undecodable) == UNDECODABLE_KEEP
        assert xs.undecodable_dropped == count - UNDECODABLE_KEEP
        assert all(len(rec["raw"]) < 4 * UNDECODABLE_RAW + 40 and "(2000 bytes)" in rec["raw"] for rec in xs.undecodable)
        assert xs.undecodable_warnings()[-1] == "8 more xenstore reads got bytes that are not UTF-8 (not recorded)"


BIG = "/t/big"
BIG_NAMES = ["child-%04d-%s" % (i, "n" * 40) for i in range(600)]     # about 31 KB of names


def fill_big(xs):
    changes = Changes()
    for name in BIG_NAMES:
        changes.write("%s/%s" % (BIG, name), "")
    xs.apply(changes)


def parts_of_one_pass():
    return -(-sum(len(n) + 1 for n in BIG_NAMES) // 4000) + 1


def test_a_listing_over_4096_bytes_is_read_in_parts(xenstored):
    with XenStore(xenstored.path, timeout=10) as xs:
        fill_big(xs)
        rt0 = xs.stats.round_trips
        names = xs.directory(BIG)
        assert names == xenstored.call(xenstored.server_store.ls, BIG) and sorted(names) == sorted(BIG_NAMES)
        # One E2BIG answer, then as many parts as 4096-byte replies need.
        parts = xs.stats.by_op["DIRECTORY_PART"]
        assert 8 <= parts <= parts_of_one_pass() and xs.stats.round_trips - rt0 == 1 + parts
        # Same in a transaction (the generation is the transaction's view).
        assert xs.transaction(lambda tx: xs.directory(BIG, tx=tx)) == names


def test_directory_many_falls_back_only_for_the_big_listing(xenstored):
    with XenStore(xenstored.path, timeout=10) as xs:
        fill_big(xs)
        xs.write("/t/small/a", "1")
        rt0 = xs.stats.round_trips
        out = xs.directory_many([BIG, "/t/small", "/t/missing"])
        assert sorted(out[BIG]) == sorted(BIG_NAMES)
        assert out["/t/small"] == ["a"] and out["/t/missing"] is None
        assert xs.stats.round_trips - rt0 == 1 + xs.stats.by_op["DIRECTORY_PART"]
        # The raw pipeline (read_host's way) gets the whole listing in DIRECTORY's format.
        reply = xs.pipeline([xs.directory_request(BIG), xs.read_request("/t/small/a")])
        assert XenStore.decode_reply("DIRECTORY", reply[0]) == out[BIG] and reply[1] == b"1"


def test_a_directory_that_changes_between_parts_is_read_again(xenstored):
    with XenStore(xenstored.path, timeout=10) as xs:
        fill_big(xs)
        seen = []

        def add_a_child_before_the_second_part(point, ctx):
            if point == "xenstore.request" and ctx.get("op") == "DIRECTORY_PART":
                seen.append(ctx)
                if len(seen) == 2:
                    xenstored.server_store.seed(BIG + "/zz-late", b"")

        xenstored.faults.hooks.append(add_a_child_before_the_second_part)
        names = xs.directory(BIG)
        assert "zz-late" in names and len(names) == len(BIG_NAMES) + 1
        # The first pass stopped at its second part; the second pass read
        # them all, in as many parts as a pass with nothing changing.
        with_change = xs.stats.by_op["DIRECTORY_PART"]
        xenstored.faults.hooks.clear()
        assert xs.directory(BIG) == names
        assert with_change == 2 + (xs.stats.by_op["DIRECTORY_PART"] - with_change)


def test_a_directory_that_keeps_changing_is_a_bounded_error(xenstored):
    with XenStore(xenstored.path, timeout=10) as xs:
        fill_big(xs)
        added = []

        def add_a_child_before_every_part(point, ctx):
            if point == "xenstore.request" and ctx.get("op") == "DIRECTORY_PART":
                added.append(BIG + "/zz-%d" % len(added))
                xenstored.server_store.seed(added[-1], b"")

        xenstored.faults.hooks.append(add_a_child_before_every_part)
        with pytest.raises(XenstoreError, match="changed while it was read in parts, 9 times") as info:
            xs.directory(BIG)
        assert info.value.errno == "EAGAIN" and info.value.details["attempts"] == 9
        assert xs.stats.by_op["DIRECTORY_PART"] == 2 * 9
        xenstored.faults.hooks.clear()
        assert len(xs.directory(BIG)) == len(BIG_NAMES) + len(added)


def test_reading_in_parts_is_bounded_by_the_callers_deadline(xenstored):
    with XenStore(xenstored.path, timeout=10) as xs:
        fill_big(xs)
        xenstored.faults.add("xenstore.request", "hang", op="DIRECTORY_PART", path=BIG)
        with pytest.raises(DeadlineExceeded, match="waiting for xenstored to answer DIRECTORY_PART /t/big") as info:
            xs.directory(BIG, deadline=Deadline(0.5))
        assert info.value.details["pending"] is True


@pytest.mark.parametrize("answer", ["ENOSYS", "EINVAL"])
def test_a_xenstored_without_directory_part_gives_e2big_that_says_so(xenstored, answer):
    with XenStore(xenstored.path, timeout=10) as xs:
        fill_big(xs)
        xenstored.faults.add("xenstore.request", "error", op="DIRECTORY_PART", errno=answer)
        with pytest.raises(XenstoreError, match=r"does not support DIRECTORY_PART \(it answered %s\)" % answer) as info:
            xs.directory(BIG)
        assert info.value.errno == "E2BIG"
        assert xs.directory("/t") == ["big"]


def test_a_big_directory_removed_before_its_parts_are_read_is_missing(xenstored):
    with XenStore(xenstored.path, timeout=10) as xs:
        fill_big(xs)

        def remove_it(point, ctx):
            if point == "xenstore.request" and ctx.get("op") == "DIRECTORY_PART":
                xenstored.server_store.purge(BIG)

        xenstored.faults.hooks.append(remove_it)
        assert xs.directory(BIG) is None
        assert xs.directory_many([BIG, "/t"]) == {BIG: None, "/t": []}


def run_on_loop(handle, coro):
    return asyncio.run_coroutine_threadsafe(coro, handle.loop).result(10)


def test_reconnect_after_xenstored_closed_the_connection_keeps_stats(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        xs.write("/t/a", "1")
        xenstored.faults.add("xenstore.request", "close", op="WRITE", path="/t/b", times=1)
        with pytest.raises(XenstoreConnectionError):
            xs.write("/t/b", "2")
        requests = xs.stats.requests
        assert not xs.connected
        assert xs.reconnect(Deadline(5)) == 1
        assert xs.connected and xs.stats.reconnects == 1
        assert xs.read("/t/a") == "1" and xs.read("/t/b") is None
        assert xs.stats.requests == requests + 2
        # Why the last connection went is kept for the report.
        assert xs.lost.startswith("xenstored closed the connection (no reply yet to WRITE /t/b)")
        xs.close()
        with pytest.raises(XenstoreConnectionError, match="is closed$"):
            xs.read("/t/a")


def test_reconnect_after_a_deadline_dropped_the_connection(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        xenstored.faults.add("xenstore.request", "hang", op="READ", path="/t/slow", times=1)
        with pytest.raises(DeadlineExceeded):
            xs.read("/t/slow", deadline=Deadline(0.3))
        xs.reconnect(Deadline(5))
        xs.write("/t/slow", "here")
        assert xs.read("/t/slow") == "here"


def test_watch_events_of_the_old_connection_are_dropped(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        pairs = xs.watch_many(["/t/w1", "/t/w2"])
        # xenstored sends each watch's first event before answering the
        # next request: after this read both are queued here.
        xs.read("/t/w1")
        assert xs.next_event(Deadline(5)) == pairs[0]
        xenstored.call(xenstored.server.kill_connections)
        with pytest.raises(XenstoreConnectionError, match="lost"):
            xs.read("/t/w1")
        xs.reconnect(Deadline(5))
        # w2's first event belonged to the old connection: gone.
        with pytest.raises(DeadlineExceeded):
            xs.next_event(Deadline(0.3))
        token = xs.watch("/t/w2")
        assert xs.next_event(Deadline(5)) == ("/t/w2", token)


def test_reconnect_waits_for_a_restarting_xenstored_within_its_deadline(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        xs.write("/t/a", "1")
        run_on_loop(xenstored, xenstored.server.stop())
        with pytest.raises(XenstoreConnectionError, match="cannot reconnect to xenstored at %s: .* attempts in" % xenstored.path) as info:
            xs.reconnect(Deadline(0.5))
        assert info.value.details["attempts"] >= 1 and info.value.details["waited"] >= 0.5
        assert info.value.__cause__ is not None and not xs.connected

        def restart():
            time.sleep(0.3)
            run_on_loop(xenstored, xenstored.server.start())

        thread = threading.Thread(target=restart)
        thread.start()
        try:
            assert xs.reconnect(Deadline(20)) >= 1
        finally:
            thread.join()
        assert xs.read("/t/a") == "1"


WHAT = "attaching 0000:00:10.0 to domu1 (domid 1)"


def bump(xs, path="/t/num"):
    def body(tx):
        num = int(xs.read(path, tx=tx, default="0"))
        xs.write(path, str(num + 1), tx=tx)
        return num + 1
    return body


def test_a_transaction_out_of_retries_says_what_it_was_doing(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        xenstored.faults.add("xenstore.commit", "eagain", times=1000)
        with pytest.raises(XenstoreError) as info:
            xs.transaction(bump(xs), retries=5, what=WHAT)
        assert info.value.msg == WHAT + ": xenstore transaction still conflicting after 5 attempts"
        assert info.value.errno == "EAGAIN"
        assert info.value.details["attempts"] == 5 and info.value.details["what"] == WHAT
        assert isinstance(info.value.__cause__, XenstoreError) and info.value.__cause__.errno == "EAGAIN"


def test_a_transaction_whose_deadline_expires_while_retrying_says_what_and_attempts(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        xenstored.faults.add("xenstore.commit", "eagain")
        with pytest.raises(DeadlineExceeded) as info:
            xs.transaction(bump(xs), Deadline(0.3), retries=10 ** 6, what=WHAT)
        attempts = info.value.details["attempts"]
        assert attempts >= 1 and info.value.details["what"] == WHAT
        assert info.value.msg.startswith(WHAT + ": timed out after ")
        assert info.value.msg.endswith("(xenstore transaction, attempt %d of 1000000)" % attempts)
        assert isinstance(info.value.__cause__, DeadlineExceeded)


def test_a_transaction_stuck_on_a_reply_says_which_request_and_that_it_was_pending(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        xenstored.faults.add("xenstore.request", "hang", op="READ", path="/t/hang")
        deadline = Deadline(0.3)
        with pytest.raises(DeadlineExceeded, match="waiting for xenstored to answer READ /t/hang") as info:
            xs.transaction(lambda tx: xs.read("/t/hang", tx=tx, deadline=deadline), deadline, what=WHAT)
        details = info.value.details
        assert details["pending"] is True and details["op"] == "READ" and details["node"] == "/t/hang"
        assert details["attempts"] == 1 and details["what"] == WHAT and WHAT in info.value.msg
        assert not xs.connected


def test_a_transaction_that_loses_its_connection_says_what_and_attempts(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        xenstored.faults.add("xenstore.request", "close", op="TRANSACTION_END")
        with pytest.raises(XenstoreConnectionError, match="^%s: connection to xenstored .* lost: xenstored closed the connection; "
                           "no reply yet to TRANSACTION_END \\(xenstore" % re.escape(WHAT)) as info:
            xs.transaction(bump(xs), what=WHAT)
        details = info.value.details
        assert details["pending"] is True and details["op"] == "TRANSACTION_END"
        assert details["attempts"] == 1 and details["what"] == WHAT
        assert isinstance(info.value.__cause__, XenstoreConnectionError)


def test_an_aborted_transaction_is_ended_even_when_the_deadline_is_spent(xenstored):
    with XenStore(xenstored.path, timeout=5) as xs:
        def body(tx):
            xs.write("/t/a", "1", tx=tx)
            time.sleep(0.4)
            raise RuntimeError("abort")

        # The body's own error comes out, not a deadline error of the abort.
        with pytest.raises(RuntimeError, match="abort"):
            xs.transaction(body, Deadline(0.2), what=WHAT)
        assert xs.connected and xs.read("/t/a") is None
        assert xenstored.call(lambda: [len(c.transactions) for c in xenstored.server.conns]) == [0]

"""The xenstore tree itself (no sockets): permissions, paths, transactions,
watches and the access log, against C xenstored / real Xen 4.17 behaviour."""

import os
import re

import pytest

from xensim.faults import Faults
from xensim.xenstore.server import InternalConn
from xensim.xenstore.store import DOM0_INTRODUCTION, Conn, Store, XsError, format_access_log

# Real Xen 4.17's own record (kept in tests/data so the check always runs).
REAL_LOG = os.path.join(os.path.dirname(__file__), "data", "real-xen-access-log.txt")


class Rec(Conn):
    """A connection that records the events delivered to it."""

    def __init__(self, domid=0, label="A1"):
        super().__init__(domid, label)
        self.events = []

    def deliver_event(self, path, token):
        self.events.append((path, token))


def err(fn, *args):
    with pytest.raises(XsError) as e:
        fn(*args)
    return e.value.name


@pytest.fixture
def st():
    return Store()


@pytest.fixture
def dom0():
    return Rec(0, "A1")


@pytest.fixture
def dom1():
    return Rec(1, "D1")


def test_privileged_bypasses_perms_and_owner_has_full_access(st, dom0, dom1):
    st.write(dom0, "/local/domain/1/x", b"v")
    st.set_perms(dom0, "/local/domain/1/x", ["n1"])
    st.set_perms(dom0, "/local/domain/1", ["n1"])
    assert st.read(dom0, "/local/domain/1/x") == b"v"        # dom0 ignores "n1"
    st.write(dom1, "/local/domain/1/x", b"w")                 # owner
    st.set_perms(dom1, "/local/domain/1/x", ["n1", "r0"])
    assert st.get_perms(dom1, "x") == ["n1", "r0"]


def test_read_access_per_domid_and_default(st, dom0, dom1):
    dom2 = Rec(2, "D2")
    st.write(dom0, "/be/state", b"4")
    st.set_perms(dom0, "/be", ["n0", "r1"])
    st.set_perms(dom0, "/be/state", ["n0", "r1"])
    assert st.read(dom1, "/be/state") == b"4"
    assert st.directory(dom1, "/be") == ["state"]
    assert err(st.write, dom1, "/be/state", b"5") == "EACCES"
    assert err(st.read, dom2, "/be/state") == "EACCES"
    # the default (first entry) applies to domains not listed
    st.set_perms(dom0, "/be/state", ["r0", "w1"])
    assert st.read(dom2, "/be/state") == b"4"
    st.write(dom1, "/be/state", b"6")
    assert err(st.read, dom1, "/be/state") == "EACCES"        # w only
    st.set_perms(dom0, "/be/state", ["n0", "b1"])
    assert st.read(dom1, "/be/state") == b"6"


def test_missing_node_errno_depends_on_parent_perms(st, dom0, dom1):
    st.write(dom0, "/secret/a", b"")
    st.set_perms(dom0, "/secret", ["n0"])
    # A guest may not learn whether a node exists under an unreadable parent.
    assert err(st.read, dom1, "/secret/nothere") == "EACCES"
    st.set_perms(dom0, "/secret", ["n0", "r1"])
    assert err(st.read, dom1, "/secret/nothere") == "ENOENT"


def test_implicit_parents_inherit_perms_and_guest_owns_what_it_creates(st, dom0, dom1):
    st.write(dom0, "/local/domain/0/backend/pci/1/0/state", b"1")
    assert st.perms("/local/domain/0/backend/pci") == ["n0"]
    st.set_perms(dom0, "/local/domain/0/backend/pci/1/0", ["n0", "r1"])
    st.write(dom0, "/local/domain/0/backend/pci/1/0/a/b", b"x")
    assert st.perms("/local/domain/0/backend/pci/1/0/a") == ["n0", "r1"]
    assert st.perms("/local/domain/0/backend/pci/1/0/a/b") == ["n0", "r1"]
    # guest 1 creates under its own directory: it owns the new nodes, the
    # rest of the inherited perms is kept
    st.write(dom0, "/local/domain/1", b"")
    st.set_perms(dom0, "/local/domain/1", ["n0", "b1"])
    st.write(dom1, "device/pci/0/state", b"1")
    assert st.perms("/local/domain/1/device") == ["n1", "b1"]
    assert st.perms("/local/domain/1/device/pci/0/state") == ["n1", "b1"]
    # creating under a node it may not write: EACCES
    assert err(st.write, dom1, "/local/domain/0/backend/pci/1/0/new", b"") == "EACCES"
    assert err(st.mkdir, dom1, "/local/domain/0/x") == "EACCES"


def test_unprivileged_cannot_change_owner_nor_set_perms_without_ownership(st, dom0, dom1):
    st.write(dom0, "/local/domain/1/n", b"")
    st.set_perms(dom0, "/local/domain/1/n", ["n1"])
    assert err(st.set_perms, dom1, "n", ["n2"]) == "EPERM"
    st.write(dom0, "/local/domain/1/m", b"")
    st.set_perms(dom0, "/local/domain/1/m", ["n0", "b1"])
    assert err(st.set_perms, dom1, "m", ["n0", "r1"]) == "EACCES"   # write but not owner
    assert err(st.set_perms, dom0, "/local/domain/1/m", ["x0"]) == "EINVAL"
    assert err(st.set_perms, dom0, "/local/domain/1/m", []) == "EINVAL"


def test_rm_semantics(st, dom0):
    st.write(dom0, "/a/b/c", b"1")
    st.rm(dom0, "/a/b/nothere")                  # parent exists: fine
    assert err(st.rm, dom0, "/a/nothere/x") == "ENOENT"
    assert err(st.rm, dom0, "/") == "EINVAL"
    st.rm(dom0, "/a/b")
    assert st.ls("/a") == [] and st.peek("/a/b/c") is None


def test_mkdir_existing_is_fine_and_keeps_value(st, dom0):
    st.write(dom0, "/a", b"v")
    st.mkdir(dom0, "/a")
    assert st.peek("/a") == b"v"
    st.mkdir(dom0, "/m/n")
    assert st.peek("/m/n") == b"" and st.ls("/m") == ["n"]


@pytest.mark.parametrize("path", ["/a/", "/a//b", "a b", "/a/b!", "", "/a\x00b", "@introduceDomain", "/é"])
def test_invalid_paths(st, dom0, path):
    assert err(st.write, dom0, path, b"") == "EINVAL"


def test_relative_paths_resolve_against_the_connection_domain(st, dom0, dom1):
    st.write(dom0, "name", b"Domain-0")
    assert st.peek("/local/domain/0/name") == b"Domain-0"
    st.write(dom0, "/local/domain/1", b"")
    st.set_perms(dom0, "/local/domain/1", ["n1"])
    st.write(dom1, "data/x", b"1")
    assert st.peek("/local/domain/1/data/x") == b"1"
    assert st.get_domain_path(7) == "/local/domain/7"


def test_directory_is_sorted_like_oxenstored(st, dom0):
    for k in ("state", "frontend", "dev-0", "num_devs"):
        st.write(dom0, f"/be/{k}", b"")
    assert st.directory(dom0, "/be") == ["dev-0", "frontend", "num_devs", "state"]


def test_directory_part(st, dom0):
    names = [f"k{i:04d}-" + "x" * 40 for i in range(200)]     # > 4096 bytes of names
    for n in names:
        st.seed(f"/big/{n}", b"")
    got, off = [], 0
    while True:
        data = st.directory_part(dom0, "/big", off)
        gen, rest = data.split(b"\0", 1)
        assert int(gen) == st.generation("/big")
        assert len(data) <= 4096
        if rest.endswith(b"\0\0") or rest == b"\0":
            got += [x.decode() for x in rest[:-2].split(b"\0")] if rest != b"\0" else []
            break
        part = rest[:-1].split(b"\0")
        got += [x.decode() for x in part]
        off += len(rest)
    assert got == names


# ---------------------------------------------------------------- transactions


def test_transaction_snapshot_and_commit(st, dom0):
    other = Rec(0, "A2")
    st.write(dom0, "/t/a", b"1")
    tx = st.transaction_start(dom0)
    st.write(dom0, "/t/b", b"2", tx)
    assert st.read(dom0, "/t/b", tx) == b"2"
    assert err(st.read, other, "/t/b") == "ENOENT"         # not visible outside
    assert st.directory(dom0, "/t", tx) == ["a", "b"]
    st.transaction_end(dom0, tx, True)
    assert st.read(other, "/t/b") == b"2"


def test_transaction_conflict_gives_eagain(st, dom0):
    other = Rec(0, "A2")
    st.write(dom0, "/t/num_devs", b"0")
    tx = st.transaction_start(dom0)
    assert st.read(dom0, "/t/num_devs", tx) == b"0"
    st.write(other, "/t/num_devs", b"1")                  # concurrent attach
    assert st.read(dom0, "/t/num_devs", tx) == b"0"          # snapshot
    st.write(dom0, "/t/dev-0", b"x", tx)
    assert err(st.transaction_end, dom0, tx, True) == "EAGAIN"
    assert st.peek("/t/dev-0") is None
    assert dom0.transactions == {}                         # gone after EAGAIN
    assert err(st.transaction_end, dom0, tx, True) == "ENOENT"


def test_conflict_on_listed_directory_and_on_missing_node_created(st, dom0):
    other = Rec(0, "A2")
    st.write(dom0, "/d/x", b"")
    tx = st.transaction_start(dom0)
    st.directory(dom0, "/d", tx)
    st.write(other, "/d/y", b"")                           # child added
    assert err(st.transaction_end, dom0, tx, True) == "EAGAIN"
    tx = st.transaction_start(dom0)
    assert err(st.read, dom0, "/d/z", tx) == "ENOENT"
    st.write(other, "/d/z", b"")                           # absent node appeared
    assert err(st.transaction_end, dom0, tx, True) == "EAGAIN"
    # unrelated change: no conflict
    tx = st.transaction_start(dom0)
    st.read(dom0, "/d/x", tx)
    st.write(other, "/elsewhere", b"")
    st.transaction_end(dom0, tx, True)


def test_transaction_abort_limits_and_errors(st, dom0, dom1):
    tx = st.transaction_start(dom0)
    st.write(dom0, "/ab", b"1", tx)
    st.transaction_end(dom0, tx, False)
    assert st.peek("/ab") is None
    assert err(st.read, dom0, "/ab", 99) == "ENOENT"           # unknown tx
    tx = st.transaction_start(dom0)
    assert err(st.transaction_start, dom0, tx) == "EBUSY"      # nested
    # unprivileged connections: quota of C xenstored (started > 10)
    ids = [st.transaction_start(dom1) for _unused in range(11)]
    assert err(st.transaction_start, dom1) == "ENOSPC"
    st.transaction_end(dom1, ids[0], False)
    st.transaction_start(dom1)
    # dom0 has no limit
    for _unused in range(20):
        st.transaction_start(dom0)
    assert len(set(ids)) == 11 and ids[0] == 1


def test_transaction_watches_fire_at_commit_per_operation(st, dom0):
    w = Rec(0, "A2")
    st.mkdir(dom0, "/be")
    st.watch(w, "/be", "tok")
    w.events.clear()
    tx = st.transaction_start(dom0)
    st.rm(dom0, "/be/0", tx)             # missing: no event
    st.mkdir(dom0, "/be/0", tx)
    st.set_perms(dom0, "/be/0", ["n0", "r1"], tx)
    st.write(dom0, "/be/0/state", b"1", tx)
    assert w.events == []
    st.transaction_end(dom0, tx, True)
    assert w.events == [("/be/0", "tok"), ("/be/0", "tok"), ("/be/0/state", "tok")]
    w.events.clear()
    tx = st.transaction_start(dom0)
    st.write(dom0, "/be/0/state", b"2", tx)
    st.transaction_end(dom0, tx, False)
    assert w.events == []


def test_eagain_storm_fault(st, dom0):
    st.faults = Faults()
    st.faults.add("xenstore.commit", "eagain", times=2)
    results = []
    for _unused in range(3):
        tx = st.transaction_start(dom0)
        st.write(dom0, "/storm", b"x", tx)
        try:
            st.transaction_end(dom0, tx, True)
            results.append("ok")
        except XsError as e:
            results.append(e.name)
    assert results == ["EAGAIN", "EAGAIN", "ok"]


# --------------------------------------------------------------------- watches


def test_watch_initial_event_descendants_and_relative_paths(st, dom0, dom1):
    st.write(dom0, "/local/domain/1", b"")
    st.set_perms(dom0, "/local/domain/1", ["n1"])
    st.watch(dom1, "device", "FE")
    assert dom1.events == [("device", "FE")]          # initial, node missing
    st.write(dom0, "/local/domain/1/device/pci/0/state", b"1")
    st.write(dom0, "/local/domain/1/devicex", b"1")   # not below "device"
    assert dom1.events[1:] == [("device/pci/0/state", "FE")]
    st.watch(dom1, "/local/domain/1/device", "ABS")
    assert dom1.events[-1] == ("/local/domain/1/device", "ABS")
    assert err(st.watch, dom1, "device", "FE") == "EEXIST"
    st.watch(dom1, "device", "FE2")                   # same path, other token: fine
    st.unwatch(dom1, "device", "FE2")
    assert err(st.unwatch, dom1, "device", "FE2") == "ENOENT"


def test_rm_fires_for_watched_descendants(st, dom0):
    w = Rec(0, "A2")
    st.write(dom0, "/be/pci/1/0/state", b"4")
    st.write(dom0, "/be/pci/1/0/num_devs", b"1")
    st.watch(w, "/be/pci/1/0/state", "s")
    st.watch(w, "/be", "all")
    st.watch(w, "/other", "o")
    w.events.clear()
    st.rm(dom0, "/be/pci/1")
    # children first (exact watches), then one event for the removed root on
    # the watches above it
    assert w.events == [("/be/pci/1/0/state", "s"), ("/be/pci/1", "all")]


def test_events_only_to_connections_allowed_to_read(st, dom0, dom1):
    dom2 = Rec(2, "D2")
    st.write(dom0, "/be/1", b"")
    st.set_perms(dom0, "/be", ["n0"])
    st.set_perms(dom0, "/be/1", ["n0", "r1"])
    st.watch(dom1, "/be", "t1")
    st.watch(dom2, "/be", "t2")
    dom1.events.clear()
    dom2.events.clear()
    st.write(dom0, "/be/1", b"x")
    assert dom1.events == [("/be/1", "t1")] and dom2.events == []
    # a guest losing access still sees the permission change (old perms)
    st.set_perms(dom0, "/be/1", ["n0"])
    assert dom1.events[-1] == ("/be/1", "t1")
    st.write(dom0, "/be/1", b"y")
    assert len(dom1.events) == 2


def test_special_watches_introduce_release_and_set_target(st, dom0, dom1):
    st.watch(dom0, "@introduceDomain", "i")
    st.watch(dom0, "@releaseDomain", "r")
    st.watch(dom1, "@releaseDomain", "r1")
    dom0.events.clear()
    dom1.events.clear()
    st.introduce(dom0, 3)
    st.introduce(dom0, 4)
    st.introduce(dom0, 3)                 # already introduced: no event
    assert dom0.events == [("@introduceDomain", "i")] * 2
    assert st.is_domain_introduced(dom0, 3) and not st.is_domain_introduced(dom0, 5)
    assert err(st.introduce, dom1, 5) == "EACCES"
    # stub domain 4 acts for its target 3
    st.set_target(dom0, 4, 3)
    st.write(dom0, "/local/domain/3/device-model/3/state", b"running")
    st.set_perms(dom0, "/local/domain/3/device-model/3/state", ["n3"])
    stub = Rec(4, "D4")
    assert st.read(stub, "/local/domain/3/device-model/3/state") == b"running"
    st.release(dom0, 3)
    assert dom0.events[-1] == ("@releaseDomain", "r")
    assert dom1.events == []              # special nodes are n0
    assert err(st.release, dom0, 3) == "ENOENT"
    assert err(st.release, dom0, 0) == "EINVAL"


def test_internal_conn_delivers_via_loop():
    import asyncio

    st = Store()
    got = []

    async def main():
        d0 = InternalConn(st, 0, "D0", lambda p, t: got.append((p, t)))
        d0.watch("backend", "BE")
        assert got == []                  # not synchronous: after the op returns
        await asyncio.sleep(0)
        st.write(d0, "backend/pci/1/0/state", b"2")
        await asyncio.sleep(0)
        assert d0.stats.requests == 2 and d0.stats.ops["WRITE"] == 1 and d0.stats.events == 2

    asyncio.run(main())
    assert got == [("backend", "BE"), ("backend/pci/1/0/state", "BE")]


def test_kernel_fault_error(st):
    st.faults = Faults()
    st.faults.add("xenstore.kernel", "error", errno="EIO", op="WRITE", path="/local/domain/0/backend", times=1)
    d0 = InternalConn(st, 0, "D0")
    assert err(d0.write, "backend/pci/1/0/state", b"2") == "EIO"
    d0.write("backend/pci/1/0/state", b"2")


# ------------------------------------------------------------------ access log


def _real_log_lines():
    if not os.path.exists(REAL_LOG):
        pytest.skip(f"ground truth {REAL_LOG} not present")
    with open(REAL_LOG) as f:
        return [line.rstrip("\n") for line in f if line.startswith("[")]


def test_replay_real_first_attach_matches_oxenstored_log():
    """Replay the first toolstack transaction of the real log: our log lines
    (timestamps aside) and the kernel watch events are the real ones."""
    real = _real_log_lines()
    st = Store()
    st.seed("/local/domain/0/backend", b"", ["n0"])
    st.seed("/local/domain/1/device", b"", ["n1", "r0"])
    st.log_enabled = False
    d0 = InternalConn(st, 0, "D0")
    d1 = InternalConn(st, 1, "D1")
    d0.watch("backend", "FFFFFFFF82BB0B60")
    d1.watch("device", "FFFFFFFF82BB0DA0")
    a33 = Rec(0, "A33")
    a34 = Rec(0, "A34")
    st.log_enabled = True
    del st.access_log[:]
    st.write(a33, "/tool/mark", b"attach 00:10.0 (first: no backend)")
    st.write(a34, "/libxl/pci/0000-00-10-0/domid", b"1")
    tx = st.transaction_start(a34)
    ops = [line for line in real if re.search(r"\]  A34\.1 ", line)]
    for line in ops:
        body = line.split("]  ", 1)[1]
        op, rest = body[13:22].strip(), body[23:]
        if op == "write":
            path, value = rest.split(" ", 1)
            st.write(a34, path, value.encode(), tx)
        elif op == "rm":
            # C xenstored: ENOENT as /local/domain/0/backend/pci is missing
            # too (oxenstored says OK); libxl ignores the result either way
            # and ENOENT replies are not in the default access log.
            try:
                st.rm(a34, rest.strip(), tx)
            except XsError as e:
                assert e.name == "ENOENT"
        elif op == "mkdir":
            st.mkdir(a34, rest.strip(), tx)
        elif op == "setperms":
            path, *perms = rest.split()
            st.set_perms(a34, path, perms, tx)
    st.transaction_end(a34, tx, True)
    ours = [line.split("]  ", 1)[1] for line in format_access_log(st.access_log).splitlines()]
    want = [line.split("]  ", 1)[1] for line in real[:2] + ops]
    assert [x for x in ours if "w event" not in x and "commit" not in x] == want
    # each kernel connection sees the events of the real log, in order
    for label in ("D0", "D1"):
        theirs = [line.split("]  ", 1)[1] for line in real if re.search(rf"\]  {label}[ .]", line)]
        theirs = theirs[:theirs.index(next(x for x in theirs if "w event" not in x))]
        mine = [x for x in ours if x.startswith(f"{label} ")]
        assert mine == theirs, label


# -- where C xenstored and oxenstored differ (Store(flavour=...)) -------------

@pytest.mark.parametrize("flavour", ["oxenstored", "c"])
def test_dom0_is_introduced_from_the_start_and_never_announced(flavour, dom0):
    st = Store(flavour=flavour)
    assert st.is_domain_introduced(dom0, 0) and 0 in st.introduced
    st.watch(dom0, "@introduceDomain", "i")
    dom0.events.clear()
    mfn, port = DOM0_INTRODUCTION
    st.introduce(dom0, 0, mfn, port)
    if flavour == "c":
        st.introduce(dom0, 0, 12345, 99)          # C binds the channel again: OK
    else:
        assert err(st.introduce, dom0, 0, 12345, 99) == "EINVAL"    # Domain_not_match
        assert err(st.introduce, dom0, 0, mfn, 99) == "EIO"         # rebinding fails
    assert dom0.events == []
    st.introduce(dom0, 5, 0xFF004, 1)
    assert dom0.events == [("@introduceDomain", "i")]
    assert st.is_domain_introduced(dom0, 0)


def test_oxenstored_entry_size_is_the_value_for_every_connection(dom0, dom1):
    st = Store()
    st.write(dom0, "/local/domain/1/data", b"")
    st.set_perms(dom0, "/local/domain/1/data", ["n1", "r0", "r2", "r3", "r4"])
    for i in range(20):
        st.write(dom1, f"/local/domain/1/data/child-with-a-long-name-{i:02}", b"")
    # 2048 bytes of value whatever the perms and children around them
    st.write(dom1, "/local/domain/1/data", b"v" * 2048)
    assert err(st.write, dom1, "/local/domain/1/data", b"v" * 2049) == "E2BIG"
    assert err(st.write, dom0, "/local/domain/1/data", b"v" * 2049) == "E2BIG"
    assert st.peek("/local/domain/1/data") == b"v" * 2048
    # the parents of a refused new node are made first and stay, silently
    st.watch(dom0, "/new", "w")
    dom0.events.clear()
    assert err(st.write, dom0, "/new/a/b", b"x" * 2049) == "E2BIG"
    assert st.ls("/new") == ["a"] and st.ls("/new/a") == [] and dom0.events == []
    tx = st.transaction_start(dom0)
    assert err(st.write, dom0, "/tx/a/b", b"x" * 2049, tx) == "E2BIG"
    st.transaction_end(dom0, tx, True)                # not doomed, parents committed
    assert st.ls("/tx/a") == []


def test_c_entry_size_counts_the_whole_node_record_for_guests(dom0, dom1):
    st = Store(flavour="c")
    st.write(dom0, "/local/domain/1", b"")
    st.set_perms(dom0, "/local/domain/1", ["n1"])
    # header 24 + one permission 8 + value; 2048 or more is refused
    st.write(dom1, "/local/domain/1/v", b"x" * 2015)
    assert err(st.write, dom1, "/local/domain/1/v", b"x" * 2016) == "ENOSPC"
    assert st.peek("/local/domain/1/v") == b"x" * 2015
    st.write(dom0, "/local/domain/1/v", b"x" * 3000)       # no quota for dom0
    # 8 bytes per permission
    st.write(dom1, "/local/domain/1/p", b"x" * 1999)
    assert err(st.set_perms, dom1, "/local/domain/1/p", ["n1", "r0", "r2", "r3"]) == "ENOSPC"
    st.set_perms(dom1, "/local/domain/1/p", ["n1", "r0", "r2"])        # 2047
    assert st.perms("/local/domain/1/p") == ["n1", "r0", "r2"]
    # the parent's child names (NUL-terminated) count when a child is added
    st.write(dom1, "/local/domain/1/d", b"x" * 1990)                    # 2022
    st.mkdir(dom1, "/local/domain/1/d/" + "c" * 20)                     # 2043
    assert err(st.mkdir, dom1, "/local/domain/1/d/e123") == "ENOSPC"   # 2048
    assert err(st.write, dom1, "/local/domain/1/d/e123/f", b"") == "ENOSPC"
    assert st.ls("/local/domain/1/d") == ["c" * 20]
    st.mkdir(dom1, "/local/domain/1/d/e12")                             # 2047
    # in a transaction the refusal dooms the commit (ENOMEM), nothing lands
    tx = st.transaction_start(dom1)
    st.write(dom1, "/local/domain/1/t", b"ok", tx)
    assert err(st.write, dom1, "/local/domain/1/t2", b"x" * 2100, tx) == "ENOSPC"
    assert err(st.transaction_end, dom1, tx, True) == "ENOMEM"
    assert st.peek("/local/domain/1/t") is None and dom1.transactions == {}


@pytest.mark.parametrize("flavour, errno", [("oxenstored", "ENOENT"), ("c", "EINVAL")])
def test_set_perms_on_an_unknown_special_path(flavour, errno, dom0, dom1):
    st = Store(flavour=flavour)
    assert err(st.set_perms, dom0, "@bogus", ["n0"]) == errno
    st.set_perms(dom0, "@releaseDomain", ["n0", "r1"])
    st.watch(dom1, "@releaseDomain", "r")
    st.introduce(dom0, 1)
    st.release(dom0, 1)
    assert ("@releaseDomain", "r") in dom1.events


# What each daemon makes of the domid after the letter (oxenstored's were
# seen on real Xen: tests/data/real-oxenstored-probe.json).
PERM_DOMIDS = {
    "oxenstored": {"r0x1": "r1", "r010": "r10", "r+1": "r1", "r1_0": "r10", "r-1": "r9223372036854775807",
                   "r0o17": "r15", "r0b11": "r3", "r0u5": "r5", "r4294967297": "r4294967297",
                   "r 1": None, "r1 ": None, "r0x": None, "rx1": None, "r": None},
    "c": {"r0x1": "r1", "r010": "r8", "r+1": "r1", "r 1": "r1", "r-1": "r4294967295", "r4294967297": "r1",
          "r1_0": None, "r0o17": None, "r0b11": None, "r0u5": None, "r1 ": None, "r0x": None, "rx1": None,
          "r": None},
}


@pytest.mark.parametrize("flavour", ["oxenstored", "c"])
def test_permission_domids_are_read_as_the_daemon_reads_them(flavour, dom0, dom1):
    st = Store(flavour=flavour)
    st.write(dom0, "/n", b"secret")
    for perm, shown in PERM_DOMIDS[flavour].items():
        if shown is None:
            assert err(st.set_perms, dom0, "/n", ["n0", perm]) == "EINVAL", perm
        else:
            st.set_perms(dom0, "/n", ["n0", perm])
            assert st.get_perms(dom0, "/n") == ["n0", shown], perm
    st.set_perms(dom0, "/n", ["n0", "r0x1"])          # a hex domid is domain 1
    assert st.read(dom1, "/n") == b"secret"


@pytest.mark.parametrize("flavour, paths", [
    ("oxenstored", {"-1": 1, "x5": 5, " 7": 7, "0x10": 0, "12abc": 12, "": 0, "4294967297": 4294967297}),
    ("c", {"-1": 4294967295, "x5": 0, " 7": 7, "0x10": 0, "12abc": 12, "": 0, "4294967297": 1}),
])
def test_get_domain_path_reads_its_argument_as_the_daemon_does(flavour, paths, dom0):
    st = Store(flavour=flavour)
    for arg, domid in paths.items():
        assert st.get_domain_path(arg, dom0) == f"/local/domain/{domid}", arg
    assert st.get_domain_path(3) == "/local/domain/3"

# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Steps on a PCI backend in xenstore: the xen-pciback/xen-pcifront protocol.

One vocabulary for the three places a backend is used: a PV guest's own
devices, a HVM guest's stub domain (a running PV domain that QEMU lives
in), and the bookkeeping backend libxl keeps for a HVM guest whose QEMU
runs in dom0 (pciback exports to it; no frontend ever connects).

The rule of Xen commit 73ee2795aaef is ``backend_wait_needed``: wait for
the backend to be Connected before changing it only when the domain is PV,
running, and its backend already exists. A backend that does not exist yet
is created with the devices in it and nothing is waited for: there is
nothing to race with, and a guest being built (or the stub domain of a
guest being built) would never get there.

Unlike libxl: ``num_devs`` is read inside the transaction that appends;
every device of a request goes into one Reconfiguring cycle; every attach
and detach is confirmed, bounded by the request's deadline.
"""

from __future__ import annotations

import time

from ansible_collections.xen.pci.plugins.module_utils._bdf import PciFunction
from ansible_collections.xen.pci.plugins.module_utils._engine import Step, register
from ansible_collections.xen.pci.plugins.module_utils._errors import DeadlineExceeded, HotplugError, XenPciError
from ansible_collections.xen.pci.plugins.module_utils._state import (
    CLOSED, CLOSING, CONNECTED, INITIALISED, INITIALISING, PER_INDEX_KEYS, RECONFIGURING,
    backend_path, error_path, frontend_path, read_backend, state_name, xs_int)
from ansible_collections.xen.pci.plugins.module_utils._xenstore import Changes, remove_pruned

# A wait the request cannot succeed without (pciback reaching Connected, the
# guest releasing a device, a stub domain connecting) may spend the whole
# forward budget: the task's timeout is the user's limit, and the budget's
# reserve still pays for the undo. libxl gives up after 10 s (60 s for a stub
# domain) whatever the host's load; on a loaded host real Xen's pcifront took
# over 30 s for one removal cycle. Only the optional wait is capped: a guest
# without pcifront never connects, and waiting for it changes nothing but
# the warning.
GUEST_CONNECT_WAIT = 30.0
# Between removing a backend and creating it again (see rebuild).
REBUILD_SETTLE = 0.5
# With force, the share of the remaining forward budget the guest gets to
# release its devices before the backend is rebuilt without them.
FORCE_RELEASE_SHARE = 0.5
_TORN_DOWN = {}   # domid -> when this process last removed its backend

# Kinds of backend (``role`` in the steps' data).
GUEST, STUBDOM, BOOKKEEPING = "guest", "stubdom", "bookkeeping"


def backend_wait_needed(domain_type, running, backend_exists):
    """The rule of Xen commit 73ee2795aaef: wait for the PCI backend only
    when the domain is PV, running, and the backend already exists."""
    return domain_type == "pv" and bool(running) and bool(backend_exists)


def device_keys(func, index):
    """The backend keys of PciFunction ``func`` at ``index``, in libxl's order.
    The one writer of a device's keys (append, rebuild and bookkeeping)."""
    bdf = str(func.bdf)
    out = [("key-%d" % index, bdf), ("dev-%d" % index, bdf)]
    if func.vdevfn_value:
        out.append(("vdevfn-%d" % index, func.vdevfn_value))
    if func.name:
        out.append(("name-%d" % index, func.name))
    out += [("opts-%d" % index, func.opts), ("state-%d" % index, str(INITIALISING))]
    return out


_int = xs_int


class _Changed(Exception):
    """The backend moved under us between the read and the transaction."""


class BackendOps:
    """The protocol mechanics on one domain's backend."""

    def __init__(self, ctx, domid, name, label):
        self.ctx = ctx
        self.xs = ctx.xs
        self.domid = domid
        self.name = name
        self.label = label
        self.be = backend_path(domid)
        self.fe = frontend_path(domid)

    # -- reading and waiting -------------------------------------------------

    def read(self, tx=0):
        return read_backend(self.xs, self.domid, self.ctx.deadline, tx=tx)

    def failed(self, values):
        state = _int(values.get(self.be + "/state"))
        err = values.get(error_path(self.domid))
        if state in (CLOSING, CLOSED) or err:
            return state, err
        return None

    def wait(self, paths, check, deadline, doing):
        start = time.monotonic()
        try:
            return self.xs.wait_until(paths, check, deadline, doing)
        finally:
            self.ctx.report.waited += time.monotonic() - start

    def _seen(self, exc, path):
        """A value a timed-out wait last saw, or why it is unknown."""
        seen = exc.details.get("seen")
        if not seen:
            return "unknown (no answer from xenstored)"
        return state_name(_int(seen.get(path)))

    def wait_connected(self, why):
        """Wait for the backend to be Connected (4), or fail with what was seen."""
        paths = [self.be + "/state", error_path(self.domid)]

        def check(values):
            if values[self.be + "/state"] is None:
                raise HotplugError("Backend %s does not exist" % self.be, domain=self.domid)
            failed = self.failed(values)
            if failed:
                raise HotplugError("PCI backend of %s failed (state %s): %s" % (
                    self.label, state_name(failed[0]), failed[1] or "no error node"),
                    domain=self.domid, backend_state=failed[0], error_node=failed[1])
            return True if _int(values[self.be + "/state"]) == CONNECTED else None

        sub = self.ctx.deadline.sub(self.ctx.deadline.remaining(), "backend Connected")
        try:
            self.wait(paths, check, sub, "waiting for the PCI backend of %s to be Connected (4) %s" % (self.label, why))
        except DeadlineExceeded as exc:
            raise HotplugError("PCI backend of %s stayed in state %s for %.1f s %s" % (
                self.label, self._seen(exc, self.be + "/state"), sub.elapsed(), why),
                domain=self.domid, waited=round(sub.elapsed(), 3), timed_out=True) from exc

    def confirm_exported(self, indices, bdfs, need_connected):
        """Wait until pciback exported every device (``state-N`` = 3) and,
        for a hot-add, the cycle is over (backend back at Connected)."""
        paths = [self.be + "/state", error_path(self.domid)] + ["%s/state-%d" % (self.be, i) for i in indices]
        paths += ["%s/vdev-%d" % (self.be, i) for i in indices]

        def check(values):
            failed = self.failed(values)
            if failed:
                return ("failed", failed)
            be_state = _int(values[self.be + "/state"])
            exported = all(_int(values["%s/state-%d" % (self.be, i)]) == INITIALISED for i in indices)
            if exported and (be_state == CONNECTED or (not need_connected and be_state is not None and be_state >= INITIALISED)):
                return ("ok", values)
            return None

        try:
            verdict, values = self.wait(paths, check, self.ctx.deadline,
                                        "waiting for pciback to export %s to %s" % (", ".join(bdfs), self.label))
        except DeadlineExceeded as exc:
            states = {bdf: self._seen(exc, "%s/state-%d" % (self.be, i)) for bdf, i in zip(bdfs, indices)}
            raise HotplugError("attach of %s to %s not confirmed after %.1f s: backend %s, devices %s" % (
                ", ".join(bdfs), self.label, exc.details.get("waited", 0), self._seen(exc, self.be + "/state"), states),
                domain=self.domid, devices=bdfs, device_states=states, timed_out=True,
                waited=exc.details.get("waited")) from exc
        if verdict == "failed":
            state, err = values
            raise HotplugError("pciback refused the attach of %s to %s: %s (backend state %s)" % (
                ", ".join(bdfs), self.label, err or "no error node", state_name(state)),
                domain=self.domid, devices=bdfs, error_node=err, backend_state=state)
        for bdf, i in zip(bdfs, indices):
            self.ctx.report.devices[bdf] = {"index": i, "state": INITIALISED, "vdev": values.get("%s/vdev-%d" % (self.be, i))}

    def wait_frontend(self, seconds=None, hard=False):
        """After creating a backend: wait for both ends to be Connected. A
        guest that never loaded pcifront never connects: with ``hard``
        (a stub domain, whose QEMU needs the device) that is an error,
        otherwise a warning (the guest sees the devices when it connects).
        ``seconds``: a cap on the wait (None: the rest of the budget)."""
        sub = self.ctx.deadline.sub(self.ctx.deadline.remaining() if seconds is None else seconds, "frontend connect")
        paths = [self.be + "/state", self.fe + "/state", error_path(self.domid)]

        def check(values):
            if self.failed(values):
                return "failed"
            both = _int(values[self.be + "/state"]) == CONNECTED and _int(values[self.fe + "/state"]) == CONNECTED
            return "ok" if both else None

        try:
            verdict = self.wait(paths, check, sub, "waiting for the pcifront of %s" % self.label)
        except DeadlineExceeded as exc:
            if hard:
                raise HotplugError("the PCI backend of stub domain %s did not reach Connected within %.0f s (backend %s)" % (
                    self.label, sub.elapsed(), self._seen(exc, self.be + "/state")), domain=self.domid,
                    timed_out=True) from exc
            self.ctx.report.warnings.append(
                "pciback exported the devices but the pcifront of %s had not connected after %.0f s: the guest is slow, "
                "or has no xen-pcifront driver; it will see the devices when it connects" % (self.label, sub.elapsed()))
            return
        if verdict == "failed":
            backend = self.read()
            raise HotplugError("PCI backend of %s failed while its frontend connected: %s" % (
                self.label, backend.error if backend else "backend gone"), domain=self.domid,
                error_node=backend.error if backend else None)
        self.ctx.report.step("the pcifront of %s connected" % self.label)

    # -- writing -------------------------------------------------------------

    def create(self, changes, state=INITIALISING):
        """Backend and frontend directories with libxl's keys and permissions."""
        changes.rm(self.be).mkdir(self.be).perms(self.be, ["n0", "r%d" % self.domid])
        changes.write(self.be + "/frontend", self.fe).write(self.be + "/frontend-id", str(self.domid))
        changes.write(self.be + "/online", "1").write(self.be + "/state", str(state))
        changes.write(self.be + "/domain", self.name or "")
        changes.rm(self.fe).mkdir(self.fe).perms(self.fe, ["n%d" % self.domid, "r0"])
        changes.write(self.fe + "/backend", self.be).write(self.fe + "/backend-id", "0")
        changes.write(self.fe + "/state", str(INITIALISING))

    def settle(self):
        """Give the kernels time to unregister a backend removed moments
        ago before creating it again (see rebuild)."""
        since = time.monotonic() - _TORN_DOWN.get(self.domid, -REBUILD_SETTLE)
        if since < REBUILD_SETTLE:
            time.sleep(min(REBUILD_SETTLE - since, self.ctx.deadline.remaining()))

    def renumber(self, tx, keep):
        """Leave exactly the keys libxl would leave: ``keep`` at 0..k-1, in order."""
        names = self.xs.directory(self.be, tx=tx, deadline=self.ctx.deadline) or []
        values = self.xs.read_many(["%s/%s" % (self.be, n) for n in names], tx=tx, deadline=self.ctx.deadline)
        old = {n: values["%s/%s" % (self.be, n)] for n in names}
        want = {}
        for new_index, dev in enumerate(keep):
            for key in PER_INDEX_KEYS:
                value = old.get("%s-%d" % (key, dev.index))
                if value is not None:
                    want["%s-%d" % (key, new_index)] = value
        changes = Changes()
        for name in names:
            base, _sep, idx = name.rpartition("-")
            if base in PER_INDEX_KEYS and idx.isdigit() and name not in want:
                changes.rm("%s/%s" % (self.be, name))
        for name, value in want.items():
            if old.get(name) != value:
                changes.write("%s/%s" % (self.be, name), value)
        changes.write(self.be + "/num_devs", str(len(keep)))
        self.xs.apply(changes, tx=tx, deadline=self.ctx.deadline)

    def teardown(self):
        """Remove frontend and backend (pciback and pcifront let go when their nodes vanish)."""
        _TORN_DOWN[self.domid] = time.monotonic()

        def body(tx):
            changes = Changes().rm(self.fe).rm(self.be).rm("/libxl/%d/device/pci/0" % self.domid)
            self.xs.apply(changes, tx=tx, deadline=self.ctx.deadline)
            # Prune parents left empty, as libxl's device destroy does.
            for parent in ("/local/domain/%d/device/pci" % self.domid, backend_path(self.domid).rsplit("/", 1)[0],
                           "/local/domain/0/backend/pci"):
                if self.xs.directory(parent, tx=tx, deadline=self.ctx.deadline) == []:
                    self.xs.rm(parent, tx=tx, deadline=self.ctx.deadline)
        self.xs.transaction(body, self.ctx.deadline, what="removing the PCI backend of %s" % self.label)

    def rebuild(self, keep, why):
        """Recreate the backend holding only ``keep`` (PciFunction list), or
        just remove it when empty; pciback drops every device and takes
        back the kept ones.

        Two transactions: removing and recreating the nodes in one would go
        unnoticed by the kernels (xenbus re-probes a device only when its
        node is gone when the watch fires). Between the two, the drivers'
        watch handlers need a moment to unregister the old devices; xenstore
        shows no sign of it, so that one pause is a short fixed sleep."""
        self.teardown()
        self.ctx.checkpoint("torn-down")
        if not keep:
            self.ctx.report.step("%s: removed the PCI backend of %s" % (why, self.label))
            return
        self.restore(keep, why)

    def restore(self, keep, why):
        """Create the backend with ``keep`` (after a teardown) and confirm
        that pciback exported them again."""
        self.settle()

        def body(tx):
            changes = Changes()
            self.create(changes)
            for i, func in enumerate(keep):
                for key, value in device_keys(func, i):
                    changes.write("%s/%s" % (self.be, key), value)
            changes.write(self.be + "/num_devs", str(len(keep)))
            self.xs.apply(changes, tx=tx, deadline=self.ctx.deadline)
            # pciback's error node was about the backend just replaced.
            remove_pruned(self.xs, [error_path(self.domid)], "/local/domain/0", self.ctx.deadline, "", tx=tx)
        self.xs.transaction(body, self.ctx.deadline, what="rebuilding the PCI backend of %s" % self.label)
        self.ctx.report.step("%s: rebuilt the PCI backend of %s with %s" % (why, self.label, ", ".join(str(f.bdf) for f in keep)))
        self.confirm_exported(list(range(len(keep))), [str(f.bdf) for f in keep], need_connected=False)

    def domain_exists(self):
        return self.xs.read("/local/domain/%d/name" % self.domid, deadline=self.ctx.deadline) is not None \
            or self.xs.directory("/local/domain/%d" % self.domid, deadline=self.ctx.deadline) is not None

    def remove(self, bdfs, why, before=(), release_deadline=None):
        """Take ``bdfs`` out of the backend, the guest's way when it is
        connected (a removal cycle, then the keys), else by a rebuild.
        A guest that does not release them within ``release_deadline``
        gets its backend rebuilt without them. ``before``: the devices the
        backend had before this request (PciFunction list), restored when
        an interrupted rebuild left no backend at all."""
        current = self.read()
        if current is None:
            keep = [f for f in before if str(f.bdf) not in set(bdfs)]
            if keep and self.domain_exists():
                self.restore(keep, why)
            return
        gone = [d for d in current.devices if d.bdf in set(bdfs)]
        if not gone:
            return
        keep = [d for d in current.devices if d.bdf not in set(bdfs)]
        if current.fe_state == CONNECTED and current.state == CONNECTED:
            try:
                self.request_removal(gone)
                self.await_release([d.bdf for d in gone], release_deadline or self.ctx.deadline)
            except XenPciError as exc:
                self.ctx.report.warnings.append("%s: %s; rebuilding the backend without them" % (why, exc.msg))
                self.rebuild([d.function() for d in keep], why)
                return
            self.drop([d.bdf for d in gone])
            return
        self.rebuild([d.function() for d in keep], why)

    def request_removal(self, present):
        """One transaction: ``state-i`` = 5 for each device, backend Reconfiguring."""
        gone = [d.bdf for d in present]

        def body(tx):
            current = self.read(tx=tx)
            if current is None or current.state != CONNECTED:
                raise _Changed()
            changes = Changes()
            for dev in current.devices:
                if dev.bdf in gone:
                    changes.write("%s/state-%d" % (self.be, dev.index), str(CLOSING))
            changes.write(self.be + "/state", str(RECONFIGURING))
            self.xs.apply(changes, tx=tx, deadline=self.ctx.deadline)

        while True:
            try:
                self.xs.transaction(body, self.ctx.deadline, what="asking %s to release %s" % (self.label, ", ".join(gone)))
                break
            except _Changed:
                self.wait_connected("before detaching %s" % ", ".join(gone))
        self.ctx.report.step("asked the guest %s to release %s in one Reconfiguring cycle" % (self.label, ", ".join(gone)))

    def await_release(self, gone, deadline):
        """Wait until the cycle is over (backend back at Connected)."""
        sub = deadline.sub(deadline.remaining(), "guest release")
        paths = [self.be + "/state", error_path(self.domid)]

        def check(values):
            if self.failed(values):
                return "failed"
            return "ok" if _int(values[self.be + "/state"]) == CONNECTED else None

        try:
            verdict = self.wait(paths, check, sub, "waiting for %s to release %s" % (self.label, ", ".join(gone)))
        except DeadlineExceeded as exc:
            raise HotplugError("%s did not release %s within %.1f s (backend state %s)" % (
                self.label, ", ".join(gone), sub.elapsed(), self._seen(exc, self.be + "/state")),
                domain=self.domid, devices=gone, timed_out=True, waited=round(sub.elapsed(), 3)) from exc
        if verdict == "failed":
            backend = self.read()
            raise HotplugError("PCI backend of %s failed while releasing %s: %s" % (
                self.label, ", ".join(gone), backend.error if backend else "backend gone"),
                domain=self.domid, devices=gone, error_node=backend.error if backend else None)

    def drop(self, bdfs):
        """Delete the keys of ``bdfs`` and renumber the rest (libxl's moves);
        the last device takes the backend with it."""
        def body(tx):
            current = self.read(tx=tx)
            if current is None:
                return "absent"
            keep = [d for d in current.devices if d.bdf not in set(bdfs)]
            if len(keep) == len(current.devices):
                return "absent"
            if not keep:
                return "last"
            self.renumber(tx, keep)
            return "renumbered"
        outcome = self.xs.transaction(body, self.ctx.deadline, what="removing %s from %s" % (", ".join(bdfs), self.label))
        if outcome == "last":
            self.teardown()
            self.ctx.report.step("removed the last devices (%s) and the PCI backend of %s" % (", ".join(bdfs), self.label))
        elif outcome == "renumbered":
            self.ctx.report.step("removed %s from the PCI backend of %s and renumbered the rest" % (", ".join(bdfs), self.label))


def _label(data):
    return data["label"]


@register
class AppendToBackend(Step):
    """Put devices into a domain's PCI backend (creating it if needed).
    data: domid, name, label, role (guest | stubdom | bookkeeping),
    functions (PciFunction.to_dict list), before (the backend's devices
    when the request was planned, for an undo interrupted mid-rebuild)."""

    kind = "backend-append"

    def describe(self):
        return "add %s to the PCI backend of %s" % (", ".join(f["bdf"] for f in self.data["functions"]), _label(self.data))

    def touches(self):
        out = ["%s (keys of %s)" % (backend_path(self.data["domid"]), ", ".join(f["bdf"] for f in self.data["functions"]))]
        if not self.data.get("before"):
            out.append("%s (created with the backend)" % frontend_path(self.data["domid"]))
        return out

    def _ops(self, ctx):
        return BackendOps(ctx, self.data["domid"], self.data["name"], _label(self.data))

    def _running(self, ctx, current):
        role = self.data["role"]
        if role == STUBDOM:
            return True       # a stub domain runs even while its guest is being built
        if role == BOOKKEEPING:
            return False      # nobody connects to it
        # A guest runs when it is not paused (nor being built); with a backend,
        # only a connected pcifront can answer a cycle (a guest without the
        # driver never will, so it counts as not running for the wait).
        if ctx.platform.domain_paused(self.data["domid"]):
            return False
        return current is None or current.fe_state == CONNECTED

    def do(self, ctx):
        ops = self._ops(ctx)
        funcs = [PciFunction.from_dict(f) for f in self.data["functions"]]
        bdfs = [str(f.bdf) for f in funcs]
        current = ops.read()
        if current is not None and (current.state in (CLOSING, CLOSED) or current.error):
            raise HotplugError("PCI backend of %s is broken (state %s, error %r); detach its devices or recreate the domain" % (
                ops.label, state_name(current.state), current.error),
                domain=ops.domid, backend_state=current.state, error_node=current.error)
        already = [d.bdf for d in current.devices if d.bdf in set(bdfs)] if current else []
        if already:
            # A rerun of a step that was interrupted after its transaction.
            self.result.update(first=min(d.index for d in current.devices if d.bdf in set(bdfs)), created=False, cycle=False,
                               running=self._running(ctx, current))
            return
        domain_type = "hvm" if self.data["role"] == BOOKKEEPING else "pv"
        while True:
            running = self._running(ctx, current)
            if backend_wait_needed(domain_type, running, current is not None) and (current is None or current.state != CONNECTED):
                ops.wait_connected("before attaching %s" % ", ".join(bdfs))
                current = ops.read()
            if current is None:
                ops.settle()
            hot = current is not None and current.fe_state == CONNECTED and self.data["role"] != BOOKKEEPING
            try:
                first, created, cycle = ctx.xs.transaction(lambda tx: self._append(ops, tx, funcs, hot, self.data["role"] == BOOKKEEPING), ctx.deadline,
                                                           what="attaching %s to %s" % (", ".join(bdfs), ops.label))
                break
            except _Changed:
                # Someone started a cycle, or the guest connected, between our
                # read and our transaction: look again, wait again if needed.
                ctx.deadline.check("attaching %s to %s" % (", ".join(bdfs), ops.label))
                current = ops.read()
        self.result.update(first=first, created=created, cycle=cycle, running=running)
        if created:
            ctx.report.step("created the PCI backend of %s with %s (no wait: the backend did not exist)" % (ops.label, ", ".join(bdfs)))
        else:
            ctx.report.step("appended %s to the PCI backend of %s at index %d%s" % (
                ", ".join(bdfs), ops.label, first, " in one Reconfiguring cycle" if cycle else " (no cycle: the frontend is not connected)"))

    @staticmethod
    def _append(ops, tx, funcs, hot, bookkeeping):
        xs = ops.xs
        values = xs.read_many([ops.be + "/num_devs", ops.be + "/state", ops.fe + "/state"], tx=tx, deadline=ops.ctx.deadline)
        num = _int(values[ops.be + "/num_devs"])
        changes = Changes()
        created = num is None
        if created:
            ops.create(changes)
            num = 0
        elif hot and (_int(values[ops.be + "/state"]) != CONNECTED or _int(values[ops.fe + "/state"]) != CONNECTED):
            raise _Changed()
        elif not hot and not bookkeeping and _int(values[ops.fe + "/state"]) == CONNECTED:
            raise _Changed()
        for i, func in enumerate(funcs):
            for key, value in device_keys(func, num + i):
                changes.write("%s/%s" % (ops.be, key), value)
        changes.write(ops.be + "/num_devs", str(num + len(funcs)))
        cycle = hot and not created and num > 0
        if cycle:
            changes.write(ops.be + "/state", str(RECONFIGURING))
        xs.apply(changes, tx=tx, deadline=ops.ctx.deadline)
        return num, created, cycle

    def verify(self, ctx):
        ops = self._ops(ctx)
        funcs = self.data["functions"]
        bdfs = [f["bdf"] for f in funcs]
        first = self.result.get("first", 0)
        indices = list(range(first, first + len(funcs)))
        role = self.data["role"]
        current = ops.read()
        if current is None:
            raise HotplugError("the PCI backend of %s is gone" % ops.label, domain=ops.domid, devices=bdfs)
        if self.result.get("cycle") and not self.result.get("running"):
            ctx.report.warnings.append("%s is paused: its Reconfiguring cycle for %s completes when it runs" % (
                ops.label, ", ".join(bdfs)))
            return
        if self.result.get("cycle"):
            ops.confirm_exported(indices, bdfs, need_connected=True)
            return
        if self.result.get("created") or (current.state or 0) >= INITIALISED or role == BOOKKEEPING:
            # pciback exports on its own (probe, or its Initialised watch).
            ops.confirm_exported(indices, bdfs, need_connected=False)
            if role == STUBDOM:
                ops.wait_frontend(hard=True)
            elif role == GUEST and self.result.get("created") and self.result.get("running", True) and \
                    not ctx.platform.domain_paused(ops.domid):
                ops.wait_frontend(GUEST_CONNECT_WAIT, hard=False)
            return
        ctx.report.warnings.append("%s is not running: %s will be picked up by its pcifront when it connects" % (
            ops.label, ", ".join(bdfs)))

    def undo(self, ctx):
        ops = self._ops(ctx)
        bdfs = [f["bdf"] for f in self.data["functions"]]
        ops.remove(bdfs, "undo of the attach of %s" % ", ".join(bdfs),
                   before=[PciFunction.from_dict(f) for f in self.data.get("before", [])],
                   release_deadline=ctx.deadline.sub(ctx.deadline.remaining() * FORCE_RELEASE_SHARE, "undo release"))


@register
class RemoveFromBackend(Step):
    """Detach devices from a domain's PCI backend: ask the connected guest
    to release them (one cycle) and wait, or remove the backend when no
    frontend is connected (``RestoreBackend`` then brings back the other
    devices). Once asked, the guest's removal cannot be taken back:
    ``no_return``. data: domid, name, label, bdfs, force."""

    kind = "backend-remove"
    no_return = True

    def describe(self):
        return "remove %s from the PCI backend of %s" % (", ".join(self.data["bdfs"]), _label(self.data))

    def touches(self):
        return ["%s (keys of %s)" % (backend_path(self.data["domid"]), ", ".join(self.data["bdfs"]))]

    def _ops(self, ctx):
        return BackendOps(ctx, self.data["domid"], self.data["name"], _label(self.data))

    def do(self, ctx):
        ops = self._ops(ctx)
        current = ops.read()
        bdfs = set(self.data["bdfs"])
        present = [d for d in current.devices if d.bdf in bdfs] if current else []
        if not present:
            self.result["mode"] = "gone"
            return
        if all(d.state == CLOSING for d in present) and current.state in (RECONFIGURING, CONNECTED):
            self.result["mode"] = "cycle"      # asked already (a rerun): wait again
            return
        hot = current.fe_state == CONNECTED and current.state not in (CLOSING, CLOSED)
        if hot:
            if current.state != CONNECTED:
                ops.wait_connected("before detaching %s" % ", ".join(sorted(bdfs)))
            ops.request_removal(present)
            self.result["mode"] = "cycle"
            return
        # No pcifront to run a cycle with: removing the backend makes
        # pciback drop every device; RestoreBackend takes back the others.
        self.result["mode"] = "rebuild"
        ops.teardown()
        ctx.report.step("detach of %s from %s, whose frontend is not connected: removed its PCI backend" % (
            ", ".join(sorted(bdfs)), ops.label))

    def verify(self, ctx):
        if self.result.get("mode") != "cycle":
            return
        ops = self._ops(ctx)
        bdfs = list(self.data["bdfs"])
        force = self.data.get("force") or ctx.force
        deadline = ctx.budget.share(FORCE_RELEASE_SHARE, "guest release") if force else ctx.deadline
        try:
            ops.await_release(bdfs, deadline)
        except HotplugError as exc:
            if not force:
                raise HotplugError("%s; use force to detach anyway" % exc.msg, **exc.details) from exc
            ctx.report.warnings.append("forced: %s; its PCI backend is rebuilt without them" % exc.msg)
            ops.teardown()
            self.result["mode"] = "forced"

    def effective(self, ctx):
        current = self._ops(ctx).read()
        if current is None:
            return True
        present = [d for d in current.devices if d.bdf in set(self.data["bdfs"])]
        return not present or all(d.state == CLOSING for d in present)

    def undo(self, ctx):
        """Never called past the point of no return; before it nothing was written."""


@register
class RestoreBackend(Step):
    """After ``RemoveFromBackend`` removed a backend (no frontend to run a
    cycle with, or a forced detach), create it again with the devices that
    stay. data: domid, name, label, keep (PciFunction.to_dict list)."""

    kind = "backend-restore"

    def describe(self):
        keep = ", ".join(f["bdf"] for f in self.data["keep"])
        return "keep %s in the PCI backend of %s" % (keep or "no device", _label(self.data))

    def touches(self):
        return ["%s (keys of %s)" % (backend_path(self.data["domid"]), ", ".join(f["bdf"] for f in self.data["keep"]))]

    def do(self, ctx):
        ops = BackendOps(ctx, self.data["domid"], self.data["name"], _label(self.data))
        keep = [PciFunction.from_dict(f) for f in self.data["keep"]]
        if not keep or ops.read() is not None or not ops.domain_exists():
            return
        ops.restore(keep, "detach")

    def undo(self, ctx):
        """Nothing: follows a step of no return."""


@register
class DropFromBackend(Step):
    """Delete the keys of released devices and renumber the others (the
    last device removes the backend). data: domid, name, label, bdfs."""

    kind = "backend-drop"

    def describe(self):
        return "drop %s from the PCI backend of %s" % (", ".join(self.data["bdfs"]), _label(self.data))

    def touches(self):
        return ["%s (keys of %s)" % (backend_path(self.data["domid"]), ", ".join(self.data["bdfs"]))]

    def do(self, ctx):
        BackendOps(ctx, self.data["domid"], self.data["name"], _label(self.data)).drop(self.data["bdfs"])

    def undo(self, ctx):
        """Nothing: follows a step of no return."""
